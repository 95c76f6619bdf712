"""The ground-truth-state oracle: observations built from the env's true objects.

As in the OCRL benchmark, an agent that sees the true object states bounds what perfect
perception could give. :class:`GroundTruthObservation` turns ``info["ground_truth"]``
(:mod:`ocrl.envs.ground_truth`) into the same ``Dict`` layout as slot codes, one row per
object, so the same :class:`~ocrl.agents.SlotSetExtractor` reads it:

- ``slots`` (K, 3 + S): colour RGB and a one-hot of the shape name over :data:`SHAPE_NAMES`
  (other names give zeros);
- ``position`` (K, 4): x, y, size, depth;
- ``presence`` (K,): 1 for a real object, 0 for padding rows (K = ``max_objects``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY
from ocrl.envs.render import SHAPES

SHAPE_NAMES = SHAPES


class GroundTruthObservation(gym.Wrapper):
    """Observations become the true object set (see module doc).

    Args:
        env: an env that reports ``info["ground_truth"]``.
        max_objects: rows of the set; default (built-in tasks) the largest object count plus
            the agent.
    """

    def __init__(self, env: gym.Env, max_objects: int | None = None):
        super().__init__(env)
        if max_objects is None:
            count_range = getattr(env.unwrapped, "num_objects_range", None)
            if count_range is None:
                raise ValueError(f"{env} does not say how many objects it has; pass max_objects")
            max_objects = int(count_range[1]) + 1  # the agent's sprite is an object too
        self.max_objects = max_objects
        inf = np.float32(np.inf)
        self.observation_space = spaces.Dict(
            {
                "slots": spaces.Box(0.0, 1.0, (max_objects, 3 + len(SHAPE_NAMES)), np.float32),
                "position": spaces.Box(
                    np.array([-1.0, -1.0, 0.0, 0.0] * max_objects, np.float32).reshape(max_objects, 4),
                    np.array([1.0, 1.0, inf, inf] * max_objects, np.float32).reshape(max_objects, 4),
                    dtype=np.float32,
                ),
                "presence": spaces.Box(0.0, 1.0, (max_objects,), np.float32),
            }
        )

    def observation(self, info: dict[str, Any]) -> dict[str, np.ndarray]:
        truth = info.get(GROUND_TRUTH_KEY)
        if truth is None:
            raise ValueError(
                f"the env gives no info[{GROUND_TRUTH_KEY!r}]; the ground-truth oracle works only with envs that report it (ocrl.envs)"
            )
        count = len(truth["object_shape"])
        if count > self.max_objects:
            raise ValueError(f"the env shows {count} objects but max_objects is {self.max_objects}")
        observation = {key: np.zeros(space.shape, np.float32) for key, space in self.observation_space.spaces.items()}
        observation["slots"][:count, :3] = truth["object_colour"]
        for row, name in enumerate(truth["object_shape"]):
            if name in SHAPE_NAMES:
                observation["slots"][row, 3 + SHAPE_NAMES.index(name)] = 1.0
        observation["position"][:count, :2] = np.clip(truth["object_position"], -1, 1)
        observation["position"][:count, 2] = truth["object_size"]
        observation["position"][:count, 3] = truth["object_depth"]
        observation["presence"][:count] = 1.0
        return observation

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        return self.observation(info), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(info), reward, terminated, truncated, info

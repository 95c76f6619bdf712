"""The ground-truth-state oracle: observations built from the env's true objects.

As in the OCRL benchmark, an agent that sees the true object states bounds what perfect
perception could give. :class:`GroundTruthObservation` turns ``info["ground_truth"]``
(:mod:`ocrl.envs.ground_truth`) into the same ``Dict`` layout as slot codes, one row per
object, so the same :class:`~ocrl.agents.SlotSetExtractor` reads it:

- ``slots`` (K, 3 + S): colour RGB and a one-hot of the shape name over :data:`SHAPE_NAMES`
  (other names give zeros);
- ``position`` (K, 4): x, y, size, depth;
- ``presence`` (K,): 1 for a real object, 0 for padding rows (K = ``max_objects``).

:class:`GroundTruthCodes` makes the same rows from a rollout store's recorded ground truth, so
that a world model can learn the true object dynamics (the oracle world model, perception
``"ground_truth"``): what a perfect perception model would give it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY
from ocrl.envs.render import SHAPES

SHAPE_NAMES = SHAPES
# the perception reference of world models trained on ground-truth rows
GROUND_TRUTH = "ground_truth"


def max_objects_of(env: gym.Env) -> int:
    """Rows of the oracle's set for a built-in task: the most objects its frames show, the
    agent (and ObjectInteraction's goal region) included."""
    count = getattr(env.unwrapped, "max_sprites", None)
    if count is None:
        raise ValueError(f"{env} does not say how many objects it has; pass max_objects")
    return int(count)


def ground_truth_space(max_objects: int) -> spaces.Dict:
    """The oracle's observation space: ``max_objects`` rows (see the module doc)."""
    inf = np.float32(np.inf)
    return spaces.Dict(
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


def object_rows(truth: dict[str, Any], max_objects: int) -> dict[str, np.ndarray]:
    """One frame's ground truth (``info["ground_truth"]``, or a stored frame's with
    ``object_count``) -> the oracle's ``slots``, ``position`` and ``presence`` rows."""
    count = int(truth.get("object_count", len(truth["object_shape"])))
    if count > max_objects:
        raise ValueError(
            f"the env shows {count} objects but the oracle's set has {max_objects} rows; train the agent with more (--max-objects)"
        )
    slots = np.zeros((max_objects, 3 + len(SHAPE_NAMES)), np.float32)
    position = np.zeros((max_objects, 4), np.float32)
    presence = np.zeros(max_objects, np.float32)
    slots[:count, :3] = np.asarray(truth["object_colour"])[:count]
    for row, name in enumerate(np.asarray(truth["object_shape"])[:count]):
        if name in SHAPE_NAMES:
            slots[row, 3 + SHAPE_NAMES.index(name)] = 1.0
    position[:count, :2] = np.clip(np.asarray(truth["object_position"])[:count], -1, 1)
    position[:count, 2] = np.asarray(truth["object_size"])[:count]
    position[:count, 3] = np.asarray(truth["object_depth"])[:count]
    presence[:count] = 1.0
    return {"slots": slots, "position": position, "presence": presence}


class GroundTruthObservation(gym.Wrapper):
    """Observations become the true object set (see module doc).

    Args:
        env: an env that reports ``info["ground_truth"]``.
        max_objects: rows of the set; default (built-in tasks) the largest object count plus
            the agent.
    """

    def __init__(self, env: gym.Env, max_objects: int | None = None):
        super().__init__(env)
        self.max_objects = max_objects_of(env) if max_objects is None else max_objects
        self.observation_space = ground_truth_space(self.max_objects)

    def observation(self, info: dict[str, Any]) -> dict[str, np.ndarray]:
        truth = info.get(GROUND_TRUTH_KEY)
        if truth is None:
            raise ValueError(
                f"the env gives no info[{GROUND_TRUTH_KEY!r}]; the ground-truth oracle works only with envs that report it (ocrl.envs)"
            )
        return object_rows(truth, self.max_objects)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        return self.observation(info), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(info), reward, terminated, truncated, info


class GroundTruthCodes:
    """Ground-truth object rows of stored episodes, in place of a perception model's codes (a
    code source for :func:`ocrl.world_models.encode_store`): the rows
    :class:`GroundTruthObservation` gives an agent in ``env_id``.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None):
        import ocrl.envs

        env = ocrl.envs.make(env_id, **(env_kwargs or {}))
        try:
            self.num_slots = max_objects_of(env)
        finally:
            env.close()
        self.slot_dim = 3 + len(SHAPE_NAMES)
        self.fingerprint = f"ground-truth-{self.num_slots}x{self.slot_dim}"

    def episode_codes(self, episode) -> dict[str, np.ndarray]:
        """(T + 1, K, ...) rows of every frame of a stored episode."""
        keys = ["object_colour", "object_shape", "object_position", "object_size", "object_depth"]
        truth = episode.ground_truth(keys=keys)
        frames = [
            object_rows({key: value[t] for key, value in truth.items()}, self.num_slots)
            for t in range(len(truth["object_count"]))
        ]
        return {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}

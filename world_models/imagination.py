"""Imagination: envs whose steps are world-model predictions over slot codes.

- :class:`ImaginationVecEnv`: a Stable-Baselines3 ``VecEnv`` of ``num_envs`` imagined episodes,
  all stepped in one batched forward of the world model (what ``ocrl train-agent
  --imagination`` trains in);
- :class:`ImaginationEnv`: one imagined episode as a gymnasium env.

Episodes start from encoded real states (:func:`starts_from_env` resets the real env and encodes
its first frames; :func:`starts_from_cache` takes the first codes of cached rollouts). Each step
lets the model attend to the episode's last ``history`` steps; the reward is its reward head, the episode
terminates when its continuation probability falls below 1/2, and it is truncated after
``max_episode_steps``. Steps are cheap: the model caches each step's keys and values and
computes only the new step's tokens. Observations are slot codes in exactly the space of
:class:`~ocrl.wrappers.ObjectCentricVecEnv` (``slots``, ``position``, ``presence``), so an agent
trained in imagination acts in the real env as it is.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from ocrl.agents.ground_truth import GROUND_TRUTH, GroundTruthCodes, GroundTruthObservation, ground_truth_space
from ocrl.device import default_device
from ocrl.slots import CODE_KEYS, SlotCodes, observation_space
from ocrl.world_models.model import SlotWorldModel, WorldModelOutput, action_space_of

# first frames a perception model encodes at once for the start codes of imagined episodes
STARTS_BATCH = 64


def check_pairing(world_model: SlotWorldModel, perception: Any) -> None:
    """Raise ValueError unless ``perception`` (a perception model or ground-truth code source)
    makes codes of the world model's slot shape."""
    config = world_model.config
    if (perception.num_slots, perception.slot_dim) != (config.num_slots, config.slot_dim):
        raise ValueError(
            f"the world model takes {config.num_slots} slots of {config.slot_dim}, but the perception model makes "
            f"{perception.num_slots} of {perception.slot_dim}; use the perception model it was trained with ({config.perception})"
        )


def starts_from_env(
    world_model: SlotWorldModel,
    count: int = 256,
    seed: int = 0,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    perception: Any = None,
) -> dict[str, np.ndarray]:
    """Codes (N, K, ...) of the first frames of ``count`` real episodes (reset seeds ``seed``..).

    The env defaults to the one the world model was trained on, the perception model to its own
    (the oracle world model's first codes are the env's true objects).
    """
    import ocrl.envs
    from ocrl.wrappers import ObjectCentricVecEnv

    config = world_model.config
    env_id = env_id or config.env_id
    env_kwargs = config.env_kwargs if env_kwargs is None else env_kwargs
    # first frames in batches of STARTS_BATCH sub-envs: a perception model encodes each batch at once
    batch = min(count, STARTS_BATCH)

    def make() -> gym.Env:
        return ocrl.envs.make(env_id, **env_kwargs)

    if (perception or config.perception) == GROUND_TRUTH:
        check_pairing(world_model, GroundTruthCodes(env_id, env_kwargs))
        venv = DummyVecEnv([lambda: GroundTruthObservation(make())] * batch)
    else:
        venv = ObjectCentricVecEnv(
            DummyVecEnv([make] * batch), model=perception or config.perception, device=world_model.device
        )
        check_pairing(world_model, venv.encoder.model)
    parts = []
    try:
        for first in range(0, count, batch):
            venv.seed(seed + first)  # sub-env i is reset with seed + first + i
            parts.append(venv.reset())
    finally:
        venv.close()
    return {key: np.concatenate([part[key] for part in parts])[:count] for key in CODE_KEYS}


def starts_from_cache(directory) -> dict[str, np.ndarray]:
    """Codes (N, K, ...) of the first frames of the episodes of a code cache."""
    from ocrl.world_models.codes import CodeCache

    return CodeCache(directory).first_codes()


class ImaginedEpisodes:
    """``batch_size`` imagined episodes, advanced together one step at a time.

    Each step runs the model on the K + 1 new tokens of every episode, attending to the cached
    keys and values of its last ``history - 1`` steps (:class:`~ocrl.world_models.model.AttentionCache`).
    Predicted positions are clamped to the bounds of the codes' space.
    """

    def __init__(self, model: SlotWorldModel, batch_size: int):
        config = model.config
        self.model = model.eval()
        self.cache = model.new_cache(batch_size)
        device = model.device
        self.codes = SlotCodes(
            torch.zeros(batch_size, config.num_slots, config.slot_dim, device=device),
            torch.zeros(batch_size, config.num_slots, 4, device=device),
            torch.zeros(batch_size, config.num_slots, device=device),
        )
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.discrete = config.action_space["type"] == "Discrete"

    def start(self, rows: np.ndarray, codes: dict[str, np.ndarray]) -> None:
        """Begin new episodes in ``rows`` from ``codes`` (len(rows), K, ...)."""
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.steps.device)
        for key in CODE_KEYS:
            getattr(self.codes, key)[index] = torch.as_tensor(
                np.asarray(codes[key]), dtype=torch.float32, device=index.device
            )
        self.steps[index] = 0
        self.cache.clear(index)

    def observe(self, codes: SlotCodes) -> None:
        """Replace the current codes of all episodes (e.g. with true ones, to give context)."""
        self.codes = codes._map(torch.Tensor.clone)  # start() writes into them

    @torch.no_grad()
    def step(self, actions: Any) -> WorldModelOutput:
        """Act in every episode (actions (B,) or (B, A)); returns the model's predictions (B,)
        and makes the predicted codes current."""
        actions = torch.as_tensor(
            np.asarray(actions) if not torch.is_tensor(actions) else actions, device=self.steps.device
        )
        actions = (
            actions.reshape(len(self.steps), -1)[:, 0]
            if self.discrete
            else actions.reshape(len(self.steps), -1).float()
        )
        output = self.model.step(self.codes, actions, self.cache, self.steps)
        position = output.codes.position.clone()
        position[..., :2] = position[..., :2].clamp(-1, 1)
        position[..., 2:] = position[..., 2:].clamp_min(0)
        position[..., 3] = position[..., 3].clamp(0, 1)
        output.codes = SlotCodes(output.codes.slots, position, output.codes.presence)
        self.codes = output.codes
        self.steps += 1
        return output


class ImaginationVecEnv(VecEnv):
    """SB3 VecEnv of imagined episodes (see the module doc).

    Args:
        world_model: a :class:`SlotWorldModel` (eval mode; its device is used).
        starts: start codes (N, K, ...) keyed ``slots``, ``position``, ``presence``; each new
            episode starts from one drawn at random.
        num_envs: episodes stepped together.
        max_episode_steps: truncation (default: the time limit of the world model's env, else 100).
        seed: seeds the draw of start states.
    """

    render_mode = None

    def __init__(
        self,
        world_model: SlotWorldModel,
        starts: dict[str, np.ndarray],
        num_envs: int = 64,
        max_episode_steps: int | None = None,
        seed: int | None = 0,
    ):
        config = world_model.config
        starts = {key: np.asarray(starts[key], dtype=np.float32) for key in CODE_KEYS}
        if starts["slots"].ndim != 3 or starts["slots"].shape[1:] != (config.num_slots, config.slot_dim):
            raise ValueError(
                f"start slots must be (N, {config.num_slots}, {config.slot_dim}), got {starts['slots'].shape}"
            )
        # the space of the real env the agent will act in: the oracle's bounded rows, or slot codes
        if config.perception == GROUND_TRUTH:
            space = ground_truth_space(config.num_slots)
        else:
            space = observation_space(config.num_slots, config.slot_dim)
        super().__init__(num_envs, space, action_space_of(config))
        self.starts = starts
        self.max_episode_steps = max_episode_steps or _time_limit(config.env_id)
        self.episodes = ImaginedEpisodes(world_model, num_envs)
        self.random = np.random.default_rng(seed)
        self.episode_steps = np.zeros(num_envs, dtype=np.int64)
        self.episode_returns = np.zeros(num_envs, dtype=np.float64)
        self.observation = {key: np.zeros((num_envs, *space[key].shape), np.float32) for key in CODE_KEYS}
        self._actions: np.ndarray | None = None
        self.started = time.perf_counter()

    def _start(self, rows: np.ndarray) -> None:
        picks = self.random.integers(len(self.starts["slots"]), size=len(rows))
        codes = {key: value[picks] for key, value in self.starts.items()}
        self.episodes.start(rows, codes)
        for key in CODE_KEYS:
            self.observation[key][rows] = codes[key]
        self.episode_steps[rows] = 0
        self.episode_returns[rows] = 0.0

    def reset(self):
        if self._seeds[0] is not None:  # VecEnv.seed(s) stores per-env seeds for the next reset
            self.random = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._start(np.arange(self.num_envs))
        return {key: value.copy() for key, value in self.observation.items()}

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        codes, rewards, continues = _numpy(self.episodes.step(self._actions))
        self.episode_steps += 1
        self.episode_returns += rewards
        terminated = continues < 0.5
        truncated = self.episode_steps >= self.max_episode_steps
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key in CODE_KEYS:
            self.observation[key][:] = codes[key]
        ended = np.flatnonzero(dones)
        for i in ended:
            infos[i] = {
                "terminal_observation": {key: codes[key][i].copy() for key in CODE_KEYS},
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                "episode": {
                    "r": float(self.episode_returns[i]),
                    "l": int(self.episode_steps[i]),
                    "t": round(time.perf_counter() - self.started, 6),
                },
            }
        if len(ended):
            self._start(ended)
        return {key: value.copy() for key, value in self.observation.items()}, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise AttributeError(f"imagined envs have no method {method_name!r}")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))


class ImaginationEnv(gym.Env):
    """One imagined episode as a gymnasium env (same args as :class:`ImaginationVecEnv`)."""

    metadata = {"render_modes": []}

    def __init__(
        self, world_model: SlotWorldModel, starts: dict[str, np.ndarray], max_episode_steps: int | None = None
    ):
        self.vector = ImaginationVecEnv(world_model, starts, num_envs=1, max_episode_steps=max_episode_steps)
        self.observation_space = self.vector.observation_space
        self.action_space = self.vector.action_space
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.vector.random = self.np_random
        self.vector._start(np.zeros(1, dtype=np.int64))
        self._done = False
        return {key: value[0].copy() for key, value in self.vector.observation.items()}, {}

    def step(self, action):
        if self._done:
            raise RuntimeError("call reset() before step(): the episode has ended")
        codes, rewards, continues = _numpy(self.vector.episodes.step(np.asarray(action)[None]))
        self.vector.episode_steps += 1
        terminated = bool(continues[0] < 0.5)
        truncated = bool(self.vector.episode_steps[0] >= self.vector.max_episode_steps)
        self._done = terminated or truncated
        return (
            {key: codes[key][0] for key in CODE_KEYS},
            float(rewards[0]),
            terminated,
            truncated,
            {"continue_probability": float(continues[0])},
        )


def _numpy(output: WorldModelOutput) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(codes, reward, continuation probability) of a step as numpy arrays."""
    return (
        output.codes.to_numpy(),
        output.reward.float().cpu().numpy(),
        torch.sigmoid(output.continue_logits).float().cpu().numpy(),
    )


def _time_limit(env_id: str) -> int:
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        return 100
    return spec.max_episode_steps or 100


def load_world_model(path, device=None) -> SlotWorldModel:
    """A world model in eval mode from its checkpoint directory."""
    from ocrl.checkpoint import load_checkpoint
    from ocrl.errors import OcrlError

    if device is None:
        device = default_device()
    model, _ = load_checkpoint(path, device=device)
    if not isinstance(model, SlotWorldModel):
        raise OcrlError(f"{path} is a checkpoint of a {type(model).__name__}, not a world model")
    return model.eval()

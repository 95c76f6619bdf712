"""Wrappers that turn an env's pixel frames into slot codes (:mod:`ocrl.slots`).

- :class:`ObjectCentricObservation`: one gymnasium env.
- :class:`ObjectCentricVectorObservation`: a gymnasium vector env (``gym.make_vec``).
- :class:`ObjectCentricVecEnv`: a Stable-Baselines3 ``VecEnv``.

All three share a :class:`SlotEncoder`: a perception model and one recurrent state per
stream. Each env step encodes all sub-envs in one batched forward (on the GPU when there is
one), and a sub-env whose episode just began gets the model's first-frame treatment (its
initial queries and first-frame iterations). Frames of any size are resized to the model's
resolution (bilinear, antialiased; non-square frames are stretched).

Frames come from the observation when it is an RGB image (H, W, 3), or from a ``Dict``
observation's ``"pixels"`` entry, or, for a single env whose ``render_mode`` is
``"rgb_array"``, from ``render()`` (then ``keep_observation`` keeps the original observation
under the key ``"observation"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnvWrapper

# the online encoder lives with perception; these names stay importable from here, as before
from ocrl.perception.encoder import DEFAULT_KEYS, MAX_UPSCALE, SlotEncoder, resolve_model

__all__ = [
    "DEFAULT_KEYS",
    "MAX_UPSCALE",
    "ObjectCentricObservation",
    "ObjectCentricVecEnv",
    "ObjectCentricVectorObservation",
    "SlotEncoder",
    "frame_source",
    "resolve_model",
]
PIXELS_KEY = "pixels"


def frame_source(observation_space_: spaces.Space) -> str | None:
    """How frames are read from observations of this space: ``"observation"``, ``"pixels"``
    (a Dict entry), or None when they hold no RGB image."""
    if _is_rgb_box(observation_space_):
        return "observation"
    if isinstance(observation_space_, spaces.Dict) and _is_rgb_box(observation_space_.spaces.get(PIXELS_KEY)):
        return "pixels"
    return None


def _is_rgb_box(space: spaces.Space | None) -> bool:
    return isinstance(space, spaces.Box) and len(space.shape) == 3 and space.shape[-1] == 3


def _frames(observation: Any, source: str) -> np.ndarray:
    return observation[PIXELS_KEY] if source == "pixels" else observation


def _no_frames_error(what: str, space: spaces.Space) -> ValueError:
    return ValueError(
        f"{what} offers no frames: its observation space is {space}, not an RGB image (H, W, 3) "
        f"nor a Dict with {PIXELS_KEY!r}; make it with render_mode='rgb_array' or wrap it in gymnasium.wrappers.AddRenderObservation"
    )


class ObjectCentricObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observations become slot codes: a ``Dict`` with ``keys`` (see :mod:`ocrl.slots`).

    Args:
        env: an env whose observations are RGB frames (or a Dict with ``"pixels"``), or one
            made with ``render_mode="rgb_array"``.
        model: perception model (default: the shipped default model); see :func:`resolve_model`.
        keys: slot-code keys to observe.
        keep_observation: also return the env's own observation under ``"observation"``.
        device: where the model runs.

    The recurrent state is reset on every ``reset``. ``info`` passes through unchanged.
    """

    def __init__(
        self,
        env: gym.Env,
        model: Any = None,
        keys: Sequence[str] = DEFAULT_KEYS,
        keep_observation: bool = False,
        device: torch.device | str | None = None,
    ):
        gym.utils.RecordConstructorArgs.__init__(
            self, model=model, keys=keys, keep_observation=keep_observation, device=device
        )
        gym.Wrapper.__init__(self, env)
        self.source = frame_source(env.observation_space)
        if self.source is None:
            if env.render_mode != "rgb_array":
                raise _no_frames_error(f"env {env.spec.id if env.spec else env}", env.observation_space)
            self.source = "render"
        self.encoder = SlotEncoder(model, 1, keys, device)
        if self.source != "render":
            frames_space = env.observation_space if self.source == "observation" else env.observation_space[PIXELS_KEY]
            self.encoder.check_frame_shape(frames_space.shape)
        self.keep_observation = keep_observation
        codes_space = self.encoder.observation_space()
        if keep_observation:
            codes_space.spaces["observation"] = env.observation_space
        self.observation_space = codes_space

    @property
    def perception(self) -> torch.nn.Module:
        return self.encoder.model

    def _encode(self, observation: Any, is_first: bool) -> dict[str, np.ndarray]:
        frame = self.env.render() if self.source == "render" else _frames(observation, self.source)
        if frame is None:
            raise ValueError("env.render() returned None; make the env with render_mode='rgb_array'")
        codes = {key: value[0] for key, value in self.encoder.encode(np.asarray(frame)[None], [is_first]).items()}
        if self.keep_observation:
            codes["observation"] = observation
        return codes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._encode(observation, True), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._encode(observation, False), reward, terminated, truncated, info


class ObjectCentricVectorObservation(gym.vector.VectorWrapper):
    """Slot codes for a gymnasium vector env, all sub-envs encoded in one batched forward.

    Sub-env observations must be RGB frames (or a Dict with ``"pixels"``). Autoreset: with
    gymnasium's default ``NEXT_STEP`` mode a sub-env that ended on step t returns its reset
    frame on step t + 1, which is encoded as a first frame; ``SAME_STEP`` mode returns the reset
    frame on step t (the final observation in ``info["final_obs"]`` is left as frames).
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        model: Any = None,
        keys: Sequence[str] = DEFAULT_KEYS,
        device: torch.device | str | None = None,
    ):
        super().__init__(env)
        self.source = frame_source(env.single_observation_space)
        if self.source is None:
            raise _no_frames_error("this vector env", env.single_observation_space)
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode not in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset mode {mode} is not supported; use NEXT_STEP or SAME_STEP")
        self.autoreset_mode = mode
        self.encoder = SlotEncoder(model, env.num_envs, keys, device)
        frames_space = (
            env.single_observation_space if self.source == "observation" else env.single_observation_space[PIXELS_KEY]
        )
        self.encoder.check_frame_shape(frames_space.shape)
        self.single_observation_space = self.encoder.observation_space()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._ended = np.zeros(env.num_envs, dtype=bool)

    def reset(self, *, seed=None, options=None):
        observation, info = self.env.reset(seed=seed, options=options)
        self._ended[:] = False
        return self.encoder.encode(_frames(observation, self.source), np.ones(self.num_envs, dtype=bool)), info

    def step(self, actions):
        observation, reward, terminated, truncated, info = self.env.step(actions)
        ended = np.logical_or(terminated, truncated)
        is_first = self._ended if self.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP else ended
        codes = self.encoder.encode(_frames(observation, self.source), is_first)
        self._ended = ended
        return codes, reward, terminated, truncated, info


class ObjectCentricVecEnv(VecEnvWrapper):
    """Slot codes for a Stable-Baselines3 ``VecEnv``, all sub-envs encoded in one batched forward.

    SB3 resets a sub-env as soon as it is done and returns the reset frame; that frame is
    encoded as a first frame, and the frame that ended the episode
    (``info["terminal_observation"]``, which SB3 uses to bootstrap truncated episodes) is
    encoded with the ended episode's state and replaces it.
    """

    def __init__(
        self, venv, model: Any = None, keys: Sequence[str] = DEFAULT_KEYS, device: torch.device | str | None = None
    ):
        source = frame_source(venv.observation_space)
        if source is None:
            raise _no_frames_error("this VecEnv", venv.observation_space)
        self.source = source
        self.encoder = SlotEncoder(model, venv.num_envs, keys, device)
        frames_space = venv.observation_space if source == "observation" else venv.observation_space[PIXELS_KEY]
        self.encoder.check_frame_shape(frames_space.shape)
        super().__init__(venv, observation_space=self.encoder.observation_space())

    def reset(self):
        observation = self.venv.reset()
        return self.encoder.encode(_frames(observation, self.source), np.ones(self.num_envs, dtype=bool))

    def step_wait(self):
        observation, rewards, dones, infos = self.venv.step_wait()
        ended = np.flatnonzero(dones)
        terminal = [infos[i].get("terminal_observation") for i in ended]
        if len(ended) and all(frame is not None for frame in terminal):
            frames = np.stack([_frames(frame, self.source) for frame in terminal])
            codes = self.encoder.encode(frames, np.zeros(len(ended), dtype=bool), streams=ended, advance=False)
            for row, i in enumerate(ended):
                infos[i] = {**infos[i], "terminal_observation": {key: value[row] for key, value in codes.items()}}
        return self.encoder.encode(_frames(observation, self.source), dones), rewards, dones, infos

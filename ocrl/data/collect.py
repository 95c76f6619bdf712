"""Collect rollouts from any env into a :mod:`rollout store <ocrl.data.store>`.

Episode ``i`` is reset with seed ``seed + i``, and the random policy draws its actions from a
generator seeded with ``(seed, i)``, so an episode's content depends only on ``(seed, i)``:
sub-envs of the vector env take episode indices as they free up, in any order, and a resumed
or extended collection writes exactly the files an uninterrupted one would. A Stable-Baselines3
policy with ``deterministic=True`` acts on observations alone too (up to float rounding that may
differ with the batch size); a sampling one draws from torch's global RNG, so its episodes are
not reproducible one by one.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from tqdm import tqdm

from ocrl import shipped_models
from ocrl.data.store import MANIFEST_NAME, RolloutStore, RolloutWriter, read_manifest
from ocrl.envs import make
from ocrl.envs.ground_truth import FRAME_KEYS, GROUND_TRUTH_KEY, OBJECT_KEYS
from ocrl.errors import CollectionInterrupted, OcrlError

_RECORD_KEY = "ocrl_recorded_frame"


@dataclass
class RecordedFrame:
    """What one reset or step showed: the frame (H, W, 3) uint8 and the ground truth, if any."""

    frame: np.ndarray
    ground_truth: dict[str, Any] | None


class RecordFrames(gym.Wrapper):
    """Replaces ``info`` by one :class:`RecordedFrame` holding the frame (the observation, or
    ``render()`` for envs whose observations are not images) and the ground truth.

    One opaque object per sub-env passes through a vector env untouched, whereas a ground-truth
    dict would be stacked across sub-envs, which fails when their object counts differ.
    """

    def __init__(self, env: gym.Env, frames_from_render: bool):
        super().__init__(env)
        self.frames_from_render = frames_from_render

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        return observation, self._record(observation, info)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated, truncated, self._record(observation, info)

    def _record(self, observation, info: dict[str, Any]) -> dict[str, RecordedFrame]:
        frame = self.env.render() if self.frames_from_render else observation
        return {_RECORD_KEY: RecordedFrame(np.array(frame), info.get(GROUND_TRUTH_KEY))}


def is_image_space(space: gym.Space) -> bool:
    """True for (H, W, 3) uint8 Box spaces: observations that can be stored as frames."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] == 3


def describe_space(space: gym.Space) -> dict[str, Any]:
    """A JSON description of an action space; stored actions are arrays of its dtype."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": space.dtype.name,
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": space.dtype.name}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise OcrlError(
        f"action space {space} cannot be stored; ocrl stores Discrete, Box, MultiDiscrete and MultiBinary actions"
    )


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    """``ocrl.envs.make`` with the user-facing errors of a bad id or bad kwargs as OcrlError."""
    try:
        return make(env_id, **env_kwargs)
    except (ValueError, TypeError, ImportError) as error:
        message = str(error)
        raise OcrlError(message if repr(env_id) in message else f"cannot make env {env_id!r}: {message}") from None


def _make_recording_env(env_id: str, env_kwargs: dict[str, Any], frames_from_render: bool) -> gym.Env:
    return RecordFrames(make_env(env_id, env_kwargs), frames_from_render)


def episode_action_seed(seed: int, index: int) -> int:
    """Seed of the random policy's actions in episode ``index`` of a collection seeded ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclass
class _EpisodeBuffer:
    """An episode in flight in one sub-env."""

    index: int
    seed: int
    frames: list[np.ndarray] = field(default_factory=list)
    ground_truth: list[dict[str, Any] | None] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def add_frame(self, record: RecordedFrame) -> None:
        self.frames.append(record.frame)
        self.ground_truth.append(record.ground_truth)


def collect(
    env_id: str,
    episodes: int,
    out: str | os.PathLike,
    policy: str | os.PathLike = "random",
    num_envs: int = 8,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    asynchronous: bool = False,
    deterministic: bool = False,
    verify: bool = False,
) -> RolloutStore:
    """Make the store at ``out`` hold ``episodes`` episodes of ``env_id`` in total.

    Collects the episodes missing from ``0 .. episodes - 1`` (all of them for a new store): a
    rerun after an interruption resumes, a larger ``episodes`` appends. ``policy`` is
    ``"random"``, an agent directory from ``ocrl train-agent`` or a shipped agent's name, or
    the path of a Stable-Baselines3 zip (see :mod:`ocrl.data.sb3_policy`;
    ``deterministic`` picks its most likely actions instead of sampling). ``num_envs`` sub-envs
    run in one process, or one process each with ``asynchronous``. On Ctrl-C the finished
    episodes are kept and :class:`~ocrl.errors.CollectionInterrupted` is raised.

    The episodes already stored are checked first (every byte against the files' CRCs; with
    ``verify`` every frame is also decoded); broken or missing ones are collected again.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise OcrlError(f"episodes must be a positive integer, got {episodes!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise OcrlError(f"num_envs must be a positive integer, got {num_envs!r}")
    if not isinstance(seed, int) or seed < 0:
        raise OcrlError(f"seed must be a non-negative integer, got {seed!r}")
    env_kwargs = dict(env_kwargs or {})
    try:
        json.dumps(env_kwargs)
    except TypeError as error:
        raise OcrlError(f"env_kwargs must be plain JSON values to be stored in the manifest ({error})") from None

    # one env in this process, first: bad ids, kwargs or policies fail before anything is written
    probe = make_env(env_id, env_kwargs)
    frames_from_render = not is_image_space(probe.observation_space)
    if frames_from_render:
        probe.close()
        probe = make_env(env_id, {"render_mode": "rgb_array", **env_kwargs})
    try:
        action_space = probe.action_space
        if policy == "random":
            act, policy_description = None, {"kind": "random"}
        elif os.path.isdir(policy) or policy in shipped_models():
            from ocrl.data.sb3_policy import AgentPolicy

            act = AgentPolicy(policy, env_id, probe, deterministic=deterministic)
            recorded = read_manifest(Path(out))[0]["policy"] if (Path(out) / MANIFEST_NAME).exists() else None
            policy_description = act.recorded_as(recorded)
        else:
            from ocrl.data.sb3_policy import load_sb3_policy

            act = load_sb3_policy(policy, probe, deterministic=deterministic)
            policy_description = act.description
        first = RecordFrames(probe, frames_from_render).reset(seed=seed)[1][_RECORD_KEY]
    finally:
        probe.close()
    frame = np.asarray(first.frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise OcrlError(
            f"{env_id} gives frames of shape {frame.shape} {frame.dtype}; ocrl stores (H, W, 3) uint8 frames"
        )
    ground_truth_keys = [key for key in (*FRAME_KEYS, *OBJECT_KEYS) if key in (first.ground_truth or {})]
    header = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "seed": seed,
        "policy": policy_description,
        "frame_source": "render" if frames_from_render else "observation",
        "frame_shape": list(frame.shape),
        "action_space": describe_space(action_space),
        "ground_truth": ground_truth_keys,
    }

    writer = RolloutWriter(out, header)
    broken = writer.drop_broken(decode=verify)
    if broken:
        print(
            f"{out}: {len(broken)} broken episode file(s) will be collected again; first: {broken[0]}", file=sys.stderr
        )
    todo = [index for index in range(episodes) if index not in writer.indices]
    bar = tqdm(total=episodes, initial=episodes - len(todo), unit="episode", desc=env_id, disable=not progress)
    envs = None
    try:
        if todo:
            env_kwargs_made = {"render_mode": "rgb_array", **env_kwargs} if frames_from_render else env_kwargs
            env_function = functools.partial(_make_recording_env, env_id, env_kwargs_made, frames_from_render)
            vector_class = AsyncVectorEnv if asynchronous else SyncVectorEnv
            envs = vector_class([env_function] * min(num_envs, len(todo)), autoreset_mode=AutoresetMode.DISABLED)
            _run(envs, writer, todo, seed, act, action_space, bar)
    except KeyboardInterrupt:
        if envs is not None:
            # async workers got Ctrl-C too and may never answer; gymnasium warns about exactly that
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                envs.close(terminate=True)
            envs = None
        raise CollectionInterrupted(len(writer), str(out)) from None
    finally:
        bar.close()
        writer.close()  # the manifest lists every finished episode
        if envs is not None:
            envs.close()
    return RolloutStore.open(out)


def _run(
    envs: gym.vector.VectorEnv,
    writer: RolloutWriter,
    todo: list[int],
    seed: int,
    act,
    action_space: gym.Space,
    bar: tqdm,
) -> None:
    """Step all sub-envs until every episode in ``todo`` is written.

    A sub-env whose episode ends is reset (``reset_mask``) with the next episode's seed, or with
    none once all are handed out; then it steps idle until the others finish.
    """
    num_envs = envs.num_envs
    pending = list(reversed(todo))
    running: list[_EpisodeBuffer | None] = [None] * num_envs
    # a copy of the action space per sub-env, reseeded for each episode: the random policy
    action_samplers = [copy.deepcopy(action_space) for _ in range(num_envs)]

    # what an agent acting on frames or objects needs: each sub-env's latest record (frame and
    # ground truth) and whether it begins an episode
    records: list[RecordedFrame | None] = [None] * num_envs
    is_first = np.ones(num_envs, dtype=bool)

    def start(mask: np.ndarray, first: bool = False):
        seeds: list[int | None] = [None] * num_envs
        for slot in np.flatnonzero(mask):
            if pending:
                index = pending.pop()
                running[slot] = _EpisodeBuffer(index, seed + index)
                seeds[slot] = seed + index
                action_samplers[slot].seed(episode_action_seed(seed, index))
        options = None if first else {"reset_mask": mask}
        observations, infos = envs.reset(seed=seeds, options=options)
        for slot in np.flatnonzero(mask):
            records[slot] = infos[_RECORD_KEY][slot]
            is_first[slot] = True
            if running[slot] is not None:
                running[slot].add_frame(infos[_RECORD_KEY][slot])
        return observations

    observations = start(np.ones(num_envs, dtype=bool), first=True)
    while True:
        if act is None:
            actions = np.stack([sampler.sample() for sampler in action_samplers])
        else:
            actions = act(observations, records, is_first.copy())
        observations, rewards, terminated, truncated, infos = envs.step(actions)
        records = list(infos[_RECORD_KEY])
        is_first[:] = False
        for slot, buffer in enumerate(running):
            if buffer is None:
                continue
            buffer.add_frame(infos[_RECORD_KEY][slot])
            buffer.actions.append(actions[slot])
            buffer.rewards.append(float(rewards[slot]))
            buffer.terminated.append(bool(terminated[slot]))
            buffer.truncated.append(bool(truncated[slot]))
        done = terminated | truncated
        for slot in np.flatnonzero(done):
            buffer = running[slot]
            if buffer is not None:
                writer.add(
                    buffer.index,
                    buffer.seed,
                    np.stack(buffer.frames),
                    np.asarray(buffer.actions, dtype=action_space.dtype).reshape(
                        len(buffer.actions), *action_space.shape
                    ),
                    buffer.rewards,
                    buffer.terminated,
                    buffer.truncated,
                    buffer.ground_truth if writer.header["ground_truth"] else None,
                )
                running[slot] = None
                bar.update()
        if not pending and all(buffer is None for buffer in running):
            break
        if done.any():
            observations = start(done)

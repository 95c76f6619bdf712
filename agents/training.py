"""Train and evaluate SB3 agents on slot codes, pixels, or the ground-truth oracle.

An agent is a checkpoint directory like a perception model's (:mod:`ocrl.checkpoint`):
``config.json`` holds the :class:`AgentConfig` (env id, algorithm, observation kind and the
perception model it reads, by shipped name or path), ``model.safetensors`` the SB3 policy's
weights, ``trainer.*`` the optimizers and the step count, so that rerunning the same command
resumes, and ``metrics.json`` the last evaluation. Nothing is pickled: SB3's own ``.zip``
format is, so ``load_agent`` rebuilds the policy from the config and loads the weights.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecTransposeImage
from tqdm.auto import tqdm

import ocrl.envs
from ocrl.agents.extractors import SlotSetExtractor
from ocrl.agents.ground_truth import GROUND_TRUTH, GroundTruthObservation
from ocrl.agents.symmetric import SymmetricPolicy
from ocrl.checkpoint import (
    CONFIG_FILE,
    CURVE_FILE,
    load_checkpoint,
    load_trainer_state,
    read_checkpoint_config,
    register_model_kind,
    save_checkpoint,
)
from ocrl.config_json import JsonConfig
from ocrl.errors import OcrlError
from ocrl.names import AGENT_OBSERVATIONS as OBSERVATIONS
from ocrl.perception.frames import prepare_frames
from ocrl.preflight import preflight
from ocrl.wrappers import DEFAULT_KEYS, ObjectCentricVecEnv

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC, "dqn": DQN}
# Defaults that differ from SB3's, per algorithm (SB3's DQN defaults are tuned for Atari). PPO's
# were tuned on the built-in tasks with the ground-truth oracle (benchmarks/RESULTS.md, issue 11):
# short rollouts of many envs, small minibatches and a higher learning rate learn the object tasks
# several times faster per env step than SB3's defaults.
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 128, "batch_size": 512, "ent_coef": 0.01, "learning_rate": 1e-3},
    "sac": {"learning_starts": 1_000, "buffer_size": 100_000},
    "dqn": {
        "learning_starts": 1_000,
        "buffer_size": 100_000,
        "exploration_fraction": 0.2,
        "target_update_interval": 1_000,
    },
}


@dataclass
class AgentConfig(JsonConfig):
    """What an agent is: stored in its checkpoint's config.json.

    observation: ``"slots"`` (codes of the ``perception`` model, through
        :class:`~ocrl.wrappers.ObjectCentricVecEnv`), ``"pixels"`` (SB3's CnnPolicy on the
        frames) or ``"ground_truth"`` (:class:`~ocrl.agents.GroundTruthObservation`).
    perception: shipped name or checkpoint path; None: the shipped default (slots only).
    extractor: ``"context"``, ``"relation"``, ``"transformer"`` or ``"deepsets"`` (:class:`~ocrl.agents.SlotSetExtractor`).
    hidden_dim: width of the extractor's pair and token MLPs.
    algo_kwargs: passed to the SB3 algorithm over :data:`ALGORITHM_DEFAULTS`; ``learning_rate``
        and ``clip_range`` may be RL Zoo's ``"lin_<start>"`` (linear from start to 0 over training).
    imagination: a world-model checkpoint path: train inside it (slot codes, or ground-truth
        objects with an oracle world model), evaluate in the
        real env.
    real_envs: with ``imagination``, how many of the sub-envs act in the real env beside the
        imagined ones (Dyna-style: every PPO update also sees real experience, and the states
        the world model never reaches).
    imagination_starts: how many real first frames (resets of the real env, encoded; no env
        steps) imagined episodes start from. Oracle agents in one world model reached 0.896
        held-out success with 4096 against 0.875 with 256 (three seeds; sampled actions 0.952
        against 0.922): with few layouts they learn those (benchmarks/RESULTS.md). On slot
        codes the perception model encodes them first (Loci-s: about 15 frames/s on 2 busy CPU
        cores, so 4096 take minutes; pass fewer for short runs).
    max_objects: rows of the ground-truth oracle's set (default: the env's largest object count
        plus the agent); more rows let the same agent be evaluated with more objects.
    symmetric: PPO's policy averaged over the square's rotations and reflections
        (:class:`~ocrl.agents.SymmetricPolicy`), for envs whose actions are moves in the plane
        (the built-in tasks with discrete actions).
    """

    config_name = "agent config"  # where a from_dict error is, not a field

    env_id: str = "ocrl/ObjectGoal-v0"
    algo: str = "ppo"
    observation: str = "slots"
    perception: str | None = None
    keys: list[str] = field(default_factory=lambda: list(DEFAULT_KEYS))
    extractor: str = "context"
    features_dim: int = 64
    hidden_dim: int = 128
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    imagination: str | None = None
    max_objects: int | None = None
    symmetric: bool = False
    real_envs: int = 0
    imagination_starts: int = 4096

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"unknown observation {self.observation!r}; known: {', '.join(OBSERVATIONS)}")
        if self.perception is not None and self.observation != "slots":
            raise ValueError(f"a perception model is used only with observation 'slots', not {self.observation!r}")
        if self.imagination is not None and self.observation == "pixels":
            raise ValueError("agents train in imagination on slot codes or ground-truth objects, not on pixels")
        if self.real_envs < 0 or (self.real_envs and self.imagination is None):
            raise ValueError(
                "real_envs is how many sub-envs act in the real env beside imagined ones: >= 0, with imagination"
            )
        if self.imagination_starts < 1:
            raise ValueError(f"imagination_starts must be positive, got {self.imagination_starts}")
        if self.max_objects is not None and (self.observation != "ground_truth" or self.max_objects < 1):
            raise ValueError("max_objects is the ground-truth oracle's number of rows: a positive int")
        if self.symmetric and (self.algo != "ppo" or self.observation == "pixels"):
            raise ValueError("a symmetric policy is a PPO policy on slot codes or ground-truth objects")
        _with_schedules(self.algo_kwargs)


SCHEDULED = ("learning_rate", "clip_range")


def _with_schedules(algo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``algo_kwargs`` with RL Zoo's ``"lin_<start>"`` values of :data:`SCHEDULED` keys as SB3
    schedules, linear from start to 0 over training (and resumed where they were)."""
    kwargs = dict(algo_kwargs)
    for key in SCHEDULED:
        value = kwargs.get(key)
        if not isinstance(value, str):
            continue
        try:
            start = float(value.removeprefix("lin_")) if value.startswith("lin_") else math.nan
        except ValueError:
            start = math.nan
        if not start > 0:
            raise ValueError(f"{key} {value!r}: a number or 'lin_<start>' with start > 0, e.g. 'lin_1e-3'")
        kwargs[key] = LinearSchedule(start, 0.0, 1.0)
    return kwargs


def _make_env(config: AgentConfig, seed: int | None = None) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        env = ocrl.envs.make(config.env_id, **config.env_kwargs)
        if config.observation == "ground_truth":
            env = GroundTruthObservation(env, config.max_objects)
        env = Monitor(env)
        if seed is not None:
            env.action_space.seed(seed)
        return env

    return make


def make_vec_env(
    config: AgentConfig, num_envs: int = 1, seed: int = 0, device: str | torch.device | None = None
) -> VecEnv:
    """The vector env an agent of ``config`` acts in: sub-env i is seeded ``seed + i``."""
    venv = DummyVecEnv([_make_env(config, seed + index) for index in range(num_envs)])
    venv.seed(seed)
    if config.observation == "slots":
        venv = ObjectCentricVecEnv(venv, model=config.perception, keys=config.keys, device=device)
    elif config.observation == "pixels":
        venv = VecTransposeImage(venv)  # channels first, as SB3 would wrap it for a CnnPolicy
    return venv


def make_imagination_env(
    config: AgentConfig, num_envs: int = 64, seed: int = 0, device: str | torch.device | None = None
) -> VecEnv:
    """The world model of ``config.imagination`` as a VecEnv, its episodes starting from first
    frames of the real env; checks that the model fits the agent's env and perception."""
    from ocrl.data.collect import describe_space
    from ocrl.world_models import ImaginationVecEnv, load_world_model, starts_from_env

    model = load_world_model(config.imagination, device=device)
    world = model.config
    reads = GROUND_TRUTH if config.observation == "ground_truth" else config.perception or ocrl.DEFAULT_PERCEPTION
    if reads != world.perception:
        fix = "--observation ground_truth" if world.perception == GROUND_TRUTH else f"--perception {world.perception}"
        raise OcrlError(
            f"the world model {config.imagination} models codes of perception {world.perception!r}, the agent reads {reads!r}; pass {fix}"
        )
    if config.max_objects not in (None, world.num_slots):
        raise OcrlError(
            f"the world model {config.imagination} has {world.num_slots} rows, the agent max_objects {config.max_objects}"
        )
    if sorted(config.keys) != ["position", "presence", "slots"]:
        raise OcrlError(f"imagined observations hold slots, position and presence; the agent reads {config.keys}")
    env = ocrl.envs.make(config.env_id, **config.env_kwargs)
    try:
        action_space = describe_space(env.action_space)
    finally:
        env.close()
    if action_space != world.action_space:
        raise OcrlError(
            f"{config.env_id} acts in {action_space}, the world model {config.imagination} in {world.action_space}"
        )
    starts = starts_from_env(
        model, config.imagination_starts, seed, env_id=config.env_id, env_kwargs=config.env_kwargs, perception=reads
    )
    return ImaginationVecEnv(model, starts, num_envs=num_envs, seed=seed)


class ConcatVecEnv(VecEnv):
    """The sub-envs of several VecEnvs with the same spaces and dict observations (slot codes or
    the oracle's rows), side by side, as one VecEnv (what mixes imagined and real sub-envs):
    actions, observations, rewards, dones and infos in order, the first VecEnv's sub-envs first."""

    def __init__(self, venvs: list[VecEnv]):
        first = venvs[0]
        for venv in venvs[1:]:
            if (venv.observation_space, venv.action_space) != (first.observation_space, first.action_space):
                raise ValueError(
                    f"VecEnvs of different spaces cannot act side by side: {first.observation_space}, "
                    f"{first.action_space} vs {venv.observation_space}, {venv.action_space}"
                )
        self.venvs = venvs
        self.bounds = np.cumsum([0] + [venv.num_envs for venv in venvs])
        super().__init__(int(self.bounds[-1]), first.observation_space, first.action_space)

    def _join(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def seed(self, seed: int | None = None) -> list[int | None]:
        return [
            value
            for venv, start in zip(self.venvs, self.bounds)
            for value in venv.seed(None if seed is None else seed + int(start))
        ]

    def reset(self):
        observations = [venv.reset() for venv in self.venvs]
        self.reset_infos = [info for venv in self.venvs for info in venv.reset_infos]
        return self._join(observations)

    def step_async(self, actions: np.ndarray) -> None:
        for venv, start, stop in zip(self.venvs, self.bounds, self.bounds[1:]):
            venv.step_async(actions[start:stop])

    def step_wait(self):
        results = [venv.step_wait() for venv in self.venvs]
        observations, rewards, dones, infos = zip(*results)
        return (
            self._join(list(observations)),
            np.concatenate(rewards),
            np.concatenate(dones),
            [i for part in infos for i in part],
        )

    def close(self) -> None:
        for venv in self.venvs:
            venv.close()

    def _each(self, method: str, indices, *args, **kwargs) -> list[Any]:
        """``method`` of the VecEnvs holding sub-envs ``indices``, each with its own indices."""
        wanted = np.asarray(self._get_indices(indices))
        results = []
        for venv, start, stop in zip(self.venvs, self.bounds, self.bounds[1:]):
            mine = [int(i - start) for i in wanted if start <= i < stop]
            if mine:
                results += getattr(venv, method)(*args, indices=mine, **kwargs) or []  # set_attr: None
        return results

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return self._each("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self._each("set_attr", indices, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return self._each("env_method", indices, method_name, *method_args, **method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return self._each("env_is_wrapped", indices, wrapper_class)


def _algorithm(
    config: AgentConfig, venv: VecEnv, seed: int = 0, device: str = "auto", tensorboard: str | None = None
) -> BaseAlgorithm:
    kwargs = {**ALGORITHM_DEFAULTS[config.algo], **_with_schedules(config.algo_kwargs)}
    if config.observation == "pixels":
        policy = "CnnPolicy"
    else:
        policy = "MultiInputPolicy"
        kwargs["policy_kwargs"] = {
            # PPO: actor and critic get their own set extractor, so that value regression does not
            # pull the policy's features around, and the policy keeps PyTorch's default init
            # rather than SB3's orthogonal one (both measured in benchmarks/RESULTS.md, issue 11)
            **({"share_features_extractor": False, "ortho_init": False} if config.algo == "ppo" else {}),
            **kwargs.get("policy_kwargs", {}),
            "features_extractor_class": SlotSetExtractor,
            "features_extractor_kwargs": {
                "kind": config.extractor,
                "features_dim": config.features_dim,
                "hidden_dim": config.hidden_dim,
            },
        }
        if config.symmetric:
            policy = SymmetricPolicy
            kwargs["policy_kwargs"]["moves"] = _moves(config)
    if config.algo == "ppo":
        kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * venv.num_envs)
    try:
        algorithm = ALGORITHMS[config.algo](
            policy, venv, seed=seed, device=device, tensorboard_log=tensorboard, verbose=0, **kwargs
        )
    except (AssertionError, ValueError, TypeError) as error:
        raise OcrlError(
            f"{config.algo} cannot train on {config.env_id} with {config.observation} observations: {error}"
        ) from error
    if tensorboard is None:
        algorithm.set_logger(Logger(folder=None, output_formats=[]))  # SB3 would log to a new /tmp folder per run
    return algorithm


def _moves(config: AgentConfig) -> np.ndarray:
    env = ocrl.envs.make(config.env_id, **config.env_kwargs)
    try:
        moves = getattr(env.unwrapped, "moves", None)
    finally:
        env.close()
    if moves is None:
        raise OcrlError(
            f"{config.env_id} does not say its actions are moves in the plane; a symmetric policy needs a built-in task with discrete actions"
        )
    return moves


def build_policy(config: AgentConfig) -> torch.nn.Module:
    """A fresh SB3 policy for ``config`` (spaces taken from one env); what checkpoints rebuild."""
    venv = make_vec_env(config, 1, device="cpu")
    try:
        return _algorithm(config, venv, device="cpu").policy
    finally:
        venv.close()


register_model_kind("sb3_agent", AgentConfig, build_policy)


def _optimizers(policy: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer in the policy (PPO/DQN: one; SAC: actor and critic), by module name."""
    return {
        name or "policy": module.optimizer
        for name, module in policy.named_modules()
        if isinstance(getattr(module, "optimizer", None), torch.optim.Optimizer)
    }


class _Progress(BaseCallback):
    """A tqdm progress bar over env steps (SB3's own bar needs the ``rich`` package)."""

    def __init__(self, total: int, progress: bool):
        super().__init__()
        self.bar = tqdm(total=total, unit="step", desc="train agent", disable=not progress)

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


CURVE_COLUMNS = ("env_steps", "success_rate", "mean_return", "episodes")


def read_curve(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of an agent's learning curve (``OUT/curve.csv``): held-out success vs env steps."""
    with open(path, newline="") as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def curve_csv(rows: list[dict[str, float]], columns: tuple[str, ...] = CURVE_COLUMNS) -> bytes:
    """CSV bytes of numeric rows (a learning curve's by default), what :func:`read_curve` reads."""
    lines = [",".join(columns)] + [",".join(f"{row[key]:g}" for key in columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


class _Checkpoints(EvalCallback):
    """Every ``every`` env steps: SB3's evaluation on held-out episodes (the same ones each time:
    the eval env is reseeded), one more row of the learning curve, then ``save()``. A row is
    written once the rollout that crossed the mark has been trained on (at the next rollout's
    start, or at the end of training), so the row at N steps scores the policy trained on those
    N steps, as the final evaluation does. SB3's CheckpointCallback is not used: it writes
    pickled zips, which ocrl never loads."""

    def __init__(
        self,
        eval_env: VecEnv,
        every: int,
        episodes: int,
        seed: int,
        rows: list[dict[str, float]],
        save: Callable[[], None],
    ):
        super().__init__(eval_env, n_eval_episodes=episodes, eval_freq=1, verbose=0, warn=False)
        self.every, self.seed, self.rows, self.save = every, seed, rows, save
        self.due = False

    def _on_step(self) -> bool:
        steps = self.num_timesteps
        if steps // self.every != (steps - self.training_env.num_envs) // self.every:
            self.due = True
        return True

    def _init_callback(self) -> None:
        # SB3 warns when the training env is not of the eval env's type (for VecNormalize, which
        # ocrl does not use): imagined training envs never are
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
            super()._init_callback()

    def _on_rollout_start(self) -> None:
        self._checkpoint()

    def _on_training_end(self) -> None:
        self._checkpoint()

    def _checkpoint(self) -> None:
        if not self.due:
            return
        self.due = False
        self.eval_env.seed(self.seed)
        super()._on_step()  # evaluates; logs eval/success_rate to TensorBoard
        success = float(np.mean(self._is_success_buffer)) if self._is_success_buffer else math.nan
        self.rows.append(
            {
                "env_steps": self.num_timesteps,
                "success_rate": success,
                "mean_return": self.last_mean_reward,
                "episodes": self.n_eval_episodes,
            }
        )
        self.save()


def train_agent(
    config: AgentConfig,
    out: str | os.PathLike,
    steps: int = 100_000,
    num_envs: int = 16,
    seed: int = 0,
    device: str = "auto",
    checkpoint_every: int = 20_000,
    eval_episodes: int = 50,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = True,
    init: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train an agent for ``steps`` env steps (all sub-envs together) into checkpoint ``out``.

    On-policy algorithms train whole rollouts, so ``steps`` rounds up to a multiple of
    ``n_steps * num_envs``. Every ``checkpoint_every`` steps the agent is evaluated on
    ``eval_episodes`` held-out episodes (seeds from 10**6 on, the same episodes each time), the
    result appended to its learning curve ``OUT/curve.csv`` (success rate vs env steps; also
    TensorBoard's ``eval/success_rate`` when ``tensorboard`` is given), and saved. Rerunning with the same config
    and ``out`` resumes from the last checkpoint (weights, optimizers and step count; a replay
    buffer is not kept, so SAC/DQN refill theirs). At the end the agent is evaluated once more
    and the scores are returned and stored in metrics.json.

    ``init``: an agent checkpoint whose weights a new run starts from (a fresh optimizer and step
    count), e.g. an agent trained in imagination fine-tuned in the real env. It must be the same
    network: its config may differ from ``config`` only in where and how it trains
    (``imagination``, ``real_envs``, ``imagination_starts``, ``algo_kwargs``).
    """
    preflight(checkpoint=out, device=device)
    out = Path(out)
    resume = (out / CONFIG_FILE).exists()
    if resume and read_checkpoint_config(out)[0] != config:
        raise OcrlError(f"{out} holds an agent of another config; pass another --out to start a new one")
    initial = _initial_policy(init, config) if init is not None and not resume else None
    perception_device = None if device == "auto" else device
    if config.real_envs >= num_envs:
        raise OcrlError(f"real_envs {config.real_envs} leaves none of the {num_envs} sub-envs to imagination")
    if config.imagination is not None:
        venv = make_imagination_env(config, num_envs - config.real_envs, seed, device=perception_device)
        if config.real_envs:
            real = make_vec_env(config, config.real_envs, seed + num_envs, device=perception_device)
            venv = ConcatVecEnv([venv, real])
    else:
        venv = make_vec_env(config, num_envs, seed, device=perception_device)
    algorithm = _algorithm(config, venv, seed, device, None if tensorboard is None else str(tensorboard))
    if isinstance(algorithm, OnPolicyAlgorithm):
        rollout = algorithm.n_steps * venv.num_envs
        steps = math.ceil(steps / rollout) * rollout
    rows: list[dict[str, float]] = []
    if resume:
        trained, _ = load_checkpoint(out)
        algorithm.policy.load_state_dict(trained.state_dict())
        state = load_trainer_state(out) or {}
        for name, optimizer in _optimizers(algorithm.policy).items():
            if name in state.get("optimizers", {}):
                optimizer.load_state_dict(state["optimizers"][name])
        algorithm.num_timesteps = int(state.get("num_timesteps", 0))
        if (out / CURVE_FILE).exists():
            rows = read_curve(out / CURVE_FILE)
    elif initial is not None:
        algorithm.policy.load_state_dict(initial.state_dict())

    def save(metrics: dict[str, Any] | None = None) -> None:
        trainer_state = {
            "num_timesteps": algorithm.num_timesteps,
            "optimizers": {name: optimizer.state_dict() for name, optimizer in _optimizers(algorithm.policy).items()},
        }
        save_checkpoint(
            algorithm.policy,
            config,
            out,
            trainer_state=trainer_state,
            metrics=metrics or {"num_timesteps": algorithm.num_timesteps, "done": False},
            training_config={
                "steps": steps,
                "num_envs": num_envs,
                "seed": seed,
                **({} if init is None else {"init": str(init)}),
            },
            extra_files={CURVE_FILE: curve_csv(rows)},
        )

    eval_env = make_vec_env(config, min(8, eval_episodes), EVALUATION_SEED, device=perception_device)
    callback = CallbackList(
        [
            _Progress(steps, progress),
            _Checkpoints(eval_env, checkpoint_every, eval_episodes, EVALUATION_SEED, rows, save),
        ]
    )
    remaining = steps - algorithm.num_timesteps
    try:
        if remaining > 0:
            algorithm.learn(remaining, callback=callback, reset_num_timesteps=False)
    except KeyboardInterrupt:
        save()
        raise
    finally:
        venv.close()
        eval_env.close()
    metrics = evaluate_policy_in_env(
        algorithm.policy, config, eval_episodes, device=perception_device, progress=progress
    )
    metrics["num_timesteps"] = algorithm.num_timesteps
    save({**metrics, "done": True})
    return metrics


def _initial_policy(init: str | os.PathLike, config: AgentConfig) -> torch.nn.Module:
    """The policy of agent checkpoint ``init``, checked to be the network ``config`` builds."""
    policy, init_config = load_agent(init)
    same_network = {"imagination": None, "real_envs": 0, "algo_kwargs": {}, "imagination_starts": 1}
    if replace(init_config, **same_network) != replace(config, **same_network):
        raise OcrlError(
            f"{init} is another agent (its config differs in more than imagination, real_envs,"
            " imagination_starts and algo_kwargs) and cannot start this one"
        )
    return policy


def load_agent(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[torch.nn.Module, AgentConfig]:
    """(SB3 policy in eval mode, its :class:`AgentConfig`) from an agent checkpoint directory
    or a shipped agent's name (``ocrl.shipped_models()``)."""
    policy, config = load_checkpoint(ocrl.checkpoint_path(path, "agent"), device=device)
    if not isinstance(config, AgentConfig):
        raise OcrlError(f"{path} is a checkpoint of a {type(config).__name__}, not an agent")
    return policy, config


EVALUATION_SEED = 1_000_000


@contextlib.contextmanager
def _seeded_draws(seed: int) -> Iterator[None]:
    """Torch's random draws inside (a policy's sampled actions) follow ``seed``; the caller's
    random state is as it was afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def evaluate_policy_in_env(
    policy: torch.nn.Module,
    config: AgentConfig,
    episodes: int = 20,
    seed: int = EVALUATION_SEED,
    num_envs: int = 8,
    deterministic: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Success rate (built-in tasks; NaN for envs that do not report it), the share of episodes
    the time limit ended, return and length over ``episodes`` episodes, through SB3's
    ``evaluate_policy`` (which gives each sub-env a fixed share of the episodes: counting
    whichever end first would favour short episodes).

    ``deterministic`` takes each state's most likely action (SB3's convention). Such a policy
    repeats itself until the time limit once it is back in a state it has been in (pressing into
    a wall, stepping back and forth); sampling (``False``) walks out of those loops, its draws
    seeded by ``seed`` (the caller's random state is left as it was)."""
    venv = make_vec_env(config, max(1, min(num_envs, episodes)), seed, device=device)
    successes: list[float] = []
    time_limits: list[bool] = []
    bar = tqdm(total=episodes, unit="episode", desc="evaluate", disable=not progress)

    def record(local: dict[str, Any], _: dict[str, Any]) -> None:
        if local["done"]:
            successes.append(float(local["info"].get("is_success", math.nan)))
            time_limits.append(bool(local["info"].get("TimeLimit.truncated", False)))
            bar.update(1)

    try:
        with _seeded_draws(seed):
            returns, lengths = evaluate_policy(
                policy,
                venv,
                n_eval_episodes=episodes,
                deterministic=deterministic,
                return_episode_rewards=True,
                callback=record,
                warn=False,
            )
    finally:
        bar.close()
        venv.close()
    return {
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "time_limit_rate": float(np.mean(time_limits)),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "deterministic": deterministic,
    }


def _picture_and_input(observation, env: gym.Env, config: AgentConfig, scale: int) -> tuple[np.ndarray, Any]:
    """One frame of :func:`record_episode`'s GIF (slot agents: frame | slot masks over it) and the
    observation as a batch of one for the policy."""
    from ocrl.viz import grid, slot_colours

    if config.observation == "slots":
        masks = observation["masks"]
        frame = prepare_frames(observation["observation"][None], masks.shape[-1], "cpu", resize=True)[0]
        small = (frame.movedim(0, -1) * 255).round().byte().numpy()
        overlay = (0.45 * small + 0.55 * slot_colours(masks.shape[0])[masks.argmax(axis=0)]).astype(np.uint8)
        return grid([[small, overlay]], scale=scale), {key: observation[key][None] for key in config.keys}
    frame = env.render() if config.observation == "ground_truth" else observation
    if isinstance(observation, dict):
        return grid([[frame]], scale=scale), {key: value[None] for key, value in observation.items()}
    return grid([[frame]], scale=scale), observation[None]


def record_episode(
    policy: torch.nn.Module,
    config: AgentConfig,
    path: str | os.PathLike,
    seed: int = EVALUATION_SEED,
    device: str | torch.device | None = None,
    scale: int = 3,
    deterministic: bool = True,
) -> dict[str, Any]:
    """Play one episode and write it as a GIF; slot agents show frame | slot masks over it
    (each slot in its own colour, stable over time). Returns the episode's return and success.
    ``deterministic`` as in :func:`evaluate_policy_in_env`."""
    from ocrl.viz import save_gif
    from ocrl.wrappers import ObjectCentricObservation

    if config.observation == "ground_truth":  # its observations hold no frames: render them
        env = ocrl.envs.make(config.env_id, render_mode="rgb_array", **config.env_kwargs)
    else:
        env = ocrl.envs.make(config.env_id, **config.env_kwargs)
    if config.observation == "slots":
        env = ObjectCentricObservation(
            env, config.perception, keys=(*config.keys, "masks"), keep_observation=True, device=device
        )
    elif config.observation == "ground_truth":
        env = GroundTruthObservation(env, config.max_objects)
    observation, info = env.reset(seed=seed)
    pictures, total, done = [], 0.0, False
    with _seeded_draws(seed):
        while True:
            picture, acted = _picture_and_input(observation, env, config, scale)
            pictures.append(picture)
            if done:
                break
            action, _ = policy.predict(acted, deterministic=deterministic)
            observation, reward, terminated, truncated, info = env.step(action[0])
            total += float(reward)
            done = terminated or truncated
    env.close()
    save_gif(pictures, path)
    return {
        "return": total,
        "is_success": info.get("is_success"),
        "steps": len(pictures) - 1,
        "video": str(path),
        "deterministic": deterministic,
    }

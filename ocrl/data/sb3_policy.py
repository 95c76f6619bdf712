"""Act with the policy of a Stable-Baselines3 ``.zip`` without unpickling anything from it (and
with an ocrl agent checkpoint directory: :class:`AgentPolicy`).

``BaseAlgorithm.load`` unpickles the zip's ``data`` entries (cloudpickle), which runs whatever
code the file carries; ocrl never does that with a file a user hands it. Instead the policy is
rebuilt from what can be read safely:

* the policy class, from the readable ``__module__`` and method names of the ``policy_class``
  entry, accepted only from SB3's own policy modules (PPO/A2C, DQN, SAC, TD3);
* the observation and action spaces of the env it will act in, checked against the readable
  fields of the saved spaces;
* ``policy_kwargs``, when they are plain JSON;
* the weights, ``policy.pth``, with ``torch.load(weights_only=True)`` and a strict
  ``load_state_dict``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ocrl.data.store import PARSE_ERRORS
from ocrl.errors import OcrlError

# modules whose policy classes can be rebuilt; the class must also subclass SB3's BasePolicy
_POLICY_MODULES = {
    "stable_baselines3.common.policies": "PPO/A2C",
    "stable_baselines3.dqn.policies": "DQN",
    "stable_baselines3.sac.policies": "SAC",
    "stable_baselines3.td3.policies": "TD3",
}
_SERIALIZED = ":serialized:"  # SB3's marker of a cloudpickle blob in the ``data`` JSON


class Sb3Policy:
    """``policy(observations) -> actions`` for a batch, (B, ...) -> (B, ...) numpy arrays.

    Actions are sampled unless ``deterministic``; sampling uses torch's global RNG.
    """

    def __init__(self, policy, deterministic: bool, description: dict[str, Any]):
        self.policy = policy
        self.deterministic = deterministic
        self.description = description

    def __call__(self, observations, records=None, is_first=None) -> np.ndarray:
        actions, _ = self.policy.predict(observations, deterministic=self.deterministic)
        return actions


class AgentPolicy:
    """``policy(observations, records, is_first) -> actions`` for an ocrl agent checkpoint (a
    directory from ``ocrl train-agent``), with ``records`` each sub-env's latest
    :class:`~ocrl.data.collect.RecordedFrame`: pixel agents act on the observed frames, slot
    agents on the codes of their perception model, encoded here batch by batch with each
    sub-env's episode start (``is_first``), ground-truth agents on the recorded objects."""

    def __init__(self, path: str | Path, env_id: str, env: gym.Env, deterministic: bool = False):
        from ocrl.agents import load_agent

        path = Path(path)
        self.policy, self.config = load_agent(path, device="cpu")
        if self.config.env_id != env_id:
            raise OcrlError(f"{path} is an agent of {self.config.env_id}, not of {env_id}")
        if self.config.observation == "pixels" and not (
            isinstance(env.observation_space, gym.spaces.Box)
            and env.observation_space.shape
            == self.policy.observation_space.shape[1:] + self.policy.observation_space.shape[:1]
        ):
            raise OcrlError(
                f"{path} acts on pixels of shape {self.policy.observation_space.shape}, the env observes {env.observation_space}"
            )
        self.deterministic = deterministic
        self.encoder = None
        self.description = {
            "kind": "ocrl-agent",
            "directory": path.name,
            "config": self.config.to_dict(),
            "deterministic": deterministic,
        }

    def recorded_as(self, description: Any) -> dict[str, Any]:
        """The description a store recorded for this agent when it names the same agent (its
        config written by a version with fewer, since defaulted, fields), else this one's: so
        that a store collected before an upgrade resumes."""
        from ocrl.agents import AgentConfig

        if isinstance(description, dict) and description.get("kind") == "ocrl-agent":
            try:
                same = AgentConfig.from_dict(description.get("config")) == self.config
            except ValueError:
                same = False
            if same and {**description, "config": None} == {**self.description, "config": None}:
                return description
        return self.description

    def __call__(self, observations, records=None, is_first=None) -> np.ndarray:
        if self.config.observation == "slots":
            from ocrl.wrappers import SlotEncoder

            if self.encoder is None or self.encoder.num_streams != len(records):
                self.encoder = SlotEncoder(
                    self.config.perception, num_streams=len(records), keys=self.config.keys, device="cpu"
                )
            observations = self.encoder.encode(np.stack([record.frame for record in records]), is_first)
        elif self.config.observation == "ground_truth":
            from ocrl.agents.ground_truth import object_rows

            if any(record.ground_truth is None for record in records):
                raise OcrlError("a ground-truth agent needs an env that reports its objects (info['ground_truth'])")
            rows = self.policy.observation_space["slots"].shape[0]
            per_env = [object_rows(record.ground_truth, rows) for record in records]
            observations = {key: np.stack([codes[key] for codes in per_env]) for key in per_env[0]}
        actions, _ = self.policy.predict(observations, deterministic=self.deterministic)
        return actions


def load_sb3_policy(path: str | Path, env: gym.Env, deterministic: bool = False) -> Sb3Policy:
    """Rebuild the policy saved in SB3 zip ``path`` for acting in ``env`` (any env with the
    observation and action spaces the policy was trained on). Raises :class:`OcrlError` when the
    file is not a usable SB3 zip or does not fit the env."""
    path = Path(path)
    if not path.is_file():
        raise OcrlError(f"policy file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
            weights = archive.read("policy.pth")
    except (*PARSE_ERRORS, KeyError) as error:
        raise OcrlError(f"{path} is not a Stable-Baselines3 zip ({error})") from None

    policy_class = _policy_class(path, data.get("policy_class"))
    observation_space = _observation_space_for(env.observation_space)
    _check_space(path, "observation", data.get("observation_space"), observation_space)
    _check_space(path, "action", data.get("action_space"), env.action_space)
    policy_kwargs = data.get("policy_kwargs", {})
    if not isinstance(policy_kwargs, dict) or _SERIALIZED in policy_kwargs:
        raise OcrlError(
            f"{path}: its policy_kwargs are pickled Python objects (e.g. an activation class), which "
            "only unpickling the file could restore, and ocrl does not unpickle files"
        )
    if policy_class.__module__ == "stable_baselines3.common.policies":
        policy_kwargs = {"use_sde": bool(data.get("use_sde", False)), **policy_kwargs}

    try:
        policy = policy_class(observation_space, env.action_space, lambda progress_remaining: 0.0, **policy_kwargs)
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        policy.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as error:
        message = " ".join(str(error).split())
        raise OcrlError(f"{path}: cannot rebuild its {policy_class.__name__} for this env ({message[:500]})") from None
    policy.set_training_mode(False)
    description = {
        "kind": "sb3",
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "policy_class": f"{policy_class.__module__}.{policy_class.__name__}",
        "deterministic": deterministic,
    }
    return Sb3Policy(policy, deterministic, description)


def _policy_class(path: Path, entry: Any) -> type:
    """The SB3 policy class named by the readable fields of the ``policy_class`` entry."""
    from stable_baselines3.common.policies import BasePolicy

    if not isinstance(entry, dict):
        raise OcrlError(f"{path}: no readable policy_class in its data")
    module_name = entry.get("__module__")
    # the class's own methods are listed as '<function ClassName.__init__ at 0x...>'
    match = re.fullmatch(r"<function (\w+)\.__init__ at \w+>", str(entry.get("__init__", "")))
    if module_name not in _POLICY_MODULES or match is None:
        supported = ", ".join(f"{module} ({family})" for module, family in _POLICY_MODULES.items())
        raise OcrlError(f"{path}: policy class from {module_name!r} is not supported; supported: {supported}")
    policy_class = getattr(importlib.import_module(module_name), match[1], None)
    if not (isinstance(policy_class, type) and issubclass(policy_class, BasePolicy)):
        raise OcrlError(f"{path}: {module_name}.{match[1]} is not an SB3 policy class")
    return policy_class


def _observation_space_for(space: gym.Space) -> gym.Space:
    """The observation space SB3 trained on: channel-last images were transposed to channel-first
    by ``VecTransposeImage`` (``predict`` transposes observations back the same way)."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    if is_image_space(space) and not is_image_space_channels_first(space):
        return VecTransposeImage.transpose_space(space)
    return space


def _check_space(path: Path, kind: str, entry: Any, space: gym.Space) -> None:
    """Compare the readable type, shape and size of a saved space with the env's space."""
    if not isinstance(entry, dict):
        raise OcrlError(f"{path}: no readable {kind} space in its data")
    saved_type = str(entry.get(":type:", ""))
    saved = {"type": re.sub(r".*\.(\w+)'>$", r"\1", saved_type)}
    wanted = {"type": type(space).__name__}
    if "_shape" in entry and space.shape is not None:
        saved["shape"], wanted["shape"] = (
            str(entry["_shape"]).replace(" ", ""),
            json.dumps(list(space.shape)).replace(" ", ""),
        )
    if "n" in entry and hasattr(space, "n"):
        saved["n"], wanted["n"] = str(entry["n"]), str(space.n)
    if saved != wanted:
        raise OcrlError(f"{path}: the policy was trained on {kind} space {saved}, but the env's is {wanted}")

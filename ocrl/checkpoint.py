"""Checkpoints: a directory that a model can be rebuilt from, without pickle.

Layout::

    checkpoint/
        config.json          format, library version, model kind, model config (typed
                             dataclass as JSON), optional training config
        model.safetensors    weights (state dict)
        trainer.safetensors  optional: tensors of the trainer state (optimizer, RNG, ...)
        trainer.json         optional: the rest of the trainer state, tensors by reference
        metrics.json         optional
        curve.csv            optional: a learning curve (agents: held-out success vs env steps)

:func:`save_checkpoint` writes everything into a temporary sibling directory and renames it into
place, so an interrupted save leaves the previous checkpoint (or nothing) rather than a mix.
:func:`load_checkpoint` rebuilds the model from its config and loads the weights, raising
:class:`CheckpointError` (a ValueError) that names the path when anything does not fit.

Which config class and builder each ``model_kind`` stands for is the table :data:`MODEL_KINDS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ocrl.errors import OcrlError
from ocrl.files import fsync_directory, temporary_directory
from ocrl.version import library_version

FORMAT = "ocrl-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_FILE = "trainer.json"
METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.csv"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINER_TENSORS_FILE, TRAINER_FILE, METRICS_FILE, CURVE_FILE)


class CheckpointError(OcrlError, ValueError):
    """A path is not a loadable checkpoint, or a checkpoint cannot be written; the message names the path."""


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How to rebuild one kind of model: where its config class (with ``to_dict``/``from_dict``)
    and its builder live, as ``"module:name"``; imported when a checkpoint of the kind is met."""

    name: str
    config: str
    builder: str

    @property
    def config_class(self) -> type:
        return _import(self.config)

    @property
    def build(self) -> Callable[[Any], nn.Module]:
        return _import(self.builder)

    def holds(self, config: Any) -> bool:
        """Whether ``config`` is of this kind (decided without importing the kind's module)."""
        return f"{type(config).__module__}:{type(config).__qualname__}" == self.config


# The kinds of perception model (``ocrl.load_perception`` loads these).
PERCEPTION_KINDS = ("video_slot_model", "loci_model")
# The checkpoint kinds of ocrl: the kind a config.json names picks its row. The modules are our
# own, imported lazily (so that core ocrl does not import agents or world models, and loading
# never depends on what happened to be imported before); nothing a file says is ever imported.
MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "video_slot_model", "ocrl.perception.config:PerceptionConfig", "ocrl.perception.build:build_perception"
        ),
        ModelKind("loci_model", "ocrl.perception.loci.config:LociConfig", "ocrl.perception.loci.build:build_loci"),
        ModelKind(
            "slot_world_model", "ocrl.world_models.model:WorldModelConfig", "ocrl.world_models.model:build_world_model"
        ),
        ModelKind("sb3_agent", "ocrl.agents.training:AgentConfig", "ocrl.agents.training:build_policy"),
    )
}


def register_model_kind(name: str, config_class: type, build: Callable[[Any], nn.Module]) -> None:
    """Make checkpoints of a model kind outside ocrl loadable (ocrl's own are in :data:`MODEL_KINDS`)."""
    kind = ModelKind(
        name, f"{config_class.__module__}:{config_class.__qualname__}", f"{build.__module__}:{build.__qualname__}"
    )
    if MODEL_KINDS.get(name, kind) != kind:
        raise ValueError(f"model kind {name!r} is already taken by {MODEL_KINDS[name].config}")
    MODEL_KINDS[name] = kind


def _import(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def _kind_of(config: Any) -> ModelKind:
    for kind in MODEL_KINDS.values():
        if kind.holds(config):
            return kind
    raise CheckpointError(f"no model kind is registered for config type {type(config).__name__}; see MODEL_KINDS")


def _as_json_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


# ---------------------------------------------------------------------------------------------
# Trainer state: nested containers of tensors and plain values, split into JSON + safetensors.


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"tensor_{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise CheckpointError(f"{where}: object arrays cannot be stored without pickle")
        name = f"tensor_{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"__ndarray__": name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, tensors, f"{where}[{index}]") for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, tensors, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item, tensors, f"{where}.{key}") for key, item in value.items()}
        # non-string keys (optimizer state is keyed by parameter index) keep their type this way
        return {
            "__dict__": [
                [_encode(key, tensors, where), _encode(item, tensors, f"{where}[{key!r}]")]
                for key, item in value.items()
            ]
        }
    raise CheckpointError(
        f"{where}: cannot store a {type(value).__name__} without pickle (use tensors, numbers, strings, lists, tuples, dicts)"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_decode(item, tensors) for item in value["__tuple__"])
        if "__dict__" in value:
            return {_hashable(_decode(key, tensors)): _decode(item, tensors) for key, item in value["__dict__"]}
        return {key: _decode(item, tensors) for key, item in value.items()}
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(item) for item in key) if isinstance(key, list) else key


# ---------------------------------------------------------------------------------------------
# Saving


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, data: Any) -> None:
    _write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def foreign_files(directory: Path) -> list[str]:
    """Names of the entries of ``directory`` that are not part of a checkpoint, sorted."""
    return sorted(entry.name for entry in Path(directory).iterdir() if entry.name not in CHECKPOINT_FILES)


def save_checkpoint(
    model: nn.Module,
    config: Any,
    directory: str | os.PathLike,
    trainer_state: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training_config: Any = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``model`` (built from ``config``) as a checkpoint directory, atomically.

    Args:
        model: the module; its ``state_dict`` goes to model.safetensors.
        config: the config it was built from (e.g. a :class:`~ocrl.perception.PerceptionConfig`).
        directory: created, or replaced if it already is a checkpoint (or empty). A directory
            holding other files is refused, so that saving never deletes someone's data.
        trainer_state: optional nested dict (tensors, numbers, strings, lists, tuples, dicts),
            e.g. ``{"optimizer": optimizer.state_dict(), "step": step, "rng": torch.get_rng_state()}``.
        metrics: optional JSON-able dict for metrics.json.
        training_config: optional dataclass or JSON-able dict, stored in config.json.
        extra_files: optional further files of the checkpoint by name (only :data:`CURVE_FILE`).

    Returns the checkpoint directory.
    """
    kind = _kind_of(config)
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise CheckpointError(f"cannot save a checkpoint to {directory}: it is a file")
        foreign = foreign_files(directory)
        if foreign:
            raise CheckpointError(
                f"refusing to replace {directory}: it holds files that are not part of a checkpoint ({', '.join(foreign[:5])})"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "model_kind": kind.name,
        "model": config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config),
    }
    if training_config is not None:
        header["training"] = _as_json_dict(training_config)
    try:
        config_text = json.dumps(header, indent=2) + "\n"
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"cannot save a checkpoint to {directory}: the config is not JSON-able: {error}"
        ) from error

    temporary = temporary_directory(directory.parent, prefix=f".{directory.name}.tmp-")
    try:
        # cloned: modules shared under several names (SB3's features extractors) share storage,
        # which safetensors refuses; each name gets its own copy and loads back the same
        weights = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
        files = {
            WEIGHTS_FILE: safetensors.torch.save(
                weights, metadata={"format": "pt", "library_version": header["library_version"]}
            )
        }
        if trainer_state is not None:
            tensors: dict[str, torch.Tensor] = {}
            skeleton = _encode(trainer_state, tensors, "trainer_state")
            files[TRAINER_TENSORS_FILE] = safetensors.torch.save(tensors)
            files[TRAINER_FILE] = (json.dumps(skeleton, indent=2) + "\n").encode()
        for name, data in (extra_files or {}).items():
            if name != CURVE_FILE:
                raise CheckpointError(f"cannot save {name!r} into checkpoint {directory}: not a checkpoint file")
            files[name] = data
        for name, data in files.items():
            _write_bytes(temporary / name, data)
        if metrics is not None:
            _write_json(temporary / METRICS_FILE, _as_json_dict(metrics))
        # safetensors has no checksum of its own: a flipped bit in the weights would load silently
        config_text = (
            json.dumps(
                {**header, "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}, indent=2
            )
            + "\n"
        )
        # config.json last: a directory with a config.json is a complete checkpoint
        _write_bytes(temporary / CONFIG_FILE, config_text.encode())
        fsync_directory(temporary)
        if directory.exists():
            # Two renames: between them the previous checkpoint lives on under the backup name.
            backup = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, backup)
            os.replace(temporary, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, directory)
        fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


# ---------------------------------------------------------------------------------------------
# Loading


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.exists() else []
        hint = f" (an interrupted save left the previous checkpoint at {leftovers[0]})" if leftovers else ""
        raise CheckpointError(f"{directory} is not a checkpoint: it does not exist{hint}")
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a checkpoint: it is a file, expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not a checkpoint: it lacks {' and '.join(missing)}")


def read_checkpoint_config(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The typed model config of a checkpoint and the whole parsed config.json."""
    directory = Path(directory)
    _check_directory(directory)
    path = directory / CONFIG_FILE
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not an ocrl checkpoint config (expected "format": "{FORMAT}")')
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this ocrl ({library_version()}) reads up to {FORMAT_VERSION}"
        )
    kind = MODEL_KINDS.get(header.get("model_kind"))
    if kind is None:
        raise CheckpointError(
            f"{path}: unknown model_kind {header.get('model_kind')!r}; known: {', '.join(sorted(MODEL_KINDS))}"
        )
    try:
        config = kind.config_class.from_dict(header.get("model"))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: malformed model config: {error}") from error
    # agents and world models name the env they act in; making it must not import code
    if getattr(config, "env_id", None) is not None:
        from ocrl.envs import check_env_id_from_file

        try:
            check_env_id_from_file(config.env_id, str(path))
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    return config, header


def _describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{name} {tuple(found[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(found))
        if found[name].shape != expected[name].shape
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs config)", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    return "; ".join(problems)


def _read_checked(directory: Path, name: str) -> bytes:
    """The bytes of file ``name`` of a checkpoint, checked against the SHA-256 its config.json
    records (checkpoints written before ocrl recorded them are read unchecked)."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    try:
        expected = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")).get("sha256", {}).get(name)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        expected = None  # read_checkpoint_config reports a bad config.json
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 differs from the one recorded in {directory / CONFIG_FILE}"
        )
    return data


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """Rebuild a model from its checkpoint directory: ``(model in eval mode, config)``."""
    directory = Path(directory)
    config, _ = read_checkpoint_config(directory)
    kind = _kind_of(config)
    try:
        model = kind.build(config)
    except (OcrlError, KeyboardInterrupt):
        raise
    except Exception as error:  # a damaged config can fail anywhere in the builder (num_heads 0, ...)
        reason = str(error) if isinstance(error, (ValueError, TypeError)) else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{directory / CONFIG_FILE}: the config does not build a model: {reason}") from error
    path = directory / WEIGHTS_FILE
    data = _read_checked(directory, WEIGHTS_FILE)
    try:
        weights = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error type for corrupt files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {error}") from error
    mismatch = _describe_mismatch(model.state_dict(), weights)
    if mismatch:
        raise CheckpointError(f"{path} does not match the config in {directory / CONFIG_FILE}: {mismatch}")
    model.load_state_dict(weights, strict=True)
    if device is not None:
        model.to(device)
    return model.eval(), config


def load_trainer_state(directory: str | os.PathLike, device: torch.device | str | None = None) -> dict[str, Any] | None:
    """The trainer state saved with a checkpoint, or None if it has none."""
    directory = Path(directory)
    _check_directory(directory)
    skeleton_path, tensors_path = directory / TRAINER_FILE, directory / TRAINER_TENSORS_FILE
    if not skeleton_path.exists():
        return None
    try:
        skeleton = json.loads(_read_checked(directory, TRAINER_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{skeleton_path} is not valid JSON: {error}") from error
    try:
        tensors = safetensors.torch.load(_read_checked(directory, TRAINER_TENSORS_FILE))
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{tensors_path} is corrupt or not a safetensors file: {error}") from error
    if device is not None:
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    try:
        return _decode(skeleton, tensors)
    except KeyError as error:
        raise CheckpointError(f"{skeleton_path} refers to tensor {error} that {tensors_path} lacks") from error


def load_metrics(directory: str | os.PathLike) -> dict[str, Any] | None:
    """metrics.json of a checkpoint, or None if it has none."""
    path = Path(directory) / METRICS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error

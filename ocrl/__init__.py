"""ocrl: object-centric reinforcement learning.

Frames of any gymnasium env become slot codes (:mod:`ocrl.slots`) through recurrent video
models (:mod:`ocrl.perception`); SB3 agents learn from them (:mod:`ocrl.agents`); slot world
models learn their dynamics (:mod:`ocrl.world_models`). Built-in tasks and adapters with exact
ground truth live in :mod:`ocrl.envs`.

Importing ``ocrl`` stays light: torch and the models load on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

MODELS_DIRECTORY = Path(__file__).parent / "models"
# The shipped model that wrappers use when given none (trained on the built-in tasks).
DEFAULT_PERCEPTION = "loci-sprites"


def shipped_models() -> list[str]:
    """Names of the trained checkpoints that ship with ocrl (perception models and agents)."""
    if not MODELS_DIRECTORY.is_dir():
        return []
    return sorted(entry.name for entry in MODELS_DIRECTORY.iterdir() if (entry / "config.json").is_file())


def checkpoint_path(name_or_path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """The checkpoint directory ``name_or_path`` names: a path, or a shipped model's name.
    Raises :class:`ocrl.checkpoint.CheckpointError` (naming ``what`` was asked for and listing
    the shipped names) when it is neither."""
    from ocrl.checkpoint import CheckpointError

    path, name = Path(name_or_path), str(name_or_path)
    if path.exists():
        return path
    if os.sep not in name and (MODELS_DIRECTORY / name).is_dir():
        return MODELS_DIRECTORY / name
    known = ", ".join(shipped_models()) or "none"
    raise CheckpointError(f"no {what} {name!r}: not a checkpoint directory, nor a shipped model (shipped: {known})")


def load_perception(name_or_path: str | os.PathLike, device=None):
    """A perception model in eval mode, from a checkpoint directory or a shipped model's name.

    Raises :class:`ocrl.checkpoint.CheckpointError` (a ValueError naming the path) when the
    path is not a checkpoint, its config does not match its weights, or a name is neither a
    path nor shipped (the message lists the shipped names).
    """
    from ocrl.checkpoint import PERCEPTION_KINDS, CheckpointError, read_checkpoint_config

    path = checkpoint_path(name_or_path, "perception model")
    _, header = read_checkpoint_config(path)
    if header["model_kind"] not in PERCEPTION_KINDS:
        raise CheckpointError(
            f"{path} holds a {header['model_kind']} checkpoint, not a perception model (ocrl.load loads any kind)"
        )
    return load(path, device=device)


def load(path: str | os.PathLike, device=None):
    """The model of any ocrl checkpoint directory, in eval mode, built as its config.json's
    ``model_kind`` says (see :data:`ocrl.checkpoint.MODEL_KINDS`)."""
    from ocrl.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path, device=device)
    return model

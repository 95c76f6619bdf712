"""Checks before any work: where a run writes, what it reads and where it computes.

Training refuses a ``--out`` holding someone else's files when it saves its first checkpoint;
a run that learns so only after hours has thrown those hours away. Every command therefore
calls :func:`preflight` first, which raises :class:`~ocrl.errors.OcrlError` (one line on the
command line) for:

- a checkpoint directory that is a file, holds files that are not a checkpoint's, or cannot be
  created;
- an output file whose place is a directory or cannot be written;
- an input store that is missing, not a store, unreadable or empty;
- a device that does not exist here (``cuda`` on a CPU build of torch, ``cuda:3`` on one GPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ocrl.errors import OcrlError


def check_device(device) -> None:
    """Raise unless ``device`` (a string, a torch.device, None or ``"auto"``) can run here."""
    import torch

    if device is None or device == "auto":
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OcrlError(f"--device {device}: not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device is visible"
            raise OcrlError(
                f"--device {device}: CUDA is not available here ({build}, torch {torch.__version__}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OcrlError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OcrlError(f"--device {device}: MPS is not available here; use --device cpu")


def _writable_place(path: Path) -> None:
    """Raise unless ``path`` could be created: its nearest existing ancestor is a writable directory."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OcrlError(f"cannot write {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OcrlError(f"cannot write {path}: {ancestor} is not writable")


def check_checkpoint_output(path: str | os.PathLike) -> None:
    """Raise unless ``path`` is a place a checkpoint may be saved (the rule of
    :func:`~ocrl.checkpoint.save_checkpoint`: new, empty, or a checkpoint)."""
    from ocrl.checkpoint import foreign_files

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OcrlError(f"--out {path} is a file; a checkpoint is a directory")
        foreign = foreign_files(path)
        if foreign:
            raise OcrlError(
                f"--out {path} holds files that are not part of a checkpoint ({', '.join(foreign[:5])}); pass another --out"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise OcrlError(f"cannot write {path}: it is not writable")
    _writable_place(path)


def check_output_file(path: str | os.PathLike) -> None:
    """Raise unless a file could be written at ``path`` (or replaced there)."""
    path = Path(path)
    if path.is_dir():
        raise OcrlError(f"--out {path} is a directory; expected a file name")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise OcrlError(f"cannot write {path}: {path.parent} is not writable")
    _writable_place(path)


def has_actions(header: dict) -> bool:
    """Whether a store's manifest header describes actions (converted MOVi has a Box of shape (0,))."""
    space = header.get("action_space")
    if not isinstance(space, dict) or "type" not in space:
        return False
    return not (space["type"] == "Box" and 0 in space.get("shape", [0]))


def check_store_input(path: str | os.PathLike, actions: bool = False):
    """The opened :class:`~ocrl.data.store.RolloutStore` at ``path``, or an error if it is
    missing, not a store, has a corrupt manifest or no episodes; with ``actions``, also if its
    episodes have no actions (a converted MOVi store)."""
    from ocrl.data.store import RolloutStore

    store = RolloutStore.open(path)
    if len(store) == 0:
        raise OcrlError(f"{path} holds no episodes; collect some first (ocrl collect ... --out {path})")
    if actions and not has_actions(store.header):
        raise OcrlError(
            f"{path} has no actions (its episodes are videos, e.g. converted MOVi); world models need a store from 'ocrl collect'"
        )
    return store


def preflight(
    *,
    checkpoint: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
    stores: Sequence[str | os.PathLike] = (),
    stores_need_actions: bool = False,
    device=None,
) -> list:
    """Every check that applies, before any work; returns the opened input stores."""
    check_device(device)
    opened = [check_store_input(path, actions=stores_need_actions) for path in stores]
    if checkpoint is not None:
        check_checkpoint_output(checkpoint)
    if output_file is not None:
        check_output_file(output_file)
    return opened

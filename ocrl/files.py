"""Atomic writes: a crash leaves the old file (or directory) or the new one, never a partial one.

Files and directories made here get the modes of ordinary ones (0666 / 0777 less the umask,
e.g. 0644 / 0755): temp files from :mod:`tempfile` are private (0600 / 0700) and would keep
that mode after the rename.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through a temp file in the same directory, so a crash leaves either the old
    file or the new one, never a partial one."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        # os.open, not mkstemp: mkstemp's 0600 mode would stick to the final file
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make renames inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def temporary_directory(parent: Path, prefix: str) -> Path:
    """A new directory in ``parent`` to fill and rename into place, with an ordinary directory's mode."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask

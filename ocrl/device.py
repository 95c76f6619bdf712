"""The one default device choice, and the CPU allocator setting that CPU inference wants."""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def default_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    import torch  # here: the ocrl command imports this module, and `ocrl --help` loads no torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the system.

    glibc returns freed blocks above 128 KiB (a threshold it adjusts) to the kernel at once,
    and a forward pass on the CPU allocates and frees tensors of the same sizes on every call,
    so their pages fault in and are zeroed again each time: about 5,000 page faults and 10-12 ms
    of system time per Loci-s ``step`` at batch 8 on dev (``benchmarks/RESULTS.md``).
    Blocks up to 32 MiB now come from the heap, which keeps up to 1 GiB of freed memory for
    reuse. Process-wide and idempotent; the ``ocrl`` command and the slot-code wrappers call it.
    Returns whether it applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # another C library (e.g. musl)
        return False

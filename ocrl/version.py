"""The installed ocrl version, written into stores and checkpoints."""

from __future__ import annotations

from importlib import metadata


def library_version() -> str:
    """The version pip installed, or ``"unknown"`` when run from a tree that is not installed."""
    try:
        return metadata.version("ocrl")
    except metadata.PackageNotFoundError:
        return "unknown"

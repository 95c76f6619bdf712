"""Errors that ocrl raises for things a user can fix; the CLI prints them as one line."""

from __future__ import annotations


class OcrlError(Exception):
    """A user-facing error: bad input, a directory that is not what it should be, ..."""


class CorruptFileError(OcrlError, ValueError):
    """A file on disk is truncated or corrupt; the message names the file (and the part of it)."""


class CollectionInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``collect``: the finished episodes are on disk and a rerun resumes."""

    def __init__(self, episodes_kept: int, out: str):
        super().__init__(f"interrupted: {episodes_kept} episodes kept in {out}; rerun the same command to resume")
        self.episodes_kept = episodes_kept
        self.out = out

"""Torch datasets over a rollout store: fixed-length clips and single frames.

Each item reads and decodes only the frames it returns. Episode files are opened lazily, per
process, so DataLoader workers each open their own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ocrl.data.store import RolloutStore
from ocrl.envs.ground_truth import FRAME_KEYS
from ocrl.errors import OcrlError


def _open(store: RolloutStore | str | os.PathLike) -> RolloutStore:
    return store if isinstance(store, RolloutStore) else RolloutStore.open(store)


def _frame_ground_truth_keys(store: RolloutStore) -> tuple[str, ...]:
    keys = tuple(key for key in FRAME_KEYS if key in store.ground_truth_keys)
    if not keys:
        raise OcrlError(
            f"{store.path} has no per-frame ground truth (masks, depth); its env {store.env_id!r} gives none"
        )
    return keys


def box_conditions(boxes: np.ndarray, num_slots: int) -> np.ndarray:
    """Conditions for first-frame slot queries, as SAVi conditions on boxes: the ``object_box``
    rows (N, 4) of the objects visible on that frame (NaN rows are not), the first
    ``num_slots`` of them, padded with zero rows -> (num_slots, 4) float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    visible = boxes[~np.isnan(boxes).any(axis=1)][:num_slots]
    conditions = np.zeros((num_slots, 4), dtype=np.float32)
    conditions[: len(visible)] = visible
    return conditions


def episode_conditions(store: RolloutStore, position: int, frame: int, num_slots: int) -> np.ndarray:
    """:func:`box_conditions` of frame ``frame`` of the store's episode at ``position``."""
    if "object_box" not in store.ground_truth_keys:
        raise OcrlError(
            f"{store.path} has no ground-truth object_box to condition slots on (stores from 'ocrl movi convert' have it)"
        )
    return box_conditions(
        store.episode(position).ground_truth(frame, frame + 1, keys=["object_box"])["object_box"][0], num_slots
    )


def _ground_truth_tensors(ground_truth: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # masks as int64: what one_hot, indexing and the metrics take
    return {
        key: torch.from_numpy(value.astype(np.int64) if key == "masks" else value)
        for key, value in ground_truth.items()
    }


class ClipDataset(Dataset):
    """Clips of ``clip_length`` consecutive frames, one item per episode at least that long
    (``length + 1 >= clip_length`` frames), cropped at a random start on every access.

    Items: ``frames`` (T, H, W, 3) uint8, ``episode`` (position in ``store.episodes``) and
    ``start`` (first frame) ints; with ``ground_truth``, ``masks`` (T, H, W) int64 and
    ``depth`` (T, H, W) float32 (those the store has); with ``conditions`` (a slot count K),
    ``conditions`` (K, 4) float32: the boxes of the clip's first frame (:func:`box_conditions`).

    Crops are reproducible: in the main process from ``seed``; in a DataLoader worker from
    ``seed`` and the worker's seed, which the DataLoader draws from torch's RNG (or its
    ``generator``) each epoch, so workers and epochs differ. ``seed=None`` takes fresh entropy
    in the main process.
    """

    def __init__(
        self,
        store: RolloutStore | str | os.PathLike,
        clip_length: int,
        ground_truth: bool = False,
        seed: int | None = None,
        conditions: int | None = None,
    ):
        if clip_length < 1:
            raise OcrlError(f"clip_length must be at least 1, got {clip_length}")
        self.store = _open(store)
        if conditions is not None and "object_box" not in self.store.ground_truth_keys:
            raise OcrlError(
                f"{self.store.path} has no ground-truth object_box to condition slots on (stores from 'ocrl movi convert' have it)"
            )
        self.conditions = conditions
        self.clip_length = clip_length
        self.ground_truth_keys = _frame_ground_truth_keys(self.store) if ground_truth else ()
        self.seed = seed
        self.positions = [i for i, record in enumerate(self.store.episodes) if record.length + 1 >= clip_length]
        if not self.positions:
            longest = max((record.length + 1 for record in self.store.episodes), default=0)
            raise OcrlError(f"no episode in {self.store.path} has {clip_length} frames (the longest has {longest})")
        self._generator_owner: tuple[int, int | None] | None = None
        self._generator: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict[str, Any]:
        position = self.positions[item]
        episode = self.store.episode(position)
        start = int(self._random().integers(0, episode.length + 2 - self.clip_length))
        stop = start + self.clip_length
        clip: dict[str, Any] = {
            "frames": torch.from_numpy(episode.frames(start, stop)),
            "episode": position,
            "start": start,
        }
        if self.ground_truth_keys:
            clip.update(_ground_truth_tensors(episode.ground_truth(start, stop, keys=self.ground_truth_keys)))
        if self.conditions is not None:
            clip["conditions"] = torch.from_numpy(episode_conditions(self.store, position, start, self.conditions))
        return clip

    def _random(self) -> np.random.Generator:
        """This process's generator: forked workers must not replay the parent's draws."""
        worker = get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id)
        if self._generator_owner != owner:
            entropy = ([] if self.seed is None else [self.seed]) + ([] if worker is None else [worker.seed])
            self._generator = np.random.default_rng(entropy or None)
            self._generator_owner = owner
        return self._generator


class FrameDataset(Dataset):
    """Every frame of every episode, in order.

    Items: ``frame`` (H, W, 3) uint8, ``episode`` (position in ``store.episodes``) and
    ``frame_index`` (within the episode) ints; with ``ground_truth``, ``masks`` (H, W) int64
    and ``depth`` (H, W) float32 (those the store has).
    """

    def __init__(self, store: RolloutStore | str | os.PathLike, ground_truth: bool = False):
        self.store = _open(store)
        self.ground_truth_keys = _frame_ground_truth_keys(self.store) if ground_truth else ()
        # first[i]: number of frames before episode i
        self.first = np.cumsum([0] + [record.length + 1 for record in self.store.episodes])

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"frame {item} of {len(self)}")
        position = int(np.searchsorted(self.first, item, side="right")) - 1
        frame_index = int(item - self.first[position])
        episode = self.store.episode(position)
        sample: dict[str, Any] = {
            "frame": torch.from_numpy(episode.frames(frame_index, frame_index + 1)[0]),
            "episode": position,
            "frame_index": frame_index,
        }
        if self.ground_truth_keys:
            ground_truth = episode.ground_truth(frame_index, frame_index + 1, keys=self.ground_truth_keys)
            sample.update(_ground_truth_tensors({key: value[0] for key, value in ground_truth.items()}))
        return sample

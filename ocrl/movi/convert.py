"""Convert MOVi TFRecord shards into a :mod:`rollout store <ocrl.data.store>` (``ocrl movi convert``).

Each video becomes one episode of ``s`` frames (``s - 1`` steps, no actions: an empty ``(s - 1,
0)`` float32 array, zero rewards, ``truncated`` on the last step) with ground truth in ocrl's
convention (:mod:`ocrl.envs.ground_truth`):

- ``masks`` from ``segmentations`` (0 = background, i = instance i - 1: MOVi's own convention);
- ``depth`` in metres (``depth`` rescaled with ``metadata/depth_range``);
- ``object_box`` from the densified ``instances/bboxes`` ((ymin, xmin, ymax, xmax) in [0, 1]
  to x_min, y_min, x_max, y_max in [-1, 1]), NaN on frames where the instance has no pixel;
- ``object_position``: the box centre where the instance is visible, else its projected centre
  of mass (``image_positions``, possibly off-screen); ``object_size``: half the box's longer
  side (0 when not visible); ``object_depth``: distance from the camera centre to the instance's
  position (metres, like ``depth``);
- ``object_colour``: ``instances/color`` where the dataset has it (MOVi-A/B, the generator), else
  the mean RGB of the instance's pixels (NaN when not visible);
- ``object_shape``: ``asset_id`` (MOVi-C-F), else the ``shape_label`` name.

Video ``i`` (counting through the shards in name order) is episode ``i``; the episodes are
written by worker processes in parallel, each atomically, and a rerun skips those already
stored (resume). ``resolution`` below the shards' downsamples by an integer factor as the MOVi
builders do: frames by averaging, segmentation and depth by taking the pixel nearest each block
centre.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrl.data.store import EPISODE_DIR, EpisodeRecord, RolloutStore, RolloutWriter, episode_file_name, write_episode
from ocrl.envs.ground_truth import FRAME_KEYS, OBJECT_KEYS
from ocrl.errors import CollectionInterrupted, CorruptFileError, OcrlError
from ocrl.files import write_atomically
from ocrl.movi.schema import LABEL_NAMES, decode_movi_example, movi_variant, shard_paths
from ocrl.movi.tfrecord import read_record_at, scan_records

GROUND_TRUTH_KEYS = (*FRAME_KEYS, *OBJECT_KEYS)
_FIELDS = ("video", "segmentations", "depth", "instances", "camera")
_CHUNK = 8  # videos per worker task: small enough to balance two cores over one shard
SCAN_FILE = "movi_shards.json"  # readable records per shard, as numbered in the store


@dataclass(frozen=True)
class _Video:
    """Where video ``index`` lives: record ``record`` of ``shard``, at byte ``offset``."""

    index: int
    shard: str
    record: int
    offset: int


def downsample(values: np.ndarray, factor: int, average: bool) -> np.ndarray:
    """(s, h, w, c) to (s, h / factor, w / factor, c): block means (rounded, same dtype) or the
    pixel nearest each block's centre."""
    if factor == 1:
        return values
    frames, height, width, channels = values.shape
    if average:
        blocks = values.reshape(frames, height // factor, factor, width // factor, factor, channels).astype(np.float64)
        return np.round(blocks.mean(axis=(2, 4))).astype(values.dtype)
    offset = (factor - 1) // 2
    return values[:, offset::factor, offset::factor]


def episode_from_video(video: dict[str, Any], resolution: int | None = None) -> dict[str, Any]:
    """One decoded MOVi video (:func:`~ocrl.movi.schema.read_movi`) to the arguments of
    :func:`~ocrl.data.store.write_episode`: ``frames``, ``actions``, ``rewards``, ``terminated``,
    ``truncated`` and ``ground_truth`` (one dict per frame)."""
    metadata = video["metadata"]
    frames_count, height, width = metadata["num_frames"], metadata["height"], metadata["width"]
    factor = _factor(height, width, resolution)
    frames = downsample(video["video"], factor, average=True)
    segmentations = downsample(video["segmentations"], factor, average=False)[..., 0].astype(np.int32)
    depth = downsample(video["depth"], factor, average=False)[..., 0]
    instances = video.get("instances", {})
    count = metadata["num_instances"]
    boxes = instances.get(
        "bboxes", np.full((count, frames_count, 4), np.nan, np.float32)
    )  # (n, s, 4) ymin, xmin, ymax, xmax
    box = (
        np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], axis=-1) * 2 - 1
    )  # (n, s, 4) x/y min/max in [-1, 1]
    visible = ~np.isnan(box).any(axis=-1)  # (n, s)
    centre = np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], axis=-1)
    if "image_positions" in instances:
        centre = np.where(visible[..., None], centre, instances["image_positions"] * 2 - 1)
    size = np.where(visible, np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]) / 2, 0.0)
    if "positions" in instances and "positions" in video.get("camera", {}):
        object_depth = np.linalg.norm(instances["positions"] - video["camera"]["positions"][None], axis=-1)
    else:
        object_depth = np.full((count, frames_count), np.nan)
    shapes = _shape_names(instances, count, video.get("variant"))
    ground_truth = []
    for t in range(frames_count):
        if "color" in instances:
            colour = instances["color"]
        else:
            colour = np.full((count, 3), np.nan, dtype=np.float32)
            for i in range(count):
                pixels = frames[t][segmentations[t] == i + 1]
                if len(pixels):
                    colour[i] = pixels.mean(axis=0) / 255.0
        ground_truth.append(
            {
                "masks": segmentations[t],
                "depth": depth[t],
                "object_position": centre[:, t].astype(np.float32),
                "object_size": size[:, t].astype(np.float32),
                "object_depth": object_depth[:, t].astype(np.float32),
                "object_colour": np.asarray(colour, dtype=np.float32),
                "object_shape": shapes,
                "object_box": box[:, t].astype(np.float32),
            }
        )
    steps = frames_count - 1
    truncated = np.zeros(steps, dtype=bool)
    truncated[-1:] = True
    return {
        "frames": frames,
        "actions": np.zeros((steps, 0), dtype=np.float32),
        "rewards": np.zeros(steps, dtype=np.float64),
        "terminated": np.zeros(steps, dtype=bool),
        "truncated": truncated,
        "ground_truth": ground_truth,
    }


def _shape_names(instances: dict[str, Any], count: int, variant: str | None) -> tuple[str, ...]:
    if "asset_id" in instances:
        return tuple(instances["asset_id"])
    names = LABEL_NAMES.get(variant or "", {}).get("shape_label")
    if "shape_label" in instances and names:
        return tuple(names[int(label)] if 0 <= label < len(names) else str(label) for label in instances["shape_label"])
    if "shape_label" in instances:
        return tuple(f"shape_{int(label)}" for label in instances["shape_label"])
    return ("object",) * count


def _factor(height: int, width: int, resolution: int | None) -> int:
    if resolution is None or resolution == height == width:
        return 1
    if height != width or height % resolution:
        raise OcrlError(
            f"cannot convert {height}x{width} videos to {resolution}x{resolution}: pick a resolution that divides {height}"
        )
    return height // resolution


def _convert_videos(
    videos: list[_Video], out: str, resolution: int | None, variant: str | None
) -> tuple[list[EpisodeRecord], list[str]]:
    """Worker: read, convert and write a few videos; returns their records, and what was wrong
    with each video that could not be read (skipped)."""
    records, problems = [], []
    for video in videos:
        try:
            data = read_record_at(video.shard, video.offset, video.record)
            decoded = decode_movi_example(
                data, fields=_FIELDS, variant=variant, where=f"{video.shard}: record {video.record}"
            )
        except CorruptFileError as error:
            problems.append(str(error))
            continue
        episode = episode_from_video(decoded, resolution)
        file = f"{EPISODE_DIR}/{episode_file_name(video.index)}"
        write_episode(
            Path(out) / file,
            video.index,
            0,
            episode["frames"],
            episode["actions"],
            episode["rewards"],
            episode["terminated"],
            episode["truncated"],
            episode["ground_truth"],
            GROUND_TRUTH_KEYS,
        )
        records.append(EpisodeRecord(video.index, file, 0, len(episode["rewards"]), 0.0))
    return records, problems


def convert_movi(
    source: str | os.PathLike,
    out: str | os.PathLike,
    resolution: int | None = None,
    workers: int | None = None,
    max_videos: int | None = None,
    progress: bool = True,
) -> RolloutStore:
    """Convert the MOVi shards at ``source`` (file, directory or glob) into the store ``out``.

    ``resolution``: frame side in the store (default the shards'); ``workers``: processes
    (default the CPU count, 0 converts in this process); ``max_videos``: only the first so many.
    Reruns resume: episodes already in ``out`` are skipped. Ctrl-C keeps the finished ones.
    """
    if resolution is not None and resolution < 1:
        raise OcrlError(f"resolution must be a positive integer, got {resolution}")
    shards = shard_paths(source)
    variant = movi_variant(shards[0])
    videos: list[_Video] = []
    problems: list[str] = []  # what was skipped, said again in the summary
    counts: dict[str, int] = {}
    for shard in shards:
        offsets, problem = scan_records(shard)
        if problem is not None:
            problems.append(f"{problem}; it and the shard's later records are skipped")
        counts[Path(shard).name] = len(offsets)
        for record, offset in enumerate(offsets):
            videos.append(_Video(len(videos), str(shard), record, offset))
    if not videos:
        raise OcrlError(
            f"{source} holds no readable videos" + (f": {problems[0]}" if problems else " (its shards are empty)")
        )
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    videos = videos[:max_videos]
    first = videos[0]
    probe = decode_movi_example(
        read_record_at(first.shard, first.offset, first.record),
        fields=("metadata",),
        variant=variant,
        where=f"{first.shard}: record {first.record}",
    )["metadata"]
    height, width = probe["height"], probe["width"]
    factor = _factor(height, width, resolution)
    header = {
        "env_id": f"movi/{variant or 'unknown'}",
        "env_kwargs": {"resolution": height // factor},
        "seed": 0,
        "policy": {"kind": "none", "source": "MOVi videos: no actions"},
        "frame_source": "movi",
        "frame_shape": [height // factor, width // factor, 3],
        "action_space": {"type": "Box", "shape": [0], "dtype": "float32", "low": [], "high": []},
        "ground_truth": list(GROUND_TRUTH_KEYS),
    }
    writer = RolloutWriter(out, header)
    _check_scan(Path(out), counts)
    todo = [video for video in videos if video.index not in writer.indices]
    chunks = [todo[start : start + _CHUNK] for start in range(0, len(todo), _CHUNK)]
    bar = tqdm(
        total=len(videos),
        initial=len(videos) - len(todo),
        unit="video",
        desc=f"convert {variant or 'movi'}",
        disable=not progress,
    )
    workers = (os.cpu_count() or 1) if workers is None else workers
    try:
        if workers == 0 or len(chunks) <= 1:
            for chunk in chunks:
                records, skipped = _convert_videos(chunk, str(out), resolution, variant)
                _report(skipped, problems, bar)
                for record in records:
                    writer.add_written(record)
                    bar.update()
        else:
            # fork where there is one: workers start at once and need nothing pickled but paths
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
                pending = {pool.submit(_convert_videos, chunk, str(out), resolution, variant) for chunk in chunks}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            records, skipped = future.result()
                            _report(skipped, problems, bar)
                            for record in records:
                                writer.add_written(record)
                                bar.update()
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    except KeyboardInterrupt:
        raise CollectionInterrupted(len(writer), str(out)) from None
    finally:
        bar.close()
        writer.close()
    if problems:
        print(
            f"{out}: skipped {len(problems)} unreadable part(s) of the shards (listed above); the store holds the other videos",
            file=sys.stderr,
        )
    return RolloutStore.open(out)


def _report(skipped: list[str], problems: list[str], bar: tqdm) -> None:
    for problem in skipped:
        bar.write(f"skipped: {problem}", file=sys.stderr)
    problems.extend(skipped)


def _check_scan(out: Path, counts: dict[str, int]) -> None:
    """Video i is the i-th readable record across the shards, so a rerun must see the same
    records per shard: a damaged shard repaired (or a shard damaged since) would shift the
    numbering under the episodes already stored. The counts are kept in SCAN_FILE."""
    path = out / SCAN_FILE
    if path.exists():
        try:
            known = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptFileError(f"{path}: not valid JSON") from None
        if known != counts:
            changed = sorted(name for name in set(known) | set(counts) if known.get(name) != counts.get(name))
            raise OcrlError(
                f"{out} was converted from shards with other readable records ({', '.join(changed[:3])}); convert into a new DST"
            )
    else:
        write_atomically(path, lambda file: file.write(json.dumps(counts, indent=1).encode()))

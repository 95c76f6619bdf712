"""MOVi reader and converter speed on generated shards (no real MOVi download needed).

    .venv/bin/python benchmarks/movi_speed.py --videos 48 --resolution 128 --work runs/movi_speed

1. ``ocrl movi generate``: MuJoCo MOVi-style videos at ``--resolution`` (24 frames); their
   shards hold what the generator writes (RGB, segmentation, depth, flows as uint16 int64 lists,
   instances, camera; no normals or object coordinates).
2. The same videos re-encoded with the fields the generator leaves out and real MOVi shards
   carry: 16-bit normal / object-coordinate PNGs, filled with smooth fields so that PNG
   compression sees image-like data. These "full-schema"
   shards are what a reader of the real data decodes.
3. CRC32C throughput; :func:`ocrl.movi.schema.read_movi` videos/s on both (default fields: all but
   normals and object coordinates; only the fields the converter reads; and every field); :func:`ocrl.movi.convert.convert_movi` videos/s with
   1 and 2 worker processes.

Prints one JSON object (and writes it to ``WORK/movi_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ocrl.movi.convert import convert_movi
from ocrl.movi.generator import GeneratorConfig, generate_movi
from ocrl.movi.schema import read_movi, write_movi_shard
from ocrl.movi.tfrecord import crc32c

CONVERTER_FIELDS = ("video", "segmentations", "depth", "instances", "camera")


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint16 (s, h, w, c): a few random low-frequency waves per channel, like flow or normals."""
    frames, height, width, channels = shape
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    field = np.zeros(shape, dtype=np.float64)
    for t in range(frames):
        for c in range(channels):
            frequency, phase = rng.uniform(1, 4, 2), rng.uniform(0, 2 * np.pi)
            field[t, :, :, c] = np.sin(2 * np.pi * (frequency[0] * x + frequency[1] * y) + phase + 0.2 * t)
    return np.round((field + 1) / 2 * 65535).astype(np.uint16)


def full_schema(video: dict, rng: np.random.Generator) -> dict:
    """A read video back in stored form, with flow, normals and object coordinates added."""
    frames, height, width = video["video"].shape[:3]
    stored = {
        key: video[key]
        for key in ("video", "segmentations", "camera", "background", "forward_flow", "backward_flow")
        if key in video
    }
    stored["metadata"] = {
        "forward_flow_range": np.array([-8.0, 8.0], np.float32),
        "backward_flow_range": np.array([-8.0, 8.0], np.float32),
        **video["metadata"],
    }
    stored["depth"] = video["depth"]  # float metres; encoding rescales into depth_range again
    instances = dict(video["instances"])
    boxes, has_box = instances.pop("bboxes"), instances.pop("has_bbox")
    instances["bboxes"] = [boxes[i, has_box[i]] for i in range(len(boxes))]
    stored["instances"] = instances
    for key, channels in (("forward_flow", 2), ("backward_flow", 2), ("normal", 3), ("object_coordinates", 3)):
        if key not in stored:
            stored[key] = smooth_field(rng, (frames, height, width, channels))
    return stored


def videos_per_second(path: Path, fields=None, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        count = sum(1 for _ in read_movi(path, fields=fields))
        best = max(best, count / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("runs/movi_speed"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"videos": args.videos, "resolution": args.resolution, "frames": 24, "cpu_count": os.cpu_count()}

    generated = work / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    started = time.perf_counter()
    generate_movi(
        generated, args.videos, GeneratorConfig(resolution=args.resolution), seed=0, videos_per_shard=16, progress=False
    )
    result["generate_videos_per_s"] = round(args.videos / (time.perf_counter() - started), 2)

    full = work / "full_schema"
    shutil.rmtree(full, ignore_errors=True)
    full.mkdir()
    rng = np.random.default_rng(0)
    videos = [full_schema(video, rng) for video in read_movi(generated)]
    for shard in range(0, len(videos), 16):
        write_movi_shard(
            full / f"movi_c-train.tfrecord-{shard // 16:05d}-of-{-(-len(videos) // 16):05d}", videos[shard : shard + 16]
        )

    data = np.random.default_rng(1).integers(0, 256, 10 << 20, dtype=np.uint8).tobytes()  # about one full-schema record
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        crc32c(data)
        seconds.append(time.perf_counter() - started)
    result["crc32c_mb_per_s"] = round(10 / min(seconds), 1)

    for name, path in (("generated", generated), ("full_schema", full)):
        size = sum(shard.stat().st_size for shard in path.glob("*.tfrecord-*"))
        result[f"{name}_mb_per_video"] = round(size / args.videos / 2**20, 3)
        result[f"read_{name}_default_fields_videos_per_s"] = round(videos_per_second(path), 2)
        result[f"read_{name}_converter_fields_videos_per_s"] = round(videos_per_second(path, CONVERTER_FIELDS), 2)

    # with normals and object coordinates: ocrl writes their 16-bit PNGs with the None filter, which
    # decodes fast; libpng's Paeth rows in real shards cost ~60 ms per 128x128 frame on top
    result["read_full_schema_every_field_videos_per_s"] = round(videos_per_second(full, "all"), 2)
    for workers in (1, 2):
        out = work / f"store_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        convert_movi(full, out, workers=workers, progress=False)
        result[f"convert_full_schema_workers_{workers}_videos_per_s"] = round(
            args.videos / (time.perf_counter() - started), 2
        )
    text = json.dumps(result, indent=1)
    (work / "movi_speed.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

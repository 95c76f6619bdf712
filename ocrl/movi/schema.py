"""Read (and write) the Kubric MOVi datasets from their TFDS TFRecord shards, without TensorFlow.

**Contract**: :func:`read_movi` ``(path_or_dir)`` yields one dict per video.

The shards of ``gs://kubric-public/tfds/movi_<x>/<res>/1.0.0/`` hold one serialised
``tf.train.Example`` per video, as TFDS writes them (``core/example_serializer.py``): the nested
feature dict flattened with ``/`` (``metadata/depth_range``), integers (and bools, class labels)
as int64 lists, floats as float lists, strings as bytes lists; ``Image`` and ``Video`` features
as one encoded PNG per frame; a ``Sequence`` of fixed-shape values stacked and flattened; a
sequence nested in a sequence (an instance's ``bboxes`` / ``bbox_frames``: a varying number per
instance) as ``<key>/ragged_flat_values`` plus ``<key>/ragged_row_lengths_0`` (values per
instance). Feature schema of the MOVi builders (A-F, 128x128 and 256x256, 24 frames), with
``s`` frames, ``h`` x ``w`` pixels, ``n`` instances, ``c`` collisions:

=============================== ===================== ==========================================
key (read as)                   shape, dtype          meaning
=============================== ===================== ==========================================
``video``                       (s, h, w, 3) uint8    RGB frames
``segmentations``               (s, h, w, 1) uint8    instance id, 0 = background, i = instance
                                                      i - 1
``depth``                       (s, h, w, 1) float32  metres from the camera centre, from uint16
                                                      PNG: ``v / 65535 * (max - min) + min`` with
                                                      ``metadata/depth_range``
``forward_flow``,               (s, h, w, 2) float32  optical flow (delta row, delta column) in
``backward_flow``                                     pixels, from uint16 with ``metadata/*_flow
                                                      _range`` as for depth
``normal``,                     (s, h, w, 3) uint16   surface normals, object coordinates (16-bit
``object_coordinates``                                PNG), as stored; only with ``fields="all"``
                                                      or when named in ``fields`` (see below)
``metadata/*``                  scalars, (2,) ranges  ``video_name`` str, ``width``, ``height``,
                                                      ``num_frames``, ``num_instances`` int;
                                                      ``depth_range``, ``forward_flow_range``,
                                                      ``backward_flow_range`` (2,) float32;
                                                      MOVi-F ``motion_blur`` float
``camera/*``                    scalars, (s, k)       ``focal_length``, ``sensor_width``,
                                                      ``field_of_view`` float; ``positions``
                                                      (s, 3), ``quaternions`` (s, 4) float32
``instances/positions`` ...     (n, s, 3) float32     also ``quaternions`` (n, s, 4),
                                                      ``velocities``, ``angular_velocities``
                                                      (n, s, 3), ``bboxes_3d`` (n, s, 8, 3),
                                                      ``image_positions`` (n, s, 2) in (0, 1),
                                                      ``visibility`` (n, s) uint16 (pixels)
``instances/mass`` ...          (n,) float32          also ``friction``, ``restitution``,
                                                      ``scale``; ``color`` (n, 3) (A, B)
``instances/<label>``           (n,) int64            class labels: ``shape_label``,
                                                      ``size_label``, ``color_label``,
                                                      ``material_label`` (A, B), ``category``
                                                      (C-F); names in :data:`LABEL_NAMES`
``instances/asset_id``          list of n str         Google Scanned Objects id (C-F)
``instances/is_dynamic``        (n,) bool             (D-F)
``instances/bboxes``            (n, s, 4) float32     densified ragged boxes: (ymin, xmin, ymax,
                                                      xmax) in [0, 1] on the frames listed in
                                                      ``bbox_frames``, NaN on the others
``instances/has_bbox``          (n, s) bool           whether the instance has a box that frame
``instances/bbox_frames``       list of n int32 (k,)  frames with a box, as stored (ragged)
``events/collisions/*``         (c, ...)              ``instances`` (c, 2) uint16, ``frame``
                                                      (c,) int32, ``force`` (c,), ``position``
                                                      (c, 3), ``image_position`` (c, 2),
                                                      ``contact_normal`` (c, 3) float32
``background``                  str                   HDRI name (C-F); MOVi-B:
                                                      ``background_color`` (3,) float32
=============================== ===================== ==========================================

Pillow reads 16-bit colour PNGs as 8-bit, so ``normal`` and ``object_coordinates`` go through
ocrl's own PNG decoder, whose Average and Paeth row filters run in Python: about 60 ms per
128x128 frame, seconds per video. They are therefore decoded only on request.

Keys are nested dicts as in TFDS (``video["metadata"]["depth_range"]``). Fields a shard does not
have are absent (the MuJoCo generator writes no flow, normals or object coordinates); features
this table does not know are returned flat under their own key, never dropped.

:func:`encode_movi_example` / :func:`write_movi_shard` write the same schema (used by the
tests and by :mod:`ocrl.movi.generator`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ocrl.errors import CorruptFileError, OcrlError
from ocrl.movi.png import decode_png, encode_png
from ocrl.movi.tfrecord import DecodeError, TFRecordWriter, parse_example, read_records, serialize_example

CATEGORIES = (
    "Action Figures", "Bag", "Board Games", "Bottles and Cans and Cups", "Camera", "Car Seat", "Consumer Goods", "Hat",
    "Headphones", "Keyboard", "Legos", "Media Cases", "Mouse", "None", "Shoe", "Stuffed Toys", "Toys",
)  # fmt: skip
MUJOCO_SHAPES = ("box", "sphere", "cylinder", "capsule", "ellipsoid")
# class-label names per dataset (TFDS keeps them in the dataset info, not in the examples)
LABEL_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "movi_a": {
        "shape_label": ("cube", "cylinder", "sphere"),
        "size_label": ("small", "large"),
        "color_label": ("blue", "brown", "cyan", "gray", "green", "purple", "red", "yellow"),
        "material_label": ("metal", "rubber"),
    },
    "movi_b": {
        "shape_label": (
            "cube",
            "cylinder",
            "sphere",
            "cone",
            "torus",
            "gear",
            "torus_knot",
            "sponge",
            "spot",
            "teapot",
            "suzanne",
        ),
        "material_label": ("metal", "rubber"),
    },
    **{name: {"category": CATEGORIES} for name in ("movi_c", "movi_d", "movi_e", "movi_f")},
    "movi_mujoco": {"shape_label": MUJOCO_SHAPES},
}

IMAGE_KEYS = ("video", "segmentations", "depth", "normal", "object_coordinates")  # one PNG per frame
SLOW_KEYS = ("normal", "object_coordinates")  # 16-bit colour PNGs: decoded only when asked for
FLOW_KEYS = ("forward_flow", "backward_flow")  # uint16 tensors as int64 lists
_RANGE_OF = {"depth": "depth_range", "forward_flow": "forward_flow_range", "backward_flow": "backward_flow_range"}
_CHANNELS = {
    "video": 3,
    "segmentations": 1,
    "depth": 1,
    "normal": 3,
    "object_coordinates": 3,
    "forward_flow": 2,
    "backward_flow": 2,
}
_IMAGE_DTYPES = {
    "video": np.uint8,
    "segmentations": np.uint8,
    "depth": np.uint16,
    "normal": np.uint16,
    "object_coordinates": np.uint16,
}
_METADATA_INTS = ("width", "height", "num_frames", "num_instances")
_METADATA_RANGES = ("depth_range", "forward_flow_range", "backward_flow_range")
_CAMERA_SCALARS = ("focal_length", "sensor_width", "field_of_view")
# per-instance fields: shape after (n,), with s = frames; dtype as read
_INSTANCE_FRAME_FIELDS = {
    "positions": (3,),
    "quaternions": (4,),
    "velocities": (3,),
    "angular_velocities": (3,),
    "bboxes_3d": (8, 3),
    "image_positions": (2,),
}
_INSTANCE_FLOATS = ("mass", "friction", "restitution", "scale")
_INSTANCE_LABELS = ("shape_label", "size_label", "color_label", "material_label", "category")
_RAGGED = ("bboxes", "bbox_frames")
_COLLISION_FIELDS = {
    "instances": ((2,), np.uint16),
    "frame": ((), np.int32),
    "force": ((), np.float32),
    "position": ((3,), np.float32),
    "image_position": ((2,), np.float32),
    "contact_normal": ((3,), np.float32),
}
_SHARD_NAME = re.compile(r"(movi_[a-f]|movi_mujoco)")


def movi_variant(path: str | os.PathLike) -> str | None:
    """``"movi_c"`` etc. from a shard's path (TFDS names shards ``movi_c-train.tfrecord-00000-of-00064``
    in ``movi_c/128x128/1.0.0/``); None if the path does not say."""
    matches = _SHARD_NAME.findall(str(path))
    return matches[-1] if matches else None


def shard_paths(path_or_dir: str | os.PathLike) -> list[Path]:
    """The shard files of a file, a directory (its ``*.tfrecord*`` files) or a glob, sorted."""
    path = Path(path_or_dir)
    if path.is_file():
        return [path]
    if path.is_dir():
        shards = sorted(
            child for child in path.iterdir() if ".tfrecord" in child.name and not child.name.startswith(".")
        )
        if not shards:
            raise OcrlError(f"{path} holds no TFRecord shards (files named *.tfrecord*)")
        return shards
    if glob.has_magic(str(path)):
        shards = sorted(Path(name) for name in glob.glob(str(path)) if Path(name).is_file())
        if not shards:
            raise OcrlError(f"no file matches {path}")
        return shards
    raise OcrlError(f"{path} does not exist")


def read_movi(
    path_or_dir: str | os.PathLike, fields: Sequence[str] | str | None = None, verify: bool = True
) -> Iterator[dict[str, Any]]:
    """One dict per video of the MOVi shards at ``path_or_dir`` (file, directory or glob), shard
    by shard in name order (see the module docstring for keys, shapes and dtypes).

    ``fields`` limits decoding to these top-level keys (``"video"``, ``"segmentations"``,
    ``"instances"``, ...; ``metadata`` is always read): decoding PNGs and flows is most of the
    time. ``None`` reads every field but :data:`SLOW_KEYS` (``normal``, ``object_coordinates``),
    ``"all"`` every field. ``verify`` checks the records' CRC32C checksums. A truncated or
    corrupt shard raises :class:`~ocrl.errors.CorruptFileError` naming the file and the record.
    """
    for shard in shard_paths(path_or_dir):
        yield from read_movi_shard(shard, fields=fields, verify=verify)


def read_movi_shard(
    shard: str | os.PathLike, fields: Sequence[str] | str | None = None, verify: bool = True
) -> Iterator[dict[str, Any]]:
    """The videos of one shard (arguments as :func:`read_movi`)."""
    shard = Path(shard)
    variant = movi_variant(shard)
    for index, data in enumerate(read_records(shard, verify=verify)):
        yield decode_movi_example(data, fields=fields, variant=variant, where=f"{shard}: record {index}")


def decode_movi_example(
    data: bytes, fields: Sequence[str] | str | None = None, variant: str | None = None, where: str = "example"
) -> dict[str, Any]:
    """One serialised MOVi ``tf.train.Example`` to the nested dict of :func:`read_movi`
    (``fields`` as there).

    The dict also holds ``variant`` (``"movi_c"``, ... or None when unknown).
    """
    if isinstance(fields, str) and fields != "all":
        raise OcrlError(f"fields must be a list of keys, None or 'all', got {fields!r}")
    try:
        flat = parse_example(data)
    except DecodeError as error:
        raise CorruptFileError(f"{where}: not a valid tf.train.Example ({error})") from None
    try:
        return _decode(flat, fields, variant)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        reason = f"feature {error.args[0]!r} is missing" if isinstance(error, KeyError) else str(error)
        raise CorruptFileError(f"{where}: not a MOVi example ({reason})") from None


def _text(values: list[bytes]) -> str:
    return values[0].decode("utf-8") if values else ""


def _decode(flat: dict[str, Any], fields: Sequence[str] | str | None, variant: str | None) -> dict[str, Any]:
    wanted = None if fields is None or fields == "all" else set(fields) | {"metadata"}
    used: set[str] = set()

    def take(key: str):
        used.add(key)
        return flat[key]

    metadata: dict[str, Any] = {
        "video_name": _text(take("metadata/video_name")) if "metadata/video_name" in flat else ""
    }
    for name in _METADATA_INTS:
        metadata[name] = int(take(f"metadata/{name}")[0])
    for name in _METADATA_RANGES:
        if f"metadata/{name}" in flat:
            metadata[name] = _shaped(take(f"metadata/{name}"), (2,), np.float32, f"metadata/{name}")
    if "metadata/motion_blur" in flat:
        metadata["motion_blur"] = float(take("metadata/motion_blur")[0])
    frames, height, width, count = (
        metadata["num_frames"],
        metadata["height"],
        metadata["width"],
        metadata["num_instances"],
    )
    result: dict[str, Any] = {"variant": variant, "metadata": metadata}

    def want(key: str) -> bool:
        if fields is None:
            return key not in SLOW_KEYS
        return wanted is None or key in wanted

    for key in IMAGE_KEYS:
        if key in flat:
            encoded = take(key)
            if not want(key):
                continue
            if len(encoded) != frames:
                raise ValueError(f"{key} has {len(encoded)} frames, metadata says {frames}")
            images = np.stack([_decode_frame(image, key, t) for t, image in enumerate(encoded)])
            expected = (frames, height, width, _CHANNELS[key])
            if images.shape != expected or images.dtype != _IMAGE_DTYPES[key]:
                raise ValueError(
                    f"{key} decodes to {images.shape} {images.dtype}, expected {expected} {np.dtype(_IMAGE_DTYPES[key])}"
                )
            result[key] = _rescale(images, metadata, key) if key == "depth" else images
    for key in FLOW_KEYS:
        if key in flat:
            values = take(key)
            if want(key):
                result[key] = _rescale(_shaped(values, (frames, height, width, 2), np.uint16, key), metadata, key)
    if any(name.startswith("camera/") for name in flat):
        camera: dict[str, Any] = {}
        for name in _CAMERA_SCALARS:
            if f"camera/{name}" in flat:
                camera[name] = float(take(f"camera/{name}")[0])
        for name, size in (("positions", 3), ("quaternions", 4)):
            if f"camera/{name}" in flat:
                camera[name] = _shaped(take(f"camera/{name}"), (frames, size), np.float32, f"camera/{name}")
        if want("camera"):
            result["camera"] = camera
    instances = _decode_instances(flat, take, count, frames)
    if want("instances"):
        result["instances"] = instances
    collision_keys = [name for name in flat if name.startswith("events/collisions/")]
    if collision_keys:
        collisions = {}
        for name, (shape, dtype) in _COLLISION_FIELDS.items():
            key = f"events/collisions/{name}"
            if key in flat:
                values = take(key)
                collisions[name] = _shaped(values, (-1, *shape), dtype, key)
        if want("events"):
            result["events"] = {"collisions": collisions}
    if "background" in flat:
        result["background"] = _text(take("background"))
    if "background_color" in flat:
        result["background_color"] = _shaped(take("background_color"), (3,), np.float32, "background_color")
    for key in flat.keys() - used:  # anything this schema does not know: kept, flat
        if wanted is None or key.split("/")[0] in wanted:
            result[key] = flat[key]
    return result


def _decode_frame(data: bytes, key: str, frame: int) -> np.ndarray:
    try:
        return decode_png(data)
    except ValueError as error:
        raise ValueError(f"frame {frame} of {key} is not a readable PNG ({error})") from None


def _shaped(values: Any, shape: tuple[int, ...], dtype, key: str) -> np.ndarray:
    array = np.asarray(values)
    size = int(np.prod([dimension for dimension in shape if dimension != -1]))
    if -1 in shape and size and array.size % size == 0 or -1 not in shape and array.size == size:
        return array.reshape(shape).astype(dtype)
    raise ValueError(f"{key} has {array.size} values, expected shape {shape}")


def _rescale(values: np.ndarray, metadata: dict[str, Any], key: str) -> np.ndarray:
    """uint16 codes to the units of ``metadata[<key>_range]`` (metres, pixels), float32."""
    low, high = (float(bound) for bound in metadata[_RANGE_OF[key]])
    return (values.astype(np.float64) / 65535.0 * (high - low) + low).astype(np.float32)


def _decode_instances(flat: dict[str, Any], take, count: int, frames: int) -> dict[str, Any]:
    instances: dict[str, Any] = {}
    for name, inner in _INSTANCE_FRAME_FIELDS.items():
        key = f"instances/{name}"
        if key in flat:
            instances[name] = _shaped(take(key), (count, frames, *inner), np.float32, key)
    if "instances/visibility" in flat:
        instances["visibility"] = _shaped(
            take("instances/visibility"), (count, frames), np.uint16, "instances/visibility"
        )
    for name in _INSTANCE_FLOATS:
        if f"instances/{name}" in flat:
            instances[name] = _shaped(take(f"instances/{name}"), (count,), np.float32, f"instances/{name}")
    if "instances/color" in flat:
        instances["color"] = _shaped(take("instances/color"), (count, 3), np.float32, "instances/color")
    for name in _INSTANCE_LABELS:
        if f"instances/{name}" in flat:
            instances[name] = _shaped(take(f"instances/{name}"), (count,), np.int64, f"instances/{name}")
    if "instances/is_dynamic" in flat:
        instances["is_dynamic"] = _shaped(take("instances/is_dynamic"), (count,), bool, "instances/is_dynamic")
    if "instances/asset_id" in flat:
        names = [value.decode("utf-8") for value in take("instances/asset_id")]
        if len(names) != count:
            raise ValueError(f"instances/asset_id has {len(names)} values for {count} instances")
        instances["asset_id"] = names
    ragged = {
        name: _ragged(flat, take, name, count) for name in _RAGGED if f"instances/{name}/ragged_flat_values" in flat
    }
    if "bbox_frames" in ragged:
        bbox_frames = [values.astype(np.int32) for values in ragged["bbox_frames"]]
        instances["bbox_frames"] = bbox_frames
        if "bboxes" in ragged:
            dense = np.full((count, frames, 4), np.nan, dtype=np.float32)
            has_box = np.zeros((count, frames), dtype=bool)
            for index, (boxes, frame_list) in enumerate(zip(ragged["bboxes"], bbox_frames)):
                boxes = boxes.reshape(-1, 4)
                if len(boxes) != len(frame_list) or (
                    len(frame_list) and (frame_list.min() < 0 or frame_list.max() >= frames)
                ):
                    raise ValueError(
                        f"instance {index} has {len(boxes)} boxes for frames {frame_list.tolist()} of {frames}"
                    )
                dense[index, frame_list] = boxes
                has_box[index, frame_list] = True
            instances["bboxes"] = dense
            instances["has_bbox"] = has_box
    return instances


def _ragged(flat: dict[str, Any], take, name: str, count: int) -> list[np.ndarray]:
    """A per-instance ragged sequence: flat values split by the row lengths."""
    values = np.asarray(take(f"instances/{name}/ragged_flat_values"))
    lengths = np.asarray(take(f"instances/{name}/ragged_row_lengths_0"), dtype=np.int64)
    width = 4 if name == "bboxes" else 1
    if len(lengths) != count or lengths.min(initial=0) < 0 or lengths.sum() * width != values.size:
        raise ValueError(
            f"instances/{name}: row lengths {lengths.tolist()} do not fit {values.size} values of {count} instances"
        )
    splits = np.cumsum(lengths)[:-1] * width
    return list(np.split(values, splits)) if count else []


# --- writing -----------------------------------------------------------------------------------


def _to_uint16(values: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """Float values to MOVi's uint16 codes over ``value_range`` (the inverse of reading)."""
    low, high = float(value_range[0]), float(value_range[1])
    scale = 65535.0 / (high - low) if high > low else 0.0
    return np.clip(np.round((np.asarray(values, dtype=np.float64) - low) * scale), 0, 65535).astype(np.uint16)


def encode_movi_example(video: Mapping[str, Any]) -> bytes:
    """A video in the stored form of the MOVi builders to a serialised ``tf.train.Example``.

    ``video`` holds what a MOVi builder passes to TFDS: ``video`` (s, h, w, 3) uint8,
    ``segmentations`` (s, h, w, 1) uint8, ``depth`` (s, h, w, 1) uint16 codes (or float metres,
    converted with ``metadata["depth_range"]``), optional ``forward_flow`` / ``backward_flow``
    (s, h, w, 2) uint16 codes (or float pixels), ``normal`` / ``object_coordinates`` (s, h, w, 3)
    uint16; ``metadata``, ``camera``, ``events`` dicts; ``instances`` a dict of per-instance
    arrays (n, ...) whose ``bboxes`` is a list of n (k_i, 4) arrays and ``bbox_frames`` a list of
    n (k_i,) int arrays; ``asset_id`` a list of str; ``background`` a str.
    """
    metadata = video["metadata"]
    features: dict[str, Any] = {}
    for name, value in metadata.items():
        features[f"metadata/{name}"] = (
            [str(value).encode()] if name == "video_name" else np.atleast_1d(np.asarray(value))
        )
    for key in IMAGE_KEYS:
        if key in video:
            images = np.asarray(video[key])
            if key == "depth" and images.dtype.kind == "f":
                images = _to_uint16(images, metadata["depth_range"])
            features[key] = [encode_png(image) for image in images]
    for key in FLOW_KEYS:
        if key in video:
            values = np.asarray(video[key])
            features[key] = (
                _to_uint16(values, metadata[_RANGE_OF[key]]) if values.dtype.kind == "f" else values.astype(np.uint16)
            )
    for name, value in video.get("camera", {}).items():
        features[f"camera/{name}"] = np.atleast_1d(np.asarray(value, dtype=np.float32))
    for name, value in video.get("instances", {}).items():
        key = f"instances/{name}"
        if name in _RAGGED:
            rows = [np.asarray(row, dtype=np.float32 if name == "bboxes" else np.int64) for row in value]
            features[f"{key}/ragged_row_lengths_0"] = np.array([len(row) for row in rows], dtype=np.int64)
            features[f"{key}/ragged_flat_values"] = (
                np.concatenate([row.ravel() for row in rows])
                if rows
                else np.zeros(0, np.float32 if name == "bboxes" else np.int64)
            )
        elif name == "asset_id":
            features[key] = [str(item).encode() for item in value]
        else:
            features[key] = np.asarray(value)
    for name, value in video.get("events", {}).get("collisions", {}).items():
        features[f"events/collisions/{name}"] = np.asarray(value)
    if "background" in video:
        features["background"] = [str(video["background"]).encode()]
    if "background_color" in video:
        features["background_color"] = np.asarray(video["background_color"], dtype=np.float32)
    return serialize_example(features)


def write_movi_shard(path: str | os.PathLike, videos: Iterable[Mapping[str, Any]]) -> int:
    """Write videos (as :func:`encode_movi_example` takes them) to one TFRecord shard; returns
    how many. The shard appears under its name only once complete."""
    count = 0
    with TFRecordWriter(path) as writer:
        for video in videos:
            writer.write(encode_movi_example(video))
            count += 1
    return count

"""MOVi without TensorFlow: TFRecord framing, tf.train.Example, the MOVi schema, conversion into
a rollout store, the CLI, and the MuJoCo MOVi-style generator.

No MOVi download is possible in tests: shards are written with ocrl's own writer in the official
schema (TFDS's serialisation of the Kubric MOVi feature dicts) and read back exactly.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from ocrl.cli import main
from ocrl.data.dataset import ClipDataset, box_conditions
from ocrl.data.store import RolloutStore
from ocrl.errors import CorruptFileError, OcrlError
from ocrl.movi.convert import convert_movi
from ocrl.movi.png import decode_png, encode_png
from ocrl.movi.schema import (
    LABEL_NAMES,
    decode_movi_example,
    encode_movi_example,
    movi_variant,
    read_movi,
    write_movi_shard,
)
from ocrl.movi.tfrecord import (
    _raw_crc_small,
    crc32c,
    masked_crc32c,
    parse_example,
    read_records,
    record_offsets,
    serialize_example,
)

FRAMES, SIZE, INSTANCES = 3, 8, 3


def make_video(seed: int, frames: int = FRAMES, size: int = SIZE, count: int = INSTANCES) -> dict:
    """A MOVi-E-like video in the stored form (uint16 codes), with instance 1 never visible."""
    rng = np.random.default_rng(seed)
    segmentations = rng.integers(0, count + 1, (frames, size, size, 1), dtype=np.uint8)
    segmentations[segmentations == 2] = 0  # instance index 1 has no pixel, so no box: an empty ragged row
    bboxes, bbox_frames = [], []
    for i in range(count):
        shown = [t for t in range(frames) if (segmentations[t] == i + 1).any()]
        boxes = rng.uniform(0, 0.5, (len(shown), 2))
        bboxes.append(np.concatenate([boxes, boxes + 0.25], axis=1).astype(np.float32))
        bbox_frames.append(np.array(shown, dtype=np.int64))
    return {
        "metadata": {
            "video_name": f"video_{seed}",
            "width": size,
            "height": size,
            "num_frames": frames,
            "num_instances": count,
            "depth_range": np.array([1.5, 12.0], np.float32),
            "forward_flow_range": np.array([-3.5, 4.25], np.float32),
            "backward_flow_range": np.array([-2.0, 2.0], np.float32),
        },
        "background": "hdri_name",
        "video": rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
        "segmentations": segmentations,
        "depth": rng.integers(0, 65536, (frames, size, size, 1), dtype=np.uint16),
        "forward_flow": rng.integers(0, 65536, (frames, size, size, 2), dtype=np.uint16),
        "backward_flow": rng.integers(0, 65536, (frames, size, size, 2), dtype=np.uint16),
        "normal": rng.integers(0, 65536, (frames, size, size, 3), dtype=np.uint16),
        "object_coordinates": rng.integers(0, 65536, (frames, size, size, 3), dtype=np.uint16),
        "camera": {
            "focal_length": 35.0,
            "sensor_width": 32.0,
            "field_of_view": 0.857,
            "positions": rng.normal(size=(frames, 3)).astype(np.float32),
            "quaternions": rng.normal(size=(frames, 4)).astype(np.float32),
        },
        "instances": {
            "mass": rng.uniform(size=count).astype(np.float32),
            "friction": rng.uniform(size=count).astype(np.float32),
            "restitution": rng.uniform(size=count).astype(np.float32),
            "positions": rng.normal(size=(count, frames, 3)).astype(np.float32),
            "quaternions": rng.normal(size=(count, frames, 4)).astype(np.float32),
            "velocities": rng.normal(size=(count, frames, 3)).astype(np.float32),
            "angular_velocities": rng.normal(size=(count, frames, 3)).astype(np.float32),
            "bboxes_3d": rng.normal(size=(count, frames, 8, 3)).astype(np.float32),
            "image_positions": rng.uniform(size=(count, frames, 2)).astype(np.float32),
            "visibility": np.stack([(segmentations[..., 0] == i + 1).sum(axis=(1, 2)) for i in range(count)]).astype(
                np.uint16
            ),
            "bboxes": bboxes,
            "bbox_frames": bbox_frames,
            "asset_id": [f"asset_{i}" for i in range(count)],
            "category": rng.integers(0, len(LABEL_NAMES["movi_e"]["category"]), count),
            "scale": rng.uniform(0.75, 3.0, count).astype(np.float32),
            "is_dynamic": np.array([True, False, True][:count]),
        },
        "events": {
            "collisions": {
                "instances": np.array([[0, 2], [1, 65535]], np.uint16),
                "frame": np.array([1, 2], np.int32),
                "force": np.array([0.5, 2.0], np.float32),
                "position": rng.normal(size=(2, 3)).astype(np.float32),
                "image_position": rng.uniform(size=(2, 2)).astype(np.float32),
                "contact_normal": rng.normal(size=(2, 3)).astype(np.float32),
            }
        },
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two movi_e shards of 2 and 1 videos, and the videos written."""
    directory = tmp_path_factory.mktemp("movi_e") / "128x128"
    directory.mkdir()
    videos = [make_video(seed) for seed in range(3)]
    write_movi_shard(directory / "movi_e-train.tfrecord-00000-of-00002", videos[:2])
    write_movi_shard(directory / "movi_e-train.tfrecord-00001-of-00002", videos[2:])
    return directory, videos


# --- TFRecord, protobuf, PNG --------------------------------------------------------------------


def test_crc32c_matches_the_standard_check_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0 and masked_crc32c(b"") == 0xA282EAD8
    rng = np.random.default_rng(0)
    for size in (1, 511, 512, 513, 4097, 70_001):  # both the byte loop and the lane-parallel path
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32c(data) == _raw_crc_small(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def test_example_wire_format_is_tensorflows():
    # tf.train.Example(features={"a": int64_list [1]}) as TensorFlow serialises it (packed)
    expected = bytes.fromhex("0a0c0a0a0a016112051a030a0101")
    assert serialize_example({"a": np.array([1])}) == expected
    assert parse_example(expected)["a"].tolist() == [1]
    # writers that do not pack repeated scalars must parse too
    unpacked = bytes.fromhex("0a0b0a090a016112041a020801")
    assert parse_example(unpacked)["a"].tolist() == [1]
    floats = parse_example(serialize_example({"f": np.array([1.5, -2.0], np.float32), "b": [b"x", b""]}))
    assert floats["f"].dtype == np.float32 and floats["f"].tolist() == [1.5, -2.0] and floats["b"] == [b"x", b""]


def _png16_with_filter(image: np.ndarray, filter_type: int) -> bytes:
    """A 16-bit PNG whose rows all use ``filter_type``, encoded the slow way (what libpng may choose)."""
    height, width, channels = image.shape
    raw = image.astype(">u2").view(np.uint8).reshape(height, -1).astype(np.int64)
    bpp = channels * 2
    rows = []
    for y in range(height):
        line = raw[y]
        previous = raw[y - 1] if y else np.zeros_like(line)
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), previous[:-bpp]])
        if filter_type == 3:
            predicted = (left + previous) // 2
        else:
            estimate = left + previous - up_left
            distances = np.stack([abs(estimate - left), abs(estimate - previous), abs(estimate - up_left)])
            choice = np.where(
                (distances[0] <= distances[1]) & (distances[0] <= distances[2]),
                0,
                np.where(distances[1] <= distances[2], 1, 2),
            )
            predicted = np.choose(choice, [left, previous, up_left])
        rows.append(bytes([filter_type]) + ((line - predicted) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
def test_png_round_trips_including_16_bit_colour_with_every_filter(channels):
    rng = np.random.default_rng(channels)
    for image in (
        rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        rng.integers(0, 256, (5, 7, 1), dtype=np.uint8),
        rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16),
    ):
        decoded = decode_png(encode_png(image))
        assert decoded.dtype == image.dtype and np.array_equal(decoded, image)
    image = rng.integers(0, 65536, (6, 5, channels), dtype=np.uint16)
    assert np.array_equal(decode_png(encode_png(image)), image)
    for filter_type in (3, 4):
        assert np.array_equal(decode_png(_png16_with_filter(image, filter_type)), image)


# --- the MOVi schema ----------------------------------------------------------------------------


def test_shards_use_tfds_feature_names_and_kinds(shards):
    directory, videos = shards
    flat = parse_example(next(read_records(directory / "movi_e-train.tfrecord-00000-of-00002")))
    assert len(flat["video"]) == FRAMES and flat["video"][0].startswith(b"\x89PNG")
    assert len(flat["depth"]) == FRAMES and len(flat["segmentations"]) == FRAMES
    assert flat["forward_flow"].dtype == np.int64 and flat["forward_flow"].size == FRAMES * SIZE * SIZE * 2
    assert flat["metadata/depth_range"].dtype == np.float32 and flat["metadata/video_name"] == [b"video_0"]
    lengths = flat["instances/bboxes/ragged_row_lengths_0"]
    assert lengths.tolist() == [len(frames) for frames in videos[0]["instances"]["bbox_frames"]] and lengths[1] == 0
    assert flat["instances/bboxes/ragged_flat_values"].size == 4 * lengths.sum()
    assert flat["instances/bbox_frames/ragged_flat_values"].dtype == np.int64
    assert flat["instances/positions"].size == INSTANCES * FRAMES * 3
    assert flat["instances/is_dynamic"].dtype == np.int64 and flat["instances/asset_id"] == [
        b"asset_0",
        b"asset_1",
        b"asset_2",
    ]
    assert flat["events/collisions/instances"].tolist() == [0, 2, 1, 65535]


def test_read_movi_gives_every_field_back_exactly(shards):
    directory, videos = shards
    read = list(read_movi(directory, fields="all"))
    assert len(read) == 3 and all(video["variant"] == "movi_e" for video in read)
    for got, written in zip(read, videos):
        metadata = got["metadata"]
        assert metadata["video_name"] == written["metadata"]["video_name"] and metadata["num_instances"] == INSTANCES
        assert (metadata["width"], metadata["height"], metadata["num_frames"]) == (SIZE, SIZE, FRAMES)
        assert got["video"].shape == (FRAMES, SIZE, SIZE, 3) and got["video"].dtype == np.uint8
        assert np.array_equal(got["video"], written["video"]) and np.array_equal(
            got["segmentations"], written["segmentations"]
        )
        low, high = written["metadata"]["depth_range"]
        assert got["depth"].dtype == np.float32 and got["depth"].shape == (FRAMES, SIZE, SIZE, 1)
        np.testing.assert_allclose(got["depth"], written["depth"] / 65535 * (high - low) + low, rtol=1e-6)
        low, high = written["metadata"]["forward_flow_range"]
        np.testing.assert_allclose(
            got["forward_flow"], written["forward_flow"] / 65535 * (high - low) + low, rtol=1e-6, atol=1e-6
        )
        low, high = written["metadata"]["backward_flow_range"]
        np.testing.assert_allclose(
            got["backward_flow"], written["backward_flow"] / 65535 * (high - low) + low, rtol=1e-6, atol=1e-6
        )
        assert np.array_equal(got["normal"], written["normal"]) and got["normal"].dtype == np.uint16
        assert np.array_equal(got["object_coordinates"], written["object_coordinates"])
        for name, value in written["camera"].items():
            np.testing.assert_array_equal(got["camera"][name], np.float32(value))
        instances = got["instances"]
        for name in (
            "mass",
            "friction",
            "restitution",
            "positions",
            "quaternions",
            "velocities",
            "angular_velocities",
            "bboxes_3d",
            "image_positions",
            "visibility",
            "category",
            "scale",
            "is_dynamic",
        ):
            assert np.array_equal(instances[name], written["instances"][name]), name
        assert instances["visibility"].dtype == np.uint16 and instances["is_dynamic"].dtype == bool
        assert instances["asset_id"] == written["instances"]["asset_id"]
        # the ragged boxes, densified per frame
        assert instances["bboxes"].shape == (INSTANCES, FRAMES, 4) and instances["has_bbox"].shape == (
            INSTANCES,
            FRAMES,
        )
        for i in range(INSTANCES):
            frames = written["instances"]["bbox_frames"][i]
            assert instances["bbox_frames"][i].tolist() == frames.tolist()
            assert np.array_equal(instances["bboxes"][i, frames], written["instances"]["bboxes"][i])
            others = np.setdiff1d(np.arange(FRAMES), frames)
            assert np.isnan(instances["bboxes"][i, others]).all() and instances["has_bbox"][i].tolist() == [
                t in frames for t in range(FRAMES)
            ]
        assert not instances["has_bbox"][1].any()
        for name, value in written["events"]["collisions"].items():
            assert np.array_equal(got["events"]["collisions"][name], value)
        assert got["background"] == "hdri_name"


def test_fields_limit_what_is_decoded(shards):
    directory, _ = shards
    video = next(read_movi(directory, fields=["video", "instances"]))
    assert {"video", "instances", "metadata"} <= set(video) and "depth" not in video and "forward_flow" not in video
    default = next(read_movi(directory))
    assert {"video", "depth", "forward_flow", "camera", "events"} <= set(default) and "normal" not in default
    assert "object_coordinates" in next(read_movi(directory, fields=["object_coordinates"]))


def test_variant_and_shard_discovery(shards, tmp_path):
    directory, _ = shards
    assert movi_variant("gs://kubric-public/tfds/movi_c/128x128/1.0.0/movi_c-train.tfrecord-00000-of-00032") == "movi_c"
    assert movi_variant(tmp_path / "videos.tfrecord") is None
    assert len(list(read_movi(str(directory / "*-00001-of-*")))) == 1
    with pytest.raises(OcrlError, match="no TFRecord shards"):
        list(read_movi(tmp_path))
    with pytest.raises(OcrlError, match="does not exist"):
        list(read_movi(tmp_path / "missing"))


def _corrupt_copy(directory, tmp_path, change) -> str:
    data = bytearray((directory / "movi_e-train.tfrecord-00000-of-00002").read_bytes())
    path = tmp_path / "movi_e-train.tfrecord-00000-of-00001"
    path.write_bytes(bytes(change(data)))
    return path


def test_corrupt_and_truncated_shards_name_file_and_record(shards, tmp_path):
    directory, _ = shards
    second = record_offsets(directory / "movi_e-train.tfrecord-00000-of-00002")[1]

    def flip_data(data):
        data[second + 200] ^= 0x10
        return data

    path = _corrupt_copy(directory, tmp_path, flip_data)
    with pytest.raises(CorruptFileError, match=rf"{path.name}: record 1 is corrupt \(checksum of its data"):
        list(read_movi(path))

    def flip_length(data):
        data[second + 2] ^= 0x01
        return data

    path = _corrupt_copy(directory, tmp_path, flip_length)
    with pytest.raises(CorruptFileError, match=r"record 1 is corrupt \(checksum of its length"):
        list(read_movi(path))
    path = _corrupt_copy(directory, tmp_path, lambda data: data[:-100])
    with pytest.raises(CorruptFileError, match=rf"{path.name}: record 1 is truncated"):
        list(read_movi(path))
    with pytest.raises(CorruptFileError, match="record 1 is truncated"):
        record_offsets(path)
    path = _corrupt_copy(directory, tmp_path, lambda data: data[: second + 5])
    with pytest.raises(CorruptFileError, match="record 1 is truncated"):
        list(read_movi(path))


def test_a_record_that_is_not_a_movi_example_is_named(tmp_path):
    from ocrl.movi.tfrecord import TFRecordWriter

    path = tmp_path / "movi_a-train.tfrecord-00000-of-00001"
    with TFRecordWriter(path) as writer:
        writer.write(serialize_example({"video": [b"x"]}))
        writer.write(b"\xff\xff\xff")
    with pytest.raises(CorruptFileError, match=r"record 0: not a MOVi example \(feature 'metadata/width' is missing\)"):
        list(read_movi(path))
    with pytest.raises(CorruptFileError, match=r"record 1: not a valid tf.train.Example"):
        decode_movi_example(b"\xff\xff\xff", where=f"{path}: record 1")
    video = make_video(0)
    video["video"] = video["video"][:2]  # fewer frames than metadata says
    with pytest.raises(CorruptFileError, match="video has 2 frames, metadata says 3"):
        decode_movi_example(encode_movi_example(video))


# --- conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_convert_round_trip(shards, tmp_path, workers):
    directory, videos = shards
    store = convert_movi(directory, tmp_path / "store", workers=workers, progress=False)
    assert len(store) == 3 and store.env_id == "movi/movi_e" and store.frame_shape == (SIZE, SIZE, 3)
    assert {"masks", "depth", "object_box", "object_position", "object_shape"} <= set(store.ground_truth_keys)
    read = list(read_movi(directory))
    for position, (video, written) in enumerate(zip(read, videos)):
        episode = store.episode(position)
        assert episode.length == FRAMES - 1 and episode.actions.shape == (FRAMES - 1, 0) and episode.truncated[-1]
        assert np.array_equal(episode.frames(), written["video"])
        truth = episode.ground_truth()
        assert np.array_equal(truth["masks"], written["segmentations"][..., 0].astype(np.int32))
        assert np.array_equal(truth["depth"], video["depth"][..., 0])
        boxes = video["instances"]["bboxes"]  # (n, s, 4) ymin, xmin, ymax, xmax
        expected = np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], -1).transpose(1, 0, 2) * 2 - 1
        np.testing.assert_allclose(truth["object_box"], expected, rtol=1e-6)
        # invisible instance 1: position from its projected centre, size 0, box NaN
        np.testing.assert_allclose(
            truth["object_position"][:, 1], video["instances"]["image_positions"][1] * 2 - 1, rtol=1e-6
        )
        assert (truth["object_size"][:, 1] == 0).all() and np.isnan(truth["object_box"][:, 1]).all()
        assert truth["object_shape"][0].tolist() == written["instances"]["asset_id"]
        distance = np.linalg.norm(written["instances"]["positions"] - written["camera"]["positions"][None], axis=-1).T
        np.testing.assert_allclose(truth["object_depth"], distance, rtol=1e-5)


def test_convert_resumes_and_downsamples(shards, tmp_path):
    directory, videos = shards
    out = tmp_path / "store"
    convert_movi(directory, out, resolution=4, max_videos=2, workers=0, progress=False)
    first = (out / "episodes" / "episode-000000.npz").stat().st_mtime_ns
    store = convert_movi(directory, out, resolution=4, workers=0, progress=False)
    assert len(store) == 3 and (out / "episodes" / "episode-000000.npz").stat().st_mtime_ns == first
    frames = store.episode(2).frames()
    expected = np.round(videos[2]["video"].reshape(FRAMES, 4, 2, 4, 2, 3).astype(float).mean(axis=(2, 4))).astype(
        np.uint8
    )
    assert frames.shape == (FRAMES, 4, 4, 3) and np.array_equal(frames, expected)
    assert np.array_equal(
        store.episode(2).ground_truth(keys=["masks"])["masks"], videos[2]["segmentations"][:, ::2, ::2, 0]
    )
    with pytest.raises(OcrlError, match="different collection"):
        convert_movi(directory, out, resolution=8, workers=0, progress=False)
    with pytest.raises(OcrlError, match="pick a resolution that divides 8"):
        convert_movi(directory, tmp_path / "other", resolution=3, workers=0, progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_convert_skips_bad_records_and_shards_and_says_so(shards, tmp_path, capsys, workers):
    directory, videos = shards
    damaged = tmp_path / "shards"
    damaged.mkdir()
    first, second = (directory / f"movi_e-train.tfrecord-0000{i}-of-00002" for i in (0, 1))
    data = bytearray(first.read_bytes())
    data[record_offsets(first)[1] + 200] ^= 0x10  # record 1: its data fails its checksum
    (damaged / first.name).write_bytes(bytes(data))
    (damaged / second.name).write_bytes(second.read_bytes()[:50])  # the whole shard is cut short
    store = convert_movi(damaged, tmp_path / "store", workers=workers, progress=False)
    assert [record.index for record in store.episodes] == [0]
    assert np.array_equal(store.episode(0).frames(), videos[0]["video"])
    err = capsys.readouterr().err
    assert f"{first.name}: record 1 is corrupt" in err and f"{second.name}: record 0 is truncated" in err
    assert "skipped 2 unreadable part(s)" in err
    # repaired shards would renumber the videos under the stored episodes: refused, not mixed
    (damaged / second.name).write_bytes(second.read_bytes())
    with pytest.raises(OcrlError, match="convert into a new DST"):
        convert_movi(damaged, tmp_path / "store", workers=workers, progress=False)


def test_clip_conditions_are_first_frame_boxes(shards, tmp_path):
    directory, _ = shards
    store = convert_movi(directory, tmp_path / "store", workers=0, progress=False)
    boxes = np.array([[0, 0, 1, 1], [np.nan] * 4, [-1, -1, 0, 0]], np.float32)
    assert box_conditions(boxes, 4).tolist() == [[0, 0, 1, 1], [-1, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert box_conditions(boxes, 1).tolist() == [[0, 0, 1, 1]]
    clip = ClipDataset(store, 2, seed=0, conditions=5)[0]
    truth = store.episode(0).ground_truth(clip["start"], clip["start"] + 1, keys=["object_box"])["object_box"][0]
    assert clip["conditions"].shape == (5, 4) and np.array_equal(clip["conditions"].numpy(), box_conditions(truth, 5))


def test_conditional_pretraining_and_evaluation(shards, tmp_path):
    from ocrl.checkpoint import load_checkpoint
    from ocrl.evaluation import evaluate_perception
    from ocrl.training import pretrain

    write_movi_shard(
        tmp_path / "movi_c-train.tfrecord-00000-of-00001", [make_video(seed, frames=5) for seed in range(2)]
    )
    store = convert_movi(
        tmp_path / "movi_c-train.tfrecord-00000-of-00001", tmp_path / "store", workers=0, progress=False
    )
    out = pretrain(store.path, tmp_path / "model", steps=2, batch_size=2, num_slots=4, progress=False, conditional=True)
    model, config = load_checkpoint(out)
    assert config.initializer.kind == "conditional" and config.num_slots == 4
    result = evaluate_perception(model, store, num_frames=5, progress=False)
    assert result["videos"] == 2 and 0 <= result["miou"] <= 1


def test_movi_presets():
    from ocrl.training import PRESET_MODELS, PRESETS

    assert PRESET_MODELS["movi-c"]["num_slots"] == 11 and PRESET_MODELS["movi-e"]["num_slots"] == 24
    assert PRESETS["movi-c"][1].clip_length == 6 and PRESETS["movi-e"][1].clip_length == 6


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_convert(shards, tmp_path, capsys):
    directory, _ = shards
    assert main(["movi", "convert", str(directory), str(tmp_path / "store"), "--workers", "0"]) == 0
    assert "3 videos of 8x8" in capsys.readouterr().out
    assert len(RolloutStore.open(tmp_path / "store")) == 3


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["movi", "convert"], "the following arguments are required: SRC, DST"),
        (["movi", "convert", "{tmp}/missing", "{tmp}/out"], "missing does not exist"),
        (["movi", "convert", "{tmp}", "{tmp}/out"], "holds no TFRecord shards"),
        (["movi", "convert", "{shards}", "{tmp}/out", "--resolution", "0"], "expected a positive integer"),
        (["movi", "convert", "{shards}", "{tmp}/out", "--resolution", "3"], "pick a resolution that divides"),
        (
            ["movi", "convert", "{corrupt}", "{tmp}/out"],
            "holds no readable videos: {tmp}/bad/bad.tfrecord: record 0 is truncated",
        ),
        (["movi"], "required: <movi command>"),
        (["movi", "generate", "{tmp}/gen"], "required: --videos"),
        (
            ["movi", "generate", "{tmp}/gen", "--videos", "1", "--min-objects", "5", "--max-objects", "2"],
            "min_objects <= max_objects",
        ),
    ],
)
def test_cli_errors_are_one_line(shards, tmp_path, capsys, arguments, fragment):
    directory, _ = shards
    (tmp_path / "bad").mkdir()
    corrupt = tmp_path / "bad" / "bad.tfrecord"
    corrupt.write_bytes((directory / "movi_e-train.tfrecord-00001-of-00002").read_bytes()[:50])
    filled = [argument.format(tmp=tmp_path, shards=directory, corrupt=corrupt) for argument in arguments]
    assert main(filled) == 2
    error = capsys.readouterr().err
    assert fragment.format(tmp=tmp_path) in error and error.count("\n") == 1 and error.startswith("ocrl movi")


# --- generator -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from ocrl.movi.generator import GeneratorConfig, generate_movi

    directory = tmp_path_factory.mktemp("generated")
    config = GeneratorConfig(resolution=24, num_frames=4, min_objects=2, max_objects=3, moving_camera=True)
    # rendering in a worker process: this one keeps no OpenGL context to upset dm_control's
    generate_movi(directory, 3, config, seed=5, videos_per_shard=2, workers=1, progress=False)
    return directory, config


def test_generator_videos_are_consistent(generated):
    directory, _ = generated
    videos = list(read_movi(directory))
    assert len(videos) == 3 and videos[0]["variant"] == "movi_mujoco"
    for video in videos:
        count = video["metadata"]["num_instances"]
        assert 2 <= count <= 3 and video["video"].shape == (4, 24, 24, 3)
        segmentations = video["segmentations"][..., 0]
        instances = video["instances"]
        assert segmentations.max() <= count and (segmentations == 0).any()
        for t in range(4):
            for i in range(count):
                rows, columns = np.nonzero(segmentations[t] == i + 1)
                assert instances["visibility"][i, t] == len(rows)
                assert instances["has_bbox"][i, t] == bool(len(rows))  # every visible object has a box that frame
                if len(rows):
                    box = instances["bboxes"][i, t] * 24
                    assert box.tolist() == [rows.min(), columns.min(), rows.max() + 1, columns.max() + 1]
        depth = video["depth"]
        assert np.isfinite(depth).all() and depth.min() > 0
        low, high = video["metadata"]["depth_range"]
        assert depth.min() == pytest.approx(low, rel=1e-4) and depth.max() == pytest.approx(high, rel=1e-4)
        # objects are nearer than the floor behind them: object pixels' depth is below the far end
        assert depth[..., 0][segmentations > 0].max() < high
        assert instances["positions"].shape == (count, 4, 3) and (instances["positions"][:, :, 2] > 0).all()
        assert not np.allclose(video["camera"]["positions"][0], video["camera"]["positions"][-1])  # moving camera
        forward, backward = video["forward_flow"], video["backward_flow"]
        assert forward.shape == (4, 24, 24, 2) and np.isfinite(forward).all()
        assert np.abs(forward[-1]).max() < 1e-3 and np.abs(backward[0]).max() < 1e-3  # zero up to uint16 steps
        for t in range(3):  # an object's pixels move, on average, as its projected centre does
            for i in range(count):
                pixels = segmentations[t] == i + 1
                if pixels.sum() >= 10:
                    centre_motion = (instances["image_positions"][i, t + 1] - instances["image_positions"][i, t])[
                        ::-1
                    ] * 24
                    assert np.abs(forward[t][pixels].mean(axis=0) - centre_motion).max() < 1.0
        assert {LABEL_NAMES["movi_mujoco"]["shape_label"][label] for label in instances["shape_label"]} <= {
            "box",
            "sphere",
            "cylinder",
            "capsule",
            "ellipsoid",
        }


def test_generator_is_reproducible_and_resumes(generated, tmp_path):
    from ocrl.movi.generator import generate_movi

    directory, config = generated
    shard = sorted(directory.glob("*.tfrecord-*"))[1]
    generate_movi(tmp_path, 3, config, seed=5, videos_per_shard=2, workers=1, progress=False)
    assert (tmp_path / shard.name).read_bytes() == shard.read_bytes()
    (tmp_path / shard.name).unlink()
    generate_movi(tmp_path, 3, config, seed=5, videos_per_shard=2, workers=1, progress=False)
    assert (tmp_path / shard.name).read_bytes() == shard.read_bytes()
    with pytest.raises(OcrlError, match="other settings"):
        generate_movi(tmp_path, 3, config, seed=6, videos_per_shard=2, workers=1, progress=False)


def test_generated_videos_convert(generated, tmp_path):
    directory, _ = generated
    store = convert_movi(directory, tmp_path / "store", workers=0, progress=False)
    truth = store.episode(0).ground_truth()
    assert store.env_id == "movi/movi_mujoco" and truth["masks"].max() >= 1
    assert set(truth["object_shape"][0][: truth["object_count"][0]]) <= {
        "box",
        "sphere",
        "cylinder",
        "capsule",
        "ellipsoid",
    }
    assert np.isfinite(truth["object_colour"][0, : truth["object_count"][0]]).all()

"""The rollout store: exact round trips, partial decoding, crash recovery, corrupt files."""

from __future__ import annotations

import copy
import json
import shutil
import zipfile
import zlib

import numpy as np
import pytest

import ocrl.data.store as store_module
from ocrl.data.collect import collect, episode_action_seed
from ocrl.data.store import MANIFEST_NAME, RolloutStore, RolloutWriter, write_episode
from ocrl.envs import make
from ocrl.errors import CorruptFileError, OcrlError

ENV_ID = "ocrl/ObjectGoal-v0"
ENV_KWARGS = {"resolution": 16}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A store of 4 ObjectGoal episodes at 16x16, collected with 2 sub-envs."""
    path = tmp_path_factory.mktemp("store") / "rollouts"
    collect(ENV_ID, 4, path, num_envs=2, seed=7, env_kwargs=ENV_KWARGS, progress=False)
    return path


@pytest.fixture
def store_copy(collected, tmp_path):
    """A private copy of the collected store, to damage."""
    path = tmp_path / "rollouts"
    shutil.copytree(collected, path)
    return path


def replay(index: int, seed: int = 7) -> dict:
    """Episode ``index`` as the env itself returns it, stepping it alone with the random policy."""
    env = make(ENV_ID, **ENV_KWARGS)
    actions_space = copy.deepcopy(env.action_space)
    actions_space.seed(episode_action_seed(seed, index))
    observation, info = env.reset(seed=seed + index)
    episode = {
        "frames": [observation],
        "ground_truth": [info["ground_truth"]],
        "actions": [],
        "rewards": [],
        "terminated": [],
        "truncated": [],
    }
    while True:
        action = actions_space.sample()
        observation, reward, terminated, truncated, info = env.step(action)
        for key, value in zip(
            ("frames", "ground_truth", "actions", "rewards", "terminated", "truncated"),
            (observation, info["ground_truth"], action, reward, terminated, truncated),
        ):
            episode[key].append(value)
        if terminated or truncated:
            return episode


def test_round_trip_equals_what_the_env_returned(collected):
    store = RolloutStore.open(collected)
    assert len(store) == 4
    assert [record.index for record in store.episodes] == [0, 1, 2, 3]
    for position in range(len(store)):
        stored = store.episode(position)
        expected = replay(stored.index)
        assert stored.seed == 7 + stored.index
        assert stored.length == len(expected["actions"])
        np.testing.assert_array_equal(stored.frames(), np.stack(expected["frames"]))
        np.testing.assert_array_equal(stored.actions, np.array(expected["actions"]))
        np.testing.assert_array_equal(stored.rewards, np.array(expected["rewards"]))
        np.testing.assert_array_equal(stored.terminated, np.array(expected["terminated"]))
        np.testing.assert_array_equal(stored.truncated, np.array(expected["truncated"]))
        assert store.episodes[position].episode_return == pytest.approx(sum(expected["rewards"]))
        ground_truth = stored.ground_truth()
        for t, frame_truth in enumerate(expected["ground_truth"]):
            count = ground_truth["object_count"][t]
            assert count == len(frame_truth["object_shape"])
            np.testing.assert_array_equal(ground_truth["masks"][t], frame_truth["masks"])
            assert ground_truth["masks"].dtype == np.int32
            np.testing.assert_array_equal(ground_truth["depth"][t], frame_truth["depth"])
            for key in ("object_position", "object_size", "object_depth", "object_colour"):
                np.testing.assert_array_equal(ground_truth[key][t, :count], frame_truth[key])
            assert tuple(ground_truth["object_shape"][t, :count]) == frame_truth["object_shape"]
    assert store.num_frames == sum(record.length + 1 for record in store.episodes)


def test_episode_files_are_plain_npz_without_pickles(collected):
    store = RolloutStore.open(collected)
    with np.load(store.episode(0).path, allow_pickle=False) as archive:
        assert int(archive["index"]) == 0
        np.testing.assert_array_equal(archive["actions"], store.episode(0).actions)
        assert all(archive[name].dtype != object for name in archive.files)


def test_partial_decode_reads_only_the_frames_asked_for(collected, monkeypatch):
    store = RolloutStore.open(collected)
    episode = max((store.episode(index) for index in range(len(store))), key=lambda episode: episode.length)
    assert episode.length >= 8
    everything = episode.frames()
    truth = episode.ground_truth()
    decoded = []
    original = zlib.decompressobj

    def counting_decompressobj():
        decompressor = original()
        decompress = decompressor.decompress

        class Counting:
            def decompress(self, data, max_length=0):
                decoded.append(len(data))
                return decompress(data, max_length)

            def __getattr__(self, name):
                return getattr(decompressor, name)

        return Counting()

    monkeypatch.setattr(store_module.zlib, "decompressobj", counting_decompressobj)
    np.testing.assert_array_equal(episode.frames(5, 8), everything[5:8])
    assert len(decoded) == 3
    part = episode.ground_truth(5, 8)
    for key, value in truth.items():
        np.testing.assert_array_equal(part[key], value[5:8])
    np.testing.assert_array_equal(episode.frames(-2), everything[-2:])
    assert episode.frames(8, 5).shape == (0, 16, 16, 3)


def test_object_counts_that_change_within_an_episode_are_padded(tmp_path):
    """MiniGrid drops the key object when it is picked up; masks over 255 need int32."""
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    counts = [2, 1, 300]
    ground_truth = [
        {
            "masks": np.full((8, 8), count, dtype=np.int32),
            "depth": np.full((8, 8), 0.5 * t, dtype=np.float32),
            "object_position": np.full((count, 2), t, dtype=np.float32),
            "object_size": np.ones(count, dtype=np.float32),
            "object_depth": np.ones(count, dtype=np.float32),
            "object_colour": np.ones((count, 3), dtype=np.float32),
            "object_shape": ("key",) * count,
        }
        for t, count in enumerate(counts)
    ]
    header = {
        "env_id": "synthetic",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "random"},
        "frame_source": "observation",
        "frame_shape": [8, 8, 3],
        "action_space": {"type": "Discrete", "n": 3, "start": 0},
        "ground_truth": list(ground_truth[0]),
    }
    writer = RolloutWriter(tmp_path / "store", header)
    writer.add(0, 0, frames, np.array([1, 2]), [0.0, 1.0], [False, True], [False, False], ground_truth)
    writer.close()
    result = RolloutStore.open(tmp_path / "store").episode(0).ground_truth()
    np.testing.assert_array_equal(result["object_count"], counts)
    assert result["object_position"].shape == (3, 300, 2)
    assert np.isnan(result["object_position"][0, 2:]).all() and (result["object_position"][0, :2] == 0).all()
    assert result["object_shape"][1].tolist() == ["key"] + [""] * 299
    np.testing.assert_array_equal(result["masks"][2], np.full((8, 8), 300))


def test_write_episode_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        write_episode(tmp_path / "x.npz", 0, 0, np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), [0, 0], [0, 0], [0, 0])


def test_episode_file_without_manifest_entry_and_temp_files_recover(store_copy):
    """A crash after an episode file's rename but before the manifest's, with temp files left."""
    manifest = json.loads((store_copy / MANIFEST_NAME).read_text())
    manifest["episodes"] = manifest["episodes"][:2]
    (store_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    leftovers = [
        store_copy / "episodes" / ".episode-000004.npz.0a1b2c3d.tmp",
        store_copy / f".{MANIFEST_NAME}.0a1b2c3d.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")

    store = RolloutStore.open(store_copy)  # reading re-indexes, and changes nothing on disk
    assert [record.index for record in store.episodes] == [0, 1, 2, 3]
    assert all(leftover.exists() for leftover in leftovers)
    expected = RolloutStore.open(store_copy).episodes

    collect(ENV_ID, 4, store_copy, num_envs=2, seed=7, env_kwargs=ENV_KWARGS, progress=False)
    assert not any(leftover.exists() for leftover in leftovers)
    manifest = json.loads((store_copy / MANIFEST_NAME).read_text())
    assert [entry["index"] for entry in manifest["episodes"]] == [0, 1, 2, 3]
    assert RolloutStore.open(store_copy).episodes == expected


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_episode_file_names_the_file(store_copy, damage):
    path = store_copy / "episodes" / "episode-000001.npz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        member = zipfile.ZipFile(path).getinfo("frames.data.npy")
        data[member.header_offset + member.file_size // 2] ^= 0x10  # inside the frame streams
    path.write_bytes(bytes(data))
    episode = RolloutStore.open(store_copy).episode(1)
    with pytest.raises(CorruptFileError, match="episode-000001.npz"):
        episode.frames()


def test_any_flipped_bit_gives_the_same_arrays_or_an_error_naming_the_file(store_copy):
    def read_all(store):
        episode = store.episode(0)
        return [
            episode.frames(),
            *episode.ground_truth().values(),
            episode.actions,
            episode.rewards,
            episode.terminated,
            episode.truncated,
        ]

    expected = read_all(RolloutStore.open(store_copy))
    path = store_copy / "episodes" / "episode-000000.npz"
    original = path.read_bytes()
    rng = np.random.default_rng(0)
    errors = 0
    for offset in rng.choice(len(original), size=150, replace=False):
        data = bytearray(original)
        data[offset] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        try:
            arrays = read_all(RolloutStore.open(store_copy))
        except CorruptFileError as error:
            assert str(path) in str(error)
            errors += 1
        else:  # a flip in a field nobody reads (a zip timestamp, ...)
            assert all(np.array_equal(a, b) for a, b in zip(arrays, expected))
    assert errors > 100


def test_corrupt_manifest_names_the_file(store_copy):
    manifest = store_copy / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(CorruptFileError, match=str(manifest)):
        RolloutStore.open(store_copy)
    manifest.write_text(json.dumps({"format": "ocrl-rollouts", "format_version": 1}))
    with pytest.raises(CorruptFileError, match="malformed"):
        RolloutStore.open(store_copy)


def test_missing_listed_episode_file_is_an_error(store_copy):
    (store_copy / "episodes" / "episode-000002.npz").unlink()
    with pytest.raises(CorruptFileError, match="episode-000002.npz"):
        RolloutStore.open(store_copy)


def test_not_a_store(tmp_path):
    with pytest.raises(OcrlError, match="not an ocrl rollout store"):
        RolloutStore.open(tmp_path)
    with pytest.raises(OcrlError, match="does not exist"):
        RolloutStore.open(tmp_path / "nothing")


def test_writer_refuses_a_non_store_directory_and_a_different_collection(collected, tmp_path):
    header = json.loads((collected / MANIFEST_NAME).read_text())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OcrlError, match="not an ocrl rollout store"):
        RolloutWriter(tmp_path / "mine", header)
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]

    before = (collected / MANIFEST_NAME).read_bytes()
    with pytest.raises(OcrlError, match="seed: store has 7, asked for 8"):
        RolloutWriter(collected, {**header, "seed": 8})
    assert (collected / MANIFEST_NAME).read_bytes() == before

    (tmp_path / "empty").mkdir()
    RolloutWriter(tmp_path / "empty", header).close()
    assert len(RolloutStore.open(tmp_path / "empty")) == 0

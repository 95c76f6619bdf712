"""Torch datasets over a rollout store: clips, frames, seeding, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ocrl.data.collect import collect
from ocrl.data.dataset import ClipDataset, FrameDataset
from ocrl.data.store import RolloutStore, RolloutWriter
from ocrl.errors import OcrlError

CLIP = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> RolloutStore:
    path = tmp_path_factory.mktemp("dataset") / "rollouts"
    return collect("ocrl/ObjectGoal-v0", 6, path, num_envs=3, env_kwargs={"resolution": 16}, progress=False)


def test_clips_have_the_right_shapes_and_content(store):
    dataset = ClipDataset(store.path, CLIP, ground_truth=True, seed=0)
    assert len(dataset) == sum(record.length + 1 >= CLIP for record in store.episodes)
    for item in range(len(dataset)):
        clip = dataset[item]
        episode = store.episode(clip["episode"])
        assert 0 <= clip["start"] and clip["start"] + CLIP <= episode.length + 1
        assert clip["frames"].shape == (CLIP, 16, 16, 3) and clip["frames"].dtype == torch.uint8
        assert clip["masks"].shape == (CLIP, 16, 16) and clip["masks"].dtype == torch.int64
        assert clip["depth"].shape == (CLIP, 16, 16) and clip["depth"].dtype == torch.float32
        stop = clip["start"] + CLIP
        np.testing.assert_array_equal(clip["frames"].numpy(), episode.frames(clip["start"], stop))
        np.testing.assert_array_equal(clip["masks"].numpy(), episode.ground_truth(clip["start"], stop)["masks"])


def test_crops_vary_and_are_reproducible(store):
    def starts(seed):
        dataset = ClipDataset(store, CLIP, seed=seed)
        return [dataset[item % len(dataset)]["start"] for item in range(60)]

    assert starts(0) == starts(0)
    assert starts(0) != starts(1)
    dataset = ClipDataset(store, CLIP, seed=0)
    longest = max(range(len(dataset)), key=lambda item: store.episodes[dataset.positions[item]].length)
    assert len({dataset[longest]["start"] for _ in range(20)}) > 1


def test_short_episodes_are_skipped_and_none_long_enough_is_an_error(store):
    longest = max(record.length + 1 for record in store.episodes)
    dataset = ClipDataset(store, longest)
    assert [store.episodes[position].length + 1 for position in dataset.positions] == [longest] * len(dataset)
    with pytest.raises(OcrlError, match=f"no episode .* has {longest + 1} frames"):
        ClipDataset(store, longest + 1)


def test_clip_dataset_in_a_dataloader_with_workers(store):
    dataset = ClipDataset(store.path, CLIP, ground_truth=True, seed=0)

    def batches():
        loader = DataLoader(dataset, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))
        return list(loader)

    first, second = batches(), batches()
    assert sum(len(batch["frames"]) for batch in first) == len(dataset)
    assert first[0]["frames"].shape == (2, CLIP, 16, 16, 3)
    for a, b in zip(first, second):
        assert torch.equal(a["start"], b["start"]) and torch.equal(a["frames"], b["frames"])


def test_frame_dataset_covers_every_frame(store):
    dataset = FrameDataset(store.path, ground_truth=True)
    assert len(dataset) == store.num_frames
    last = store.episodes[-1]
    for item, position, frame_index in [
        (0, 0, 0),
        (store.episodes[0].length + 1, 1, 0),
        (len(dataset) - 1, len(store) - 1, last.length),
    ]:
        sample = dataset[item]
        assert (sample["episode"], sample["frame_index"]) == (position, frame_index)
        episode = store.episode(position)
        np.testing.assert_array_equal(sample["frame"].numpy(), episode.frames(frame_index, frame_index + 1)[0])
        np.testing.assert_array_equal(
            sample["masks"].numpy(), episode.ground_truth(frame_index, frame_index + 1)["masks"][0]
        )
        assert sample["depth"].shape == (16, 16)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    loader = DataLoader(dataset, batch_size=64, num_workers=2)
    assert sum(len(batch["frame"]) for batch in loader) == store.num_frames


def test_ground_truth_from_a_store_without_it_is_an_error(tmp_path):
    header = {
        "env_id": "synthetic",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "random"},
        "frame_source": "render",
        "frame_shape": [8, 8, 3],
        "action_space": {"type": "Discrete", "n": 2, "start": 0},
        "ground_truth": [],
    }
    writer = RolloutWriter(tmp_path, header)
    writer.add(0, 0, np.zeros((3, 8, 8, 3), np.uint8), np.array([0, 1]), [0.0, 0.0], [False, True], [False, False])
    writer.close()
    assert ClipDataset(tmp_path, 2)[0]["frames"].shape == (2, 8, 8, 3)
    with pytest.raises(OcrlError, match="no per-frame ground truth"):
        ClipDataset(tmp_path, 2, ground_truth=True)
    with pytest.raises(OcrlError, match="no per-frame ground truth"):
        FrameDataset(tmp_path, ground_truth=True)

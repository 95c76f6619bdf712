"""ocrl.probes: matching slots to objects, linear probes, depth order, end to end on a store."""

from __future__ import annotations

import numpy as np
import pytest

import ocrl
from ocrl.data.collect import collect
from ocrl.errors import OcrlError
from ocrl.probes import (
    MatchedSlots,
    depth_order,
    linear_probe,
    match_frame,
    match_slots,
    probe_scores,
    touching_rows,
)


def test_match_frame_pairs_each_object_with_the_slot_that_wins_most_of_it():
    true_ids = np.zeros((6, 6), np.int64)
    true_ids[:2, :2] = 1  # object row 0
    true_ids[4:, 4:] = 2  # object row 1
    segments = np.full((6, 6), 2)  # slot 2 wins the background (shared background: no harm)
    segments[:2, :2] = 1
    segments[4:, 4:] = 0
    segments[5, 5] = 2  # slot 0 wins 3 of object 1's 4 pixels
    assert match_frame(true_ids, segments, num_slots=3, min_coverage=0.5) == [(0, 1), (1, 0)]
    assert match_frame(true_ids, segments, num_slots=3, min_coverage=0.8) == [(0, 1)]
    # a segment id at or above num_slots (a background module's) is never a slot
    assert match_frame(true_ids, np.full((6, 6), 3), num_slots=3, min_coverage=0.5) == []
    assert match_frame(np.zeros((6, 6), np.int64), segments, num_slots=3, min_coverage=0.5) == []


def test_linear_probe_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array(["red", "green", "blue"]), size=600)
    codes = {"red": [1.0, 0.0], "green": [0.0, 1.0], "blue": [-1.0, -1.0]}
    features = np.array([codes[label] for label in labels]) + 0.1 * rng.normal(size=(600, 2))
    features = np.concatenate([features, rng.normal(size=(600, 6))], axis=1)
    assert linear_probe(features[:400], labels[:400], features[400:], labels[400:]) > 0.97
    noise = rng.normal(size=(600, 8))
    assert linear_probe(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.5
    # a held-out class never seen in training is always wrong
    assert linear_probe(features[:400], labels[:400], features[400:410], np.array(["pink"] * 10)) == 0.0


def test_depth_order_counts_agreeing_pairs_within_frames():
    true = np.array([0.1, 0.2, 0.3, 0.5, 0.5])
    frame = np.array([0, 0, 0, 1, 1])
    assert depth_order(np.array([1.0, 2.0, 3.0, 7.0, 9.0]), true, frame) == 1.0  # frame 1's tie is skipped
    assert depth_order(np.array([3.0, 2.0, 1.0, 0.0, 0.0]), true, frame) == 0.0
    assert depth_order(np.array([1.0, 1.0, 3.0, 0.0, 0.0]), true, frame) == pytest.approx(2 / 3)
    assert np.isnan(depth_order(np.array([1.0]), np.array([0.1]), np.array([0])))
    # pairs in frame order: (0, 1), (0, 2), (1, 2), (3, 4); only those that touch may count
    touching = np.array([False, True, False, True])
    assert depth_order(np.array([3.0, 2.0, 1.0, 0.0, 0.0]), true, frame, touching) == 0.0
    assert depth_order(np.array([1.0, 2.0, 0.0, 0.0, 0.0]), true, frame, touching) == 0.0
    assert depth_order(np.array([1.0, 0.0, 3.0, 0.0, 0.0]), true, frame, touching) == 1.0


def test_touching_rows_are_objects_whose_visible_pixels_are_neighbours():
    true_ids = np.zeros((5, 6), np.int64)
    true_ids[:2, :2] = 1
    true_ids[:2, 2:4] = 2  # beside 1
    true_ids[2, 3] = 3  # below 2
    true_ids[4, 0] = 4  # alone; diagonal neighbours do not touch:
    true_ids[3, 4] = 5
    assert touching_rows(true_ids).tolist() == [0b10, 0b101, 0b10, 0, 0]
    with pytest.raises(OcrlError, match="63"):
        touching_rows(np.arange(64).reshape(8, 8) + 1)


def test_probe_scores_of_a_model_on_held_out_episodes(tiny_perception, tmp_path):
    train = collect("ocrl/ObjectGoal-v0", 3, tmp_path / "train", seed=0, progress=False).path
    test = collect("ocrl/ObjectGoal-v0", 2, tmp_path / "test", seed=100, progress=False).path
    model = ocrl.load_perception(tiny_perception, device="cpu")
    # an untrained model's slots hold objects only by chance: accept any coverage
    matched = match_slots(model, train, num_frames=4, min_coverage=0.0, progress=False)
    assert matched.slots.shape == (len(matched.frame), model.slot_dim)
    assert matched.position.shape == (len(matched.frame), 4) and matched.true_position.shape == (len(matched.frame), 2)
    assert len(matched.psnr) == 3 * 4 and np.isfinite(matched.psnr).all()
    # at most one object per slot and one slot per object in each frame
    assert np.bincount(matched.frame).max() <= min(model.num_slots, matched.objects)
    scores = probe_scores(matched, match_slots(model, test, num_frames=4, min_coverage=0.0, progress=False))
    for name in ("colour", "shape"):
        assert 0.0 <= scores[f"{name}_accuracy"] <= 1.0 and 0.0 < scores[f"{name}_chance"] <= 1.0
    assert 0.0 < scores["matched_share"] <= 1.0
    with pytest.raises(OcrlError, match="frames"):
        match_slots(model, test, num_frames=500, progress=False)


def test_position_bias_is_the_constant_offset_and_error_its_size():
    random = np.random.default_rng(0)
    true = random.uniform(-1, 1, (40, 2))
    position = np.concatenate([true + [0.1, -0.2], random.uniform(0, 1, (40, 2))], 1)
    pairs = MatchedSlots(
        slots=random.normal(size=(40, 3)),
        position=position,
        colour=np.array(["red", "blue"] * 20),
        shape=np.array(["circle", "square"] * 20),
        true_position=true,
        true_depth=random.uniform(0, 1, 40),
        frame=np.arange(40) // 4,
        row=np.arange(40) % 4,
        touches=np.array([0b10, 0b01, 0, 0] * 10),  # rows 0 and 1 of each frame touch
        objects=40,
        psnr=np.full(10, 20.0),
    )
    scores = probe_scores(pairs, pairs)
    assert scores["position_bias_x"] == pytest.approx(0.1) and scores["position_bias_y"] == pytest.approx(-0.2)
    assert scores["position_error_x"] == pytest.approx(0.1) and scores["position_error_y"] == pytest.approx(0.2)
    assert scores["touching_share"] == pytest.approx(1 / 6)  # one of each frame's 6 pairs

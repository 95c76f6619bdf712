"""FG-ARI, mIoU and mBO against sklearn / scipy references written out plainly here."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from ocrl.metrics import contingency, fg_ari, mbo, miou

OBJECT_IDS = np.array([3, 7, 42, 255])  # deliberately not contiguous


def _random_case(seed, batch=3, frames=4, height=6, width=7, slots=5, masks=False, min_objects=0):
    """Ground truth with non-contiguous ids and varying object counts, and a noisy prediction."""
    rng = np.random.default_rng(seed)
    true = np.zeros((batch, frames, height, width), np.int64)
    for b in range(batch):
        objects = rng.choice(OBJECT_IDS, size=rng.integers(min_objects, len(OBJECT_IDS) + 1), replace=False)
        labels = np.concatenate([[0], objects])
        true[b] = rng.choice(labels, size=(frames, height, width))
    # A prediction that mostly follows the truth (so ARI is far from 0) plus noise.
    mapping = {value: rng.integers(0, slots) for value in np.concatenate([[0], OBJECT_IDS])}
    pred = np.vectorize(mapping.get)(true)
    noise = rng.random(true.shape) < 0.3
    pred[noise] = rng.integers(0, slots, size=noise.sum())
    if masks:
        logits = rng.normal(size=(batch, frames, slots, height, width))
        logits += 5.0 * np.moveaxis(np.eye(slots)[pred], -1, 2)
        return torch.from_numpy(true), torch.from_numpy(logits)
    return torch.from_numpy(true), torch.from_numpy(pred * 11 - 5)  # arbitrary, partly negative ids


def _as_ids(pred):
    return pred.argmax(2).numpy() if pred.is_floating_point() else pred.numpy()


def _reference_ari(true, pred, ignore_background=True):
    keep = true != 0 if ignore_background else np.ones(true.shape, bool)
    if not keep.any():
        return math.nan
    return adjusted_rand_score(true[keep], pred[keep])


def _reference_overlaps(true, pred, ignore_background=True):
    """(objects, segments) IoU with boolean masks: |t & p| / |t | p|, segments over all pixels."""
    objects = [value for value in np.unique(true) if value != 0 or not ignore_background]
    segments = np.unique(pred)
    iou = np.zeros((len(objects), len(segments)))
    for i, value in enumerate(objects):
        for j, segment in enumerate(segments):
            object_mask, segment_mask = true == value, pred == segment
            iou[i, j] = (object_mask & segment_mask).sum() / (object_mask | segment_mask).sum()
    return iou


def _reference_miou(true, pred, ignore_background=True):
    iou = _reference_overlaps(true, pred, ignore_background)
    if len(iou) == 0:
        return math.nan
    rows, columns = linear_sum_assignment(iou, maximize=True)
    return iou[rows, columns].sum() / len(iou)  # unmatched objects add 0


def _reference_mbo(true, pred, ignore_background=True):
    iou = _reference_overlaps(true, pred, ignore_background)
    return iou.max(1).mean() if len(iou) else math.nan


def _reference(metric, true, pred, video, ignore_background=True):
    """(B,) reference values: per video, or the mean over frames where the metric is defined."""
    true, pred = true.numpy(), _as_ids(pred)
    out = []
    for true_video, pred_video in zip(true, pred):
        if video:
            out.append(metric(true_video, pred_video, ignore_background))
        else:
            values = [metric(t, p, ignore_background) for t, p in zip(true_video, pred_video)]
            values = [value for value in values if not math.isnan(value)]
            out.append(np.mean(values) if values else math.nan)
    return np.array(out)


def _assert_close(actual, expected):
    assert actual.dtype == torch.float64 and actual.shape == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-12, atol=1e-12, equal_nan=True)


METRICS = [(fg_ari, _reference_ari), (miou, _reference_miou), (mbo, _reference_mbo)]


@pytest.mark.parametrize("metric, reference", METRICS, ids=["fg_ari", "miou", "mbo"])
@pytest.mark.parametrize("video", [True, False], ids=["video", "frame"])
@pytest.mark.parametrize("masks", [False, True], ids=["ids", "masks"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_videos(metric, reference, video, masks, seed):
    true, pred = _random_case(seed, masks=masks)
    _assert_close(metric(true, pred, video=video), _reference(reference, true, pred, video))


@pytest.mark.parametrize("metric, reference", METRICS, ids=["fg_ari", "miou", "mbo"])
@pytest.mark.parametrize("seed", range(3))
def test_background_counted_when_not_ignored(metric, reference, seed):
    true, pred = _random_case(seed, masks=seed % 2 == 1)
    for video in (True, False):
        expected = _reference(reference, true, pred, video, ignore_background=False)
        _assert_close(metric(true, pred, video=video, ignore_background=False), expected)


@pytest.mark.parametrize("metric, reference", METRICS, ids=["fg_ari", "miou", "mbo"])
def test_images_with_ids_and_masks(metric, reference):
    true, pred_masks = _random_case(11, frames=1, masks=True)
    true, pred_masks = true[:, 0], pred_masks[:, 0]  # (B, H, W), (B, K, H, W)
    pred_ids = pred_masks.argmax(1)
    expected = np.array([reference(t, p) for t, p in zip(true.numpy(), pred_ids.numpy())])
    for pred in (pred_ids, pred_masks):
        for video in (True, False):  # makes no difference for images
            _assert_close(metric(true, pred, video=video), expected)


def test_video_ari_requires_segments_to_keep_their_object():
    frame = torch.tensor([[1, 1, 2, 2]])
    true = torch.stack([frame, frame]).unsqueeze(0)  # (1, 2, 1, 4), objects 1 and 2 in both frames
    pred = torch.stack([frame, 3 - frame]).unsqueeze(0)  # segments swap objects in frame 2
    assert fg_ari(true, pred, video=False).item() == 1.0
    assert miou(true, pred, video=False).item() == 1.0
    expected = adjusted_rand_score(true.flatten().numpy(), pred.flatten().numpy())
    assert fg_ari(true, pred, video=True).item() == pytest.approx(expected) and expected < 1
    assert miou(true, pred, video=True).item() == pytest.approx(1 / 3)  # 2 / (4 + 4 - 2) each


@pytest.mark.parametrize("metric", [fg_ari, miou, mbo])
def test_perfect_prediction_scores_one(metric):
    true, _ = _random_case(3, batch=4, min_objects=1)
    true[0] = 0  # a sample without objects stays NaN
    relabelled = torch.from_numpy(np.random.default_rng(0).permutation(256))[true]
    one_hot = torch.nn.functional.one_hot(true).movedim(-1, 2).float()  # (B, T, 256, H, W)
    for pred in (true, relabelled, one_hot):
        for video in (True, False):
            values = metric(true, pred, video=video)
            assert math.isnan(values[0]) and torch.all(values[1:] == 1.0)


@pytest.mark.parametrize("metric", [fg_ari, miou, mbo])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), video=st.booleans(), masks=st.booleans())
def test_invariant_to_relabelling(metric, seed, video, masks):
    true, pred = _random_case(seed, batch=2, frames=3, height=4, width=5, masks=masks)
    rng = np.random.default_rng(seed)
    base = metric(true, pred, video=video)
    # New, non-contiguous, foreground ids for the objects; 0 stays background.
    true_map = torch.from_numpy(np.concatenate([[0], rng.permutation(1000)[:255] + 1]))
    if masks:
        relabelled = pred[:, :, torch.from_numpy(rng.permutation(pred.shape[2]))]
    else:
        unique = torch.unique(pred)
        new = torch.from_numpy(rng.permutation(10 * len(unique))[: len(unique)] - 7)
        relabelled = new[torch.searchsorted(unique, pred)]
    torch.testing.assert_close(metric(true_map[true], relabelled, video=video), base, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)
def test_fg_ari_matches_sklearn_property(data, shape):
    size = int(np.prod(shape))
    true = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))).reshape(shape)
    pred = torch.tensor(data.draw(st.lists(st.integers(-2, 2), min_size=size, max_size=size))).reshape(shape)
    for video in (True, False):
        _assert_close(fg_ari(true, pred, video=video), _reference(_reference_ari, true, pred, video))
        bounded = [miou(true, pred, video=video), mbo(true, pred, video=video)]
        _assert_close(bounded[0], _reference(_reference_miou, true, pred, video))
        for values in bounded:
            finite = values[~values.isnan()]
            assert torch.all((finite >= 0) & (finite <= 1))
        assert torch.all((bounded[0] <= bounded[1] + 1e-12) | bounded[0].isnan())  # mIoU <= mBO


@pytest.mark.parametrize("metric", [fg_ari, miou, mbo])
def test_batch_of_samples_with_different_object_counts_equals_one_at_a_time(metric):
    true, pred = _random_case(5, batch=5, masks=True)
    batched = metric(true, pred)
    alone = torch.cat([metric(true[i : i + 1], pred[i : i + 1]) for i in range(len(true))])
    torch.testing.assert_close(batched, alone, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("metric", [fg_ari, miou, mbo])
def test_no_foreground_gives_nan_and_nanmean_skips_it(metric):
    true = torch.zeros(3, 2, 4, 4, dtype=torch.long)
    true[1, 0, :2] = 5  # sample 1: an object in frame 0 only, frame 1 is all background
    true[2, :, :, :2] = 9
    pred = true.clone()
    values = metric(true, pred)
    assert math.isnan(values[0]) and values[1] == 1.0 and values[2] == 1.0
    assert torch.nanmean(values) == 1.0
    per_frame = metric(true, pred, video=False)
    assert math.isnan(per_frame[0]) and per_frame[1] == 1.0  # the empty frame is skipped, not 0


def test_fg_ari_degenerate_cases_follow_sklearn():
    true = torch.tensor([[[0, 4, 4, 4]]])  # one foreground object
    assert fg_ari(true, torch.tensor([[[1, 2, 2, 2]]])).item() == 1.0  # in one segment
    assert fg_ari(true, torch.tensor([[[1, 2, 2, 3]]])).item() == 0.0  # split
    assert adjusted_rand_score([4, 4, 4], [2, 2, 3]) == 0.0
    assert fg_ari(torch.tensor([[[0, 0, 4, 0]]]), torch.tensor([[[1, 2, 2, 3]]])).item() == 1.0  # one pixel


def test_iou_subtracts_the_intersection_and_counts_segment_area_everywhere():
    true = torch.tensor([[[3, 3, 3, 3, 0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 1, 1, 1, 1, 1, 2, 2]]])  # segment 1 spills onto 2 background pixels
    assert miou(true, pred).item() == pytest.approx(4 / 6)  # 4 / (4 + 6 - 4), not 4 / (4 + 6)
    assert mbo(true, pred).item() == pytest.approx(4 / 6)


def test_miou_scores_unmatched_objects_zero_but_mbo_reuses_segments():
    true = torch.tensor([[[1, 1, 2, 2, 3, 3]]])
    pred = torch.tensor([[[0, 0, 0, 0, 0, 0]]])  # one segment for three objects
    assert miou(true, pred).item() == pytest.approx((2 / 6) / 3)
    assert mbo(true, pred).item() == pytest.approx(2 / 6)


def test_many_pixels_stay_exact_in_float64():
    # 2 x 512 x 512 pixels: pair counts ~1.4e11, beyond float32's exact integers.
    rng = np.random.default_rng(0)
    true = torch.from_numpy(rng.integers(0, 4, size=(1, 2, 512, 512)))
    pred = torch.where(torch.from_numpy(rng.random(true.shape) < 0.9), true, 7)
    _assert_close(fg_ari(true, pred), _reference(_reference_ari, true, pred, video=True))


def test_contingency_counts_pairs():
    true = torch.tensor([[5, 5, 0, 9], [9, 9, 9, 0]])
    pred = torch.tensor([[2, -1, 2, 2], [2, 2, -1, -1]])
    table = contingency(true, pred)
    assert table.true_values.tolist() == [0, 5, 9] and table.pred_values.tolist() == [-1, 2]
    assert table.counts.tolist() == [[[0, 1], [1, 1], [0, 1]], [[1, 0], [0, 0], [1, 2]]]
    assert table.counts.dtype == torch.int64


def test_any_integer_dtype_works_for_ids():
    true, pred = _random_case(6)
    expected = [metric(true, pred) for metric in (fg_ari, miou, mbo)]
    for dtype in (torch.uint8, torch.int16, torch.int32):
        for metric, values in zip((fg_ari, miou, mbo), expected):
            torch.testing.assert_close(metric(true.to(dtype), (pred + 5).to(dtype)), values, equal_nan=True)
    table = contingency(torch.tensor([[1, 1, 2]], dtype=torch.uint8), torch.tensor([[0, 1, 1]], dtype=torch.uint8))
    assert table.counts.tolist() == [[[1, 1], [0, 1]]]


def test_output_is_float64_for_low_precision_masks():
    true, pred = _random_case(2, masks=True)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for metric in (fg_ari, miou, mbo):
            values = metric(true, pred.to(dtype))
            assert values.dtype == torch.float64 and values.shape == (3,)


def test_bool_masks_and_gradient_carrying_masks_are_accepted():
    true, pred = _random_case(4, masks=True)
    one_hot = torch.nn.functional.one_hot(pred.argmax(2), pred.shape[2]).movedim(-1, 2).bool()
    expected = fg_ari(true, pred)
    torch.testing.assert_close(fg_ari(true, one_hot), expected, equal_nan=True)
    torch.testing.assert_close(fg_ari(true, pred.requires_grad_()), expected, equal_nan=True)


@pytest.mark.parametrize(
    "true, pred, error, match",
    [
        (torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 3, 4, 5, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 3, 5, 4, 5), ValueError, "shape"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long), TypeError, "integer instance ids"),
        (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), ValueError, r"\(B, H, W\)"),
        (torch.full((2, 4, 4), -1), torch.zeros(2, 4, 4, dtype=torch.long), ValueError, "negative"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4), TypeError, "slot axis"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 3, 4, 4), math.nan), ValueError, "NaN"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 0, 4, 4), ValueError, "K = 0"),
        (np.zeros((2, 4, 4), np.int64), torch.zeros(2, 4, 4, dtype=torch.long), TypeError, "torch tensors"),
    ],
    ids=["ids-shape", "mask-shape", "float-true", "ndim", "negative", "float-ids", "nan", "no-slots", "numpy"],
)
def test_bad_input_gives_clear_errors(true, pred, error, match):
    for metric in (fg_ari, miou, mbo):
        with pytest.raises(error, match=match):
            metric(true, pred)

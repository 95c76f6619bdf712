"""Object-discovery metrics: FG-ARI, mIoU and mBO between instance ids and predicted segments.

Conventions, shared by every function here:

- Ground truth ``true_ids`` holds integer instance ids, ``0`` is background. ``(B, T, H, W)`` is
  a batch of videos, ``(B, H, W)`` a batch of images. Ids need not be contiguous and samples may
  hold different numbers of objects.
- ``pred`` is either integer segment ids with the shape of ``true_ids``, or masks (soft, one-hot
  or bool) with a slot axis right before ``H, W``: ``(B, T, K, H, W)`` / ``(B, K, H, W)``. Masks
  become segment ids by an argmax over ``K`` (ties go to the lowest slot).
- ``video=True`` evaluates all pixels of all frames of a video at once, so a segment must keep
  the same object over time (the video FG-ARI / mIoU / mBO of SAVi and SmoothSA).
  ``video=False`` computes the metric on every frame and averages over the frames where it is
  defined. For images ``video`` makes no difference. SAVi leaves out the first frame when it is
  used for conditioning; slice ``[:, 1:]`` before calling if you want that.
- ``ignore_background=True`` (the default): background pixels are left out of FG-ARI entirely,
  and the background is not an object for mIoU / mBO. With ``False`` the background is one more
  cluster / object like any other.
- A sample (or frame) without anything to evaluate (no foreground pixel) gets ``NaN``. Average
  over a batch with ``torch.nanmean`` (or drop the NaNs), which skips such samples, as the ocl
  framework does.
- Everything is counted in int64 and turned into ratios in float64: the pair counts of ARI grow
  like N² in the number of pixels N (a 24-frame 128x128 video has N ≈ 4e5, N²/2 ≈ 8e10) and
  their products like N⁴, far past what float32 (exact integers up to 2^24) or fp16 can hold;
  float64 keeps pair counts exact up to N ≈ 1e8. Results are (B,) float64 on the inputs' device
  (on CPU for MPS inputs, as MPS has no float64).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Contingency", "contingency", "fg_ari", "mbo", "miou", "segment_ids"]


class Contingency(NamedTuple):
    """Pixel counts of every (ground-truth id, predicted id) pair, per group of pixels.

    counts: (G, U, P) int64, ``counts[g, u, p]`` = number of pixels of group ``g`` with true id
        ``true_values[u]`` and predicted id ``pred_values[p]``.
    true_values: (U,) the distinct true ids over all groups, ascending.
    pred_values: (P,) the distinct predicted ids over all groups, ascending.
    """

    counts: torch.Tensor
    true_values: torch.Tensor
    pred_values: torch.Tensor


def contingency(true_ids: torch.Tensor, pred_ids: torch.Tensor) -> Contingency:
    """Contingency tables of two integer labellings, one table per row, by a single bincount.

    true_ids, pred_ids: (G, N) integer, N pixels in each of G groups (frames or videos).
    Returns tables over the ids present anywhere in the batch, so rows/columns of ids absent from
    a group are zero; background (id 0) is counted like any other id.
    """
    if true_ids.shape != pred_ids.shape or true_ids.ndim != 2:
        raise ValueError(
            f"contingency expects two (G, N) tensors, got {tuple(true_ids.shape)} and {tuple(pred_ids.shape)}"
        )
    true_values, true_index = _compact(true_ids)
    pred_values, pred_index = _compact(pred_ids)
    groups, num_true, num_pred = true_ids.shape[0], len(true_values), len(pred_values)
    group_index = torch.arange(groups, device=true_ids.device).unsqueeze(1)
    cell = (group_index * num_true + true_index) * num_pred + pred_index
    counts = torch.bincount(cell.reshape(-1), minlength=groups * num_true * num_pred)
    return Contingency(counts.reshape(groups, num_true, num_pred), true_values, pred_values)


def _compact(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values (ascending) and each element's index into them, like torch.unique.

    Ids usually span a small range (instance ids, slot indices), where a bincount lookup table is
    several times faster than the sort inside torch.unique on millions of pixels.
    """
    if ids.numel() == 0:
        return torch.unique(ids, return_inverse=True)
    low, high = int(ids.min()), int(ids.max())
    span = high - low + 1
    if span > max(ids.numel(), 1 << 16):  # a table larger than the data: sorting is cheaper
        return torch.unique(ids, return_inverse=True)
    shifted = ids.long() - low  # int64: a uint8 index tensor would be read as a boolean mask
    present = torch.bincount(shifted.reshape(-1), minlength=span) > 0
    lookup = present.cumsum(0) - 1
    return present.nonzero().squeeze(1) + low, lookup[shifted]


def segment_ids(true_ids: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Validated inputs to predicted segment ids with the shape of ``true_ids``.

    true_ids: (B, T, H, W) or (B, H, W) integer, ids >= 0.
    pred: integer ids of the same shape, or masks (B, T, K, H, W) / (B, K, H, W) of any real or
        bool dtype, turned into ids by argmax over K.
    Returns (B, T, H, W) / (B, H, W) int64.
    """
    if not isinstance(true_ids, torch.Tensor) or not isinstance(pred, torch.Tensor):
        raise TypeError(
            f"true_ids and pred must be torch tensors, got {type(true_ids).__name__} and {type(pred).__name__}"
        )
    if true_ids.dtype.is_floating_point or true_ids.dtype.is_complex or true_ids.dtype == torch.bool:
        raise TypeError(f"true_ids must hold integer instance ids (0 = background), got dtype {true_ids.dtype}")
    if true_ids.ndim not in (3, 4):
        raise ValueError(
            f"true_ids must be (B, T, H, W) for videos or (B, H, W) for images, got shape {tuple(true_ids.shape)}"
        )
    if true_ids.numel() and int(true_ids.min()) < 0:
        raise ValueError("true_ids must be >= 0 (0 = background), found a negative id")
    if pred.device != true_ids.device:
        raise ValueError(f"true_ids and pred are on different devices: {true_ids.device} and {pred.device}")
    if pred.dtype.is_complex:
        raise TypeError(f"pred must be integer ids or real masks, got dtype {pred.dtype}")

    slot_shape = (*true_ids.shape[:-2], "K", *true_ids.shape[-2:])
    if pred.shape == true_ids.shape:
        if pred.dtype.is_floating_point or pred.dtype == torch.bool:
            raise TypeError(
                f"pred with the shape of true_ids must hold integer segment ids, got dtype {pred.dtype}; "
                f"masks need a slot axis: {slot_shape}"
            )
        return pred.long()
    is_mask_shape = pred.ndim == true_ids.ndim + 1 and pred.shape[:-3] + pred.shape[-2:] == true_ids.shape
    if not is_mask_shape:
        raise ValueError(
            f"pred has shape {tuple(pred.shape)}; expected ids {tuple(true_ids.shape)} or masks {slot_shape}"
        )
    if pred.shape[-3] == 0:
        raise ValueError("pred masks have an empty slot axis (K = 0)")
    if pred.dtype == torch.bool:
        pred = pred.to(torch.uint8)
    # max propagates NaN, so checking the K-times smaller maxima finds any NaN in the masks.
    best, index = pred.max(dim=-3)
    if best.dtype.is_floating_point and torch.isnan(best).any():
        raise ValueError("pred masks contain NaN")
    return index


def _grouped(true_ids: torch.Tensor, pred: torch.Tensor, video: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(G, N) true and predicted ids, one row per video (or per frame), and frames per sample."""
    pred_ids = segment_ids(true_ids, pred)
    batch = true_ids.shape[0]
    frames = 1 if video or true_ids.ndim == 3 else true_ids.shape[1]
    return true_ids.reshape(batch * frames, -1).long(), pred_ids.reshape(batch * frames, -1), frames


def _float64(counts: torch.Tensor) -> torch.Tensor:
    # MPS has no float64; the tables are tiny, so finishing on CPU costs nothing.
    if counts.device.type == "mps":
        counts = counts.cpu()
    return counts.to(torch.float64)


def _result_device(true_ids: torch.Tensor) -> torch.device:
    return torch.device("cpu") if true_ids.device.type == "mps" else true_ids.device


def _per_sample(values: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """(B * F,) per-group values to (B,), averaging frames where the value is defined (not NaN)."""
    values = values.reshape(batch, frames)
    return values[:, 0] if frames == 1 else torch.nanmean(values, dim=1)


def _pairs(count: torch.Tensor) -> torch.Tensor:
    return count * (count - 1) / 2


def _adjusted_rand_index(counts: torch.Tensor) -> torch.Tensor:
    """ARI (Hubert & Arabie) from (G, U, P) float64 contingency tables, as sklearn computes it.

    Like ``sklearn.metrics.adjusted_rand_score``: 1.0 when the two labellings agree on every
    pair (this covers one pixel, and one true cluster predicted as one segment), otherwise the
    usual (index - expected) / (max - expected). Unlike sklearn, no pixel at all gives NaN.
    """
    true_sizes, pred_sizes = counts.sum(2), counts.sum(1)
    total = true_sizes.sum(1)
    index = _pairs(counts).sum((1, 2))
    true_pairs, pred_pairs = _pairs(true_sizes).sum(1), _pairs(pred_sizes).sum(1)
    expected = true_pairs * pred_pairs / _pairs(total)
    ari = (index - expected) / ((true_pairs + pred_pairs) / 2 - expected)
    # Pair counts are exact integers in float64, so this equality test is exact. The denominator
    # is zero only in this case (sklearn's "fn == fp == 0").
    agree = (index == true_pairs) & (index == pred_pairs)
    ari = torch.where(agree, torch.ones_like(ari), ari)
    return torch.where(total == 0, torch.full_like(ari, torch.nan), ari)


@torch.no_grad()
def fg_ari(
    true_ids: torch.Tensor, pred: torch.Tensor, *, video: bool = True, ignore_background: bool = True
) -> torch.Tensor:
    """Foreground adjusted Rand index per sample.

    true_ids: (B, T, H, W) or (B, H, W) integer instance ids, 0 = background.
    pred: (B, T, H, W) / (B, H, W) integer segment ids, or (B, T, K, H, W) / (B, K, H, W) masks
        (argmax over K).
    video: True clusters all pixels of all frames of a video together (a segment must follow one
        object through time); False averages the per-frame ARI over frames with at least one
        foreground pixel.
    ignore_background: True drops pixels with true id 0 from both labellings (FG-ARI); False
        gives the plain ARI over all pixels.
    Returns (B,) float64. Exactly ``sklearn.metrics.adjusted_rand_score`` on the pixels
    considered (up to float rounding), with one exception: no pixel considered (no foreground in
    the video, or in every frame) gives NaN, where sklearn would give 1.0. Note sklearn's (and
    so our) degenerate cases: a single foreground object scores 1.0 if it lies in one segment and
    0.0 if split, and a single foreground pixel scores 1.0; such frames are averaged in.
    """
    true_flat, pred_flat, frames = _grouped(true_ids, pred, video)
    table = contingency(true_flat, pred_flat)
    counts = _float64(table.counts)
    if ignore_background:
        counts = counts[:, table.true_values.to(counts.device) != 0]
    return _per_sample(_adjusted_rand_index(counts), true_ids.shape[0], frames).to(_result_device(true_ids))


def _iou_tables(
    true_ids: torch.Tensor, pred: torch.Tensor, video: bool, ignore_background: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """IoU of every ground-truth object with every predicted segment, per group.

    Returns iou (G, U, P) float64, present (G, U) bool (the object has pixels in the group),
    and frames per sample. IoU = |t ∩ p| / (|t| + |p| - |t ∩ p|).
    """
    true_flat, pred_flat, frames = _grouped(true_ids, pred, video)
    table = contingency(true_flat, pred_flat)
    counts = _float64(table.counts)
    # Segment areas count every pixel, background included (as in the ocl framework): a segment
    # that spills over the background is penalised even though the background is no object.
    pred_area = counts.sum(1)
    if ignore_background:
        counts = counts[:, table.true_values.to(counts.device) != 0]
    true_area = counts.sum(2)
    union = true_area.unsqueeze(2) + pred_area.unsqueeze(1) - counts
    iou = torch.where(union > 0, counts / union.clamp_min(1), torch.zeros_like(counts))
    return iou, true_area > 0, frames


@torch.no_grad()
def miou(
    true_ids: torch.Tensor, pred: torch.Tensor, *, video: bool = True, ignore_background: bool = True
) -> torch.Tensor:
    """Mean IoU of ground-truth objects after one-to-one Hungarian matching to predicted segments.

    true_ids, pred, video: as in :func:`fg_ari`; with ``video=True`` areas and intersections sum
    over all frames (segment identity fixed over time), with False the per-frame mIoU is averaged
    over frames that hold at least one object.
    ignore_background: True leaves the background (id 0) out of the objects.
    IoU = intersection / (area_true + area_pred - intersection), with the predicted segment's area
    over all pixels (background too). The matching maximises the total IoU
    (``scipy.optimize.linear_sum_assignment``); objects left without a segment (more objects than
    segments) count as IoU 0. The mean is over the objects present in the video (or frame).
    Returns (B,) float64; NaN where there is no object.
    """
    from scipy.optimize import linear_sum_assignment

    iou, present, frames = _iou_tables(true_ids, pred, video, ignore_background)
    # Matching runs on CPU in scipy; one small (objects, segments) matrix per video or frame.
    iou_cpu, present_cpu = iou.cpu().numpy(), present.cpu().numpy()
    values = np.full(len(iou_cpu), np.nan)
    for group, (matrix, objects) in enumerate(zip(iou_cpu, present_cpu)):
        if objects.any():
            # Segments overlapping none of these objects cannot change the optimum.
            matrix = matrix[objects][:, matrix[objects].any(0)]
            rows, columns = linear_sum_assignment(matrix, maximize=True)
            values[group] = matrix[rows, columns].sum() / objects.sum()
    values = torch.from_numpy(values)
    return _per_sample(values, true_ids.shape[0], frames).to(_result_device(true_ids))


@torch.no_grad()
def mbo(
    true_ids: torch.Tensor, pred: torch.Tensor, *, video: bool = True, ignore_background: bool = True
) -> torch.Tensor:
    """Mean best overlap: for each ground-truth object the best IoU over all predicted segments.

    Arguments and IoU as in :func:`miou`, but a segment may be the best overlap of several
    objects (no matching). Averaged over the objects present in the video (or, with
    ``video=False``, per frame and then over frames that hold an object).
    Returns (B,) float64; NaN where there is no object.
    """
    iou, present, frames = _iou_tables(true_ids, pred, video, ignore_background)
    best = iou.amax(2) if iou.shape[2] else iou.new_zeros(iou.shape[:2])
    values = (best * present).sum(1) / present.sum(1)  # 0 / 0 = NaN where there is no object
    return _per_sample(values, true_ids.shape[0], frames).to(_result_device(true_ids))

"""What slot codes know about the objects they hold: the OCRL paper's property prediction.

Each frame's slots are matched one to one to the ground-truth objects by Hungarian matching on
coverage, the share of an object's pixels the slot wins; a pair counts when the slot wins at
least ``min_coverage`` of the object. (Coverage, not IoU: slot-attention models share the
background among their slots, which makes every IoU small although each slot holds one object.)
On the matched pairs:

- ``colour_accuracy`` / ``shape_accuracy``: a linear probe (multinomial logistic regression on
  the standardised slot vector) fitted on the pairs of one store and scored on another's
  (held out); ``chance`` is the share of the most frequent class among the held-out pairs;
- ``position_error``: mean |x - x_true| and |y - y_true| of the position codes (both in [-1, 1]),
  and ``position_bias``: the mean signed x - x_true and y - y_true (a constant offset, which
  relative positions between slots do not show);
- ``depth_order``: over pairs of matched objects in one frame whose true depths differ, the
  share whose position-code depths (``position[..., 3]``) order them the same way;
  ``depth_order_touching`` the same over the pairs whose visible masks touch (share of all pairs:
  ``touching_share``): only there does the frame show which is in front, so only there can a
  model read the order from pixels (apart from what it remembers of an earlier overlap);
- ``psnr``: of the model's reconstruction against the frame, at the model's resolution.

Codes are what an agent sees: :class:`~ocrl.slots.SlotCodes` from ``step``, frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.evaluation import encode_video, resize_masks
from ocrl.metrics import segment_ids
from ocrl.perception.frames import prepare_frames

PROBE_KEYS = ("masks", "object_position", "object_depth", "object_colour", "object_shape")


@dataclass
class MatchedSlots:
    """Slots matched to objects: one row per (frame, object) pair.

    slots (N, D), position (N, 4): the codes; colour (N,) str (the object's RGB, written out),
    shape (N,) str, true_position (N, 2), true_depth (N,): the object's ground truth;
    frame (N,): which frame (pairs of one frame share it); row (N,): the object's row in its
    frame; touches (N,): bit r set when the object's visible mask touches row r's (4-neighbours);
    objects: how many objects were visible in all frames; psnr: per frame.
    """

    slots: np.ndarray
    position: np.ndarray
    colour: np.ndarray
    shape: np.ndarray
    true_position: np.ndarray
    true_depth: np.ndarray
    frame: np.ndarray
    row: np.ndarray
    touches: np.ndarray
    objects: int
    psnr: np.ndarray


def match_frame(
    true_ids: np.ndarray, segment_ids: np.ndarray, num_slots: int, min_coverage: float
) -> list[tuple[int, int]]:
    """(object row, slot) pairs of one frame: Hungarian matching on coverage, pairs below
    ``min_coverage`` dropped.

    true_ids (H, W): 0 background, i = object row i - 1; segment_ids (H, W): the winning segment
    per pixel, slots 0..num_slots-1 (higher ids, e.g. a background segment, are never matched).
    """
    objects = int(true_ids.max())
    if objects == 0:
        return []
    segments_count = max(num_slots, int(segment_ids.max()) + 1)
    counts = np.bincount(
        (true_ids.astype(np.int64) * segments_count + segment_ids).ravel(), minlength=(objects + 1) * segments_count
    ).reshape(objects + 1, segments_count)
    coverage = counts[1:, :num_slots] / np.maximum(counts[1:].sum(1, keepdims=True), 1)
    rows, columns = linear_sum_assignment(coverage, maximize=True)
    return [(int(row), int(column)) for row, column in zip(rows, columns) if coverage[row, column] >= min_coverage]


def touching_rows(true_ids: np.ndarray) -> np.ndarray:
    """Per object row of one frame (true_ids (H, W): 0 background, i = row i - 1), a bit mask of
    the rows whose visible pixels are 4-neighbours of its own (at most 63 objects: one int64 bit each)."""
    objects = int(true_ids.max())
    if objects > 63:
        raise OcrlError(f"a frame has {objects} objects; depth order of touching pairs counts at most 63")
    touches = np.zeros(objects, np.int64)
    for first, second in ((true_ids[:, :-1], true_ids[:, 1:]), (true_ids[:-1], true_ids[1:])):
        border = (first != second) & (first > 0) & (second > 0)
        for a, b in {(int(a), int(b)) for a, b in zip(first[border], second[border])}:
            touches[a - 1] |= 1 << (b - 1)
            touches[b - 1] |= 1 << (a - 1)
    return touches


@torch.no_grad()
def match_slots(
    model,
    data: str | RolloutStore,
    num_frames: int = 24,
    max_episodes: int | None = None,
    batch_size: int = 8,
    min_coverage: float = 0.5,
    progress: bool = True,
) -> MatchedSlots:
    """Encode the episodes of a store online and match every frame's slots to its objects."""
    store = data if isinstance(data, RolloutStore) else RolloutStore.open(data)
    missing = [key for key in PROBE_KEYS if key not in store.ground_truth_keys]
    if missing:
        raise OcrlError(f"{store.path} has no ground truth {missing}: probes need object masks and properties")
    chosen = [i for i, record in enumerate(store.episodes) if record.length + 1 >= num_frames][:max_episodes]
    if not chosen:
        raise OcrlError(f"no episode in {store.path} has {num_frames} frames; pass a smaller number of frames")
    model.eval()
    rows: dict[str, list] = {key: [] for key in ("slots", "position", "colour", "shape", "true_position", "true_depth")}
    frame_ids, object_rows, touches, psnr, objects, frame_count = [], [], [], [], 0, 0
    for begin in tqdm(range(0, len(chosen), batch_size), desc="match slots", unit="batch", disable=not progress):
        episodes = [store.episode(i) for i in chosen[begin : begin + batch_size]]
        frames = np.stack([episode.frames(0, num_frames) for episode in episodes])
        encoded = encode_video(model, frames)
        targets = prepare_frames(frames.reshape(-1, *frames.shape[2:]), model.resolution, "cpu", resize=True).unflatten(
            0, frames.shape[:2]
        )
        error = ((encoded["reconstructions"] - targets) ** 2).flatten(2).mean(-1).clamp_min(1e-10)
        psnr.append((-10 * torch.log10(error)).flatten().numpy())
        for video, episode in enumerate(episodes):
            truth = episode.ground_truth(0, num_frames, keys=list(PROBE_KEYS))
            true_ids = torch.from_numpy(truth["masks"]).long()
            ids = segment_ids(true_ids[None], resize_masks(encoded["masks"][video : video + 1], true_ids.shape[-2:]))[0]
            for t in range(num_frames):
                pairs = match_frame(truth["masks"][t], ids[t].numpy(), model.num_slots, min_coverage)
                neighbours = touching_rows(truth["masks"][t])
                objects += int(truth["masks"][t].max())
                for row, slot in pairs:
                    rows["slots"].append(encoded["slots"][video, t, slot].numpy())
                    rows["position"].append(encoded["position"][video, t, slot].numpy())
                    rows["colour"].append(" ".join(f"{value:.3f}" for value in truth["object_colour"][t, row]))
                    rows["shape"].append(str(truth["object_shape"][t, row]))
                    rows["true_position"].append(truth["object_position"][t, row])
                    rows["true_depth"].append(truth["object_depth"][t, row])
                    frame_ids.append(frame_count)
                    object_rows.append(row)
                    touches.append(neighbours[row])
                frame_count += 1
    if not frame_ids:
        raise OcrlError(f"no slot of the model wins {min_coverage:.0%} of any object in {store.path}")
    arrays = {key: np.stack(values) for key, values in rows.items()}
    return MatchedSlots(
        **arrays,
        frame=np.asarray(frame_ids),
        row=np.asarray(object_rows),
        touches=np.asarray(touches, np.int64),
        objects=objects,
        psnr=np.concatenate(psnr),
    )


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy on the test pairs of a multinomial logistic regression fitted on the train pairs
    (features standardised with the train statistics; full-batch L-BFGS). Test labels never seen
    in training count as wrong."""
    classes = sorted(set(train_labels.tolist()))
    index = {label: i for i, label in enumerate(classes)}
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    features = torch.as_tensor((train_features - mean) / std, dtype=torch.float32)
    labels = torch.as_tensor([index[label] for label in train_labels])
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(features.shape[1], len(classes))
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=generator)
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(features), labels)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = linear(torch.as_tensor((test_features - mean) / std, dtype=torch.float32)).argmax(1).numpy()
    truth = np.array([index.get(label, -1) for label in test_labels])
    return float((predicted == truth).mean())


def frame_pairs(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) of every pair of matched objects that share a frame."""
    first, second = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for index in np.unique(frame):
        members = np.flatnonzero(frame == index)
        a, b = np.triu_indices(len(members), k=1)
        first.append(members[a])
        second.append(members[b])
    return np.concatenate(first), np.concatenate(second)


def depth_order(
    predicted: np.ndarray,
    true: np.ndarray,
    frame: np.ndarray,
    touching: np.ndarray | None = None,
) -> float:
    """Share of same-frame pairs (:func:`frame_pairs`) with different true depths whose predicted
    depths order them alike (a tie in the prediction counts as wrong); NaN without such pairs.
    ``touching`` (bool per pair) keeps only some pairs."""
    first, second = frame_pairs(frame)
    true_sign = np.sign(true[first] - true[second])
    counted = true_sign != 0
    if touching is not None:
        counted &= touching
    if not counted.any():
        return float("nan")
    return float((np.sign(predicted[first] - predicted[second]) == true_sign)[counted].mean())


def probe_scores(train: MatchedSlots, test: MatchedSlots) -> dict[str, Any]:
    """Probe accuracies (fitted on ``train``, scored on ``test``) and the code measures on ``test``."""
    result: dict[str, Any] = {}
    for name in ("colour", "shape"):
        labels = getattr(test, name)
        _, counts = np.unique(labels, return_counts=True)
        result[f"{name}_accuracy"] = linear_probe(train.slots, getattr(train, name), test.slots, labels)
        result[f"{name}_chance"] = float(counts.max() / counts.sum())
    error = test.position[:, :2] - test.true_position
    result["position_error_x"], result["position_error_y"] = (float(value) for value in np.abs(error).mean(0))
    result["position_bias_x"], result["position_bias_y"] = (float(value) for value in error.mean(0))
    first, second = frame_pairs(test.frame)
    touching = (test.touches[first] >> test.row[second]) & 1 == 1
    result["depth_order"] = depth_order(test.position[:, 3], test.true_depth, test.frame)
    result["depth_order_touching"] = depth_order(test.position[:, 3], test.true_depth, test.frame, touching)
    result["touching_share"] = float(touching.mean()) if len(touching) else float("nan")
    result["psnr"] = float(test.psnr.mean())
    result["matched_share"] = len(test.slots) / max(test.objects, 1)
    result["pairs_train"], result["pairs_test"] = len(train.slots), len(test.slots)
    return result

"""Measure a perception model on held-out rollouts the way the papers do.

Each episode's first ``num_frames`` frames are encoded online with :meth:`step` (first-frame
iterations on frame 0, next-frame iterations after), the decoded masks are compared with the
ground-truth instance masks, and the per-video scores are averaged:

- ``fg_ari``: video FG-ARI (all frames of a video form one clustering, background excluded);
- ``fg_ari_frame``: per-frame FG-ARI, averaged over frames;
- ``miou``: video mIoU after Hungarian matching (unmatched objects count 0);
- ``mbo``: video mean best overlap.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ocrl import metrics
from ocrl.data.dataset import episode_conditions
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.perception.frames import prepare_frames
from ocrl.perception.initializers import ConditionalQueries
from ocrl.scan import scan


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (..., K, R, R) upsampled bilinearly to ``size`` (the ground truth's), before any argmax."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks.flatten(0, -4), size=tuple(size), mode="bilinear").unflatten(0, masks.shape[:-3])


@torch.no_grad()
def encode_video(model, frames: np.ndarray, conditions: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Encode videos online, frame by frame.

    frames: uint8 (B, T, H, W, 3); conditions: (B, K, 4) for a conditional initializer (first
    frame only). Returns ``masks`` (B, T, K, R, R), ``reconstructions``
    (B, T, 3, R, R) and the codes ``slots`` (B, T, K, D), ``position`` (B, T, K, 4) and
    ``presence`` (B, T, K) on the CPU, R = ``model.resolution``. A model
    with a background module that is not a slot (Loci-s) adds its background mask as one more
    segment: ``masks`` (B, T, K + 1, R, R), the background last, so that every pixel belongs to
    a segment as with slot-attention models, whose background is shared among the slots; a model
    that renders a depth map (Loci-s) adds it as ``depth_map`` (B, T, R, R).
    """
    batch, length = frames.shape[:2]

    def step(state, t: int):
        inputs = prepare_frames(frames[:, t], model.resolution, "cpu", resize=True)
        codes, state = model.step(inputs, state, is_first=t == 0, conditions=conditions if t == 0 else None)
        rendered = model.render(state)  # once, for both masks and reconstruction
        masks = rendered.masks
        background = getattr(rendered, "background_mask", None)
        if background is not None:
            masks = torch.cat([masks, background[:, None]], dim=1)
        output = {
            "masks": masks.float().cpu(),
            "reconstructions": rendered.reconstruction.float().clamp(0, 1).cpu(),
            "slots": codes.slots.float().cpu(),
            "position": codes.position.float().cpu(),
            "presence": codes.presence.float().cpu(),
        }
        depth = getattr(rendered, "depth_map", None)
        if depth is not None:
            output["depth_map"] = depth.float().cpu()
        return output, state

    outputs, _ = scan(step, model.init_state(batch), range(length))
    return outputs


def evaluate_perception(
    model,
    data: str | RolloutStore,
    num_frames: int = 24,
    max_episodes: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of ``model`` on the episodes of a rollout store with ground-truth masks.

    Episodes shorter than ``num_frames`` frames are skipped. A model with conditional queries
    gets the ground-truth boxes of each video's first frame (``object_box``), as SAVi is evaluated. Predicted masks are upsampled to
    the ground truth's resolution before the argmax. Returns means over videos (NaN-free: a
    video with no foreground object is left out) and their counts.
    """
    store = data if isinstance(data, RolloutStore) else RolloutStore.open(data)
    if "masks" not in store.ground_truth_keys:
        raise OcrlError(f"{store.path} has no ground-truth masks to evaluate against")
    chosen = [i for i, record in enumerate(store.episodes) if record.length + 1 >= num_frames][:max_episodes]
    if not chosen:
        raise OcrlError(f"no episode in {store.path} has {num_frames} frames; pass a smaller --frames")
    conditional = isinstance(getattr(model, "initializer", None), ConditionalQueries)
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {"fg_ari": [], "fg_ari_frame": [], "miou": [], "mbo": []}
    started = time.perf_counter()
    for begin in tqdm(range(0, len(chosen), batch_size), desc="evaluate", unit="batch", disable=not progress):
        episodes = [store.episode(i) for i in chosen[begin : begin + batch_size]]
        frames = np.stack([episode.frames(0, num_frames) for episode in episodes])
        truth = torch.from_numpy(
            np.stack([episode.ground_truth(0, num_frames, keys=["masks"])["masks"] for episode in episodes])
        )
        conditions = (
            np.stack([episode_conditions(store, i, 0, model.num_slots) for i in chosen[begin : begin + batch_size]])
            if conditional
            else None
        )
        masks = resize_masks(encode_video(model, frames, conditions)["masks"], truth.shape[-2:])
        scores["fg_ari"].append(metrics.fg_ari(truth, masks, video=True))
        scores["fg_ari_frame"].append(metrics.fg_ari(truth, masks, video=False))
        scores["miou"].append(metrics.miou(truth, masks, video=True))
        scores["mbo"].append(metrics.mbo(truth, masks, video=True))
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {name: float(torch.nanmean(torch.cat(values))) for name, values in scores.items()}
    result.update(
        videos=len(chosen),
        frames_per_video=num_frames,
        data=str(store.path),
        env_id=store.env_id,
        seconds=round(seconds, 2),
    )
    return result

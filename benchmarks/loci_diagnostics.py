"""Where Loci-s fails, part by part, on held-out episodes with ground-truth masks.

    .venv/bin/python benchmarks/loci_diagnostics.py CHECKPOINT --data data/goal-test [--episodes 20]

Prints JSON with, over the first ``--frames`` frames of each episode:

- ``background``: the uncertainty network's foreground (> 1/2) against the ground truth
  (masks > 0): pixel IoU, precision, recall;
- ``objects_seeded_from_truth``: the encoder and decoder alone, each object's slot placed at
  its ground-truth centre (as in single-object pretraining, unperturbed), slots composed with
  the background: mean IoU of each slot's visible mask with its object (the assignment is given,
  so this is the best the encoder/decoder can do);
- ``assignment``: online ``step`` (no ground truth): occupied slots minus visible objects per
  frame (mean, and the fraction of frames where they are equal), and video FG-ARI / mIoU as
  ``ocrl eval-perception`` computes them;
- ``percept_gates``: the percept gates of every slot on later frames (Gestalt, position): mean,
  and the fraction closed (0: the slot ignores the frame and keeps its prediction);
- ``eval_perception_gates_open``: the same scores with every percept gate held open (each slot
  takes what it observes), which says what the gates cost or gain;
- ``frames``: per-frame FG-ARI of online ``step`` split by what the frame holds: objects that
  touch or overlap (some object's mask, grown by a pixel, meets another's) or all apart;
  occupied slots equal to, fewer or more than the visible objects; per group the share of
  frames where two objects *merge* (most of their pixels go to one slot); and of the objects
  lost in a merge, how many another slot draws but the composition put behind, and how many no
  slot draws at all;
- ``step_frames_per_second``: ``step`` on later frames, batch 8, no masks.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import ocrl
from ocrl import metrics
from ocrl.data.store import RolloutStore
from ocrl.evaluation import evaluate_perception, resize_masks
from ocrl.perception.frames import prepare_frames
from ocrl.perception.loci.model import SEED_SIZE, LociSlots
from ocrl.slots import pixel_coordinates


def load_videos(store: RolloutStore, episodes: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = [i for i, record in enumerate(store.episodes) if record.length + 1 >= frames][:episodes]
    video = np.stack([store.episode(i).frames(0, frames) for i in chosen])
    masks = np.stack([store.episode(i).ground_truth(0, frames, keys=["masks"])["masks"] for i in chosen])
    return torch.from_numpy(video), torch.from_numpy(masks).long()


@torch.no_grad()
def background_scores(model, video: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    frames = prepare_frames(video.flatten(0, 1), model.resolution, model.device, resize=True)
    truth = masks.flatten(0, 1).to(model.device) > 0
    predicted = model.background(frames).foreground[:, 0] > 0.5
    both, either = (predicted & truth).sum().item(), (predicted | truth).sum().item()
    return {
        "iou": both / max(either, 1),
        "precision": both / max(predicted.sum().item(), 1),
        "recall": both / max(truth.sum().item(), 1),
    }


@torch.no_grad()
def seeded_from_truth(model, video: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean IoU of each ground-truth object with the visible mask of a slot seeded at its centre."""
    frames = prepare_frames(video.flatten(0, 1), model.resolution, model.device, resize=True)
    truth = masks.flatten(0, 1).to(model.device)
    size, slots = model.resolution, model.num_slots
    x, y = pixel_coordinates(size, size, model.device)
    background = model.background(frames)
    ious = []
    for start in range(0, frames.shape[0], 16):
        part = slice(start, start + 16)
        ids = truth[part]
        count = int(ids.max())
        one_hot = F.one_hot(ids, count + 1)[..., 1:].permute(0, 3, 1, 2).float()[:, :slots]
        area = one_hot.sum(dim=(-2, -1))
        present = area >= 4
        centre_x = (one_hot.sum(-2) * x).sum(-1) / area.clamp_min(1)
        centre_y = (one_hot.sum(-1) * y).sum(-1) / area.clamp_min(1)
        batch, held = one_hot.shape[:2]
        position = torch.zeros(batch, slots, 4, device=model.device)
        position[..., 2] = SEED_SIZE
        position[:, :held, 0], position[:, :held, 1] = centre_x, centre_y
        occupancy = torch.zeros(batch, slots, device=model.device)
        occupancy[:, :held] = present.float()
        seeded = LociSlots(torch.zeros(batch, slots, model.slot_dim, device=model.device), position, occupancy)
        part_background = type(background)(
            *(getattr(background, name)[part] for name in background.__dataclass_fields__)
        )
        nothing, composition = model.decode(model.empty_slots(batch), part_background)
        fresh = occupancy > 0
        inputs = model.encoder_inputs(frames[part], part_background, seeded, nothing, composition, fresh)
        gestalt, encoded = model.encoder(*inputs, seeded.gestalt)
        slots_now = LociSlots(gestalt * occupancy[..., None], encoded, occupancy)
        _, composed = model.decode(slots_now, part_background)
        predicted = composed.weights[:, :held] > 0.5
        target = one_hot > 0.5
        intersection = (predicted & target).sum(dim=(-2, -1)).float()
        union = (predicted | target).sum(dim=(-2, -1)).float()
        ious.append((intersection / union.clamp_min(1))[present])
    return float(torch.cat(ious).mean())


@torch.no_grad()
def assignment_counts(model, video: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    state = model.init_state(video.shape[0])
    differences, gates = [], []
    hook = model.gate.register_forward_hook(lambda module, inputs, alpha: gates.append(alpha.reshape(-1, 2)))
    try:
        for t in range(video.shape[1]):
            frames = prepare_frames(video[:, t], model.resolution, "cpu", resize=True)
            codes, state = model.step(frames, state, t == 0)
            occupied = (state.posterior.occupancy > 0).sum(dim=1).cpu()
            ids = masks[:, t]
            visible = torch.stack([(torch.bincount(frame.flatten(), minlength=64)[1:] >= 4).sum() for frame in ids])
            differences.append(occupied - visible)
    finally:
        hook.remove()
    differences = torch.stack(differences).float()
    alpha = torch.cat(gates)
    return {
        "occupied_minus_visible": float(differences.mean()),
        "equal_fraction": float((differences == 0).float().mean()),
        "percept_gates": {
            "gestalt_mean": float(alpha[:, 0].mean()),
            "gestalt_closed": float((alpha[:, 0] == 0).float().mean()),
            "position_mean": float(alpha[:, 1].mean()),
            "position_closed": float((alpha[:, 1] == 0).float().mean()),
        },
    }


def touching(ids: torch.Tensor, objects: list[int]) -> bool:
    """Whether some object's mask in ``ids`` (H, W), grown by a pixel, meets another object's."""
    for i in objects:
        grown = F.max_pool2d((ids == i).float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
        if bool((grown & (ids > 0) & (ids != i)).any()):
            return True
    return False


def lost_objects(
    frame: torch.Tensor, objects: list[int], segment: torch.Tensor, drawn: torch.Tensor, slots: int
) -> list[bool]:
    """For every object whose pixels went mostly to a slot that holds another object more (a
    merge): whether another slot draws it (its unoccluded mask (K, H, W) covers half of the
    object) and the composition put that slot behind (True), or no slot draws it (False)."""
    owners = {i: int(torch.mode(segment[frame == i]).values) for i in objects}
    lost = []
    for i in objects:
        slot = owners[i]
        rivals = [j for j in objects if j != i and owners[j] == slot]
        if slot == slots or not rivals:
            continue
        own = int((segment[frame == i] == slot).sum())
        if own >= max(int((segment[frame == j] == slot).sum()) for j in rivals):
            continue  # the slot's own object
        cover = drawn[:, frame == i].mean(dim=-1)
        cover[slot] = 0
        lost.append(bool(cover.max() > 0.5))
    return lost


@torch.no_grad()
def frame_breakdown(model, video: torch.Tensor, masks: torch.Tensor) -> dict[str, Any]:
    """The ``frames`` entry of the report (module docstring), from online ``step``."""
    rows, lost = [], []
    for start in range(0, video.shape[0], 8):
        ids = masks[start : start + 8].to(model.device)
        clips = video[start : start + 8]
        state = model.init_state(clips.shape[0])
        for t in range(clips.shape[1]):
            frames = prepare_frames(clips[:, t], model.resolution, model.device, resize=True)
            _, state = model.step(frames, state, t == 0)
            segments = torch.cat([state.composition.weights, state.composition.background[:, None]], dim=1)
            predicted = resize_masks(segments, ids.shape[-2:])
            ari = metrics.fg_ari(ids[:, t], predicted)
            occupied = state.posterior.occupancy > 0
            drawn = resize_masks(torch.sigmoid(state.images.mask_logits) * occupied[..., None, None], ids.shape[-2:])
            for b in range(clips.shape[0]):
                frame = ids[b, t]
                objects = [
                    i for i, count in enumerate(torch.bincount(frame.flatten()).tolist()) if i > 0 and count >= 4
                ]
                segment = predicted[b].argmax(dim=0)
                frame_lost = lost_objects(frame, objects, segment, drawn[b], model.num_slots)
                lost += frame_lost
                rows.append(
                    (float(ari[b]), touching(frame, objects), int(occupied[b].sum()) - len(objects), bool(frame_lost))
                )
    ari, touch, error, merged = (np.array(column) for column in zip(*rows))
    defined = ~np.isnan(ari)
    groups = {
        "all": defined,
        "objects_touch": touch,
        "objects_apart": ~touch,
        "slots_equal_objects": error == 0,
        "slots_fewer": error < 0,
        "slots_more": error > 0,
        "apart_and_equal": ~touch & (error == 0),
    }
    result: dict[str, Any] = {}
    for name, chosen in groups.items():
        chosen = chosen & defined
        result[name] = {
            "share": float(chosen.mean() / defined.mean()),
            "frame_fg_ari": float(ari[chosen].mean()) if chosen.any() else float("nan"),
            "merge_share": float(merged[chosen].mean()) if chosen.any() else float("nan"),
        }
    result["merged_objects"] = {
        "count": len(lost),
        "drawn_by_a_slot_behind": sum(lost),
        "drawn_by_no_slot": len(lost) - sum(lost),
    }
    return result


def scores(model, store: RolloutStore, frames: int, episodes: int) -> dict[str, float]:
    results = evaluate_perception(model, store, num_frames=frames, max_episodes=episodes, progress=False)
    return {key: value for key, value in results.items() if key in ("fg_ari", "fg_ari_frame", "miou", "mbo", "videos")}


def step_rate(model, batch_size: int = 8, repeats: int = 20) -> float:
    frames = torch.randint(0, 256, (batch_size, model.resolution, model.resolution, 3), dtype=torch.uint8)
    _, state = model.step(frames, model.init_state(batch_size), True)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        _, state = model.step(frames, state, False)
        times.append(time.perf_counter() - start)
    return batch_size / sorted(times[3:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--speed", action="store_true", help="also measure step frames/s")
    args = parser.parse_args()
    model = ocrl.load_perception(args.checkpoint, device="cpu")
    store = RolloutStore.open(args.data)
    video, masks = load_videos(store, args.episodes, args.frames)
    result = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "videos": int(video.shape[0]),
        "background": background_scores(model, video, masks),
        "objects_seeded_from_truth_iou": seeded_from_truth(model, video, masks),
        "assignment": assignment_counts(model, video, masks),
        "eval_perception": scores(model, store, args.frames, args.episodes),
    }
    opened = model.gate.register_forward_hook(lambda module, inputs, alpha: torch.ones_like(alpha))
    result["eval_perception_gates_open"] = scores(model, store, args.frames, args.episodes)
    opened.remove()
    result["frames"] = frame_breakdown(model, video, masks)
    if args.speed:
        result["step_frames_per_second"] = step_rate(model)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

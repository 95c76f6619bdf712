"""How good a world model is on held-out rollouts.

Open loop: from the true codes of ``context`` steps, the model predicts ``max(horizons)`` steps
with the episode's true actions, feeding back its own predictions, stepping exactly as
imagination does. At each horizon h (h steps after the last true step) it is scored against
the codes the perception model gives the real frames, next to the copy-last-state baseline
(the last true codes held still):

- ``slot_mse``: mean squared error of standardised slot vectors (1.0 = the spread of the data);
- ``position_mse``: of x, y, size, depth;
- ``psnr``: of frames decoded from the predicted slots by the perception decoder, against the
  real frames at the model's resolution; ``psnr_perception`` is the decoder's own ceiling (the
  real frame's codes decoded);
- ``fg_ari``: per-frame FG-ARI of the decoded masks against ground-truth masks (when the store
  has them).

An oracle world model (perception ``"ground_truth"``) is scored on its rows only: they have no
decoder to draw frames with.

One step, teacher-forced over every transition: ``reward_mse``; ``reward_precision`` and
``reward_recall`` on rewarded transitions (a prediction is snapped to the nearest of 0 and the
reward values seen in the data; precision: of the transitions predicted rewarded, the fraction
whose true reward is that value; recall: of the transitions with a non-zero reward, the fraction
predicted with that value); ``termination_precision`` and ``termination_recall`` likewise for
terminations (continuation probability below 1/2), and ``continue_accuracy`` beside
``continue_accuracy_always``, the accuracy of always predicting "continue". Each is NaN when undefined (nothing
predicted, or nothing to find): with rewards that are constant an accuracy would be 1.0 for a
model that never predicts a reward, which says nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ocrl import metrics
from ocrl.agents.ground_truth import GroundTruthCodes
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.perception.frames import prepare_frames
from ocrl.slots import CODE_KEYS, SlotCodes
from ocrl.world_models.codes import CodeCache, encode_store
from ocrl.world_models.imagination import ImaginedEpisodes, check_pairing
from ocrl.world_models.model import SlotWorldModel, position_error, slot_error


@torch.no_grad()
def open_loop(model: SlotWorldModel, codes: SlotCodes, actions: torch.Tensor, context: int, steps: int) -> SlotCodes:
    """Predict ``steps`` steps after the first ``context`` of ``codes`` (B, >= context) with
    ``actions`` (B, context + steps - 1, ...), stepping as imagination does; returns the
    predicted codes (B, steps)."""
    episodes = ImaginedEpisodes(model, codes.batch_shape[0])
    episodes.observe(codes[:, 0])
    predicted = []
    for step in range(context + steps - 1):
        output = episodes.step(actions[:, step])
        if step + 1 < context:
            episodes.observe(codes[:, step + 1])
        else:
            predicted.append(output.codes)
    return SlotCodes.stack(predicted)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of images in [0, 1], (N, 3, H, W)."""
    mse = (images - targets).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


@torch.no_grad()
def evaluate_world_model(
    model: SlotWorldModel,
    data: str | os.PathLike | RolloutStore,
    perception: torch.nn.Module | GroundTruthCodes,
    horizons: Sequence[int] = (1, 5, 10),
    context: int = 4,
    stride: int = 20,
    max_windows: int | None = 256,
    cache: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of ``model`` on the episodes of ``data`` (see the module doc); returns a JSON-able dict.

    Open-loop windows start every ``stride`` steps of an episode where ``context`` +
    max(horizons) steps fit; at most ``max_windows`` of them (spread over the episodes).
    """
    check_pairing(model, perception)
    if context < 1 or context > model.config.history:
        raise OcrlError(f"context must be between 1 and the model's history ({model.config.history}), got {context}")
    store = data if isinstance(data, RolloutStore) else RolloutStore.open(data)
    if store.header.get("action_space") != model.config.action_space:
        raise OcrlError(
            f"{store.path} holds actions of {store.header.get('action_space')}, but the world model acts in {model.config.action_space}; "
            "evaluate it on rollouts of the env it was trained on"
        )
    codes = CodeCache(encode_store(perception, store, cache, progress=progress))
    device = model.device
    horizon = max(horizons)
    length = context - 1 + horizon
    starts = [
        (episode, start)
        for episode, steps in enumerate(codes.lengths)
        for start in range(0, int(steps) - length + 1, stride)
    ]
    if not starts:
        raise OcrlError(
            f"no episode of {store.path} has the {length + 1} frames that context {context} and horizon {horizon} need"
        )
    if max_windows is not None and len(starts) > max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    has_masks = "masks" in store.ground_truth_keys
    decodes = not isinstance(perception, GroundTruthCodes)
    sums: dict[str, np.ndarray] = {}
    slot_std = model.slot_std
    for first in tqdm(range(0, len(starts), batch_size), desc="open loop", unit="batch", disable=not progress):
        chunk = starts[first : first + batch_size]
        window = codes.windows(np.array([e for e, _ in chunk]), np.array([s for _, s in chunk]), length)
        truth = window.codes.to(device)
        predicted = open_loop(model, truth, window.actions.to(device), context, horizon)
        target = truth[:, context:]
        copied = SlotCodes(
            *(getattr(truth[:, context - 1 : context], key).expand_as(getattr(target, key)) for key in CODE_KEYS)
        )
        scores = {
            "slot_mse": slot_error(predicted, target, slot_std),
            "slot_mse_copy_last": slot_error(copied, target, slot_std),
            "position_mse": position_error(predicted, target),
            "position_mse_copy_last": position_error(copied, target),
        }
        if decodes:  # a perception decoder to draw the codes with (the oracle's rows have none)
            frames = np.stack([store.episode(e).frames(s + context, s + context + horizon) for e, s in chunk])
            real = prepare_frames(
                frames.reshape(-1, *frames.shape[2:]), perception.resolution, perception.device, resize=True
            )
            # drawn over the last observed frame (what the codes do not hold, e.g. a background)
            seen = np.stack([store.episode(e).frames(s + context - 1, s + context) for e, s in chunk])
            seen = np.repeat(seen, horizon, axis=1).reshape(-1, *seen.shape[2:])
            decoded = {
                name: perception.draw(value._map(lambda tensor: tensor.flatten(0, 1)), seen)
                for name, value in (("", predicted), ("_copy_last", copied), ("_perception", target))
            }
            for name, output in decoded.items():
                scores[f"psnr{name}"] = psnr(output.reconstruction.float().clamp(0, 1), real).view(len(chunk), horizon)
            if has_masks:
                true_masks = np.stack(
                    [
                        store.episode(e).ground_truth(s + context, s + context + horizon, keys=["masks"])["masks"]
                        for e, s in chunk
                    ]
                )
                true_masks = torch.from_numpy(true_masks).flatten(0, 1)[:, None].float()
                true_masks = F.interpolate(true_masks, size=(perception.resolution,) * 2, mode="nearest")[:, 0].long()
                for name, output in decoded.items():
                    ari = metrics.fg_ari(true_masks.to(output.masks.device), output.masks.float(), video=False).view(
                        len(chunk), horizon
                    )
                    scores[f"fg_ari{name}"] = ari
        for name, values in scores.items():
            values = values.double().cpu().numpy()
            sums[name] = sums.get(name, np.zeros(horizon)) + np.nansum(values, 0)
            sums[f"{name}_count"] = sums.get(f"{name}_count", np.zeros(horizon)) + np.isfinite(values).sum(0)
    by_horizon = {
        str(h): {
            name: round(float(sums[name][h - 1] / max(1, sums[f"{name}_count"][h - 1])), 5)
            for name in sums
            if not name.endswith("_count")
        }
        for h in horizons
    }
    return {
        "episodes": len(codes),
        "windows": len(starts),
        "context": context,
        "open_loop": by_horizon,
        **_one_step_scores(model, codes),
    }


@torch.no_grad()
def _one_step_scores(model: SlotWorldModel, codes: CodeCache) -> dict[str, float]:
    """Teacher-forced reward and continuation scores over every transition of every episode."""
    history = model.config.history
    rewards, predicted_rewards, continues, predicted_continues = [], [], [], []
    for episode, steps in enumerate(codes.lengths):
        for start in range(0, int(steps), history):
            window = codes.windows(np.array([episode]), np.array([start]), history)
            output = model(window.codes[:, :history].to(model.device), window.actions.to(model.device))
            valid = window.valid[0].bool()
            rewards.append(window.rewards[0][valid])
            continues.append(window.continues[0][valid])
            predicted_rewards.append(output.reward[0].cpu()[valid])
            predicted_continues.append(torch.sigmoid(output.continue_logits[0]).cpu()[valid])
    rewards, predicted_rewards = torch.cat(rewards), torch.cat(predicted_rewards)
    continues, predicted_continues = torch.cat(continues), torch.cat(predicted_continues)
    values = torch.unique(torch.cat([rewards, torch.zeros(1)]))
    snapped = values[(predicted_rewards[:, None] - values[None]).abs().argmin(1)]
    terminated, predicted_terminated = continues < 0.5, predicted_continues < 0.5
    return {
        "transitions": int(len(rewards)),
        "rewarded_transitions": int((rewards != 0).sum()),
        "terminations": int(terminated.sum()),
        "reward_mse": round(float((predicted_rewards - rewards).square().mean()), 6),
        "reward_precision": _ratio((snapped != 0) & (snapped == rewards), snapped != 0),
        "reward_recall": _ratio((rewards != 0) & (snapped == rewards), rewards != 0),
        "termination_precision": _ratio(predicted_terminated & terminated, predicted_terminated),
        "termination_recall": _ratio(predicted_terminated & terminated, terminated),
        "continue_accuracy": round(float((predicted_terminated == terminated).float().mean()), 5),
        "continue_accuracy_always": round(float((~terminated).float().mean()), 5),
    }


def _ratio(hits: torch.Tensor, candidates: torch.Tensor) -> float:
    """hits / candidates counted over boolean masks, rounded; NaN when there are no candidates."""
    count = int(candidates.sum())
    return round(int(hits.sum()) / count, 5) if count else math.nan


@torch.no_grad()
def save_imagination_pictures(
    model: SlotWorldModel,
    perception: torch.nn.Module,
    store: RolloutStore,
    episode: int,
    frames: int,
    context: int,
    prefix: str | os.PathLike,
    scale: int = 2,
) -> tuple[os.PathLike, os.PathLike]:
    """Real against imagined, over ``frames`` frames of an episode: PREFIX.png has rows real
    frames | decoded real codes | decoded imagined codes | imagined segmentation; PREFIX.gif
    shows the same four side by side per frame. The first ``context`` frames are given to the
    model, the rest it imagines from the episode's actions."""
    from ocrl.viz import _to_uint8, grid, save_gif, save_png, slot_colours
    from ocrl.world_models.codes import encode_videos

    check_pairing(model, perception)
    record = store.episode(episode)
    video = record.frames(0, frames)
    if len(video) <= context:
        raise OcrlError(f"episode {episode} has {len(video)} frames; imagining after {context} needs more")
    real = SlotCodes.from_numpy(
        {key: value[None] for key, value in encode_videos(perception, [video])[0].items()}, device=model.device
    )
    actions = torch.as_tensor(record.actions[: len(video) - 1], device=model.device)[None]
    imagined = open_loop(model, real, actions, context, len(video) - context)
    shown = _to_uint8(prepare_frames(video, perception.resolution, "cpu", resize=True).numpy())
    # codes drawn over their own frame (what codes do not hold, e.g. a background); imagined ones
    # over the last frame the model saw
    decoded_real = perception.draw(real[0], video)
    seen = np.concatenate([video[:context], np.repeat(video[context - 1 : context], len(video) - context, 0)])
    decoded = perception.draw(SlotCodes.cat([real[0, :context], imagined[0]], dim=0), seen)
    segmentation = slot_colours(model.config.num_slots)[decoded.masks.float().argmax(1).cpu().numpy()]
    rows = [
        list(shown),
        list(_to_uint8(decoded_real.reconstruction.float().clamp(0, 1).cpu().numpy())),
        list(_to_uint8(decoded.reconstruction.float().clamp(0, 1).cpu().numpy())),
        list(segmentation),
    ]
    png = save_png(grid(rows, scale=scale), f"{prefix}.png")
    gif = save_gif([grid([[row[t] for row in rows]], scale=scale) for t in range(len(video))], f"{prefix}.gif")
    return png, gif

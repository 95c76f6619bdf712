"""Staged training of Loci-s (paper Sec. 3.4-3.5) through the one training loop :func:`ocrl.fit.fit`.

Three stages run in order in one checkpoint directory, counted by one global step, so that a
rerun resumes inside whichever stage the last checkpoint was in:

1. ``background``: the uncertainty network learns the foreground (ground-truth masks > 0, or,
   without labels, pixels that differ from the stores' per-pixel median frame) and the masked
   autoencoder the background behind it;
2. ``objects``: the encoder and decoder learn single objects from ground-truth masks, each slot
   placed by a perturbed Gaussian inside its object;
3. ``full``: the whole model on video clips, self-supervised, with slots assigned without
   ground truth; the background module stays fixed.

Each stage has its own batches and its own learning-rate warmup and cosine decay.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from ocrl.data.dataset import ClipDataset
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.fit import fit, resume_or_build, start_process, warmup_cosine
from ocrl.perception.frames import prepare_frames, resize_images
from ocrl.perception.loci.build import build_loci
from ocrl.perception.loci.config import LociConfig, loci_config
from ocrl.preflight import preflight


@dataclass
class LociTrainingConfig:
    """How Loci-s is trained, stage by stage; stored in every checkpoint's config.json.

    ``*_steps`` and ``*_batch_size``: per stage (batches are frames in the first two stages,
    clips of ``clip_length`` frames in the last). ``warmup_steps``: learning-rate warmup at the
    start of each stage.
    """

    background_steps: int = 800
    # 1400: with 700 the stage ended before the codes had the objects' shapes (probe 0.82-0.86
    # against 0.89-0.90 over two seeds each; RESULTS.md "A longer objects stage")
    object_steps: int = 1400
    # 300 steps on 6-frame clips: with 150 on 3-frame clips the slots' size codes grew each frame
    # (0.17 -> 0.48 over 24 frames) until slots merged and objects lost theirs (RESULTS.md)
    full_steps: int = 300
    background_batch_size: int = 16
    object_batch_size: int = 8
    full_batch_size: int = 4
    clip_length: int = 6
    learning_rate: float = 4e-4
    warmup_steps: int = 50
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    checkpoint_every: int = 100
    num_workers: int = 1
    seed: int = 0
    supervise_depth: bool = True

    @property
    def steps(self) -> int:
        return self.background_steps + self.object_steps + self.full_steps

    def stages(self) -> list[tuple[str, int, int, int, int]]:
        """(name, first step, end step, batch size, frames per sample) of each stage, in order."""
        rows, start = [], 0
        for name, steps, batch, length in (
            ("background", self.background_steps, self.background_batch_size, 1),
            ("objects", self.object_steps, self.object_batch_size, 1),
            ("full", self.full_steps, self.full_batch_size, self.clip_length),
        ):
            rows.append((name, start, start + steps, batch, length))
            start += steps
        return rows

    def stage_at(self, step: int) -> str:
        for name, start, stop, _, _ in self.stages():
            if start <= step < stop:
                return name
        return "full"

    def learning_rate_factor(self, step: int) -> float:
        """Warmup then cosine decay to ``final_learning_rate_fraction``, restarted at every stage."""
        for _, start, stop, _, _ in self.stages():
            if start <= step < stop:
                length = stop - start
                warmup = min(self.warmup_steps, max(1, length // 5))
                return warmup_cosine(step - start, length, warmup, self.final_learning_rate_fraction)
        return self.final_learning_rate_fraction


# the MOVi set-ups, GPU runs
_LOCI_MOVI = dict(
    background_steps=10_000,
    object_steps=50_000,
    full_steps=100_000,
    background_batch_size=64,
    object_batch_size=32,
    full_batch_size=16,
    clip_length=4,
    learning_rate=2e-4,
    warmup_steps=1_000,
    checkpoint_every=2_000,
    num_workers=4,
)
# preset name -> (model size, training config, model settings the preset fixes)
LOCI_PRESETS: dict[str, tuple[str, LociTrainingConfig, dict[str, int]]] = {
    "quick": ("quick", LociTrainingConfig(), {"num_slots": 6}),
    "base": (
        "base",
        LociTrainingConfig(**{**_LOCI_MOVI, "background_steps": 5_000, "object_steps": 30_000, "full_steps": 50_000}),
        {},
    ),
    "movi-c": ("base", LociTrainingConfig(**_LOCI_MOVI), {"num_slots": 11, "resolution": 128}),
    "movi-e": ("base", LociTrainingConfig(**_LOCI_MOVI), {"num_slots": 24, "resolution": 128}),
}


def median_frame(stores: list[RolloutStore], resolution: int, frames: int = 512, seed: int = 0) -> torch.Tensor:
    """Per-pixel median (3, R, R) of up to ``frames`` frames drawn evenly from the stores'
    episodes: the background of a static camera, where objects sit elsewhere in most frames."""
    rng = np.random.default_rng(seed)
    picked = []
    per_store = max(1, frames // len(stores))
    for store in stores:
        for position in rng.integers(len(store), size=per_store):
            episode = store.episode(int(position))
            index = int(rng.integers(episode.length + 1))
            picked.append(episode.frames(index, index + 1)[0])
    stacked = prepare_frames(np.stack(picked), resolution, "cpu", resize=True)
    return stacked.median(dim=0).values


def pretrain_loci(
    data: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    preset: str = "quick",
    *,
    num_slots: int | None = None,
    resolution: int | None = None,
    steps: tuple[int, int, int] | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = True,
    foreground_target: str | None = None,
    model_config: LociConfig | None = None,
    training: LociTrainingConfig | None = None,
) -> Path:
    """Train (or resume) Loci-s on rollout stores, all stages in order; returns ``out``.

    Args:
        data: one rollout store or several.
        out: checkpoint directory; rerunning resumes inside the stage it stopped in.
        preset: ``quick`` (CPU), ``base`` (GPU), ``movi-c`` / ``movi-e`` (128 px, 11 / 24 slots).
        num_slots, resolution: override the preset's model.
        steps: (background, objects, full) steps, overriding the preset's.
        seed: initial weights, sampled frames and clips (default the preset's, 0).
        foreground_target: ``"masks"`` or ``"median"`` (see :class:`~ocrl.perception.loci.config.BackgroundConfig`).
        model_config, training: full configs instead of the preset's (tests, experiments).
    """
    paths = data if isinstance(data, (list, tuple)) else [data]
    preflight(checkpoint=out, stores=paths, device=device)
    if preset not in LOCI_PRESETS:
        raise OcrlError(f"unknown config {preset!r}; known: {', '.join(LOCI_PRESETS)}")
    size, preset_training, preset_model = LOCI_PRESETS[preset]
    training = training or preset_training
    if steps is not None:
        training = dataclasses.replace(training, background_steps=steps[0], object_steps=steps[1], full_steps=steps[2])
    if seed is not None:
        training = dataclasses.replace(training, seed=seed)
    stores = [RolloutStore.open(path) for path in paths]
    height, width, _ = stores[0].frame_shape
    if model_config is None:
        resolution = resolution or preset_model.get("resolution") or (height if height == width else 64)
        model_config = loci_config(size, resolution, num_slots or preset_model.get("num_slots"))
        if foreground_target is not None:
            model_config.background.foreground_target = foreground_target
    resolution = model_config.resolution
    target = model_config.background.foreground_target
    has_masks = all("masks" in store.ground_truth_keys for store in stores)
    if target == "masks" and not has_masks:
        raise OcrlError(
            "these stores have no ground-truth masks; train with --foreground median (labels derived from the median frame)"
        )
    if training.object_steps > 0 and not has_masks:
        raise OcrlError("the objects stage needs ground-truth masks; these stores have none (set its steps to 0)")
    use_depth = training.supervise_depth and all("depth" in store.ground_truth_keys for store in stores)

    process = start_process(device)
    device = process.device
    out = Path(out)
    torch.manual_seed(training.seed + process.rank)
    model, state = resume_or_build(out, model_config, build_loci, device)
    median = median_frame(stores, resolution, seed=training.seed).to(device) if target == "median" else None

    def batches(step: int):
        for name, start, stop, batch_size, length in training.stages():
            if step >= stop or stop == start:
                continue
            first = max(step, start)
            seed = training.seed * 1000 + process.rank + first
            dataset = torch.utils.data.ConcatDataset(
                [ClipDataset(store, length, ground_truth=has_masks or use_depth, seed=seed) for store in stores]
            )
            sampler = RandomSampler(
                dataset,
                replacement=True,
                num_samples=(stop - first) * batch_size,
                generator=torch.Generator().manual_seed(seed),
            )
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=training.num_workers,
                pin_memory=device.type == "cuda",
            )
            for batch in loader:
                yield name, batch

    def loss(forward, item, step: int):
        stage, batch = item
        frames = prepare_frames(batch["frames"], resolution, device, leading_dims=2, resize=True)
        masks = batch.get("masks")
        if masks is not None:
            masks = resize_images(masks.to(device)[:, :, None].float(), resolution, "nearest")[:, :, 0].long()
        depth = batch.get("depth") if use_depth else None
        if depth is not None:
            depth = resize_images(depth.to(device)[:, :, None], resolution, "nearest")[:, :, 0]
        foreground = None
        if median is not None:
            difference = (frames - median).abs().amax(dim=2)
            foreground = (difference > model_config.background.median_threshold).float()
        output = forward(frames, stage, masks=masks, depth=depth, foreground=foreground)
        return output.loss, output.losses

    record = {
        **dataclasses.asdict(training),
        "preset": preset,
        "data": [str(store.path) for store in stores],
        "stages": training.stages(),
    }
    fit(
        model,
        model_config,
        loss,
        batches,
        training,
        out,
        process=process,
        state=state,
        training_record=record,
        tensorboard=tensorboard,
        progress=progress,
        description="pretrain loci",
        schedule=training.learning_rate_factor,
    )
    return out

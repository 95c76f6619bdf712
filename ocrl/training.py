"""Perception pretraining: clips from rollout stores through :func:`ocrl.fit.fit`.

``pretrain(data, out)`` builds a video slot model and trains it with the one training loop
(AdamW, warmup then cosine decay, clipping per gradient group, bf16 autocast on a GPU, DDP under
``torchrun --nproc-per-node N -m ocrl.cli pretrain ...``). ``out`` is a checkpoint directory
(see :mod:`ocrl.checkpoint`): rerunning the same command resumes where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from ocrl.data.dataset import ClipDataset
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.fit import fit, resume_or_build, start_process
from ocrl.perception import build_perception, perception_config
from ocrl.perception.frames import prepare_frames, resize_images
from ocrl.preflight import preflight


@dataclass
class TrainingConfig:
    """How to train; stored in every checkpoint's config.json."""

    steps: int = 3_000
    batch_size: int = 16
    clip_length: int = 4
    learning_rate: float = 4e-4
    warmup_steps: int = 200
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    checkpoint_every: int = 250
    num_workers: int = 1
    seed: int = 0
    supervise_depth: bool = True


# a GPU run; the MOVi set-ups of SAVi / VideoSAUR / SmoothSA train on 6-frame clips at 128 px (videos
# of 24 frames are evaluated whole: ocrl eval-perception --frames 24)
_GPU = dict(
    steps=100_000,
    batch_size=32,
    clip_length=6,
    learning_rate=2e-4,
    warmup_steps=2_500,
    checkpoint_every=2_000,
    num_workers=4,
)
# preset name -> (model size, training config)
PRESETS: dict[str, tuple[str, TrainingConfig]] = {
    "quick": ("quick", TrainingConfig(steps=7_000)),  # about 27 minutes on 2 CPU cores
    "base": ("base", TrainingConfig(**_GPU)),
    "movi-c": ("base", TrainingConfig(**_GPU)),
    "movi-e": ("base", TrainingConfig(**_GPU)),
}
# model settings a preset fixes: MOVi-C has up to 10 objects + background, MOVi-E up to 23
PRESET_MODELS: dict[str, dict[str, int]] = {
    "movi-c": {"num_slots": 11, "resolution": 128},
    "movi-e": {"num_slots": 24, "resolution": 128},
}


def prepare_clip(
    batch: dict[str, torch.Tensor], resolution: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clip batch from ClipDataset to (frames float (B, T, 3, R, R) in [0, 1], depth (B, T, R, R) or None)."""
    frames = prepare_frames(batch["frames"], resolution, device, leading_dims=2, resize=True)
    depth = batch.get("depth")
    if depth is not None:
        depth = resize_images(depth.to(device, non_blocking=True)[:, :, None], resolution, "nearest")[:, :, 0]
    return frames, depth


def pretrain(
    data: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    family: str = "smoothsa",
    preset: str = "quick",
    *,
    num_slots: int | None = None,
    resolution: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = True,
    conditional: bool = False,
    seed: int | None = None,
) -> Path:
    """Train (or resume training) a perception model on rollout stores; returns ``out``.

    Args:
        data: one rollout store or several (clips are drawn from all of them).
        out: checkpoint directory; if it holds a checkpoint of the same model, training resumes.
        family: ``slot_attention``, ``tf_inv`` or ``smoothsa``.
        preset: ``quick`` (minutes on a CPU), ``base`` (a GPU run), ``movi-c`` / ``movi-e``
            (``base`` with 11 / 24 slots at 128 px, 6-frame clips: the papers' MOVi set-ups).
        num_slots: slots per frame; default from the preset.
        resolution: model resolution; default the preset's, else the stores' frame height when
            frames are square, else 64 (frames are resized).
        steps, batch_size, seed: override the preset's (seed: initial weights and clip order).
        conditional: first-frame queries from the ground-truth boxes of the clip's first frame
            (SAVi's conditioning; the stores need ``object_box``, as converted MOVi has).
    """
    preflight(checkpoint=out, stores=data if isinstance(data, (list, tuple)) else [data], device=device)
    if preset not in PRESETS:
        raise OcrlError(f"unknown config {preset!r}; known: {', '.join(PRESETS)}")
    size, training = PRESETS[preset]
    training = dataclasses.replace(
        training,
        steps=steps or training.steps,
        batch_size=batch_size or training.batch_size,
        seed=training.seed if seed is None else seed,
    )
    stores = [RolloutStore.open(path) for path in (data if isinstance(data, (list, tuple)) else [data])]
    height, width, _ = stores[0].frame_shape
    preset_model = PRESET_MODELS.get(preset, {})
    resolution = resolution or preset_model.get("resolution") or (height if height == width else 64)
    model_config = perception_config(
        family, size, resolution=resolution, num_slots=num_slots or preset_model.get("num_slots")
    )
    if conditional:
        model_config.initializer.kind = "conditional"

    process = start_process(device)
    device = process.device
    out = Path(out)
    torch.manual_seed(training.seed + process.rank)  # before building: the initial weights follow the seed
    model, state = resume_or_build(out, model_config, build_perception, device)

    use_depth = training.supervise_depth and all("depth" in store.ground_truth_keys for store in stores)
    conditions = model_config.num_slots if conditional else None

    def batches(step: int) -> DataLoader:
        # a fresh sampler per (re)start, seeded by the step: a resumed run draws new clips
        seed = training.seed * 1000 + process.rank + step
        datasets = [
            ClipDataset(store, training.clip_length, ground_truth=use_depth, seed=seed, conditions=conditions)
            for store in stores
        ]
        dataset = torch.utils.data.ConcatDataset(datasets)
        sampler = RandomSampler(
            dataset,
            replacement=True,
            num_samples=(training.steps - step) * training.batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        return DataLoader(
            dataset,
            batch_size=training.batch_size,
            sampler=sampler,
            num_workers=training.num_workers,
            pin_memory=device.type == "cuda",
        )

    def loss(forward, batch: dict[str, torch.Tensor], step: int):
        frames, depth = prepare_clip(batch, resolution, device)
        model.set_step(step)
        output = forward(
            frames,
            depth=depth if use_depth else None,
            conditions=batch["conditions"].to(device) if conditional else None,
        )
        return output.loss, output.losses

    record = {**dataclasses.asdict(training), "preset": preset, "data": [str(s.path) for s in stores]}
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
        gradient_groups=model.gradient_groups(),
        tensorboard=tensorboard,
        progress=progress,
        description=f"pretrain {family}",
    )
    return out

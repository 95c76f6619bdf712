"""Perception pretraining: a plain loop over clips from rollout stores.

``pretrain(data, out)`` trains a video slot model with AdamW, linear warmup then cosine decay,
gradient clipping, bf16 autocast on a GPU (fp32 on the CPU), a progress bar and optional
TensorBoard. ``out`` is a checkpoint directory (see :mod:`ocrl.checkpoint`) rewritten every
``checkpoint_every`` steps, on Ctrl-C and at the end, with the trainer state: rerunning the same
command resumes where the last checkpoint left off.

Several GPUs or machines: launch with ``torchrun --nproc-per-node N -m ocrl.cli pretrain ...``.
Each process draws its own clips; gradients are averaged by DDP; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as distributed
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from ocrl.checkpoint import CONFIG_FILE, load_checkpoint, load_trainer_state, read_checkpoint_config, save_checkpoint
from ocrl.data.dataset import ClipDataset
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.perception import build_perception, perception_config
from ocrl.perception.config import PerceptionConfig
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


# preset name -> (model size, training config)
PRESETS: dict[str, tuple[str, TrainingConfig]] = {
    "quick": ("quick", TrainingConfig(steps=7_000)),  # about 27 minutes on 2 CPU cores
    "base": ("base", TrainingConfig(steps=100_000, batch_size=32, clip_length=6, learning_rate=2e-4, warmup_steps=2_500, checkpoint_every=2_000, num_workers=4)),
    # the MOVi set-ups of SAVi / VideoSAUR / SmoothSA: 6-frame training clips at 128 px (videos of
    # 24 frames are evaluated whole: ocrl eval-perception --frames 24), a GPU run
    "movi-c": ("base", TrainingConfig(steps=100_000, batch_size=32, clip_length=6, learning_rate=2e-4, warmup_steps=2_500, checkpoint_every=2_000, num_workers=4)),
    "movi-e": ("base", TrainingConfig(steps=100_000, batch_size=32, clip_length=6, learning_rate=2e-4, warmup_steps=2_500, checkpoint_every=2_000, num_workers=4)),
}
# model settings a preset fixes: MOVi-C has up to 10 objects + background, MOVi-E up to 23
PRESET_MODELS: dict[str, dict[str, int]] = {"movi-c": {"num_slots": 11, "resolution": 128}, "movi-e": {"num_slots": 24, "resolution": 128}}


def learning_rate_factor(step: int, config: TrainingConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``final_learning_rate_fraction``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    low = config.final_learning_rate_fraction
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _distributed_setup() -> tuple[int, int, torch.device | None]:
    """(rank, world size, device chosen for this rank) under torchrun, else (0, 1, None)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, None
    if not distributed.is_initialized():
        distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return distributed.get_rank(), world_size, device


def _resize(batch: torch.Tensor, resolution: int, mode: str) -> torch.Tensor:
    """(B, T, C, H, W) to (B, T, C, resolution, resolution)."""
    if batch.shape[-2:] == (resolution, resolution):
        return batch
    b, t = batch.shape[:2]
    flat = batch.flatten(0, 1).float()
    resized = F.interpolate(flat, size=(resolution, resolution), mode=mode, **({"antialias": True} if mode == "bilinear" else {}))
    return resized.unflatten(0, (b, t))


def prepare_clip(batch: dict[str, torch.Tensor], resolution: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clip batch from ClipDataset to (frames float (B, T, 3, R, R) in [0, 1], depth (B, T, R, R) or None)."""
    frames = batch["frames"].to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255)
    frames = _resize(frames, resolution, "bilinear").clamp_(0, 1)
    depth = batch.get("depth")
    if depth is not None:
        depth = _resize(depth.to(device, non_blocking=True)[:, :, None], resolution, "nearest")[:, :, 0]
    return frames, depth


def _check_resume(out: Path, model_config: PerceptionConfig) -> bool:
    """Whether ``out`` holds a checkpoint of this model to resume from (error if of another)."""
    if not (out / CONFIG_FILE).exists():
        return False
    saved, _ = read_checkpoint_config(out)
    if saved.to_dict() != model_config.to_dict():
        raise OcrlError(f"{out} holds a checkpoint of another model config; pass another --out to start a new run")
    return True


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
        steps, batch_size: override the preset's.
        conditional: first-frame queries from the ground-truth boxes of the clip's first frame
            (SAVi's conditioning; the stores need ``object_box``, as converted MOVi has).
    """
    preflight(checkpoint=out, stores=data if isinstance(data, (list, tuple)) else [data], device=device)
    if preset not in PRESETS:
        raise OcrlError(f"unknown config {preset!r}; known: {', '.join(PRESETS)}")
    size, training = PRESETS[preset]
    training = dataclasses.replace(training, steps=steps or training.steps, batch_size=batch_size or training.batch_size)
    stores = [RolloutStore.open(path) for path in (data if isinstance(data, (list, tuple)) else [data])]
    height, width, _ = stores[0].frame_shape
    preset_model = PRESET_MODELS.get(preset, {})
    resolution = resolution or preset_model.get("resolution") or (height if height == width else 64)
    model_config = perception_config(family, size, resolution=resolution, num_slots=num_slots or preset_model.get("num_slots"))
    if conditional:
        model_config.initializer.kind = "conditional"

    rank, world_size, rank_device = _distributed_setup()
    device = torch.device(device) if device is not None else rank_device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    resume = _check_resume(out, model_config)
    torch.manual_seed(training.seed + rank)

    if resume:
        model, _ = load_checkpoint(out, device=device)
        model.train()
        state = load_trainer_state(out) or {}
    else:
        model = build_perception(model_config).to(device)
        state = {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    step = int(state.get("step", 0))
    history: list[float] = list(state.get("loss_history", []))
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: learning_rate_factor(index, training), last_epoch=step - 1)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model

    use_depth = training.supervise_depth and all("depth" in store.ground_truth_keys for store in stores)
    conditions = model_config.num_slots if conditional else None
    datasets = [ClipDataset(store, training.clip_length, ground_truth=use_depth, seed=training.seed * 1000 + rank + step, conditions=conditions) for store in stores]
    dataset = torch.utils.data.ConcatDataset(datasets)
    generator = torch.Generator().manual_seed(training.seed * 1000 + rank + step)
    remaining = max(0, training.steps - step)
    sampler = RandomSampler(dataset, replacement=True, num_samples=remaining * training.batch_size, generator=generator)
    loader = DataLoader(
        dataset,
        batch_size=training.batch_size,
        sampler=sampler,
        num_workers=training.num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported() else nullcontext()
    writer = _tensorboard_writer(tensorboard) if rank == 0 else None

    def save(final: bool = False) -> None:
        if rank != 0:
            return
        trainer_state = {"optimizer": optimizer.state_dict(), "step": step, "loss_history": history, "torch_rng": torch.get_rng_state()}
        metrics = {"step": step, "loss": history[-1] if history else None, "done": final}
        save_checkpoint(model, model_config, out, trainer_state=trainer_state, metrics=metrics, training_config={**dataclasses.asdict(training), "preset": preset, "data": [str(s.path) for s in stores]})

    bar = tqdm(total=training.steps, initial=step, desc=f"pretrain {family}", unit="step", disable=not progress or rank != 0)
    started = time.perf_counter()
    try:
        for batch in loader:
            frames, depth = prepare_clip(batch, resolution, device)
            model.set_step(step)
            with autocast:
                output = trained(frames, depth=depth if use_depth else None, conditions=batch["conditions"].to(device) if conditional else None)
            loss = output.loss
            if not torch.isfinite(loss):
                raise OcrlError(f"loss became {loss.item()} at step {step}; lower the learning rate (the last good checkpoint is in {out})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in model.gradient_groups():
                torch.nn.utils.clip_grad_norm_(group, training.gradient_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            history.append(round(float(loss.detach()), 6))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if writer is not None:
                writer.add_scalar("loss/total", history[-1], step)
                for name, value in output.losses.items():
                    writer.add_scalar(f"loss/{name}", float(value.detach()), step)
                writer.add_scalar("learning_rate", scheduler.get_last_lr()[0], step)
            if step % training.checkpoint_every == 0 and step < training.steps:
                save()
    except KeyboardInterrupt:
        save()
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    save(final=True)
    if rank == 0 and progress:
        print(f"trained {family} to step {step} in {time.perf_counter() - started:.0f} s; checkpoint: {out}")
    return out


def _tensorboard_writer(directory: str | os.PathLike | None):
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise OcrlError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(str(directory))

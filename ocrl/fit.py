"""The one training loop: perception and world models hand it a loss function and batches.

:func:`fit` owns what every run needs once: AdamW with linear warmup then cosine decay, DDP,
bf16 autocast on a GPU (fp32 on the CPU), gradient clipping per parameter group, a guard against
a non-finite loss, a progress bar, optional TensorBoard, and checkpoints (see
:mod:`ocrl.checkpoint`) every ``checkpoint_every`` steps, at the end and on any failure (then the
error is raised again), with the optimiser, step, loss history and torch RNG state, so that
rerunning the same command resumes where the last checkpoint left off.

Several GPUs or machines: launch with ``torchrun --nproc-per-node N ...``; each process draws
its own batches, DDP averages the gradients, rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as distributed
from torch import nn
from tqdm.auto import tqdm

from ocrl.checkpoint import CONFIG_FILE, load_checkpoint, load_trainer_state, read_checkpoint_config, save_checkpoint
from ocrl.device import default_device
from ocrl.errors import OcrlError


class OptimisationConfig(Protocol):
    """The fields of a training config that :func:`fit` reads."""

    steps: int
    learning_rate: float
    warmup_steps: int
    final_learning_rate_fraction: float
    weight_decay: float
    gradient_clip: float
    checkpoint_every: int


def warmup_cosine(step: int, steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine decay to ``final_fraction`` at ``steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate_factor(step: int, config: OptimisationConfig) -> float:
    """:func:`warmup_cosine` over the whole run, to ``final_learning_rate_fraction``."""
    return warmup_cosine(step, config.steps, config.warmup_steps, config.final_learning_rate_fraction)


@dataclass(frozen=True)
class Process:
    """This process's place in a run: rank, number of processes, and its device."""

    rank: int
    world_size: int
    device: torch.device


def start_process(device: str | torch.device | None = None) -> Process:
    """Join the process group under torchrun (``WORLD_SIZE`` > 1) and pick this rank's device
    (``device`` if given, else its GPU under torchrun, else :func:`default_device`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Process(0, 1, torch.device(device) if device is not None else default_device())
    if not distributed.is_initialized():
        distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if device is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Process(distributed.get_rank(), world_size, device)


def resume_or_build(
    out: Path, config: Any, build: Callable[[Any], nn.Module], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The model and trainer state of the checkpoint in ``out`` if it holds one of this exact
    config, a fresh ``build(config)`` and ``{}`` if ``out`` holds none; an error if it holds
    another model (a new run must not silently overwrite it)."""
    if not (out / CONFIG_FILE).exists():
        return build(config).to(device), {}
    saved, _ = read_checkpoint_config(out)
    if type(saved) is not type(config) or saved.to_dict() != config.to_dict():
        raise OcrlError(f"{out} holds a checkpoint of another model config; pass another --out to start a new run")
    model, _ = load_checkpoint(out, device=device)
    return model, load_trainer_state(out) or {}


LossFunction = Callable[[nn.Module, Any, int], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def fit(
    model: nn.Module,
    config: Any,
    loss_function: LossFunction,
    batches: Callable[[int], Iterable[Any]],
    training: OptimisationConfig,
    out: Path,
    *,
    process: Process,
    state: dict[str, Any] | None = None,
    training_record: dict[str, Any] | None = None,
    gradient_groups: list[list[nn.Parameter]] | None = None,
    group_learning_rates: list[float] | None = None,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = True,
    description: str = "train",
    schedule: Callable[[int], float] | None = None,
) -> int:
    """Train ``model`` to ``training.steps`` steps, checkpointing into ``out``; returns the last step.

    Args:
        model: the model to train (unwrapped); saved with ``config``.
        loss_function: ``(forward, batch, step) -> (loss, named loss terms)``; ``forward`` is the
            model, or its DDP wrapper when distributed (call it, read attributes off ``model``).
        batches: ``start step -> iterable`` of the batches for steps ``start`` onwards.
        state: trainer state to resume from (:func:`resume_or_build`'s), ``{}`` for a new run.
        training_record: JSON-able dict stored as the checkpoint's training config.
        gradient_groups: parameter groups clipped separately (default: all parameters together).
        group_learning_rates: a peak learning rate per gradient group (default: all
            ``training.learning_rate``); the schedule scales each.
        schedule: ``step -> learning-rate factor`` (default :func:`learning_rate_factor`: warmup,
            then cosine decay over the whole run); staged training gives one per stage.
    """
    state = state or {}
    step = int(state.get("step", 0))
    if step >= training.steps:
        # a finished run: say so instead of building an empty sampler
        if process.rank == 0 and progress:
            print(f"{out} is already trained to step {step} (of {training.steps}); nothing to do")
        return step
    model.train()
    groups = gradient_groups or [list(model.parameters())]
    if group_learning_rates is None:
        parameters = model.parameters()
    else:
        parameters = [{"params": group, "lr": rate} for group, rate in zip(groups, group_learning_rates, strict=True)]
    optimizer = torch.optim.AdamW(parameters, lr=training.learning_rate, weight_decay=training.weight_decay)
    if "optimizer" in state:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # parameter groups of another version of the model or trainer
            raise OcrlError(
                f"{out}: its optimizer state does not fit this trainer ({error}); train into a new --out"
            ) from None
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    history: list[float] = list(state.get("loss_history", []))
    last_terms: dict[str, float] = {}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule or (lambda index: learning_rate_factor(index, training)), last_epoch=step - 1
    )
    forward = torch.nn.parallel.DistributedDataParallel(model) if process.world_size > 1 else model
    device = process.device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else nullcontext()
    )
    writer = _tensorboard_writer(tensorboard) if process.rank == 0 else None

    def save(final: bool = False) -> None:
        if process.rank != 0:
            return
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "loss_history": history,
            "torch_rng": torch.get_rng_state(),
        }
        metrics = {"step": step, "loss": history[-1] if history else None, "terms": last_terms, "done": final}
        save_checkpoint(
            model, config, out, trainer_state=trainer_state, metrics=metrics, training_config=training_record
        )

    bar = tqdm(
        total=training.steps, initial=step, desc=description, unit="step", disable=not progress or process.rank != 0
    )
    started = time.perf_counter()
    try:
        iterator = iter(batches(step))
        while step < training.steps:
            # drawn only for a step that runs, so the saved RNG state is that of the next step's draw
            batch = next(iterator, None)
            if batch is None:
                break
            with autocast:
                loss, terms = loss_function(forward, batch, step)
            if not torch.isfinite(loss):
                raise OcrlError(
                    f"loss became {loss.item()} at step {step}; lower the learning rate (the checkpoint of step {step} is in {out})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in groups:
                torch.nn.utils.clip_grad_norm_(group, training.gradient_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            history.append(round(float(loss.detach()), 6))
            last_terms = {name: round(float(value.detach()), 6) for name, value in terms.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if writer is not None:
                writer.add_scalar("loss/total", history[-1], step)
                for name, value in last_terms.items():
                    writer.add_scalar(f"loss/{name}", value, step)
                writer.add_scalar("learning_rate", scheduler.get_last_lr()[0], step)
            if step % training.checkpoint_every == 0 and step < training.steps:
                save()
    except BaseException:
        # Ctrl-C, a non-finite loss, a corrupt episode, a full disk: keep the steps done so far
        # (the parameters are those of the last finished step) and let the error through
        try:
            save()
        except Exception:  # the original error matters more than a failed last save
            pass
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    save(final=True)
    if process.rank == 0 and progress:
        print(f"{description}: step {step} in {time.perf_counter() - started:.0f} s; checkpoint: {out}")
    return step


def _tensorboard_writer(directory: str | os.PathLike | None):
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise OcrlError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(str(directory))

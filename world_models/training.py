"""World-model training: teacher forcing plus an open-loop rollout loss, over cached slot codes.

``train_world_model(data, out)`` encodes the rollout store once with the frozen perception model
(:mod:`ocrl.world_models.codes`), then trains a :class:`SlotWorldModel` on random windows of
``history`` transitions:

- teacher forcing: from the true codes of steps 0..t, predict step t + 1, the reward and the
  continuation of every transition of the window;
- open loop: from the true codes of the first ``history - rollout_steps`` steps, feed the
  model its own predictions for ``rollout_steps`` more steps (gradients flow through them), so
  that it learns to stay on track when imagination feeds it its own output.

AdamW, warmup then cosine decay, gradient clipping, a progress bar, optional TensorBoard, and
checkpoints like perception training's: rerunning the same command resumes. Several GPUs:
``torchrun --nproc-per-node N -m ocrl.cli train-world-model ...`` (DDP; rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ocrl.checkpoint import CONFIG_FILE, load_checkpoint, load_trainer_state, read_checkpoint_config, save_checkpoint
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.preflight import preflight
from ocrl.slots import SlotCodes
from ocrl.training import _distributed_setup, _tensorboard_writer, learning_rate_factor
from ocrl.world_models.codes import CodeCache, Window, encode_store
from ocrl.world_models.model import SlotWorldModel, WorldModelConfig, position_error, slot_error


@dataclass
class WorldModelTrainingConfig:
    """How to train a world model; stored in its checkpoint's config.json."""

    steps: int = 4_000
    batch_size: int = 32
    rollout_steps: int = 3
    end_fraction: float = 0.25  # windows that end with an episode's last transition
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    checkpoint_every: int = 500
    seed: int = 0
    position_weight: float = 1.0
    presence_weight: float = 0.1
    reward_weight: float = 1.0
    continue_weight: float = 0.5
    rollout_weight: float = 1.0


def window_loss(model: SlotWorldModel, window: Window, training: WorldModelTrainingConfig, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms on a batch of windows (see the module doc); ``forward`` runs the
    model (default ``model`` itself; its DDP wrapper when distributed)."""
    forward = forward or model
    steps = window.valid.shape[1]
    inputs, targets = window.codes[:, :steps], window.codes[:, 1:]
    output = forward(inputs, window.actions)
    valid = window.valid

    def mean(values: torch.Tensor, weights: torch.Tensor = valid) -> torch.Tensor:
        return (values * weights).sum() / weights.sum().clamp_min(1)

    presence = F.binary_cross_entropy_with_logits(output.presence_logits, targets.presence.clamp(0, 1), reduction="none").mean(-1)
    terms = {
        "slots": mean(slot_error(output.codes, targets, model.slot_std)),
        "position": mean(position_error(output.codes, targets)),
        "presence": mean(presence),
        "reward": mean((output.reward - window.rewards).square()),
        "continue": mean(F.binary_cross_entropy_with_logits(output.continue_logits, window.continues, reduction="none")),
    }
    loss = terms["slots"] + training.position_weight * terms["position"] + training.presence_weight * terms["presence"]
    loss = loss + training.reward_weight * terms["reward"] + training.continue_weight * terms["continue"]

    context = max(1, steps - training.rollout_steps)
    if context < steps:
        predicted = [output.codes[:, context - 1]]  # step `context`, one step ahead
        errors = []
        for step in range(context + 1, steps + 1):
            prediction = forward(_cat_time(window.codes[:, :context], predicted), window.actions[:, :step]).codes[:, -1]
            target = window.codes[:, step]
            error = slot_error(prediction, target, model.slot_std) + training.position_weight * position_error(prediction, target)
            errors.append(mean(error, valid[:, step - 1]))
            predicted.append(prediction)
        terms["rollout"] = torch.stack(errors).mean()
        loss = loss + training.rollout_weight * terms["rollout"]
    return loss, terms


def _with_time(codes: SlotCodes) -> SlotCodes:
    return codes._map(lambda tensor: tensor[:, None])


def _cat_time(history: SlotCodes, predicted: list[SlotCodes]) -> SlotCodes:
    """True codes (B, c) followed by predicted codes of single steps (B,) -> (B, c + n)."""
    parts = [history, *[_with_time(codes) for codes in predicted]]
    return SlotCodes(**{key: torch.cat([getattr(part, key) for part in parts], 1) for key in ("slots", "position", "presence")})


def _check_resume(out: Path, config: WorldModelConfig) -> bool:
    if not (out / CONFIG_FILE).exists():
        return False
    saved, _ = read_checkpoint_config(out)
    if not isinstance(saved, WorldModelConfig) or saved.to_dict() != config.to_dict():
        raise OcrlError(f"{out} holds a checkpoint of another model; pass another --out to start a new run")
    return True


def train_world_model(
    data: str | os.PathLike,
    out: str | os.PathLike,
    perception: str | None = None,
    *,
    model_config: dict[str, Any] | None = None,
    training: WorldModelTrainingConfig | None = None,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a world model on rollout store ``data`` into checkpoint ``out``.

    Args:
        perception: shipped name or checkpoint path (default: the shipped default model).
        model_config: overrides of :class:`WorldModelConfig` fields (``history``, ``width``, ...).
        training: :class:`WorldModelTrainingConfig` (default: its defaults).
        cache: where the codes are cached (default ``DATA/codes/<perception fingerprint>``).
    """
    import ocrl
    from ocrl.wrappers import resolve_model

    preflight(checkpoint=out, stores=[data], stores_need_actions=True, device=device)
    training = training or WorldModelTrainingConfig()
    history = (model_config or {}).get("history", WorldModelConfig.history)
    if training.rollout_steps >= history:
        raise OcrlError(f"rollout_steps ({training.rollout_steps}) must be below the history ({history})")
    store = RolloutStore.open(data)
    rank, world_size, rank_device = _distributed_setup()
    device = torch.device(device) if device is not None else rank_device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = perception or ocrl.DEFAULT_PERCEPTION
    perception_model = resolve_model(reference, device)
    cache_dir = encode_store(perception_model, store, cache, perception=reference, progress=progress and rank == 0) if rank == 0 else None
    if world_size > 1:  # the others wait for rank 0's cache
        shared = [str(cache_dir)]
        torch.distributed.broadcast_object_list(shared, src=0)
        cache_dir = Path(shared[0])
    codes = CodeCache(cache_dir)
    config = WorldModelConfig(
        num_slots=codes.num_slots,
        slot_dim=codes.slot_dim,
        perception=reference,
        action_space=store.header["action_space"],
        env_id=store.env_id,
        env_kwargs=store.header.get("env_kwargs", {}),
        **(model_config or {}),
    )
    out = Path(out)
    if _check_resume(out, config):
        model, _ = load_checkpoint(out, device=device)
        state = load_trainer_state(out) or {}
    else:
        model = SlotWorldModel(config).to(device)
        model.set_slot_statistics(*(tensor.to(device) for tensor in codes.slot_statistics()))
        state = {}
    model.train()
    torch.manual_seed(training.seed + rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    step = int(state.get("step", 0))
    history: list[float] = list(state.get("loss_history", []))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: learning_rate_factor(index, training), last_epoch=step - 1)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    generator = np.random.default_rng([training.seed, rank, step])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported() else nullcontext()
    writer = _tensorboard_writer(tensorboard) if rank == 0 else None
    last_terms: dict[str, float] = {}

    def save(final: bool = False) -> None:
        if rank != 0:
            return
        trainer_state = {"optimizer": optimizer.state_dict(), "step": step, "loss_history": history}
        metrics = {"step": step, "loss": history[-1] if history else None, "terms": last_terms, "done": final}
        save_checkpoint(model, config, out, trainer_state=trainer_state, metrics=metrics, training_config={**dataclasses.asdict(training), "data": str(Path(store.path).resolve()), "cache": str(cache_dir)})

    bar = tqdm(total=training.steps, initial=step, desc="train world model", unit="step", disable=not progress or rank != 0)
    started = time.perf_counter()
    try:
        while step < training.steps:
            window = codes.sample(training.batch_size, config.history, generator, training.end_fraction).to(device)
            with autocast:
                loss, terms = window_loss(model, window, training, forward=trained)
            if not torch.isfinite(loss):
                raise OcrlError(f"loss became {loss.item()} at step {step}; lower the learning rate (the last good checkpoint is in {out})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.gradient_clip)
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
        print(f"trained the world model to step {step} in {time.perf_counter() - started:.0f} s; checkpoint: {out}")
    return out

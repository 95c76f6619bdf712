"""World-model training: teacher forcing plus an open-loop rollout loss, over cached slot codes.

``train_world_model(data, out)`` encodes the rollout store once with the frozen perception model
(:mod:`ocrl.world_models.codes`), then trains a :class:`SlotWorldModel` on random windows of
``history`` transitions:

- teacher forcing: from the true codes of steps 0..t, predict step t + 1, the reward and the
  continuation (the outcome head, on the true codes of a separate batch of single transitions,
  a quarter of them with a reward or a termination, and on the windows' own predictions, which
  are what it reads in imagination);
- open loop: from the true codes of the first ``history - rollout_steps`` steps, feed the
  model its own predictions for ``rollout_steps`` more steps (gradients flow through them), so
  that it learns to stay on track when imagination feeds it its own output.

Trained by the one training loop, :func:`ocrl.fit.fit` (as perception is): rerunning the same
command resumes. Several GPUs: ``torchrun --nproc-per-node N -m ocrl.cli train-world-model ...``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.fit import fit, resume_or_build, start_process
from ocrl.preflight import preflight
from ocrl.slots import SlotCodes
from ocrl.world_models.codes import CodeCache, Transitions, Window, code_source, encode_store
from ocrl.world_models.model import DATA_FIELDS, SlotWorldModel, WorldModelConfig, position_error, slot_error


@dataclass
class WorldModelTrainingConfig:
    """How to train a world model; stored in its checkpoint's config.json."""

    steps: int = 4_000
    batch_size: int = 32
    rollout_steps: int = 3
    end_fraction: float = 0.25  # windows that end with an episode's last transition
    reward_fraction: float = 0.25  # windows that hold a transition with a non-zero reward
    outcome_batch_size: int = 256  # single transitions for the reward/continuation head on true codes
    event_fraction: float = 0.25  # of them with a reward or a termination
    learning_rate: float = 3e-4
    # the outcome head's own (peak) rate: a touch is a sharp threshold on positions, which it
    # learns several times faster at a higher rate (benchmarks/RESULTS.md, issue 15)
    outcome_learning_rate: float = 1e-3
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


def window_loss(
    model: SlotWorldModel,
    window: Window,
    training: WorldModelTrainingConfig,
    forward=None,
    transitions: Transitions | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms on a batch of windows and of single ``transitions`` (see the
    module doc); ``forward`` runs the model (default ``model`` itself; its DDP wrapper when
    distributed)."""
    forward = forward or model
    steps = window.valid.shape[1]
    inputs, targets = window.codes[:, :steps], window.codes[:, 1:]
    output = forward(inputs, window.actions)
    valid = window.valid

    def mean(values: torch.Tensor, weights: torch.Tensor = valid) -> torch.Tensor:
        return (values * weights).sum() / weights.sum().clamp_min(1)

    presence = F.binary_cross_entropy_with_logits(
        output.presence_logits, targets.presence.clamp(0, 1), reduction="none"
    ).mean(-1)
    terms = {
        "slots": mean(slot_error(output.codes, targets, model.slot_std)),
        "position": mean(position_error(output.codes, targets)),
        "presence": mean(presence),
    }

    # The outcome head learns reward and continuation from true next codes: a batch of single
    # transitions rich in events (without one, the windows' next codes). Not through the predicted
    # codes: their gradient would bend predicted positions towards or away from touches (measured:
    # position error at horizon 1 rose above copy-last on true object states).
    if transitions is None:
        codes, rewards, continues, average = targets, window.rewards, window.continues, mean
    else:
        codes, rewards, continues, average = transitions.codes, transitions.rewards, transitions.continues, torch.mean
    reward_logits, continue_logits = model.outcome(codes)
    terms["reward"] = average(model.reward_loss(reward_logits, rewards))
    terms["continue"] = average(F.binary_cross_entropy_with_logits(continue_logits, continues, reduction="none"))
    if transitions is not None:
        # ... and from the model's own one-step predictions, detached (no gradient moves them):
        # imagination asks the head about predicted codes, whose errors it must learn to read
        reward_logits, continue_logits = model.outcome(output.codes.detach())
        terms["reward"] = terms["reward"] + mean(model.reward_loss(reward_logits, window.rewards))
        terms["continue"] = terms["continue"] + mean(
            F.binary_cross_entropy_with_logits(continue_logits, window.continues, reduction="none")
        )
    loss = terms["slots"] + training.position_weight * terms["position"] + training.presence_weight * terms["presence"]
    loss = loss + training.reward_weight * terms["reward"] + training.continue_weight * terms["continue"]

    context = max(1, steps - training.rollout_steps)
    if context < steps:
        predicted = [output.codes[:, context - 1]]  # step `context`, one step ahead
        errors = []
        for step in range(context + 1, steps + 1):
            # true codes (B, context) followed by the predicted steps so far
            prediction = forward(
                SlotCodes.cat([window.codes[:, :context], SlotCodes.stack(predicted)]), window.actions[:, :step]
            ).codes[:, -1]
            target = window.codes[:, step]
            error = slot_error(prediction, target, model.slot_std) + training.position_weight * position_error(
                prediction, target
            )
            errors.append(mean(error, valid[:, step - 1]))
            predicted.append(prediction)
        terms["rollout"] = torch.stack(errors).mean()
        loss = loss + training.rollout_weight * terms["rollout"]
    return loss, terms


def train_world_model(
    data: str | os.PathLike | Sequence[str | os.PathLike],
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
    """Train (or resume) a world model on rollout store ``data`` (or several stores of one env,
    e.g. rounds of collection with a changing policy) into checkpoint ``out``.

    Args:
        perception: shipped name or checkpoint path (default: the shipped default model), or
            ``"ground_truth"``: the store's recorded objects (the oracle world model).
        model_config: overrides of :class:`WorldModelConfig` fields (``history``, ``width``, ...).
        training: :class:`WorldModelTrainingConfig` (default: its defaults).
        cache: where the codes are cached (default ``DATA/codes/<perception fingerprint>``; one
            store only).
    """
    import ocrl

    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    preflight(checkpoint=out, stores=paths, stores_need_actions=True, device=device)
    training = training or WorldModelTrainingConfig()
    taken = sorted(set(model_config or {}) & set(DATA_FIELDS))
    if taken:
        raise OcrlError(f"{', '.join(taken)} come from the data and the perception model, not from model_config")
    history = (model_config or {}).get("history", WorldModelConfig.history)
    if training.rollout_steps >= history:
        raise OcrlError(f"rollout_steps ({training.rollout_steps}) must be below the history ({history})")
    stores = [RolloutStore.open(path) for path in paths]
    store = stores[0]
    for other in stores[1:]:
        for key in ("env_id", "env_kwargs", "action_space"):
            if other.header.get(key) != store.header.get(key):
                raise OcrlError(f"{other.path} and {store.path} hold different {key}s; train on stores of one env")
    if cache is not None and len(stores) > 1:
        raise OcrlError("a cache directory can be given for one store only")
    process = start_process(device)
    device = process.device
    reference = perception or ocrl.DEFAULT_PERCEPTION
    perception_model = code_source(reference, store, device)
    cache_dirs = (
        [
            str(
                encode_store(
                    perception_model, each, cache, perception=reference, progress=progress and process.rank == 0
                )
            )
            for each in stores
        ]
        if process.rank == 0
        else [None]
    )
    if process.world_size > 1:  # the others wait for rank 0's caches
        shared = [cache_dirs]
        torch.distributed.broadcast_object_list(shared, src=0)
        cache_dirs = shared[0]
    codes = CodeCache(cache_dirs)
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
    torch.manual_seed(training.seed + process.rank)  # before building: the initial weights follow the seed
    model, state = resume_or_build(out, config, SlotWorldModel, device)
    if not state:
        model.set_slot_statistics(*(tensor.to(device) for tensor in codes.slot_statistics()))

    def batches(step: int):
        generator = np.random.default_rng([training.seed, process.rank, step])
        while True:
            window = codes.sample(
                training.batch_size, config.history, generator, training.end_fraction, training.reward_fraction
            )
            transitions = codes.transitions(training.outcome_batch_size, generator, training.event_fraction)
            yield window.to(device), transitions.to(device)

    def loss(forward, batch: tuple[Window, Transitions], step: int):
        window, transitions = batch
        return window_loss(model, window, training, forward=forward, transitions=transitions)

    record = {
        **dataclasses.asdict(training),
        "data": [str(Path(each.path).resolve()) for each in stores],
        "cache": cache_dirs,
    }
    head = list(model.outcome_head.parameters())
    dynamics = [parameter for name, parameter in model.named_parameters() if not name.startswith("outcome_head.")]
    fit(
        model,
        config,
        loss,
        batches,
        training,
        out,
        process=process,
        gradient_groups=[dynamics, head],
        group_learning_rates=[training.learning_rate, training.outcome_learning_rate],
        state=state,
        training_record=record,
        tensorboard=tensorboard,
        progress=progress,
        description="train world model",
    )
    return out

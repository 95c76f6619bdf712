"""The one training loop, on a linear model: resume, failures, the non-finite guard and DDP.

Perception and world-model tests check their own losses and batches; what the loop does with
them (checkpoints, RNG, clipping, DDP) is tested here, once.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ocrl.checkpoint import load_checkpoint, load_trainer_state, register_model_kind
from ocrl.errors import OcrlError
from ocrl.fit import fit, resume_or_build, start_process


@dataclasses.dataclass
class LineConfig:
    inputs: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LineConfig:
        return cls(**data)


def build_line(config: LineConfig) -> nn.Module:
    return nn.Linear(config.inputs, 1)


register_model_kind("test_line", LineConfig, build_line)


@dataclasses.dataclass
class Settings:
    steps: int = 5
    learning_rate: float = 0.05
    warmup_steps: int = 2
    final_learning_rate_fraction: float = 0.1
    weight_decay: float = 0.0
    gradient_clip: float = 1.0
    checkpoint_every: int = 100


def batches(step: int):
    # drawn from the global torch RNG, so that a resumed run matches only if the loop restores it
    while True:
        inputs = torch.randn(8, 3)
        yield inputs, inputs.sum(-1, keepdim=True)


def squared_error(forward, batch, step):
    inputs, targets = batch
    loss = (forward(inputs) - targets).square().mean()
    return loss, {"squared_error": loss}


def run(out: Path, steps: int, loss=squared_error, progress: bool = False, rates=None) -> nn.Module:
    torch.manual_seed(0)
    model, state = resume_or_build(out, LineConfig(), build_line, torch.device("cpu"))
    fit(
        model,
        LineConfig(),
        loss,
        batches,
        Settings(steps=steps),
        out,
        process=start_process("cpu"),
        state=state,
        progress=progress,
        gradient_groups=None if rates is None else [[model.weight], [model.bias]],
        group_learning_rates=rates,
    )
    return model


def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path):
    straight = run(tmp_path / "straight", 5)
    run(tmp_path / "resumed", 3)
    resumed = run(tmp_path / "resumed", 5)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    state = load_trainer_state(tmp_path / "resumed")
    assert state["step"] == 5 and len(state["loss_history"]) == 5


def test_a_finished_run_says_so_and_returns(tmp_path, capsys):
    run(tmp_path / "model", 2)
    before = (tmp_path / "model" / "model.safetensors").read_bytes()
    run(tmp_path / "model", 2, progress=True)
    assert "already trained to step 2" in capsys.readouterr().out
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == before


def test_each_gradient_group_trains_at_its_own_learning_rate(tmp_path):
    run(tmp_path / "model", 3, rates=[0.05, 0.5])
    groups = load_trainer_state(tmp_path / "model")["optimizer"]["param_groups"]
    # the schedule scales each group's peak rate alike (here: 3 steps after a 2-step warmup)
    assert [group["initial_lr"] for group in groups] == [0.05, 0.5]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    # a run with other parameter groups cannot resume it
    with pytest.raises(OcrlError, match="optimizer state does not fit"):
        run(tmp_path / "model", 5)


def test_another_model_in_out_is_refused(tmp_path):
    run(tmp_path / "model", 1)
    with pytest.raises(OcrlError, match="another model config"):
        resume_or_build(tmp_path / "model", LineConfig(inputs=4), build_line, torch.device("cpu"))


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError, OSError])
def test_any_failure_leaves_a_checkpoint_of_the_finished_steps(tmp_path, failure):
    def fail_at_step_two(forward, batch, step):
        if step == 2:
            raise failure("stop")
        return squared_error(forward, batch, step)

    with pytest.raises(failure):
        run(tmp_path / "model", 5, loss=fail_at_step_two)
    assert load_trainer_state(tmp_path / "model")["step"] == 2
    load_checkpoint(tmp_path / "model")


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
    def nan_at_step_three(forward, batch, step):
        loss, terms = squared_error(forward, batch, step)
        return (loss * float("nan") if step == 3 else loss), terms

    with pytest.raises(OcrlError, match="loss became nan at step 3"):
        run(tmp_path / "model", 5, loss=nan_at_step_three)
    model, _ = load_checkpoint(tmp_path / "model")
    assert load_trainer_state(tmp_path / "model")["step"] == 3
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _distributed_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # other batches and initial weights per rank: DDP must make and keep them equal
    process = start_process("cpu")
    assert (process.rank, process.world_size) == (rank, world_size)
    model, state = resume_or_build(Path(out), LineConfig(), build_line, process.device)
    fit(
        model,
        LineConfig(),
        squared_error,
        batches,
        Settings(steps=3),
        Path(out),
        process=process,
        state=state,
        progress=False,
    )
    weights = [torch.zeros_like(model.weight) for _ in range(world_size)]
    torch.distributed.all_gather(weights, model.weight.detach())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], torch.zeros_like(weights[0]))
    # both ranks past every collective before either tears gloo down: without this barrier a rank
    # that exits while the other still finishes its all_gather aborts now and then (SIGABRT,
    # "terminate called without an active exception"; seen once in CI on 2026-11-25)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # gloo's threads may still abort in the interpreter's teardown (SIGABRT, "terminate called
    # without an active exception": seen again in CI on 2026-12-06 with the barrier above); the
    # training is checked by now, so the worker leaves without that teardown
    sys.stderr.flush()
    os._exit(0)


def test_distributed_training_with_two_gloo_processes(tmp_path):
    out = tmp_path / "model"
    torch.multiprocessing.spawn(_distributed_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    assert load_trainer_state(out)["step"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # only rank 0 wrote

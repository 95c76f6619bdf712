"""Checks before work: a wrong --out, input store or device is refused in one line, before a run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ocrl.checkpoint import save_checkpoint
from ocrl.cli import main
from ocrl.cli.common import error_message
from ocrl.data.collect import collect
from ocrl.data.store import RolloutWriter
from ocrl.errors import CorruptFileError
from ocrl.world_models import SlotWorldModel, WorldModelConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return collect(
        "ocrl/ObjectGoal-v0",
        2,
        tmp_path_factory.mktemp("data") / "goal",
        num_envs=2,
        env_kwargs={"resolution": 16},
        progress=False,
    ).path


@pytest.fixture(scope="module")
def video_store(tmp_path_factory) -> Path:
    """A store of videos without actions, as 'ocrl movi convert' writes."""
    path = tmp_path_factory.mktemp("data") / "videos"
    header = {
        "env_id": "movi/test",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "none"},
        "frame_source": "movi",
        "frame_shape": [16, 16, 3],
        "action_space": {"type": "Box", "shape": [0], "dtype": "float32", "low": [], "high": []},
        "ground_truth": [],
    }
    writer = RolloutWriter(path, header)
    writer.add(
        0,
        0,
        np.zeros((13, 16, 16, 3), np.uint8),
        np.zeros((12, 0), np.float32),
        np.zeros(12),
        np.zeros(12, bool),
        np.zeros(12, bool),
    )
    writer.close()
    return path


@pytest.fixture
def empty_store(tmp_path) -> Path:
    header = {
        "env_id": "ocrl/ObjectGoal-v0",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "random"},
        "frame_source": "observation",
        "frame_shape": [16, 16, 3],
        "action_space": {"type": "Discrete", "n": 4, "start": 0},
        "ground_truth": [],
    }
    RolloutWriter(tmp_path / "empty", header).close()
    return tmp_path / "empty"


def world_model(path: Path, **overrides) -> Path:
    """A small world model of the shipped perception model's codes (7 slots of 64)."""
    config = WorldModelConfig(width=32, num_layers=1, num_heads=2, **overrides)
    return save_checkpoint(SlotWorldModel(config), config, path)


def run(capsys, *argv) -> tuple[int, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.err


def assert_refused(status: int, err: str, command: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"ocrl {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def foreign_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return out


@pytest.mark.parametrize(
    "command, arguments",
    [
        ("pretrain", ["--data", "{store}", "--steps", "1"]),
        ("train-world-model", ["--data", "{store}", "--steps", "1"]),
        ("train-agent", ["--env", "ocrl/ObjectGoal-v0", "--steps", "8"]),
    ],
)
def test_an_out_holding_other_files_is_refused_before_training(command, arguments, store, tmp_path, capsys):
    out = foreign_out(tmp_path)
    status, err = run(capsys, command, *[argument.format(store=store) for argument in arguments], "--out", out)
    assert_refused(status, err, command, str(out), "notes.txt")
    assert sorted(entry.name for entry in out.iterdir()) == ["notes.txt"]
    assert not (Path(store) / "codes").exists()  # not even the codes were encoded


@pytest.mark.parametrize("command", ["pretrain", "train-world-model"])
def test_missing_and_empty_stores_are_refused(command, empty_store, tmp_path, capsys):
    status, err = run(capsys, command, "--data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_refused(status, err, command, "nowhere", "does not exist")
    status, err = run(capsys, command, "--data", empty_store, "--out", tmp_path / "out")
    assert_refused(status, err, command, str(empty_store), "no episodes")
    assert not (tmp_path / "out").exists()


def test_a_store_without_actions_is_refused_by_world_model_commands(video_store, tmp_path, capsys):
    status, err = run(capsys, "train-world-model", "--data", video_store, "--out", tmp_path / "out")
    assert_refused(status, err, "train-world-model", "no actions")
    status, err = run(
        capsys, "eval-world-model", world_model(tmp_path / "world"), "--data", video_store, "--device", "cpu"
    )
    assert_refused(status, err, "eval-world-model", "no actions")


def test_a_store_of_another_action_space_is_refused_by_eval_world_model(store, tmp_path, capsys):
    box = {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    status, err = run(
        capsys,
        "eval-world-model",
        world_model(tmp_path / "world", action_space=box),
        "--data",
        store,
        "--device",
        "cpu",
    )
    assert_refused(status, err, "eval-world-model", "Discrete", "acts in")


def test_viz_refuses_a_perception_model_other_than_the_world_models(store, tiny_perception, tmp_path, capsys):
    status, err = run(
        capsys,
        "viz",
        tiny_perception,
        "--data",
        store,
        "--world-model",
        world_model(tmp_path / "world"),
        "--out",
        tmp_path / "pictures",
        "--device",
        "cpu",
    )
    assert_refused(status, err, "viz", "smoothsa-sprites", tiny_perception)
    assert not list(tmp_path.glob("pictures*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "command, arguments",
    [
        ("pretrain", ["--data", "{store}", "--out", "{tmp}/out"]),
        ("train-world-model", ["--data", "{store}", "--out", "{tmp}/out"]),
        ("train-agent", ["--env", "ocrl/ObjectGoal-v0", "--out", "{tmp}/out"]),
        ("eval-perception", ["smoothsa-sprites", "--data", "{store}"]),
        ("eval-agent", ["{tmp}/agent"]),
    ],
)
def test_cuda_on_a_machine_without_it_is_one_line(command, arguments, store, tmp_path, capsys):
    status, err = run(
        capsys, command, *[argument.format(store=store, tmp=tmp_path) for argument in arguments], "--device", "cuda"
    )
    assert_refused(status, err, command, "--device cuda", "CUDA is not available")
    assert not (tmp_path / "out").exists()


def test_a_bad_device_name_is_one_line(store, tmp_path, capsys):
    status, err = run(capsys, "eval-perception", "smoothsa-sprites", "--data", store, "--device", "gpu0")
    assert_refused(status, err, "eval-perception", "gpu0", "not a device")


def test_an_output_file_that_is_a_directory_is_refused_before_evaluating(store, tmp_path, capsys):
    status, err = run(
        capsys, "eval-perception", "smoothsa-sprites", "--data", store, "--out", tmp_path, "--device", "cpu"
    )
    assert_refused(status, err, "eval-perception", "is a directory")


class _Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise CorruptFileError(f"/data/store/episodes/episode-{index:06d}.npz: frame 3 of 'frames' is corrupt")


def test_an_error_in_a_data_loader_worker_is_shown_as_the_original_error():
    with pytest.raises(CorruptFileError) as raised:
        next(iter(torch.utils.data.DataLoader(_Failing(), num_workers=1)))
    assert "Traceback" in str(raised.value)  # what torch hands over: the worker's whole traceback
    assert (
        error_message(raised.value)
        == "/data/store/episodes/episode-000000.npz: frame 3 of 'frames' is corrupt (in a data loader worker)"
    )


def test_python_dash_m_ocrl_cli_runs_the_command(tmp_path):
    """What torchrun does: run the module as a script; it must run the command, not exit 0 doing nothing."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "ocrl.cli",
        "collect",
        "--env",
        "ocrl/ObjectGoal-v0",
        "--env-kwargs",
        '{"resolution": 16}',
        "--episodes",
        "1",
        "--num-envs",
        "1",
        "--out",
        str(tmp_path / "store"),
    ]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "store" / "manifest.json").is_file()
    finished = subprocess.run(
        [*command[:3], "collect", "--episodes", "0"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="EGL is the headless default on Linux only")
def test_the_cli_renders_dm_control_headless_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    main(["collect", "--help"])
    assert os.environ["MUJOCO_GL"] == "egl"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    main(["collect", "--help"])
    assert os.environ["MUJOCO_GL"] == "osmesa"

"""Perception pretraining, evaluation and pictures, end to end on a tiny store."""

import json
import shutil

import numpy as np
import pytest
import torch

import ocrl
from ocrl.checkpoint import CheckpointError, load_checkpoint, load_trainer_state
from ocrl.cli import main
from ocrl.data.collect import collect
from ocrl.errors import CorruptFileError, OcrlError
from ocrl.evaluation import evaluate_perception
from ocrl.fit import learning_rate_factor
from ocrl.training import PRESETS, pretrain


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "moving"
    return collect("ocrl/MovingObjects-v0", 3, path, env_kwargs={"resolution": 32}, num_envs=3, progress=False)


def test_learning_rate_warms_up_then_decays():
    config = PRESETS["quick"][1]
    factors = [learning_rate_factor(step, config) for step in range(config.steps)]
    peak = int(np.argmax(factors))
    assert peak == config.warmup_steps - 1 and factors[0] < 0.01 and factors[peak] == 1.0
    assert np.all(np.diff(factors[peak:]) <= 0) and factors[-1] == pytest.approx(config.final_learning_rate_fraction, abs=1e-3)


def test_pretrain_writes_a_checkpoint_and_resumes(store, tmp_path):
    out = tmp_path / "model"
    pretrain(store.path, out, family="smoothsa", steps=2, batch_size=2, progress=False)
    assert load_trainer_state(out)["step"] == 2
    first, _ = load_checkpoint(out)
    pretrain(store.path, out, family="smoothsa", steps=3, batch_size=2, progress=False)
    state = load_trainer_state(out)
    assert state["step"] == 3 and len(state["loss_history"]) == 3
    resumed, config = load_checkpoint(out)
    assert config.resolution == 32 and config.family == "smoothsa"
    changed = [not torch.equal(a, b) for a, b in zip(first.state_dict().values(), resumed.state_dict().values())]
    assert any(changed)
    with pytest.raises(OcrlError, match="another model config"):
        pretrain(store.path, out, family="tf_inv", steps=3, batch_size=2, progress=False)
    # the finished run again, through the CLI: one line, exit 0, the checkpoint untouched
    assert main(["pretrain", "--data", str(store.path), "--out", str(out), "--model", "smoothsa", "--steps", "3", "--batch-size", "2"]) == 0
    assert load_trainer_state(out)["step"] == 3


def test_a_corrupt_episode_leaves_a_checkpoint_and_names_the_file(store, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(store.path, damaged)
    for path in (damaged / "episodes").glob("*.npz"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "model"
    with pytest.raises(CorruptFileError, match=r"episode-\d+\.npz"):
        pretrain(damaged, out, family="slot_attention", steps=3, batch_size=2, progress=False)
    assert load_trainer_state(out)["step"] == 0


def test_evaluation_scores_lie_in_range_and_pictures_are_written(store, tmp_path, capsys):
    out = tmp_path / "model"
    pretrain(store.path, out, family="tf_inv", steps=1, batch_size=2, progress=False)
    model = ocrl.load_perception(out)
    result = evaluate_perception(model, store, num_frames=5, progress=False)
    assert result["videos"] == 3 and result["frames_per_video"] == 5
    for name in ("fg_ari", "fg_ari_frame", "miou", "mbo"):
        assert -1.0 <= result[name] <= 1.0
    assert main(["eval-perception", str(out), "--data", str(store.path), "--frames", "4", "--out", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["frames_per_video"] == 4
    assert main(["viz", str(out), "--data", str(store.path), "--frames", "3", "--out", str(tmp_path / "pictures" / "episode")]) == 0
    assert (tmp_path / "pictures" / "episode.png").stat().st_size > 0
    assert (tmp_path / "pictures" / "episode.gif").stat().st_size > 0


def test_user_errors_print_one_line(store, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    for argv in (
        ["eval-perception", str(not_a_checkpoint), "--data", str(store.path)],
        ["eval-perception", "no-such-model", "--data", str(store.path)],
        ["pretrain", "--data", str(not_a_checkpoint), "--out", str(tmp_path / "model")],
        ["pretrain", "--data", str(store.path), "--config", "huge", "--out", str(tmp_path / "model")],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "error" in error
    with pytest.raises(CheckpointError, match="no perception model"):
        ocrl.load_perception("no-such-model")

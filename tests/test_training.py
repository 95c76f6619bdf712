"""Perception pretraining, evaluation and pictures, end to end on a tiny store."""

import json
import shutil
import types

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
from ocrl.slots import SlotCodes, codes_from_masks
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
    assert np.all(np.diff(factors[peak:]) <= 0) and factors[-1] == pytest.approx(
        config.final_learning_rate_fraction, abs=1e-3
    )


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
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(store.path),
                "--out",
                str(out),
                "--model",
                "smoothsa",
                "--steps",
                "3",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert load_trainer_state(out)["step"] == 3


def test_the_seed_reproduces_a_run_and_another_seed_gives_another(store, tmp_path):
    weights = {}
    for name, seed in (("first", "1"), ("again", "1"), ("other", "0")):
        out = tmp_path / name
        command = ["pretrain", "--data", str(store.path), "--out", str(out), "--model", "tf_inv"]
        assert main([*command, "--steps", "1", "--batch-size", "2", "--seed", seed]) == 0
        weights[name] = list(load_checkpoint(out)[0].state_dict().values())

    def same(a: str, b: str) -> bool:
        return all(torch.equal(x, y) for x, y in zip(weights[a], weights[b]))

    assert same("first", "again") and not same("first", "other")


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
    assert (
        main(
            [
                "eval-perception",
                str(out),
                "--data",
                str(store.path),
                "--frames",
                "4",
                "--out",
                str(tmp_path / "scores.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "scores.json").read_text())["frames_per_video"] == 4
    assert (
        main(
            [
                "viz",
                str(out),
                "--data",
                str(store.path),
                "--frames",
                "3",
                "--out",
                str(tmp_path / "pictures" / "episode"),
            ]
        )
        == 0
    )
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


class _OracleModel(torch.nn.Module):
    """A "perception model" that reads the instance ids painted into the red channel (id * 60)
    and returns them as slot masks; ``merge`` maps ids onto others (one slot for two objects)."""

    def __init__(self, num_slots: int, resolution: int, merge: dict[int, int] | None = None):
        super().__init__()
        self.num_slots, self.resolution, self.merge = num_slots, resolution, merge or {}
        self.initializer = None

    def init_state(self, batch_size):
        return None

    def step(self, frames, state, is_first, conditions=None):
        ids = (frames[:, 0] * 255 / 60).round().long()
        for source, target in self.merge.items():
            ids[ids == source] = target
        masks = torch.nn.functional.one_hot(ids, self.num_slots).permute(0, 3, 1, 2).float()
        return SlotCodes(masks.flatten(2), *codes_from_masks(masks)), types.SimpleNamespace(slots=masks)

    def render(self, state):
        return self.decode(state.slots)

    def decode(self, slots):
        return types.SimpleNamespace(
            masks=slots, reconstruction=torch.zeros(len(slots), 3, self.resolution, self.resolution)
        )


@pytest.fixture(scope="module")
def painted_store(tmp_path_factory):
    """Two episodes of 4 frames, 16x16: three 4x4 squares (ids 1-3) moving right, painted with their ids."""
    from ocrl.data.store import RolloutWriter

    header = {
        "env_id": "ocrl/test",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "random"},
        "frame_source": "observation",
        "frame_shape": [16, 16, 3],
        "action_space": {"type": "Discrete", "n": 2, "start": 0},
        "ground_truth": ["masks"],
    }
    path = tmp_path_factory.mktemp("painted") / "store"
    writer = RolloutWriter(path, header)
    for episode in range(2):
        masks = np.zeros((4, 16, 16), np.int32)
        for t in range(4):
            for object_id, row in ((1, 1), (2, 6), (3, 11)):
                masks[t, row : row + 4, t + episode : t + episode + 4] = object_id
        frames = np.zeros((4, 16, 16, 3), np.uint8)
        frames[..., 0] = masks * 60
        writer.add(
            episode,
            episode,
            frames,
            np.zeros(3, np.int64),
            np.zeros(3),
            np.zeros(3, bool),
            np.zeros(3, bool),
            [{"masks": m} for m in masks],
        )
    writer.close()
    return path


def test_evaluate_perception_gives_known_answers(painted_store):
    from sklearn.metrics import adjusted_rand_score

    perfect = evaluate_perception(_OracleModel(4, 16), painted_store, num_frames=4, progress=False)
    assert perfect["videos"] == 2
    assert {name: perfect[name] for name in ("fg_ari", "fg_ari_frame", "miou", "mbo")} == pytest.approx(
        {"fg_ari": 1.0, "fg_ari_frame": 1.0, "miou": 1.0, "mbo": 1.0}
    )
    # one slot holds objects 1 and 2 (equal areas): best overlaps 1/2, 1/2, 1 -> mBO 2/3; a
    # one-to-one matching leaves object 2 unmatched -> mIoU (1/2 + 0 + 1) / 3 = 1/2
    merged = evaluate_perception(_OracleModel(4, 16, merge={2: 1}), painted_store, num_frames=4, progress=False)
    assert merged["mbo"] == pytest.approx(2 / 3) and merged["miou"] == pytest.approx(1 / 2)
    truth = np.repeat([1, 2, 3], 4 * 16)  # a video: 4 frames of 16 pixels per object
    assert merged["fg_ari"] == pytest.approx(adjusted_rand_score(truth, np.where(truth == 2, 1, truth)))
    per_frame = np.repeat([1, 2, 3], 16)
    assert merged["fg_ari_frame"] == pytest.approx(
        adjusted_rand_score(per_frame, np.where(per_frame == 2, 1, per_frame))
    )

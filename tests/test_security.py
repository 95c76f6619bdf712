"""Files are data: loading a checkpoint or a store never imports code, and never inflates without bound."""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np
import pytest

from ocrl.checkpoint import CONFIG_FILE, CheckpointError, save_checkpoint
from ocrl.cli import main
from ocrl.data.store import RolloutStore, _encode_per_frame, _save_npz, write_atomically
from ocrl.errors import CorruptFileError
from ocrl.world_models import SlotWorldModel, WorldModelConfig, load_world_model

MODULE = "ocrl_test_planted_module"


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """A module on sys.path (and in the current directory) that leaves a marker file when imported."""
    marker = tmp_path / "imported"
    (tmp_path / f"{MODULE}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield marker
    sys.modules.pop(MODULE, None)


def world_model_checkpoint(path, env_id: str):
    config = WorldModelConfig(num_slots=3, slot_dim=16, width=32, num_layers=1, num_heads=2, env_id=env_id)
    return save_checkpoint(SlotWorldModel(config), config, path)


def test_a_checkpoint_naming_a_module_is_refused_without_importing_it(planted_module, tmp_path):
    checkpoint = world_model_checkpoint(tmp_path / "world", f"{MODULE}:Evil-v0")
    with pytest.raises(CheckpointError, match=f"would import module '{MODULE}'") as raised:
        load_world_model(checkpoint, device="cpu")
    assert str(checkpoint / CONFIG_FILE) in str(raised.value)
    assert not planted_module.exists() and MODULE not in sys.modules


def test_an_agent_checkpoint_naming_a_module_is_refused_before_its_env_is_made(planted_module, tmp_path):
    from ocrl.agents import load_agent

    checkpoint = world_model_checkpoint(tmp_path / "agent", "ocrl/ObjectGoal-v0")
    header = json.loads((checkpoint / CONFIG_FILE).read_text())
    # what a hand-edited agent checkpoint would say: rebuilding it makes its env
    header["model_kind"], header["model"] = "sb3_agent", {"env_id": f"{MODULE}:Evil-v0", "observation": "ground_truth"}
    (checkpoint / CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="never imports code"):
        load_agent(checkpoint)
    assert not planted_module.exists() and MODULE not in sys.modules


def test_the_cli_refuses_in_one_line_and_imports_on_explicit_opt_in(
    planted_module, one_episode_store, tmp_path, capsys
):
    checkpoint = world_model_checkpoint(tmp_path / "world", f"{MODULE}:Evil-v0")
    status = main(["eval-world-model", str(checkpoint), "--data", str(one_episode_store), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--env-module" in err
    assert not planted_module.exists()
    # the user names the module: it is imported, the checkpoint loads, and the run goes on to the next problem
    status = main(
        [
            "eval-world-model",
            str(checkpoint),
            "--data",
            str(one_episode_store),
            "--device",
            "cpu",
            "--env-module",
            MODULE,
        ]
    )
    err = capsys.readouterr().err
    assert planted_module.exists()
    assert status == 2 and "would import" not in err


def test_a_module_the_user_imported_is_allowed(planted_module, tmp_path):
    __import__(MODULE)
    checkpoint = world_model_checkpoint(tmp_path / "world", f"{MODULE}:Evil-v0")
    assert load_world_model(checkpoint, device="cpu").config.env_id == f"{MODULE}:Evil-v0"


def test_an_unknown_env_module_is_one_line(capsys, tmp_path):
    status = main(
        [
            "collect",
            "--env",
            "ocrl/ObjectGoal-v0",
            "--episodes",
            "1",
            "--out",
            str(tmp_path / "s"),
            "--env-module",
            "no_such_module_here",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "no_such_module_here" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.fixture
def one_episode_store(tmp_path):
    from ocrl.data.collect import collect

    return collect(
        "ocrl/ObjectGoal-v0", 1, tmp_path / "store", num_envs=1, env_kwargs={"resolution": 16}, progress=False
    ).path


def test_a_frame_that_inflates_beyond_its_size_is_corrupt(one_episode_store):
    store = RolloutStore.open(one_episode_store)
    episode = store.episode(0)
    path = episode.path
    with np.load(path, allow_pickle=False) as archive:
        members = {name[:-4] if name.endswith(".npy") else name: archive[name] for name in archive.files}
    frames = episode.frames()
    store.close()
    members.update(_encode_per_frame("frames", frames))
    # frame 0: 64 MB of zeros in 64 KB of zlib, where 16 * 16 * 3 bytes are expected
    bomb = zlib.compress(bytes(64 << 20), 9)
    data = np.concatenate([np.frombuffer(bomb, np.uint8), members["frames.data"][members["frames.offsets"][1] :]])
    offsets = members["frames.offsets"] - members["frames.offsets"][1] + len(bomb)
    offsets[0] = 0
    members["frames.data"], members["frames.offsets"] = data, offsets
    write_atomically(path, lambda file: _save_npz(file, members))
    store = RolloutStore.open(one_episode_store)
    assert np.array_equal(store.episode(0).frames(1, 3), frames[1:3])  # the others still read
    with pytest.raises(CorruptFileError, match="frame 0 of 'frames'") as raised:
        store.episode(0).frames(0, 1)
    assert str(path) in str(raised.value)

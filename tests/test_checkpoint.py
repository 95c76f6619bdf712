"""Checkpoints: round trips, atomic replacement, and clear errors for everything that is not one."""

from __future__ import annotations

import json
import os
import random
import stat

import numpy as np
import pytest
import torch

from ocrl.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_metrics,
    load_trainer_state,
    read_checkpoint_config,
    save_checkpoint,
)
from ocrl.perception import build_perception, perception_config


def tiny_config(family: str = "smoothsa"):
    config = perception_config(family, "quick", 32, num_slots=3)
    config.slot_dim = 16
    config.encoder.channels, config.encoder.feature_dim, config.encoder.kernel_size = 8, 16, 3
    config.aggregator.mlp_hidden_dim = 32
    config.preheater.num_heads, config.preheater.mlp_hidden_dim = 2, 32
    config.transitioner.num_heads, config.transitioner.mlp_hidden_dim = 2, 32
    config.decoder.broadcast_size, config.decoder.hidden_channels, config.decoder.num_layers = 8, 8, 2
    return config


def trained_model(family: str = "smoothsa"):
    """A model whose weights differ from a fresh build (one optimizer step), with its optimizer."""
    torch.manual_seed(0)
    config = tiny_config(family)
    model = build_perception(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.rand(2, 2, 3, 32, 32)).loss.backward()
    optimizer.step()
    model.set_step(7)
    return model, config, optimizer


def clip():
    return torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["slot_attention", "tf_inv", "smoothsa"])
def test_round_trip_gives_identical_outputs(tmp_path, family):
    model, config, _ = trained_model(family)
    model.eval()
    directory = save_checkpoint(model, config, tmp_path / "checkpoint")
    assert sorted(path.name for path in directory.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded, loaded_config = load_checkpoint(directory, device="cpu")
    assert loaded_config == config and not loaded.training
    assert int(loaded.initializer.step) == 7  # schedule state travels with the weights
    with torch.no_grad():
        expected, actual = model(clip()), loaded(clip())
    assert torch.equal(expected.slots, actual.slots) and torch.equal(expected.masks, actual.masks)
    codes, _ = model.step(clip()[:, 0], model.init_state(2), True)
    loaded_codes, _ = loaded.step(clip()[:, 0], loaded.init_state(2), True)
    assert torch.equal(codes.position, loaded_codes.position)
    header = json.loads((directory / CONFIG_FILE).read_text())
    assert header["library_version"] and header["model"]["family"] == family


def test_trainer_state_metrics_and_training_config(tmp_path):
    model, config, optimizer = trained_model()
    random.seed(3)
    trainer_state = {
        "optimizer": optimizer.state_dict(),
        "step": 12,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.default_rng(0).bit_generator.state,
        "history": [1.5, {"loss": np.float32(0.25)}, (1, "a")],
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
    }
    directory = save_checkpoint(
        model,
        config,
        tmp_path / "run",
        trainer_state=trainer_state,
        metrics={"fg_ari": 0.93},
        training_config={"lr": 1e-2, "steps": 100},
    )
    state = load_trainer_state(directory)
    assert state["step"] == 12 and torch.equal(state["torch_rng"], trainer_state["torch_rng"])
    assert state["python_rng"] == trainer_state["python_rng"]
    assert state["numpy_rng"] == trainer_state["numpy_rng"]
    assert state["history"] == [1.5, {"loss": 0.25}, (1, "a")]
    assert np.array_equal(state["array"], trainer_state["array"]) and state["array"].dtype == np.int16
    restored = torch.optim.Adam(build_perception(config).parameters())
    restored.load_state_dict(state["optimizer"])  # int keys and tuples survive the JSON
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(restored.state_dict()["state"][0][key], value)
    assert load_metrics(directory) == {"fg_ari": 0.93}
    assert read_checkpoint_config(directory)[1]["training"] == {"lr": 1e-2, "steps": 100}
    assert load_trainer_state(save_checkpoint(model, config, tmp_path / "bare")) is None
    with pytest.raises(CheckpointError, match="without pickle"):
        save_checkpoint(model, config, tmp_path / "bad", trainer_state={"thing": object()})
    assert not (tmp_path / "bad").exists()


def test_save_replaces_atomically_and_keeps_the_old_checkpoint_when_interrupted(tmp_path, monkeypatch):
    model, config, _ = trained_model()
    directory = tmp_path / "checkpoint"
    save_checkpoint(model, config, directory, metrics={"version": 1})
    save_checkpoint(model, config, directory, metrics={"version": 2})
    assert load_metrics(directory) == {"version": 2}
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint"]  # no temporary leftovers

    import ocrl.checkpoint as checkpoint_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, config, directory, metrics={"version": 3})
    monkeypatch.undo()
    assert load_metrics(directory) == {"version": 2}
    load_checkpoint(directory)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint"]


def test_save_refuses_to_delete_other_files(tmp_path):
    model, config, _ = trained_model()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        save_checkpoint(model, config, tmp_path)
    with pytest.raises(CheckpointError, match="is a file"):
        save_checkpoint(model, config, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_not_a_checkpoint(tmp_path):
    assert issubclass(CheckpointError, ValueError)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'missing'} is not a checkpoint: it does not exist"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="lacks config.json and model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file")


@pytest.fixture
def saved(tmp_path):
    model, config, _ = trained_model()
    return save_checkpoint(model, config, tmp_path / "checkpoint")


def edit_config(directory, edit):
    path = directory / CONFIG_FILE
    header = json.loads(path.read_text())
    edit(header)
    path.write_text(json.dumps(header))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not an ocrl checkpoint config"),
        ('{"format": "something-else"}', "is not an ocrl checkpoint config"),
    ],
)
def test_malformed_config(saved, content, message):
    (saved / CONFIG_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(saved)
    assert str(saved / CONFIG_FILE) in str(error.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda header: header["model"]["encoder"].update(chanels=3),
            r"malformed model config: .*unknown keys \['chanels'\]",
        ),
        (
            lambda header: header["model"].update(slot_dim="sixteen"),
            "malformed model config: config.slot_dim must be int",
        ),
        (lambda header: header.update(format_version=99), "format_version 99"),
        (lambda header: header.update(model_kind="loci"), "unknown model_kind 'loci'"),
        (
            lambda header: header["model"]["encoder"].update(kind="vit"),
            "does not build a model: unknown encoder kind 'vit'",
        ),
    ],
)
def test_bad_config_values(saved, edit, message):
    edit_config(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda header: header["model"].update(slot_dim=32),
            r"shape mismatch \(file vs config\): aggregator.gru.bias_hh \(48,\) vs \(96,\).*\(58 in all\)",
        ),
        (lambda header: header["model"]["preheater"].update(enabled=False), r"unexpected: preheater\."),
        (lambda header: header["model"]["transitioner"].update(num_layers=2), r"missing: transitioner\.1\."),
    ],
)
def test_config_that_does_not_match_the_weights(saved, edit, message):
    edit_config(saved, edit)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(saved)
    assert str(saved / WEIGHTS_FILE) in str(error.value) and "does not match the config" in str(error.value)


@pytest.mark.parametrize("corrupt", [lambda data: data[: len(data) // 2], lambda data: b"\x00" * 64, lambda data: b""])
def test_corrupt_weights(saved, corrupt):
    path = saved / WEIGHTS_FILE
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"{path} is corrupt"):
        load_checkpoint(saved)


def test_a_flipped_bit_in_the_weights_is_caught_and_old_checkpoints_still_load(saved):
    path = saved / WEIGHTS_FILE
    original = path.read_bytes()
    data = bytearray(original)
    data[-3] ^= 0x01  # inside the last tensor: safetensors itself would load it silently
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_checkpoint(saved)
    path.write_bytes(original)
    edit_config(saved, lambda header: header.pop("sha256"))  # as written before ocrl recorded digests
    load_checkpoint(saved)


def test_checkpoints_and_pictures_get_ordinary_modes_under_the_umask(tmp_path):
    from ocrl.viz import save_png

    previous = os.umask(0o022)
    try:
        config = tiny_config()
        directory = save_checkpoint(build_perception(config), config, tmp_path / "checkpoint")
        picture = save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "picture.png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert {stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()} == {0o644}
    assert stat.S_IMODE(picture.stat().st_mode) == 0o644

"""Shared test helpers: the built-in task names and a tiny perception model, saved once per session as a checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, before anything imports dm_control

import pytest
import torch

from ocrl.perception import PerceptionConfig, build_perception, perception_config

TASKS = ["ObjectGoal", "ObjectInteraction", "ObjectComparison", "PropertyComparison", "MovingObjects"]


def tiny_config(
    family: str = "smoothsa", resolution: int = 32, encoder: str = "cnn", initializer: str = "gaussian"
) -> PerceptionConfig:
    """A preset shrunk to test size: the same structure, a few thousand parameters."""
    config = perception_config(family, "quick", resolution, num_slots=3)
    config.slot_dim = 16
    config.encoder.kind = encoder
    config.encoder.channels = 8
    config.encoder.kernel_size = 3
    config.encoder.feature_dim = 16
    config.initializer.kind = initializer
    config.aggregator.mlp_hidden_dim = 32
    config.preheater.num_heads = 2
    config.preheater.mlp_hidden_dim = 32
    config.transitioner.num_heads = 2
    config.transitioner.mlp_hidden_dim = 32
    config.decoder.broadcast_size = 8
    config.decoder.hidden_channels = 8
    config.decoder.num_layers = 2
    config.decoder.kernel_size = 3
    config.preheater.start_step = 0  # preheat from the start, as in the paper
    return config


@pytest.fixture(scope="session")
def tiny_perception(tmp_path_factory) -> str:
    """Path of a checkpoint of an untrained tiny SmoothSA model at 32x32 (3 slots of 16)."""
    from ocrl.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = tiny_config("smoothsa")
    model = build_perception(config)
    model.depth_supervised.fill_(True)
    return str(save_checkpoint(model, config, tmp_path_factory.mktemp("perception") / "tiny"))

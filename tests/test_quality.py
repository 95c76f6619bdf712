"""Quality checks with real models and real training (``make test-slow``; minutes on 2 CPU cores).

The fast suite checks that things run and compute what they should on known answers; these
check that the shipped model and short trainings still reach the figures the README quotes.
"""

from __future__ import annotations

import pytest

import ocrl
from ocrl.data.collect import collect
from ocrl.evaluation import evaluate_perception

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def goal_test(tmp_path_factory):
    """Held-out ObjectGoal episodes, seeded as the shipped model's metrics.json was measured."""
    return collect(
        "ocrl/ObjectGoal-v0", 24, tmp_path_factory.mktemp("data") / "goal-test", seed=1_000_000, progress=False
    ).path


def test_the_shipped_smoothsa_model_segments_held_out_object_goal_episodes(goal_test):
    """metrics.json reports video FG-ARI 0.87 over 36 episodes; these must stay well above chance."""
    result = evaluate_perception(
        ocrl.load_perception("smoothsa-sprites", device="cpu"), goal_test, num_frames=24, progress=False
    )
    assert result["videos"] >= 8
    assert result["fg_ari"] > 0.8 and result["fg_ari_frame"] > 0.8


def test_the_default_model_segments_and_keeps_the_background_out_of_its_slots(goal_test):
    """metrics.json of loci-sprites reports video FG-ARI 0.91 and mIoU 0.87 over 32 episodes
    (SmoothSA: 0.88 and 0.09)."""
    assert ocrl.DEFAULT_PERCEPTION == "loci-sprites"
    result = evaluate_perception(
        ocrl.load_perception(ocrl.DEFAULT_PERCEPTION, device="cpu"), goal_test, num_frames=24, progress=False
    )
    assert result["videos"] >= 8
    assert result["miou"] > 0.75 and result["fg_ari"] > 0.8


def test_a_short_world_model_training_beats_copy_last_state(goal_test, tmp_path):
    from ocrl.world_models import WorldModelTrainingConfig, evaluate_world_model, load_world_model, train_world_model

    train = collect("ocrl/ObjectGoal-v0", 60, tmp_path / "goal", progress=False).path
    training = WorldModelTrainingConfig(steps=400, batch_size=16)
    out = train_world_model(train, tmp_path / "world", training=training, device="cpu", progress=False)
    model = load_world_model(out, device="cpu")
    perception = ocrl.load_perception(model.config.perception, device="cpu")
    result = evaluate_world_model(model, goal_test, perception, horizons=(1,), context=4, progress=False)
    one_step = result["open_loop"]["1"]
    assert one_step["slot_mse"] < one_step["slot_mse_copy_last"]
    # not asserted: termination and reward recall, 0 at this budget (README: rare events missed)

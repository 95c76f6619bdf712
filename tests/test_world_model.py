"""World models: the slot transformer's structure, the code cache, training and resuming, the
imagination envs, evaluation, agents trained in imagination, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ocrl
from ocrl.checkpoint import CheckpointError
from ocrl.cli import main
from ocrl.data.collect import collect
from ocrl.data.store import RolloutStore
from ocrl.errors import OcrlError
from ocrl.slots import SlotCodes
from ocrl.world_models import (
    CodeCache,
    ImaginationEnv,
    ImaginationVecEnv,
    SlotWorldModel,
    WorldModelConfig,
    WorldModelTrainingConfig,
    encode_store,
    evaluate_world_model,
    load_world_model,
    train_world_model,
)
from ocrl.world_models.codes import perception_fingerprint
from ocrl.world_models.evaluation import open_loop
from ocrl.world_models.model import symexp, symlog, two_hot
from ocrl.wrappers import SlotEncoder

ENV_KWARGS = {"resolution": 32}


def small_config(**overrides) -> WorldModelConfig:
    values = {
        "num_slots": 3,
        "slot_dim": 16,
        "history": 4,
        "width": 32,
        "num_layers": 2,
        "num_heads": 2,
        "env_kwargs": ENV_KWARGS,
    }
    return WorldModelConfig(**{**values, **overrides})


def random_codes(batch: int, steps: int, slots: int = 3, dim: int = 16, seed: int = 0) -> SlotCodes:
    generator = torch.Generator().manual_seed(seed)
    return SlotCodes(
        torch.randn(batch, steps, slots, dim, generator=generator),
        torch.rand(batch, steps, slots, 4, generator=generator),
        torch.rand(batch, steps, slots, generator=generator),
    )


def trained_like(model: SlotWorldModel) -> SlotWorldModel:
    """Non-zero output weights (a fresh model predicts "nothing changes" exactly)."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.slot_out.weight, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return collect(
        "ocrl/ObjectGoal-v0",
        6,
        tmp_path_factory.mktemp("data") / "goal",
        num_envs=3,
        env_kwargs=ENV_KWARGS,
        progress=False,
    )


@pytest.fixture(scope="module")
def world_model(store, tiny_perception, tmp_path_factory):
    training = WorldModelTrainingConfig(steps=4, batch_size=4, rollout_steps=2, checkpoint_every=2)
    out = tmp_path_factory.mktemp("world") / "model"
    train_world_model(
        store.path,
        out,
        tiny_perception,
        model_config={"history": 4, "width": 32, "num_layers": 1, "num_heads": 2},
        training=training,
        progress=False,
    )
    return str(out)


def test_attention_is_causal_in_time_and_full_across_a_step():
    model = trained_like(SlotWorldModel(small_config()))
    codes, actions = random_codes(2, 4), torch.randint(0, 4, (2, 4))
    output = model(codes, actions)
    later = random_codes(2, 4, seed=1)
    changed = SlotCodes(
        *(
            torch.cat([getattr(codes, key)[:, :2], getattr(later, key)[:, 2:]], 1)
            for key in ("slots", "position", "presence")
        )
    )
    changed_output = model(changed, actions)
    torch.testing.assert_close(changed_output.codes.slots[:, :2], output.codes.slots[:, :2])
    torch.testing.assert_close(changed_output.reward[:, :2], output.reward[:, :2])
    assert not torch.allclose(changed_output.codes.slots[:, 2:], output.codes.slots[:, 2:])
    # a step's action reaches its slots' predictions
    other_actions = actions.clone()
    other_actions[:, 1] = (actions[:, 1] + 1) % 4
    moved = model(codes, other_actions)
    torch.testing.assert_close(moved.codes.slots[:, 0], output.codes.slots[:, 0])
    assert not torch.allclose(moved.codes.slots[:, 1], output.codes.slots[:, 1])


def test_predictions_follow_a_permutation_of_the_slots():
    model = trained_like(SlotWorldModel(small_config()))
    codes, actions = random_codes(2, 3), torch.randint(0, 4, (2, 3))
    output = model(codes, actions)
    order = torch.tensor([2, 0, 1])
    permuted = model(codes._map(lambda tensor: tensor[:, :, order]), actions)
    torch.testing.assert_close(permuted.codes.slots, output.codes.slots[:, :, order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted.reward, output.reward, atol=1e-5, rtol=1e-5)


def test_box_actions_and_bad_inputs():
    box = {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    model = SlotWorldModel(small_config(action_space=box))
    assert model(random_codes(1, 2), torch.zeros(1, 2, 2)).reward.shape == (1, 2)
    with pytest.raises(ValueError, match="3 components; the world model takes 2"):
        model(random_codes(1, 2), torch.zeros(1, 2, 3))
    discrete = SlotWorldModel(small_config())
    with pytest.raises(ValueError, match="Discrete\\(4\\)"):
        discrete(random_codes(1, 2), torch.full((1, 2), 4))
    with pytest.raises(ValueError, match="5 slots of 16"):
        discrete(random_codes(1, 2, slots=5), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(OcrlError, match="Discrete or Box"):
        small_config(action_space={"type": "MultiBinary", "n": 3})


def test_code_cache_holds_the_codes_the_wrappers_see(store, tiny_perception, tmp_path):
    perception = ocrl.load_perception(tiny_perception)
    cache = encode_store(perception, store, tmp_path / "codes", episodes_per_batch=4, progress=False)
    codes = CodeCache(cache)
    assert len(codes) == len(store) and (codes.num_slots, codes.slot_dim) == (3, 16)
    for index in (0, 5):  # in the first and second batch of episodes, of different lengths
        episode = store.episode(index)
        encoder = SlotEncoder(perception, 1)
        expected = [encoder.encode(frame[None], [t == 0]) for t, frame in enumerate(episode.frames())]
        start = codes.frame_offsets[index]
        got = codes.frames["slots"][start : start + episode.length + 1].numpy()
        np.testing.assert_allclose(got, np.concatenate([step["slots"] for step in expected]), atol=1e-3)
        np.testing.assert_array_equal(
            codes.steps["actions"][codes.step_offsets[index] : codes.step_offsets[index] + episode.length].numpy(),
            episode.actions,
        )
    # encoding again skips the cached episodes; another perception model's codes are refused
    stamps = [path.stat().st_mtime_ns for path in sorted(cache.glob("episode-*.npz"))]
    encode_store(perception, store, cache, progress=False)
    assert stamps == [path.stat().st_mtime_ns for path in sorted(cache.glob("episode-*.npz"))]
    with torch.no_grad():
        next(perception.parameters()).add_(1.0)
    with pytest.raises(OcrlError, match="another perception model"):
        encode_store(perception, store, cache, progress=False)
    (cache / "episode-000001.npz").write_bytes(b"truncated")
    with pytest.raises(OcrlError, match="episode-000001.npz"):
        CodeCache(cache)


def test_windows_pad_past_the_episode_end(store, tiny_perception, tmp_path):
    codes = CodeCache(encode_store(ocrl.load_perception(tiny_perception), store, tmp_path / "codes", progress=False))
    shortest = int(np.argmin(codes.lengths))
    length = int(codes.lengths[shortest]) + 3
    window = codes.windows(np.array([shortest]), np.array([0]), length)
    steps = int(codes.lengths[shortest])
    assert window.valid[0].tolist() == [1.0] * steps + [0.0] * 3
    last = codes.frames["slots"][codes.frame_offsets[shortest] + steps]
    for t in range(steps, length + 1):
        torch.testing.assert_close(window.codes.slots[0, t], last)
    terminated = store.episode(shortest).terminated
    np.testing.assert_array_equal(window.continues[0, :steps].numpy(), 1.0 - terminated)


def test_training_writes_a_checkpoint_and_resumes(world_model, store, tiny_perception):
    model = load_world_model(world_model)
    assert model.config.perception == tiny_perception and model.config.action_space["n"] == 4
    assert model.config.env_id == "ocrl/ObjectGoal-v0" and model.config.env_kwargs == ENV_KWARGS
    metrics = json.loads((__import__("pathlib").Path(world_model) / "metrics.json").read_text())
    assert (
        metrics["step"] == 4 and metrics["done"] and set(metrics["terms"]) >= {"slots", "reward", "continue", "rollout"}
    )
    before = {name: value.clone() for name, value in model.state_dict().items()}
    training = WorldModelTrainingConfig(steps=6, batch_size=4, rollout_steps=2, checkpoint_every=2)
    train_world_model(
        store.path,
        world_model,
        tiny_perception,
        model_config={"history": 4, "width": 32, "num_layers": 1, "num_heads": 2},
        training=training,
        progress=False,
    )
    assert json.loads((__import__("pathlib").Path(world_model) / "metrics.json").read_text())["step"] == 6
    after = load_world_model(world_model).state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    with pytest.raises(OcrlError, match="another model"):
        train_world_model(
            store.path,
            world_model,
            tiny_perception,
            model_config={"history": 3, "width": 32, "num_layers": 1, "num_heads": 2},
            training=training,
            progress=False,
        )
    with pytest.raises(OcrlError, match="num_slots come from the data"):
        train_world_model(store.path, world_model, tiny_perception, model_config={"num_slots": 3}, progress=False)


def test_training_lowers_the_loss(store, tiny_perception):
    from ocrl.world_models.training import window_loss

    codes = CodeCache(encode_store(ocrl.load_perception(tiny_perception), store, progress=False))
    torch.manual_seed(0)
    model = SlotWorldModel(small_config())
    model.set_slot_statistics(*codes.slot_statistics())
    training = WorldModelTrainingConfig(rollout_steps=2)
    window = codes.sample(16, 4, np.random.default_rng(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(window_loss(model, window, training)[0].detach())
    for _ in range(40):
        loss, _ = window_loss(model, window, training)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first


def test_the_outcome_head_also_learns_from_predicted_codes_without_moving_them(store, tiny_perception):
    """Imagination asks the outcome head about predicted codes: it is trained on the windows' one-step
    predictions too, but their gradient reaches only the head, never the dynamics."""
    from ocrl.world_models.training import window_loss

    codes = CodeCache(encode_store(ocrl.load_perception(tiny_perception), store, progress=False))
    torch.manual_seed(0)
    model = SlotWorldModel(small_config())
    model.set_slot_statistics(*codes.slot_statistics())
    torch.nn.init.normal_(model.outcome_head.out[-1].weight)  # untrained, it predicts every reward alike
    generator = np.random.default_rng(0)
    window, transitions = codes.sample(8, 4, generator), codes.transitions(16, generator)
    training = WorldModelTrainingConfig(rollout_steps=0)
    _, terms = window_loss(model, window, training, transitions=transitions)
    rewarded = dataclasses.replace(window, rewards=window.rewards + 1.0)
    _, changed = window_loss(model, rewarded, training, transitions=transitions)
    assert float(changed["reward"]) != float(terms["reward"])
    (terms["reward"] + terms["continue"]).backward()
    moved = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved and all(name.startswith("outcome_head.") for name in moved)


def test_cached_steps_give_what_the_model_gives_on_the_whole_episode():
    """Stepping with the attention cache, past the history (the ring buffer wraps), equals one
    forward over the episode so far; restarting an episode forgets its cache, while the others
    keep theirs."""
    model = trained_like(SlotWorldModel(small_config()))
    torch.nn.init.normal_(model.distance_bias)
    codes, actions = random_codes(3, 9), torch.randint(0, 4, (3, 9))
    full = model(codes, actions)
    cache, steps = model.new_cache(3), torch.zeros(3, dtype=torch.long)
    for t in range(9):
        output = model.step(codes[:, t], actions[:, t], cache, steps)
        torch.testing.assert_close(output.codes.slots, full.codes.slots[:, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(output.reward, full.reward[:, t], atol=1e-5, rtol=1e-5)
        steps += 1
    cache.clear(torch.tensor([1]))
    steps[1] = 0
    for t in range(9):  # episode 1 again from its start while the others go on, past a wrap
        restarted = model.step(codes[:, t], actions[:, t], cache, steps)
        torch.testing.assert_close(restarted.codes.slots[1], full.codes.slots[1, t], atol=1e-5, rtol=1e-5)
        steps += 1


def test_imagination_vec_env_steps_truncates_and_restarts(world_model):
    model = trained_like(load_world_model(world_model))
    starts = {
        "slots": np.random.default_rng(0).normal(size=(5, 3, 16)).astype(np.float32),
        "position": np.full((5, 3, 4), 0.5, np.float32),
        "presence": np.full((5, 3), 0.5, np.float32),
    }
    venv = ImaginationVecEnv(model, starts, num_envs=3, max_episode_steps=7, seed=0)
    observation = venv.reset()
    assert all(any(np.array_equal(observation["slots"][i], start) for start in starts["slots"]) for i in range(3))
    for _ in range(6):
        observation, rewards, dones, infos = venv.step(np.array([0, 1, 2]))
        assert not dones.any() and rewards.shape == (3,)
        assert venv.observation_space.contains({key: value[0] for key, value in observation.items()})
    observation, rewards, dones, infos = venv.step(np.array([3, 3, 3]))
    assert dones.all() and all(info["TimeLimit.truncated"] and info["episode"]["l"] == 7 for info in infos)
    assert set(infos[0]["terminal_observation"]) == {"slots", "position", "presence"}
    assert all(any(np.array_equal(observation["slots"][i], start) for start in starts["slots"]) for i in range(3))
    assert (venv.episodes.steps == 0).all()


def test_imagined_box_actions_step_as_the_model_predicts():
    """A world model of Box actions: imagination feeds the actions as vectors, and each imagined
    step is the model's prediction for the episode so far."""
    from ocrl.world_models.imagination import ImaginedEpisodes

    box = {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    model = trained_like(SlotWorldModel(small_config(action_space=box)))
    codes, actions = random_codes(2, 3), torch.rand(2, 3, 2) * 2 - 1
    codes.position.clamp_(0, 1)  # inside the bounds imagination clamps to
    episodes = ImaginedEpisodes(model, 2)
    episodes.observe(codes[:, 0])
    first = episodes.step(actions[:, 0].numpy())
    torch.testing.assert_close(
        first.codes.slots, model(codes[:, :1], actions[:, :1]).codes.slots[:, 0], atol=1e-5, rtol=1e-5
    )


def test_imagination_defaults_and_sb3_queries(world_model, monkeypatch):
    from stable_baselines3.common.monitor import Monitor

    from ocrl.world_models import imagination, starts_from_env

    model = load_world_model(world_model)
    starts = starts_from_env(model, count=2)  # the world model's own env and perception
    assert starts["slots"].shape == (2, model.config.num_slots, model.config.slot_dim)
    assert not np.array_equal(starts["slots"][0], starts["slots"][1])  # episodes seeded 0 and 1: two scenes
    # encoded in batches, each batch seeded on: three starts in batches of two are three scenes
    monkeypatch.setattr(imagination, "STARTS_BATCH", 2)
    batched = starts_from_env(model, count=3)
    assert batched["position"].shape[0] == 3
    np.testing.assert_allclose(batched["position"][:2], starts["position"], atol=1e-5)
    assert not np.allclose(batched["position"][2], batched["position"][1])
    venv = ImaginationVecEnv(model, starts, num_envs=3)
    assert venv.env_is_wrapped(Monitor) == [False, False, False] and venv.env_is_wrapped(Monitor, indices=[1]) == [
        False
    ]
    # VecEnv.seed then reset reproduces, for a single env too
    resets = []
    for _ in range(2):
        single = ImaginationVecEnv(model, starts, num_envs=1, seed=None)
        single.seed(3)
        resets.append(single.reset()["slots"])
    np.testing.assert_array_equal(resets[0], resets[1])
    env = ImaginationEnv(model, starts, max_episode_steps=5)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_imagination_env_passes_the_env_checkers(world_model):
    model = load_world_model(world_model)
    starts = {
        "slots": np.zeros((2, 3, 16), np.float32),
        "position": np.full((2, 3, 4), 0.5, np.float32),
        "presence": np.full((2, 3), 0.5, np.float32),
    }
    env = ImaginationEnv(model, starts, max_episode_steps=5)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(ImaginationEnv(model, starts, max_episode_steps=5))
    with pytest.raises(ValueError, match=r"\(N, 3, 16\)"):
        ImaginationVecEnv(model, {**starts, "slots": np.zeros((2, 4, 16), np.float32)})


def test_open_loop_of_an_untrained_model_is_the_copy_last_baseline(store, tiny_perception, tmp_path):
    perception = ocrl.load_perception(tiny_perception)
    codes = CodeCache(encode_store(perception, store, progress=False))
    model = SlotWorldModel(small_config(perception=tiny_perception))  # zero output layer: nothing changes
    model.set_slot_statistics(*codes.slot_statistics())
    model.eval()
    window = codes.windows(np.array([0]), np.array([0]), 4)
    predicted = open_loop(model, window.codes, window.actions, context=2, steps=3)
    for step in range(3):
        torch.testing.assert_close(predicted.slots[:, step], window.codes.slots[:, 1])
    result = evaluate_world_model(model, store.path, perception, horizons=(1, 3), context=2, stride=3, progress=False)
    for horizon in ("1", "3"):
        scores = result["open_loop"][horizon]
        assert scores["slot_mse"] == pytest.approx(scores["slot_mse_copy_last"])
        assert scores["psnr"] == pytest.approx(scores["psnr_copy_last"])
        assert 0 <= scores["fg_ari"] <= 1
    assert math.isnan(result["reward_precision"]) or 0 <= result["reward_precision"] <= 1
    assert result["transitions"] == sum(episode.length for episode in map(store.episode, range(len(store))))
    other = ocrl.load_perception(tiny_perception)
    other_model = SlotWorldModel(small_config(num_slots=4))
    with pytest.raises(ValueError, match="4 slots of 16"):
        evaluate_world_model(other_model, store.path, other, progress=False)


def test_agent_trains_in_imagination_and_is_evaluated_in_the_real_env(world_model, tiny_perception, tmp_path):
    from ocrl.agents import AgentConfig, load_agent, train_agent

    config = AgentConfig(
        env_id="ocrl/ObjectGoal-v0",
        perception=tiny_perception,
        env_kwargs=ENV_KWARGS,
        imagination=world_model,
        imagination_starts=8,
        algo_kwargs={"n_steps": 16, "batch_size": 32},
    )
    metrics = train_agent(config, tmp_path / "agent", steps=64, num_envs=4, eval_episodes=2, progress=False)
    assert metrics["episodes"] == 2 and 0 <= metrics["success_rate"] <= 1
    assert load_agent(tmp_path / "agent")[1].imagination == world_model
    # one of the sub-envs real: the real env's slot codes fit the imagined ones' space
    mixed = train_agent(
        dataclasses.replace(config, real_envs=1),
        tmp_path / "mixed",
        steps=64,
        num_envs=4,
        eval_episodes=2,
        progress=False,
    )
    assert mixed["num_timesteps"] == 64
    with pytest.raises(OcrlError, match="leaves none"):
        train_agent(dataclasses.replace(config, real_envs=4), tmp_path / "none", steps=64, num_envs=4, progress=False)
    with pytest.raises(OcrlError, match="models codes of perception"):
        train_agent(
            AgentConfig(env_id="ocrl/ObjectGoal-v0", env_kwargs=ENV_KWARGS, imagination=world_model),
            tmp_path / "other",
            steps=16,
            progress=False,
        )
    continuous = AgentConfig(
        env_id="ocrl/ObjectGoal-v0",
        perception=tiny_perception,
        env_kwargs={**ENV_KWARGS, "continuous": True},
        imagination=world_model,
    )
    with pytest.raises(OcrlError, match="acts in"):
        train_agent(continuous, tmp_path / "continuous", steps=16, progress=False)
    with pytest.raises(ValueError, match="imagination on slot codes"):
        AgentConfig(observation="pixels", imagination=world_model)


def test_oracle_world_model_learns_true_objects_and_teaches_a_ground_truth_agent(store, tmp_path, capsys):
    from ocrl.agents import AgentConfig, GroundTruthObservation, load_agent, train_agent

    out = tmp_path / "oracle"
    train_world_model(
        store.path,
        out,
        "ground_truth",
        model_config={"history": 4, "width": 32, "num_layers": 1, "num_heads": 2},
        training=WorldModelTrainingConfig(steps=2, batch_size=4, rollout_steps=2),
        progress=False,
    )
    # the cached codes are the rows the oracle agent sees, frame by frame
    codes = CodeCache(next((Path(store.path) / "codes").glob("ground-truth-*")))
    env = GroundTruthObservation(ocrl.envs.make("ocrl/ObjectGoal-v0", **ENV_KWARGS))
    episode = store.episode(1)
    seen = [env.reset(seed=episode.seed)[0]] + [env.step(action)[0] for action in episode.actions]
    start = codes.frame_offsets[1]
    for key in ("slots", "position", "presence"):
        got = codes.frames[key][start : start + episode.length + 1].numpy()
        np.testing.assert_allclose(got, np.stack([step[key] for step in seen]), atol=1e-6)
    agent = AgentConfig(
        env_id="ocrl/ObjectGoal-v0",
        observation="ground_truth",
        env_kwargs=ENV_KWARGS,
        imagination=str(out),
        imagination_starts=8,
        algo_kwargs={"n_steps": 16, "batch_size": 32},
    )
    metrics = train_agent(agent, tmp_path / "agent", steps=64, num_envs=4, eval_episodes=2, progress=False)
    assert metrics["episodes"] == 2
    # fine-tuned in the real env, it starts from the weights it learned in imagination
    real = dataclasses.replace(agent, imagination=None)
    train_agent(real, tmp_path / "real", steps=0, num_envs=4, eval_episodes=2, progress=False, init=tmp_path / "agent")
    learned, started = (load_agent(tmp_path / name)[0].state_dict() for name in ("agent", "real"))
    assert learned.keys() == started.keys() and all(torch.equal(learned[k], started[k]) for k in learned)
    with pytest.raises(OcrlError, match="another agent"):
        train_agent(dataclasses.replace(real, hidden_dim=32), tmp_path / "wider", steps=0, init=tmp_path / "agent")
    capsys.readouterr()
    assert main(["eval-world-model", str(out), "--data", str(store.path), "--horizons", "1", "--context", "2"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert "slot_mse" in scores["open_loop"]["1"] and "psnr" not in scores["open_loop"]["1"]  # rows, no decoder
    with pytest.raises(OcrlError, match="--observation ground_truth"):
        train_agent(
            AgentConfig(env_id="ocrl/ObjectGoal-v0", env_kwargs=ENV_KWARGS, imagination=str(out)),
            tmp_path / "slots",
            steps=16,
            progress=False,
        )


def test_cli_trains_and_evaluates_a_world_model(store, tiny_perception, tmp_path, capsys):
    out = tmp_path / "world"
    arguments = [
        "--data",
        str(store.path),
        "--perception",
        tiny_perception,
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--width",
        "32",
        "--layers",
        "1",
        "--history",
        "4",
        "--rollout-steps",
        "1",
    ]
    assert main(["train-world-model", *arguments]) == 0
    config = json.loads((out / "config.json").read_text())["model"]
    assert (config["width"], config["num_layers"], config["history"]) == (32, 1, 4)
    assert (
        main(
            [
                "eval-world-model",
                str(out),
                "--data",
                str(store.path),
                "--horizons",
                "1",
                "2",
                "--context",
                "2",
                "--out",
                str(tmp_path / "scores.json"),
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["open_loop"]) == {"1", "2"}
    assert (
        main(
            [
                "viz",
                tiny_perception,
                "--data",
                str(store.path),
                "--world-model",
                str(out),
                "--frames",
                "5",
                "--context",
                "2",
                "--out",
                str(tmp_path / "imagined"),
            ]
        )
        == 0
    )
    from PIL import Image

    assert (
        Image.open(tmp_path / "imagined.png").size[1] > 4 * 32 and Image.open(tmp_path / "imagined.gif").n_frames == 5
    )
    capsys.readouterr()
    assert main(["train-world-model", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "w")]) == 2
    assert main(["eval-world-model", tiny_perception, "--data", str(store.path)]) == 2
    assert main(["train-world-model", *arguments[:-4], "--history", "2", "--rollout-steps", "3"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("ocrl ") and "error:" in line for line in errors), errors
    assert "not a world model" in errors[1] and "rollout_steps" in errors[2]


def test_the_cache_lives_in_the_store_by_default(store, tiny_perception):
    perception = ocrl.load_perception(tiny_perception)
    cache = encode_store(perception, store, progress=False)
    assert cache.parent == store.path / "codes" and os.path.exists(cache / "info.json")


def _distributed_worker(rank: int, world_size: int, port: int, data: str, perception: str, out: str) -> None:
    os.environ.update(
        WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    training = WorldModelTrainingConfig(steps=2, batch_size=2, rollout_steps=2)
    train_world_model(
        data,
        out,
        perception,
        model_config={"history": 4, "width": 32, "num_layers": 1, "num_heads": 2},
        training=training,
        device="cpu",
        progress=False,
    )
    torch.distributed.destroy_process_group()


def test_distributed_training_with_two_gloo_processes(store, tiny_perception, tmp_path):
    import socket

    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    out = tmp_path / "model"
    torch.multiprocessing.spawn(
        _distributed_worker, args=(2, port, str(store.path), tiny_perception, str(out)), nprocs=2, join=True
    )
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # only rank 0 wrote


def hand_made_store(tmp_path, perception) -> Path:
    """Two episodes (12 and 7 steps) of blank 8x8 frames whose cached codes are a ramp: every
    slot component of step t is t. Episode 0 ends with reward 1 and terminates; episode 1 has
    reward 0.5 at steps 3 and 5 and is truncated."""
    from ocrl.data.store import RolloutWriter, _save_npz, episode_file_name, write_atomically
    from ocrl.world_models.codes import INFO_FILE

    header = {
        "env_id": "ocrl/ObjectGoal-v0",
        "env_kwargs": {},
        "seed": 0,
        "policy": {"kind": "random"},
        "frame_source": "observation",
        "frame_shape": [8, 8, 3],
        "action_space": {"type": "Discrete", "n": 4, "start": 0},
        "ground_truth": [],
    }
    path = tmp_path / "hand-made"
    writer = RolloutWriter(path, header)
    cache = path / "codes" / perception_fingerprint(perception)
    cache.mkdir(parents=True)
    write_atomically(
        cache / INFO_FILE,
        lambda file: file.write(json.dumps({"fingerprint": perception_fingerprint(perception)}).encode()),
    )
    for index, (steps, reward_steps, reward, terminal) in enumerate([(12, [11], 1.0, True), (7, [3, 5], 0.5, False)]):
        rewards, terminated, truncated = np.zeros(steps), np.zeros(steps, bool), np.zeros(steps, bool)
        rewards[reward_steps] = reward
        (terminated if terminal else truncated)[-1] = True
        actions = np.arange(steps) % 4
        writer.add(index, index, np.zeros((steps + 1, 8, 8, 3), np.uint8), actions, rewards, terminated, truncated)
        ramp = np.arange(steps + 1, dtype=np.float32)
        codes = {
            "slots": np.broadcast_to(ramp[:, None, None], (steps + 1, 3, 16)).copy(),
            "position": np.zeros((steps + 1, 3, 4), np.float32),
            "presence": np.ones((steps + 1, 3), np.float32),
            "actions": actions,
            "rewards": rewards.astype(np.float32),
            "terminated": terminated,
            "truncated": truncated,
        }
        write_atomically(cache / episode_file_name(index), lambda file, codes=codes: _save_npz(file, codes))
    writer.close()
    return path


def constant_heads(model: SlotWorldModel, reward: float, continue_logit: float) -> SlotWorldModel:
    """The model with its reward and continuation heads fixed to constants."""
    bins = two_hot(symlog(torch.tensor(reward)), model.reward_bins)
    with torch.no_grad():
        model.outcome_head.out[-1].weight.zero_()
        model.outcome_head.out[-1].bias.copy_(torch.cat([torch.log(bins + 1e-12), torch.tensor([continue_logit])]))
    return model.eval()


def test_evaluation_on_a_hand_made_store_gives_the_known_answers(tiny_perception, tmp_path):
    perception = ocrl.load_perception(tiny_perception)
    path = hand_made_store(tmp_path, perception)
    model = constant_heads(SlotWorldModel(small_config(perception=tiny_perception)), reward=0.0, continue_logit=3.0)
    result = evaluate_world_model(
        model, path, perception, horizons=(1, 3), context=2, stride=2, max_windows=None, progress=False
    )
    # windows of context - 1 + 3 = 4 steps every 2 steps: 0, 2, 4, 6, 8 of episode 0 and 0, 2 of episode 1
    assert result["windows"] == 7 and result["episodes"] == 2
    # the untrained model holds the last true codes still; on a ramp of slope 1 it is off by h at horizon h
    for horizon in (1, 3):
        assert result["open_loop"][str(horizon)]["slot_mse"] == pytest.approx(horizon**2)
        assert result["open_loop"][str(horizon)]["slot_mse_copy_last"] == pytest.approx(horizon**2)
    assert (result["transitions"], result["rewarded_transitions"], result["terminations"]) == (19, 3, 1)
    # never predicts a reward or a termination: nothing to be precise about, nothing found
    assert math.isnan(result["reward_precision"]) and result["reward_recall"] == 0
    assert math.isnan(result["termination_precision"]) and result["termination_recall"] == 0
    assert result["reward_mse"] == pytest.approx((1.0 + 0.25 + 0.25) / 19, rel=1e-4)
    # always predicts reward 1 and a termination: right once each
    model = constant_heads(model, reward=1.0, continue_logit=-3.0)
    result = evaluate_world_model(model, path, perception, horizons=(1,), context=2, stride=2, progress=False)
    assert result["reward_precision"] == round(1 / 19, 5) and result["reward_recall"] == round(1 / 3, 5)
    assert result["termination_precision"] == round(1 / 19, 5) and result["termination_recall"] == 1.0
    # always predicts 0.6: the nearest reward value is 0.5, right twice
    model = constant_heads(model, reward=0.6, continue_logit=3.0)
    result = evaluate_world_model(model, path, perception, horizons=(1,), context=2, stride=2, progress=False)
    assert result["reward_precision"] == round(2 / 19, 5) and result["reward_recall"] == round(2 / 3, 5)


def test_two_hot_codes_a_reward_exactly_and_its_loss_is_least_at_the_true_reward():
    bins = torch.linspace(-20, 20, 255)
    values = torch.tensor([0.0, 1.0, -3.5, 1e10, 0.4])
    weights = two_hot(symlog(values), bins)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    assert int((weights > 0).sum(-1).max()) <= 2
    decoded = symexp((weights * bins).sum(-1))
    torch.testing.assert_close(decoded[[0, 1, 2, 4]], values[[0, 1, 2, 4]], atol=1e-4, rtol=1e-4)
    assert decoded[3] == pytest.approx(symexp(torch.tensor(20.0)).item(), rel=1e-4)  # clipped to the last bin
    model = SlotWorldModel(small_config())
    logits = torch.log(two_hot(symlog(torch.tensor([1.0])), model.reward_bins) + 1e-12)
    assert model.reward_loss(logits, torch.tensor([1.0])) < model.reward_loss(logits, torch.tensor([0.0]))


def test_rewarded_windows_are_drawn_as_often_as_asked(tiny_perception, tmp_path):
    perception = ocrl.load_perception(tiny_perception)
    path = hand_made_store(tmp_path, perception)
    codes = CodeCache(path / "codes" / perception_fingerprint(perception))
    generator = np.random.default_rng(0)
    window = codes.sample(200, 4, generator, reward_fraction=1.0)
    holds_reward = ((window.rewards != 0) & (window.valid > 0)).any(1)
    assert bool(holds_reward.all())
    # each of the 3 rewarded transitions is drawn, at every place in the window
    places = {(float(window.rewards[row].abs().sum()), int(window.rewards[row].nonzero()[0])) for row in range(200)}
    assert len({place for _, place in places}) == 4

    def share(reward_fraction: float) -> float:
        window = codes.sample(2000, 4, generator, reward_fraction=reward_fraction)
        return float(((window.rewards != 0) & (window.valid > 0)).any(1).float().mean())

    # the asked fraction, plus the windows among the others that hold a reward anyway
    assert share(0.5) == pytest.approx(0.5 + 0.5 * share(0.0), abs=0.05)
    # single transitions for the outcome head: events as often as asked, with the codes they lead to
    events = codes.transitions(100, generator, event_fraction=1.0)
    assert bool(((events.rewards != 0) | (events.continues == 0)).all())
    assert sorted(set(events.codes.slots[:, 0, 0].tolist())) == [4.0, 6.0, 12.0]  # the ramp: frame t holds t
    mixed = codes.transitions(2000, generator, event_fraction=0.25)
    assert float(((mixed.rewards != 0) | (mixed.continues == 0)).float().mean()) == pytest.approx(
        0.25 + 0.75 * 3 / 19, abs=0.04
    )


def test_each_loader_checks_the_kind_whatever_was_imported_before(world_model, tiny_perception):
    assert isinstance(ocrl.load(world_model), SlotWorldModel) and not isinstance(
        ocrl.load(tiny_perception), SlotWorldModel
    )
    with pytest.raises(CheckpointError, match="slot_world_model checkpoint, not a perception model"):
        ocrl.load_perception(world_model)
    # a fresh process: core ocrl imports neither world models nor agents, and the kind table
    # still knows a world model when it meets one
    script = (
        "import sys, ocrl, ocrl.checkpoint, ocrl.wrappers\n"
        "assert not [name for name in sys.modules if name.startswith(('ocrl.agents', 'ocrl.world_models'))]\n"
        "try:\n    ocrl.load_perception(sys.argv[1])\nexcept ocrl.checkpoint.CheckpointError as error:\n    print(error)\n"
        "print(type(ocrl.load(sys.argv[1])).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(world_model)], capture_output=True, text=True, check=True
    )
    assert "not a perception model" in result.stdout and result.stdout.strip().endswith("SlotWorldModel")


def small_dream(**changes):
    """A DreamConfig of the oracle loop at test sizes: 16-step rollouts, one PPO rollout a round."""
    from ocrl.world_models import DreamConfig

    sizes = {
        "env_kwargs": ENV_KWARGS,
        "observation": "ground_truth",
        "rounds": 2,
        "episodes_per_round": 3,
        "world_model_steps": 2,
        "agent_steps": 256,
        "eval_episodes": 2,
        "world_model": {"history": 4, "width": 32, "num_layers": 1, "num_heads": 2},
        "algo_kwargs": {"n_steps": 16, "batch_size": 64, "n_epochs": 2},
        "hidden_dim": 16,
        "imagination_starts": 8,
    }
    return DreamConfig(**{**sizes, **changes})


def test_dream_loop_collects_trains_in_imagination_evaluates_and_resumes(tmp_path, capsys):
    from ocrl.agents import load_agent
    from ocrl.world_models import dream

    config = small_dream(symmetric=True)
    rows = dream(config, tmp_path / "run", progress=False)
    assert [row["round"] for row in rows] == [0, 1]
    assert rows[0]["real_env_steps"] < rows[1]["real_env_steps"] and rows[1]["world_model_steps"] == 4
    assert rows[1]["imagined_steps"] > rows[0]["imagined_steps"] and 0 <= rows[1]["success_rate"] <= 1
    # round 1 was collected by the agent of round 0, acting on the true objects
    assert RolloutStore.open(tmp_path / "run" / "data" / "round-01").header["policy"]["kind"] == "ocrl-agent"
    assert load_world_model(tmp_path / "run" / "world-model").config.perception == "ground_truth"
    _, agent = load_agent(tmp_path / "run" / "agent")
    assert agent.symmetric and agent.hidden_dim == 16
    # a rerun has nothing to do; more rounds go on; another config is refused
    stamp = (tmp_path / "run" / "agent" / "model.safetensors").stat().st_mtime_ns
    assert dream(config, tmp_path / "run", progress=False) == rows
    assert (tmp_path / "run" / "agent" / "model.safetensors").stat().st_mtime_ns == stamp
    longer = dataclasses.replace(config, rounds=3)
    assert [row["round"] for row in dream(longer, tmp_path / "run", progress=False)] == [0, 1, 2]
    # the run stored every size of its world model: a rerun that names none keeps them
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["world_model"]
    assert saved["mlp_ratio"] == WorldModelConfig.mlp_ratio and saved["width"] == 32
    assert len(dream(dataclasses.replace(longer, world_model={}), tmp_path / "run", progress=False)) == 3
    with pytest.raises(OcrlError, match="another config"):
        dream(dataclasses.replace(longer, world_model={"width": 64}), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="not num_slots"):
        dataclasses.replace(config, world_model={"num_slots": 3})
    with pytest.raises(OcrlError, match="another config"):
        dream(dataclasses.replace(config, episodes_per_round=4), tmp_path / "run", progress=False)
    assert main(["dream", "--out", str(tmp_path / "cli"), "--observation", "pixels"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dream_agents_may_also_act_in_real_sub_envs_whose_steps_count_as_real(tmp_path):
    from ocrl.agents import load_agent
    from ocrl.world_models import dream

    config = small_dream(rounds=1, real_envs=4)
    [row] = dream(config, tmp_path / "run", progress=False)
    collected = sum(record.length for record in RolloutStore.open(tmp_path / "run" / "data" / "round-00").episodes)
    # one rollout of 16 steps in each of the 16 sub-envs: 4 of them real
    assert row["imagined_steps"] == 12 * 16 and row["real_env_steps"] == collected + 4 * 16
    assert load_agent(tmp_path / "run" / "agent")[1].real_envs == 4
    with pytest.raises(ValueError, match="0 to 15"):
        dataclasses.replace(config, real_envs=16)

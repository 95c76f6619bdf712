"""Agents: the slot-set extractor (permutation invariance, no train/eval gap), the ground-truth
oracle, and training, saving, resuming and evaluating with PPO, SAC and DQN."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TASKS
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ocrl.envs
from ocrl.agents import (
    AgentConfig,
    GroundTruthObservation,
    SlotSetExtractor,
    SymmetricPolicy,
    evaluate_policy_in_env,
    load_agent,
    train_agent,
)
from ocrl.agents import training as agent_training
from ocrl.agents.extractors import KINDS
from ocrl.agents.symmetric import SQUARE_SYMMETRIES, move_permutations
from ocrl.agents.training import read_curve
from ocrl.checkpoint import load_metrics, load_trainer_state, save_checkpoint
from ocrl.envs.tasks import MOVES
from ocrl.errors import OcrlError
from ocrl.slots import observation_space


def extractor_and_batch(kind: str, batch: int) -> tuple[SlotSetExtractor, dict[str, torch.Tensor]]:
    """An extractor over 5 slots of 8 and a random batch of observations (seeded)."""
    space = observation_space(5, 8)
    torch.manual_seed(0)
    space.seed(0)
    observation = {
        key: torch.as_tensor(np.stack([space[key].sample() for _ in range(batch)])).clamp(-5, 5) for key in space.spaces
    }
    return SlotSetExtractor(space, kind=kind, features_dim=32), observation


@pytest.mark.parametrize("kind", KINDS)
def test_extractor_is_permutation_invariant_and_the_same_in_train_and_eval(kind):
    extractor, observation = extractor_and_batch(kind, 4)
    features = extractor(observation)
    assert features.shape == (4, 32)
    order = torch.randperm(5)
    permuted = {key: value[:, order] for key, value in observation.items()}
    torch.testing.assert_close(extractor(permuted), features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(extractor.eval()(observation), extractor.train()(observation))
    # it reads every slot: changing one changes the features
    changed = {key: value.clone() for key, value in observation.items()}
    changed["slots"][:, 2, 0] += 1.0
    assert not torch.allclose(extractor(changed), features)
    with pytest.raises(ValueError, match="unknown extractor kind"):
        SlotSetExtractor(observation_space(5, 8), kind="mlp")


@pytest.mark.parametrize("kind", ["context", "relation", "deepsets"])
def test_pooled_extractors_ignore_absent_slots(kind):
    # the oracle pads its set with absent rows: what they hold must not reach the policy
    extractor, observation = extractor_and_batch(kind, 3)
    observation["presence"][:, 4] = 0.0
    changed = {key: value.clone() for key, value in observation.items()}
    changed["slots"][:, 4] += 3.0
    changed["position"][:, 4] -= 0.5
    torch.testing.assert_close(extractor(changed), extractor(observation))


def test_ground_truth_oracle_reports_the_true_objects():
    env = GroundTruthObservation(ocrl.envs.make("ocrl/ObjectGoal-v0"))
    observation, info = env.reset(seed=0)
    truth = info["ground_truth"]
    count = len(truth["object_shape"])
    assert env.observation_space.contains(observation)
    np.testing.assert_allclose(observation["position"][:count, :2], truth["object_position"])
    np.testing.assert_allclose(observation["slots"][:count, :3], truth["object_colour"])
    assert observation["presence"].sum() == count
    sb3_check_env(GroundTruthObservation(ocrl.envs.make("ocrl/ObjectGoal-v0")), warn=False)
    with pytest.raises(ValueError, match="pass max_objects"):
        GroundTruthObservation(gym.make("CartPole-v1"))


@pytest.mark.parametrize("name", TASKS)
def test_the_oracle_of_every_built_in_task_has_a_row_for_each_object_it_shows(name):
    # ObjectInteraction's goal region is an object beyond num_objects (a crash until 2026-12-05)
    env = GroundTruthObservation(ocrl.envs.make(f"ocrl/{name}-v0", resolution=32, num_objects=(3, 4)))
    for seed in range(4):
        observation, info = env.reset(seed=seed)
        assert observation["presence"].sum() == len(info["ground_truth"]["object_shape"])
        assert env.observation_space.contains(observation)


def quick_ppo(config_kwargs, out, steps=128, **kwargs):
    config = AgentConfig(**config_kwargs, algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1})
    return config, train_agent(config, out, steps=steps, num_envs=2, eval_episodes=2, progress=False, **kwargs)


def test_slot_agent_trains_saves_resumes_and_reloads(tiny_perception, tmp_path):
    out = tmp_path / "agent"
    config, metrics = quick_ppo(
        {"env_id": "ocrl/ObjectGoal-v0", "perception": tiny_perception}, out, checkpoint_every=64
    )
    assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0 and np.isfinite(metrics["mean_return"])
    assert load_trainer_state(out)["num_timesteps"] == 128
    policy, loaded = load_agent(out)
    assert loaded == config and loaded.perception == tiny_perception
    before = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    # same command with more steps: resumes from step 128, not from 0
    quick_ppo({"env_id": "ocrl/ObjectGoal-v0", "perception": tiny_perception}, out, steps=192)
    assert load_trainer_state(out)["num_timesteps"] == 192
    resumed, _ = load_agent(out)
    assert any(not torch.equal(before[name], tensor) for name, tensor in resumed.state_dict().items())
    # the reloaded policy acts like the saved one
    evaluation = evaluate_policy_in_env(resumed, loaded, episodes=2, progress=False)
    assert evaluation["episodes"] == 2
    with pytest.raises(OcrlError, match="another config"):
        quick_ppo({"env_id": "ocrl/ObjectComparison-v0", "perception": tiny_perception}, out)


@pytest.mark.parametrize(
    "config",
    [
        AgentConfig(
            env_id="ocrl/ObjectGoal-v0",
            algo="dqn",
            observation="ground_truth",
            extractor="deepsets",
            algo_kwargs={"learning_starts": 32, "buffer_size": 500},
        ),
        AgentConfig(
            env_id="ocrl/ObjectGoalContinuous-v0",
            algo="sac",
            observation="ground_truth",
            features_dim=32,
            algo_kwargs={"learning_starts": 64, "buffer_size": 500, "batch_size": 32},
        ),
        AgentConfig(
            env_id="ocrl/ObjectGoal-v0",
            algo="ppo",
            observation="pixels",
            env_kwargs={"resolution": 48},
            algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
        ),
    ],
    ids=["dqn-oracle", "sac-oracle", "ppo-pixels"],
)
def test_other_algorithms_and_baselines_train_and_reload(config, tmp_path):
    metrics = train_agent(config, tmp_path / "agent", steps=96, num_envs=2, eval_episodes=2, progress=False)
    assert metrics["episodes"] == 2
    policy, loaded = load_agent(tmp_path / "agent")
    assert loaded == config


def test_a_linear_learning_rate_falls_to_zero_over_training(tmp_path):
    config = AgentConfig(
        observation="ground_truth",
        algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1, "learning_rate": "lin_1e-3"},
    )
    train_agent(config, tmp_path / "agent", steps=128, num_envs=2, eval_episodes=2, progress=False)
    _, loaded = load_agent(tmp_path / "agent")
    assert loaded == config
    # two rollouts of 64 steps: the first update at half the start, the last at 0
    (optimizer,) = load_trainer_state(tmp_path / "agent")["optimizers"].values()
    assert [group["lr"] for group in optimizer["param_groups"]] == [0.0]
    for value in ["lin_0", "lin_x", "1e-3", "exp_1e-3"]:
        with pytest.raises(ValueError, match="'lin_<start>'"):
            AgentConfig(algo_kwargs={"learning_rate": value})


def test_bad_agent_configs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm"):
        AgentConfig(algo="a2c")
    with pytest.raises(ValueError, match="only with observation 'slots'"):
        AgentConfig(observation="pixels", perception="smoothsa-sprites")
    with pytest.raises(ValueError, match="oracle's number of rows"):
        AgentConfig(observation="slots", max_objects=6)
    with pytest.raises(ValueError, match="with imagination"):
        AgentConfig(real_envs=2)
    with pytest.raises(ValueError, match="imagination_starts must be positive"):
        AgentConfig(imagination_starts=0)
    with pytest.raises(OcrlError, match="dqn cannot train"):
        train_agent(
            AgentConfig(env_id="ocrl/ObjectGoalContinuous-v0", algo="dqn", observation="ground_truth"),
            tmp_path / "a",
            steps=10,
            progress=False,
        )
    with pytest.raises(ValueError, match="no perception model"):
        train_agent(AgentConfig(perception="no-such-model"), tmp_path / "b", steps=10, progress=False)


def test_concatenated_vec_envs_step_as_their_parts_do():
    config = AgentConfig(observation="ground_truth", env_kwargs={"resolution": 32})
    parts = [agent_training.make_vec_env(config, 2, seed=0), agent_training.make_vec_env(config, 1, seed=5)]
    alone = [agent_training.make_vec_env(config, 2, seed=0), agent_training.make_vec_env(config, 1, seed=5)]
    joined = agent_training.ConcatVecEnv(parts)
    assert joined.num_envs == 3 and joined.get_attr("render_mode", [1, 2]) == [None, None]
    first = joined.reset()
    expected = [venv.reset() for venv in alone]
    for key in first:
        np.testing.assert_array_equal(first[key], np.concatenate([part[key] for part in expected]))
    actions = np.random.default_rng(0).integers(4, size=(30, 3))
    for step in actions:
        observation, rewards, dones, infos = joined.step(step)
        results = [alone[0].step(step[:2]), alone[1].step(step[2:])]
        for key in observation:
            np.testing.assert_array_equal(observation[key], np.concatenate([r[0][key] for r in results]))
        np.testing.assert_array_equal(rewards, np.concatenate([r[1] for r in results]))
        np.testing.assert_array_equal(dones, np.concatenate([r[2] for r in results]))
        assert [info.keys() for info in infos] == [info.keys() for r in results for info in r[3]]
    pixels = agent_training.make_vec_env(AgentConfig(observation="pixels", env_kwargs={"resolution": 32}))
    with pytest.raises(ValueError, match="different spaces"):
        agent_training.ConcatVecEnv([joined, pixels])


def _turned(observation: dict[str, torch.Tensor], symmetry: np.ndarray) -> dict[str, torch.Tensor]:
    position = observation["position"].clone()
    position[..., :2] = position[..., :2] @ torch.as_tensor(symmetry, dtype=torch.float32).T
    return {**observation, "position": position}


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_symmetric_policy_acts_alike_in_a_turned_or_mirrored_scene(symmetric):
    """Turning every position by a symmetry of the square turns the move probabilities the same
    way and keeps the value; a plain policy does not (the test can tell them apart)."""
    policy = agent_training.build_policy(AgentConfig(observation="ground_truth", symmetric=symmetric))
    assert isinstance(policy, SymmetricPolicy) == symmetric
    rows, width = policy.observation_space["slots"].shape
    torch.manual_seed(0)
    observation = {
        "slots": torch.rand(3, rows, width),
        "position": torch.rand(3, rows, 4) * 2 - 1,
        "presence": torch.ones(3, rows),
    }
    permutations = move_permutations(MOVES)
    with torch.no_grad():
        probabilities = policy.get_distribution(observation).distribution.probs
        value = policy.predict_values(observation)
        gaps = []
        for symmetry, permutation in zip(SQUARE_SYMMETRIES, permutations):
            turned = _turned(observation, symmetry)
            moved = policy.get_distribution(turned).distribution.probs[:, permutation]
            gaps.append(max((moved - probabilities).abs().max(), (policy.predict_values(turned) - value).abs().max()))
    # every symmetry maps the 4 moves onto the 4 moves, the identity onto themselves
    assert (np.sort(permutations, axis=1) == np.arange(4)).all() and (permutations[0] == np.arange(4)).all()
    if symmetric:
        assert max(gaps) < 1e-5
    else:
        assert max(gaps[1:]) > 1e-3


def test_a_symmetric_agent_trains_and_reloads_and_is_refused_where_it_has_no_meaning(tmp_path):
    config = AgentConfig(
        observation="ground_truth", symmetric=True, hidden_dim=32, algo_kwargs={"n_steps": 16, "batch_size": 16}
    )
    metrics = train_agent(config, tmp_path / "agent", steps=32, num_envs=2, eval_episodes=2, progress=False)
    policy, loaded = load_agent(tmp_path / "agent")
    assert loaded == config and isinstance(policy, SymmetricPolicy)
    assert evaluate_policy_in_env(policy, config, episodes=2, progress=False)["success_rate"] == metrics["success_rate"]
    with pytest.raises(ValueError, match="PPO policy on slot codes or ground-truth"):
        AgentConfig(observation="pixels", symmetric=True)
    with pytest.raises(ValueError, match="PPO policy"):
        AgentConfig(observation="ground_truth", algo="dqn", symmetric=True)
    continuous = AgentConfig(env_id="ocrl/ObjectGoalContinuous-v0", observation="ground_truth", symmetric=True)
    with pytest.raises(OcrlError, match="moves in the plane"):
        train_agent(continuous, tmp_path / "continuous", steps=16, progress=False)
    with pytest.raises(ValueError, match="not closed"):
        move_permutations(np.array([[1.0, 0.0], [0.0, 1.0]]))


class _Scripted:
    """A policy with SB3's ``predict``: ``act(observation) -> action`` per sub-env."""

    def __init__(self, act):
        self.act = act

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        count = len(observation["position"])
        return np.array(
            [self.act({key: value[index] for key, value in observation.items()}) for index in range(count)]
        ), None


def _towards_target(observation):
    # one object: row 0 is the agent, row 1 the target; step along the larger gap (moves: up, down, left, right)
    dx, dy = observation["position"][1, :2] - observation["position"][0, :2]
    return (3 if dx > 0 else 2) if abs(dx) > abs(dy) else (1 if dy > 0 else 0)


def test_evaluation_counts_successes_of_a_scripted_policy():
    config = AgentConfig(observation="ground_truth", env_kwargs={"num_objects": 1})
    greedy = evaluate_policy_in_env(_Scripted(_towards_target), config, episodes=6, num_envs=4, progress=False)
    assert greedy["success_rate"] == 1.0 and greedy["time_limit_rate"] == 0.0
    assert greedy["mean_return"] == 1.0 and greedy["mean_length"] < 30
    # up, then down, forever: never touches anything, every episode runs into the time limit
    steps = iter(range(10**6))
    dither = evaluate_policy_in_env(
        _Scripted(lambda _: next(steps) % 2), config, episodes=5, num_envs=2, progress=False
    )
    expected = {"episodes": 5, "success_rate": 0.0, "time_limit_rate": 1.0, "mean_return": 0.0, "std_return": 0.0}
    expected["mean_length"] = 100.0
    assert dither == {**expected, "deterministic": True}


def test_a_sampling_evaluation_is_seeded_and_leaves_the_callers_random_state_alone():
    config = AgentConfig(observation="ground_truth", env_kwargs={"num_objects": 1})
    policy = agent_training.build_policy(config)  # untrained: its actions are near uniform draws

    def evaluate(seed):
        return evaluate_policy_in_env(policy, config, 4, seed, num_envs=2, deterministic=False, progress=False)

    state = torch.get_rng_state()
    first = evaluate(5)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(5) == first and not first["deterministic"]
    lengths = {evaluate(seed)["mean_length"] for seed in (5, 6, 7)}
    assert len(lengths) > 1  # other seeds, other draws (and other episodes)


def test_learning_curve_is_recorded_and_a_reloaded_agent_scores_the_same(tmp_path):
    config = AgentConfig(observation="ground_truth", algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1})
    out = tmp_path / "agent"
    metrics = train_agent(config, out, steps=100, num_envs=2, checkpoint_every=32, eval_episodes=3, progress=False)
    assert load_trainer_state(out)["num_timesteps"] == 128  # whole rollouts of 16 steps x 2 envs
    curve = read_curve(out / "curve.csv")
    assert [row["env_steps"] for row in curve] == [32, 64, 96, 128]
    assert all(0.0 <= row["success_rate"] <= 1.0 and row["episodes"] == 3 for row in curve)
    # the policy as reloaded from disk acts exactly as the trained one did in its final evaluation
    policy, _ = load_agent(out)
    assert metrics.pop("num_timesteps") == 128
    assert evaluate_policy_in_env(policy, config, episodes=3, progress=False) == metrics
    assert load_metrics(out)["success_rate"] == metrics["success_rate"]


def test_a_curve_row_scores_the_policy_trained_on_its_steps(tmp_path, monkeypatch):
    """The row at N steps is written once the rollout that reached N has been trained on, so
    the last row's checkpoint holds the final weights (SB3 calls step callbacks while it
    collects, before the update)."""
    saved = []

    def spy(policy, *args, metrics, **kwargs):
        saved.append((metrics["done"], {key: value.clone() for key, value in policy.state_dict().items()}))
        return save_checkpoint(policy, *args, metrics=metrics, **kwargs)

    monkeypatch.setattr(agent_training, "save_checkpoint", spy)
    config = AgentConfig(observation="ground_truth", algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1})
    train_agent(config, tmp_path / "agent", steps=64, num_envs=2, checkpoint_every=32, eval_episodes=2, progress=False)
    assert [done for done, _ in saved] == [False, False, True]  # rows at 32 and 64, then the final save
    last_row, final = saved[-2][1], saved[-1][1]
    assert all(torch.equal(last_row[key], final[key]) for key in final)


def test_the_shipped_agent_loads_by_name_and_solves_held_out_episodes():
    """Its metrics.json reports 0.95 held-out success over 100 episodes (a random policy: 0.17)."""
    assert "ppo-objectgoal-oracle" in ocrl.shipped_models()
    policy, config = load_agent("ppo-objectgoal-oracle", device="cpu")
    assert (config.env_id, config.observation) == ("ocrl/ObjectGoal-v0", "ground_truth")
    result = evaluate_policy_in_env(policy, config, episodes=40, device="cpu", progress=False)
    assert result["success_rate"] >= 0.6
    # the slot-code agent names the default model, by name
    assert load_agent("ppo-objectgoal-slots", device="cpu")[1].perception == ocrl.DEFAULT_PERCEPTION
    with pytest.raises(ValueError, match="no agent 'no-such-agent'.*ppo-objectgoal-oracle"):
        load_agent("no-such-agent")
    with pytest.raises(ValueError, match="not a perception model"):
        ocrl.load_perception("ppo-objectgoal-oracle")

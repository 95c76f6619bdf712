"""Collecting: resume and append are byte-identical to one run, render frames, SB3 policies."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ocrl.data.collect import collect
from ocrl.data.store import MANIFEST_NAME, RolloutStore, RolloutWriter
from ocrl.errors import CollectionInterrupted, OcrlError

ENV_ID = "ocrl/ObjectGoal-v0"
ENV_KWARGS = {"resolution": 16}


def files_of(path: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path."""
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def quick_collect(out: Path, episodes: int, num_envs: int, **kwargs) -> RolloutStore:
    return collect(ENV_ID, episodes, out, num_envs=num_envs, seed=3, env_kwargs=ENV_KWARGS, progress=False, **kwargs)


@pytest.fixture(scope="module")
def six_at_once(tmp_path_factory):
    path = tmp_path_factory.mktemp("once") / "rollouts"
    quick_collect(path, 6, num_envs=4)
    return files_of(path)


def test_append_equals_one_run_whatever_num_envs(tmp_path, six_at_once):
    quick_collect(tmp_path, 3, num_envs=2)
    assert len(RolloutStore.open(tmp_path)) == 3
    store = quick_collect(tmp_path, 6, num_envs=3)
    assert [record.index for record in store.episodes] == list(range(6))
    assert files_of(tmp_path) == six_at_once


def test_rerun_with_fewer_episodes_keeps_the_store(tmp_path):
    quick_collect(tmp_path, 3, num_envs=2)
    before = files_of(tmp_path)
    assert len(quick_collect(tmp_path, 2, num_envs=2)) == 3
    assert files_of(tmp_path) == before


def test_interrupted_collection_keeps_finished_episodes_and_resumes(tmp_path, monkeypatch, six_at_once):
    add = RolloutWriter.add

    def add_then_interrupt(writer, *args, **kwargs):
        if len(writer) == 2:
            raise KeyboardInterrupt
        return add(writer, *args, **kwargs)

    monkeypatch.setattr(RolloutWriter, "add", add_then_interrupt)
    with pytest.raises(CollectionInterrupted) as interruption:
        quick_collect(tmp_path, 6, num_envs=4)
    assert interruption.value.episodes_kept == 2
    assert "rerun the same command to resume" in str(interruption.value)
    assert len(RolloutStore.open(tmp_path)) == 2
    monkeypatch.setattr(RolloutWriter, "add", add)
    quick_collect(tmp_path, 6, num_envs=4)
    assert files_of(tmp_path) == six_at_once


def _flip_a_frame_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the frame streams, the bulk of the file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _flip_a_frame_byte,
        lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3]),
        lambda path: path.unlink(),
        lambda path: path.write_bytes(b""),
    ],
    ids=["bit flip", "truncated", "deleted", "emptied"],
)
def test_a_rerun_collects_broken_episodes_again(tmp_path, six_at_once, damage, capsys):
    quick_collect(tmp_path, 6, num_envs=4)
    damage(tmp_path / "episodes" / "episode-000002.npz")
    quick_collect(tmp_path, 6, num_envs=4)
    assert files_of(tmp_path) == six_at_once
    assert "episode-000002.npz" in capsys.readouterr().err


def test_a_broken_episode_that_the_manifest_misses_is_collected_again(tmp_path, six_at_once):
    quick_collect(tmp_path, 6, num_envs=4)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["episodes"] = manifest["episodes"][:5]  # a crash between the file and the manifest
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "episodes" / "episode-000005.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(OcrlError, match="episode-000005.npz"):
        RolloutStore.open(tmp_path)  # a reader is told
    quick_collect(tmp_path, 6, num_envs=4)  # a writer writes it again
    assert files_of(tmp_path) == six_at_once


def test_verify_decodes_every_frame(tmp_path, monkeypatch):
    quick_collect(tmp_path, 2, num_envs=2)
    import ocrl.data.store as store_module

    checked = []
    original = store_module.check_episode_file
    monkeypatch.setattr(
        store_module,
        "check_episode_file",
        lambda *args, decode=False: checked.append(decode) or original(*args, decode=decode),
    )
    quick_collect(tmp_path, 2, num_envs=2)
    quick_collect(tmp_path, 2, num_envs=2, verify=True)
    assert checked == [False, False, True, True]


def test_async_vector_env_writes_the_same_files(tmp_path, six_at_once):
    quick_collect(tmp_path, 6, num_envs=2, asynchronous=True)
    assert files_of(tmp_path) == six_at_once


def test_object_counts_may_differ_between_sub_envs(tmp_path):
    """A gymnasium vector env cannot stack such ground truth; collect passes it through."""
    store = collect(ENV_ID, 4, tmp_path, num_envs=4, env_kwargs={**ENV_KWARGS, "num_objects": [1, 4]}, progress=False)
    counts = {int(store.episode(i).ground_truth(0, 1)["object_count"][0]) for i in range(4)}
    assert len(counts) > 1


def test_non_image_env_stores_render_frames(tmp_path):
    store = collect("CartPole-v1", 2, tmp_path, num_envs=2, progress=False)
    assert store.header["frame_source"] == "render"
    assert store.frame_shape == (400, 600, 3)
    assert store.ground_truth_keys == ()
    frames = store.episode(0).frames(0, 2)
    assert frames.shape == (2, 400, 600, 3) and frames.std() > 0


def test_bad_input_writes_nothing(tmp_path):
    with pytest.raises(OcrlError, match="NoSuchEnv-v0"):
        collect("NoSuchEnv-v0", 2, tmp_path / "a", progress=False)
    with pytest.raises(OcrlError, match="resolution"):
        collect(ENV_ID, 2, tmp_path / "b", env_kwargs={"resolution": 2}, progress=False)
    with pytest.raises(OcrlError, match="episodes"):
        collect(ENV_ID, 0, tmp_path / "c", progress=False)
    with pytest.raises(OcrlError, match="JSON"):
        collect(ENV_ID, 1, tmp_path / "d", env_kwargs={"resolution": object()}, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- Stable-Baselines3 policies ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cartpole_ppo(tmp_path_factory) -> Path:
    """A tiny PPO MlpPolicy trained for a few hundred steps on CartPole, saved as SB3 does."""
    from stable_baselines3 import PPO

    path = tmp_path_factory.mktemp("sb3") / "ppo_cartpole.zip"
    model = PPO(
        "MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [16]}, seed=0
    )
    model.learn(256)
    model.save(path)
    return path


def test_sb3_policy_acts_like_sb3_itself(tmp_path, cartpole_ppo):
    import gymnasium as gym
    from stable_baselines3 import PPO

    store = collect("CartPole-v1", 2, tmp_path, policy=cartpole_ppo, num_envs=2, deterministic=True, progress=False)
    assert store.header["policy"]["kind"] == "sb3"
    assert store.header["policy"]["policy_class"].endswith("ActorCriticPolicy")
    model = PPO.load(cartpole_ppo)  # our own test file: unpickling it here is fine
    env = gym.make("CartPole-v1")
    for position in range(len(store)):
        episode = store.episode(position)
        observation, _ = env.reset(seed=episode.seed)
        for action in episode.actions:
            expected, _ = model.predict(observation, deterministic=True)
            assert action == expected
            observation, *_ = env.step(action)


def test_sb3_policy_for_another_observation_space_is_refused(tmp_path, cartpole_ppo):
    with pytest.raises(OcrlError, match="observation space"):
        collect(ENV_ID, 2, tmp_path / "out", policy=cartpole_ppo, progress=False)
    assert not (tmp_path / "out").exists()


def test_sb3_zip_that_needs_unpickling_is_refused(tmp_path):
    import torch
    from stable_baselines3 import PPO

    path = tmp_path / "tanh.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, policy_kwargs={"activation_fn": torch.nn.Tanh}).save(
        path
    )
    with pytest.raises(OcrlError, match="unpickl"):
        collect("CartPole-v1", 1, tmp_path / "out", policy=path, progress=False)


def test_not_an_sb3_zip_is_refused(tmp_path):
    path = tmp_path / "policy.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(OcrlError, match="not a Stable-Baselines3 zip"):
        collect("CartPole-v1", 1, tmp_path / "out", policy=path, progress=False)
    with pytest.raises(OcrlError, match="does not exist"):
        collect("CartPole-v1", 1, tmp_path / "out", policy=tmp_path / "missing.zip", progress=False)


def test_manifest_records_the_collection(tmp_path):
    store = quick_collect(tmp_path, 2, num_envs=2)
    assert (tmp_path / MANIFEST_NAME).is_file()
    assert store.header["env_id"] == ENV_ID
    assert store.header["env_kwargs"] == ENV_KWARGS
    assert store.header["action_space"] == {"type": "Discrete", "n": 4, "start": 0}
    assert store.frame_shape == (16, 16, 3)
    assert np.all([record.seed == 3 + record.index for record in store.episodes])


def test_an_ocrl_agent_checkpoint_is_a_policy(tmp_path, tiny_perception, capsys):
    import ocrl.envs
    from ocrl.agents import AgentConfig, GroundTruthObservation, load_agent, train_agent
    from ocrl.cli import main
    from ocrl.wrappers import ObjectCentricObservation

    config = AgentConfig(
        env_id=ENV_ID,
        perception=tiny_perception,
        env_kwargs=ENV_KWARGS,
        algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    )
    train_agent(config, tmp_path / "agent", steps=64, num_envs=2, eval_episodes=1, progress=False)
    arguments = [
        "collect",
        "--env",
        ENV_ID,
        "--env-kwargs",
        json.dumps(ENV_KWARGS),
        "--episodes",
        "2",
        "--num-envs",
        "1",
        "--seed",
        "7",
        "--policy",
        str(tmp_path / "agent"),
        "--deterministic",
        "--out",
        str(tmp_path / "store"),
    ]
    assert main(arguments) == 0, capsys.readouterr().err
    store = RolloutStore.open(tmp_path / "store")
    assert store.header["policy"]["kind"] == "ocrl-agent"
    # the stored actions are the agent's own, acting on the codes of its perception model
    policy, _ = load_agent(tmp_path / "agent")
    env = ObjectCentricObservation(ocrl.envs.make(ENV_ID, **ENV_KWARGS), tiny_perception)
    for position in range(2):
        observation, _ = env.reset(seed=7 + position)
        for stored in store.episode(position).actions:
            action, _ = policy.predict({key: value[None] for key, value in observation.items()}, deterministic=True)
            assert action[0] == stored
            observation, *_ = env.step(action[0])
    oracle = AgentConfig(
        env_id=ENV_ID,
        observation="ground_truth",
        env_kwargs=ENV_KWARGS,
        algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    )
    train_agent(oracle, tmp_path / "oracle", steps=32, num_envs=1, eval_episodes=1, progress=False)
    # a ground-truth agent acts on the objects the env reports
    arguments[arguments.index(str(tmp_path / "agent"))] = str(tmp_path / "oracle")
    assert main([*arguments[:-1], str(tmp_path / "oracle-store")]) == 0, capsys.readouterr().err
    policy, _ = load_agent(tmp_path / "oracle")
    env = GroundTruthObservation(ocrl.envs.make(ENV_ID, **ENV_KWARGS))
    for position in range(2):
        observation, _ = env.reset(seed=7 + position)
        for stored in RolloutStore.open(tmp_path / "oracle-store").episode(position).actions:
            action, _ = policy.predict({key: value[None] for key, value in observation.items()}, deterministic=True)
            assert action[0] == stored
            observation, *_ = env.step(action[0])
    # a store whose agent config was written before a defaulted field existed still resumes;
    # one that names another agent config is refused
    manifest = tmp_path / "oracle-store" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    del recorded["policy"]["config"]["max_objects"]
    manifest.write_text(json.dumps(recorded))
    more = [*arguments[:-1], str(tmp_path / "oracle-store")]
    more[more.index("--episodes") + 1] = "3"
    assert main(more) == 0, capsys.readouterr().err
    assert len(RolloutStore.open(tmp_path / "oracle-store").episodes) == 3
    recorded["policy"]["config"]["extractor"] = "deepsets"
    manifest.write_text(json.dumps(recorded))
    assert main(more) == 2
    assert "holds a different collection" in capsys.readouterr().err


def test_a_shipped_agent_is_a_policy_by_its_name(tmp_path, capsys):
    from ocrl.cli import main

    arguments = ["collect", "--env", "ocrl/ObjectGoal-v0", "--episodes", "1", "--num-envs", "1"]
    assert main([*arguments, "--policy", "ppo-objectgoal-oracle", "--out", str(tmp_path / "store")]) == 0
    policy = RolloutStore.open(tmp_path / "store").header["policy"]
    assert (policy["kind"], policy["directory"]) == ("ocrl-agent", "ppo-objectgoal-oracle")

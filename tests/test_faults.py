"""Fault injection: interruptions and kills at random points, bit flips and truncations at random
offsets of every file kind ocrl reads.

What must hold: a run interrupted or killed anywhere resumes to exactly what an uninterrupted
run writes, losing no finished episode or checkpoint; a damaged file gives an error that names
it (an OcrlError / ValueError subclass) or reads back exactly what was written, never a stray
exception and, for binary files, never silently different data. JSON files (manifests, configs)
can be edited into other valid JSON; those outcomes are counted, not failed, since the JSON
itself is what the file says.

Randomness is seeded. Every case is tallied per fault class and outcome; with
``OCRL_FAULT_TABLE=path.json`` the tally is written there (benchmarks/RESULTS.md shows it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from ocrl.checkpoint import (
    CONFIG_FILE,
    TRAINER_FILE,
    TRAINER_TENSORS_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_metrics,
    load_trainer_state,
    save_checkpoint,
)
from ocrl.data.collect import collect
from ocrl.data.store import MANIFEST_NAME, RolloutStore, RolloutWriter
from ocrl.errors import CollectionInterrupted, OcrlError

ROOT = Path(__file__).resolve().parents[1]
ENV_KWARGS = {"resolution": 16}
FLIPS, TRUNCATIONS = 24, 8  # cases per file kind
TALLY: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    path = os.environ.get("OCRL_FAULT_TABLE")
    if path:
        Path(path).write_text(
            json.dumps({name: dict(counts) for name, counts in sorted(TALLY.items())}, indent=1) + "\n"
        )


def files_of(path: Path) -> dict[str, bytes]:
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def quick_collect(out: Path, episodes: int = 6, **kwargs) -> RolloutStore:
    return collect(
        "ocrl/ObjectGoal-v0", episodes, out, num_envs=3, seed=5, env_kwargs=ENV_KWARGS, progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted collection of 6 episodes."""
    return files_of(quick_collect(tmp_path_factory.mktemp("reference") / "store").path)


# --- interruptions and kills -----------------------------------------------------------------------


def test_collect_interrupted_at_random_episodes_resumes_identically(reference, tmp_path, monkeypatch):
    generator = random.Random(1)
    add = RolloutWriter.add
    for case in range(4):
        out, stop = tmp_path / f"store-{case}", generator.randrange(0, 6)

        def add_then_interrupt(writer, *args, **kwargs):
            if len(writer) == stop:
                raise KeyboardInterrupt
            return add(writer, *args, **kwargs)

        monkeypatch.setattr(RolloutWriter, "add", add_then_interrupt)
        with pytest.raises(CollectionInterrupted):
            quick_collect(out)
        kept = files_of(out)
        assert len(RolloutStore.open(out)) == stop
        monkeypatch.setattr(RolloutWriter, "add", add)
        quick_collect(out)
        assert files_of(out) == reference and all(
            reference[name] == data for name, data in kept.items() if name != MANIFEST_NAME
        )
        TALLY["collect: Ctrl-C at a random episode"]["resumed byte-identical"] += 1


def test_collect_killed_at_random_times_resumes_identically(reference, tmp_path):
    generator = random.Random(2)
    command = [
        sys.executable,
        "-m",
        "ocrl.cli",
        "collect",
        "--env",
        "ocrl/ObjectGoal-v0",
        "--env-kwargs",
        json.dumps(ENV_KWARGS),
        "--episodes",
        "6",
        "--num-envs",
        "3",
        "--seed",
        "5",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for case in range(3):
        out = tmp_path / f"store-{case}"
        child = subprocess.Popen(
            [*command, "--out", str(out)],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # wait until the store exists, then kill at a random moment of the collection
        deadline = time.monotonic() + 60
        while not (out / MANIFEST_NAME).exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(generator.uniform(0, 0.15))
        finished = child.poll() is not None
        child.send_signal(signal.SIGKILL)
        child.wait()
        kept = {name: data for name, data in files_of(out).items() if name.startswith("episodes/episode-")}
        quick_collect(out)
        assert files_of(out) == reference
        assert all(reference[name] == data for name, data in kept.items())  # finished episodes untouched
        TALLY["collect: SIGKILL at a random time"][
            "finished before the kill" if finished else f"resumed byte-identical ({len(kept)} of 6 kept)"
        ] += 1


@pytest.fixture(scope="module")
def moving_store(tmp_path_factory) -> Path:
    return collect(
        "ocrl/MovingObjects-v0",
        2,
        tmp_path_factory.mktemp("moving") / "store",
        env_kwargs={"resolution": 32},
        num_envs=2,
        progress=False,
    ).path


def test_pretraining_interrupted_at_a_random_step_keeps_it_and_resumes(moving_store, tmp_path, monkeypatch):
    from ocrl.training import pretrain

    generator = random.Random(3)
    step = torch.optim.AdamW.step
    for case in range(2):
        out, stop = tmp_path / f"model-{case}", generator.randrange(1, 4)
        calls = Counter()

        def step_then_interrupt(self, *args, **kwargs):
            calls["step"] += 1
            if calls["step"] > stop:
                raise KeyboardInterrupt
            return step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            pretrain(moving_store, out, steps=4, batch_size=2, progress=False)
        assert load_trainer_state(out)["step"] == stop
        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        pretrain(moving_store, out, steps=4, batch_size=2, progress=False)
        state = load_trainer_state(out)
        assert state["step"] == 4 and len(state["loss_history"]) == 4
        TALLY["pretrain: Ctrl-C at a random step"]["checkpoint of that step kept, resumed to the end"] += 1


def test_world_model_training_interrupted_at_a_random_step_keeps_it_and_resumes(tiny_perception, tmp_path, monkeypatch):
    from ocrl.world_models import WorldModelTrainingConfig, train_world_model

    store = collect(
        "ocrl/ObjectGoal-v0", 3, tmp_path / "goal", num_envs=3, env_kwargs={"resolution": 32}, progress=False
    ).path
    training = WorldModelTrainingConfig(steps=4, batch_size=2, rollout_steps=1, checkpoint_every=100)
    model_config = {"history": 3, "width": 16, "num_layers": 1, "num_heads": 2}
    generator = random.Random(4)
    step = torch.optim.AdamW.step
    for case in range(2):
        out, stop = tmp_path / f"world-{case}", generator.randrange(1, 4)
        calls = Counter()

        def step_then_interrupt(self, *args, **kwargs):
            calls["step"] += 1
            if calls["step"] > stop:
                raise KeyboardInterrupt
            return step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_world_model(store, out, tiny_perception, model_config=model_config, training=training, progress=False)
        assert load_trainer_state(out)["step"] == stop
        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        train_world_model(store, out, tiny_perception, model_config=model_config, training=training, progress=False)
        assert load_trainer_state(out)["step"] == 4
        TALLY["train-world-model: Ctrl-C at a random step"]["checkpoint of that step kept, resumed to the end"] += 1


def test_agent_training_interrupted_at_a_random_step_keeps_it_and_resumes(tmp_path, monkeypatch):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ocrl.agents import AgentConfig, train_agent

    config = AgentConfig(observation="ground_truth", algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1})
    generator = random.Random(5)
    step_wait = DummyVecEnv.step_wait
    for case in range(2):
        out, stop = tmp_path / f"agent-{case}", generator.randrange(10, 60)
        calls = Counter()

        def step_then_interrupt(self):
            calls["step"] += self.num_envs == 2  # the training env; evaluation runs 3 sub-envs
            if calls["step"] > stop:
                raise KeyboardInterrupt
            return step_wait(self)

        monkeypatch.setattr(DummyVecEnv, "step_wait", step_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_agent(config, out, steps=128, num_envs=2, checkpoint_every=32, eval_episodes=3, progress=False)
        # every env step taken before the interrupt is in the checkpoint (2 sub-envs per call)
        assert load_trainer_state(out)["num_timesteps"] == 2 * stop
        monkeypatch.setattr(DummyVecEnv, "step_wait", step_wait)
        train_agent(config, out, steps=128, num_envs=2, checkpoint_every=32, eval_episodes=3, progress=False)
        assert load_trainer_state(out)["num_timesteps"] >= 128 and load_metrics(out)["done"]
        TALLY["train-agent: Ctrl-C at a random env step"]["checkpoint of that step kept, resumed to the end"] += 1


@pytest.fixture(scope="module")
def movi_shards(tmp_path_factory) -> Path:
    from test_movi import make_video

    from ocrl.movi.schema import write_movi_shard

    directory = tmp_path_factory.mktemp("movi") / "shards"
    directory.mkdir()
    write_movi_shard(directory / "movi_e-train.tfrecord-00000-of-00002", [make_video(seed) for seed in range(3)])
    write_movi_shard(directory / "movi_e-train.tfrecord-00001-of-00002", [make_video(seed) for seed in range(3, 5)])
    return directory


def test_movi_conversion_interrupted_at_a_random_video_resumes_identically(movi_shards, tmp_path, monkeypatch):
    from ocrl.movi.convert import convert_movi

    reference = files_of(convert_movi(movi_shards, tmp_path / "reference", workers=0, progress=False).path)
    generator = random.Random(5)
    add_written = RolloutWriter.add_written
    for case in range(3):
        out, stop = tmp_path / f"store-{case}", generator.randrange(0, 5)

        def add_then_interrupt(writer, *args, **kwargs):
            if len(writer) == stop:
                raise KeyboardInterrupt
            return add_written(writer, *args, **kwargs)

        monkeypatch.setattr(RolloutWriter, "add_written", add_then_interrupt)
        with pytest.raises(CollectionInterrupted):
            convert_movi(movi_shards, out, workers=0, progress=False)
        monkeypatch.setattr(RolloutWriter, "add_written", add_written)
        convert_movi(movi_shards, out, workers=0, progress=False)
        assert files_of(out) == reference
        TALLY["movi convert: Ctrl-C at a random video"]["resumed byte-identical"] += 1


# --- bit flips and truncations ------------------------------------------------------------------------


def damaged_copies(data: bytes, seed: int):
    """(description, damaged bytes): FLIPS single-bit flips and TRUNCATIONS cuts at random offsets."""
    generator = random.Random(seed)
    for _ in range(FLIPS):
        offset = generator.randrange(len(data))
        damaged = bytearray(data)
        damaged[offset] ^= 1 << generator.randrange(8)
        yield "bit flip", bytes(damaged)
    for _ in range(TRUNCATIONS):
        yield "truncation", data[: generator.randrange(len(data))]


def same(a, b) -> bool:
    """Deep equality of nested dicts/lists/tuples of arrays, tensors and plain values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def inject(kind: str, path: Path, read, seed: int, binary: bool) -> None:
    """Damage ``path`` in every way of :func:`damaged_copies`, call ``read()`` each time and tally
    the outcome; ``read`` returns what the file says, to compare with the undamaged read."""
    original = path.read_bytes()
    expected = read()
    try:
        for fault, data in damaged_copies(original, seed):
            path.write_bytes(data)
            try:
                result = read()
            except (OcrlError, ValueError) as error:
                assert path.name in str(error), f"{kind}, {fault}: the error does not name the file: {error}"
                outcome = "clear error naming the file"
            else:
                if same(result, expected):
                    outcome = "read back identical (an unused byte)"
                else:
                    assert not binary, f"{kind}, {fault}: read back different data without an error"
                    outcome = "valid JSON, other values"
            TALLY[f"{kind}: {fault}"][outcome] += 1
    finally:
        path.write_bytes(original)


def read_store(path: Path) -> dict:
    store = RolloutStore.open(path)
    try:
        result = {"header": store.header, "episodes": store.episodes}
        for position in range(len(store)):
            episode = store.episode(position)
            result[position] = {
                "frames": episode.frames(),
                "ground_truth": episode.ground_truth(),
                **{name: getattr(episode, name) for name in ("actions", "rewards", "terminated", "truncated")},
            }
        return result
    finally:
        store.close()


def test_damaged_store_files(tmp_path):
    path = quick_collect(tmp_path / "store", episodes=2).path
    inject(
        "store episode (.npz)", path / "episodes" / "episode-000001.npz", lambda: read_store(path), seed=10, binary=True
    )
    inject("store manifest (.json)", path / MANIFEST_NAME, lambda: read_store(path), seed=11, binary=False)


def test_damaged_checkpoint_files(tmp_path):
    from conftest import tiny_config

    from ocrl.perception import build_perception

    torch.manual_seed(0)
    config = tiny_config("smoothsa")
    model = build_perception(config)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(1, 2, 3, 32, 32)).loss.backward()
    optimizer.step()
    out = save_checkpoint(
        model,
        config,
        tmp_path / "model",
        trainer_state={"optimizer": optimizer.state_dict(), "step": 1},
        metrics={"step": 1},
    )

    def read():
        loaded, loaded_config = load_checkpoint(out)
        return {"weights": loaded.state_dict(), "config": loaded_config.to_dict(), "trainer": load_trainer_state(out)}

    inject("checkpoint config.json", out / CONFIG_FILE, read, seed=20, binary=False)
    for seed, name in enumerate((WEIGHTS_FILE, TRAINER_FILE, TRAINER_TENSORS_FILE), start=21):
        inject(f"checkpoint {name}", out / name, read, seed=seed, binary=True)


def test_damaged_code_cache_files(tiny_perception, tmp_path):
    import ocrl
    from ocrl.world_models.codes import INFO_FILE, CodeCache, encode_store

    store = quick_collect(tmp_path / "store", episodes=2)
    perception = ocrl.load_perception(tiny_perception)
    cache = encode_store(perception, store, progress=False)

    def read():
        codes = CodeCache(cache)
        return {"frames": codes.frames, "steps": codes.steps, "info": codes.infos}

    inject("code cache episode (.npz)", cache / "episode-000001.npz", read, seed=30, binary=True)
    inject("code cache info.json", cache / INFO_FILE, read, seed=31, binary=False)


def test_damaged_tfrecord_shards(movi_shards, tmp_path):
    from ocrl.movi.schema import read_movi

    shard = tmp_path / "movi_e-train.tfrecord-00000-of-00001"
    shard.write_bytes((movi_shards / "movi_e-train.tfrecord-00000-of-00002").read_bytes())
    inject("MOVi TFRecord shard", shard, lambda: list(read_movi(shard)), seed=40, binary=True)


def test_damaged_sb3_zips(tmp_path):
    import gymnasium as gym
    from stable_baselines3 import PPO

    from ocrl.data.sb3_policy import load_sb3_policy

    path = tmp_path / "ppo_cartpole.zip"
    PPO(
        "MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0
    ).save(path)
    env = gym.make("CartPole-v1")

    def read():
        policy = load_sb3_policy(path, env, deterministic=True)
        return {key: value for key, value in policy.policy.state_dict().items()}

    inject("SB3 policy zip", path, read, seed=50, binary=True)

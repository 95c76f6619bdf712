"""The ``ocrl`` command line: success, and one-line errors with a non-zero status."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ocrl.data.collect
from ocrl.agents import load_agent
from ocrl.cli import build_parser, main
from ocrl.data.store import RolloutStore
from ocrl.errors import CollectionInterrupted

SMALL = ["--env", "ocrl/ObjectGoal-v0", "--env-kwargs", '{"resolution": 16}', "--num-envs", "2"]


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` with its bytes (None for directories)."""
    return {
        str(entry.relative_to(path)): entry.read_bytes() if entry.is_file() else None
        for entry in sorted(path.rglob("*"))
    }


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("ocrl collect: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_collect_succeeds(tmp_path, capsys):
    status, out, _ = run(capsys, "collect", *SMALL, "--episodes", "2", "--out", str(tmp_path / "store"))
    assert status == 0
    assert "2 episodes" in out
    assert len(RolloutStore.open(tmp_path / "store")) == 2


def test_unknown_env_id(tmp_path, capsys):
    status, _, err = run(
        capsys, "collect", "--env", "NoSuchEnv-v0", "--episodes", "2", "--out", str(tmp_path / "store")
    )
    assert_one_line_error(status, err, "NoSuchEnv-v0")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--episodes", "0"], "--episodes"),
        (["--episodes", "many"], "--episodes"),
        (["--episodes", "2", "--num-envs", "-1"], "--num-envs"),
        (["--episodes", "2", "--seed", "-1"], "--seed"),
        (["--episodes", "2", "--env-kwargs", "{bad json"], "--env-kwargs"),
        (["--episodes", "2", "--env-kwargs", "[16]"], "JSON object"),
        (["--episodes", "2", "--env-kwargs", '{"resolution": 2}'], "resolution"),
        (["--episodes", "2", "--env-kwargs", '{"no_such_option": 1}'], "no_such_option"),
        (["--episodes", "2", "--policy", "missing.zip"], "missing.zip"),
        (["--episodes", "2", "--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_arguments(tmp_path, capsys, arguments, fragment):
    status, _, err = run(capsys, "collect", "--env", "ocrl/ObjectGoal-v0", "--out", str(tmp_path / "store"), *arguments)
    assert_one_line_error(status, err, fragment)
    assert not (tmp_path / "store").exists()


def test_missing_required_argument(capsys):
    status, _, err = run(capsys, "collect", "--env", "ocrl/ObjectGoal-v0", "--episodes", "2")
    assert_one_line_error(status, err, "--out")


def test_existing_non_dataset_directory_is_left_untouched(tmp_path, capsys):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    (tmp_path / "thesis" / "figures").mkdir()
    (tmp_path / "thesis" / "figures" / "plot.png").write_bytes(b"\x89PNG")
    before = snapshot(tmp_path / "thesis")
    status, _, err = run(capsys, "collect", *SMALL, "--episodes", "2", "--out", str(tmp_path / "thesis"))
    assert_one_line_error(status, err, "not an ocrl rollout store")
    assert snapshot(tmp_path / "thesis") == before


def test_store_of_another_collection_is_left_untouched(tmp_path, capsys):
    assert run(capsys, "collect", *SMALL, "--episodes", "1", "--out", str(tmp_path))[0] == 0
    before = snapshot(tmp_path)
    status, _, err = run(capsys, "collect", *SMALL, "--episodes", "2", "--seed", "5", "--out", str(tmp_path))
    assert_one_line_error(status, err, "different collection", "seed")
    assert snapshot(tmp_path) == before


def test_interruption_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise CollectionInterrupted(3, str(tmp_path))

    monkeypatch.setattr(ocrl.data.collect, "collect", interrupted)
    status, _, err = run(capsys, "collect", *SMALL, "--episodes", "5", "--out", str(tmp_path))
    assert status == 130
    assert err.strip() == f"interrupted: 3 episodes kept in {tmp_path}; rerun the same command to resume"


def test_real_processes(tmp_path):
    """The installed ``ocrl`` script and ``python -m ocrl``."""
    script = Path(sys.executable).with_name("ocrl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ocrl"]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*command, "collect", *SMALL, "--episodes", "2", "--out", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(RolloutStore.open(tmp_path / "store")) == 2

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocrl",
            "collect",
            "--env",
            "NoSuchEnv-v0",
            "--episodes",
            "2",
            "--out",
            str(tmp_path / "other"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stderr, "NoSuchEnv-v0")


def test_train_agent_then_eval_agent_with_video(tmp_path, capsys):
    agent = tmp_path / "agent"
    status, out, err = run(
        capsys,
        "train-agent",
        "--env",
        "ocrl/ObjectGoal-v0",
        "--observation",
        "ground-truth",
        "--steps",
        "64",
        "--num-envs",
        "2",
        "--algo-kwargs",
        '{"n_steps": 32, "batch_size": 32, "n_epochs": 1}',
        "--eval-episodes",
        "1",
        "--out",
        str(agent),
    )
    assert status == 0, err
    assert json.loads(out)["episodes"] == 1
    status, out, err = run(
        capsys, "eval-agent", str(agent), "--episodes", "2", "--video", str(tmp_path / "episode.gif")
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["episodes"] == 2 and 0 <= result["success_rate"] <= 1
    assert (tmp_path / "episode.gif").stat().st_size > 0 and result["deterministic"]
    status, out, err = run(
        capsys, "eval-agent", str(agent), "--episodes", "2", "--stochastic", "--video", str(tmp_path / "sampled.gif")
    )
    assert status == 0, err
    result = json.loads(out)
    assert not result["deterministic"] and not result["video"]["deterministic"]  # the episode in the GIF samples too
    # its set has rows for the 4 objects and the agent: 6 objects are refused in one line
    status, _, err = run(capsys, "eval-agent", str(agent), "--episodes", "1", "--env-kwargs", '{"num_objects": 6}')
    assert status == 2 and "--max-objects" in err.splitlines()[-1], err  # (after the progress bar)


def test_an_oracle_with_spare_rows_is_evaluated_with_more_objects(tmp_path, capsys):
    """(a symmetric one, of another width: those flags reach the agent too)"""
    agent = tmp_path / "agent"
    arguments = ["--env", "ocrl/ObjectGoal-v0", "--observation", "ground-truth", "--max-objects", "7"]
    arguments += ["--symmetric", "--hidden-dim", "16"]
    small = [
        "--steps",
        "32",
        "--num-envs",
        "1",
        "--eval-episodes",
        "1",
        "--algo-kwargs",
        '{"n_steps": 32, "batch_size": 32, "n_epochs": 1}',
    ]
    status, _, err = run(capsys, "train-agent", *arguments, *small, "--out", str(agent))
    assert status == 0, err
    status, out, err = run(capsys, "eval-agent", str(agent), "--episodes", "2", "--env-kwargs", '{"num_objects": 6}')
    assert status == 0, err
    assert json.loads(out)["env_kwargs"] == {"num_objects": 6}
    _, config = load_agent(agent)
    assert config.symmetric and config.hidden_dim == 16


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--env", "ocrl/ObjectGoal-v0", "--perception", "no-such-model"], "no perception model 'no-such-model'"),
        (
            ["--env", "ocrl/ObjectGoalContinuous-v0", "--algo", "dqn", "--observation", "ground-truth"],
            "dqn cannot train",
        ),
        (
            ["--env", "ocrl/ObjectGoal-v0", "--observation", "pixels", "--perception", "x"],
            "only with observation 'slots'",
        ),
        (["--env", "ocrl/ObjectGoal-v0", "--observation", "pixels", "--symmetric"], "a symmetric policy is a PPO"),
        (
            ["--env", "ocrl/ObjectGoalContinuous-v0", "--observation", "ground-truth", "--symmetric"],
            "moves in the plane",
        ),
    ],
)
def test_train_agent_user_errors_are_one_line(tmp_path, capsys, arguments, fragment):
    status, _, err = run(capsys, "train-agent", *arguments, "--steps", "10", "--out", str(tmp_path / "agent"))
    assert status == 2 and fragment in err and err.count("\n") == 1, err


def test_eval_agent_of_a_non_agent_is_one_line(tmp_path, capsys, tiny_perception):
    status, _, err = run(capsys, "eval-agent", tiny_perception)
    assert status == 2 and "not an agent" in err and err.count("\n") == 1, err


def test_python_dash_m_ocrl_cli_help_imports_no_torch():
    """``ocrl --help`` stays fast: building the parser reads its choices from ocrl.names, and the
    models load only when a command runs."""
    done = subprocess.run([sys.executable, "-m", "ocrl.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train-world-model" in done.stdout
    probe = "import sys; from ocrl.cli import build_parser; build_parser(); print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "'torch'" not in done.stdout and "'stable_baselines3'" not in done.stdout


def choices(command: str, option: str) -> list[str]:
    """What ``ocrl COMMAND OPTION`` accepts."""
    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    (action,) = [action for action in commands.choices[command]._actions if option in action.option_strings]
    return list(action.choices)


def test_choices_are_the_registries_keys():
    from ocrl.agents.extractors import KINDS
    from ocrl.agents.training import ALGORITHMS, OBSERVATIONS
    from ocrl.perception.config import FAMILIES
    from ocrl.perception.loci.training import LOCI_PRESETS
    from ocrl.training import PRESETS

    assert choices("pretrain", "--model") == [*FAMILIES, "loci"]
    assert choices("pretrain", "--config") == list(PRESETS) == list(LOCI_PRESETS)
    assert choices("train-agent", "--algo") == list(ALGORITHMS)
    assert choices("train-agent", "--observation") == [kind.replace("_", "-") for kind in OBSERVATIONS]
    assert choices("train-agent", "--extractor") == list(KINDS)

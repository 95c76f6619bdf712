"""The README's shell blocks run as written, at tiny sizes (``make test-readme``, a few minutes).

Each ``bash`` block of README.md is run command by command, in order, in one scratch directory
(later blocks read what earlier ones wrote, as a reader following the README would). Sizes are
shrunk: fewer episodes, steps and videos; every other argument is the README's. Commands that
need a download, several processes or the whole test suite are skipped with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from ocrl.cli import main

pytestmark = pytest.mark.readme
README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
ALGORITHM_KWARGS = {
    "ppo": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    "sac": {"learning_starts": 16, "buffer_size": 200, "batch_size": 16},
    "dqn": {"learning_starts": 16, "buffer_size": 200, "batch_size": 16},
}


def skip_reason(words: list[str]) -> str | None:
    if words[0] == "make":
        return "runs the demo or the test suite itself"
    if words[0] == "torchrun":
        return "launches several processes (python -m ocrl.cli is tested in test_preflight.py)"
    if words[0] == "gsutil" or any("movi_c" in word for word in words):
        return "needs the MOVi download"
    return None


def shrink(words: list[str]) -> list[str]:
    """The command with tiny sizes: options given later win in argparse."""
    command = words[1] if words[1] != "movi" else f"movi {words[2]}"
    arguments = list(words[1:])

    def value(option: str, default: str | None = None) -> str | None:
        return arguments[arguments.index(option) + 1] if option in arguments else default

    extra = {
        "collect": ["--episodes", str(min(6, int(value("--episodes", "6")))), "--num-envs", "2"],
        "pretrain": ["--stage-steps", "1", "1", "1"]
        if value("--model") == "loci"
        else ["--steps", "2", "--batch-size", "2"],
        "eval-perception": ["--episodes", "2"],
        "train-agent": [
            "--steps",
            "64",
            "--num-envs",
            "2",
            "--eval-episodes",
            "1",
            "--algo-kwargs",
            json.dumps(ALGORITHM_KWARGS[value("--algo", "ppo")]),
            "--imagination-starts",
            "4",
        ],
        "eval-agent": ["--episodes", "1"],
        "train-world-model": ["--steps", "2", "--batch-size", "2"],
        "eval-world-model": ["--windows", "4"],
        "dream": [
            "--rounds",
            "2",
            "--episodes",
            "3",
            "--world-model-steps",
            "2",
            "--agent-steps",
            "64",
            "--eval-episodes",
            "1",
            "--algo-kwargs",
            json.dumps(ALGORITHM_KWARGS["ppo"]),
            "--imagination-starts",
            "4",
        ],
        "movi generate": ["--videos", "2", "--frames", "4", "--resolution", "32", "--workers", "0"],
        "movi convert": ["--workers", "0"],
    }.get(command, [])
    return arguments + extra


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_readme_block_runs(block, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    skipped = []
    for line in BLOCKS[block].splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        reason = skip_reason(words)
        if reason:
            skipped.append(f"{words[0]} ({reason})")
            continue
        assert words[0] == "ocrl", f"README block {block}: unexpected command {line!r}"
        status = main(shrink(words))
        captured = capsys.readouterr()
        assert status == 0, f"README block {block}: {line!r} failed: {captured.err[-2000:]}"
    if skipped and len(skipped) == len(
        [line for line in BLOCKS[block].splitlines() if shlex.split(line, comments=True)]
    ):
        pytest.skip("; ".join(dict.fromkeys(skipped)))

"""The ``ocrl`` command line: ``ocrl <command> [options]``.

Each command adds its parser in an ``add_<command>`` function and sets ``run`` to the function
that executes it; a new command is one more such pair listed in :data:`COMMANDS`. User errors
(:class:`~ocrl.errors.OcrlError`, bad arguments) print one line ``ocrl <command>: error: ...``
and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from ocrl.errors import CollectionInterrupted, OcrlError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"resolution\": 64}}', got {text!r}")
    return value


def _policy(text: str) -> str:
    if text != "random" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"expected 'random' or the path of a Stable-Baselines3 .zip; no file {text!r}")
    return text


# --- ocrl collect ------------------------------------------------------------------------------


def add_collect(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="collect rollouts of an env into a dataset directory",
        description="Collect episodes of any env into a rollout store; rerun to resume, or with a larger --episodes to append.",
    )
    parser.add_argument("--env", required=True, help="env id: ocrl/..., MiniGrid-..., dm_control/..., or any gymnasium id")
    parser.add_argument("--episodes", required=True, type=_positive_int, help="total number of episodes the store should hold")
    parser.add_argument("--out", required=True, type=Path, help="store directory (created, or resumed if it is a store)")
    parser.add_argument("--policy", default="random", type=_policy, help="'random' (default) or a Stable-Baselines3 .zip")
    parser.add_argument("--deterministic", action="store_true", help="with an SB3 policy: its most likely actions, not samples")
    parser.add_argument("--num-envs", default=8, type=_positive_int, help="sub-envs stepped together (default 8)")
    parser.add_argument("--seed", default=0, type=_non_negative_int, help="episode i is reset with seed + i (default 0)")
    parser.add_argument("--env-kwargs", default={}, type=_json_object, help="JSON object of keyword arguments for the env")
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="one process per sub-env")
    parser.set_defaults(run=run_collect, parser=parser)


def run_collect(args: argparse.Namespace) -> int:
    from ocrl.data.collect import collect

    try:
        store = collect(
            args.env,
            args.episodes,
            args.out,
            policy=args.policy,
            num_envs=args.num_envs,
            seed=args.seed,
            env_kwargs=args.env_kwargs,
            asynchronous=args.asynchronous,
            deterministic=args.deterministic,
        )
    except CollectionInterrupted as interruption:
        print(interruption, file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{len(store)} episodes, {store.num_frames} frames of {store.env_id} in {store.path}")
    return 0


COMMANDS: list[Callable] = [add_collect]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ocrl", description="Object-centric reinforcement learning toolkit.")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="<command>")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ocrl`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the command's parser, so that the message names the command
            args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit:  # argparse exits on --help (0) and on usage errors
        return exit.code if isinstance(exit.code, int) else EXIT_USER_ERROR
    try:
        return args.run(args)
    except OcrlError as error:
        print(f"{args.parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{args.parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

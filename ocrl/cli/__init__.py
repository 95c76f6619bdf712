"""The ``ocrl`` command line: ``ocrl <command> [options]``.

One module per command group: :mod:`~ocrl.cli.data` (collect, movi), :mod:`~ocrl.cli.perception`
(pretrain, eval-perception, viz), :mod:`~ocrl.cli.agents` (train-agent, eval-agent) and
:mod:`~ocrl.cli.world_models` (train-world-model, eval-world-model). Each has a ``register``
that adds its parsers, each set to the function that runs the command; a new group is one more
module in :data:`GROUPS`. What the groups share is in :mod:`~ocrl.cli.common`. Argument choices
come from :mod:`ocrl.names`, and the models load only when a command runs, so that building the
parser (``ocrl --help``) imports no torch.

User errors (:class:`~ocrl.errors.OcrlError`, bad arguments) print one line ``ocrl <command>:
error: ...`` and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ocrl.cli import agents, data, perception, world_models
from ocrl.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser, error_message
from ocrl.device import keep_freed_memory
from ocrl.errors import OcrlError

__all__ = ["build_parser", "main"]

GROUPS = [data, perception, agents, world_models]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ocrl", description="Object-centric reinforcement learning toolkit.")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="<command>")
    for group in GROUPS:
        group.register(subparsers)
    for name, command in subparsers.choices.items():
        if name != "movi":
            command.add_argument(
                "--env-module",
                action="append",
                default=[],
                metavar="MODULE",
                help="import this module first, so that 'MODULE:Env-v0' env ids work, also those read from checkpoints (which alone never import code); repeatable",
            )
    return parser


def _import_env_modules(names: Sequence[str]) -> None:
    """The user's explicit opt-in: import the modules that register their envs."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise OcrlError(f"--env-module {name}: cannot import it ({error})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ocrl`` with ``argv`` (default: the process's arguments); returns the exit status."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless dm_control, as the MOVi generator does
    keep_freed_memory()
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the command's parser, so that the message names the command
            args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit:  # argparse exits on --help (0) and on usage errors
        return exit.code if isinstance(exit.code, int) else EXIT_USER_ERROR
    try:
        _import_env_modules(getattr(args, "env_module", []))
        return args.run(args)
    except OcrlError as error:
        print(f"{args.parser.prog}: error: {error_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{args.parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

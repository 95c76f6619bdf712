"""What every command group of the ``ocrl`` command shares: one-line errors, argument types,
the arguments several commands add the same way, JSON printing and the user-error wrapper."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ocrl.errors import OcrlError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def one_line(message: object) -> str:
    return " ".join(str(message).split())


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def error_message(error: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker arrives with the
    worker's whole traceback as its message; of that, only the original error's text is kept."""
    text = str(error)
    if _WORKER_TRACEBACK not in text:
        return one_line(text)
    lines = text.split(_WORKER_TRACEBACK, 1)[1].splitlines()
    # the traceback's frames are indented; the original error is the last unindented block
    starts = [
        index
        for index, line in enumerate(lines)
        if line
        and not line[0].isspace()
        and not line.startswith(("Traceback", "During handling", "The above exception"))
    ]
    original = " ".join(lines[starts[-1] :]) if starts else text
    name, _, message = original.partition(": ")
    return one_line(f"{message or name} (in a data loader worker)")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def add_command(subparsers, name: str, run: Callable[[argparse.Namespace], int], **texts) -> argparse.ArgumentParser:
    """A command's parser (``texts``: its ``help`` and ``description``), set to call ``run``
    with the parsed arguments; ``main`` reports errors with the parser's name."""
    parser = subparsers.add_parser(name, **texts)
    parser.set_defaults(run=run, parser=parser)
    return parser


# --- argument types ----------------------------------------------------------------------------


def int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"resolution\": 64}}', got {text!r}")
    return value


# --- arguments several commands add the same way -----------------------------------------------

DEVICE_HELP = "cpu, cuda, ... (default: cuda when available)"


def add_device(parser: argparse.ArgumentParser, default: str | None = None, help: str = DEVICE_HELP) -> None:
    parser.add_argument("--device", default=default, help=help)


def add_tensorboard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensorboard", type=Path, help="write TensorBoard logs to this directory")


def add_json_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")


def add_env_kwargs(parser: argparse.ArgumentParser, help: str = "JSON object of keyword arguments for the env") -> None:
    parser.add_argument("--env-kwargs", default={}, type=json_object, help=help)


def add_perception(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--perception", help="perception checkpoint or shipped name (default: the shipped default model)"
    )


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The agent's options shared by ``train-agent`` and ``dream``: its set policy, and where its
    imagined episodes start."""
    parser.add_argument(
        "--hidden-dim", default=128, type=positive_int, help="width of the set extractor's MLPs (default 128)"
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="PPO on slots or ground truth: average the policy over the square's rotations and reflections (built-in tasks)",
    )
    parser.add_argument(
        "--imagination-starts",
        default=4096,
        type=positive_int,
        help="in imagination: real first frames (resets, no env steps) imagined episodes start from (default 4096)",
    )


# --- running a command -------------------------------------------------------------------------


def user_errors(function: Callable[[], object]):
    """Run ``function``; a ValueError (bad env kwargs, spaces, frames) is a user error here."""
    try:
        return function()
    except ValueError as error:
        if isinstance(error, OcrlError):
            raise
        raise OcrlError(str(error)) from error


def print_json(result: dict, out: Path | None) -> None:
    """Print ``result`` as JSON and, when ``out`` is given, also write it there atomically."""
    from ocrl.files import write_atomically

    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda file: file.write(text.encode() + b"\n"))
    print(text)


def load_perception(name_or_path: str, device: str | None):
    """The perception model of a checkpoint directory or shipped name, on ``device`` or the default."""
    import ocrl
    from ocrl.device import default_device

    return ocrl.load_perception(name_or_path, device=device or default_device())


def perception_reference(name_or_path: str) -> str:
    """A shipped name as it is; a checkpoint path made absolute, so that a checkpoint that records
    it finds the model from anywhere."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path

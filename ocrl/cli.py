"""The ``ocrl`` command line: ``ocrl <command> [options]``.

Each command adds its parser in an ``add_<command>`` function and sets ``run`` to the function
that executes it; a new command is one more such pair listed in :data:`COMMANDS`. User errors
(:class:`~ocrl.errors.OcrlError`, bad arguments) print one line ``ocrl <command>: error: ...``
and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ocrl.errors import CollectionInterrupted, OcrlError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _error_message(error: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker arrives with the
    worker's whole traceback as its message; of that, only the original error's text is kept."""
    text = str(error)
    if _WORKER_TRACEBACK not in text:
        return _one_line(text)
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
    return _one_line(f"{message or name} (in a data loader worker)")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"resolution\": 64}}', got {text!r}")
    return value


def _policy(text: str) -> str:
    if text != "random" and not Path(text).exists():
        raise argparse.ArgumentTypeError(
            f"expected 'random', an agent directory from 'ocrl train-agent' or a Stable-Baselines3 .zip; no {text!r}"
        )
    return text


# --- ocrl collect ------------------------------------------------------------------------------


def add_collect(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="collect rollouts of an env into a dataset directory",
        description="Collect episodes of any env into a rollout store; rerun to resume, or with a larger --episodes to append.",
    )
    parser.add_argument(
        "--env", required=True, help="env id: ocrl/..., MiniGrid-..., dm_control/..., or any gymnasium id"
    )
    parser.add_argument(
        "--episodes", required=True, type=_positive_int, help="total number of episodes the store should hold"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="store directory (created, or resumed if it is a store)"
    )
    parser.add_argument(
        "--policy",
        default="random",
        type=_policy,
        help="'random' (default), an agent directory from 'ocrl train-agent', or a Stable-Baselines3 .zip",
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="with an agent or SB3 policy: its most likely actions, not samples"
    )
    parser.add_argument("--num-envs", default=8, type=_positive_int, help="sub-envs stepped together (default 8)")
    parser.add_argument(
        "--seed", default=0, type=_non_negative_int, help="episode i is reset with seed + i (default 0)"
    )
    parser.add_argument(
        "--env-kwargs", default={}, type=_json_object, help="JSON object of keyword arguments for the env"
    )
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="one process per sub-env")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also decode every stored frame (stored episodes are always CRC-checked); broken ones are collected again",
    )
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
            verify=args.verify,
        )
    except CollectionInterrupted as interruption:
        print(interruption, file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{len(store)} episodes, {store.num_frames} frames of {store.env_id} in {store.path}")
    return 0


# --- ocrl pretrain / eval-perception / viz -----------------------------------------------------


def add_pretrain(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train a perception model on rollout stores",
        description="Train a video slot model on clips of rollout stores; rerun the same command to resume.",
    )
    parser.add_argument("--data", required=True, nargs="+", type=Path, help="rollout store(s) from 'ocrl collect'")
    parser.add_argument(
        "--model",
        default="smoothsa",
        choices=["slot_attention", "tf_inv", "smoothsa", "loci"],
        help="model family (default smoothsa); loci: Loci-Segmented, trained in stages (background, objects, full)",
    )
    parser.add_argument(
        "--config",
        default="quick",
        choices=["quick", "base", "movi-c", "movi-e"],
        help="quick: minutes on a CPU; base: a GPU run; movi-c / movi-e: the papers' MOVi set-ups (11 / 24 slots, 6-frame clips, 128 px)",
    )
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="first-frame slot queries from the ground-truth object boxes (SAVi's conditioning; needs a store with object_box, e.g. from 'ocrl movi convert')",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory (resumed if it holds this model)")
    parser.add_argument("--steps", type=_positive_int, help="optimisation steps (default from --config)")
    parser.add_argument("--batch-size", type=_positive_int, help="clips per step and process (default from --config)")
    parser.add_argument("--slots", type=_positive_int, help="slots per frame (default from --config)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--tensorboard", type=Path, help="write TensorBoard logs to this directory")
    parser.add_argument(
        "--foreground",
        choices=["masks", "median"],
        help="loci: what its uncertainty network learns: ground-truth masks (default) or, without labels, the difference to the stores' median frame",
    )
    parser.set_defaults(run=run_pretrain, parser=parser)


def run_pretrain(args: argparse.Namespace) -> int:
    if args.model == "loci":
        return _run_pretrain_loci(args)
    if args.foreground is not None:
        raise OcrlError("--foreground is for --model loci")
    from ocrl.training import pretrain

    pretrain(
        args.data,
        args.out,
        family=args.model,
        preset=args.config,
        num_slots=args.slots,
        steps=args.steps,
        batch_size=args.batch_size,
        device=args.device,
        tensorboard=args.tensorboard,
        conditional=args.conditional,
    )
    return 0


def _run_pretrain_loci(args: argparse.Namespace) -> int:
    from ocrl.perception.loci.training import pretrain_loci

    if args.conditional:
        raise OcrlError("--conditional is not for --model loci: Loci-s assigns its slots without ground truth")
    if args.steps is not None or args.batch_size is not None:
        raise OcrlError("--steps and --batch-size are per stage for --model loci; use a --config preset")
    pretrain_loci(
        args.data,
        args.out,
        preset=args.config,
        num_slots=args.slots,
        device=args.device,
        tensorboard=args.tensorboard,
        foreground_target=args.foreground,
    )
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The perception model to load and the rollout store to run it on."""
    parser.add_argument("checkpoint", help="checkpoint directory or shipped model name")
    parser.add_argument("--data", required=True, type=Path, help=data_help)
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def add_eval_perception(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-perception",
        help="FG-ARI, mIoU and mBO of a perception model on held-out rollouts",
        description="Encode held-out episodes online and score the slot masks against ground truth; prints JSON.",
    )
    _add_model_arguments(parser, "rollout store with ground-truth masks")
    parser.add_argument("--frames", default=24, type=_positive_int, help="frames per video (default 24)")
    parser.add_argument("--episodes", type=_positive_int, help="at most this many episodes (default all)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.set_defaults(run=run_eval_perception, parser=parser)


def _load_model(name_or_path: str, device: str | None):
    import ocrl
    from ocrl.device import default_device

    return ocrl.load_perception(name_or_path, device=device or default_device())


def run_eval_perception(args: argparse.Namespace) -> int:
    from ocrl.evaluation import evaluate_perception
    from ocrl.preflight import preflight

    preflight(stores=[args.data], device=args.device, output_file=args.out)
    model = _load_model(args.checkpoint, args.device)
    _print_json(
        {
            "checkpoint": str(args.checkpoint),
            **evaluate_perception(model, args.data, num_frames=args.frames, max_episodes=args.episodes),
        },
        args.out,
    )
    return 0


def _print_json(result: dict, out: Path | None) -> None:
    """Print ``result`` as JSON and, when ``out`` is given, also write it there atomically."""
    from ocrl.files import write_atomically

    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda file: file.write(text.encode() + b"\n"))
    print(text)


def add_viz(subparsers) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="pictures of what a perception model sees in an episode, or a world model imagines",
        description="Write PREFIX.png (input, reconstruction, segmentation and each slot over time) and PREFIX.gif; with --world-model, real against imagined frames.",
    )
    _add_model_arguments(parser, "rollout store")
    parser.add_argument(
        "--episode", default=0, type=_non_negative_int, help="episode position in the store (default 0)"
    )
    parser.add_argument("--frames", default=12, type=_positive_int, help="frames from the episode start (default 12)")
    parser.add_argument("--out", required=True, type=Path, help="output prefix: writes PREFIX.png and PREFIX.gif")
    parser.add_argument(
        "--world-model",
        type=Path,
        help="show real against imagined frames of this world model instead (CHECKPOINT: its perception model)",
    )
    parser.add_argument(
        "--context", default=4, type=_positive_int, help="with --world-model: true frames before imagining (default 4)"
    )
    parser.set_defaults(run=run_viz, parser=parser)


def run_viz(args: argparse.Namespace) -> int:
    from ocrl.evaluation import encode_video
    from ocrl.perception.frames import prepare_frames
    from ocrl.preflight import preflight
    from ocrl.viz import save_perception_pictures

    (store,) = preflight(stores=[args.data], device=args.device, output_file=args.out.with_name(args.out.name + ".png"))
    if args.episode >= len(store):
        raise OcrlError(f"{args.data} has {len(store)} episodes; --episode {args.episode} is out of range")
    if args.world_model is not None:
        from ocrl.world_models import load_world_model
        from ocrl.world_models.evaluation import save_imagination_pictures

        world_model = load_world_model(args.world_model, device=args.device)
        if not _same_perception(args.checkpoint, world_model.config.perception):
            raise OcrlError(
                f"the world model {args.world_model} models the codes of perception {world_model.config.perception!r}, not of {args.checkpoint!r}; pass that one as CHECKPOINT"
            )
        model = _load_model(args.checkpoint, args.device)
        png, gif = _user_errors(
            lambda: save_imagination_pictures(
                world_model, model, store, args.episode, args.frames, args.context, args.out
            )
        )
        print(f"wrote {png} and {gif}")
        return 0
    model = _load_model(args.checkpoint, args.device)
    frames = store.episode(args.episode).frames(0, args.frames)
    encoded = encode_video(model, frames[None])
    shown = (
        (prepare_frames(frames, model.resolution, "cpu", resize=True).permute(0, 2, 3, 1).numpy() * 255)
        .round()
        .astype("uint8")
    )
    png, gif = save_perception_pictures(
        shown, encoded["reconstructions"][0].numpy(), encoded["masks"][0].numpy(), args.out
    )
    print(f"wrote {png} and {gif}")
    return 0


# --- ocrl train-agent / eval-agent -------------------------------------------------------------


def _same_perception(given: str, recorded: str) -> bool:
    """Whether the perception reference ``given`` names the model ``recorded`` in a checkpoint
    (a shipped name, or a path that may be written differently)."""
    if given == recorded:
        return True
    given_path, recorded_path = Path(given), Path(recorded)
    return given_path.exists() and recorded_path.exists() and given_path.resolve() == recorded_path.resolve()


def add_train_agent(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-agent",
        help="train an SB3 agent on slot codes, pixels or ground-truth objects",
        description="Train an SB3 agent; rerun the same command to resume. Writes an agent checkpoint directory and evaluates it at the end.",
    )
    parser.add_argument(
        "--env", required=True, help="env id: ocrl/..., MiniGrid-..., dm_control/..., or any gymnasium id with frames"
    )
    parser.add_argument("--algo", default="ppo", choices=["ppo", "sac", "dqn"], help="SB3 algorithm (default ppo)")
    parser.add_argument(
        "--observation",
        default="slots",
        choices=["slots", "pixels", "ground-truth"],
        help="slots (default): codes of --perception; pixels: CnnPolicy baseline; ground-truth: the oracle",
    )
    parser.add_argument(
        "--perception", help="perception checkpoint or shipped name (default: the shipped default model)"
    )
    parser.add_argument(
        "--extractor",
        default="relation",
        choices=["relation", "transformer", "deepsets"],
        help="slot-set features extractor (default relation)",
    )
    parser.add_argument(
        "--steps",
        default=100_000,
        type=_positive_int,
        help="env steps, all sub-envs together, rounded up to whole PPO rollouts (default 100000)",
    )
    parser.add_argument("--num-envs", default=16, type=_positive_int, help="sub-envs (default 16)")
    parser.add_argument("--seed", default=0, type=_non_negative_int, help="seed (default 0)")
    parser.add_argument(
        "--env-kwargs", default={}, type=_json_object, help="JSON object of keyword arguments for the env"
    )
    parser.add_argument(
        "--algo-kwargs", default={}, type=_json_object, help="JSON object of keyword arguments for the SB3 algorithm"
    )
    parser.add_argument(
        "--eval-episodes", default=50, type=_positive_int, help="held-out episodes of each evaluation (default 50)"
    )
    parser.add_argument(
        "--checkpoint-every",
        default=20_000,
        type=_positive_int,
        help="env steps between evaluations (OUT/curve.csv) and checkpoints (default 20000)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="agent checkpoint directory (resumed if it holds this agent)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--imagination",
        type=Path,
        help="world-model checkpoint: train inside it on slot codes, evaluate in the real env",
    )
    parser.add_argument("--tensorboard", type=Path, help="write TensorBoard logs to this directory")
    parser.set_defaults(run=run_train_agent, parser=parser)


def _user_errors(function: Callable[[], object]):
    """Run ``function``; a ValueError (bad env kwargs, spaces, frames) is a user error here."""
    try:
        return function()
    except ValueError as error:
        if isinstance(error, OcrlError):
            raise
        raise OcrlError(str(error)) from error


def run_train_agent(args: argparse.Namespace) -> int:
    from ocrl.agents import AgentConfig, train_agent

    def train():
        config = AgentConfig(
            env_id=args.env,
            algo=args.algo,
            observation=args.observation.replace("-", "_"),
            perception=None if args.perception is None else _perception_reference(args.perception),
            extractor=args.extractor,
            env_kwargs=args.env_kwargs,
            algo_kwargs=args.algo_kwargs,
            imagination=None if args.imagination is None else str(args.imagination.resolve()),
        )
        return train_agent(
            config,
            args.out,
            steps=args.steps,
            num_envs=args.num_envs,
            seed=args.seed,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            eval_episodes=args.eval_episodes,
            tensorboard=args.tensorboard,
        )

    metrics = _user_errors(train)
    print(json.dumps({"agent": str(args.out), **metrics}, indent=2))
    return 0


def _perception_reference(name_or_path: str) -> str:
    """A shipped name as it is; a checkpoint path made absolute, so the agent finds it from anywhere."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def add_eval_agent(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-agent",
        help="success rate and return of a trained agent",
        description="Evaluate an agent checkpoint in its env (seeds apart from training's); prints JSON, optionally writes an episode GIF.",
    )
    parser.add_argument("agent", type=Path, help="agent checkpoint directory from 'ocrl train-agent'")
    parser.add_argument("--episodes", default=20, type=_positive_int, help="episodes (default 20)")
    parser.add_argument(
        "--seed", default=1_000_000, type=_non_negative_int, help="seed of the first episode (default 1000000)"
    )
    parser.add_argument(
        "--video", type=Path, help="also write one episode as a GIF (slot masks over the frames for slot agents)"
    )
    parser.add_argument(
        "--env-kwargs",
        default={},
        type=_json_object,
        help='JSON object over the agent\'s env options, e.g. \'{"colours": "ood"}\' for out-of-distribution colours',
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.set_defaults(run=run_eval_agent, parser=parser)


def run_eval_agent(args: argparse.Namespace) -> int:
    from ocrl.agents import evaluate_policy_in_env, load_agent
    from ocrl.agents.training import record_episode
    from ocrl.preflight import preflight

    preflight(device=args.device, output_file=args.video)

    def evaluate():
        policy, config = load_agent(args.agent, device=args.device)
        config = dataclasses.replace(config, env_kwargs={**config.env_kwargs, **args.env_kwargs})
        result = {
            "agent": str(args.agent),
            "env_kwargs": config.env_kwargs,
            **evaluate_policy_in_env(policy, config, args.episodes, seed=args.seed, device=args.device),
        }
        if args.video:
            result["video"] = record_episode(policy, config, args.video, seed=args.seed, device=args.device)
        return result

    print(json.dumps(_user_errors(evaluate), indent=2))
    return 0


# --- ocrl train-world-model / eval-world-model ------------------------------------------------


def add_train_world_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-world-model",
        help="train a slot-transformer world model on encoded rollouts",
        description="Encode a rollout store once with a frozen perception model (codes cached on disk), then train a world model on them; rerun the same command to resume.",
    )
    parser.add_argument("--data", required=True, type=Path, help="rollout store from 'ocrl collect'")
    parser.add_argument(
        "--perception", help="perception checkpoint or shipped name (default: the shipped default model)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="world-model checkpoint directory (resumed if it holds this model)"
    )
    parser.add_argument("--steps", type=_positive_int, help="training steps (default 4000)")
    parser.add_argument("--batch-size", type=_positive_int, help="windows per step (default 32)")
    parser.add_argument("--history", type=_positive_int, help="steps the model attends to (default 8)")
    parser.add_argument(
        "--rollout-steps", type=_non_negative_int, help="open-loop steps of the rollout loss (default 3)"
    )
    parser.add_argument("--cache", type=Path, help="code cache directory (default DATA/codes/<perception fingerprint>)")
    parser.add_argument("--seed", default=0, type=_non_negative_int, help="seed (default 0)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--tensorboard", type=Path, help="write TensorBoard logs to this directory")
    parser.set_defaults(run=run_train_world_model, parser=parser)


def run_train_world_model(args: argparse.Namespace) -> int:
    import dataclasses

    from ocrl.world_models import WorldModelTrainingConfig, train_world_model

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "rollout_steps": args.rollout_steps}
    training = dataclasses.replace(
        WorldModelTrainingConfig(seed=args.seed),
        **{key: value for key, value in overrides.items() if value is not None},
    )
    model_config = {} if args.history is None else {"history": args.history}
    perception = None if args.perception is None else _perception_reference(args.perception)
    _user_errors(
        lambda: train_world_model(
            args.data,
            args.out,
            perception,
            model_config=model_config,
            training=training,
            cache=args.cache,
            device=args.device,
            tensorboard=args.tensorboard,
        )
    )
    return 0


def add_eval_world_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-world-model",
        help="open-loop error against horizon, and reward accuracy, of a world model",
        description="Score a world model on held-out rollouts against the copy-last-state baseline; prints JSON.",
    )
    parser.add_argument("world_model", type=Path, help="world-model checkpoint directory")
    parser.add_argument(
        "--data", required=True, type=Path, help="held-out rollout store (ground-truth masks give FG-ARI)"
    )
    parser.add_argument(
        "--horizons", default=[1, 5, 10], type=_positive_int, nargs="+", help="horizons to report (default 1 5 10)"
    )
    parser.add_argument("--context", default=4, type=_positive_int, help="true steps before the open loop (default 4)")
    parser.add_argument(
        "--windows", default=256, type=_positive_int, help="at most this many open-loop windows (default 256)"
    )
    parser.add_argument("--cache", type=Path, help="code cache directory (default DATA/codes/<perception fingerprint>)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.set_defaults(run=run_eval_world_model, parser=parser)


def run_eval_world_model(args: argparse.Namespace) -> int:
    from ocrl.preflight import preflight
    from ocrl.world_models import evaluate_world_model, load_world_model

    preflight(stores=[args.data], stores_need_actions=True, device=args.device, output_file=args.out)

    def evaluate():
        model = load_world_model(args.world_model, device=args.device)
        perception = _load_model(model.config.perception, args.device)
        return evaluate_world_model(
            model,
            args.data,
            perception,
            horizons=args.horizons,
            context=args.context,
            max_windows=args.windows,
            cache=args.cache,
        )

    _print_json({"world_model": str(args.world_model), **_user_errors(evaluate)}, args.out)
    return 0


# --- ocrl movi convert / generate ---------------------------------------------------------------


def add_movi(subparsers) -> None:
    parser = subparsers.add_parser(
        "movi",
        help="Kubric MOVi datasets: convert TFDS shards into a rollout store, or generate MOVi-style videos with MuJoCo",
        description="Read MOVi TFRecord shards without TensorFlow (see README: MOVi).",
    )
    movi_commands = parser.add_subparsers(
        title="movi commands", dest="movi_command", required=True, metavar="<movi command>"
    )
    parser.set_defaults(parser=parser)

    convert = movi_commands.add_parser(
        "convert",
        help="convert MOVi TFRecord shards into a rollout store",
        description="Convert MOVi TFRecord shards (a file, a directory or a quoted glob) into a rollout store that 'ocrl pretrain' and 'ocrl eval-perception' read; rerun to resume.",
    )
    convert.add_argument("source", metavar="SRC", help="shard file, directory of *.tfrecord* shards, or a quoted glob")
    convert.add_argument("out", metavar="DST", type=Path, help="store directory (created, or resumed if it is a store)")
    convert.add_argument(
        "--resolution",
        type=_positive_int,
        help="frame side in the store, an integer fraction of the shards' (default: the shards')",
    )
    convert.add_argument("--workers", type=_non_negative_int, help="processes (default: CPU count; 0: this process)")
    convert.add_argument("--max-videos", type=_positive_int, help="convert only the first so many videos")
    convert.set_defaults(run=run_movi_convert, parser=convert)

    generate = movi_commands.add_parser(
        "generate",
        help="render MOVi-style physics videos with MuJoCo into TFRecord shards",
        description="Render MOVi-style videos (objects dropped and thrown onto a floor) with MuJoCo, written as TFRecord shards in the MOVi schema; rerun to resume.",
    )
    generate.add_argument("out", metavar="DST", type=Path, help="directory for the shards")
    generate.add_argument("--videos", required=True, type=_positive_int, help="number of videos")
    generate.add_argument("--resolution", default=128, type=_positive_int, help="frame side in pixels (default 128)")
    generate.add_argument("--frames", default=24, type=_positive_int, help="frames per video (default 24, at 12 fps)")
    generate.add_argument("--min-objects", default=3, type=_positive_int, help="fewest objects per video (default 3)")
    generate.add_argument("--max-objects", default=10, type=_positive_int, help="most objects per video (default 10)")
    generate.add_argument("--moving-camera", action="store_true", help="the camera travels during each video (MOVi-E)")
    generate.add_argument(
        "--seed", default=0, type=_non_negative_int, help="video i depends on (seed, i) only (default 0)"
    )
    generate.add_argument("--split", default="train", help="split name in the shard names (default train)")
    generate.add_argument("--videos-per-shard", default=32, type=_positive_int, help="videos per shard (default 32)")
    generate.add_argument(
        "--workers", type=_non_negative_int, help="rendering processes (default: CPU count; 0: this process)"
    )
    generate.set_defaults(run=run_movi_generate, parser=generate)


def run_movi_convert(args: argparse.Namespace) -> int:
    from ocrl.movi.convert import convert_movi

    store = convert_movi(
        args.source, args.out, resolution=args.resolution, workers=args.workers, max_videos=args.max_videos
    )
    print(f"{args.out}: {len(store)} videos of {store.frame_shape[0]}x{store.frame_shape[1]} ({store.env_id})")
    return 0


def run_movi_generate(args: argparse.Namespace) -> int:
    from ocrl.movi.generator import GeneratorConfig, generate_movi

    config = GeneratorConfig(
        resolution=args.resolution,
        num_frames=args.frames,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        moving_camera=args.moving_camera,
    )
    shards = generate_movi(
        args.out,
        args.videos,
        config,
        seed=args.seed,
        videos_per_shard=args.videos_per_shard,
        split=args.split,
        workers=args.workers,
    )
    print(f"{args.out}: {args.videos} videos in {len(shards)} shards")
    return 0


COMMANDS: list[Callable] = [
    add_collect,
    add_pretrain,
    add_eval_perception,
    add_viz,
    add_train_agent,
    add_eval_agent,
    add_train_world_model,
    add_eval_world_model,
    add_movi,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ocrl", description="Object-centric reinforcement learning toolkit.")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="<command>")
    for add_command in COMMANDS:
        add_command(subparsers)
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
        print(f"{args.parser.prog}: error: {_error_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{args.parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # python -m ocrl.cli, as torchrun launches it
    raise SystemExit(main())

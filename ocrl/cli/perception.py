"""Perception commands: ``ocrl pretrain`` (a slot-attention family or Loci-s), ``ocrl
eval-perception`` (segmentation metrics) and ``ocrl viz`` (pictures of what a model sees or a
world model imagines)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrl.cli.common import (
    add_command,
    add_device,
    add_json_out,
    add_tensorboard,
    load_perception,
    non_negative_int,
    positive_int,
    print_json,
    user_errors,
)
from ocrl.errors import OcrlError
from ocrl.names import PERCEPTION_FAMILIES, TRAINING_PRESETS

LOCI = "loci"  # Loci-Segmented, trained by its own staged pretrain_loci


def register(subparsers) -> None:
    add_pretrain(subparsers)
    add_eval_perception(subparsers)
    add_viz(subparsers)


# --- ocrl pretrain -----------------------------------------------------------------------------


def add_pretrain(subparsers) -> None:
    parser = add_command(
        subparsers,
        "pretrain",
        run_pretrain,
        help="train a perception model on rollout stores",
        description="Train a video slot model on clips of rollout stores; rerun the same command to resume.",
    )
    parser.add_argument("--data", required=True, nargs="+", type=Path, help="rollout store(s) from 'ocrl collect'")
    parser.add_argument(
        "--model",
        default="smoothsa",
        choices=[*PERCEPTION_FAMILIES, LOCI],
        help="model family (default smoothsa); loci: Loci-Segmented, trained in stages (background, objects, full)",
    )
    parser.add_argument(
        "--config",
        default="quick",
        choices=TRAINING_PRESETS,
        help="quick: minutes on a CPU; base: a GPU run; movi-c / movi-e: the papers' MOVi set-ups (11 / 24 slots, 6-frame clips, 128 px)",
    )
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="first-frame slot queries from the ground-truth object boxes (SAVi's conditioning; needs a store with object_box, e.g. from 'ocrl movi convert')",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory (resumed if it holds this model)")
    parser.add_argument("--steps", type=positive_int, help="optimisation steps (default from --config)")
    parser.add_argument("--batch-size", type=positive_int, help="clips per step and process (default from --config)")
    parser.add_argument("--slots", type=positive_int, help="slots per frame (default from --config)")
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        help="initial weights and the order of clips (default 0); a rerun with it reproduces",
    )
    parser.add_argument(
        "--stage-steps",
        nargs=3,
        type=non_negative_int,
        metavar=("BACKGROUND", "OBJECTS", "FULL"),
        help="loci: steps of its three stages (default from --config; 0 skips a stage, e.g. the objects stage on stores without masks)",
    )
    add_device(parser, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    add_tensorboard(parser)
    parser.add_argument(
        "--foreground",
        choices=["masks", "median"],
        help="loci: what its uncertainty network learns: ground-truth masks (default) or, without labels, the difference to the stores' median frame",
    )


def run_pretrain(args: argparse.Namespace) -> int:
    if args.model == LOCI:
        return _run_pretrain_loci(args)
    if args.foreground is not None or args.stage_steps is not None:
        raise OcrlError("--foreground and --stage-steps are for --model loci")
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
        seed=args.seed,
    )
    return 0


def _run_pretrain_loci(args: argparse.Namespace) -> int:
    from ocrl.perception.loci.training import pretrain_loci

    if args.conditional:
        raise OcrlError("--conditional is not for --model loci: Loci-s assigns its slots without ground truth")
    if args.steps is not None or args.batch_size is not None:
        raise OcrlError(
            "--steps and --batch-size are per stage for --model loci; use --stage-steps or a --config preset"
        )
    if args.stage_steps is not None and not any(args.stage_steps):
        raise OcrlError("--stage-steps are all 0: give at least one stage steps")
    pretrain_loci(
        args.data,
        args.out,
        preset=args.config,
        num_slots=args.slots,
        steps=None if args.stage_steps is None else tuple(args.stage_steps),
        seed=args.seed,
        device=args.device,
        tensorboard=args.tensorboard,
        foreground_target=args.foreground,
    )
    return 0


# --- ocrl eval-perception / viz ----------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The perception model to load and the rollout store to run it on."""
    parser.add_argument("checkpoint", help="checkpoint directory or shipped model name")
    parser.add_argument("--data", required=True, type=Path, help=data_help)
    add_device(parser)


def add_eval_perception(subparsers) -> None:
    parser = add_command(
        subparsers,
        "eval-perception",
        run_eval_perception,
        help="FG-ARI, mIoU and mBO of a perception model on held-out rollouts",
        description="Encode held-out episodes online and score the slot masks against ground truth; prints JSON.",
    )
    _add_model_arguments(parser, "rollout store with ground-truth masks")
    parser.add_argument("--frames", default=24, type=positive_int, help="frames per video (default 24)")
    parser.add_argument("--episodes", type=positive_int, help="at most this many episodes (default all)")
    add_json_out(parser)


def run_eval_perception(args: argparse.Namespace) -> int:
    from ocrl.evaluation import evaluate_perception
    from ocrl.preflight import preflight

    preflight(stores=[args.data], device=args.device, output_file=args.out)
    model = load_perception(args.checkpoint, args.device)
    print_json(
        {
            "checkpoint": str(args.checkpoint),
            **evaluate_perception(model, args.data, num_frames=args.frames, max_episodes=args.episodes),
        },
        args.out,
    )
    return 0


def add_viz(subparsers) -> None:
    parser = add_command(
        subparsers,
        "viz",
        run_viz,
        help="pictures of what a perception model sees in an episode, or a world model imagines",
        description="Write PREFIX.png (input, reconstruction, segmentation and each slot over time) and PREFIX.gif; with --world-model, real against imagined frames.",
    )
    _add_model_arguments(parser, "rollout store")
    parser.add_argument("--episode", default=0, type=non_negative_int, help="episode position in the store (default 0)")
    parser.add_argument("--frames", default=12, type=positive_int, help="frames from the episode start (default 12)")
    parser.add_argument("--out", required=True, type=Path, help="output prefix: writes PREFIX.png and PREFIX.gif")
    parser.add_argument(
        "--world-model",
        type=Path,
        help="show real against imagined frames of this world model instead (CHECKPOINT: its perception model)",
    )
    parser.add_argument(
        "--context", default=4, type=positive_int, help="with --world-model: true frames before imagining (default 4)"
    )


def run_viz(args: argparse.Namespace) -> int:
    from ocrl.preflight import preflight
    from ocrl.viz import save_video_pictures

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
        model = load_perception(args.checkpoint, args.device)
        png, gif = user_errors(
            lambda: save_imagination_pictures(
                world_model, model, store, args.episode, args.frames, args.context, args.out
            )
        )
        print(f"wrote {png} and {gif}")
        return 0
    model = load_perception(args.checkpoint, args.device)
    png, gif = save_video_pictures(model, store.episode(args.episode).frames(0, args.frames), args.out)
    print(f"wrote {png} and {gif}")
    return 0


def _same_perception(given: str, recorded: str) -> bool:
    """Whether the perception reference ``given`` names the model ``recorded`` in a checkpoint
    (a shipped name, or a path that may be written differently)."""
    if given == recorded:
        return True
    given_path, recorded_path = Path(given), Path(recorded)
    return given_path.exists() and recorded_path.exists() and given_path.resolve() == recorded_path.resolve()

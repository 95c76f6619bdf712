"""Data commands: ``ocrl collect`` (rollouts of an env into a store) and ``ocrl movi convert`` /
``ocrl movi generate`` (Kubric MOVi shards)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ocrl import shipped_models
from ocrl.cli.common import (
    EXIT_INTERRUPTED,
    add_command,
    add_env_kwargs,
    non_negative_int,
    positive_int,
)
from ocrl.errors import CollectionInterrupted


def register(subparsers) -> None:
    add_collect(subparsers)
    add_movi(subparsers)


def _policy(text: str) -> str:
    if text != "random" and not Path(text).exists() and text not in shipped_models():
        raise argparse.ArgumentTypeError(
            f"expected 'random', an agent directory from 'ocrl train-agent', a shipped agent's name or a Stable-Baselines3 .zip; no {text!r}"
        )
    return text


# --- ocrl collect ------------------------------------------------------------------------------


def add_collect(subparsers) -> None:
    parser = add_command(
        subparsers,
        "collect",
        run_collect,
        help="collect rollouts of an env into a dataset directory",
        description="Collect episodes of any env into a rollout store; rerun to resume, or with a larger --episodes to append.",
    )
    parser.add_argument(
        "--env", required=True, help="env id: ocrl/..., MiniGrid-..., dm_control/..., or any gymnasium id"
    )
    parser.add_argument(
        "--episodes", required=True, type=positive_int, help="total number of episodes the store should hold"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="store directory (created, or resumed if it is a store)"
    )
    parser.add_argument(
        "--policy",
        default="random",
        type=_policy,
        help="'random' (default), an agent directory from 'ocrl train-agent', a shipped agent's name, or a Stable-Baselines3 .zip",
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="with an agent or SB3 policy: its most likely actions, not samples"
    )
    parser.add_argument("--num-envs", default=8, type=positive_int, help="sub-envs stepped together (default 8)")
    parser.add_argument("--seed", default=0, type=non_negative_int, help="episode i is reset with seed + i (default 0)")
    add_env_kwargs(parser)
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="one process per sub-env")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also decode every stored frame (stored episodes are always CRC-checked); broken ones are collected again",
    )


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

    convert = add_command(
        movi_commands,
        "convert",
        run_movi_convert,
        help="convert MOVi TFRecord shards into a rollout store",
        description="Convert MOVi TFRecord shards (a file, a directory or a quoted glob) into a rollout store that 'ocrl pretrain' and 'ocrl eval-perception' read; rerun to resume.",
    )
    convert.add_argument("source", metavar="SRC", help="shard file, directory of *.tfrecord* shards, or a quoted glob")
    convert.add_argument("out", metavar="DST", type=Path, help="store directory (created, or resumed if it is a store)")
    convert.add_argument(
        "--resolution",
        type=positive_int,
        help="frame side in the store, an integer fraction of the shards' (default: the shards')",
    )
    convert.add_argument("--workers", type=non_negative_int, help="processes (default: CPU count; 0: this process)")
    convert.add_argument("--max-videos", type=positive_int, help="convert only the first so many videos")

    generate = add_command(
        movi_commands,
        "generate",
        run_movi_generate,
        help="render MOVi-style physics videos with MuJoCo into TFRecord shards",
        description="Render MOVi-style videos (objects dropped and thrown onto a floor) with MuJoCo, written as TFRecord shards in the MOVi schema; rerun to resume.",
    )
    generate.add_argument("out", metavar="DST", type=Path, help="directory for the shards")
    generate.add_argument("--videos", required=True, type=positive_int, help="number of videos")
    generate.add_argument("--resolution", default=128, type=positive_int, help="frame side in pixels (default 128)")
    generate.add_argument("--frames", default=24, type=positive_int, help="frames per video (default 24, at 12 fps)")
    generate.add_argument("--min-objects", default=3, type=positive_int, help="fewest objects per video (default 3)")
    generate.add_argument("--max-objects", default=10, type=positive_int, help="most objects per video (default 10)")
    generate.add_argument("--moving-camera", action="store_true", help="the camera travels during each video (MOVi-E)")
    generate.add_argument(
        "--seed", default=0, type=non_negative_int, help="video i depends on (seed, i) only (default 0)"
    )
    generate.add_argument("--split", default="train", help="split name in the shard names (default train)")
    generate.add_argument("--videos-per-shard", default=32, type=positive_int, help="videos per shard (default 32)")
    generate.add_argument(
        "--workers", type=non_negative_int, help="rendering processes (default: CPU count; 0: this process)"
    )


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

"""World-model commands: ``ocrl train-world-model`` (on codes of a frozen perception model),
``ocrl eval-world-model`` (open-loop error against horizon, reward accuracy) and ``ocrl dream``
(the model-based loop: collect, train the world model, train the agent in imagination)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ocrl.cli.common import (
    add_command,
    add_device,
    add_env_kwargs,
    add_json_out,
    add_perception,
    add_policy_options,
    add_tensorboard,
    json_object,
    non_negative_int,
    perception_reference,
    positive_int,
    print_json,
    user_errors,
)


def register(subparsers) -> None:
    add_train_world_model(subparsers)
    add_eval_world_model(subparsers)
    add_dream(subparsers)


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, help="code cache directory (default DATA/codes/<perception fingerprint>)")


def add_train_world_model(subparsers) -> None:
    parser = add_command(
        subparsers,
        "train-world-model",
        run_train_world_model,
        help="train a slot-transformer world model on encoded rollouts",
        description="Encode a rollout store once with a frozen perception model (codes cached on disk), then train a world model on them; rerun the same command to resume.",
    )
    parser.add_argument(
        "--data", required=True, nargs="+", type=Path, help="rollout store(s) of one env from 'ocrl collect'"
    )
    add_perception(parser)
    parser.add_argument(
        "--out", required=True, type=Path, help="world-model checkpoint directory (resumed if it holds this model)"
    )
    parser.add_argument("--steps", type=positive_int, help="training steps (default 4000)")
    parser.add_argument("--batch-size", type=positive_int, help="windows per step (default 32)")
    add_world_model_sizes(parser)
    parser.add_argument(
        "--rollout-steps", type=non_negative_int, help="open-loop steps of the rollout loss (default 3)"
    )
    _add_cache(parser)
    parser.add_argument("--seed", default=0, type=non_negative_int, help="seed (default 0)")
    add_device(parser)
    add_tensorboard(parser)


def add_world_model_sizes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", type=positive_int, help="steps the world model attends to (default 8)")
    parser.add_argument("--width", type=positive_int, help="world-model token width (default 96)")
    parser.add_argument(
        "--layers", type=positive_int, help="world-model transformer layers (default 3; 2 imagine faster, less sharply)"
    )


def world_model_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The sizes given on the command line, as WorldModelConfig overrides."""
    sizes = {"history": args.history, "width": args.width, "num_layers": args.layers}
    return {key: value for key, value in sizes.items() if value is not None}


def run_train_world_model(args: argparse.Namespace) -> int:
    from ocrl.world_models import WorldModelTrainingConfig, train_world_model

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "rollout_steps": args.rollout_steps}
    training = dataclasses.replace(
        WorldModelTrainingConfig(seed=args.seed),
        **{key: value for key, value in overrides.items() if value is not None},
    )
    perception = None if args.perception is None else perception_reference(args.perception)
    user_errors(
        lambda: train_world_model(
            args.data,
            args.out,
            perception,
            model_config=world_model_sizes(args),
            training=training,
            cache=args.cache,
            device=args.device,
            tensorboard=args.tensorboard,
        )
    )
    return 0


def add_eval_world_model(subparsers) -> None:
    parser = add_command(
        subparsers,
        "eval-world-model",
        run_eval_world_model,
        help="open-loop error against horizon, and reward accuracy, of a world model",
        description="Score a world model on held-out rollouts against the copy-last-state baseline; prints JSON.",
    )
    parser.add_argument("world_model", type=Path, help="world-model checkpoint directory")
    parser.add_argument(
        "--data", required=True, type=Path, help="held-out rollout store (ground-truth masks give FG-ARI)"
    )
    parser.add_argument(
        "--horizons", default=[1, 5, 10], type=positive_int, nargs="+", help="horizons to report (default 1 5 10)"
    )
    parser.add_argument("--context", default=4, type=positive_int, help="true steps before the open loop (default 4)")
    parser.add_argument(
        "--windows", default=256, type=positive_int, help="at most this many open-loop windows (default 256)"
    )
    _add_cache(parser)
    add_device(parser)
    add_json_out(parser)


def run_eval_world_model(args: argparse.Namespace) -> int:
    from ocrl.data.store import RolloutStore
    from ocrl.device import default_device
    from ocrl.preflight import preflight
    from ocrl.world_models import evaluate_world_model, load_world_model
    from ocrl.world_models.codes import code_source

    preflight(stores=[args.data], stores_need_actions=True, device=args.device, output_file=args.out)

    def evaluate():
        model = load_world_model(args.world_model, device=args.device)
        perception = code_source(model.config.perception, RolloutStore.open(args.data), args.device or default_device())
        return evaluate_world_model(
            model,
            args.data,
            perception,
            horizons=args.horizons,
            context=args.context,
            max_windows=args.windows,
            cache=args.cache,
        )

    print_json({"world_model": str(args.world_model), **user_errors(evaluate)}, args.out)
    return 0


def add_dream(subparsers) -> None:
    parser = add_command(
        subparsers,
        "dream",
        run_dream,
        help="model-based loop: collect, train the world model, train the agent in imagination, repeat",
        description="Each round: collect real episodes with the current agent (random in round 0), train the world model on all of them, train the agent inside the world model (and in --real-envs real sub-envs beside it), evaluate it in the real env on held-out episodes. Rerun the same command to resume; a larger --rounds goes on.",
    )
    parser.add_argument("--env", default="ocrl/ObjectGoal-v0", help="env id (default ocrl/ObjectGoal-v0)")
    add_env_kwargs(parser)
    parser.add_argument(
        "--observation",
        default="slots",
        choices=["slots", "ground-truth"],
        help="what the agent sees: slot codes of --perception, or the true objects (an oracle world model)",
    )
    add_perception(parser)
    parser.add_argument("--rounds", default=4, type=positive_int, help="rounds (default 4)")
    parser.add_argument(
        "--episodes", default=100, type=positive_int, help="real episodes collected per round (default 100)"
    )
    parser.add_argument(
        "--world-model-steps",
        default=1000,
        type=positive_int,
        help="world-model training steps per round (default 1000)",
    )
    parser.add_argument(
        "--agent-steps", default=50_000, type=positive_int, help="imagined agent steps per round (default 50000)"
    )
    parser.add_argument(
        "--eval-episodes", default=100, type=positive_int, help="held-out real episodes per evaluation (default 100)"
    )
    add_world_model_sizes(parser)
    parser.add_argument("--algo-kwargs", default={}, type=json_object, help="JSON object over the agent's PPO defaults")
    add_policy_options(parser)
    parser.add_argument(
        "--real-envs",
        default=0,
        type=non_negative_int,
        help="of the agent's 16 sub-envs, how many act in the real env beside the imagined ones; their steps count as real (default 0)",
    )
    parser.add_argument(
        "--seed", default=0, type=non_negative_int, help="seed of the world model and agent (default 0)"
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory (resumed if it holds this run)")
    add_device(parser)


def run_dream(args: argparse.Namespace) -> int:
    from ocrl.world_models.dream import DreamConfig, dream

    def run():
        config = DreamConfig(
            env_id=args.env,
            env_kwargs=args.env_kwargs,
            observation=args.observation.replace("-", "_"),
            perception=None if args.perception is None else perception_reference(args.perception),
            rounds=args.rounds,
            episodes_per_round=args.episodes,
            world_model_steps=args.world_model_steps,
            agent_steps=args.agent_steps,
            eval_episodes=args.eval_episodes,
            world_model=world_model_sizes(args),
            algo_kwargs=args.algo_kwargs,
            hidden_dim=args.hidden_dim,
            symmetric=args.symmetric,
            real_envs=args.real_envs,
            imagination_starts=args.imagination_starts,
            seed=args.seed,
        )
        return dream(config, args.out, device=args.device)

    user_errors(run)
    return 0

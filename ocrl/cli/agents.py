"""Agent commands: ``ocrl train-agent`` (SB3 on slot codes, pixels or ground truth) and ``ocrl
eval-agent`` (success rate and return, optionally an episode GIF)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ocrl.cli.common import (
    add_command,
    add_device,
    add_env_kwargs,
    add_perception,
    add_policy_options,
    add_tensorboard,
    json_object,
    non_negative_int,
    perception_reference,
    positive_int,
    user_errors,
)
from ocrl.names import AGENT_ALGORITHMS, AGENT_OBSERVATIONS, EXTRACTOR_KINDS

# on the command line observation kinds are written with hyphens: --observation ground-truth
OBSERVATION_CHOICES = [observation.replace("_", "-") for observation in AGENT_OBSERVATIONS]


def register(subparsers) -> None:
    add_train_agent(subparsers)
    add_eval_agent(subparsers)


def add_train_agent(subparsers) -> None:
    parser = add_command(
        subparsers,
        "train-agent",
        run_train_agent,
        help="train an SB3 agent on slot codes, pixels or ground-truth objects",
        description="Train an SB3 agent; rerun the same command to resume. Writes an agent checkpoint directory and evaluates it at the end.",
    )
    parser.add_argument(
        "--env", required=True, help="env id: ocrl/..., MiniGrid-..., dm_control/..., or any gymnasium id with frames"
    )
    parser.add_argument("--algo", default="ppo", choices=AGENT_ALGORITHMS, help="SB3 algorithm (default ppo)")
    parser.add_argument(
        "--observation",
        default="slots",
        choices=OBSERVATION_CHOICES,
        help="slots (default): codes of --perception; pixels: CnnPolicy baseline; ground-truth: the oracle",
    )
    add_perception(parser)
    parser.add_argument(
        "--max-objects",
        type=positive_int,
        help="ground-truth: rows of the oracle's object set (default: the env's most objects + the agent); more rows let eval-agent add objects",
    )
    parser.add_argument(
        "--extractor",
        default="context",
        choices=EXTRACTOR_KINDS,
        help="slot-set features extractor (default context)",
    )
    add_policy_options(parser)
    parser.add_argument(
        "--steps",
        default=100_000,
        type=positive_int,
        help="env steps, all sub-envs together, rounded up to whole PPO rollouts (default 100000)",
    )
    parser.add_argument("--num-envs", default=16, type=positive_int, help="sub-envs (default 16)")
    parser.add_argument("--seed", default=0, type=non_negative_int, help="seed (default 0)")
    add_env_kwargs(parser)
    parser.add_argument(
        "--algo-kwargs", default={}, type=json_object, help="JSON object of keyword arguments for the SB3 algorithm"
    )
    parser.add_argument(
        "--eval-episodes", default=50, type=positive_int, help="held-out episodes of each evaluation (default 50)"
    )
    parser.add_argument(
        "--checkpoint-every",
        default=20_000,
        type=positive_int,
        help="env steps between evaluations (OUT/curve.csv) and checkpoints (default 20000)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="agent checkpoint directory (resumed if it holds this agent)"
    )
    add_device(parser, default="auto")
    parser.add_argument(
        "--imagination",
        type=Path,
        help="world-model checkpoint: train inside it on slot codes, evaluate in the real env",
    )
    parser.add_argument(
        "--real-envs",
        default=0,
        type=non_negative_int,
        help="with --imagination: how many of the sub-envs act in the real env beside the imagined ones (default 0)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="agent checkpoint to start from (its weights; fresh optimizer and step count), e.g. an agent"
        " trained with --imagination to fine-tune in the real env",
    )
    add_tensorboard(parser)


def run_train_agent(args: argparse.Namespace) -> int:
    from ocrl.agents import AgentConfig, train_agent

    def train():
        config = AgentConfig(
            env_id=args.env,
            algo=args.algo,
            observation=args.observation.replace("-", "_"),
            perception=None if args.perception is None else perception_reference(args.perception),
            extractor=args.extractor,
            env_kwargs=args.env_kwargs,
            algo_kwargs=args.algo_kwargs,
            imagination=None if args.imagination is None else str(args.imagination.resolve()),
            max_objects=args.max_objects,
            hidden_dim=args.hidden_dim,
            symmetric=args.symmetric,
            real_envs=args.real_envs,
            imagination_starts=args.imagination_starts,
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
            init=args.init,
        )

    metrics = user_errors(train)
    print(json.dumps({"agent": str(args.out), **metrics}, indent=2))
    return 0


def add_eval_agent(subparsers) -> None:
    parser = add_command(
        subparsers,
        "eval-agent",
        run_eval_agent,
        help="success rate and return of a trained agent",
        description="Evaluate an agent checkpoint in its env (seeds apart from training's); prints JSON, optionally writes an episode GIF.",
    )
    parser.add_argument(
        "agent", type=Path, help="agent checkpoint directory from 'ocrl train-agent', or a shipped agent's name"
    )
    parser.add_argument("--episodes", default=20, type=positive_int, help="episodes (default 20)")
    parser.add_argument(
        "--seed", default=1_000_000, type=non_negative_int, help="seed of the first episode (default 1000000)"
    )
    parser.add_argument(
        "--stochastic",
        action="store_true",
        help="sample actions from the policy instead of taking the most likely one",
    )
    parser.add_argument(
        "--video", type=Path, help="also write one episode as a GIF (slot masks over the frames for slot agents)"
    )
    add_env_kwargs(
        parser,
        help='JSON object over the agent\'s env options, e.g. \'{"colours": "ood"}\' for out-of-distribution colours',
    )
    add_device(parser)


def run_eval_agent(args: argparse.Namespace) -> int:
    from ocrl.agents import evaluate_policy_in_env, load_agent
    from ocrl.agents.training import record_episode
    from ocrl.preflight import preflight

    preflight(device=args.device, output_file=args.video)

    def evaluate():
        policy, config = load_agent(args.agent, device=args.device)
        config = dataclasses.replace(config, env_kwargs={**config.env_kwargs, **args.env_kwargs})
        if config.observation == "ground_truth":  # as many rows as the policy reads, whatever the env's count
            config = dataclasses.replace(config, max_objects=policy.observation_space["slots"].shape[0])
        deterministic = not args.stochastic
        result = {
            "agent": str(args.agent),
            "env_kwargs": config.env_kwargs,
            **evaluate_policy_in_env(
                policy, config, args.episodes, seed=args.seed, deterministic=deterministic, device=args.device
            ),
        }
        if args.video:
            result["video"] = record_episode(
                policy, config, args.video, seed=args.seed, device=args.device, deterministic=deterministic
            )
        return result

    print(json.dumps(user_errors(evaluate), indent=2))
    return 0

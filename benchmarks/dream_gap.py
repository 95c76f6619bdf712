"""Where imagination and the real env part: an agent of ``ocrl dream`` (or any agent with a world
model of its env and observation) plays the same held-out episodes twice, once in the real env and
once inside the world model from the same first frame, taking its most likely action each step.
Each episode ends in one of three ways: success (a return of at least ``--success-return``; the
built-in tasks pay 1 for success, the world model's predicted rewards are not exactly 0
elsewhere), failure (it ended with less: a distractor touched) or the time limit. The table counts the pairs (real, imagined): an
episode that times out in the real env but succeeds in imagination is one where the world model
let the agent past a state it cannot leave in the real env.

    .venv/bin/python benchmarks/dream_gap.py runs/dream --episodes 100

``RUN`` is an ``ocrl dream`` directory (its ``agent`` and ``world-model``), or pass ``--agent``
and ``--world-model`` instead. Episodes are the first of reset seeds 10**6, 10**6 + 1, ...
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ocrl.agents import load_agent, make_vec_env
from ocrl.agents.training import EVALUATION_SEED
from ocrl.world_models import load_world_model, starts_from_env
from ocrl.world_models.imagination import ImaginedEpisodes

OUTCOMES = ("success", "failure", "time limit")


def outcome(episode_return: float, timed_out: bool, success_return: float) -> str:
    return "success" if episode_return >= success_return else ("time limit" if timed_out else "failure")


def real_outcomes(policy, config, episodes: int, success_return: float) -> list[str]:
    venv = make_vec_env(config, 1)
    outcomes = []
    try:
        for index in range(episodes):
            venv.seed(EVALUATION_SEED + index)
            observation, episode_return, done = venv.reset(), 0.0, False
            while not done:
                action, _ = policy.predict(observation, deterministic=True)
                observation, reward, dones, infos = venv.step(action)
                episode_return, done = episode_return + float(reward[0]), bool(dones[0])
            outcomes.append(outcome(episode_return, infos[0].get("TimeLimit.truncated", False), success_return))
    finally:
        venv.close()
    return outcomes


def imagined_outcomes(policy, world_model, episodes: int, success_return: float) -> list[str]:
    starts = starts_from_env(world_model, count=episodes, seed=EVALUATION_SEED)
    imagined = ImaginedEpisodes(world_model, episodes)
    imagined.start(np.arange(episodes), starts)
    observation = dict(starts)
    returns = np.zeros(episodes)
    ended: list[str | None] = [None] * episodes
    limit = gym.spec(world_model.config.env_id).max_episode_steps or 100
    for _ in range(limit):
        action, _ = policy.predict(observation, deterministic=True)
        output = imagined.step(action)
        observation = output.codes.to_numpy()
        returns += output.reward.float().cpu().numpy()
        stops = (torch.sigmoid(output.continue_logits) < 0.5).cpu().numpy()
        for index in np.flatnonzero(stops):
            if ended[index] is None:
                ended[index] = outcome(returns[index], False, success_return)
        if all(ended):
            break  # every episode has ended: no more steps to take
    return [end or outcome(returns[index], True, success_return) for index, end in enumerate(ended)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="an 'ocrl dream' directory")
    parser.add_argument("--agent", help="agent checkpoint (default RUN/agent)")
    parser.add_argument("--world-model", help="world-model checkpoint (default RUN/world-model)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--success-return", type=float, default=0.5, help="least return of a success (default 0.5)")
    args = parser.parse_args()
    if args.run is None and (args.agent is None or args.world_model is None):
        parser.error("pass a dream directory RUN, or --agent and --world-model")
    policy, config = load_agent(args.agent or args.run / "agent", device="cpu")
    world_model = load_world_model(args.world_model or args.run / "world-model", device="cpu")
    real = real_outcomes(policy, config, args.episodes, args.success_return)
    imagined = imagined_outcomes(policy, world_model, args.episodes, args.success_return)
    pairs = collections.Counter(zip(real, imagined))
    print("| real \\ imagined | " + " | ".join(OUTCOMES) + " | all |")
    print("|---" * (len(OUTCOMES) + 2) + "|")
    for row in OUTCOMES:
        counts = [pairs[row, column] for column in OUTCOMES]
        print(f"| {row} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |")
    totals = [imagined.count(column) for column in OUTCOMES]
    print("| all | " + " | ".join(map(str, totals)) + f" | {args.episodes} |")
    rates = {
        "real_success_rate": real.count("success") / args.episodes,
        "imagined_success_rate": imagined.count("success") / args.episodes,
        "episodes": args.episodes,
    }
    print(json.dumps(rates))


if __name__ == "__main__":
    main()

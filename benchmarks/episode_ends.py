"""How an agent's held-out episodes end on a built-in task, taking its most likely action: success,
a distractor touched, or the time limit, split by where the agent was over its last 10 steps:
stuck (one place: pressing into a wall or an object it may not enter), back and forth (two
places) or other. One env, episodes in a row from reset seed 10**6.

    .venv/bin/python benchmarks/episode_ends.py ppo-objectgoal-oracle --episodes 200
"""

from __future__ import annotations

import argparse
import collections
import json

from ocrl.agents import load_agent, make_vec_env
from ocrl.agents.training import EVALUATION_SEED
from ocrl.cli.common import positive_int
from ocrl.errors import OcrlError


def episode_ends(agent: str, episodes: int) -> dict[str, int]:
    policy, config = load_agent(agent)
    venv = make_vec_env(config, 1, EVALUATION_SEED)
    task = venv.envs[0].unwrapped
    if not hasattr(task, "agent"):
        raise OcrlError(f"{config.env_id} is not a built-in task: its agent's place is unknown")
    counts = collections.Counter({"success": 0, "distractor": 0, "stuck": 0, "back_and_forth": 0, "other": 0})
    try:
        observation, places = venv.reset(), []
        while sum(counts.values()) < episodes:
            places.append((task.agent.x, task.agent.y))
            action, _ = policy.predict(observation, deterministic=True)
            observation, _, done, infos = venv.step(action)
            if done[0]:
                if infos[0].get("is_success"):
                    counts["success"] += 1
                elif not infos[0].get("TimeLimit.truncated"):
                    counts["distractor"] += 1
                else:
                    counts[{1: "stuck", 2: "back_and_forth"}.get(len(set(places[-10:])), "other")] += 1
                places = []
    finally:
        venv.close()
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent", help="agent checkpoint directory or shipped name")
    parser.add_argument("--episodes", type=positive_int, default=200)
    args = parser.parse_args()
    print(json.dumps({"agent": args.agent, **episode_ends(args.agent, args.episodes)}))


if __name__ == "__main__":
    main()

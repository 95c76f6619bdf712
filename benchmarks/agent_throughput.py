"""PPO env-steps/s on slot codes (object-centric SB3 VecEnv wrapper, shipped model) against
pixel CnnPolicy PPO on the same env, with the same PPO settings, measured in one run; and the
RSS of a wrapped vector env over many steps (it must stay flat).

    .venv/bin/python benchmarks/agent_throughput.py --env ocrl/ObjectGoal-v0 --steps 16384
    .venv/bin/python benchmarks/agent_throughput.py --memory-steps 100000

Throughput counts whole PPO iterations (rollout collection and updates), after one warm-up
iteration, as SB3 users see it; the seconds spent in env steps, policy forwards and updates say
where it goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from ocrl.agents import AgentConfig, make_vec_env
from ocrl.agents.training import _algorithm


def ppo_rate(observation: str, env_id: str, steps: int, num_envs: int) -> dict[str, float]:
    """Env-steps/s of whole PPO iterations, and where the time went: seconds in env steps (the
    env and, for slot codes, the perception model), in the rest of rollout collection (policy
    forward) and in the updates."""
    config = AgentConfig(env_id=env_id, observation=observation)
    venv = make_vec_env(config, num_envs, seed=0, device="cpu")
    algorithm = _algorithm(config, venv, device="cpu")
    warmup = algorithm.n_steps * num_envs
    algorithm.learn(warmup)
    seconds = {"env_step": 0.0, "rollout": 0.0, "update": 0.0}

    def timed(function, name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return call

    algorithm.env.step_wait = timed(algorithm.env.step_wait, "env_step")
    algorithm.collect_rollouts = timed(algorithm.collect_rollouts, "rollout")
    algorithm.train = timed(algorithm.train, "update")
    start = time.perf_counter()
    algorithm.learn(steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    venv.close()
    return {
        "env_steps_per_second": round((algorithm.num_timesteps - warmup) / elapsed, 1),
        "seconds_env_step": round(seconds["env_step"], 1),
        "seconds_policy_in_rollout": round(seconds["rollout"] - seconds["env_step"], 1),
        "seconds_update": round(seconds["update"], 1),
    }


def rss_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_trace(env_id: str, steps: int, num_envs: int, every: int = 10_000) -> list[tuple[int, float]]:
    venv = make_vec_env(AgentConfig(env_id=env_id), num_envs, seed=0, device="cpu")
    venv.reset()
    rng = np.random.default_rng(0)
    trace, done_steps = [], 0
    while done_steps < steps:
        venv.step(rng.integers(0, venv.action_space.n, size=num_envs))
        done_steps += num_envs
        if done_steps % every < num_envs:
            trace.append((done_steps, round(rss_megabytes(), 1)))
    venv.close()
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ocrl/ObjectGoal-v0")
    parser.add_argument("--steps", type=int, default=16_384, help="timed PPO steps per observation kind")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument(
        "--memory-steps", type=int, default=0, help="also trace RSS over this many wrapped vector-env steps"
    )
    args = parser.parse_args()
    if args.steps:
        runs = {
            observation: ppo_rate(observation, args.env, args.steps, args.num_envs)
            for observation in ("slots", "pixels")
        }
        ratio = runs["slots"]["env_steps_per_second"] / runs["pixels"]["env_steps_per_second"]
        print(
            json.dumps(
                {"env": args.env, "num_envs": args.num_envs, **runs, "ratio_slots_to_pixels": round(ratio, 2)}, indent=2
            )
        )
    if args.memory_steps:
        trace = memory_trace(args.env, args.memory_steps, args.num_envs)
        print(
            json.dumps(
                {"rss_mb_by_step": trace, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

"""Env steps/s of every built-in task (random actions, rendering and ground truth on) and the
end-to-end speed of `ocrl collect`. Prints a markdown table for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/env_speed.py [--steps 3000] [--collect-episodes 200]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time

import gymnasium as gym
import numpy as np

import ocrl.envs  # noqa: F401  (registers the ocrl/ ids)
from ocrl.data.collect import collect

TASKS = ["ObjectGoal", "ObjectInteraction", "ObjectComparison", "PropertyComparison", "MovingObjects"]


def steps_per_second(env_id: str, resolution: int, steps: int) -> float:
    env = gym.make(env_id, resolution=resolution)
    env.action_space.seed(0)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--collect-episodes", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, numpy {np.__version__}")
    print("| task | 64x64 steps/s | 128x128 steps/s |\n|---|---|---|")
    for task in TASKS:
        env_id = f"ocrl/{task}-v0"
        rates = [steps_per_second(env_id, resolution, args.steps) for resolution in (64, 128)]
        print(f"| {env_id} | {rates[0]:.0f} | {rates[1]:.0f} |")

    out = tempfile.mkdtemp(prefix="ocrl-bench-")
    try:
        start = time.perf_counter()
        store = collect("ocrl/ObjectGoal-v0", args.collect_episodes, f"{out}/rollouts", progress=False)
        seconds = time.perf_counter() - start
        print(
            f"\ncollect ocrl/ObjectGoal-v0 64x64: {len(store)} episodes, {store.num_frames} frames "
            f"in {seconds:.1f} s ({store.num_frames / seconds:.0f} frames/s)"
        )
    finally:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

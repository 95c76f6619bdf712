"""Success rate of slot-code PPO, pixel-CNN PPO and the ground-truth oracle, same step budget,
several seeds, evaluated on 50 held-out episodes each.

    .venv/bin/python benchmarks/agent_learning.py --env ocrl/ObjectGoal-v0 --steps 100000 --seeds 0 1 2 --out runs/learning

Observation ``imagination`` is slot-code PPO trained only inside the world model ``--imagination``
(the same number of imagined steps) and evaluated in the real env. Agents land in OUT/<env>/<observation>-<seed> (rerunning resumes them); results in OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ocrl.agents import AgentConfig, train_agent
from ocrl.files import write_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["ocrl/ObjectGoal-v0"])
    parser.add_argument("--observations", nargs="+", default=["slots", "pixels", "ground_truth"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--imagination", help="world-model checkpoint for observation 'imagination'")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if "imagination" in args.observations and not args.imagination:
        parser.error("observation 'imagination' needs --imagination WORLD_MODEL")
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for env_id in args.env:
        for observation in args.observations:
            for seed in args.seeds:
                name = f"{env_id} {observation} seed {seed}"
                if name in results:
                    continue
                started = time.perf_counter()
                if observation == "imagination":
                    config = AgentConfig(env_id=env_id, observation="slots", imagination=str(Path(args.imagination).resolve()))
                else:
                    config = AgentConfig(env_id=env_id, observation=observation)
                metrics = train_agent(config, args.out / env_id.replace("/", "_") / f"{observation}-{seed}", steps=args.steps, seed=seed, eval_episodes=50)
                results[name] = {**metrics, "seconds": round(time.perf_counter() - started)}
                args.out.mkdir(parents=True, exist_ok=True)
                write_atomically(results_path, lambda file: file.write(json.dumps(results, indent=2).encode()))
    print("| env | observation | seeds | success rate (mean ± std over seeds) | return | minutes per run |\n|---|---|---|---|---|---|")
    for env_id in args.env:
        for observation in args.observations:
            runs = [results[f"{env_id} {observation} seed {seed}"] for seed in args.seeds if f"{env_id} {observation} seed {seed}" in results]
            success = np.array([run["success_rate"] for run in runs])
            print(f"| {env_id} | {observation} | {len(runs)} | {success.mean():.2f} ± {success.std():.2f} ({', '.join(f'{s:.2f}' for s in success)}) | {np.mean([r['mean_return'] for r in runs]):.2f} | {np.mean([r['seconds'] for r in runs]) / 60:.1f} |")


if __name__ == "__main__":
    main()

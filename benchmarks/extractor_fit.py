"""How fast each slot-set extractor learns what a task asks, without reinforcement learning.

On the ground-truth object sets of a touch task's first frames, each extractor kind (with a small
head) is fitted by regression to the offset from the agent to the object to touch (the
``target_index`` the task reports): for ObjectGoal the red circle, for ObjectComparison the odd one
out. Held-out mean squared error after a number of Adam steps, against predicting zero. A kind
that cannot fit the offset quickly from a dense, exact target will not learn it from PPO's noisy
advantages either; one that can shows the policy's learning, not the representation, is what
lags (benchmarks/RESULTS.md, issue 11).

    python benchmarks/extractor_fit.py --env ocrl/ObjectComparison-v0
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import ocrl.envs
from ocrl.agents import GroundTruthObservation, SlotSetExtractor
from ocrl.agents.extractors import KINDS


def offsets(env: GroundTruthObservation, episodes: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """First-frame object sets of ``episodes`` episodes and the agent-to-target offsets (B, 2)."""
    observations, targets = [], []
    for episode in range(episodes):
        observation, info = env.reset(seed=seed + episode)
        observations.append(observation)
        targets.append(observation["position"][info["target_index"], :2] - observation["position"][0, :2])
    batch = {key: torch.as_tensor(np.stack([o[key] for o in observations])) for key in observations[0]}
    return batch, torch.as_tensor(np.stack(targets))


def fit(kind: str, env, train, test, steps: list[int], batch_size: int, seed: int) -> list[float]:
    """Held-out MSE of ``kind`` after each of ``steps`` Adam steps."""
    torch.manual_seed(seed)
    extractor = SlotSetExtractor(env.observation_space, kind=kind, features_dim=64)
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.Adam([*extractor.parameters(), *head.parameters()], lr=1e-3)
    (inputs, targets), (test_inputs, test_targets) = train, test
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for step in range(1, max(steps) + 1):
        index = torch.randint(0, len(targets), (batch_size,), generator=generator)
        loss = (head(extractor({key: value[index] for key, value in inputs.items()})) - targets[index]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            with torch.no_grad():
                errors.append(round(float((head(extractor(test_inputs)) - test_targets).square().mean()), 4))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="ocrl/ObjectComparison-v0", help="a touch task (it reports target_index)")
    parser.add_argument("--kinds", nargs="+", default=[kind for kind in KINDS if kind != "transformer"])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400, 800, 1500])
    parser.add_argument("--train", type=int, default=4000, help="training sets (first frames of episodes)")
    parser.add_argument("--test", type=int, default=1000, help="held-out sets")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    env = GroundTruthObservation(ocrl.envs.make(args.env))
    train, test = offsets(env, args.train, 0), offsets(env, args.test, 1_000_000)
    print(json.dumps({"env": args.env, "steps": args.steps, "predict_zero": round(float(test[1].square().mean()), 4)}))
    for kind in args.kinds:
        for seed in args.seeds:
            start = time.perf_counter()
            errors = fit(kind, env, train, test, sorted(args.steps), args.batch_size, seed)
            seconds = round(time.perf_counter() - start, 1)
            print(json.dumps({"kind": kind, "seed": seed, "mse": errors, "seconds": seconds}))


if __name__ == "__main__":
    main()

"""Perception quality, side by side: each family trained on the same rollouts with the same
step budget, then scored on held-out episodes (video FG-ARI, per-frame FG-ARI, mIoU, mBO).

    .venv/bin/python benchmarks/perception_quality.py --train data/moving data/goal \
        --test data/moving-test data/goal-test --steps 2500 --out runs/quality

Checkpoints land in OUT/<family> (rerunning resumes them); the table is printed and written to
OUT/results.json. SmoothSA is also scored with 3 iterations on later frames instead of 1 (the
same trained weights), with the frames/s of `step` on later frames for both, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ocrl
from ocrl.evaluation import evaluate_perception
from ocrl.files import write_atomically
from ocrl.training import pretrain


def step_rate(model, batch_size: int = 8, repeats: int = 30) -> float:
    """Frames/s of ``step`` on later frames (no masks), median of ``repeats`` calls."""
    frames = torch.randint(0, 256, (batch_size, model.resolution, model.resolution, 3), dtype=torch.uint8)
    _, state = model.step(frames, model.init_state(batch_size), True)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        model.step(frames, state, False)
        times.append(time.perf_counter() - start)
    return batch_size / sorted(times[3:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, nargs="+")
    parser.add_argument("--test", required=True, nargs="+", help="held-out stores, each scored on its own")
    parser.add_argument("--families", nargs="+", default=["slot_attention", "tf_inv", "smoothsa"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    results = {}
    for family in args.families:
        started = time.perf_counter()
        checkpoint = pretrain(args.train, args.out / family, family=family, steps=args.steps)
        train_seconds = time.perf_counter() - started
        model = ocrl.load_perception(checkpoint)
        variants = {family: model.iterations_next}
        if family == "smoothsa":
            variants = {"smoothsa 3+1": 1, "smoothsa 3+3": 3}
        for name, iterations in variants.items():
            model.iterations_next = iterations
            rate = round(step_rate(model, batch_size=8), 1)
            for test in args.test:
                scores = evaluate_perception(model, test, num_frames=args.frames, progress=False)
                results[f"{name} on {scores['env_id']}"] = {
                    "model": name,
                    "train_seconds": round(train_seconds, 1),
                    "steps": args.steps,
                    "next_frame_per_second": rate,
                    **scores,
                }
        write_atomically(args.out / "results.json", lambda file: file.write(json.dumps(results, indent=2).encode()))
    print(
        "| model | held-out env | steps | train s | video FG-ARI | frame FG-ARI | mIoU | mBO | next-frame step frames/s |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in results.values():
        print(
            f"| {r['model']} | {r['env_id']} | {r['steps']} | {r['train_seconds']:.0f} | {r['fg_ari']:.3f} | {r['fg_ari_frame']:.3f} | {r['miou']:.3f} | {r['mbo']:.3f} | {r['next_frame_per_second']:.0f} |"
        )


if __name__ == "__main__":
    main()

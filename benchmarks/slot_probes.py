"""What the slot codes of perception models know about objects (``ocrl.probes``): linear-probe
accuracy of colour and shape (fitted on one store, scored on a held-out one), position error,
depth order and reconstruction PSNR, side by side for several models.

    .venv/bin/python benchmarks/slot_probes.py smoothsa-sprites runs/loci --train data/goal-train --test data/goal-test
"""

from __future__ import annotations

import argparse
import json

from ocrl import load_perception
from ocrl.probes import match_slots, probe_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="shipped model names or checkpoint directories")
    parser.add_argument("--train", required=True, help="rollout store the probes are fitted on")
    parser.add_argument("--test", required=True, help="held-out rollout store they are scored on")
    parser.add_argument("--train-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=40)
    parser.add_argument("--frames", type=int, default=24, help="first frames of each episode")
    parser.add_argument(
        "--min-coverage", type=float, default=0.5, help="a slot holds an object when it wins this share of its pixels"
    )
    args = parser.parse_args()
    results = {}
    for name in args.models:
        model = load_perception(name, device="cpu")
        train, test = (
            match_slots(model, store, args.frames, episodes, min_coverage=args.min_coverage)
            for store, episodes in ((args.train, args.train_episodes), (args.test, args.test_episodes))
        )
        results[name] = {
            key: round(value, 3) if isinstance(value, float) else value
            for key, value in probe_scores(train, test).items()
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps({"train": args.train, "test": args.test, "frames": args.frames, "results": results}, indent=2))


if __name__ == "__main__":
    main()

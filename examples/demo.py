"""The `make demo` job on built-in defaults: collect rollouts from a built-in task and draw a
strip of frames with their ground-truth instance masks.

    .venv/bin/python examples/demo.py --out demo_out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ocrl.data.collect import collect
from ocrl.viz import frame_strip, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (rerunning resumes)")
    parser.add_argument("--env", default="ocrl/MovingObjects-v0")
    parser.add_argument("--episodes", type=int, default=32)
    args = parser.parse_args()
    out = Path(args.out)

    store = collect(args.env, args.episodes, out / "rollouts", seed=0)
    print(f"{len(store)} episodes, {store.num_frames} frames of {args.env} in {out / 'rollouts'}")

    episode = store.episode(0)
    frames = episode.frames(0, 10)
    masks = episode.ground_truth(0, 10)["masks"]
    path = save_png(frame_strip(frames, masks, scale=2), out / "rollout_strip.png")
    print(f"frames and ground-truth masks of episode 0: {path}")
    counts = [len(np.unique(m)) - 1 for m in masks]
    print(f"objects visible per frame: {counts}")


if __name__ == "__main__":
    main()

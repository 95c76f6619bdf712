"""Measure perception speed: ``python -m ocrl.perception.speed [--families ...] [--size small]``.

Prints, per family, ``step`` frames/s on first frames and on later frames, without and with
masks, and the time of one training step (forward + backward + Adam) on a clip batch, each as
the median and the best of the repeats. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from ocrl.perception.build import build_perception
from ocrl.perception.config import FAMILIES, SIZES, perception_config


def _time(function, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """(median, best) seconds per call; the best is what an unloaded machine gives, the
    median what this one gave (other processes share the cores)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], times[0]


def measure(family: str, size: str, resolution: int, batch_size: int, train_batch_size: int, clip_length: int, repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """{measure: (median, best)}: step frames/s (first/next frames, without/with masks) and train step seconds."""
    torch.manual_seed(0)
    model = build_perception(perception_config(family, size, resolution)).to(device).eval()
    frames = torch.randint(0, 256, (batch_size, resolution, resolution, 3), dtype=torch.uint8)
    state = model.init_state(batch_size)
    _, started = model.step(frames, state, True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results = {}
    for masks in (False, True):
        for name, first in (("first", True), ("next", False)):
            median, best = _time(lambda: (model.step(frames, started, first, return_masks=masks), sync()), repeats)
            results[f"{name}{'+masks' if masks else ''} frames/s"] = (batch_size / median, batch_size / best)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    clip = torch.randint(0, 256, (train_batch_size, clip_length, resolution, resolution, 3), dtype=torch.uint8)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model(clip).loss.backward()
        optimizer.step()
        sync()

    results["train step s"] = _time(train_step, max(3, repeats // 10), warmup=2)
    return results


def _format(key: str, values: tuple[float, float]) -> str:
    return f"{key} {values[0]:.3g} (best {values[1]:.3g})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--clip-length", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, size {args.size}, "
          f"{args.resolution}x{args.resolution}, step batch {args.batch_size}, train batch {args.train_batch_size}x{args.clip_length} frames")
    for family in args.families:
        results = measure(family, args.size, args.resolution, args.batch_size, args.train_batch_size, args.clip_length, args.repeats, args.device)
        print(f"{family:15s} " + "  ".join(_format(key, value) for key, value in results.items()), flush=True)


if __name__ == "__main__":
    main()

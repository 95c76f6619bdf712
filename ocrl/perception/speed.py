"""Measure perception speed: ``python -m ocrl.perception.speed [--families ...] [--size small]``
or ``python -m ocrl.perception.speed --checkpoint NAME_OR_PATH`` for a trained model.

Prints, per model, ``step`` frames/s on first frames and on later frames, without and with
masks, and the time of one training step (forward + backward + Adam) on a clip batch, each as
the median and the best of the repeats; the FLOPs of a next-frame ``step`` and the GFLOP/s
they reach, next to the fp32 matmul rate of the machine measured in the same run; and the
process's peak RSS. Preset weights are random: speed does not depend on them. A Loci-s
checkpoint's training step is its ``"full"`` stage (``model(clip)``; the background module is
fixed in it). Freed memory is kept for reuse, as the ``ocrl`` command and the wrappers keep it
(:func:`ocrl.device.keep_freed_memory`; ``benchmarks/loci_step_profile.py`` measures what that
gains).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ocrl.device import keep_freed_memory
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


def matmul_gflops(size: int = 1024, repeats: int = 20, device: str = "cpu") -> float:
    """fp32 GFLOP/s of a square matmul: what the machine's cores give at best."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    median, _ = _time(lambda: torch.mm(a, b), repeats)
    return 2 * size**3 / median / 1e9


def measure(
    model: torch.nn.Module, batch_size: int, train_batch_size: int, clip_length: int, repeats: int, device: str
) -> dict[str, tuple[float, float]]:
    """{measure: (median, best)}: step frames/s (first/next frames, without/with masks), train
    step seconds, and GFLOP per next frame with the GFLOP/s reached."""
    model = model.to(device).eval()
    resolution = model.resolution
    frames = torch.randint(0, 256, (batch_size, resolution, resolution, 3), dtype=torch.uint8)
    state = model.init_state(batch_size)
    _, started = model.step(frames, state, True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results = {}
    for masks in (False, True):
        for name, first in (("first", True), ("next", False)):
            median, best = _time(
                lambda first=first, masks=masks: (model.step(frames, started, first, return_masks=masks), sync()),
                repeats,
            )
            results[f"{name}{'+masks' if masks else ''} frames/s"] = (batch_size / median, batch_size / best)
    with FlopCounterMode(display=False) as counter:
        model.step(frames, started, False)
    gflop_per_frame = counter.get_total_flops() / batch_size / 1e9
    next_rate = results["next frames/s"]
    results["next GFLOP/frame"] = (gflop_per_frame, gflop_per_frame)
    results["next GFLOP/s"] = (gflop_per_frame * next_rate[0], gflop_per_frame * next_rate[1])
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
    parser.add_argument("--checkpoint", help="measure this trained model (shipped name or path) instead of the presets")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--clip-length", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    keep_freed_memory()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, size {args.size}, "
        f"{args.resolution}x{args.resolution} (presets), step batch {args.batch_size}, train batch {args.train_batch_size}x{args.clip_length} frames"
    )
    print(f"fp32 matmul 1024x1024: {matmul_gflops(device=args.device):.0f} GFLOP/s")
    if args.checkpoint:
        import ocrl

        models = {args.checkpoint: ocrl.load_perception(args.checkpoint, device=args.device)}
    else:
        torch.manual_seed(0)
        models = {
            family: build_perception(perception_config(family, args.size, args.resolution)) for family in args.families
        }
    for name, model in models.items():
        results = measure(model, args.batch_size, args.train_batch_size, args.clip_length, args.repeats, args.device)
        print(f"{name:15s} " + "  ".join(_format(key, value) for key, value in results.items()), flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

"""Where a Loci-s next-frame ``step`` spends its time, part by part.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loci_step_profile.py CHECKPOINT --data STORE

Streams ``--batch-size`` held-out episodes through ``step`` (first frame, then 4 next frames),
times ``--repeats`` next-frame steps: frames/s from the median CPU time of this process per step
(what other jobs on the cores take does not count) and from the median wall time, with freed
memory kept for reuse as the ``ocrl`` command and the wrappers run
(:func:`ocrl.device.keep_freed_memory`; ``--glibc-default``: without). Then it
profiles ``--steps`` next-frame steps with ``torch.profiler``, each part of the model under its
own label, and prints each part's share of the step's CPU time (the decoder's mask, depth and
RGB stages are inside the decoder's share).
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

import ocrl
from ocrl.data.store import RolloutStore
from ocrl.device import keep_freed_memory

# label -> (module path under the model, method); "" is the model itself
PARTS = {
    "background": ("background", "forward"),
    "encoder": ("encoder", "forward"),
    "decoder": ("decoder", "forward"),
    "decoder: mask": ("decoder.mask", "forward"),
    "decoder: depth": ("decoder.depth", "forward"),
    "decoder: rgb": ("decoder.rgb", "forward"),
    "composition": ("", "compose"),
    "seeding": ("", "seed"),
    "encoder inputs": ("", "encoder_inputs"),
    "pruning": ("", "prune"),
    "percept gate": ("gate", "forward"),
    "transition": ("transition", "forward"),
}


def label_parts(model) -> None:
    """Wrap each part's method (on the instance) in a profiler label."""
    for label, (path, method) in PARTS.items():
        owner = model.get_submodule(path)
        original = getattr(owner, method)

        def labelled(*args, original=original, label=label, **kwargs):
            with record_function(label):
                return original(*args, **kwargs)

        setattr(owner, method, functools.wraps(original)(labelled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's allocator as it is (to measure what keeping freed memory gains)",
    )
    args = parser.parse_args()
    if not args.glibc_default:
        keep_freed_memory()  # as the ocrl command and the wrappers run
    torch.manual_seed(0)
    model = ocrl.load_perception(args.checkpoint, device="cpu")
    store = RolloutStore.open(args.data)
    length = 5 + args.steps
    chosen = [i for i, record in enumerate(store.episodes) if record.length + 1 >= length][: args.batch_size]
    video = torch.from_numpy(np.stack([store.episode(i).frames(0, length) for i in chosen]))
    state = model.init_state(len(chosen))
    for t in range(5):
        _, state = model.step(video[:, t], state, t == 0)
    after_warmup = state

    state, cpu, wall = after_warmup, [], []
    for i in range(args.repeats):
        frames = video[:, 5 + i % args.steps]
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        _, state = model.step(frames, state, False)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    print(f"{len(chosen)} streams, {model.resolution}x{model.resolution}, {torch.get_num_threads()} threads")
    median = lambda values: sorted(values)[len(values) // 2]
    allocator = "glibc default" if args.glibc_default else "freed memory kept"
    print(
        f"next-frame step ({allocator}): {len(chosen) / median(cpu):.1f} frames/s (CPU time), "
        f"{len(chosen) / median(wall):.1f} (wall)"
    )

    label_parts(model)
    state = after_warmup
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for t in range(5, length):
            with record_function("step"):
                _, state = model.step(video[:, t], state, False)
    totals = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    for label in PARTS:
        print(f"{label:16s} {totals.get(label, 0.0) / totals['step']:6.1%}")
    parts = sum(totals.get(label, 0.0) for label in PARTS if not label.startswith("decoder:"))
    print(f"{'rest':16s} {1 - parts / totals['step']:6.1%}")


if __name__ == "__main__":
    main()

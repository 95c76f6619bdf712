"""Imagined env-steps/s (world model, batched) against real env-steps/s through the
object-centric SB3 wrapper (env + shipped perception model), random actions, in one run.

    .venv/bin/python benchmarks/world_model_speed.py --world-model runs/wm/goal --steps 20000

Without ``--world-model`` an untrained model of the default config on the codes of
``--perception`` (default: the shipped default model) is timed (speed does not depend on the
weights); the real side runs the world model's perception model. Each side runs once as warm-up, then the two alternate ``--repeats``
times; the best rate of each is reported, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import ocrl
from ocrl.agents import AgentConfig, make_vec_env
from ocrl.world_models import ImaginationVecEnv, SlotWorldModel, WorldModelConfig, load_world_model, starts_from_env


def rate(venv, steps: int, seed: int = 0) -> float:
    random = np.random.default_rng(seed)
    venv.reset()
    start, done = time.perf_counter(), 0
    while done < steps:
        venv.step(random.integers(0, venv.action_space.n, size=venv.num_envs))
        done += venv.num_envs
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-model", help="world-model checkpoint (default: untrained, default config)")
    parser.add_argument("--env", default="ocrl/ObjectGoal-v0")
    parser.add_argument("--perception", default=ocrl.DEFAULT_PERCEPTION, help="perception of the untrained model")
    parser.add_argument("--width", type=int, help="width of the untrained model (default: the config's)")
    parser.add_argument("--layers", type=int, help="layers of the untrained model (default: the config's)")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per measurement")
    parser.add_argument("--imagined-envs", type=int, default=64)
    parser.add_argument("--real-envs", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = {key: value for key, value in {"width": args.width, "num_layers": args.layers}.items() if value is not None}
    if args.world_model and args.perception != ocrl.DEFAULT_PERCEPTION:
        parser.error("--perception is for the untrained model; a world model names its own")
    if args.world_model:
        model = load_world_model(args.world_model, device="cpu")
    else:
        perception = ocrl.load_perception(args.perception, device="cpu")
        shape = {"num_slots": perception.num_slots, "slot_dim": perception.slot_dim}
        model = SlotWorldModel(WorldModelConfig(perception=args.perception, env_id=args.env, **shape, **sizes)).eval()
    imagined = ImaginationVecEnv(model, starts_from_env(model, 64), num_envs=args.imagined_envs)
    real = {
        count: make_vec_env(AgentConfig(env_id=args.env, perception=model.config.perception), count, device="cpu")
        for count in args.real_envs
    }
    rates: dict[str, list[float]] = {}
    for repeat in range(args.repeats + 1):
        for name, venv in [
            (f"imagined_{args.imagined_envs}_envs", imagined),
            *((f"real_{count}_envs", venv) for count, venv in real.items()),
        ]:
            measured = rate(venv, args.steps if repeat else args.steps // 10, seed=repeat)
            if repeat:  # repeat 0 is the warm-up
                rates.setdefault(name, []).append(round(measured, 1))
    best = {name: max(values) for name, values in rates.items()}
    imagined_rate = best[f"imagined_{args.imagined_envs}_envs"]
    result = {
        "env": args.env,
        "world_model": args.world_model or "untrained default config",
        "perception": model.config.perception,
        "width": model.config.width,
        "layers": model.config.num_layers,
        "steps_per_measurement": args.steps,
        "torch_threads": torch.get_num_threads(),
        "rates": rates,
        "best": best,
        "ratios": {
            f"imagined / {name}": round(imagined_rate / value, 2)
            for name, value in best.items()
            if name.startswith("real")
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

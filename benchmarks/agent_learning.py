"""Learning curves of slot-code PPO, pixel-CNN PPO and the ground-truth oracle: the same step
budget and PPO settings (``ocrl train-agent``'s defaults), several seeds, success rate on 100
held-out episodes every ``--every`` steps. One PNG per task (mean and min-max over seeds).

    .venv/bin/python benchmarks/agent_learning.py --env ocrl/ObjectGoal-v0 --steps 200000 --seeds 0 1 2 --out runs/learning

Observation ``imagination`` is slot-code PPO trained only inside the world model ``--imagination``
(the same number of imagined steps) and evaluated in the real env; with an oracle world model
(``--perception ground_truth`` in ``ocrl train-world-model``) it is the ground-truth agent. ``--env-kwargs`` (JSON) changes
the task, e.g. ``'{"colours": "ood"}'``; ``--perception`` picks the model behind the slot codes; ``--extractor`` and ``--algo-kwargs`` compare policies and
PPO settings (use a new ``--out`` for each). Agents land in OUT/<env>/<observation>-<seed> (rerunning
resumes them and skips finished ones); the table goes to stdout, pictures to OUT/<env>.png.
``--dream DIR ...`` adds runs of ``ocrl dream`` (one per seed) to the picture: their held-out
success after each round against the real env steps collected so far, the model-based loop
beside model-free PPO on the same axis (an ``imagination`` curve's axis is imagined steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ocrl.agents import AgentConfig, evaluate_policy_in_env, make_vec_env, train_agent
from ocrl.agents.training import CURVE_FILE, read_curve
from ocrl.checkpoint import load_metrics, read_checkpoint_config
from ocrl.world_models.dream import CONFIG_FILE as DREAM_CONFIG_FILE
from ocrl.world_models.dream import ROUNDS_FILE, DreamConfig

COLOURS = {
    "slots": "tab:blue",
    "pixels": "tab:red",
    "ground_truth": "tab:green",
    "imagination": "tab:purple",
    "dream": "tab:orange",
}
LABELS = {
    "ground_truth": "ground truth, model-free",
    "imagination": "imagination (x: imagined steps)",
    "dream": "ocrl dream (model-based)",
}


def run(env_id: str, observation: str, seed: int, args: argparse.Namespace) -> Path:
    """Train one agent (or resume it); returns its checkpoint directory."""
    out = args.out / env_id.replace("/", "_") / f"{observation}-{seed}"
    metrics = load_metrics(out) if (out / "metrics.json").exists() else None
    if metrics is None or not metrics.get("done"):
        kwargs = {
            "env_kwargs": json.loads(args.env_kwargs or "{}"),
            "algo_kwargs": json.loads(args.algo_kwargs or "{}"),
            "extractor": args.extractor,
            "symmetric": args.symmetric,
            "hidden_dim": args.hidden_dim,
            "perception": args.perception,
            "algo": args.algo,
        }
        if observation == "imagination":
            # an oracle world model (perception ground_truth) teaches the ground-truth agent
            world = read_checkpoint_config(args.imagination)[0]
            reads = "ground_truth" if world.perception == "ground_truth" else "slots"
            if reads == "ground_truth":
                kwargs.pop("perception")
            config = AgentConfig(
                env_id=env_id, observation=reads, imagination=str(Path(args.imagination).resolve()), **kwargs
            )
        else:
            if observation != "slots":
                kwargs.pop("perception")  # --perception is for the slot-code runs
            if observation == "pixels":
                kwargs.pop("symmetric")  # a CNN on frames is not averaged over symmetries
            config = AgentConfig(env_id=env_id, observation=observation, **kwargs)
        started = time.perf_counter()
        train_agent(config, out, steps=args.steps, seed=seed, checkpoint_every=args.every, eval_episodes=args.episodes)
        print(f"{env_id} {observation} seed {seed}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return out


def dream_curve(run_dir: Path, env_id: str) -> list[dict[str, float]]:
    """An ``ocrl dream`` run's rounds as curve rows: held-out success against real env steps."""
    ran = DreamConfig.from_dict(json.loads((run_dir / DREAM_CONFIG_FILE).read_bytes())).env_id
    if ran != env_id:
        raise SystemExit(f"{run_dir} is a run on {ran}, not {env_id}")
    rounds = read_curve(run_dir / ROUNDS_FILE)
    return [{"env_steps": row["real_env_steps"], "success_rate": row["success_rate"]} for row in rounds]


class RandomPolicy:
    """Uniformly random actions, through SB3's ``predict``: the baseline every curve is judged against."""

    def __init__(self, action_space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        count = len(next(iter(observation.values())))
        return np.array([self.action_space.sample() for _ in range(count)]), None


def random_success(env_id: str, env_kwargs: dict, episodes: int) -> float:
    config = AgentConfig(env_id=env_id, observation="ground_truth", env_kwargs=env_kwargs)
    venv = make_vec_env(config)
    action_space = venv.action_space
    venv.close()
    return evaluate_policy_in_env(RandomPolicy(action_space), config, episodes, progress=False)["success_rate"]


def plot(env_id: str, curves: dict[str, list[list[dict[str, float]]]], random: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2), dpi=120)
    for observation, runs in curves.items():
        length = min(len(rows) for rows in runs)
        steps = np.array([row["env_steps"] for row in runs[0][:length]])
        success = np.array([[row["success_rate"] for row in rows[:length]] for rows in runs])
        colour = COLOURS.get(observation)
        label = LABELS.get(observation, observation)
        axes.plot(
            steps,
            success.mean(0),
            color=colour,
            marker="o" if observation == "dream" else None,
            label=f"{label} ({len(runs)} seeds)",
        )
        axes.fill_between(steps, success.min(0), success.max(0), color=colour, alpha=0.2)
    axes.axhline(random, color="grey", linestyle="--", label="random policy")
    axes.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:.0f}k")
    axes.set(title=env_id, xlabel="real env steps", ylabel="held-out success rate", ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["ocrl/ObjectGoal-v0"])
    parser.add_argument("--observations", nargs="+", default=["slots", "pixels", "ground_truth"])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=20_000, help="env steps between evaluations (points of the curve)")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per evaluation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-kwargs", help='JSON options of the env, e.g. \'{"colours": "ood"}\'')
    parser.add_argument("--extractor", default="context", help="slot-set extractor kind (ocrl.agents.extractors.KINDS)")
    parser.add_argument("--hidden-dim", default=128, type=int, help="width of the extractor's MLPs")
    parser.add_argument(
        "--symmetric", action="store_true", help="policies averaged over the square's symmetries (not pixels)"
    )
    parser.add_argument("--algo", default="ppo", help="SB3 algorithm (ocrl.agents.training.ALGORITHMS)")
    parser.add_argument(
        "--algo-kwargs", help="JSON over the algorithm's defaults in ocrl train-agent, e.g. '{\"batch_size\": 512}'"
    )
    parser.add_argument("--perception", help="perception model of observation 'slots' (shipped name or checkpoint)")
    parser.add_argument("--imagination", help="world-model checkpoint for observation 'imagination'")
    parser.add_argument("--dream", type=Path, nargs="+", default=[], help="'ocrl dream' run directories to draw too")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if "imagination" in args.observations and not args.imagination:
        parser.error("observation 'imagination' needs --imagination WORLD_MODEL")
    print(
        "| env | observation | seeds | final success (mean ± std over seeds) | return | steps |\n|---|---|---|---|---|---|"
    )
    for env_id in args.env:
        curves: dict[str, list[list[dict[str, float]]]] = {}
        for observation in args.observations:
            outs = [run(env_id, observation, seed, args) for seed in args.seeds]
            curves[observation] = [read_curve(out / CURVE_FILE) for out in outs]
            finals = [load_metrics(out) for out in outs]
            success = np.array([metrics["success_rate"] for metrics in finals])
            print(
                f"| {env_id} | {observation} | {len(outs)} | {success.mean():.2f} ± {success.std():.2f} ({', '.join(f'{s:.2f}' for s in success)}) | {np.mean([m['mean_return'] for m in finals]):.2f} | {finals[0]['num_timesteps']} |",
                flush=True,
            )
        if args.dream:
            curves["dream"] = [dream_curve(run_dir, env_id) for run_dir in args.dream]
        random = random_success(env_id, json.loads(args.env_kwargs or "{}"), args.episodes)
        print(f"| {env_id} | random policy | - | {random:.2f} | {random:.2f} | - |", flush=True)
        plot(env_id, curves, random, args.out / f"{env_id.replace('/', '_')}.png")


if __name__ == "__main__":
    main()

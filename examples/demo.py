"""The `make demo` job on built-in defaults, end to end in a few minutes on 2 CPU cores:

1. collect rollouts of a built-in task (with ground truth) and draw frames over their masks;
2. load the shipped perception model, score it on held-out episodes (FG-ARI, mIoU) and draw
   what it sees (reconstruction and slot masks over time, PNG and GIF);
3. train a perception model for a few steps to show that training works (and resumes);
4. evaluate the shipped PPO agents that learned ObjectGoal from slot codes and from true objects,
   and film an episode of each (slot masks over the frames for the slot-code agent);
5. train such an agent from scratch for a short while: its held-out success rises from random.

    .venv/bin/python examples/demo.py --out demo_out

Everything lands in OUT; rerunning resumes or reuses what is there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import ocrl
from ocrl.agents import AgentConfig, evaluate_policy_in_env, load_agent, train_agent
from ocrl.agents.training import CURVE_FILE, read_curve, record_episode
from ocrl.data.collect import collect
from ocrl.evaluation import evaluate_perception
from ocrl.training import pretrain
from ocrl.viz import frame_strip, save_png, save_video_pictures

# ObjectGoal agents that ship: from the default model's slot codes, and from ground-truth objects
SHIPPED_AGENTS = ("ppo-objectgoal-slots", "ppo-objectgoal-oracle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (rerunning resumes)")
    parser.add_argument("--env", default="ocrl/MovingObjects-v0", help="task for the perception part")
    parser.add_argument("--agent-env", default="ocrl/ObjectGoal-v0", help="task for the agent part")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument(
        "--agents", nargs="+", default=SHIPPED_AGENTS, help="agents to evaluate (shipped names or checkpoints)"
    )
    parser.add_argument("--agent-steps", type=int, default=32_768)
    args = parser.parse_args()
    out = Path(args.out)

    print(f"== 1. collect {args.episodes} episodes of {args.env}")
    store = collect(args.env, args.episodes, out / "rollouts", seed=0)
    held_out = collect(args.env, 8, out / "rollouts-test", seed=1_000_000)
    episode = store.episode(0)
    masks = episode.ground_truth(0, 10)["masks"]
    print(
        f"{len(store)} episodes, {store.num_frames} frames; objects visible per frame: {[len(np.unique(m)) - 1 for m in masks]}"
    )
    print(
        f"frames over ground-truth masks: {save_png(frame_strip(episode.frames(0, 10), masks), out / 'rollout_strip.png')}"
    )

    print(f"\n== 2. the shipped perception model {ocrl.DEFAULT_PERCEPTION!r} on held-out episodes")
    model = ocrl.load_perception(ocrl.DEFAULT_PERCEPTION)
    scores = evaluate_perception(model, held_out, num_frames=24)
    print(json.dumps({key: round(value, 3) if isinstance(value, float) else value for key, value in scores.items()}))
    png, gif = save_video_pictures(model, held_out.episode(0).frames(0, 12), out / "perception")
    print(f"what it sees: {png} and {gif}")

    print(
        f"\n== 3. pretrain a perception model for {args.pretrain_steps} steps (a real run is 'ocrl pretrain --config quick', ~27 min)"
    )
    pretrain(store.path, out / "perception-checkpoint", family="smoothsa", steps=args.pretrain_steps)

    print("\n== 4. shipped agents on 50 held-out episodes each (a random policy: 0.17)")
    for name in args.agents:
        policy, agent_config = load_agent(name)
        result = evaluate_policy_in_env(policy, agent_config, episodes=50)
        gif = out / f"{Path(name).name}.gif"
        episode = record_episode(policy, agent_config, gif)
        print(
            f"{name} ({agent_config.observation}): held-out success {result['success_rate']:.2f}; "
            f"one episode ({episode['steps']} steps, success {episode['is_success']}) in {gif}"
        )

    print(
        f"\n== 5. PPO from ground-truth objects on {args.agent_env} for {args.agent_steps} steps, its policy "
        "averaged over the square's symmetries (the shipped oracle's 200k take ~35 min; slot-code agents "
        "step ~15x slower: benchmarks/RESULTS.md)"
    )
    metrics = train_agent(
        AgentConfig(env_id=args.agent_env, observation="ground_truth", symmetric=True, hidden_dim=64),
        out / "agent",
        steps=args.agent_steps,
        checkpoint_every=8_192,
        eval_episodes=50,
    )
    for row in read_curve(out / "agent" / CURVE_FILE):
        print(f"{row['env_steps']:>7.0f} env steps: held-out success {row['success_rate']:.2f}")
    print(json.dumps(metrics))
    print(f"\nall outputs in {out}/; evaluate again with: ocrl eval-agent {out / 'agent'}")


if __name__ == "__main__":
    main()

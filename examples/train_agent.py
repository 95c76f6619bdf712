"""Train PPO on slot codes of a built-in task, then reload and evaluate it: the Python version
of ``ocrl train-agent`` / ``ocrl eval-agent``, to copy and change.

    .venv/bin/python examples/train_agent.py --steps 100000 --out runs/ppo-slots

    ocrl eval-agent runs/ppo-slots      # the saved agent, as any from ocrl train-agent

The agent is a checkpoint directory (safetensors + JSON, nothing pickled) with its learning
curve in OUT/curve.csv; rerunning the same command resumes it.
"""

from __future__ import annotations

import argparse

from stable_baselines3.common.evaluation import evaluate_policy

from ocrl.agents import AgentConfig, load_agent, make_vec_env, train_agent
from ocrl.agents.training import CURVE_FILE, EVALUATION_SEED, read_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ocrl/ObjectGoal-v0")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--out", default="runs/ppo-slots")
    args = parser.parse_args()

    # slot codes of the shipped default model, 16 envs encoded in one batched forward per step,
    # the context set extractor and the tuned PPO settings (AgentConfig's docs list the options)
    config = AgentConfig(env_id=args.env, observation="slots", extractor="context", algo_kwargs={"ent_coef": 0.01})
    train_agent(config, args.out, steps=args.steps, checkpoint_every=20_000, eval_episodes=50)
    for row in read_curve(f"{args.out}/{CURVE_FILE}"):
        print(f"{row['env_steps']:>8.0f} env steps: held-out success {row['success_rate']:.2f}")

    # reload: an SB3 policy; SB3's evaluate_policy gives each sub-env a fixed share of the episodes
    policy, config = load_agent(args.out)
    venv = make_vec_env(config, num_envs=8, seed=EVALUATION_SEED)
    returns, _ = evaluate_policy(policy, venv, n_eval_episodes=100, return_episode_rewards=True)
    print(f"mean return over {len(returns)} held-out episodes (reward 1 = success): {sum(returns) / len(returns):.2f}")


if __name__ == "__main__":
    main()

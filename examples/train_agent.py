"""Train PPO on slot codes of a built-in task and evaluate it: the Python version of
``ocrl train-agent``, to copy and change.

    .venv/bin/python examples/train_agent.py --steps 100000 --out runs/ppo-slots
    ocrl eval-agent runs/ppo-slots      # the saved agent, as any from ocrl train-agent
"""

from __future__ import annotations

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import ocrl.envs
from ocrl.agents import AgentConfig, SlotSetExtractor
from ocrl.checkpoint import save_checkpoint
from ocrl.wrappers import ObjectCentricVecEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ocrl/ObjectGoal-v0")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--out", default="runs/ppo-slots")
    args = parser.parse_args()

    # 8 envs, encoded together in one batched forward of the shipped default model per step
    venv = ObjectCentricVecEnv(DummyVecEnv([lambda: ocrl.envs.make(args.env)] * 8))
    venv.seed(0)
    agent = PPO("MultiInputPolicy", venv, n_steps=256, batch_size=256, ent_coef=0.01, policy_kwargs={"features_extractor_class": SlotSetExtractor}, seed=0)
    agent.learn(args.steps, progress_bar=False)

    observation, successes, episodes = venv.reset(), 0, 0
    while episodes < 50:
        action, _ = agent.predict(observation, deterministic=True)
        observation, _, dones, infos = venv.step(action)
        for done, info in zip(dones, infos):
            if done:
                episodes += 1
                successes += info.get("is_success", False)
    print(f"success rate over {episodes} episodes: {successes / episodes:.2f}")
    # agent.save() would pickle; an ocrl agent checkpoint is safetensors + JSON. AgentConfig's
    # defaults (PPO, slot codes of the default model, transformer extractor) describe this agent.
    save_checkpoint(agent.policy, AgentConfig(env_id=args.env), args.out)
    print(f"agent saved to {args.out}")


if __name__ == "__main__":
    main()

"""Train PPO inside a world model, then evaluate it in the real env: the Python version of
``ocrl train-agent --imagination``, to copy and change.

    .venv/bin/ocrl collect --env ocrl/ObjectGoal-v0 --episodes 600 --out data/goal
    .venv/bin/ocrl train-world-model --data data/goal --out runs/world-goal
    .venv/bin/python examples/imagination.py --world-model runs/world-goal --steps 100000
"""

from __future__ import annotations

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import ocrl.envs
from ocrl.agents import SlotSetExtractor
from ocrl.world_models import ImaginationVecEnv, load_world_model, starts_from_env
from ocrl.wrappers import ObjectCentricVecEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", required=True)
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()

    world_model = load_world_model(args.world_model)
    config = world_model.config
    # imagined episodes start from the codes of 256 real first frames (perception: the world model's own)
    dream = ImaginationVecEnv(world_model, starts_from_env(world_model, count=256), num_envs=8)
    agent = PPO(
        "MultiInputPolicy",
        dream,
        n_steps=256,
        batch_size=256,
        ent_coef=0.01,
        policy_kwargs={"features_extractor_class": SlotSetExtractor},
        seed=0,
    )
    agent.learn(args.steps, progress_bar=False)

    # the same policy acts in the real env: its observations are the same slot codes
    real = ObjectCentricVecEnv(
        DummyVecEnv([lambda: ocrl.envs.make(config.env_id, **config.env_kwargs)] * 8), model=config.perception
    )
    real.seed(1_000_000)
    observation, successes, episodes = real.reset(), 0, 0
    while episodes < 50:
        action, _ = agent.predict(observation, deterministic=True)
        observation, _, dones, infos = real.step(action)
        for done, info in zip(dones, infos):
            if done:
                episodes += 1
                successes += info.get("is_success", False)
    print(f"success rate in the real env over {episodes} episodes: {successes / episodes:.2f}")


if __name__ == "__main__":
    main()

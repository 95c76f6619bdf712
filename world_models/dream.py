"""The model-based loop: collect real episodes with the current agent, update the world model on
everything collected so far, train the agent inside the world model, evaluate it in the real
env on held-out episodes; repeat.

    ocrl dream --env ocrl/ObjectGoal-v0 --out runs/dream

``dream(config, out)`` keeps everything in ``out``::

    OUT/config.json        the DreamConfig (a rerun with another config is refused)
    OUT/data/round-NN/     one rollout store per round (round 0: random actions; then the agent)
    OUT/world-model/       trained on every round's store, resumed each round
    OUT/agent/             trained in imagination (and in ``real_envs`` real sub-envs beside
                           it), resumed each round
    OUT/rounds.csv         per round: real env steps so far (collected, and the agent's own in
                           real sub-envs), world-model steps, imagined agent steps, held-out
                           success rate and return in the real env

Every stage resumes (collection, world model, agent), so rerunning the same command after an
interruption continues where it stopped, and a larger ``rounds`` goes on from the last round.
The agent observes slot codes of a perception model, or ground-truth objects with an oracle
world model (``observation="ground_truth"``): the loop with perfect perception.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocrl.agents.ground_truth import GROUND_TRUTH
from ocrl.config_json import JsonConfig
from ocrl.errors import OcrlError
from ocrl.files import write_atomically
from ocrl.world_models.model import WorldModelConfig

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.csv"
ROUND_COLUMNS = ("round", "real_env_steps", "world_model_steps", "imagined_steps", "success_rate", "mean_return")
# collection seeds: round r resets episode i with COLLECTION_SEED + r * ROUND_SEEDS + i, far from
# the evaluation episodes (ocrl.agents.training.EVALUATION_SEED, 10**6 on)
COLLECTION_SEED = 2_000_000
ROUND_SEEDS = 100_000
AGENT_ENVS = 16  # the agent's sub-envs, imagined and real


@dataclass
class DreamConfig(JsonConfig):
    """What a model-based run is: stored in ``OUT/config.json``.

    observation: ``"slots"`` (codes of ``perception``) or ``"ground_truth"`` (true objects).
    episodes_per_round: real episodes collected each round.
    world_model_steps, agent_steps: training steps of the world model and imagined agent steps,
        each round.
    world_model: overrides of :class:`~ocrl.world_models.WorldModelConfig` fields; a new run
        stores all of its sizes, so that a rerun keeps the world model it started with when the
        defaults change.
    algo_kwargs: the agent's, over ``ocrl train-agent``'s PPO defaults.
    hidden_dim, symmetric: the agent's set policy (:class:`~ocrl.agents.AgentConfig`).
    real_envs: of the agent's :data:`AGENT_ENVS` sub-envs, how many act in the real env beside
        the imagined ones (Dyna-style); their steps count as real env steps.
    imagination_starts: the agent's (:class:`~ocrl.agents.AgentConfig`).
    """

    config_name = "dream config"  # where a from_dict error is, not a field

    env_id: str = "ocrl/ObjectGoal-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    observation: str = "slots"
    perception: str | None = None
    rounds: int = 4
    episodes_per_round: int = 100
    world_model_steps: int = 1_000
    agent_steps: int = 50_000
    eval_episodes: int = 100
    world_model: dict[str, Any] = field(default_factory=dict)
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_dim: int = 128
    symmetric: bool = False
    real_envs: int = 0
    imagination_starts: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.observation not in ("slots", GROUND_TRUTH):
            raise ValueError(f"the loop trains agents on 'slots' or 'ground_truth', not {self.observation!r}")
        if self.perception is not None and self.observation != "slots":
            raise ValueError("a perception model is used only with observation 'slots'")
        if min(self.rounds, self.episodes_per_round, self.world_model_steps, self.agent_steps, self.eval_episodes) < 1:
            raise ValueError(
                "rounds, episodes_per_round, world_model_steps, agent_steps and eval_episodes must be positive"
            )
        if not 0 <= self.real_envs < AGENT_ENVS:
            raise ValueError(
                f"real_envs is how many of the agent's {AGENT_ENVS} sub-envs are real: 0 to {AGENT_ENVS - 1}"
            )
        sizes = WorldModelConfig().sizes()
        unknown = sorted(set(self.world_model) - set(sizes))
        if unknown:
            raise ValueError(f"world_model takes {', '.join(sizes)}; not {', '.join(unknown)}")

    def rounds_match(self, other: DreamConfig) -> bool:
        """Whether ``other`` continues this run: the same config up to the number of rounds."""
        return {**self.to_dict(), "rounds": 0} == {**other.to_dict(), "rounds": 0}


def dream(
    config: DreamConfig, out: str | os.PathLike, device: str | None = None, progress: bool = True
) -> list[dict[str, float]]:
    """Run (or resume) the loop of ``config`` in ``out``; returns the rows of ``rounds.csv``."""
    import ocrl
    from ocrl.agents import AgentConfig, train_agent
    from ocrl.agents.training import curve_csv, read_curve
    from ocrl.data.collect import collect
    from ocrl.world_models import WorldModelTrainingConfig, train_world_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / CONFIG_FILE).exists():
        saved = DreamConfig.from_dict(json.loads((out / CONFIG_FILE).read_bytes()))
        config = replace(config, world_model={**saved.world_model, **config.world_model})
        if not saved.rounds_match(config):
            raise OcrlError(f"{out} holds a run of another config; pass another --out to start a new one")
    else:
        config = replace(config, world_model=WorldModelConfig(**config.world_model).sizes())
    write_atomically(out / CONFIG_FILE, lambda file: file.write(json.dumps(config.to_dict(), indent=1).encode()))
    rows = read_curve(out / ROUNDS_FILE) if (out / ROUNDS_FILE).exists() else []
    perception = GROUND_TRUTH if config.observation == GROUND_TRUTH else config.perception or ocrl.DEFAULT_PERCEPTION
    agent = AgentConfig(
        env_id=config.env_id,
        observation=config.observation,
        perception=config.perception,
        env_kwargs=config.env_kwargs,
        algo_kwargs=config.algo_kwargs,
        hidden_dim=config.hidden_dim,
        symmetric=config.symmetric,
        real_envs=config.real_envs,
        imagination_starts=config.imagination_starts,
        imagination=str((out / "world-model").resolve()),
    )
    stores = []
    for round_index in range(config.rounds):
        stores.append(
            collect(
                config.env_id,
                config.episodes_per_round,
                out / "data" / f"round-{round_index:02d}",
                policy="random" if round_index == 0 else str(out / "agent"),
                seed=COLLECTION_SEED + round_index * ROUND_SEEDS,
                env_kwargs=config.env_kwargs,
                progress=progress,
            )
        )
        if round_index < len(rows):
            continue  # this round is done
        world_model_steps = (round_index + 1) * config.world_model_steps
        train_world_model(
            [store.path for store in stores],
            out / "world-model",
            perception,
            model_config=config.world_model,
            training=WorldModelTrainingConfig(steps=world_model_steps, seed=config.seed),
            device=device,
            progress=progress,
        )
        agent_steps = (round_index + 1) * config.agent_steps
        metrics = train_agent(
            agent,
            out / "agent",
            steps=agent_steps,
            num_envs=AGENT_ENVS,
            seed=config.seed,
            device=device or "auto",
            checkpoint_every=config.agent_steps,
            eval_episodes=config.eval_episodes,
            progress=progress,
        )
        collected = sum(sum(record.length for record in store.episodes) for store in stores)
        agent_real = metrics["num_timesteps"] * config.real_envs // AGENT_ENVS
        rows.append(
            {
                "round": round_index,
                "real_env_steps": collected + agent_real,
                "world_model_steps": world_model_steps,
                "imagined_steps": metrics["num_timesteps"] - agent_real,
                "success_rate": metrics["success_rate"],
                "mean_return": metrics["mean_return"],
            }
        )
        write_atomically(out / ROUNDS_FILE, lambda file: file.write(curve_csv(rows, ROUND_COLUMNS)))
        if progress:
            print(
                f"round {round_index}: {rows[-1]['real_env_steps']:g} real env steps, held-out success {rows[-1]['success_rate']:.2f}",
                flush=True,
            )
    return rows

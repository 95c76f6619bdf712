"""World models over slot codes: a slot transformer, its training, and imagination envs.

- :class:`SlotWorldModel` / :class:`WorldModelConfig` (:mod:`.model`): predicts the next step's
  slot codes, the reward and continuation from a history of codes and actions.
- :func:`train_world_model` (:mod:`.training`): encodes rollouts once (:mod:`.codes`), then
  trains with teacher forcing and an open-loop rollout loss.
- :class:`ImaginationVecEnv` / :class:`ImaginationEnv` (:mod:`.imagination`): SB3 / gymnasium
  envs stepped by the model, for agents that train in imagination.
- :func:`evaluate_world_model` (:mod:`.evaluation`): open-loop error against horizon.
- :func:`dream` / :class:`DreamConfig` (:mod:`.dream`): the model-based loop (collect, train the
  world model, train the agent in imagination, evaluate; repeat).
"""

from ocrl.world_models.codes import CodeCache, encode_store, perception_fingerprint
from ocrl.world_models.dream import DreamConfig, dream
from ocrl.world_models.evaluation import evaluate_world_model
from ocrl.world_models.imagination import (
    ImaginationEnv,
    ImaginationVecEnv,
    load_world_model,
    starts_from_cache,
    starts_from_env,
)
from ocrl.world_models.model import SlotWorldModel, WorldModelConfig, WorldModelOutput
from ocrl.world_models.training import WorldModelTrainingConfig, train_world_model

__all__ = [
    "CodeCache",
    "DreamConfig",
    "ImaginationEnv",
    "ImaginationVecEnv",
    "SlotWorldModel",
    "WorldModelConfig",
    "WorldModelOutput",
    "WorldModelTrainingConfig",
    "dream",
    "encode_store",
    "evaluate_world_model",
    "load_world_model",
    "perception_fingerprint",
    "starts_from_cache",
    "starts_from_env",
    "train_world_model",
]

"""Environments with exact ground truth: the built-in object-centric tasks and adapters.

``ocrl.envs.make(env_id)`` is the one entry point: ``ocrl/...`` ids are the built-in tasks,
``MiniGrid-...``/``BabyAI-...`` ids get the MiniGrid adapter, ``dm_control/...`` ids the
dm_control adapter (through shimmy); any other id is handed to ``gymnasium.make`` as it is.
Ground truth follows one convention, documented in :mod:`ocrl.envs.ground_truth`.
"""

from __future__ import annotations

import gymnasium as gym

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY, make_ground_truth
from ocrl.envs.tasks import (
    SHAPES,
    MovingObjectsEnv,
    ObjectComparisonEnv,
    ObjectGoalEnv,
    ObjectInteractionEnv,
    PropertyComparisonEnv,
    SpriteTaskEnv,
)

__all__ = [
    "GROUND_TRUTH_KEY",
    "SHAPES",
    "MovingObjectsEnv",
    "ObjectComparisonEnv",
    "ObjectGoalEnv",
    "ObjectInteractionEnv",
    "PropertyComparisonEnv",
    "SpriteTaskEnv",
    "make",
    "make_ground_truth",
]

_TASKS = {
    "ObjectGoal": ObjectGoalEnv,
    "ObjectInteraction": ObjectInteractionEnv,
    "ObjectComparison": ObjectComparisonEnv,
    "PropertyComparison": PropertyComparisonEnv,
    "MovingObjects": MovingObjectsEnv,
}


def _register() -> None:
    for name, cls in _TASKS.items():
        entry_point = f"{cls.__module__}:{cls.__name__}"
        steps = cls.default_max_episode_steps
        gym.register(f"ocrl/{name}-v0", entry_point=entry_point, max_episode_steps=steps)
        gym.register(
            f"ocrl/{name}Continuous-v0",
            entry_point=entry_point,
            max_episode_steps=steps,
            kwargs={"continuous": True},
        )


_register()


def make(env_id: str, **kwargs) -> gym.Env:
    """Make any env by id, with ocrl's ground truth where ocrl knows how to get it.

    Raises ``ValueError`` naming the id when gymnasium does not know it.
    """
    try:
        if env_id.startswith(("MiniGrid-", "BabyAI-")):
            from ocrl.envs.minigrid import make_minigrid

            return make_minigrid(env_id, **kwargs)
        if env_id.startswith("dm_control/"):
            from ocrl.envs.dm_control import make_dm_control

            return make_dm_control(env_id, **kwargs)
        return gym.make(env_id, **kwargs)
    except gym.error.Error as error:
        raise ValueError(f"unknown env id {env_id!r}: {error}") from None

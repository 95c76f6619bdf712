"""Environments with exact ground truth: the built-in object-centric tasks and adapters.

``ocrl.envs.make(env_id)`` is the one entry point: ``ocrl/...`` ids are the built-in tasks,
``MiniGrid-...``/``BabyAI-...`` ids get the MiniGrid adapter, ``dm_control/...`` ids the
dm_control adapter (through shimmy); any other id is handed to ``gymnasium.make`` as it is.
Ground truth follows one convention, documented in :mod:`ocrl.envs.ground_truth`.
"""

from __future__ import annotations

import sys

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
    "check_env_id_from_file",
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


def check_env_id_from_file(env_id: str, where: str) -> None:
    """Raise ValueError if making ``env_id`` would import a module: for ids read from files.

    ``gymnasium.make("module:Env-v0")`` imports ``module`` first (from the current directory
    too), so a checkpoint or store naming such an id would make ocrl run code of the file's
    choosing. An id read from a file may name a module only once the user's own code has
    imported it (in Python: ``import module``; on the command line: ``--env-module module``).
    """
    if not isinstance(env_id, str):
        raise ValueError(f"{where}: env id must be a string, got {type(env_id).__name__}")
    module = env_id.split(":", 1)[0] if ":" in env_id else None
    if module is not None and module not in sys.modules:
        raise ValueError(
            f"{where}: env id {env_id!r} would import module {module!r}, and ocrl never imports code that a file names; "
            f"if you trust it, import it first (Python: import {module}; CLI: --env-module {module})"
        )

"""Built-in object-centric tasks after the OCRL paper (Yoon et al. 2023), as gymnasium envs.

An agent sprite (white circle by default) moves among objects of configurable colours, shapes
and sizes. Observations are RGB frames (H, W, 3) uint8 of any resolution; actions are 4 moves
(up, down, left, right) or, with ``continuous=True``, a 2-D velocity in [-1, 1]. Rewards are
sparse (1 on success). Ground truth goes into ``info["ground_truth"]`` (see
:mod:`ocrl.envs.ground_truth`); the agent is object 0 (mask id 1). ``info["is_success"]``
follows the SB3 convention.

Out-of-distribution variants come from the arguments: ``colours="ood"`` and ``shapes="ood"``
pick colours and shapes never used by the defaults, and ``num_objects`` sets the count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY, make_ground_truth
from ocrl.envs.render import SHAPES, Sprite, render_sprites

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.9, 0.9),
    # out of distribution: never used unless asked for
    "orange": (1.0, 0.55, 0.0),
    "purple": (0.5, 0.2, 0.8),
    "pink": (1.0, 0.6, 0.75),
    "brown": (0.55, 0.35, 0.15),
}
DEFAULT_COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
OOD_COLOURS = ("orange", "purple", "pink", "brown")
DEFAULT_SHAPES = ("circle", "square", "triangle")
OOD_SHAPES = ("diamond", "hexagon", "star")
AGENT_COLOUR = (1.0, 1.0, 1.0)

# (dx, dy) of the four discrete moves, y down: up, down, left, right
MOVES = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])


def _choose(option, default: Sequence[str], ood: Sequence[str], known: Sequence[str], what: str) -> tuple[str, ...]:
    if option is None or option == "default":
        return tuple(default)
    if option == "ood":
        return tuple(ood)
    values = (option,) if isinstance(option, str) else tuple(option)
    unknown = [value for value in values if value not in known]
    if unknown or not values:
        raise ValueError(f"unknown {what} {unknown or values}; known: {', '.join(known)}, or 'default'/'ood'")
    return values


def _resolution(resolution) -> tuple[int, int]:
    height, width = (resolution, resolution) if np.isscalar(resolution) else tuple(resolution)
    if int(height) < 8 or int(width) < 8:
        raise ValueError(f"resolution must be at least 8x8, got {resolution}")
    return int(height), int(width)


class SpriteTaskEnv(gym.Env):
    """Shared machinery of the built-in tasks: sprites, moves, touching, rendering, ground truth.

    Subclasses implement ``_place_objects()`` (set ``self.objects``) and ``_outcome()`` (reward,
    terminated, success after a move); ``self.objects`` excludes the agent.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    default_max_episode_steps = 100
    default_num_objects = 4

    def __init__(
        self,
        resolution: int | tuple[int, int] = 64,
        num_objects: int | tuple[int, int] | None = None,
        colours: str | Sequence[str] | None = None,
        shapes: str | Sequence[str] | None = None,
        object_size: float | tuple[float, float] = 0.08,
        agent_size: float = 0.06,
        agent_step: float = 0.05,
        continuous: bool = False,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        render_mode: str | None = None,
    ):
        self.height, self.width = _resolution(resolution)
        count = self.default_num_objects if num_objects is None else num_objects
        self.num_objects_range = (count, count) if np.isscalar(count) else tuple(count)
        if self.num_objects_range[0] < self.min_objects or self.num_objects_range[0] > self.num_objects_range[1]:
            raise ValueError(f"{type(self).__name__} needs num_objects >= {self.min_objects}, got {count}")
        self.colours = _choose(colours, DEFAULT_COLOURS, OOD_COLOURS, tuple(COLOURS), "colours")
        self.shapes = _choose(shapes, DEFAULT_SHAPES, OOD_SHAPES, SHAPES, "shapes")
        self.size_range = (object_size, object_size) if np.isscalar(object_size) else tuple(object_size)
        self.agent_size = agent_size
        self.agent_step = agent_step
        self.continuous = continuous
        self.background = np.asarray(background, dtype=np.float32)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        if continuous:
            self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        else:
            self.action_space = spaces.Discrete(4)
        self.agent: Sprite | None = None
        self.objects: list[Sprite] = []
        self._frame: np.ndarray | None = None

    min_objects = 1

    @property
    def moves(self) -> np.ndarray | None:
        """(4, 2) the (x, y) step direction of each discrete action, x right and y down as in the
        ground truth's positions (None with continuous actions). The arena, the placement of
        objects and touching are the same under the square's rotations and reflections, which
        map these moves onto each other (``ocrl.agents.SymmetricPolicy`` uses both)."""
        return None if self.continuous else MOVES.copy()

    @property
    def max_sprites(self) -> int:
        """The most objects a frame's ground truth lists: the objects and the agent."""
        return self.num_objects_range[1] + 1

    # --- episode -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        low, high = self.num_objects_range
        self.num_objects = int(self.np_random.integers(low, high + 1))
        self.agent = Sprite(0.5, 0.5, self.agent_size, "circle", np.array(AGENT_COLOUR), 0.1)
        self._place_objects()
        self._scatter([self.agent, *self.objects])
        return self._observe()

    def step(self, action):
        if self.agent is None:
            raise RuntimeError("call reset() before step()")
        self._move_agent(self._displacement(action))
        self._advance()
        reward, terminated, success = self._outcome()
        frame, info = self._observe()
        info["is_success"] = bool(success)
        return frame, float(reward), bool(terminated), False, info

    def render(self):
        return None if self.render_mode is None else self._frame

    # --- for subclasses ------------------------------------------------------------------------

    def _place_objects(self) -> None:
        raise NotImplementedError

    def _outcome(self) -> tuple[float, bool, bool]:
        raise NotImplementedError

    def _advance(self) -> None:
        """Move what moves by itself (nothing in most tasks)."""

    # --- helpers -------------------------------------------------------------------------------

    def _sprite(self, colour: str, shape: str, size: float | None = None, depth: float = 0.5) -> Sprite:
        if size is None:
            size = float(self.np_random.uniform(*self.size_range))
        return Sprite(0.0, 0.0, size, str(shape), np.array(COLOURS[str(colour)]), depth)

    def _shuffled(self, target_look: tuple[str, str], other_looks: list[tuple[str, str]]) -> tuple[list[Sprite], int]:
        """Sprites of the target and the others in a random order (depth follows the order), and
        the target's index: neither its row in the ground truth nor its depth gives it away."""
        looks = [target_look, *other_looks]
        order = self.np_random.permutation(len(looks))
        sprites = [self._sprite(*looks[j], depth=0.2 + 0.1 * i) for i, j in enumerate(order)]
        return sprites, int(np.flatnonzero(order == 0)[0])

    def _scatter(self, sprites: list[Sprite], gap: float = 0.02) -> None:
        """Place sprites uniformly at random, not touching each other nor leaving the arena."""
        placed: list[Sprite] = []
        for sprite in sprites:
            for _ in range(1000):
                sprite.x, sprite.y = self.np_random.uniform(sprite.size, 1.0 - sprite.size, size=2)
                if all(not self._touching(sprite, other, gap) for other in placed):
                    break
            else:
                raise ValueError(f"cannot place {len(sprites)} sprites without overlap; use fewer or smaller objects")
            placed.append(sprite)

    @staticmethod
    def _touching(a: Sprite, b: Sprite, gap: float = 0.0) -> bool:
        return np.hypot(a.x - b.x, a.y - b.y) < a.size + b.size + gap

    def _displacement(self, action) -> np.ndarray:
        if self.continuous:
            action = np.asarray(action, dtype=np.float64).reshape(2)
            if not np.all(np.isfinite(action)):
                raise ValueError(f"action must be finite, got {action}")
            return np.clip(action, -1.0, 1.0) * self.agent_step
        if not self.action_space.contains(np.int64(action)):
            raise ValueError(f"action must be an int in [0, 4), got {action!r}")
        return MOVES[int(action)] * self.agent_step

    def _move_agent(self, delta: np.ndarray) -> None:
        self.agent.x, self.agent.y = self._clamp(self.agent, self.agent.x + delta[0], self.agent.y + delta[1])

    @staticmethod
    def _clamp(sprite: Sprite, x: float, y: float) -> tuple[float, float]:
        return float(np.clip(x, sprite.size, 1.0 - sprite.size)), float(np.clip(y, sprite.size, 1.0 - sprite.size))

    def _touched(self) -> list[int]:
        return [i for i, sprite in enumerate(self.objects) if self._touching(self.agent, sprite)]

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        sprites = [self.agent, *self.objects]
        frame, masks, depth = render_sprites(sprites, self.height, self.width, self.background)
        self._frame = frame
        ground_truth = make_ground_truth(
            masks,
            depth,
            position=[(2 * s.x - 1, 2 * s.y - 1) for s in sprites],
            size=[2 * s.size for s in sprites],
            object_depth=[s.depth for s in sprites],
            colour=[s.colour for s in sprites],
            shape=[s.shape for s in sprites],
        )
        return frame, {GROUND_TRUTH_KEY: ground_truth, **self._task_info()}

    def _task_info(self) -> dict[str, Any]:
        return {}


class _TouchTask(SpriteTaskEnv):
    """Touch the one right object (reward 1); touching any other ends the episode with 0."""

    target: int = 0

    def _outcome(self) -> tuple[float, bool, bool]:
        touched = self._touched()
        if not touched:
            return 0.0, False, False
        success = self.target in touched
        return float(success), True, success

    def _task_info(self) -> dict[str, Any]:
        # index into the ground-truth object arrays (the agent is row 0)
        return {"target_index": self.target + 1}


class ObjectGoalEnv(_TouchTask):
    """Touch the target object, which always looks the same (``target_colour``/``target_shape``).

    Distractors are any other colour/shape pairs; touching one ends the episode with no reward.
    """

    def __init__(self, target_colour: str = "red", target_shape: str = "circle", **kwargs):
        super().__init__(**kwargs)
        if target_colour not in COLOURS or target_shape not in SHAPES:
            raise ValueError(f"unknown target {target_colour} {target_shape}")
        self.target_look = (target_colour, target_shape)
        self.distractor_looks = [
            (colour, shape)
            for colour in dict.fromkeys((*self.colours, target_colour))
            for shape in dict.fromkeys((*self.shapes, target_shape))
            if (colour, shape) != self.target_look
        ]

    def _place_objects(self) -> None:
        picks = self.np_random.integers(len(self.distractor_looks), size=self.num_objects - 1)
        self.objects, self.target = self._shuffled(self.target_look, [self.distractor_looks[i] for i in picks])


class ObjectInteractionEnv(SpriteTaskEnv):
    """Push the target object (like ObjectGoal's) onto the goal region, a grey square on the floor.

    The agent pushes any object it runs into; a push that would drive an object out of the arena
    or into another object is blocked. The goal region is the last ground-truth object.

    A push onto the goal is seldom reached by chance, so PPO from a random start may never see the
    reward. ``shaping > 0`` adds ``shaping`` times the step's fall in the distance still to cover
    (agent to target plus target to goal) to each reward: a difference of potentials (Ng et al.
    1999), so an episode's shaped rewards sum to ``shaping`` times the distance it covered and a
    loop earns nothing. Success, termination and ``is_success`` are unchanged.
    """

    default_num_objects = 3

    @property
    def max_sprites(self) -> int:
        return super().max_sprites + 1  # the goal region

    def __init__(
        self,
        target_colour: str = "red",
        target_shape: str = "circle",
        goal_size: float = 0.12,
        shaping: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not shaping >= 0:
            raise ValueError(f"shaping must be >= 0, got {shaping}")
        self.target_look = (target_colour, target_shape)
        self.goal_size = goal_size
        self.shaping = float(shaping)
        self._distance_before = 0.0

    def distance_to_go(self) -> float:
        """Agent to target plus target to goal, centre to centre (arena units)."""
        target = self.objects[self.target]
        return math.dist((self.agent.x, self.agent.y), (target.x, target.y)) + math.dist(
            (target.x, target.y), (self.goal.x, self.goal.y)
        )

    def _place_objects(self) -> None:
        others = [(c, s) for c in self.colours for s in self.shapes if (c, s) != self.target_look]
        picks = self.np_random.integers(len(others), size=self.num_objects - 1)
        self.objects, self.target = self._shuffled(self.target_look, [others[i] for i in picks])
        self.goal = Sprite(0.0, 0.0, self.goal_size, "square", np.array([0.35, 0.35, 0.35]), 0.95)
        self.objects.append(self.goal)

    def _move_agent(self, delta: np.ndarray) -> None:
        self._distance_before = self.distance_to_go()
        old = (self.agent.x, self.agent.y)
        super()._move_agent(delta)
        for index in self._touched():
            pushed = self.objects[index]
            if pushed is self.goal:
                continue
            x, y = pushed.x + delta[0], pushed.y + delta[1]
            blocked = self._clamp(pushed, x, y) != (x, y) or any(
                other is not pushed
                and other is not self.goal
                and self._touching(Sprite(x, y, pushed.size, "", 0, 0), other)
                for other in self.objects
            )
            if blocked:
                self.agent.x, self.agent.y = old
                return
            pushed.x, pushed.y = x, y

    def _outcome(self) -> tuple[float, bool, bool]:
        target, goal = self.objects[self.target], self.goal
        half = goal.size * 0.8  # the square's half side
        success = abs(target.x - goal.x) < half and abs(target.y - goal.y) < half
        reward = float(success) + self.shaping * (self._distance_before - self.distance_to_go())
        return reward, success, success

    def _task_info(self) -> dict[str, Any]:
        return {"target_index": self.target + 1, "goal_index": len(self.objects)}


class ObjectComparisonEnv(_TouchTask):
    """All objects look the same but one; touch the odd one out."""

    min_objects = 3

    def _place_objects(self) -> None:
        colour, odd_colour = self.np_random.choice(self.colours, size=2, replace=len(self.colours) < 2)
        shape, odd_shape = self.np_random.choice(self.shapes, size=2, replace=len(self.shapes) < 2)
        if (odd_colour, odd_shape) == (colour, shape):
            raise ValueError("ObjectComparison needs at least two colours or two shapes")
        if self.np_random.random() < 0.5 and odd_colour != colour:
            odd_shape = shape  # differ in colour only
        elif odd_shape != shape:
            odd_colour = colour  # differ in shape only
        size = float(self.np_random.uniform(*self.size_range))
        self.target = int(self.np_random.integers(self.num_objects))
        self.objects = [
            self._sprite(
                odd_colour if i == self.target else colour,
                odd_shape if i == self.target else shape,
                size,
                0.2 + 0.1 * i,
            )
            for i in range(self.num_objects)
        ]


class PropertyComparisonEnv(_TouchTask):
    """Touch the one object whose colour or shape no other object has; every other value repeats."""

    min_objects = 3

    def _repeated_values(self, count: int, pool: Sequence[str]) -> list[str]:
        """``count`` values from ``pool`` in which every value appears at least twice."""
        groups = [2] * (count // 2)
        groups[-1] += count % 2
        chosen = self.np_random.choice(pool, size=len(groups), replace=len(pool) < len(groups))
        values = [str(value) for value, size in zip(chosen, groups) for _ in range(size)]
        return [values[i] for i in self.np_random.permutation(count)]

    def _place_objects(self) -> None:
        n = self.num_objects
        unique_colour = self.np_random.random() < 0.5 or len(self.shapes) < 2
        pool, other_pool = (self.colours, self.shapes) if unique_colour else (self.shapes, self.colours)
        if len(pool) < 2:
            raise ValueError("PropertyComparison needs at least two colours or two shapes")
        common = self._repeated_values(n - 1, pool)
        odd = str(self.np_random.choice([value for value in pool if value not in common]))
        self.target = int(self.np_random.integers(n))
        common.insert(self.target, odd)
        other = self._repeated_values(n, other_pool)
        looks = zip(common, other) if unique_colour else zip(other, common)
        self.objects = [self._sprite(c, s, depth=0.2 + 0.1 * i) for i, (c, s) in enumerate(looks)]


class MovingObjectsEnv(SpriteTaskEnv):
    """A video task for perception pretraining: objects drift, bounce off the walls and occlude
    each other by depth order. The agent is one more object moved by the actions (random or
    scripted by the caller); no reward, episodes end at the time limit.
    """

    default_num_objects = 4

    def __init__(self, speed: float = 0.03, object_size: float | tuple[float, float] = (0.07, 0.14), **kwargs):
        super().__init__(object_size=object_size, **kwargs)
        self.speed = speed

    def _place_objects(self) -> None:
        n = self.num_objects
        colours = self.np_random.choice(self.colours, size=n)
        shapes = self.np_random.choice(self.shapes, size=n)
        depths = self.np_random.permutation(n) * (0.7 / max(n, 1)) + 0.2
        self.objects = [self._sprite(c, s, depth=float(d)) for c, s, d in zip(colours, shapes, depths)]
        angles = self.np_random.uniform(0, 2 * np.pi, size=n)
        speeds = self.np_random.uniform(0.5, 1.0, size=n) * self.speed
        self.velocities = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * speeds[:, None]

    def _scatter(self, sprites: list[Sprite], gap: float = 0.02) -> None:
        # overlaps are the point here: start anywhere inside the arena
        for sprite in sprites:
            sprite.x, sprite.y = self.np_random.uniform(sprite.size, 1.0 - sprite.size, size=2)

    def _advance(self) -> None:
        for sprite, velocity in zip(self.objects, self.velocities):
            for axis, name in enumerate(("x", "y")):
                value = getattr(sprite, name) + velocity[axis]
                if not sprite.size <= value <= 1.0 - sprite.size:
                    velocity[axis] = -velocity[axis]
                    value = float(np.clip(value, sprite.size, 1.0 - sprite.size))
                setattr(sprite, name, value)

    def _outcome(self) -> tuple[float, bool, bool]:
        return 0.0, False, False

"""MiniGrid adapter: RGB frames with pixel-exact ground truth.

``make_minigrid("MiniGrid-DoorKey-5x5-v0", tile_size=8)`` returns a gymnasium env whose
observation is the RGB frame that MiniGrid's own wrappers render, (H, W, 3) uint8:
(grid height * tile_size, grid width * tile_size) for ``view="full"``, and
(agent_view_size * tile_size,) * 2 for ``view="partial"`` (the agent's egocentric view, agent at
the bottom centre looking up). ``render()`` returns the same frame.

``info["ground_truth"]`` follows :mod:`ocrl.envs.ground_truth`. The agent is object 0 (mask
id 1); every other non-wall world object (key, ball, box, door, goal, lava, floor, ...) is one
more object, in the order first seen (row-major grid order at reset, later arrivals such as a
box's contents appended), so ids stay fixed within an episode. Walls and empty cells are
background. An object's pixels are those of its tile where the tile drawn with the object
differs from the same tile drawn empty (both by ``Grid.render_tile``, with the tile's
highlight); the agent is drawn on top, so its pixels win on the cell it shares with an object.
A carried object sits at the agent's cell: not drawn in the full view, drawn under the agent in
the partial view (as MiniGrid does). Depth is a constant layer depth: agent 0.4, objects 0.5,
background 1.

With ``highlight=True`` (MiniGrid's default, full view only) the cells the agent sees are
tinted towards white, so pixel colours there differ from ``object_colour``; pass
``highlight=False`` for untinted frames.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLORS
from minigrid.core.grid import Grid
from minigrid.core.world_object import WorldObj
from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper, RGBImgPartialObsWrapper

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY, make_ground_truth, pixel_to_unit

VIEWS = ("full", "partial")
AGENT_DEPTH = 0.4
OBJECT_DEPTH = 0.5
BACKGROUND_DEPTH = 1.0
# Grid.render_tile draws the agent as a red triangle
AGENT_COLOUR = (1.0, 0.0, 0.0)
BACKGROUND_TYPES = frozenset({"wall"})

# (tile_size, highlight, object encoding or None, agent_dir or None) -> (object pixels, agent pixels)
TilePixelsKey = tuple[int, bool, tuple[int, int, int] | None, int | None]


def make_minigrid(env_id: str, tile_size: int = 8, view: str = "full", **kwargs: Any) -> gym.Env:
    """Make a MiniGrid/BabyAI env with RGB frame observations (H, W, 3) uint8 and ground truth.

    ``kwargs`` go to ``gymnasium.make`` (e.g. ``highlight=False``, ``max_steps=...``).
    Raises ``ValueError`` for an unknown ``view``; ``ocrl.envs.make`` turns an unknown id into one.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile_size}")
    # tile_size and agent_pov make MiniGrid's own render() draw the observed frame
    env = gym.make(env_id, render_mode="rgb_array", tile_size=tile_size, agent_pov=view == "partial", **kwargs)
    if view == "full":
        env = RGBImgObsWrapper(env, tile_size=tile_size)
    else:
        env = RGBImgPartialObsWrapper(env, tile_size=tile_size)
    return MiniGridGroundTruth(ImgObsWrapper(env), tile_size=tile_size, view=view)


class MiniGridGroundTruth(gym.Wrapper):
    """Adds ``info["ground_truth"]`` to a MiniGrid env whose observation is its RGB frame (H, W, 3).

    The frame must be the one ``RGBImgObsWrapper`` (``view="full"``) or
    ``RGBImgPartialObsWrapper`` (``view="partial"``) draws with the same ``tile_size``.
    """

    def __init__(self, env: gym.Env, tile_size: int, view: str):
        super().__init__(env)
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
        self.tile_size = tile_size
        self.view = view
        self._objects: list[WorldObj] = []
        self._rows: dict[int, int] = {}  # id(object) -> row in self._objects
        self._cells: list[tuple[int, int]] = []  # last known world cell of each object
        self._tile_pixels_cache: dict[TilePixelsKey, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        self._objects, self._rows, self._cells = [], {}, []
        info[GROUND_TRUTH_KEY] = self._ground_truth(frame)
        return frame, info

    def step(self, action) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        info[GROUND_TRUTH_KEY] = self._ground_truth(frame)
        return frame, reward, terminated, truncated, info

    # --- objects ---------------------------------------------------------------------------------

    def _track_objects(self) -> None:
        """Add newly seen world objects and update every object's world cell."""
        core = self.env.unwrapped
        width = core.grid.width
        for index, obj in enumerate(core.grid.grid):
            if obj is None or obj.type in BACKGROUND_TYPES:
                continue
            self._place(obj, (index % width, index // width))
        if core.carrying is not None:
            self._place(core.carrying, (int(core.agent_pos[0]), int(core.agent_pos[1])))
        # an object that left the grid otherwise (an opened box) keeps its last cell, unseen

    def _place(self, obj: WorldObj, cell: tuple[int, int]) -> None:
        """Record the object's world cell, appending it to the objects when first seen."""
        if id(obj) not in self._rows:
            self._rows[id(obj)] = len(self._objects)
            self._objects.append(obj)
            self._cells.append(cell)
        self._cells[self._rows[id(obj)]] = cell

    def _view(self) -> tuple[Grid, tuple[int, int], int]:
        """The grid the frame shows, the agent's cell in it and the agent's drawn direction."""
        core = self.env.unwrapped
        if self.view == "full":
            return core.grid, (int(core.agent_pos[0]), int(core.agent_pos[1])), int(core.agent_dir)
        # get_pov_render draws this grid (invisible cells emptied, the carried object at the
        # agent's cell) with the agent at the bottom centre facing up (direction 3)
        grid, _ = core.gen_obs_grid()
        return grid, (core.agent_view_size // 2, core.agent_view_size - 1), 3

    def _view_cell(self, cell: tuple[int, int]) -> tuple[int, int]:
        """A world cell in the frame's cell coordinates (may lie outside the partial view)."""
        if self.view == "full":
            return cell
        return self.env.unwrapped.get_view_coords(*cell)

    # --- pixels ----------------------------------------------------------------------------------

    def _drawn_tile(self, obj: WorldObj | None, agent_dir: int | None, highlight: bool) -> np.ndarray:
        """One tile (tile, tile, 3) uint8 as it appears in the frame.

        ``Grid.render_tile`` may return floats (its anti-aliasing mean); ``Grid.render`` writes
        them into a uint8 frame, which truncates, so compare in uint8 as well.
        """
        return Grid.render_tile(obj, agent_dir, highlight, self.tile_size).astype(np.uint8)

    def _tile_pixels(
        self, obj: WorldObj | None, agent_dir: int | None, highlight: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boolean (tile, tile) masks of the object's and the agent's pixels in one tile."""
        key = (self.tile_size, highlight, obj.encode() if obj is not None else None, agent_dir)
        if key not in self._tile_pixels_cache:
            empty = self._drawn_tile(None, None, highlight)
            agent = np.zeros(empty.shape[:2], dtype=bool)
            if agent_dir is not None:
                agent = np.any(self._drawn_tile(None, agent_dir, highlight) != empty, axis=-1)
            drawn = np.zeros_like(agent)
            if obj is not None:
                drawn = np.any(self._drawn_tile(obj, None, highlight) != empty, axis=-1)
            self._tile_pixels_cache[key] = (drawn & ~agent, agent)
        return self._tile_pixels_cache[key]

    def _tile_highlight(
        self, tile: np.ndarray, cell: WorldObj | None, agent_dir: int | None, where: tuple[int, int]
    ) -> bool:
        """Whether the frame drew this tile highlighted, read off the frame itself.

        Reading it back (rather than recomputing MiniGrid's field of view) keeps the masks
        exact for whichever highlight rule MiniGrid uses, and catches a renderer that changed.
        """
        for highlight in (False, True):
            if np.array_equal(tile, self._drawn_tile(cell, agent_dir, highlight)):
                return highlight
        raise RuntimeError(
            f"frame tile at cell {where} is not what Grid.render_tile draws; has MiniGrid's renderer changed?"
        )

    def _ground_truth(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        self._track_objects()
        grid, agent_cell, agent_dir = self._view()
        size = self.tile_size
        height, width = frame.shape[:2]
        masks = np.zeros((height, width), dtype=np.int32)
        for j in range(grid.height):
            for i in range(grid.width):
                cell = grid.get(i, j)
                here = (i, j) == agent_cell
                if (cell is None or cell.type in BACKGROUND_TYPES) and not here:
                    continue  # background tile: nothing to label
                tile_slice = (slice(j * size, (j + 1) * size), slice(i * size, (i + 1) * size))
                direction = agent_dir if here else None
                highlight = self._tile_highlight(frame[tile_slice], cell, direction, (i, j))
                obj = cell if cell is not None and cell.type not in BACKGROUND_TYPES else None
                object_pixels, agent_pixels = self._tile_pixels(obj, direction, highlight)
                tile_masks = masks[tile_slice]
                if obj is not None:
                    tile_masks[object_pixels] = self._rows[id(obj)] + 2  # agent is id 1
                tile_masks[agent_pixels] = 1

        cells = np.array([agent_cell] + [self._view_cell(cell) for cell in self._cells], dtype=np.float64)
        centres = (cells + 0.5) * size
        depth = np.where(masks == 0, BACKGROUND_DEPTH, np.where(masks == 1, AGENT_DEPTH, OBJECT_DEPTH))
        return make_ground_truth(
            masks,
            depth,
            position=pixel_to_unit(centres[:, 0], centres[:, 1], height, width),
            # half a tile in [-1, 1] units of the image height
            size=np.full(len(cells), size / height),
            object_depth=[AGENT_DEPTH] + [OBJECT_DEPTH] * len(self._objects),
            colour=[AGENT_COLOUR] + [_drawn_colour(obj) for obj in self._objects],
            shape=["agent"] + [obj.type for obj in self._objects],
        )


def _drawn_colour(obj: WorldObj) -> np.ndarray:
    """RGB in [0, 1] that MiniGrid fills the object with (3,)."""
    if obj.type == "lava":
        return np.array([255.0, 128.0, 0.0]) / 255.0  # Lava.render ignores obj.color
    if obj.type == "floor":
        return COLORS[obj.color] / 2 / 255.0  # Floor.render draws a pale version
    return COLORS[obj.color] / 255.0

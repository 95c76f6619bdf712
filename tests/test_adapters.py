"""MiniGrid and dm_control adapters: API conventions and exact ground truth."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from minigrid.core.grid import Grid
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ocrl.envs

TILE = 8


# --- MiniGrid ------------------------------------------------------------------------------------


def _rollouts(env, seeds, steps):
    """Yield (frame, ground truth) along random-action episodes, resets included."""
    for seed in seeds:
        env.action_space.seed(seed)
        frame, info = env.reset(seed=seed)
        yield frame, info["ground_truth"]
        for _ in range(steps):
            frame, _, terminated, truncated, info = env.step(env.action_space.sample())
            yield frame, info["ground_truth"]
            if terminated or truncated:
                break


def _tile_of(position, shape):
    """(column, row) of the tile whose centre is at ``position`` in [-1, 1] image units."""
    height, width = shape
    return int((position[0] + 1) / 2 * width // TILE), int((position[1] + 1) / 2 * height // TILE)


def _empty_tiles():
    # as the frame holds them: Grid.render_tile's float mean, truncated into uint8
    return [Grid.render_tile(None, highlight=h, tile_size=TILE).astype(np.uint8) for h in (False, True)]


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-Empty-5x5-v0"])
@pytest.mark.parametrize("view", ["full", "partial"])
def test_minigrid_frames_and_ground_truth_shapes(env_id, view):
    env = ocrl.envs.make(env_id, tile_size=TILE, view=view)
    frame, info = env.reset(seed=0)
    core = env.unwrapped
    cells = (core.height, core.width) if view == "full" else (core.agent_view_size,) * 2
    assert frame.shape == (cells[0] * TILE, cells[1] * TILE, 3) and frame.dtype == np.uint8
    assert env.observation_space.contains(frame)
    np.testing.assert_array_equal(env.render(), frame)
    truth = info["ground_truth"]
    assert truth["masks"].shape == frame.shape[:2] and truth["masks"].dtype == np.int32
    assert truth["depth"].shape == frame.shape[:2] and truth["depth"].dtype == np.float32
    assert truth["object_shape"][0] == "agent"
    assert len(truth["object_position"]) == len(truth["object_shape"])


@pytest.mark.parametrize("view, highlight", [("full", True), ("full", False), ("partial", True)])
def test_minigrid_masks_are_exactly_the_pixels_that_differ_from_the_empty_tile(view, highlight):
    env = ocrl.envs.make("MiniGrid-DoorKey-5x5-v0", tile_size=TILE, view=view, highlight=highlight)
    empties = _empty_tiles()
    seen = Counter()
    for frame, truth in _rollouts(env, seeds=range(3), steps=40):
        masks = truth["masks"]
        assert masks.shape == frame.shape[:2]
        for index, name in enumerate(truth["object_shape"]):
            rows, cols = np.nonzero(masks == index + 1)
            if rows.size == 0:
                continue
            seen[name] += 1
            column, row = _tile_of(truth["object_position"][index], masks.shape)
            assert (cols // TILE == column).all() and (rows // TILE == row).all(), f"{name} outside its tile"
            if view == "full" and name != "agent":
                assert env.unwrapped.grid.get(column, row).type == name
        labelled_tiles = {(r // TILE, c // TILE) for r, c in zip(*np.nonzero(masks))}
        for row, column in labelled_tiles:
            tile = frame[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
            labels = masks[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
            # label 0 <=> the pixel is the empty tile's (with the tile's highlight, either way)
            assert any(np.array_equal(np.any(tile != empty, axis=-1), labels > 0) for empty in empties)
        depth = truth["depth"]
        np.testing.assert_array_equal(depth[masks == 0], 1.0)
        np.testing.assert_array_equal(depth[masks == 1], np.float32(0.4))
        np.testing.assert_array_equal(depth[masks > 1], np.float32(0.5))
    assert seen["agent"] and seen["key"] and seen["door"], seen


def test_minigrid_agent_mask_moves_when_the_agent_moves_forward():
    full = ocrl.envs.make("MiniGrid-Empty-5x5-v0", tile_size=TILE)
    _, info = full.reset(seed=0)
    before = info["ground_truth"]
    dx, dy = full.unwrapped.dir_vec
    start = tuple(full.unwrapped.agent_pos)
    _, _, _, _, info = full.step(full.unwrapped.actions.forward)
    after = info["ground_truth"]
    assert tuple(full.unwrapped.agent_pos) != start
    agent_before, agent_after = before["masks"] == 1, after["masks"] == 1
    assert agent_after.any()
    np.testing.assert_array_equal(np.roll(agent_before, (dy * TILE, dx * TILE), axis=(0, 1)), agent_after)
    step = 2 * TILE / before["masks"].shape[1]
    np.testing.assert_allclose(after["object_position"][0] - before["object_position"][0], [dx * step, dy * step])

    # egocentric view: the agent stays put at the bottom centre, the goal comes one tile closer
    partial = ocrl.envs.make("MiniGrid-Empty-5x5-v0", tile_size=TILE, view="partial")
    _, info = partial.reset(seed=0)
    before = info["ground_truth"]
    _, _, _, _, info = partial.step(partial.unwrapped.actions.forward)
    after = info["ground_truth"]
    np.testing.assert_array_equal(before["masks"] == 1, after["masks"] == 1)
    goal = after["object_shape"].index("goal")
    step = 2 * TILE / before["masks"].shape[0]
    np.testing.assert_allclose(after["object_position"][goal] - before["object_position"][goal], [0.0, step], atol=1e-6)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-LavaGapS5-v0"])
def test_minigrid_mask_pixels_have_the_object_colour(env_id):
    env = ocrl.envs.make(env_id, tile_size=TILE, highlight=False)
    checked = Counter()
    for seed in range(4):
        frame, info = env.reset(seed=seed)
        truth = info["ground_truth"]
        for index, name in enumerate(truth["object_shape"]):
            pixels = frame[truth["masks"] == index + 1]
            # doors and boxes are drawn in their colour only as outlines thinner than a pixel at
            # this tile size; the other objects are solid fills of their colour
            if len(pixels) == 0 or name in ("door", "box"):
                continue
            colour = np.round(truth["object_colour"][index] * 255).astype(np.uint8)
            most_common = Counter(map(tuple, pixels)).most_common(1)[0][0]
            assert most_common == tuple(colour), name
            checked[name] += 1
    assert checked["agent"] == 4 and checked["goal"] == 4, checked
    assert checked["lava"] or "Lava" not in env_id, checked


def _stand_facing(core, object_type):
    """Put the agent on a free cell next to the first object of that type, facing it."""
    cells = [(i, j) for j in range(core.height) for i in range(core.width)]
    target = next(cell for cell in cells if getattr(core.grid.get(*cell), "type", None) == object_type)
    for direction, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
        cell = (target[0] - dx, target[1] - dy)
        if core.grid.get(*cell) is None:
            core.agent_pos, core.agent_dir = cell, direction
            return target
    raise AssertionError(f"no free cell next to the {object_type}")


@pytest.mark.parametrize("view", ["full", "partial"])
def test_minigrid_carried_object_is_at_the_agent(view):
    env = ocrl.envs.make("MiniGrid-DoorKey-5x5-v0", tile_size=TILE, view=view)
    env.reset(seed=1)
    core = env.unwrapped
    _stand_facing(core, "key")
    _, _, _, _, info = env.step(core.actions.pickup)
    assert core.carrying is not None and core.carrying.type == "key"
    truth = info["ground_truth"]
    key = truth["object_shape"].index("key")
    np.testing.assert_allclose(truth["object_position"][key], truth["object_position"][0])
    key_pixels = truth["masks"] == key + 1
    if view == "full":
        assert not key_pixels.any()  # MiniGrid does not draw what the agent carries
    else:
        rows, cols = np.nonzero(key_pixels)  # drawn under the agent, at the bottom centre
        assert rows.size and (cols // TILE == core.agent_view_size // 2).all()
        assert (rows // TILE == core.agent_view_size - 1).all()


def test_minigrid_objects_keep_their_ids_and_new_ones_are_appended():
    env = ocrl.envs.make("MiniGrid-ObstructedMaze-1Dlh-v0", tile_size=TILE)
    _, info = env.reset(seed=0)
    before = info["ground_truth"]
    assert before["object_shape"] == ("agent", "box", "door", "ball")
    core = env.unwrapped
    box_cell = _stand_facing(core, "box")
    _, _, _, _, info = env.step(core.actions.toggle)  # opening the box puts its key in its place
    after = info["ground_truth"]
    assert after["object_shape"] == ("agent", "box", "door", "ball", "key")
    assert not (after["masks"] == 2).any()  # the box is gone but keeps its row
    rows, cols = np.nonzero(after["masks"] == 5)
    assert rows.size and (cols // TILE == box_cell[0]).all() and (rows // TILE == box_cell[1]).all()
    np.testing.assert_array_equal(after["masks"] == 4, before["masks"] == 4)  # the ball did not move


# the adapters are wrappers by design; check_env suggests checking env.unwrapped instead
WRAPPED_WARNING = "ignore:.*is different from the unwrapped version"


@pytest.mark.filterwarnings(WRAPPED_WARNING)
@pytest.mark.parametrize("view", ["full", "partial"])
def test_minigrid_gymnasium_and_sb3_check_env(view):
    env = ocrl.envs.make("MiniGrid-DoorKey-5x5-v0", tile_size=TILE, view=view)
    # The adapter is MiniGrid's own RGBImgObsWrapper/ImgObsWrapper stack, and those wrappers do
    # not record their constructor arguments, so gymnasium cannot rebuild the stack from
    # env.spec; check_env rebuilds it only for its render-mode and double-close checks, which
    # are done directly below instead.
    check_env(env, skip_render_check=True, skip_close_check=True)
    sb3_check_env(env)
    frame, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), frame)
    env.close()
    env.close()


def test_unknown_ids_and_views_give_clear_errors():
    with pytest.raises(ValueError, match="MiniGrid-Nope-v0"):
        ocrl.envs.make("MiniGrid-Nope-v0")
    with pytest.raises(ValueError, match="unknown view 'top'"):
        ocrl.envs.make("MiniGrid-Empty-5x5-v0", view="top")


# --- dm_control ----------------------------------------------------------------------------------

DMC_IDS = ["dm_control/cartpole-swingup-v0", "dm_control/finger-spin-v0", "dm_control/ball_in_cup-catch-v0"]


def _object_bodies(physics, truth):
    """Body ids of the ground-truth objects, from their names."""
    return [physics.model.name2id(name, "body") for name in truth["object_shape"]]


@pytest.mark.parametrize("resolution", [64, (48, 80)])
def test_dm_control_frames_have_the_requested_resolution(resolution):
    height, width = (resolution, resolution) if np.isscalar(resolution) else resolution
    env = ocrl.envs.make("dm_control/cartpole-swingup-v0", resolution=resolution)
    assert env.observation_space == gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
    assert env.action_space == env.unwrapped.action_space
    frame, info = env.reset(seed=0)
    frame, *_, info = env.step(env.action_space.sample())
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
    assert env.observation_space.contains(frame)
    assert env.render() is frame
    truth = info["ground_truth"]
    assert truth["masks"].shape == (height, width) and truth["depth"].shape == (height, width)
    assert truth["object_shape"] == ("cart", "pole_1")


@pytest.mark.parametrize("env_id", DMC_IDS)
def test_dm_control_masks_are_the_bodies_owning_the_segmented_geoms(env_id):
    env = ocrl.envs.make(env_id, resolution=(48, 80))
    env.action_space.seed(0)
    _, info = env.reset(seed=0)
    physics = env.unwrapped.physics
    model = physics.model
    names = info["ground_truth"]["object_shape"]
    bodies = _object_bodies(physics, info["ground_truth"])
    # every non-world body with a geom of a default-visible group, in body-id order
    assert bodies == sorted({int(b) for b, g in zip(model.geom_bodyid, model.geom_group) if b != 0 and g < 3})
    for _ in range(4):
        truth = info["ground_truth"]
        assert truth["object_shape"] == names  # ids stable within the episode
        segmentation = physics.render(48, 80, camera_id=0, segmentation=True)
        object_id, object_type = segmentation[..., 0], segmentation[..., 1]
        expected = np.zeros((48, 80), dtype=np.int32)
        geom = object_type == 5  # mjOBJ_GEOM
        owner = model.geom_bodyid[object_id[geom]]
        expected[geom] = [bodies.index(body) + 1 if body in bodies else 0 for body in owner]
        np.testing.assert_array_equal(truth["masks"], expected)
        assert set(np.unique(truth["masks"])) > {0}, "no object in view"
        for _ in range(5):
            _, _, _, _, info = env.step(env.action_space.sample())


def _render_with_only(physics, visible_geoms, shape):
    """Depth (H, W) and segmentation (H, W, 2) renders with the geoms outside ``visible_geoms`` hidden."""
    model = physics.model
    saved = model.geom_group.copy()
    try:
        model.geom_group[~visible_geoms] = 5  # off in the default scene option
        return physics.render(*shape, camera_id=0, depth=True), physics.render(*shape, camera_id=0, segmentation=True)
    finally:
        model.geom_group[:] = saved


@pytest.mark.parametrize("env_id", DMC_IDS[:2])
def test_dm_control_depth_is_the_nearest_surface_and_the_nearer_body_wins(env_id):
    shape = (48, 80)
    env = ocrl.envs.make(env_id, resolution=shape)
    env.action_space.seed(1)
    env.reset(seed=1)
    for _ in range(3):
        _, _, _, _, info = env.step(env.action_space.sample())
    physics, truth = env.unwrapped.physics, info["ground_truth"]
    masks, depth = truth["masks"], truth["depth"]
    geom_body = physics.model.geom_bodyid
    bodies = _object_bodies(physics, truth)
    objects = masks > 0

    # each body drawn alone: an object pixel shows its own body's surface, and no body is nearer
    alone = np.stack([_render_with_only(physics, geom_body == body, shape)[0] for body in bodies])
    own = np.take_along_axis(alone, np.maximum(masks - 1, 0)[None], axis=0)[0]
    np.testing.assert_allclose(depth[objects], own[objects], rtol=1e-6)
    assert (alone.min(axis=0)[objects] >= depth[objects] * (1 - 1e-6)).all()

    # each body hidden: its pixels now show something no nearer, and somewhere another object
    revealed = 0
    for index, body in enumerate(bodies):
        pixels = masks == index + 1
        behind, segmentation = _render_with_only(physics, geom_body != body, shape)
        assert (behind[pixels] >= depth[pixels] * (1 - 1e-6)).all()
        under = segmentation[..., 0][pixels][segmentation[..., 1][pixels] == 5]
        revealed += np.isin(geom_body[under], [b for b in bodies if b != body]).sum()
    assert revealed > 0, "no occlusion between objects in this frame; pick another step"


def test_dm_control_positions_are_projected_body_origins_and_the_ball_fits():
    # the ball's body origin is its centre, so its projection, depth and size are checkable
    shape = (48, 80)
    env = ocrl.envs.make("dm_control/ball_in_cup-catch-v0", resolution=shape)
    _, info = env.reset(seed=0)
    truth = info["ground_truth"]
    physics = env.unwrapped.physics
    # pinhole projection from the camera pose: MuJoCo cameras look along their -z axis, y up
    bodies = _object_bodies(physics, truth)
    in_camera = (physics.data.xpos[bodies] - physics.data.cam_xpos[0]) @ physics.data.cam_xmat[0].reshape(3, 3)
    distance = -in_camera[:, 2]
    focal = 1.0 / np.tan(np.deg2rad(physics.model.cam_fovy[0]) / 2)  # in units of half the height
    x = focal * in_camera[:, 0] / distance * shape[0] / shape[1]  # x units are half the width
    y = -focal * in_camera[:, 1] / distance
    expected = np.stack([x, y], axis=1)
    np.testing.assert_allclose(truth["object_position"], expected, atol=1e-5)
    np.testing.assert_allclose(truth["object_depth"], distance, rtol=1e-5)

    ball = truth["object_shape"].index("ball")
    radius = physics.model.geom_size[physics.model.name2id("ball", "geom"), 0]
    x, y = truth["object_position"][ball]
    column, row = int((x + 1) / 2 * shape[1]), int((y + 1) / 2 * shape[0])
    assert truth["masks"][row, column] == ball + 1
    centre_depth = truth["object_depth"][ball]
    assert abs(truth["depth"][row, column] - (centre_depth - radius)) < 0.3 * radius
    fovy = physics.model.cam_fovy[0]
    radius_pixels = radius / centre_depth * (shape[0] / 2) / np.tan(np.deg2rad(fovy) / 2)
    assert truth["object_size"][ball] == pytest.approx(2 * radius_pixels / shape[0], rel=0.35)


@pytest.mark.filterwarnings(WRAPPED_WARNING)
@pytest.mark.filterwarnings("ignore:Your action space has dtype float64")  # dm_control's own action spec
def test_dm_control_gymnasium_and_sb3_check_env():
    env = ocrl.envs.make("dm_control/cartpole-swingup-v0", resolution=(48, 64))
    check_env(env)  # the full check: render modes and double close rebuild the env from its spec
    sb3_check_env(env)

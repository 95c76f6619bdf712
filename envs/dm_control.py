"""dm_control adapter (through shimmy): RGB frames from one camera with exact ground truth.

``make_dm_control("dm_control/cartpole-swingup-v0", resolution=(48, 80))`` returns a gymnasium
env whose observation is the camera's RGB frame (H, W, 3) uint8 at any H x W; the action space
is the task's own. ``render()`` returns the same frame.

``info["ground_truth"]`` follows :mod:`ocrl.envs.ground_truth`. Objects are the bodies other
than the world body (id 0) that have a visible geom, in body-id order, in view or not, fixed
from each ``reset`` to the next. A pixel belongs to the body owning the geom (or site) that
MuJoCo's segmentation render finds there; world-body geoms (floor, rails), tendons and pixels
with no geom are background 0. ``depth`` is MuJoCo's depth render in metres (distance along
the camera axis; the far clipping plane where nothing is hit). ``object_position`` is the
body's origin projected through the camera matrix, ``object_depth`` its distance along the
camera axis (negative behind the camera), ``object_size`` sqrt(mask area / pi) (0 when not
visible), ``object_colour`` the rgba of the body's first visible geom as MuJoCo resolves it
(material or geom rgba; a texture on top is not included), ``object_shape`` the body name.

Headless machines need ``MUJOCO_GL=egl`` (or ``osmesa``) set before dm_control is imported.
Rendering drops shadows, reflections and the skybox (black background) and multisampling:
several times faster on a software renderer, no mirrored bodies in the floor, and one geom per
pixel, so the RGB frame and the segmentation agree on every pixel.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np
import shimmy
from dm_control.mujoco import Camera, Physics
from dm_control.mujoco.wrapper import MjModel
from gymnasium import spaces

from ocrl.envs.ground_truth import GROUND_TRUTH_KEY, make_ground_truth, pixel_to_unit

DISABLED_RENDER_FLAGS = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
)
GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)
SITE = int(mujoco.mjtObj.mjOBJ_SITE)
# MuJoCo uses a material's rgba for a geom or site whose own rgba is left at this default
DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], dtype=np.float32)


def make_dm_control(
    env_id: str, resolution: int | tuple[int, int] = 64, camera_id: int | str = 0, **kwargs: Any
) -> gym.Env:
    """Make a shimmy dm_control env with RGB frame observations (H, W, 3) uint8 and ground truth.

    ``resolution`` is an int (square) or (height, width); ``kwargs`` go to ``gymnasium.make``.
    """
    gym.register_envs(shimmy)
    height, width = (resolution, resolution) if np.isscalar(resolution) else tuple(resolution)
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return DmControlGroundTruth(gym.make(env_id, **kwargs), int(height), int(width), camera_id)


class DmControlGroundTruth(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces a shimmy dm_control env's state observation by a camera frame (H, W, 3) uint8
    and adds ``info["ground_truth"]``.

    Records its arguments so that ``env.spec.make()`` rebuilds the whole adapted env.
    """

    def __init__(self, env: gym.Env, height: int, width: int, camera_id: int | str = 0):
        gym.utils.RecordConstructorArgs.__init__(self, height=height, width=width, camera_id=camera_id)
        gym.Wrapper.__init__(self, env)
        self.height, self.width, self.camera_id = height, width, camera_id
        self.observation_space = spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        self._physics: Physics | None = None
        self._camera: Camera | None = None
        self._frame: np.ndarray | None = None
        # now rather than at reset: a resolution beyond the offscreen buffer fails here, and
        # multisampling is off before anything else renders
        self._ensure_camera()

    @property
    def render_mode(self) -> str:
        return "rgb_array"

    @property
    def physics(self) -> Physics:
        return self.env.unwrapped.physics

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        self._find_objects()
        frame, info[GROUND_TRUTH_KEY] = self._observe()
        return frame, info

    def step(self, action) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        frame, info[GROUND_TRUTH_KEY] = self._observe()
        return frame, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self._frame

    def close(self) -> None:
        self._camera = None
        self._physics = None
        super().close()

    # --- setup -----------------------------------------------------------------------------------

    def _ensure_camera(self) -> Camera:
        """A camera for the current physics (composer tasks may rebuild it between episodes)."""
        physics = self.physics
        if physics is not self._physics:
            # must precede the first render, which allocates the offscreen buffer
            physics.model.vis.quality.offsamples = 0
            self._camera = Camera(physics, self.height, self.width, self.camera_id)
            for flag in DISABLED_RENDER_FLAGS:
                self._camera.scene.flags[flag] = 0
            self._physics = physics
        return self._camera

    def _find_objects(self) -> None:
        """Fix the objects (bodies with a visible geom) and the pixel-id tables until next reset."""
        camera = self._ensure_camera()
        model = self.physics.model
        option = camera.option
        geom_rgba = _resolved_rgba(model, model.geom_rgba, model.geom_matid)
        site_rgba = _resolved_rgba(model, model.site_rgba, model.site_matid)
        # MuJoCo skips geoms of disabled groups (only 0..5 exist) and fully transparent ones
        geom_visible = _group_enabled(option.geomgroup, model.geom_group) & (geom_rgba[:, 3] > 0)
        site_visible = _group_enabled(option.sitegroup, model.site_group) & (site_rgba[:, 3] > 0)
        has_geom = np.zeros(model.nbody, dtype=bool)
        has_geom[model.geom_bodyid[geom_visible]] = True
        has_geom[0] = False  # the world body (floor, rails, ...) is background
        self._bodies = np.flatnonzero(has_geom)
        instance = np.zeros(model.nbody, dtype=np.int32)
        instance[self._bodies] = np.arange(1, len(self._bodies) + 1)
        self._geom_instance = np.where(geom_visible, instance[model.geom_bodyid], 0)
        self._site_instance = np.where(site_visible, instance[model.site_bodyid], 0)
        # first visible geom of each object: geoms are stored in body order
        first_geom = [np.flatnonzero(geom_visible & (model.geom_bodyid == body))[0] for body in self._bodies]
        self._colours = geom_rgba[first_geom, :3].reshape(-1, 3)
        self._names = tuple(model.id2name(int(body), "body") or f"body{body}" for body in self._bodies)

    # --- observation -----------------------------------------------------------------------------

    def _observe(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Render frame, depth and segmentation; return (frame (H, W, 3), ground truth)."""
        if self.physics is not self._physics:
            self._find_objects()
        camera = self._ensure_camera()
        # the camera returns a view of its own buffer, overwritten by the next render: copy
        frame = np.ascontiguousarray(camera.render())
        depth = np.ascontiguousarray(camera.render(depth=True), dtype=np.float32)
        segmentation = camera.render(segmentation=True)
        object_id, object_type = segmentation[..., 0], segmentation[..., 1]
        masks = np.zeros((self.height, self.width), dtype=np.int32)
        for kind, table in ((GEOM, self._geom_instance), (SITE, self._site_instance)):
            pixels = object_type == kind
            masks[pixels] = table[object_id[pixels]]

        count = len(self._bodies)
        centres = np.concatenate([self.physics.data.xpos[self._bodies], np.ones((count, 1))], axis=1)
        projected = centres @ camera.matrix.T  # (N, 3): (u w, v w, w) with w = -depth
        pixel_x, pixel_y = projected[:, 0] / projected[:, 2], projected[:, 1] / projected[:, 2]
        # the camera matrix puts pixel centres at integers; the convention at +0.5
        position = pixel_to_unit(pixel_x + 0.5, pixel_y + 0.5, self.height, self.width)
        area = np.bincount(masks.ravel(), minlength=count + 1)[1:]
        self._frame = frame
        return frame, make_ground_truth(
            masks,
            depth,
            position=position,
            size=2.0 * np.sqrt(area / np.pi) / self.height,
            object_depth=-projected[:, 2],
            colour=self._colours.copy(),  # every info owns its arrays (gymnasium checks this)
            shape=self._names,
        )


def _group_enabled(enabled: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Whether each element's group (K,) is one the scene option draws (MuJoCo has 6 groups)."""
    inside = (group >= 0) & (group < len(enabled))
    return inside & np.asarray(enabled, dtype=bool)[np.clip(group, 0, len(enabled) - 1)]


def _resolved_rgba(model: MjModel, rgba: np.ndarray, material: np.ndarray) -> np.ndarray:
    """The rgba MuJoCo draws with (K, 4): the material's where the own rgba is the default."""
    rgba = np.array(rgba, dtype=np.float32)
    use_material = (material >= 0) & np.all(rgba == DEFAULT_RGBA, axis=1)
    rgba[use_material] = model.mat_rgba[material[use_material]]
    return rgba

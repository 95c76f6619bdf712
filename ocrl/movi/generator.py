"""MOVi-style videos rendered with MuJoCo, written as TFRecord shards in the MOVi schema.

So that the whole MOVi pipeline (read, convert, pretrain, evaluate) runs without the real data
(``ocrl movi generate DST --videos N``). Each video: 3-10 random objects (box, sphere, cylinder,
capsule, ellipsoid; random colour, size and orientation) are dropped from up to 2.5 m and
thrown towards the centre of a floor, as MOVi's objects are (spawned in
[-2.5, 2.5]² x [0.5, 2.5] m, horizontal velocity in [-3, 3]² m/s minus a multiple of the
position); the camera sits on a half-sphere shell around the origin, looking at it, and with
``moving_camera`` travels in a straight line during the video (as in MOVi-E). Physics runs at
240 Hz, frames are taken at 12 Hz (2 s of 24 frames, MOVi's rate).

Written features (the :mod:`ocrl.movi.schema` schema, dataset name ``movi_mujoco``):
``video``, ``segmentations`` (geom pixels of object i are i + 1, floor and sky 0), ``depth``
(distance from the camera centre, as MOVi: MuJoCo's planar depth times the ray length),
``forward_flow`` / ``backward_flow`` ((delta row, delta column) in pixels: each pixel's surface
point carried by its object's rigid motion, or static for floor and sky, and projected with the
other frame's camera; occlusion is not considered), ``metadata/*`` (with ``depth_range`` and
the flow ranges), ``camera/*`` (``quaternions`` w, x, y, z of a camera
looking down its -z axis with y up, as Blender's and MuJoCo's), ``instances/*``: ``positions``,
``quaternions``, ``velocities``, ``angular_velocities`` (world frame), ``bboxes_3d``,
``image_positions`` ((x, y) in [0, 1]), ``visibility`` (pixels), ragged ``bboxes`` and
``bbox_frames`` (from the segmentation, as Kubric computes them), ``mass``, ``friction``,
``scale``, ``color``, ``shape_label`` (:data:`~ocrl.movi.schema.MUJOCO_SHAPES`), and
``background``. Not written: normals, object coordinates, collision events,
restitution (MuJoCo's soft contacts have no restitution coefficient).

Video ``i`` of a run seeded ``seed`` depends only on ``(seed, i)``: shards can be written by
parallel processes, in any order, and a rerun rewrites exactly the same files.
"""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrl.errors import OcrlError
from ocrl.movi.schema import MUJOCO_SHAPES, write_movi_shard

DATASET_NAME = "movi_mujoco"


@dataclass
class GeneratorConfig:
    """What the generated videos look like.

    resolution: frame side in pixels. num_frames: frames per video (MOVi: 24, at 12 fps).
    min_objects, max_objects: objects per video, uniform (MOVi-C: 3-10).
    moving_camera: the camera travels on a straight line during the video (MOVi-E).
    focal_length, sensor_width: pinhole camera in mm (MOVi's defaults: 35, 32).
    """

    resolution: int = 128
    num_frames: int = 24
    min_objects: int = 3
    max_objects: int = 10
    moving_camera: bool = False
    focal_length: float = 35.0
    sensor_width: float = 32.0
    frame_rate: int = 12
    physics_rate: int = 240

    def check(self) -> None:
        if self.resolution < 8:
            raise OcrlError(f"resolution must be at least 8, got {self.resolution}")
        if self.num_frames < 2:
            raise OcrlError(f"num_frames must be at least 2, got {self.num_frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 254:
            raise OcrlError(f"need 1 <= min_objects <= max_objects <= 254, got {self.min_objects}, {self.max_objects}")
        if self.physics_rate % self.frame_rate:
            raise OcrlError("physics_rate must be a multiple of frame_rate")

    @property
    def field_of_view(self) -> float:
        """Horizontal (= vertical: frames are square) field of view in radians."""
        return 2.0 * math.atan(self.sensor_width / (2.0 * self.focal_length))


@dataclass
class _Object:
    shape: int  # index into MUJOCO_SHAPES
    size: np.ndarray  # MuJoCo geom size (3,)
    half_extent: np.ndarray  # half side of its local box (3,), for bboxes_3d
    scale: float
    colour: np.ndarray  # (3,) in [0, 1]
    position: np.ndarray
    quaternion: np.ndarray  # w, x, y, z
    velocity: np.ndarray


def _sample_objects(rng: np.random.Generator, config: GeneratorConfig) -> list[_Object]:
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[_Object] = []
    for _ in range(500 * count):  # rejection sampling of non-overlapping spawn spheres
        if len(objects) == count:
            break
        shape = int(rng.integers(len(MUJOCO_SHAPES)))
        scale = float(rng.uniform(0.25, 0.6))
        name = MUJOCO_SHAPES[shape]
        if name == "box":
            size = scale * rng.uniform(0.6, 1.0, 3)
            half = size
        elif name == "sphere":
            size = np.array([scale, 0.0, 0.0])
            half = np.full(3, scale)
        elif name == "cylinder":
            size = np.array([scale * rng.uniform(0.6, 1.0), scale * rng.uniform(0.5, 1.0), 0.0])
            half = np.array([size[0], size[0], size[1]])
        elif name == "capsule":
            size = np.array([scale * rng.uniform(0.4, 0.7), scale * rng.uniform(0.4, 0.8), 0.0])
            half = np.array([size[0], size[0], size[0] + size[1]])
        else:  # ellipsoid
            size = scale * rng.uniform(0.5, 1.0, 3)
            half = size
        radius = float(np.linalg.norm(half))
        position = rng.uniform([-2.5, -2.5, 0.5], [2.5, 2.5, 2.5])
        position[2] = max(position[2], radius + 0.05)
        if any(
            np.linalg.norm(position - other.position) < radius + np.linalg.norm(other.half_extent) for other in objects
        ):
            continue
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0, 2 * math.pi)
        quaternion = np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])
        velocity = np.concatenate([rng.uniform(-3, 3, 2) - position[:2], [0.0]])  # biased towards the centre
        hue = rng.uniform()
        colour = np.array(_hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)))
        objects.append(_Object(shape, size, half, scale, colour, position, quaternion, velocity))
    return objects


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    sector = int(hue * 6) % 6
    fraction = hue * 6 - int(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - fraction * saturation), value * (1 - (1 - fraction) * saturation)
    return [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][sector]


def _scene_xml(objects: list[_Object], config: GeneratorConfig, floor_colours: np.ndarray) -> str:
    first, second = (" ".join(f"{channel:.3f}" for channel in colour) for colour in floor_colours)
    fovy = math.degrees(config.field_of_view)
    bodies = []
    for index, item in enumerate(objects):
        size = " ".join(
            f"{value:.4f}"
            for value in item.size[
                : {"box": 3, "sphere": 1, "cylinder": 2, "capsule": 2, "ellipsoid": 3}[MUJOCO_SHAPES[item.shape]]
            ]
        )
        rgba = " ".join(f"{channel:.3f}" for channel in item.colour) + " 1"
        position = " ".join(f"{value:.4f}" for value in item.position)
        quaternion = " ".join(f"{value:.5f}" for value in item.quaternion)
        bodies.append(
            f'<body name="object{index}" pos="{position}" quat="{quaternion}"><freejoint/>'
            f'<geom name="object{index}" type="{MUJOCO_SHAPES[item.shape]}" size="{size}" rgba="{rgba}" density="1000" friction="0.5 0.005 0.0001"/></body>'
        )
    return f"""<mujoco>
  <option timestep="{1.0 / config.physics_rate:.6f}"/>
  <visual><global offwidth="{config.resolution}" offheight="{config.resolution}"/><quality shadowsize="1024"/><map znear="0.05" zfar="60"/></visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.65 0.8" rgb2="0.9 0.9 0.95" width="64" height="64"/>
    <texture name="floor" type="2d" builtin="checker" rgb1="{first}" rgb2="{second}" width="64" height="64"/>
    <material name="floor" texture="floor" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light directional="true" pos="2 -3 8" dir="-0.2 0.3 -1" diffuse="0.8 0.8 0.8" castshadow="true"/>
    <geom name="floor" type="plane" size="30 30 1" material="floor" friction="0.5 0.005 0.0001"/>
    <body name="target" pos="0 0 0"/>
    <camera name="camera" pos="0 -10 6" mode="targetbody" target="target" fovy="{fovy:.4f}"/>
    {"".join(bodies)}
  </worldbody>
</mujoco>"""


def _camera_path(rng: np.random.Generator, config: GeneratorConfig) -> np.ndarray:
    """(num_frames, 3) camera positions on a half-sphere shell of radius 8-11 m, 20-60 degrees up."""

    def on_shell() -> np.ndarray:
        radius, azimuth, elevation = (
            rng.uniform(8.0, 11.0),
            rng.uniform(0, 2 * math.pi),
            math.radians(rng.uniform(20.0, 60.0)),
        )
        return radius * np.array(
            [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
        )

    start = on_shell()
    if not config.moving_camera:
        return np.repeat(start[None], config.num_frames, axis=0)
    end = start + rng.uniform(-4.0, 4.0, 3)
    end[2] = max(end[2], 2.0)  # stays above the floor
    weights = np.linspace(0.0, 1.0, config.num_frames)[:, None]
    return (1 - weights) * start + weights * end


def render_video(seed: int, index: int, config: GeneratorConfig) -> dict[str, Any]:
    """Simulate and render video ``index`` of a run seeded ``seed``, in the stored MOVi form that
    :func:`~ocrl.movi.schema.encode_movi_example` takes."""
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless: before mujoco picks its GL backend
    import mujoco

    rng = np.random.default_rng([seed, index])
    objects = _sample_objects(rng, config)
    floor_colours = rng.uniform(0.25, 0.75, (2, 3))
    camera_positions = _camera_path(rng, config)
    model = mujoco.MjModel.from_xml_string(_scene_xml(objects, config, floor_colours))
    data = mujoco.MjData(model)
    body_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"object{i}") for i in range(len(objects))]
    geom_to_instance = np.zeros(model.ngeom + 1, dtype=np.int32)  # index -1 (no geom) maps to 0 too
    for i in range(len(objects)):
        geom_to_instance[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"object{i}")] = i + 1
    for i, item in enumerate(objects):
        address = model.jnt_dofadr[model.body_jntadr[body_ids[i]]]
        data.qvel[address : address + 3] = item.velocity
    size, frames_count, count = config.resolution, config.num_frames, len(objects)
    substeps = config.physics_rate // config.frame_rate
    focal_pixels = size / 2 / math.tan(config.field_of_view / 2)
    pixel = (np.arange(size) + 0.5 - size / 2) / focal_pixels
    ray_length = np.sqrt(1.0 + pixel[None, :] ** 2 + pixel[:, None] ** 2).astype(np.float32)  # planar depth -> distance

    video = np.zeros((frames_count, size, size, 3), np.uint8)
    segmentations = np.zeros((frames_count, size, size, 1), np.uint8)
    depth = np.zeros((frames_count, size, size), np.float32)
    positions = np.zeros((count, frames_count, 3), np.float32)
    quaternions = np.zeros((count, frames_count, 4), np.float32)
    velocities = np.zeros((count, frames_count, 3), np.float32)
    angular = np.zeros((count, frames_count, 3), np.float32)
    corners = np.zeros((count, frames_count, 8, 3), np.float32)
    image_positions = np.zeros((count, frames_count, 2), np.float32)
    camera_quaternions = np.zeros((frames_count, 4), np.float32)
    camera_rotations = np.zeros((frames_count, 3, 3))
    camera_centres = np.zeros((frames_count, 3))
    object_rotations = np.zeros((count, frames_count, 3, 3))
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    renderer = mujoco.Renderer(model, size, size)
    try:
        for t in range(frames_count):
            if t:
                mujoco.mj_step(model, data, nstep=substeps)
            model.cam_pos[0] = camera_positions[t]
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera="camera")
            video[t] = renderer.render()
            renderer.enable_depth_rendering()
            renderer.update_scene(data, camera="camera")
            depth[t] = renderer.render() * ray_length
            renderer.disable_depth_rendering()
            renderer.enable_segmentation_rendering()
            renderer.update_scene(data, camera="camera")
            segmentations[t, :, :, 0] = geom_to_instance[renderer.render()[:, :, 0]]
            renderer.disable_segmentation_rendering()
            camera_rotation = data.cam_xmat[0].reshape(3, 3)  # columns: camera x, y, z in the world
            quaternion = np.zeros(4)
            mujoco.mju_mat2Quat(quaternion, data.cam_xmat[0])
            camera_quaternions[t] = quaternion
            camera_rotations[t], camera_centres[t] = camera_rotation, data.cam_xpos[0]
            for i, body in enumerate(body_ids):
                positions[i, t] = data.xpos[body]
                quaternions[i, t] = data.xquat[body]
                twist = np.zeros(6)
                mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, body, twist, 0)
                angular[i, t], velocities[i, t] = twist[:3], twist[3:]
                rotation = data.xmat[body].reshape(3, 3)
                object_rotations[i, t] = rotation
                corners[i, t] = data.xpos[body] + (signs * objects[i].half_extent) @ rotation.T
                local = camera_rotation.T @ (data.xpos[body] - data.cam_xpos[0])  # camera looks down -z, y up
                image_positions[i, t] = [
                    0.5 + local[0] / -local[2] * focal_pixels / size,
                    0.5 - local[1] / -local[2] * focal_pixels / size,
                ]
    finally:
        renderer.close()

    bboxes, bbox_frames, visibility = [], [], np.zeros((count, frames_count), np.uint16)
    for i in range(count):
        boxes, frames_with_box = [], []
        for t in range(frames_count):
            rows, columns = np.nonzero(segmentations[t, :, :, 0] == i + 1)
            visibility[i, t] = len(rows)
            if len(rows):  # Kubric's convention: (ymin, xmin, ymax, xmax), max is one past the last pixel
                boxes.append(
                    (rows.min() / size, columns.min() / size, (rows.max() + 1) / size, (columns.max() + 1) / size)
                )
                frames_with_box.append(t)
        bboxes.append(np.array(boxes, dtype=np.float32).reshape(-1, 4))
        bbox_frames.append(np.array(frames_with_box, dtype=np.int64))
    depth_range = np.array([depth.min(), depth.max()], dtype=np.float32)
    poses = _Poses(camera_centres, camera_rotations, positions.astype(np.float64), object_rotations, focal_pixels)
    forward_flow = np.stack([_flow(poses, depth, segmentations[..., 0], t, t + 1) for t in range(frames_count)])
    backward_flow = np.stack([_flow(poses, depth, segmentations[..., 0], t, t - 1) for t in range(frames_count)])
    return {
        "metadata": {
            "video_name": f"{seed}_{index}",
            "width": size,
            "height": size,
            "num_frames": frames_count,
            "num_instances": count,
            "depth_range": depth_range,
            "forward_flow_range": np.array([forward_flow.min(), forward_flow.max()], dtype=np.float32),
            "backward_flow_range": np.array([backward_flow.min(), backward_flow.max()], dtype=np.float32),
        },
        "background": "mujoco checker floor, gradient sky",
        "video": video,
        "segmentations": segmentations,
        "depth": depth[..., None],  # float metres; encoding rescales them into depth_range
        "forward_flow": forward_flow,  # float pixels; encoding rescales them into their range
        "backward_flow": backward_flow,
        "camera": {
            "focal_length": config.focal_length,
            "sensor_width": config.sensor_width,
            "field_of_view": config.field_of_view,
            "positions": camera_positions.astype(np.float32),
            "quaternions": camera_quaternions,
        },
        "instances": {
            "mass": np.array([model.body_mass[body] for body in body_ids], np.float32),
            "friction": np.array([0.5] * count, np.float32),
            "scale": np.array([item.scale for item in objects], np.float32),
            "color": np.array([item.colour for item in objects], np.float32).reshape(count, 3),
            "shape_label": np.array([item.shape for item in objects], np.int64),
            "positions": positions,
            "quaternions": quaternions,
            "velocities": velocities,
            "angular_velocities": angular,
            "bboxes_3d": corners,
            "image_positions": image_positions,
            "visibility": visibility,
            "bboxes": bboxes,
            "bbox_frames": bbox_frames,
        },
    }


@dataclass
class _Poses:
    """Per-frame poses of a rendered video: camera centre (s, 3) and rotation (s, 3, 3) whose
    columns are its x (right), y (up), z (backward) axes; object centres (n, s, 3), rotations
    (n, s, 3, 3); the focal length in pixels."""

    camera_centres: np.ndarray
    camera_rotations: np.ndarray
    object_centres: np.ndarray
    object_rotations: np.ndarray
    focal_pixels: float


def _flow(poses: _Poses, depth: np.ndarray, segmentations: np.ndarray, source: int, target: int) -> np.ndarray:
    """Optical flow (h, w, 2) as (delta row, delta column) in pixels from frame ``source`` to
    ``target``: each pixel's surface point moves rigidly with its object (the floor and sky stay
    put) and is projected with the target frame's camera. Zero where ``target`` is outside the
    video (MOVi's forward flow of the last frame and backward flow of the first)."""
    frames, height, width = depth.shape
    if not 0 <= target < frames:
        return np.zeros((height, width, 2), dtype=np.float32)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (columns + 0.5 - width / 2) / poses.focal_pixels
    y = (rows + 0.5 - height / 2) / poses.focal_pixels
    planar = depth[source] / np.sqrt(1.0 + x**2 + y**2)  # distance along the view axis
    in_camera = np.stack([x * planar, -y * planar, -planar], axis=-1)  # camera looks down -z, y up
    points = poses.camera_centres[source] + in_camera @ poses.camera_rotations[source].T
    for i in range(len(poses.object_centres)):
        pixels = segmentations[source] == i + 1
        local = (points[pixels] - poses.object_centres[i, source]) @ poses.object_rotations[i, source]
        points[pixels] = poses.object_centres[i, target] + local @ poses.object_rotations[i, target].T
    seen = (points - poses.camera_centres[target]) @ poses.camera_rotations[target]
    distance = np.maximum(-seen[..., 2], 1e-6)
    target_columns = seen[..., 0] / distance * poses.focal_pixels + width / 2 - 0.5
    target_rows = -seen[..., 1] / distance * poses.focal_pixels + height / 2 - 0.5
    return np.stack([target_rows - rows, target_columns - columns], axis=-1).astype(np.float32)


def shard_name(split: str, shard: int, shards: int) -> str:
    """TFDS's shard naming, which :func:`~ocrl.movi.schema.movi_variant` reads the dataset from."""
    return f"{DATASET_NAME}-{split}.tfrecord-{shard:05d}-of-{shards:05d}"


def _write_shard(path: str, seed: int, indices: list[int], config: GeneratorConfig) -> int:
    return write_movi_shard(path, (render_video(seed, index, config) for index in indices))


def generate_movi(
    out: str | os.PathLike,
    videos: int,
    config: GeneratorConfig | None = None,
    seed: int = 0,
    videos_per_shard: int = 32,
    split: str = "train",
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``videos`` generated videos as TFRecord shards into the directory ``out``; returns
    the shard paths. Shards already there (from an interrupted run) are kept: a rerun writes only
    the missing ones. ``workers`` processes render shards in parallel (default: CPU count); 0
    renders in this process, which then holds an OpenGL context (MuJoCo's renderer terminates
    the EGL display when closed, which trips any other EGL user in the process, dm_control's
    included)."""
    config = config or GeneratorConfig()
    config.check()
    if importlib.util.find_spec("mujoco") is None:
        raise OcrlError("ocrl movi generate renders with MuJoCo: pip install 'ocrl[dmc]'")
    if videos < 1 or videos_per_shard < 1:
        raise OcrlError(f"videos and videos_per_shard must be positive, got {videos}, {videos_per_shard}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OcrlError(f"{out} exists and is not a directory")
    settings = {
        "dataset": DATASET_NAME,
        "seed": seed,
        "videos": videos,
        "videos_per_shard": videos_per_shard,
        "split": split,
        **asdict(config),
    }
    settings_path = out / "generator.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise OcrlError(f"{out} holds videos generated with other settings ({settings_path}); use another directory")
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1) + "\n")  # first: a resumed run must match it
    shards = -(-videos // videos_per_shard)
    jobs = []
    for shard in range(shards):
        path = out / shard_name(split, shard, shards)
        indices = list(range(shard * videos_per_shard, min(videos, (shard + 1) * videos_per_shard)))
        jobs.append((path, indices))
    todo = [(path, indices) for path, indices in jobs if not path.exists()]
    bar = tqdm(
        total=videos,
        initial=videos - sum(len(indices) for _, indices in todo),
        unit="video",
        desc="generate",
        disable=not progress,
    )
    workers = (os.cpu_count() or 1) if workers is None else workers
    try:
        if workers == 0 or not todo:
            for path, indices in todo:
                bar.update(_write_shard(str(path), seed, indices, config))
        else:
            context = multiprocessing.get_context("spawn")  # a forked OpenGL (EGL) context deadlocks
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
                for written in pool.map(
                    _write_shard,
                    [str(path) for path, _ in todo],
                    [seed] * len(todo),
                    [indices for _, indices in todo],
                    [config] * len(todo),
                ):
                    bar.update(written)
    finally:
        bar.close()
    return [path for path, _ in jobs]

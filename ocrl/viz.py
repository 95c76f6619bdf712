"""Pictures a person would rather look at than read: frames with their instance masks, and
what a perception model makes of a video (reconstruction and slot masks over time)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ocrl.files import write_atomically


def instance_palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, id 0 black, the rest well apart in hue and stable per id."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0  # golden-ratio steps spread neighbouring ids
    hsv = np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], axis=-1)
    rgb = np.asarray(Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB"))[0]
    rgb = rgb.copy()
    rgb[0] = 0
    return rgb


def colour_masks(masks: np.ndarray) -> np.ndarray:
    """Instance ids (..., H, W) int to colours (..., H, W, 3) uint8."""
    return instance_palette(int(masks.max()) + 1)[masks]


def frame_strip(frames: np.ndarray, masks: np.ndarray | None = None, scale: int = 2) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 in one row, their coloured instance masks (T, H, W) below."""
    rows = [list(frames)] + ([list(colour_masks(masks))] if masks is not None else [])
    return grid(rows, scale=scale)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: Image.fromarray(image).save(file, format="PNG"))
    return path


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images (..., 3, H, W) in [0, 1] to uint8 (..., H, W, 3)."""
    return np.clip(np.rint(np.moveaxis(np.asarray(images, dtype=np.float32), -3, -1) * 255), 0, 255).astype(np.uint8)


def slot_colours(num_slots: int) -> np.ndarray:
    """(K, 3) uint8: slot k keeps its colour in every frame and picture."""
    return instance_palette(num_slots + 1)[1:]


def mark_position(image: np.ndarray, position: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with a slot's position code drawn in ``colour``: a
    cross at (x, y) and a circle of radius ``size`` (x, y and size in [-1, 1] image units, as in
    :class:`~ocrl.slots.SlotCodes`)."""
    marked = image.copy()
    height, width = image.shape[:2]
    x, y, size = (float(position[0]) + 1) * width / 2, (float(position[1]) + 1) * height / 2, float(position[2])
    rows, columns = np.mgrid[:height, :width] + 0.5
    distance = np.hypot(columns - x, rows - y)
    radius = max(size * width / 2, 1.0)
    ring = np.abs(distance - radius) < 0.6
    cross = ((np.abs(columns - x) < 0.6) | (np.abs(rows - y) < 0.6)) & (distance < 2.5)
    marked[ring | cross] = colour
    return marked


def depth_image(depth: np.ndarray) -> np.ndarray:
    """Depth maps (T, H, W) to grey (T, H, W, 3) uint8 over the video's own range: near light, far dark."""
    low, high = float(depth.min()), float(depth.max())
    grey = (high - depth) / max(high - low, 1e-6)
    return np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, axis=-1)


def slot_panels(
    frames: np.ndarray,
    reconstructions: np.ndarray,
    masks: np.ndarray,
    position: np.ndarray | None = None,
    presence: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> list[list[np.ndarray]]:
    """Rows of (H, W, 3) uint8 images over time: input, reconstruction, segmentation (argmax
    slot in its colour, blended over the input), the depth map if given, then each slot's mask
    times the input, with its position code marked (:func:`mark_position`) in the frames where
    it is present. A mask beyond the slots (a background module's) comes last, unmarked.

    frames uint8 (T, H, W, 3); reconstructions float (T, 3, H, W); masks float (T, M, H, W);
    position (T, K, 4) and presence (T, K) of the K <= M slots; depth (T, H, W).
    """
    recon = _to_uint8(reconstructions)
    colours = slot_colours(masks.shape[1])
    segmentation = colours[masks.argmax(axis=1)]
    overlay = (0.45 * frames + 0.55 * segmentation).astype(np.uint8)
    per_slot = (masks[..., None] * frames[:, None]).astype(np.uint8)  # (T, M, H, W, 3)
    rows = [list(frames), list(recon), list(overlay)]
    if depth is not None:
        rows.append(list(depth_image(depth)))
    for k in range(masks.shape[1]):
        row = list(per_slot[:, k])
        if position is not None and k < position.shape[1]:
            shown = presence[:, k] > 0.5 if presence is not None else np.ones(len(row), bool)
            row = [
                mark_position(image, position[t, k], colours[k]) if shown[t] else image for t, image in enumerate(row)
            ]
        rows.append(row)
    return rows


def grid(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Images (rows of equal-size (H, W, 3) uint8) on a white canvas, each scaled up ``scale`` times."""
    height, width = rows[0][0].shape[0] * scale, rows[0][0].shape[1] * scale
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top : top + height, left : left + width] = np.repeat(np.repeat(image, scale, 0), scale, 1)
    return canvas


def save_gif(images: list[np.ndarray], path: str | os.PathLike, frame_ms: int = 150) -> Path:
    """Write (H, W, 3) uint8 images as a looping GIF, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(image) for image in images]
    write_atomically(
        path,
        lambda file: pictures[0].save(
            file, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
        ),
    )
    return path


def save_perception_pictures(
    frames: np.ndarray,
    reconstructions: np.ndarray,
    masks: np.ndarray,
    prefix: str | os.PathLike,
    scale: int = 2,
    position: np.ndarray | None = None,
    presence: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """PREFIX.png: the grid of :func:`slot_panels` over time; PREFIX.gif: per frame, input |
    reconstruction | segmentation side by side. Returns both paths."""
    rows = slot_panels(frames, reconstructions, masks, position, presence, depth)
    png = save_png(grid(rows, scale=scale), f"{prefix}.png")
    gif = save_gif(
        [grid([[rows[0][t], rows[1][t], rows[2][t]]], scale=scale) for t in range(len(frames))], f"{prefix}.gif"
    )
    return png, gif


def save_video_pictures(model, frames: np.ndarray, prefix: str | os.PathLike, scale: int = 2) -> tuple[Path, Path]:
    """What a perception model makes of one video: ``frames`` uint8 (T, H, W, 3) encoded online
    (:func:`ocrl.evaluation.encode_video`), then :func:`save_perception_pictures` of the frames
    at the model's resolution, its reconstructions, slot masks, position codes and (a model
    that renders one, Loci-s) depth map."""
    from ocrl.evaluation import encode_video
    from ocrl.perception.frames import prepare_frames

    encoded = encode_video(model, frames[None])
    shown = _to_uint8(prepare_frames(frames, model.resolution, "cpu", resize=True).numpy())
    depth = encoded.get("depth_map")
    return save_perception_pictures(
        shown,
        encoded["reconstructions"][0].numpy(),
        encoded["masks"][0].numpy(),
        prefix,
        scale,
        position=encoded["position"][0].numpy(),
        presence=encoded["presence"][0].numpy(),
        depth=None if depth is None else depth[0].numpy(),
    )

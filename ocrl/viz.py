"""Pictures a person would rather look at than read: frames next to their instance masks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


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
    """Frames (T, H, W, 3) uint8 in one row, their coloured masks (T, H, W) in a second row.

    Returns (rows * H * scale + gaps, T * W * scale + gaps, 3) uint8 with 2-pixel white gaps.
    """
    rows = [list(frames)]
    if masks is not None:
        rows.append(list(colour_masks(masks)))
    gap = 2
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    canvas = np.full((len(rows) * (height + gap) - gap, len(frames) * (width + gap) - gap, 3), 255, np.uint8)
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            top, left = row * (height + gap), column * (width + gap)
            canvas[top : top + height, left : left + width] = big
    return canvas


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as handle:
        Image.fromarray(image).save(handle, format="PNG")
    os.replace(handle.name, path)
    return path

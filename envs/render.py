"""Anti-aliased sprite rendering in numpy, with exact instance masks and depth.

A sprite is drawn from its signed distance: coverage = clip(0.5 - distance / pixel, 0, 1), a
one-pixel linear ramp across the edge. Sprites are composited front to back; each pixel's
instance id is the sprite whose colour contributes most to it (the background's share counts
as id 0), so a mask pixel always belongs to the object that is seen there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star")

_SQRT3_2 = np.sqrt(3.0) / 2.0


def _polygon_distance(dx: np.ndarray, dy: np.ndarray, normals: np.ndarray, inradius: float) -> np.ndarray:
    """Signed distance to a convex polygon given by its edge normals (exact inside, a bound outside)."""
    return np.max(dx[..., None] * normals[:, 0] + dy[..., None] * normals[:, 1], axis=-1) - inradius


def _normals(angles_deg) -> np.ndarray:
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


# y points down in image coordinates, so the triangle's base normal is +y and it points up.
_TRIANGLE = _normals([90, 210, 330])
_HEXAGON = _normals([0, 60, 120, 180, 240, 300])


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (negative inside) from offsets (dx, dy) to a shape of the given radius.

    ``radius`` is the circumradius for polygons and the half side for squares; all shapes of
    one radius have roughly the same area except the star.
    """
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        half = radius * 0.8
        qx, qy = np.abs(dx) - half, np.abs(dy) - half
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return outside + np.minimum(np.maximum(qx, qy), 0.0)
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - radius) / np.sqrt(2.0)
    if shape == "triangle":
        # centroid at the origin: the inradius of an equilateral triangle is half its circumradius
        return _polygon_distance(dx, dy - 0.15 * radius, _TRIANGLE, 0.5 * radius)
    if shape == "hexagon":
        return _polygon_distance(dx, dy, _HEXAGON, _SQRT3_2 * radius)
    if shape == "star":
        # union of two triangles (a hexagram)
        up = _polygon_distance(dx, dy, _TRIANGLE, 0.5 * radius)
        down = _polygon_distance(dx, -dy, _TRIANGLE, 0.5 * radius)
        return np.minimum(up, down)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@dataclass
class Sprite:
    """One object: centre (x, y) and radius in world units [0, 1], RGB colour in [0, 1], depth in (0, 1)."""

    x: float
    y: float
    size: float
    shape: str
    colour: np.ndarray
    depth: float


def render_sprites(
    sprites: list[Sprite], height: int, width: int, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render sprites into (image uint8 (H, W, 3), masks int32 (H, W), depth float32 (H, W)).

    ``masks`` holds i + 1 where sprite i contributes most; the background has depth 1.
    """
    pixel = 1.0 / min(height, width)
    colour_sum = np.zeros((height, width, 3), dtype=np.float32)
    transmittance = np.ones((height, width), dtype=np.float32)
    best_share = np.zeros((height, width), dtype=np.float32)
    masks = np.zeros((height, width), dtype=np.int32)
    for index in np.argsort([sprite.depth for sprite in sprites], kind="stable"):
        sprite = sprites[index]
        reach = sprite.size + pixel
        top, bottom = max(int((sprite.y - reach) * height), 0), min(int(np.ceil((sprite.y + reach) * height)), height)
        left, right = max(int((sprite.x - reach) * width), 0), min(int(np.ceil((sprite.x + reach) * width)), width)
        if top >= bottom or left >= right:
            continue
        ys = (np.arange(top, bottom, dtype=np.float32) + 0.5) / height - sprite.y
        xs = (np.arange(left, right, dtype=np.float32) + 0.5) / width - sprite.x
        distance = signed_distance(sprite.shape, xs[None, :], ys[:, None], sprite.size)
        coverage = np.clip(0.5 - distance / pixel, 0.0, 1.0).astype(np.float32)
        window = (slice(top, bottom), slice(left, right))
        share = coverage * transmittance[window]
        colour_sum[window] += share[..., None] * np.asarray(sprite.colour, dtype=np.float32)
        transmittance[window] *= 1.0 - coverage
        wins = share > best_share[window]
        best_share[window] = np.where(wins, share, best_share[window])
        masks[window] = np.where(wins, index + 1, masks[window])
    colour_sum += transmittance[..., None] * np.asarray(background, dtype=np.float32)
    masks[transmittance >= best_share] = 0
    depth_of_id = np.concatenate([[1.0], [sprite.depth for sprite in sprites]]).astype(np.float32)
    image = np.clip(np.rint(colour_sum * 255.0), 0, 255).astype(np.uint8)
    return image, masks, depth_of_id[masks]

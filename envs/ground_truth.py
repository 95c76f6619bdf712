"""One ground-truth convention for every env of ocrl (built-in tasks and adapters).

Every env that knows its objects puts a dict under ``info["ground_truth"]`` at ``reset`` and at
every ``step``, describing the frame that the returned observation shows:

==================  ====================  =====================================================
key                 shape, dtype          meaning
==================  ====================  =====================================================
``masks``           (H, W) int32          instance id per pixel; 0 = background, i >= 1 is the
                                          object in row i - 1 of the ``object_*`` arrays
``depth``           (H, W) float32        distance of the surface seen at each pixel; larger is
                                          farther. Built-in 2-D tasks use a layer depth in
                                          (0, 1) with background 1; MuJoCo gives metres.
``object_position`` (N, 2) float32        object centre x, y in [-1, 1] image coordinates
                                          (x right, y down, image centre 0), as slot codes use
``object_size``     (N,) float32          object radius in the same units (half-width / H)
``object_depth``    (N,) float32          depth of the object, same units as ``depth``
``object_colour``   (N, 3) float32        RGB in [0, 1]
``object_shape``    tuple of N str        shape or type name (``"circle"``, ``"key"``, a geom name)
``object_box``      (N, 4) float32        optional: x_min, y_min, x_max, y_max of the object's
                                          pixels in [-1, 1] units, NaN where it has none
                                          (MOVi stores give it; conditional slot queries use it)
==================  ====================  =====================================================

N is the number of objects the env tracks, visible or not; an object with no pixel in
``masks`` is occluded or out of view. Masks and depth have the resolution of the frame.
Gymnasium 1.x vector envs cannot stack object arrays whose N differs between sub-envs;
``ocrl collect`` therefore passes each sub-env's ground truth through its vector env whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GROUND_TRUTH_KEY = "ground_truth"
FRAME_KEYS = ("masks", "depth")
OBJECT_KEYS = ("object_position", "object_size", "object_depth", "object_colour", "object_shape", "object_box")


def make_ground_truth(
    masks: np.ndarray,
    depth: np.ndarray,
    position: np.ndarray,
    size: np.ndarray,
    object_depth: np.ndarray,
    colour: np.ndarray,
    shape: Sequence[str],
) -> dict[str, np.ndarray]:
    """Build a ground-truth dict with the dtypes of the convention, checking the shapes agree."""
    masks = np.asarray(masks, dtype=np.int32)
    depth = np.asarray(depth, dtype=np.float32)
    n = len(shape)
    if masks.ndim != 2 or depth.shape != masks.shape:
        raise ValueError(f"masks {masks.shape} and depth {depth.shape} must be the same (H, W)")
    if masks.size and masks.max() > n:
        raise ValueError(f"mask id {masks.max()} but only {n} objects")
    return {
        "masks": masks,
        "depth": depth,
        "object_position": np.asarray(position, dtype=np.float32).reshape(n, 2),
        "object_size": np.asarray(size, dtype=np.float32).reshape(n),
        "object_depth": np.asarray(object_depth, dtype=np.float32).reshape(n),
        "object_colour": np.asarray(colour, dtype=np.float32).reshape(n, 3),
        # a tuple, not a str array: gymnasium's env checker compares info arrays numerically
        "object_shape": tuple(str(name) for name in shape),
    }


def pixel_to_unit(x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel coordinates (x to the right, y down, pixel centres at +0.5) to [-1, 1] image units."""
    return np.stack([2.0 * np.asarray(x) / width - 1.0, 2.0 * np.asarray(y) / height - 1.0], axis=-1)

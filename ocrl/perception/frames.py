"""Where a frame becomes a model input: the one conversion and resize of frames to (.., 3, R, R).

Envs render uint8 (H, W, 3); models take float (3, R, R) in [0, 1] at their resolution. Training,
evaluation, the online encoder (:mod:`ocrl.perception.encoder`) and the models' own checks all
go through :func:`prepare_frames`, so a frame looks the same to a model wherever it comes from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def resize_images(images: torch.Tensor, resolution: int, mode: str = "bilinear") -> torch.Tensor:
    """Float (*leading, C, H, W) to (*leading, C, R, R): antialiased bilinear for frames (clamped
    to [0, 1] again, as antialiasing overshoots), ``"nearest"`` for maps such as depth."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    flat = images.flatten(0, -4).float()
    if mode == "bilinear":
        resized = F.interpolate(flat, size=(resolution, resolution), mode="bilinear", antialias=True).clamp_(0, 1)
    else:
        resized = F.interpolate(flat, size=(resolution, resolution), mode=mode)
    return resized.unflatten(0, images.shape[:-3])


def prepare_frames(
    frames: Any, resolution: int, device: torch.device | str, leading_dims: int = 1, resize: bool = False
) -> torch.Tensor:
    """Check and convert frames to float32 (*leading, 3, H, W) in [0, 1] on ``device``.

    Accepts uint8 (*leading, H, W, 3), as envs render them, or float (*leading, 3, H, W) in
    [0, 1]; numpy arrays or tensors. Raises ValueError naming what is wrong otherwise.
    ``resize``: frames of another size are resized to ``resolution`` (:func:`resize_images`);
    without it they are an error (a model's ``step`` and ``forward`` take frames at its resolution).
    """
    leading = "B" if leading_dims == 1 else "B, T"
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    shape = tuple(frames.shape)
    if frames.dtype == torch.uint8:
        if frames.dim() != leading_dims + 3 or shape[-1] != 3:
            hint = (
                " (channels-first? uint8 frames are channels-last, as envs render them)"
                if frames.dim() == leading_dims + 3 and shape[leading_dims] == 3
                else ""
            )
            raise ValueError(f"uint8 frames must be ({leading}, H, W, 3) RGB, got shape {shape}{hint}")
        frames = frames.to(device, non_blocking=True).movedim(-1, -3).float().div_(255)
    elif frames.is_floating_point():
        if frames.dim() != leading_dims + 3 or shape[leading_dims] != 3:
            hint = (
                " (channels-last? float frames are channels-first)"
                if frames.dim() == leading_dims + 3 and shape[-1] == 3
                else ""
            )
            raise ValueError(f"float frames must be ({leading}, 3, H, W) RGB in [0, 1], got shape {shape}{hint}")
        frames = frames.to(device, torch.float32, non_blocking=True)
        # one reduction covers NaN (comparisons with NaN are false), inf and the range
        if not bool(((frames >= 0) & (frames <= 1)).all()):
            if bool(torch.isnan(frames).any()):
                raise ValueError("frames contain NaN")
            raise ValueError(
                f"float frames must lie in [0, 1], got values in [{frames.min().item():.4g}, {frames.max().item():.4g}] (divide uint8 by 255, or pass uint8)"
            )
    else:
        raise ValueError(
            f"frames must be uint8 ({leading}, H, W, 3) or float ({leading}, 3, H, W), got dtype {frames.dtype}"
        )
    if resize:
        return resize_images(frames, resolution)
    if frames.shape[-2:] != (resolution, resolution):
        raise ValueError(
            f"the model takes {resolution}x{resolution} frames, got {frames.shape[-2]}x{frames.shape[-1]} (height x width); resize them first"
        )
    return frames

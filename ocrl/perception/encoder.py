"""The online encoder: a perception model plus one recurrent state per stream (sub-env).

:class:`SlotEncoder` is what the wrappers (:mod:`ocrl.wrappers`), the world models' code cache
and agents use to turn env frames into slot codes step by step: frames go through
:func:`ocrl.perception.frames.prepare_frames`, then ``model.step`` with per-stream first frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ocrl.device import default_device, keep_freed_memory
from ocrl.perception.frames import prepare_frames
from ocrl.perception.model import put_streams, take_streams
from ocrl.slots import CODE_KEYS, SLOT_CODE_KEYS, observation_space

DEFAULT_KEYS = CODE_KEYS
# Frames are resized to the model's resolution; beyond this factor a frame is too small to hold
# what the model was trained to see, and the codes would be made up.
MAX_UPSCALE = 4.0


def resolve_model(model: Any = None, device: torch.device | str | None = None) -> torch.nn.Module:
    """A perception model in eval mode: ``None`` (the shipped default), a shipped name, a
    checkpoint directory, or a model instance (moved to ``device`` when given)."""
    import ocrl

    if isinstance(model, torch.nn.Module):
        return (model.to(device) if device is not None else model).eval()
    if device is None:
        device = default_device()
    return ocrl.load_perception(ocrl.DEFAULT_PERCEPTION if model is None else model, device=device)


class SlotEncoder:
    """Encodes frames of ``num_streams`` streams (sub-envs) into slot-code arrays, one batch at a time.

    Args:
        model: see :func:`resolve_model`.
        num_streams: how many streams the recurrent state holds.
        keys: slot-code keys to return (:data:`ocrl.slots.SLOT_CODE_KEYS`); ``masks`` and
            ``depth_map`` make the model decode (slower).
        device: where the model runs (default: cuda when available).
    """

    def __init__(
        self,
        model: Any = None,
        num_streams: int = 1,
        keys: Sequence[str] = DEFAULT_KEYS,
        device: torch.device | str | None = None,
    ):
        keys = tuple(keys)
        unknown = [key for key in keys if key not in SLOT_CODE_KEYS]
        if unknown or not keys:
            raise ValueError(f"keys must be a non-empty subset of {SLOT_CODE_KEYS}, got {keys}")
        self.model = resolve_model(model, device)
        keep_freed_memory()  # the wrappers step the model for as long as an agent trains
        self.keys = keys
        self.return_masks = "masks" in keys or "depth_map" in keys
        if "depth_map" in keys and not bool(self.model.depth_supervised):
            raise ValueError("keys ask for depth_map but this perception model was trained without depth")
        self.num_streams = num_streams
        self.state = self.model.init_state(num_streams)

    @property
    def resolution(self) -> int:
        return self.model.resolution

    def observation_space(self) -> spaces.Dict:
        """The ``Dict`` space of one stream's codes, holding :attr:`keys` in that order."""
        size = (self.resolution, self.resolution)
        full = observation_space(self.model.num_slots, self.model.slot_dim, mask_size=size, depth_map=True)
        return spaces.Dict({key: full[key] for key in self.keys})

    def check_frame_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless frames of ``shape`` (H, W, 3) can be encoded."""
        if len(shape) != 3 or shape[-1] != 3:
            raise ValueError(f"frames must be RGB (H, W, 3), got shape {tuple(shape)}")
        height, width = shape[:2]
        if min(height, width) * MAX_UPSCALE < self.resolution:
            raise ValueError(
                f"frames of {height}x{width} are too small for a {self.resolution}x{self.resolution} model (more than {MAX_UPSCALE:g}x upscaling); render larger frames"
            )

    def resize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, H, W, 3) in [0, 1] -> float (B, 3, R, R) in [0, 1] on the model's device."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be (B, H, W, 3), got shape {frames.shape}")
        self.check_frame_shape(frames.shape[1:])
        if np.issubdtype(frames.dtype, np.floating):
            frames = np.moveaxis(frames, -1, 1)  # env frames are channels-last whatever their dtype
        elif frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
        return prepare_frames(frames, self.resolution, self.model.device, resize=True)

    def encode(
        self, frames: np.ndarray, is_first: Any = None, streams: Sequence[int] | None = None, advance: bool = True
    ) -> dict[str, np.ndarray]:
        """Encode one frame per stream; returns float32 arrays (B, ...) keyed by :attr:`keys`.

        Args:
            frames: (B, H, W, 3), one frame for each of ``streams``.
            is_first: (B,) bool: streams whose episode begins with this frame (streams never
                encoded count as first anyway).
            streams: which streams the frames belong to (default: all, in order).
            advance: update those streams' state; False encodes a frame that ends an
                episode (SB3's terminal observation) without disturbing the state of the next.
        """
        index = None if streams is None else torch.as_tensor(np.asarray(streams), dtype=torch.long)
        state = self.state if index is None else take_streams(self.state, index)
        codes, new_state = self.model.step(self.resize(frames), state, is_first, return_masks=self.return_masks)
        if advance:
            self.state = new_state if index is None else put_streams(self.state, index, new_state)
        arrays = codes.to_numpy()
        return {key: arrays[key] for key in self.keys}

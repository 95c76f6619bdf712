"""Slot codes: the one schema through which perception talks to wrappers, agents and world models.

Per frame and per slot ``k`` of ``K`` (leading batch dims ``*batch`` in front of each):

=============  ======================  =========================================================
field          shape                   meaning
=============  ======================  =========================================================
``slots``      (*batch, K, D) float32  slot vector
``position``   (*batch, K, 4) float32  x, y, size, depth (see below)
``presence``   (*batch, K) float32     in [0, 1]: how much the slot holds something
``masks``      (*batch, K, h, w)       optional soft masks, sum to 1 over K at each pixel
``depth_map``  (*batch, h, w)          optional scene depth, relative (near 0, far 1)
=============  ======================  =========================================================

Position convention (:data:`POSITION_FIELDS`):

- ``x``, ``y`` in [-1, 1]: image centre 0, x to the right, y down; pixel ``(row i, column j)``
  of an ``h x w`` map sits at ``x = (2 j + 1) / w - 1``, ``y = (2 i + 1) / h - 1``.
- ``size`` >= 0: the standard deviation of the slot's mask in the same units, averaged over
  the two axes, ``sqrt((var_x + var_y) / 2)``; a disc of radius ``r`` has size ``r / 2``.
- ``depth``: relative depth of what the slot holds, near 0, far 1 (mask-weighted mean of a
  depth map; :data:`UNKNOWN_DEPTH` when the model has no depth).

Models that do not predict positions natively derive them with :func:`codes_from_masks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

POSITION_FIELDS = ("x", "y", "size", "depth")
SLOT_CODE_KEYS = ("slots", "position", "presence", "masks", "depth_map")
# the codes every model gives (masks and depth maps need decoding): what agents and world models see
CODE_KEYS = SLOT_CODE_KEYS[:3]
# Depth reported when nothing is known about it: the middle of the relative range.
UNKNOWN_DEPTH = 0.5
# Area (as a fraction of the image) that a slot must win for presence 1 - 1/e; 0.001 is about
# 4 pixels at 64x64, small enough that the smallest sprites of the built-in tasks read as present.
PRESENCE_AREA = 1e-3


@dataclass
class SlotCodes:
    """Slot codes of a batch of frames; tensors share their leading batch dims (see module doc)."""

    slots: torch.Tensor
    position: torch.Tensor
    presence: torch.Tensor
    masks: torch.Tensor | None = None
    depth_map: torch.Tensor | None = None

    def __post_init__(self) -> None:
        batch_and_slots = tuple(self.slots.shape[:-1])
        if self.position.shape != (*batch_and_slots, 4):
            raise ValueError(
                f"position {tuple(self.position.shape)} must be {(*batch_and_slots, 4)} for slots {tuple(self.slots.shape)}"
            )
        if tuple(self.presence.shape) != batch_and_slots:
            raise ValueError(
                f"presence {tuple(self.presence.shape)} must be {batch_and_slots} for slots {tuple(self.slots.shape)}"
            )
        if self.masks is not None and tuple(self.masks.shape[:-2]) != batch_and_slots:
            raise ValueError(f"masks {tuple(self.masks.shape)} must be {(*batch_and_slots, 'h', 'w')}")
        if self.depth_map is not None and tuple(self.depth_map.shape[:-2]) != batch_and_slots[:-1]:
            raise ValueError(f"depth_map {tuple(self.depth_map.shape)} must be {(*batch_and_slots[:-1], 'h', 'w')}")

    @property
    def num_slots(self) -> int:
        return self.slots.shape[-2]

    @property
    def slot_dim(self) -> int:
        return self.slots.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.slots.shape[:-2])

    def _map(self, function) -> SlotCodes:
        return SlotCodes(
            **{
                field.name: None if (value := getattr(self, field.name)) is None else function(value)
                for field in fields(self)
            }
        )

    @classmethod
    def stack(cls, codes: Sequence[SlotCodes], dim: int = 1) -> SlotCodes:
        """Codes of single steps, e.g. (B, ...) each, stacked into (B, T, ...) along batch dim ``dim``."""
        return cls._join(torch.stack, codes, dim)

    @classmethod
    def cat(cls, codes: Sequence[SlotCodes], dim: int = 1) -> SlotCodes:
        """Codes concatenated along batch dim ``dim``, e.g. (B, T1, ...) and (B, T2, ...) to (B, T1 + T2, ...)."""
        return cls._join(torch.cat, codes, dim)

    @classmethod
    def _join(cls, join, codes: Sequence[SlotCodes], dim: int) -> SlotCodes:
        # optional fields only when every part has them
        names = [field.name for field in fields(cls) if all(getattr(part, field.name) is not None for part in codes)]
        return cls(**{name: join([getattr(part, name) for part in codes], dim) for name in names})

    def detach(self) -> SlotCodes:
        return self._map(torch.Tensor.detach)

    def to(self, *args, **kwargs) -> SlotCodes:
        return self._map(lambda tensor: tensor.to(*args, **kwargs))

    def __getitem__(self, index) -> SlotCodes:
        """Index the batch dims, e.g. ``codes[3]`` or ``codes[:, -1]`` for (B, T, ...) codes."""
        index = index if isinstance(index, tuple) else (index,)
        if any(part is Ellipsis for part in index) or len(index) > len(self.batch_shape):
            raise IndexError(f"index {index} must address only the batch dims {self.batch_shape}")
        return self._map(lambda tensor: tensor[index])

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Float32 numpy arrays keyed by :data:`SLOT_CODE_KEYS` (optional fields only when set),
        as a gymnasium ``Dict`` observation holds them."""
        return {
            field.name: value.detach().to("cpu", torch.float32).numpy()
            for field in fields(self)
            if (value := getattr(self, field.name)) is not None
        }

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, Any], device: torch.device | str | None = None) -> SlotCodes:
        """Inverse of :meth:`to_numpy` (extra keys are ignored)."""
        return cls(
            **{
                key: torch.as_tensor(np.asarray(arrays[key]), dtype=torch.float32, device=device)
                for key in SLOT_CODE_KEYS
                if arrays.get(key) is not None
            }
        )


def observation_space(num_slots: int, slot_dim: int, mask_size: tuple[int, int] | None = None, depth_map: bool = False):
    """The gymnasium ``Dict`` space of one frame's codes (no batch dims).

    ``mask_size`` (h, w) adds ``masks`` (K, h, w); ``depth_map=True`` adds ``depth_map`` (h, w)
    and needs ``mask_size``.
    """
    from gymnasium import spaces  # only wrappers need gymnasium; keep the schema importable without it

    inf = np.float32(np.inf)
    low = np.array([-1.0, -1.0, 0.0, 0.0], np.float32)
    high = np.array([1.0, 1.0, inf, 1.0], np.float32)
    items = {
        "slots": spaces.Box(-inf, inf, (num_slots, slot_dim), np.float32),
        "position": spaces.Box(
            np.broadcast_to(low, (num_slots, 4)), np.broadcast_to(high, (num_slots, 4)), dtype=np.float32
        ),
        "presence": spaces.Box(0.0, 1.0, (num_slots,), np.float32),
    }
    if mask_size is not None:
        items["masks"] = spaces.Box(0.0, 1.0, (num_slots, *mask_size), np.float32)
    if depth_map:
        if mask_size is None:
            raise ValueError("depth_map=True needs mask_size (h, w)")
        items["depth_map"] = spaces.Box(0.0, 1.0, tuple(mask_size), np.float32)
    return spaces.Dict(items)


def pixel_coordinates(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates x (width,) and y (height,) in [-1, 1], x right, y down."""
    x = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    y = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    return x, y


def codes_from_masks(
    masks: torch.Tensor, depth: torch.Tensor | None = None, presence_area: float = PRESENCE_AREA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position (x, y, size, depth) and presence of each slot from its soft mask.

    Args:
        masks: (*batch, K, h, w) soft masks or attention maps, non-negative; usually they sum to
            1 over K at each pixel (alpha masks, Slot Attention's softmax over slots).
        depth: (*batch, K, h, w) per-slot depth, (*batch, h, w) scene depth, or None; relative
            (near 0, far 1).
        presence_area: area, as a fraction of the image, that gives presence 1 - 1/e.

    Returns:
        position (*batch, K, 4) and presence (*batch, K), float32.

    A slot *wins* a pixel where its mask is the largest of all slots. Moments use the mask
    restricted to the pixels the slot wins, ``weight = mask * (won + 1e-3)``: soft maps (attention
    especially) spread a little mass over the whole image, which would otherwise pull every
    centre toward the image centre; the small leak keeps positions defined (a soft centroid) for
    slots that win nothing. Presence is

        presence_k = 1 - exp(-W_k / presence_area),  W_k = mean over pixels of mask_k * won_k,

    so a slot that holds an object (wins its pixels with mass near 1) gets presence near 1 once
    the object covers a few ``presence_area``, and an empty slot, which wins no pixel, gets 0.
    Computed in float32 whatever the input dtype (sums over h*w pixels lose precision in half).
    """
    masks = masks.float()
    height, width = masks.shape[-2:]
    x, y = pixel_coordinates(height, width, masks.device)
    won = (masks == masks.amax(dim=-3, keepdim=True)).float()
    weights = masks * (won + 1e-3)
    total = weights.sum(dim=(-2, -1)).clamp_min(1e-12)
    # marginals make the moments two small reductions instead of full (h, w) products
    column_mass, row_mass = weights.sum(dim=-2), weights.sum(dim=-1)
    mean_x = (column_mass * x).sum(-1) / total
    mean_y = (row_mass * y).sum(-1) / total
    var_x = (column_mass * x.square()).sum(-1) / total - mean_x.square()
    var_y = (row_mass * y.square()).sum(-1) / total - mean_y.square()
    size = ((var_x + var_y).clamp_min(0) / 2).sqrt()
    if depth is None:
        slot_depth = torch.full_like(mean_x, UNKNOWN_DEPTH)
    else:
        depth = depth.float()
        if depth.dim() == masks.dim() - 1:
            depth = depth.unsqueeze(-3)
        slot_depth = (weights * depth).sum(dim=(-2, -1)) / total
    presence = 1 - torch.exp(-(masks * won).mean(dim=(-2, -1)) / presence_area)
    return torch.stack([mean_x, mean_y, size, slot_depth], dim=-1), presence

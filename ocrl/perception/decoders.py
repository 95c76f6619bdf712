"""Decoders: slots (B, K, D) to a reconstruction composed from per-slot images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ocrl.perception.config import DecoderConfig
from ocrl.perception.layers import MLP, coordinate_grid


@dataclass
class DecoderOutput:
    """reconstruction (B, 3, H, W) in [0, 1] units; masks (B, K, H, W), a softmax over slots;
    slot_depth (B, K) and depth_map (B, H, W), relative depth (near 0, far 1), or None without a
    depth probe. Both come from the probe and are not clamped; clamp them to [0, 1] to report."""

    reconstruction: torch.Tensor
    masks: torch.Tensor
    slot_depth: torch.Tensor | None
    depth_map: torch.Tensor | None


class SpatialBroadcastDecoder(nn.Module):
    """Spatial broadcast decoder (Watters et al. 2019, as used by Slot Attention).

    Each slot is broadcast to a ``broadcast_size`` grid with a learned positional embedding
    (implemented as ``Linear(slot) + Linear(coordinates)``, equal to a 1x1 convolution of the
    broadcast slot concatenated with coordinates, without materialising the concatenation),
    then convolutions (the last ``upsamples`` transposed, each doubling the grid) give per-slot
    RGB and an alpha logit. The maps are resized bilinearly to ``resolution``; alpha is a softmax
    over slots and composes the image.

    With ``predict_depth``, ``depth_readout`` (a small MLP) reads each slot's relative depth; the
    depth map is the masks' mixture of it. The model trains it as a probe on detached slots
    (see :meth:`ocrl.perception.VideoSlotModel.forward`): depth supervision from the start of
    training pulled the slots towards the far background before they had found any object. Online
    stepping gets per-slot depth from it without decoding.
    """

    def __init__(
        self,
        slot_dim: int,
        resolution: int,
        broadcast_size: int = 16,
        hidden_channels: int = 32,
        num_layers: int = 3,
        upsamples: int = 0,
        kernel_size: int = 3,
        predict_depth: bool = True,
    ):
        super().__init__()
        if not 0 <= upsamples <= num_layers:
            raise ValueError(f"upsamples must be in 0..num_layers ({num_layers}), got {upsamples}")
        self.resolution = resolution
        self.broadcast_size = broadcast_size
        self.predict_depth = predict_depth
        self.slot_projection = nn.Linear(slot_dim, hidden_channels)
        self.position_embedding = nn.Linear(2, hidden_channels)
        self.register_buffer("grid", coordinate_grid(broadcast_size, broadcast_size), persistent=False)
        layers: list[nn.Module] = []
        for index in range(num_layers):
            if index < num_layers - upsamples:
                layers.append(nn.Conv2d(hidden_channels, hidden_channels, kernel_size, 1, kernel_size // 2))
            else:
                layers.append(nn.ConvTranspose2d(hidden_channels, hidden_channels, 4, 2, 1))
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        self.head = nn.Conv2d(hidden_channels, 4, 1)
        self.depth_readout = MLP(slot_dim, hidden_channels, 1) if predict_depth else None

    def forward(self, slots: torch.Tensor) -> DecoderOutput:
        """slots (B, K, D) -> :class:`DecoderOutput` at ``resolution``."""
        batch, num_slots = slots.shape[:2]
        positions = rearrange(self.position_embedding(self.grid), "h w c -> c h w")
        hidden = rearrange(self.slot_projection(slots), "b k c -> (b k) c 1 1") + positions
        output = self.head(self.layers(torch.relu(hidden)))
        if output.shape[-1] != self.resolution:
            # resize logits, not masks: the softmax after resizing draws edges inside grid cells
            output = F.interpolate(
                output, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False
            )
        output = rearrange(output, "(b k) c h w -> b k c h w", b=batch, k=num_slots)
        masks = output[:, :, 3].float().softmax(dim=1)
        reconstruction = (masks.unsqueeze(2) * output[:, :, :3].float()).sum(dim=1)
        slot_depth = depth_map = None
        if self.predict_depth:
            slot_depth = self.read_depth(slots)
            depth_map = torch.einsum("bkhw,bk->bhw", masks, slot_depth)
        return DecoderOutput(reconstruction, masks, slot_depth, depth_map)

    def read_depth(self, slots: torch.Tensor) -> torch.Tensor | None:
        """slots (B, K, D) -> per-slot relative depth (B, K) from the probe, or None."""
        if self.depth_readout is None:
            return None
        return self.depth_readout(slots).squeeze(-1).float()


def build_decoder(config: DecoderConfig, slot_dim: int, resolution: int) -> SpatialBroadcastDecoder:
    if config.kind != "spatial_broadcast":
        raise ValueError(f"unknown decoder kind {config.kind!r}; known: 'spatial_broadcast'")
    return SpatialBroadcastDecoder(
        slot_dim,
        resolution,
        config.broadcast_size,
        config.hidden_channels,
        config.num_layers,
        config.upsamples,
        config.kernel_size,
        config.predict_depth,
    )

"""The cascaded decoder of Loci-s (paper Sec. 3.3, Fig. 3, Table 6) and the depth-priority
composition of slots with the background.

Each slot is decoded on its own: the **mask decoder** turns the mask Gestalt code, modulated by
a Gaussian at the slot's position, into the slot's unoccluded object mask; the **depth
decoder** turns the depth Gestalt code, multiplied by the (max-pooled) mask, into a depth map
around the slot's priority; the **RGB decoder** does the same with the RGB Gestalt code and
also sees the depth. Each decoder works on a grid (resolution / patch) and finishes with a
per-pixel head at full resolution that sees the upsampled grid features and the coordinates
relative to the slot, so edges are not blocky.

:func:`compose` puts the slots and the background together by depth priority.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.perception.loci.config import LociDecoderConfig
from ocrl.perception.loci.layers import ConvNeXtBlock, gaussian_maps, relative_axes, relative_coordinates

# logit standing in for "no mask at all" for unoccupied slots (finite, so a softmax over
# all-unoccupied slots stays defined)
EMPTY_LOGIT = -1e4
# full-resolution pixels decoded at once on the CPU (24 slots at 64x64; see CascadedDecoder._in_chunks)
CPU_CHUNK_PIXELS = 24 * 64 * 64


@dataclass
class SlotImages:
    """Per-slot decodings: mask_logits (B, K, H, W) of the unoccluded object mask, depth
    (B, K, H, W) relative (near 0, far 1), rgb (B, K, 3, H, W) in [0, 1] (None where not decoded)."""

    mask_logits: torch.Tensor
    depth: torch.Tensor
    rgb: torch.Tensor | None


@dataclass
class Composition:
    """Slots composed with the background: weights (B, K, H, W) each slot's visible mask,
    background (B, H, W) the background's; they sum to 1 at every pixel. rgb (B, 3, H, W) (None
    when the slots' RGB was not decoded) and depth (B, H, W) the composed frame and depth map.
    uncovered (B, H, W): where no slot's own object mask reaches, ``prod_k (1 - m_k)`` (what slot
    assignment looks for new objects in)."""

    weights: torch.Tensor
    background: torch.Tensor
    rgb: torch.Tensor | None
    depth: torch.Tensor
    uncovered: torch.Tensor


def compose(
    images: SlotImages,
    occupancy: torch.Tensor,
    background_rgb: torch.Tensor,
    background_depth: torch.Tensor,
    temperature: float,
    foreground: torch.Tensor | None = None,
) -> Composition:
    """Depth-priority composition of K slots over the background.

    occupancy (B, K) in {0, 1}; background_rgb (B, 3, H, W); background_depth (B, 1, H, W).
    A pixel is background with the probability that no slot's object mask covers it,
    ``prod_k (1 - m_k)``, or, given ``foreground`` (B, 1, H, W) (the uncertainty map), with
    ``1 - foreground`` where any slot is occupied. The rest is shared among the slots by a
    softmax of ``log m_k - d_k / temperature``, so where masks overlap the nearest slot wins
    (exactly, as the temperature goes to 0) and the weights of slots and background sum to 1.
    Unoccupied slots get no weight. Computed in float32 from log-sigmoids (stable for large logits).
    """
    empty = (occupancy <= 0)[..., None, None]
    logits = images.mask_logits.float()
    log_mask = F.logsigmoid(logits).masked_fill(empty, EMPTY_LOGIT)
    log_free = F.logsigmoid(-logits).masked_fill(empty, 0.0)
    log_background = log_free.sum(dim=1)
    share = torch.softmax(log_mask - images.depth.float() / temperature, dim=1)
    if foreground is None:
        weights = share * (-torch.expm1(log_background))[:, None]
    else:
        # all-unoccupied: the softmax is uniform over the empty slots; they get nothing
        weights = share * (~empty).float() * foreground.float()
    background = 1 - weights.sum(dim=1)
    rgb = None if images.rgb is None else composed_rgb(weights, background, images.rgb, background_rgb)
    depth = (weights * images.depth.float()).sum(dim=1) + background * background_depth[:, 0].float()
    return Composition(weights, background, rgb, depth, log_background.exp())


def composed_rgb(
    weights: torch.Tensor, background: torch.Tensor, rgb: torch.Tensor, background_rgb: torch.Tensor
) -> torch.Tensor:
    """The composed frame (B, 3, H, W) from the visible masks (B, K, H, W), the background mask
    (B, H, W), the slots' RGB (B, K, 3, H, W) and the background's (B, 3, H, W)."""
    return (weights[:, :, None] * rgb.float()).sum(dim=1) + background[:, None] * background_rgb.float()


class PixelHead(nn.Module):
    """Grid features (N, C, g, g) -> (N, out, size, size): a per-pixel MLP on the upsampled
    features, optional maps (N, M, size, size) and the coordinates relative to the slot.

    Computed without building its input: the MLP's first layer is linear and bilinear
    upsampling is a convex combination, so the features' part of that layer runs on the grid
    before upsampling, the maps' part is a small matmul, and the coordinates' part is a sum of
    a row and a column term (x and y relative coordinates depend on one axis each). Same result
    as concatenating [upsampled features, maps, relative coordinates] (tested); the mask
    decoder ran 2.4-2.8x faster so on dev.
    """

    def __init__(self, channels: int, head: int, extra: int, out: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, head, 1)
        # input: [upsampled features (head), maps (extra - 2), relative x and y (2)]
        self.mlp = nn.Sequential(nn.Conv2d(head + extra, head, 1), nn.SiLU(), nn.Conv2d(head, out, 1))

    def forward(
        self, grid: torch.Tensor, size: int, position: torch.Tensor, maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        first = self.mlp[0]
        weight = first.weight[:, :, 0, 0]
        head = self.reduce.out_channels
        on_features, on_maps, on_xy = weight[:, :head], weight[:, head:-2], weight[:, -2:]
        grid_weight = (on_features @ self.reduce.weight[:, :, 0, 0])[..., None, None]
        grid_bias = on_features @ self.reduce.bias + first.bias
        # channels-last: bilinear upsampling and the 1x1 convolutions of many small maps run
        # several times faster on the CPU than in NCHW (where upsampling copies its output)
        grid = grid.contiguous(memory_format=torch.channels_last)
        hidden = F.interpolate(
            F.conv2d(grid, grid_weight, grid_bias), size=(size, size), mode="bilinear", align_corners=False
        )
        pixels = hidden.permute(0, 2, 3, 1)  # (N, size, size, head) view: the adds below write into hidden
        relative_x, relative_y = relative_axes(position, size)
        pixels.add_(relative_x[:, None, :, None] * on_xy[:, 0]).add_(relative_y[:, :, None, None] * on_xy[:, 1])
        if maps is not None:
            pixels.add_(maps.permute(0, 2, 3, 1) @ on_maps.t())
        return self.mlp[2](F.silu(hidden, inplace=True))


class MaskDecoder(nn.Module):
    """(mask gestalt (N, G), position (N, 4)) -> object-mask logits (N, 1, H, W)."""

    def __init__(self, config: LociDecoderConfig, resolution: int, gestalt_dim: int):
        super().__init__()
        channels = config.channels
        self.resolution, self.grid = resolution, resolution // config.patch_size
        self.embed = nn.Linear(gestalt_dim, channels)
        self.net = nn.Sequential(
            nn.Conv2d(channels + 3, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
        )
        self.head = PixelHead(channels, config.head_channels, 2, 1)

    def forward(self, gestalt: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        gaussian = gaussian_maps(position, self.grid)[:, None]
        grid = torch.cat(
            [self.embed(gestalt)[:, :, None, None] * gaussian, relative_coordinates(position, self.grid), gaussian],
            dim=1,
        )
        return self.head(self.net(grid), self.resolution, position)


class MaskedGestaltDecoder(nn.Module):
    """The depth and RGB decoders: a Gestalt code times the max-pooled mask, the mask and the
    earlier outputs (depth, for RGB) encoded by a strided convolution, and the relative
    coordinates, through ConvNeXt blocks on the grid, then a per-pixel head that also sees the
    mask and earlier outputs at half resolution: (gestalt (N, G), position (N, 4), maps
    (N, M, H, W)) -> (N, out, H, W), upsampled bilinearly from half resolution. Depth and RGB need
    no sharper edges than that: the composition takes its edges from the full-resolution masks.
    """

    def __init__(self, config: LociDecoderConfig, resolution: int, gestalt_dim: int, maps: int, out: int):
        super().__init__()
        channels, patch = config.channels, config.patch_size
        self.resolution, self.grid, self.patch = resolution, resolution // patch, patch
        self.embed = nn.Linear(gestalt_dim, channels)
        self.encode_maps = nn.Sequential(nn.Conv2d(maps, channels // 2, patch, stride=patch), nn.SiLU())
        self.mix = nn.Conv2d(channels + channels // 2 + 2, channels, 1)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(channels, 5) for _ in range(config.blocks)))
        self.head = PixelHead(channels, config.head_channels, maps + 2, out)

    def forward(self, gestalt: torch.Tensor, position: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        pooled_mask = F.max_pool2d(maps[:, :1], self.patch) if self.patch > 1 else maps[:, :1]
        grid = torch.cat(
            [
                self.embed(gestalt)[:, :, None, None] * pooled_mask,
                self.encode_maps(maps),
                relative_coordinates(position, self.grid),
            ],
            dim=1,
        )
        features = self.blocks(self.mix(grid))
        half = self.head(features, self.resolution // 2, position, F.avg_pool2d(maps, 2))
        return F.interpolate(half, size=maps.shape[-2:], mode="bilinear", align_corners=False)


class CascadedDecoder(nn.Module):
    """(gestalt (B, K, 3 G), position (B, K, 4)) -> :class:`SlotImages`: mask, then depth given
    the mask, then RGB given both. A slot's depth is ``sigmoid(priority + offset(x))``: its
    priority sets how far it is, the depth decoder its relief."""

    def __init__(self, config: LociDecoderConfig, resolution: int, gestalt_dim: int):
        super().__init__()
        self.gestalt_dim = gestalt_dim
        self.mask = MaskDecoder(config, resolution, gestalt_dim)
        self.depth = MaskedGestaltDecoder(config, resolution, gestalt_dim, maps=1, out=1)
        self.rgb = MaskedGestaltDecoder(config, resolution, gestalt_dim, maps=2, out=3)

    def forward(self, gestalt: torch.Tensor, position: torch.Tensor, rgb: bool = True) -> SlotImages:
        """``rgb=False``: masks and depth only (``rgb`` None; :meth:`decode_rgb` adds it later)."""
        batch, slots = gestalt.shape[:2]
        outputs = self._in_chunks(self._decode_slots, gestalt.flatten(0, 1), position.flatten(0, 1), rgb=rgb)
        return SlotImages(*(None if output is None else output.unflatten(0, (batch, slots)) for output in outputs))

    def decode_rgb(
        self, gestalt: torch.Tensor, position: torch.Tensor, mask_logits: torch.Tensor, depth: torch.Tensor
    ) -> torch.Tensor:
        """The RGB (N, 3, H, W) of N slots whose mask logits and depth (N, H, W) are decoded."""
        return self._in_chunks(self._decode_rgb, gestalt, position, mask_logits, depth)[0]

    def _in_chunks(self, decode, *inputs: torch.Tensor, **options) -> list[torch.Tensor | None]:
        """``decode`` over (N, ...) inputs, concatenated. On the CPU a few slots at a time: the
        full-resolution maps of all slots at once are large allocations that the allocator hands
        back to the system and faults in again on every call (48 slots at 64x64 at once took 1.4x
        the CPU time of 24 at a time, 8 at a time 1.15x, on dev). Slots are decoded independently,
        so the chunks give the same images."""
        count = len(inputs[0])
        chunk = max(1, CPU_CHUNK_PIXELS // self.mask.resolution**2 if inputs[0].device.type == "cpu" else count)
        parts = [decode(*chunks, **options) for chunks in zip(*(tensor.split(chunk) for tensor in inputs))]
        return [None if outputs[0] is None else torch.cat(outputs) for outputs in zip(*parts)]

    def _decode_slots(
        self, gestalt: torch.Tensor, position: torch.Tensor, rgb: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(gestalt (N, 3 G), position (N, 4)) -> mask logits (N, H, W), depth (N, H, W), rgb (N, 3, H, W) or None."""
        mask_logits = self.mask(gestalt[:, : self.gestalt_dim], position)
        depth_gestalt = gestalt[:, self.gestalt_dim : 2 * self.gestalt_dim]
        depth = torch.sigmoid(
            position[:, 3, None, None, None] + self.depth(depth_gestalt, position, mask_logits.sigmoid())
        )
        mask_logits, depth = mask_logits[:, 0], depth[:, 0]
        return mask_logits, depth, self._decode_rgb(gestalt, position, mask_logits, depth)[0] if rgb else None

    def _decode_rgb(
        self, gestalt: torch.Tensor, position: torch.Tensor, mask_logits: torch.Tensor, depth: torch.Tensor
    ) -> tuple[torch.Tensor]:
        maps = torch.stack([torch.sigmoid(mask_logits), depth], dim=1)
        return (torch.sigmoid(self.rgb(gestalt[:, 2 * self.gestalt_dim :], position, maps)),)

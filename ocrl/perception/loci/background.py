"""The background module of Loci-s (paper Sec. 3.4, Fig. 4), trained before the slots.

- :class:`UncertaintyNetwork`: a U-Net with ConvNeXt blocks and skip connections that marks
  the foreground ("uncertain") pixels of a frame: logits (N, 1, H, W).
- :class:`BackgroundAutoencoder`: a masked autoencoder (a small ViT) that sees the frame with
  the foreground masked out and regenerates the background RGB and, through a narrow
  bottleneck, its depth.

The slots explain the foreground; the background module explains the rest, so the background
is never a slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ocrl.perception.loci.config import BackgroundConfig
from ocrl.perception.loci.layers import ConvNeXtBlock, PatchDown, PatchUp

# relative depth (near 0, far 1) the background starts at, before training
BACKGROUND_DEPTH_START = 0.9


@dataclass
class BackgroundOutput:
    """foreground_logits (N, 1, H, W); foreground (N, 1, H, W) in [0, 1]; rgb (N, 3, H, W) in
    [0, 1]; depth (N, 1, H, W) relative (near 0, far 1)."""

    foreground_logits: torch.Tensor
    foreground: torch.Tensor
    rgb: torch.Tensor
    depth: torch.Tensor


class UncertaintyNetwork(nn.Module):
    """Frames (N, 3, H, W) -> foreground logits (N, 1, H, W): three down stages (each /2), three
    up stages with skips, and a full-resolution stem (3x3) and head (per pixel) so that edges
    stay sharp."""

    def __init__(self, channels: list[int], kernel_size: int = 5):
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.SiLU())
        self.down1, self.block1 = PatchDown(c1, c1, 2), ConvNeXtBlock(c1, kernel_size)
        self.down2, self.block2 = PatchDown(c1, c2, 2), ConvNeXtBlock(c2, kernel_size)
        self.down3, self.block3 = PatchDown(c2, c3, 2), ConvNeXtBlock(c3, kernel_size)
        self.up2, self.block_up2 = PatchUp(c3, c2, 2), ConvNeXtBlock(c2, kernel_size)
        self.up1, self.block_up1 = PatchUp(c2, c1, 2), ConvNeXtBlock(c1, kernel_size)
        self.up0 = PatchUp(c1, c1, 2)
        self.head = nn.Sequential(nn.Conv2d(2 * c1, c1, 1), nn.SiLU(), nn.Conv2d(c1, 1, 1))
        # start undecided (logit 0) rather than at whatever the residual stack sums to
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        full = self.stem(frames)
        half = self.block1(self.down1(full))
        quarter = self.block2(self.down2(half))
        eighth = self.block3(self.down3(quarter))
        quarter = self.block_up2(self.up2(eighth) + quarter)
        half = self.block_up1(self.up1(quarter) + half)
        return self.head(torch.cat([self.up0(half), full], dim=1))


class BackgroundAutoencoder(nn.Module):
    """Masked ViT autoencoder: (frames (N, 3, H, W), foreground (N, 1, H, W)) -> background rgb
    (N, 3, H, W) and depth (N, 1, H, W). The input is the frame times (1 - foreground) plus the
    foreground map; depth passes through a ``depth_bottleneck``-wide code."""

    def __init__(self, config: BackgroundConfig, resolution: int):
        super().__init__()
        self.patch = config.patch_size
        self.grid = resolution // config.patch_size
        tokens, dim = self.grid**2, config.embed_dim
        self.embed = nn.Linear(4 * self.patch**2, dim)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, config.num_heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.rgb = nn.Linear(dim, 3 * self.patch**2)
        self.depth_code = nn.Linear(dim, config.depth_bottleneck)
        self.depth = nn.Linear(config.depth_bottleneck, tokens)
        # the background is what lies behind the objects: start far. From the middle (0.5) the
        # depth of a sprite task's background (1.0) was still 0.70 after the quick preset's
        # 800 steps (Adam moves the bias about one learning rate per step)
        nn.init.constant_(self.depth.bias, math.log(BACKGROUND_DEPTH_START / (1 - BACKGROUND_DEPTH_START)))

    def forward(self, frames: torch.Tensor, foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([frames * (1 - foreground), foreground], dim=1)
        tokens = rearrange(inputs, "n c (h p) (w q) -> n (h w) (p q c)", p=self.patch, q=self.patch)
        tokens = self.norm(self.transformer(self.embed(tokens) + self.position))
        rgb = rearrange(
            torch.sigmoid(self.rgb(tokens)),
            "n (h w) (p q c) -> n c (h p) (w q)",
            h=self.grid,
            p=self.patch,
            q=self.patch,
        )
        code = torch.sigmoid(self.depth_code(tokens.mean(dim=1)))
        depth = self.depth(code).view(-1, 1, self.grid, self.grid)
        depth = torch.sigmoid(F.interpolate(depth, size=frames.shape[-2:], mode="bilinear", align_corners=False))
        return rgb, depth


class BackgroundModule(nn.Module):
    """Uncertainty network + background autoencoder: frames (N, 3, H, W) -> :class:`BackgroundOutput`."""

    def __init__(self, config: BackgroundConfig, resolution: int):
        super().__init__()
        self.uncertainty = UncertaintyNetwork(config.channels)
        self.autoencoder = BackgroundAutoencoder(config, resolution)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> BackgroundOutput:
        """``mask`` (N, 1, H, W): the foreground to mask out of the autoencoder's input instead of
        the predicted one (training: the target, so the autoencoder does not learn from the
        uncertainty network's early mistakes)."""
        logits = self.uncertainty(frames)
        foreground = torch.sigmoid(logits)
        rgb, depth = self.autoencoder(frames, foreground.detach() if mask is None else mask)
        return BackgroundOutput(logits, foreground, rgb, depth)

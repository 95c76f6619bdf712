"""Encoders: frames (B, 3, H, W) in [0, 1] to feature tokens (B, N, feature_dim) on a grid.

A backbone (plain CNN or small ResNet) gives a (B, C, h, w) map; :class:`ImageEncoder` adds a
learned positional embedding (a linear map of pixel coordinates, as in Slot Attention), then
LayerNorm and an MLP to ``feature_dim``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ocrl.perception.config import EncoderConfig
from ocrl.perception.layers import MLP, coordinate_grid


def resolve_downsample(config: EncoderConfig, resolution: int) -> int:
    """The encoder's total stride: ``config.downsample`` or ``resolution // 16`` (a 16x16 grid)."""
    downsample = config.downsample or max(1, resolution // 16)
    if downsample & (downsample - 1):
        raise ValueError(f"encoder downsample must be a power of 2, got {downsample}")
    if resolution % downsample:
        raise ValueError(f"resolution {resolution} is not divisible by the encoder downsample {downsample}")
    return downsample


class CNNBackbone(nn.Sequential):
    """``num_layers`` convolutions with ReLU; the first log2(downsample) have stride 2."""

    def __init__(self, channels: int, num_layers: int, kernel_size: int, downsample: int):
        strides = int(math.log2(downsample))
        if num_layers < strides:
            raise ValueError(f"a /{downsample} CNN needs at least {strides} layers, got num_layers={num_layers}")
        layers: list[nn.Module] = []
        for index in range(num_layers):
            layers += [
                nn.Conv2d(
                    3 if index == 0 else channels, channels, kernel_size, 2 if index < strides else 1, kernel_size // 2
                ),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)
        self.out_channels = channels


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: online use steps batches of 1..n envs, where batch statistics
    # differ from training; group statistics are per sample.
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (pooled and projected when
    the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            _group_norm(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            _group_norm(out_channels),
        )
        shortcut: list[nn.Module] = []
        if stride != 1:
            # average-pool then 1x1 convolution (ResNet-D): a strided 1x1 convolution would drop
            # 3/4 of the input (and its backward on channels-last input crashes oneDNN in torch 2.13)
            shortcut.append(nn.AvgPool2d(stride))
        if in_channels != out_channels:
            shortcut += [nn.Conv2d(in_channels, out_channels, 1, bias=False), _group_norm(out_channels)]
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetBackbone(nn.Sequential):
    """A small ResNet: a 3x3 stem (stride 2 when downsampling), a stride-1 stage, then one
    stride-2 stage per remaining factor of 2, widths ``channels * (1, 2, 4, 4, ...)``."""

    def __init__(self, channels: int, blocks_per_stage: int, downsample: int):
        strides = int(math.log2(downsample))
        layers: list[nn.Module] = [
            nn.Conv2d(3, channels, 3, 2 if strides else 1, 1, bias=False),
            _group_norm(channels),
            nn.ReLU(inplace=True),
        ]
        width = channels
        for stage in range(max(strides, 1)):
            stage_width = channels * min(2**stage, 4)
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(width, stage_width, 2 if stage > 0 and block == 0 else 1))
                width = stage_width
        super().__init__(*layers)
        self.out_channels = width


class ImageEncoder(nn.Module):
    """Backbone + positional embedding + LayerNorm + MLP: frames to feature tokens."""

    def __init__(self, backbone: nn.Module, out_channels: int, grid_size: int, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.grid_size = grid_size
        self.feature_dim = feature_dim
        self.position_embedding = nn.Linear(2, out_channels)
        self.register_buffer("grid", coordinate_grid(grid_size, grid_size), persistent=False)
        self.norm = nn.LayerNorm(out_channels)
        self.mlp = MLP(out_channels, feature_dim, feature_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) in [0, 1] -> features (B, grid_size**2, feature_dim)."""
        feature_map = self.backbone(frames * 2 - 1)
        if feature_map.shape[-2:] != (self.grid_size, self.grid_size):
            raise ValueError(
                f"encoder produced a {tuple(feature_map.shape[-2:])} grid, expected {self.grid_size}x{self.grid_size}"
            )
        tokens = rearrange(feature_map, "b c h w -> b (h w) c") + rearrange(
            self.position_embedding(self.grid), "h w c -> (h w) c"
        )
        return self.mlp(self.norm(tokens))


def build_encoder(config: EncoderConfig, resolution: int) -> ImageEncoder:
    downsample = resolve_downsample(config, resolution)
    if config.kind == "cnn":
        backbone = CNNBackbone(config.channels, config.num_layers, config.kernel_size, downsample)
    elif config.kind == "resnet":
        backbone = ResNetBackbone(config.channels, config.blocks_per_stage, downsample)
    else:
        raise ValueError(f"unknown encoder kind {config.kind!r}; known: 'cnn', 'resnet'")
    return ImageEncoder(backbone, backbone.out_channels, resolution // downsample, config.feature_dim)

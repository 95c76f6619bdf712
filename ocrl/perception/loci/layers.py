"""Building blocks of Loci-s: ConvNeXt blocks (with hypernetwork kernel residuals), residual patch
embedding and upscaling, Gaussian position maps, GateL0RD cells and the rectified-tanh gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.slots import pixel_coordinates


class ConvNeXtBlock(nn.Module):
    """Depthwise k x k convolution, LayerNorm, pointwise MLP (x4), scaled residual: (N, C, h, w) -> same.

    With ``condition_dim`` > 0 it is a HyperConvNeXt block (paper Fig. 2): a hypernetwork maps a
    per-sample condition (N, condition_dim) to residuals of the depthwise kernels. The
    hypernetwork starts at zero, so a new block behaves as a plain ConvNeXt block.
    """

    def __init__(self, channels: int, kernel_size: int = 7, condition_dim: int = 0, expansion: int = 4):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.hyper = nn.Linear(condition_dim, channels * kernel_size**2) if condition_dim > 0 else None
        if self.hyper is not None:
            nn.init.zeros_(self.hyper.weight)
            nn.init.zeros_(self.hyper.bias)
        self.norm = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, expansion * channels)
        self.project = nn.Linear(expansion * channels, channels)
        self.scale = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.hyper is not None and condition is not None:
            n, c, h, w = x.shape
            k = self.kernel_size
            kernels = self.depthwise.weight[None] + self.hyper(condition).view(n, c, 1, k, k)
            # one grouped convolution for the whole batch: each sample's channels are their own groups
            y = F.conv2d(
                x.reshape(1, n * c, h, w),
                kernels.reshape(n * c, 1, k, k),
                self.depthwise.bias.repeat(n),
                padding=k // 2,
                groups=n * c,
            ).view(n, c, h, w)
        else:
            y = self.depthwise(x)
        y = self.project(F.gelu(self.expand(self.norm(y.permute(0, 2, 3, 1)))))
        return x + (self.scale * y).permute(0, 3, 1, 2)


class PatchDown(nn.Module):
    """Residual patch embedding: a strided convolution plus the average-pooled input with its
    channels copied (the paper's "Conv2D + AvgPool + Channel Copy"); (N, C, h, w) -> (N, C', h/f, w/f)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(in_channels, out_channels, factor, stride=factor)
        self.copies = out_channels // in_channels if out_channels % in_channels == 0 else 0
        self.skip = None if self.copies else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, self.factor) if self.factor > 1 else x
        skip = pooled.repeat_interleave(self.copies, dim=1) if self.copies else self.skip(pooled)
        return self.conv(x) + skip


class PatchUp(nn.Module):
    """Residual patch upscaling: a transposed convolution plus the nearest-upsampled input with
    its channels averaged in groups ("Upscale + Channel Avg"); (N, C, h, w) -> (N, C', h f, w f)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)
        self.group = in_channels // out_channels if in_channels % out_channels == 0 else 0
        self.skip = None if self.group else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        if self.group:
            skip = up.unflatten(1, (-1, self.group)).mean(dim=2)
        else:
            skip = self.skip(up)
        return self.conv(x) + skip


def coordinate_maps(size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (1, size) and y (size, 1): pixel-centre coordinates in [-1, 1] (the slot-code convention)."""
    x, y = pixel_coordinates(size, size, device)
    return x[None, :], y[:, None]


def gaussian_maps(position: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropic Gaussians at positions (..., >= 3) = (x, y, sigma, ...) on a size x size grid: (..., size, size) in [0, 1]."""
    x, y = coordinate_maps(size, position.device)
    px, py = position[..., 0, None, None], position[..., 1, None, None]
    sigma = position[..., 2, None, None].clamp_min(1e-3)
    return torch.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))


def relative_axes(position: torch.Tensor, size: int, reach: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates relative to each of N slots (position (N, >= 3)), in units of its size,
    clamped to [-reach, reach] and divided by it: x (N, size) along a row, y (N, size) down a
    column."""
    x, y = coordinate_maps(size, position.device)
    sigma = position[:, 2, None].clamp_min(1e-2)
    relative_x = ((x - position[:, 0, None]) / sigma).clamp(-reach, reach) / reach
    relative_y = ((y[:, 0] - position[:, 1, None]) / sigma).clamp(-reach, reach) / reach
    return relative_x, relative_y


def relative_coordinates(position: torch.Tensor, size: int, reach: float = 4.0) -> torch.Tensor:
    """:func:`relative_axes` as maps (N, 2, size, size). A decoder that sees them draws a shape
    around the slot's centre at the slot's scale."""
    relative_x, relative_y = relative_axes(position, size, reach)
    return torch.stack(torch.broadcast_tensors(relative_x[:, None, :], relative_y[:, :, None]), dim=1)


def rectified_tanh_gate(logits: torch.Tensor, noise: float, training: bool) -> torch.Tensor:
    """max(0, tanh(z + noise)): a gate that can close exactly (App. A.1, Eq. 4)."""
    if training and noise > 0:
        logits = logits + noise * torch.randn_like(logits)
    return torch.tanh(logits).clamp_min(0)


def l0_surrogate(gate: torch.Tensor) -> torch.Tensor:
    """Mean fraction of open gates (> 0), with the gate's own gradient (straight-through), for the L0 loss."""
    return ((gate > 0).float() + gate - gate.detach()).mean()


class GateL0RDCell(nn.Module):
    """GateL0RD (Gumbsch et al. 2021): a recurrent cell whose state changes only where its
    rectified-tanh gate opens; an L0 loss on the gate keeps changes sparse.

    input (N, input_dim), hidden (N, hidden_dim) -> output (N, hidden_dim), new hidden, gate.
    """

    def __init__(self, input_dim: int, hidden_dim: int, noise: float = 0.1):
        super().__init__()
        both = input_dim + hidden_dim
        self.noise = noise
        self.gate = nn.Linear(both, hidden_dim)
        self.candidate = nn.Linear(both, hidden_dim)
        self.output = nn.Linear(both, hidden_dim)
        self.output_gate = nn.Linear(both, hidden_dim)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        joined = torch.cat([inputs, hidden], dim=-1)
        gate = rectified_tanh_gate(self.gate(joined), self.noise, self.training)
        hidden = gate * torch.tanh(self.candidate(joined)) + (1 - gate) * hidden
        joined = torch.cat([inputs, hidden], dim=-1)
        output = torch.tanh(self.output(joined)) * torch.sigmoid(self.output_gate(joined))
        return output, hidden, gate

"""The slot-wise encoder of Loci-s (paper Sec. 2 and 3.2, Table 4).

Every slot looks at the whole frame, together with what the model predicted about that slot:
its position as a Gaussian, its visible and object masks, its RGB, and the other slots' visible
masks; plus frame-level maps shared by all slots (the last prediction error and the
background module's foreground). It returns the slot's Gestalt code (what the object looks
like) and Position code (x, y, size, priority). Top-down feedback: with ``hyper`` on, the slot's
predicted Gestalt code sets residuals of the depthwise kernels (HyperConvNeXt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.perception.layers import MLP
from ocrl.perception.loci.config import LociEncoderConfig
from ocrl.perception.loci.layers import ConvNeXtBlock, PatchDown, coordinate_maps

# frame RGB, prediction error, foreground
FRAME_CHANNELS = 5
# position Gaussian, visible mask, object mask, slot RGB (3), other slots' visible masks
SLOT_CHANNELS = 7
MIN_SIZE = 0.01


class ObjectEncoder(nn.Module):
    """frame inputs (B, 5, H, W), slot inputs (B, K, 7, H, W), condition (B, K, 3 G) or None ->
    gestalt (B, K, 3 G) in [0, 1], position (B, K, 4) = (x, y, size, priority logit).

    x, y: soft-argmax of a location map on the final grid (resolution / (2 patch)); size: from
    the features pooled under that map; priority: the location-weighted mean of a priority map.
    The frame channels go through their own stem once per frame and are added to every slot's
    stem (a convolution of a concatenation is the sum of convolutions).
    """

    def __init__(self, config: LociEncoderConfig, resolution: int, gestalt_dim: int):
        super().__init__()
        channels, patch, kernel = config.channels, config.patch_size, config.kernel_size
        condition = 3 * gestalt_dim if config.hyper else 0
        self.hyper = config.hyper
        self.binarise = config.binarise
        self.frame_stem = nn.Conv2d(FRAME_CHANNELS, channels, patch, stride=patch)
        self.slot_stem = nn.Conv2d(SLOT_CHANNELS, channels, patch, stride=patch, bias=False)
        self.stage1 = nn.ModuleList(ConvNeXtBlock(channels, kernel, condition) for _ in range(config.blocks))
        self.down = PatchDown(channels, 2 * channels, 2)
        self.stage2 = nn.ModuleList(ConvNeXtBlock(2 * channels, kernel, condition) for _ in range(config.blocks))
        self.position_block = ConvNeXtBlock(2 * channels, kernel, condition)
        self.position_head = nn.Conv2d(2 * channels, 2, 1)  # location logits, priority
        self.size_head = nn.Linear(2 * channels, 1)
        self.gestalt_head = MLP(2 * channels, 2 * channels, 3 * gestalt_dim)
        self.grid = resolution // (2 * patch)

    def forward(
        self, frame_inputs: torch.Tensor, slot_inputs: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, slots = slot_inputs.shape[:2]
        shared = self.frame_stem(frame_inputs)
        x = (shared[:, None] + self.slot_stem(slot_inputs.flatten(0, 1)).unflatten(0, (batch, slots))).flatten(0, 1)
        condition = condition.flatten(0, 1) if (self.hyper and condition is not None) else None
        for block in self.stage1:
            x = block(x, condition)
        x = self.down(x)
        for block in self.stage2:
            x = block(x, condition)
        maps = self.position_head(self.position_block(x, condition))
        attention = maps[:, 0].flatten(1).softmax(dim=-1)  # (N, g*g)
        grid_x, grid_y = coordinate_maps(self.grid, x.device)
        grid_x, grid_y = grid_x.expand(self.grid, -1).flatten(), grid_y.expand(-1, self.grid).flatten()
        position_x = (attention * grid_x).sum(-1)
        position_y = (attention * grid_y).sum(-1)
        priority = (attention * maps[:, 1].flatten(1)).sum(-1)
        pooled = torch.bmm(x.flatten(2), attention[:, :, None])[:, :, 0]  # (N, C)
        size = MIN_SIZE + F.softplus(self.size_head(pooled)[:, 0] - 2.0)
        gestalt = torch.sigmoid(self.gestalt_head(pooled))
        if self.training and self.binarise:
            # Loci's binarising noise: codes near 0.5 are noisy, codes near 0 or 1 are not
            gestalt = gestalt + gestalt * (1 - gestalt) * torch.randn_like(gestalt)
        position = torch.stack([position_x, position_y, size, priority], dim=-1)
        return gestalt.unflatten(0, (batch, slots)), position.unflatten(0, (batch, slots))

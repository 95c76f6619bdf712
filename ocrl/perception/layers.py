"""Small building blocks shared by the perception modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ocrl.slots import pixel_coordinates


class MLP(nn.Sequential):
    """Linear, ReLU, Linear: (..., input_dim) to (..., output_dim)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__(nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim))


def coordinate_grid(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(height, width, 2) pixel-centre x, y in [-1, 1], the slot-code convention."""
    x, y = pixel_coordinates(height, width, device)
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)


class MultiHeadAttention(nn.Module):
    """Standard (softmax over keys) multi-head attention, queries (B, M, dim) to (B, M, dim).

    Uses ``scaled_dot_product_attention`` so that GPUs get fused kernels under AMP.
    """

    def __init__(self, dim: int, num_heads: int, key_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_query = nn.Linear(dim, dim)
        self.to_key = nn.Linear(key_dim or dim, dim)
        self.to_value = nn.Linear(key_dim or dim, dim)
        self.to_output = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """queries (B, M, dim), keys (B, N, key_dim) -> (B, M, dim)."""
        split = lambda tensor: rearrange(tensor, "b n (h d) -> b h n d", h=self.num_heads)
        attended = F.scaled_dot_product_attention(
            split(self.to_query(queries)), split(self.to_key(keys)), split(self.to_value(keys))
        )
        return self.to_output(rearrange(attended, "b h n d -> b n (h d)"))


def inverted_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, epsilon: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot Attention's attention: softmax over the queries, then renormalised over the inputs.

    Args:
        queries: (B, H, K, d) per head, one row per slot.
        keys, values: (B, H, N, d).

    Returns:
        updates (B, H, K, d): each slot's weighted *mean* of the values;
        attention (B, H, K, N): the softmax over slots (sums to 1 over K at each input), which
        is what makes slots compete for inputs and doubles as a soft segmentation.

    The softmax and renormalisation run in float32: the renormalising sums over N inputs and the
    small epsilon are unsafe in half precision.
    """
    logits = torch.einsum("bhkd,bhnd->bhkn", queries, keys).float() * queries.shape[-1] ** -0.5
    attention = logits.softmax(dim=-2)
    weights = attention + epsilon
    weights = weights / weights.sum(dim=-1, keepdim=True)
    updates = torch.einsum("bhkn,bhnd->bhkd", weights.to(values.dtype), values)
    return updates, attention

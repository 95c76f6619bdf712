"""Transitioners: slots of frame t (B, K, D) to the queries of frame t + 1 (B, K, D)."""

from __future__ import annotations

import torch
from torch import nn

from ocrl.perception.config import TransitionerConfig
from ocrl.perception.layers import MLP, MultiHeadAttention


class TransformerBlock(nn.Module):
    """Pre-LN self-attention + MLP over a set of slots (no positional encoding: order-free)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden_dim, dim)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        normed = self.attention_norm(slots)
        slots = slots + self.attention(normed, normed)
        return slots + self.mlp(self.mlp_norm(slots))


class SlotTransitioner(nn.Sequential):
    """Transformer blocks over slots predicting next-frame queries (SAVi's predictor): slots
    exchange information, so interactions between objects can shape the prediction."""

    def __init__(self, slot_dim: int, num_layers: int = 1, num_heads: int = 4, mlp_hidden_dim: int = 128):
        super().__init__(*(TransformerBlock(slot_dim, num_heads, mlp_hidden_dim) for _ in range(num_layers)))


def build_transitioner(config: TransitionerConfig, slot_dim: int) -> nn.Module:
    if config.kind == "transformer":
        return SlotTransitioner(slot_dim, config.num_layers, config.num_heads, config.mlp_hidden_dim)
    if config.kind == "identity":
        return nn.Identity()
    raise ValueError(f"unknown transitioner kind {config.kind!r}; known: 'transformer', 'identity'")

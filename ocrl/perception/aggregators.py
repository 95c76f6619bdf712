"""Aggregators: queries (B, K, D) and features (B, N, F) to slots (B, K, D) and attention (B, K, N).

Both use inverted attention (softmax over slots, renormalised over inputs), which makes slots
compete for inputs; the attention of the last iteration is returned as a soft segmentation of
the feature grid (it sums to 1 over K at every input).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ocrl.perception.config import AggregatorConfig
from ocrl.perception.layers import MLP, inverted_attention


class SlotAttention(nn.Module):
    """Slot Attention (Locatello et al. 2020): every iteration shares its weights.

    Per iteration: attend with LayerNorm'ed slots as queries, GRU update, residual MLP.
    """

    def __init__(
        self, slot_dim: int, feature_dim: int, num_heads: int = 1, mlp_hidden_dim: int = 128, epsilon: float = 1e-8
    ):
        super().__init__()
        if slot_dim % num_heads:
            raise ValueError(f"slot_dim {slot_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.epsilon = epsilon
        self.input_norm = nn.LayerNorm(feature_dim)
        self.to_key = nn.Linear(feature_dim, slot_dim, bias=False)
        self.to_value = nn.Linear(feature_dim, slot_dim, bias=False)
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.to_query = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.mlp_norm = nn.LayerNorm(slot_dim)
        self.mlp = MLP(slot_dim, mlp_hidden_dim, slot_dim)

    def forward(
        self, queries: torch.Tensor, features: torch.Tensor, num_iterations: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, K, D), features (B, N, F) -> slots (B, K, D), attention (B, K, N)."""
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be at least 1, got {num_iterations}")
        heads = self.num_heads
        inputs = self.input_norm(features)
        # keys and values are computed once per frame: the iterations share their weights
        keys = rearrange(self.to_key(inputs), "b n (h d) -> b h n d", h=heads)
        values = rearrange(self.to_value(inputs), "b n (h d) -> b h n d", h=heads)
        slots = queries
        for _ in range(num_iterations):
            query = rearrange(self.to_query(self.slot_norm(slots)), "b k (h d) -> b h k d", h=heads)
            updates, attention = inverted_attention(query, keys, values, self.epsilon)
            updates = rearrange(updates, "b h k d -> (b k) (h d)")
            slots = self.gru(updates, slots.reshape(updates.shape)).view_as(slots)
            slots = slots + self.mlp(self.mlp_norm(slots))
        return slots, attention.mean(dim=1)


class InvertedAttentionLayer(nn.Module):
    """One TF-Inv layer: pre-LN cross-attention with inverted attention and renormalisation,
    a residual (or GRU) update, then a residual pre-LN MLP."""

    def __init__(
        self, slot_dim: int, feature_dim: int, num_heads: int, mlp_hidden_dim: int, use_gru: bool, epsilon: float
    ):
        super().__init__()
        self.num_heads = num_heads
        self.epsilon = epsilon
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.to_query = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_key = nn.Linear(feature_dim, slot_dim, bias=False)
        self.to_value = nn.Linear(feature_dim, slot_dim, bias=False)
        self.to_output = nn.Linear(slot_dim, slot_dim)
        self.gru = nn.GRUCell(slot_dim, slot_dim) if use_gru else None
        self.mlp_norm = nn.LayerNorm(slot_dim)
        self.mlp = MLP(slot_dim, mlp_hidden_dim, slot_dim)

    def forward(self, slots: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (B, K, D), normalised inputs (B, N, F) -> slots (B, K, D), attention (B, K, N)."""
        split = lambda tensor: rearrange(tensor, "b n (h d) -> b h n d", h=self.num_heads)
        updates, attention = inverted_attention(
            split(self.to_query(self.slot_norm(slots))),
            split(self.to_key(inputs)),
            split(self.to_value(inputs)),
            self.epsilon,
        )
        updates = self.to_output(rearrange(updates, "b h k d -> b k (h d)"))
        if self.gru is None:
            slots = slots + updates
        else:
            slots = self.gru(updates.reshape(-1, updates.shape[-1]), slots.reshape(-1, slots.shape[-1])).view_as(slots)
        slots = slots + self.mlp(self.mlp_norm(slots))
        return slots, attention.mean(dim=1)


class InvertedAttentionTransformer(nn.Module):
    """TF-Inv (Wu et al., "Inverted-Attention Transformers can Learn Object Representations"):
    a pre-LN cross-attention-only transformer whose attention is normalised over the queries
    (slots) and renormalised over the inputs, with separate weights per layer and optionally a
    per-layer GRU update ("TF-Inv w/ GRU"). Inputs get one LayerNorm shared by the layers; no
    final LayerNorm on the slots (as in the paper's setup, like Slot Attention).

    ``num_iterations`` runs the first that many layers, so a model can use all of them on an
    episode's first frame and fewer on later frames.
    """

    def __init__(
        self,
        slot_dim: int,
        feature_dim: int,
        num_layers: int,
        num_heads: int = 1,
        mlp_hidden_dim: int = 128,
        use_gru: bool = False,
        epsilon: float = 1e-8,
    ):
        super().__init__()
        if slot_dim % num_heads:
            raise ValueError(f"slot_dim {slot_dim} is not divisible by num_heads {num_heads}")
        self.input_norm = nn.LayerNorm(feature_dim)
        self.layers = nn.ModuleList(
            InvertedAttentionLayer(slot_dim, feature_dim, num_heads, mlp_hidden_dim, use_gru, epsilon)
            for _ in range(num_layers)
        )

    def forward(
        self, queries: torch.Tensor, features: torch.Tensor, num_iterations: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, K, D), features (B, N, F) -> slots (B, K, D), attention (B, K, N)."""
        if not 1 <= num_iterations <= len(self.layers):
            raise ValueError(
                f"num_iterations must be in 1..{len(self.layers)} (the number of layers), got {num_iterations}"
            )
        inputs = self.input_norm(features)
        slots = queries
        for layer in self.layers[:num_iterations]:
            slots, attention = layer(slots, inputs)
        return slots, attention


def build_aggregator(config: AggregatorConfig, slot_dim: int, feature_dim: int) -> nn.Module:
    if min(config.iterations_first, config.iterations_next) < 1:
        raise ValueError(
            f"iterations must be at least 1, got first={config.iterations_first}, next={config.iterations_next}"
        )
    if config.kind == "slot_attention":
        return SlotAttention(slot_dim, feature_dim, config.num_heads, config.mlp_hidden_dim)
    if config.kind == "inverted_attention_transformer":
        num_layers = max(config.iterations_first, config.iterations_next)
        return InvertedAttentionTransformer(
            slot_dim, feature_dim, num_layers, config.num_heads, config.mlp_hidden_dim, config.use_gru
        )
    raise ValueError(
        f"unknown aggregator kind {config.kind!r}; known: 'slot_attention', 'inverted_attention_transformer'"
    )

"""SmoothSA query preheater (Zhao et al., "Smoothing Slot Attention Iterations and Recurrences").

Cold-start queries carry no information about the frame. The preheater, one transformer decoder
block, moves them towards the slots that aggregation will produce, so that the first-frame
iterations start warm (paper Eq. 16). Unlike a standard decoder block its cross-attention comes
*before* its self-attention: exchanging information among still uninformed queries first is
meaningless (paper Sec. 3.2 and Table 5). Training (done by the model, see
:meth:`ocrl.perception.VideoSlotModel.forward`): MSE from the preheated queries to the
stop-gradient slots (Eq. 18), and the aggregator starts from the stop-gradient preheated
queries (Eq. 17) so that the two are trained apart. Unlike the paper, the features it reads are
stop-gradient too and the loss weight is 1, not 100 (see :class:`~ocrl.perception.PreheaterConfig`).
"""

from __future__ import annotations

import torch
from torch import nn

from ocrl.perception.config import PreheaterConfig
from ocrl.perception.layers import MLP, MultiHeadAttention


class QueryPreheater(nn.Module):
    """Pre-LN block: cross-attention to the features, self-attention among queries, MLP."""

    def __init__(
        self,
        slot_dim: int,
        feature_dim: int,
        num_heads: int = 4,
        mlp_hidden_dim: int = 128,
        detach_features: bool = True,
        start_step: int = 0,
    ):
        super().__init__()
        self.detach_features = detach_features
        self.start_step = start_step
        # Whether aggregation starts from the preheated queries yet (see PreheaterConfig.start_step);
        # saved with the weights, so a trained model keeps preheating.
        self.register_buffer("active", torch.tensor(start_step <= 0))
        self.cross_norm = nn.LayerNorm(slot_dim)
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.cross_attention = MultiHeadAttention(slot_dim, num_heads, key_dim=feature_dim)
        self.self_norm = nn.LayerNorm(slot_dim)
        self.self_attention = MultiHeadAttention(slot_dim, num_heads)
        self.mlp_norm = nn.LayerNorm(slot_dim)
        self.mlp = MLP(slot_dim, mlp_hidden_dim, slot_dim)

    def set_step(self, step: int) -> None:
        self.active.fill_(step >= self.start_step)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """queries (B, K, D), features (B, N, F) -> preheated queries (B, K, D)."""
        if self.detach_features:
            features = features.detach()
        queries = queries + self.cross_attention(self.cross_norm(queries), self.feature_norm(features))
        normed = self.self_norm(queries)
        queries = queries + self.self_attention(normed, normed)
        return queries + self.mlp(self.mlp_norm(queries))


def build_preheater(config: PreheaterConfig, slot_dim: int, feature_dim: int) -> QueryPreheater | None:
    if not config.enabled:
        return None
    return QueryPreheater(
        slot_dim, feature_dim, config.num_heads, config.mlp_hidden_dim, config.detach_features, config.start_step
    )

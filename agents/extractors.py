"""Permutation-invariant SB3 features extractors over sets of slots (or ground-truth objects).

Use with any SB3 algorithm through ``policy_kwargs``::

    PPO("MultiInputPolicy", env, policy_kwargs={"features_extractor_class": SlotSetExtractor})

The observation is a ``Dict`` with ``slots`` (K, D) and optionally ``position`` (K, 4) and
``presence`` (K,) (other keys are ignored). Each slot becomes one token (its slot vector,
position and presence, projected); a transformer over the tokens with a CLS token, or a
DeepSets sum, gives one feature vector that does not change when slots are permuted.

No dropout: SB3 collects rollouts in eval mode and updates in train mode, so dropout would make
the network that acted differ from the one being updated (the OCRL repo's extractor did this).
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

TOKEN_KEYS = ("slots", "position", "presence")
KINDS = ("transformer", "deepsets")


class SlotSetExtractor(BaseFeaturesExtractor):
    """Set of K tokens -> (features_dim,).

    Args:
        observation_space: a ``Dict`` with at least ``slots`` (K, D).
        kind: ``"transformer"`` (CLS token, pre-LN self-attention layers) or ``"deepsets"``
            (per-token MLP, sum, MLP).
        features_dim: output width (also the token width).
        num_layers, num_heads: transformer size.
    """

    def __init__(self, observation_space: gym.spaces.Dict, kind: str = "transformer", features_dim: int = 64, num_layers: int = 2, num_heads: int = 4):
        if kind not in KINDS:
            raise ValueError(f"unknown extractor kind {kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(observation_space, gym.spaces.Dict) or "slots" not in observation_space.spaces:
            raise ValueError(f"SlotSetExtractor needs a Dict observation space with 'slots' (K, D), got {observation_space}")
        super().__init__(observation_space, features_dim)
        self.keys = tuple(key for key in TOKEN_KEYS if key in observation_space.spaces)
        num_slots = observation_space["slots"].shape[0]
        token_dim = 0
        for key in self.keys:
            shape = observation_space[key].shape
            if shape[0] != num_slots:
                raise ValueError(f"{key} has {shape[0]} rows but slots has {num_slots}")
            token_dim += math.prod(shape[1:])
        self.kind = kind
        self.embed = nn.Sequential(nn.Linear(token_dim, features_dim), nn.LayerNorm(features_dim))
        if kind == "transformer":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, features_dim))
            layer = nn.TransformerEncoderLayer(features_dim, num_heads, 2 * features_dim, dropout=0.0, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.output_norm = nn.LayerNorm(features_dim)
        else:
            self.phi = nn.Sequential(nn.ReLU(), nn.Linear(features_dim, features_dim), nn.ReLU())
            self.rho = nn.Sequential(nn.Linear(features_dim, features_dim), nn.ReLU())

    def tokens(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, token_dim): each slot's entries of :data:`TOKEN_KEYS`, concatenated."""
        parts = [observations[key].flatten(2) if observations[key].dim() > 2 else observations[key].unsqueeze(-1) for key in self.keys]
        return torch.cat(parts, dim=-1).float()

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.embed(self.tokens(observations))
        if self.kind == "deepsets":
            return self.rho(self.phi(tokens).sum(dim=1))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.output_norm(self.transformer(tokens)[:, 0])

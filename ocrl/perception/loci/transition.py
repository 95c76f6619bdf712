"""Percept gate and transition of Loci-s (paper App. A.1 and Table 5).

- :class:`PerceptGate`: per slot, how much of the observed Gestalt and Position codes replaces
  the predicted ones (Eq. 1-4): ``alpha = max(0, tanh(g(observed, predicted, last position) + noise))``.
- :class:`SlotTransition`: the next frame's codes from this frame's: per-slot GateL0RD
  recurrence, self-attention between slots, residual output (so an untrained transition
  predicts that nothing moves).
"""

from __future__ import annotations

import torch
from torch import nn

from ocrl.perception.layers import MultiHeadAttention
from ocrl.perception.loci.config import LociTransitionConfig
from ocrl.perception.loci.layers import GateL0RDCell, rectified_tanh_gate


class PerceptGate(nn.Module):
    """(observed gestalt, observed position, predicted gestalt, predicted position, last
    position), each (B, K, .) -> alpha (B, K, 2) in [0, 1): the Gestalt and Position gates."""

    def __init__(self, slot_dim: int, hidden_dim: int, noise: float):
        super().__init__()
        self.noise = noise
        self.net = nn.Sequential(
            nn.Linear(2 * (slot_dim + 4) + 4, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, 2),
        )
        # start open: an untrained model follows what it sees
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, 1.0)

    def forward(
        self,
        observed_gestalt: torch.Tensor,
        observed_position: torch.Tensor,
        predicted_gestalt: torch.Tensor,
        predicted_position: torch.Tensor,
        last_position: torch.Tensor,
    ) -> torch.Tensor:
        inputs = torch.cat(
            [observed_gestalt, observed_position, predicted_gestalt, predicted_position, last_position], dim=-1
        )
        return rectified_tanh_gate(self.net(inputs), self.noise, self.training)


class SlotTransition(nn.Module):
    """(gestalt (B, K, D), position (B, K, 4), hidden (B, K, L, H)) -> next gestalt, next
    position, new hidden, GateL0RD gates (B, K, L, H)."""

    def __init__(self, config: LociTransitionConfig, slot_dim: int):
        super().__init__()
        hidden, state = config.hidden_dim, slot_dim + 4
        self.slot_dim = slot_dim
        self.num_layers, self.hidden_dim = config.num_layers, hidden
        self.embed = nn.Sequential(nn.Linear(state, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cells = nn.ModuleList(GateL0RDCell(hidden, hidden, config.gate_noise) for _ in range(config.num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(config.num_layers))
        self.attention = nn.ModuleList(MultiHeadAttention(hidden, config.num_heads) for _ in range(config.num_layers))
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, state))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, gestalt: torch.Tensor, position: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, slots = gestalt.shape[:2]
        x = self.embed(torch.cat([gestalt, position], dim=-1))
        hiddens, gates = [], []
        for layer, (cell, norm, attention) in enumerate(zip(self.cells, self.norms, self.attention)):
            output, new_hidden, gate = cell(x.flatten(0, 1), hidden[:, :, layer].flatten(0, 1))
            x = x + output.unflatten(0, (batch, slots))
            normed = norm(x)
            x = x + attention(normed, normed)
            hiddens.append(new_hidden.unflatten(0, (batch, slots)))
            gates.append(gate.unflatten(0, (batch, slots)))
        delta = self.out(x)
        next_gestalt = (gestalt + delta[..., : self.slot_dim]).clamp(0, 1)
        next_position = position + delta[..., self.slot_dim :]
        next_position = torch.cat(
            [next_position[..., :2].clamp(-1.2, 1.2), next_position[..., 2:3].clamp(0.01, 1.0), next_position[..., 3:]],
            dim=-1,
        )
        return next_gestalt, next_position, torch.stack(hiddens, dim=2), torch.stack(gates, dim=2)

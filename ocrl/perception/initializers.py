"""Initializers: the queries (B, K, D) an episode's first frame starts from."""

from __future__ import annotations

import math

import torch
from torch import nn

from ocrl.perception.config import InitializerConfig
from ocrl.perception.layers import MLP


def annealing_factor(step: int, anneal_steps: int) -> float:
    """Cosine from 1 at step 0 to 0 at ``anneal_steps`` (and after); 1 when ``anneal_steps`` is 0."""
    if anneal_steps <= 0:
        return 1.0
    progress = min(max(step, 0) / anneal_steps, 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


class GaussianQueries(nn.Module):
    """Queries sampled from a learned Gaussian: ``mean + sigma * factor(step) * noise``.

    With ``per_slot_means`` each slot has its own mean (as in BO-QSA) and annealing the noise to
    0 turns the samples into distinct learned queries; with one shared mean (Slot Attention)
    the noise is what tells slots apart, so keep it (``anneal_steps=0``).

    Noise is drawn in training; in eval mode only with a shared mean (otherwise all slots would
    be identical), so a trained per-slot model is deterministic at test time.
    """

    def __init__(
        self,
        num_slots: int,
        slot_dim: int,
        per_slot_means: bool = True,
        initial_sigma: float = 1.0,
        anneal_steps: int = 0,
    ):
        super().__init__()
        self.num_slots = num_slots
        self.per_slot_means = per_slot_means
        self.anneal_steps = anneal_steps
        self.mean = nn.Parameter(torch.randn(num_slots if per_slot_means else 1, slot_dim) * slot_dim**-0.5)
        self.log_sigma = nn.Parameter(torch.full((1, slot_dim), math.log(initial_sigma * slot_dim**-0.5)))
        # kept in the checkpoint so that a resumed run continues the schedule where it stopped
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def set_step(self, step: int) -> None:
        self.step.fill_(int(step))

    def noise_scale(self) -> torch.Tensor:
        """:func:`annealing_factor` at the current step, as a tensor on the parameters' device
        (computed there so that training on a GPU never waits to read the step back)."""
        if self.anneal_steps <= 0:
            return torch.ones((), device=self.mean.device)
        progress = (self.step.float() / self.anneal_steps).clamp(0, 1)
        return 0.5 * (1 + torch.cos(math.pi * progress))

    def forward(self, batch_size: int, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """-> queries (batch_size, K, D)."""
        mean = self.mean.expand(batch_size, self.num_slots, -1)
        if not self.training and self.per_slot_means:
            return mean
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        return mean + self.log_sigma.exp() * self.noise_scale() * noise


class LearnedQueries(nn.Module):
    """One learned query per slot, the same for every sample."""

    def __init__(self, num_slots: int, slot_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_slots, slot_dim) * slot_dim**-0.5)

    def forward(self, batch_size: int, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """-> queries (batch_size, K, D)."""
        return self.queries.expand(batch_size, -1, -1)


class ConditionalQueries(nn.Module):
    """Queries from per-slot conditions (B, K, 4), e.g. first-frame boxes (x_min, y_min, x_max,
    y_max) or positions (x, y, size, depth), through an MLP (as SAVi does with boxes)."""

    def __init__(self, num_slots: int, slot_dim: int, hidden_dim: int = 128, condition_dim: int = 4):
        super().__init__()
        self.num_slots = num_slots
        self.condition_dim = condition_dim
        self.mlp = MLP(condition_dim, hidden_dim, slot_dim)

    def forward(self, batch_size: int, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """conditions (batch_size, K, 4) -> queries (batch_size, K, D)."""
        expected = (batch_size, self.num_slots, self.condition_dim)
        if conditions is None:
            raise ValueError(f"conditional queries need conditions {expected} (boxes or positions) for first frames")
        if tuple(conditions.shape) != expected:
            raise ValueError(f"conditions must be {expected}, got {tuple(conditions.shape)}")
        return self.mlp(conditions.to(self.mlp[0].weight.dtype))


def build_initializer(config: InitializerConfig, num_slots: int, slot_dim: int) -> nn.Module:
    if config.kind == "gaussian":
        return GaussianQueries(num_slots, slot_dim, config.per_slot_means, config.initial_sigma, config.anneal_steps)
    if config.kind == "learned":
        return LearnedQueries(num_slots, slot_dim)
    if config.kind == "conditional":
        return ConditionalQueries(num_slots, slot_dim, config.hidden_dim)
    raise ValueError(f"unknown initializer kind {config.kind!r}; known: 'gaussian', 'learned', 'conditional'")

"""The slot-transformer world model: dynamics, reward and continuation over slot codes and actions.

Each step contributes K slot tokens (slot vector, position and presence of one slot) and one
action token. Attention is causal in time, reaches back ``history`` steps (a sliding window)
and is full across the tokens of a step, so a step's tokens see its own slots and action and the
``history - 1`` steps before it. Time enters only as a learned attention bias per head and step
distance, so a step's keys and values do not depend on where a window starts: imagination
caches them (:class:`AttentionCache`) and computes only the K + 1 new tokens per step, and
stepping with the cache gives exactly what :meth:`SlotWorldModel.forward` gives on the whole
episode so far.

From step t the model predicts the codes of step t + 1 (per slot, as a residual on step t's
codes); the reward of the transition t -> t + 1 and whether the episode continues after it are
read from those predicted codes by :class:`OutcomeHead`, a relation network over pairs of
slots: what ends an object task is a relation between objects in the state a move leads to (the
agent touching the target), which pairs of positions show directly and a pooled token does not
(measured: a head on the action token found 3% of held-out ObjectGoal rewards even on true
object states). As in Dreamer, reward and continuation are functions of the state reached. The
reward is a distribution over ``reward_bins`` bins evenly spaced in symlog space (DreamerV3's
two-hot head): a classification loss learns rare rewards far faster than a squared error,
whatever the rewards' scale; its expected value is the predicted reward.

There is no slot-index embedding: the model is equivariant to permuting the slots (the
perception model keeps each object in the same slot over time, and a slot's prediction is read
from that slot's own token). Slot vectors are standardised with statistics of the training
codes, kept in the weights as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from ocrl.config_json import JsonConfig
from ocrl.errors import OcrlError
from ocrl.slots import SlotCodes

ACTION_TYPES = ("Discrete", "Box")


# The presence head adds its output to the logit of the input presence clamped to [m, 1 - m]:
# from a saturated presence (1.0, as every occupied Loci-s slot has) clamped at 1e-4 the residual
# started at logit 9.2, where a drift of -2 per step cost almost no loss, and open-loop
# imagination compounded it until the slots vanished (benchmarks/RESULTS.md, issue 15).
PRESENCE_MARGIN = 0.02
# fields train_world_model takes from the data, not from the caller's overrides
DATA_FIELDS = ("num_slots", "slot_dim", "perception", "action_space", "env_id", "env_kwargs")


@dataclass
class WorldModelConfig(JsonConfig):
    """What a world model is: stored in its checkpoint's config.json.

    num_slots, slot_dim: the slot shape of the perception model whose codes it models.
    perception: that perception model (shipped name or checkpoint path).
    action_space: JSON description (:func:`ocrl.data.collect.describe_space`), Discrete or Box.
    env_id, env_kwargs: the env the training rollouts came from (imagination mimics it).
    history: most steps the model attends to.
    width, num_layers: 96 and 3 by default. Against width 128 imagination is 1.4x as fast (9.1x
        real env-steps/s against 6.4x) at the same quality; 2 layers reach 11x but the frames
        decoded from imagined slot codes fall apart sooner (FG-ARI 0.62 against 0.74 at horizon
        10 on ObjectGoal; benchmarks/RESULTS.md).
    """

    config_name = "world model config"  # where a from_dict error is, not a field

    num_slots: int = 7
    slot_dim: int = 64
    perception: str = "smoothsa-sprites"
    action_space: dict[str, Any] = field(default_factory=lambda: {"type": "Discrete", "n": 4, "start": 0})
    env_id: str = "ocrl/ObjectGoal-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    history: int = 8
    width: int = 96
    num_layers: int = 3
    num_heads: int = 4
    mlp_ratio: int = 2
    reward_bins: int = 255
    reward_limit: float = 20.0  # bins span symlog(reward) in [-limit, limit]

    def __post_init__(self) -> None:
        if self.action_space.get("type") not in ACTION_TYPES:
            raise OcrlError(f"world models take Discrete or Box actions, not {self.action_space.get('type')}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if min(self.num_slots, self.slot_dim, self.history, self.width, self.num_layers) < 1:
            raise ValueError("num_slots, slot_dim, history, width and num_layers must be positive")
        if self.reward_bins < 2 or self.reward_limit <= 0:
            raise ValueError("reward_bins must be at least 2 and reward_limit positive")

    def sizes(self) -> dict[str, Any]:
        """The fields a caller chooses (``history``, ``width``, ...): all but :data:`DATA_FIELDS`."""
        return {key: value for key, value in self.to_dict().items() if key not in DATA_FIELDS}

    @property
    def action_size(self) -> int:
        """Discrete: number of actions; Box: number of action components."""
        if self.action_space["type"] == "Discrete":
            return int(self.action_space["n"])
        return int(np.prod(self.action_space["shape"]))


def action_space_of(config: WorldModelConfig) -> spaces.Space:
    """The gymnasium action space a world model acts in."""
    description = config.action_space
    if description["type"] == "Discrete":
        return spaces.Discrete(int(description["n"]), start=int(description.get("start", 0)))
    return spaces.Box(
        np.asarray(description["low"], np.float32), np.asarray(description["high"], np.float32), dtype=np.float32
    )


@dataclass
class WorldModelOutput:
    """Predictions from every step t of a history (B, T): codes of step t + 1, reward of
    t -> t + 1 (its expected value and the logits of its bins) and the logit that the episode
    continues after it."""

    codes: SlotCodes
    presence_logits: torch.Tensor  # (B, T, K)
    reward: torch.Tensor  # (B, T)
    reward_logits: torch.Tensor  # (B, T, reward_bins)
    continue_logits: torch.Tensor  # (B, T)


@dataclass
class AttentionCache:
    """Keys and values of the last ``history`` steps of B episodes, stepped together one step at
    a time. One ring buffer for all: call n writes every episode's step to slot ``n % history``
    (a plain slice, where a slot per episode would scatter); ``steps`` (B, history) says which
    step of its episode each slot holds (-1: none), which is all attention reads of the order."""

    keys: list[torch.Tensor]  # per layer (B, heads, history, K + 1, head width)
    values: list[torch.Tensor]
    steps: torch.Tensor  # (B, history) long
    calls: int = 0

    def clear(self, rows: torch.Tensor) -> None:
        """Forget the history of episodes ``rows`` (they start again)."""
        self.steps[rows] = -1


class AttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention takes an additive bias, and optionally reads
    and writes an attention cache."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        # exact GELU: on the CPU its tanh approximation is 4-5x slower (0.21 vs 0.045 ms for a
        # 512 x 256 input, one thread), a twentieth of an imagination step
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
        queries: int | None = None,
    ) -> torch.Tensor:
        """x (B, N, W); bias (B or 1, heads, N or 1, keys), -inf where attention is blocked.

        Without ``cache`` x attends to itself (keys = N). With ``cache`` = (keys, values, slot),
        buffers (B, heads, slots, N, W / heads): x's keys and values are written to ``slot``,
        then x attends to all slots (keys = slots * N). ``queries``: only the first ``queries``
        tokens are computed on (all give keys and values), e.g. the slots in a last layer.
        """
        batch, tokens, width = x.shape
        # view/permute rather than einops: imagination calls this thousands of times a second
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(batch, tokens, 3, self.num_heads, width // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        if cache is not None:
            keys, values, slot = cache
            keys[:, :, slot] = k
            values[:, :, slot] = v
            k, v = keys.flatten(2, 3), values.flatten(2, 3)
        if queries is not None:
            q, x, tokens = q[:, :, :queries], x[:, :queries], queries
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.mlp(self.norm2(x))


class OutcomeHead(nn.Module):
    """Reward bins and the continue logit of a transition from the codes it leads to: each pair
    of distinct slots (i, j) is encoded from both tokens, the offset and distance between their
    positions and the gap between them (distance minus both sizes: below 0 they overlap), and
    the pairs' features are max-pooled over present slots (see the module doc). The first layer
    could form the gap from the distance and the sizes in the tokens, but given directly it is
    learned faster (measured on true ObjectGoal states, 2 seeds: held-out reward precision /
    recall 0.93 / 0.97 against 0.90 / 0.90 without it, benchmarks/RESULTS.md)."""

    def __init__(self, config: WorldModelConfig, width: int = 64):
        super().__init__()
        token = config.slot_dim + 4 + 1
        # the pair MLP's first layer, split into its parts, each computed once per slot
        self.first = nn.Linear(token, width)
        self.second = nn.Linear(token, width, bias=False)
        self.relative = nn.Linear(4, width, bias=False)
        self.pair = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(width, width), nn.ReLU(inplace=True))
        self.out = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, config.reward_bins + 1))
        with torch.no_grad():  # before training: reward 0 (uniform over symmetric bins), episodes continue (0.95)
            self.out[-1].weight.zero_()
            self.out[-1].bias.zero_()
            self.out[-1].bias[-1] = 3.0

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """tokens (*batch, K, slot_dim + 5), position (*batch, K, 4), presence (*batch, K) ->
        (*batch, reward_bins + 1)."""
        xy = position[..., :2]
        offset = xy[..., None, :, :] - xy[..., :, None, :]
        distance = offset.norm(dim=-1, keepdim=True)
        size = position[..., 2]
        gap = distance - size[..., :, None, None] - size[..., None, :, None]
        relative = torch.cat([offset, distance, gap], -1)
        pairs = self.first(tokens)[..., :, None, :] + self.second(tokens)[..., None, :, :] + self.relative(relative)
        # a slot paired with itself sits at distance 0, which would look like a touch
        distinct = 1 - torch.eye(presence.shape[-1], device=presence.device)
        weight = presence[..., :, None] * presence[..., None, :] * distinct
        pooled = (self.pair(pairs) * weight[..., None]).amax(dim=(-3, -2))
        return self.out(pooled)


class SlotWorldModel(nn.Module):
    """See the module doc. Inputs and outputs are raw slot codes; actions are integer indices
    (Discrete) or float vectors (Box)."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.slot_in = nn.Linear(config.slot_dim + 4 + 1, width)
        if config.action_space["type"] == "Discrete":
            self.action_in = nn.Embedding(config.action_size, width)
        else:
            self.action_in = nn.Linear(config.action_size, width)
        self.token_type = nn.Parameter(torch.randn(2, width) * 0.02)  # slot token, action token
        self.distance_bias = nn.Parameter(
            torch.zeros(config.num_heads, config.history)
        )  # by step distance 0 .. history - 1
        self.blocks = nn.ModuleList(
            AttentionBlock(width, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.slot_out = nn.Linear(width, config.slot_dim + 4 + 1)
        nn.init.zeros_(self.slot_out.weight)  # starts as "nothing changes"
        nn.init.zeros_(self.slot_out.bias)
        self.outcome_head = OutcomeHead(config)
        self.register_buffer(
            "reward_bins",
            torch.linspace(-config.reward_limit, config.reward_limit, config.reward_bins),
            persistent=False,
        )
        self.register_buffer("slot_mean", torch.zeros(config.slot_dim))
        self.register_buffer("slot_std", torch.ones(config.slot_dim))
        if config.action_space["type"] == "Box":
            self.register_buffer(
                "action_low", torch.as_tensor(config.action_space["low"], dtype=torch.float32).flatten()
            )
            self.register_buffer(
                "action_high", torch.as_tensor(config.action_space["high"], dtype=torch.float32).flatten()
            )

    @property
    def device(self) -> torch.device:
        return self.token_type.device

    def set_slot_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise slots with these (D,) statistics of the training codes."""
        self.slot_mean.copy_(mean)
        self.slot_std.copy_(std.clamp_min(1e-3))

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, T) integer or (B, T, A) float actions -> (B, T, width)."""
        if isinstance(self.action_in, nn.Embedding):
            actions = actions.long() - int(self.config.action_space.get("start", 0))
            if actions.ndim == 3 and actions.shape[-1] == 1:
                actions = actions[..., 0]
            if bool((actions < 0).any()) or bool((actions >= self.config.action_size).any()):
                raise ValueError(f"actions must lie in the world model's Discrete({self.config.action_size}) space")
            return self.action_in(actions)
        actions = actions.float().flatten(2)
        if actions.shape[-1] != self.config.action_size:
            raise ValueError(
                f"actions have {actions.shape[-1]} components; the world model takes {self.config.action_size}"
            )
        # to [-1, 1] over the space's bounds (infinite bounds: left as they are)
        low, high = self.action_low, self.action_high
        finite = torch.isfinite(low) & torch.isfinite(high)
        scaled = 2 * (actions.clamp(low, high) - low) / (high - low).clamp_min(1e-6) - 1
        return self.action_in(torch.where(finite, scaled, actions))

    def _check(self, codes: SlotCodes) -> None:
        if (codes.num_slots, codes.slot_dim) != (self.config.num_slots, self.config.slot_dim):
            raise ValueError(
                f"codes hold {codes.num_slots} slots of {codes.slot_dim}; the world model takes {self.config.num_slots} of {self.config.slot_dim}"
            )

    def _slot_features(self, codes: SlotCodes) -> torch.Tensor:
        """(*batch, K, slot_dim + 5): standardised slot vector, position and presence."""
        normalised = (codes.slots - self.slot_mean) / self.slot_std
        return torch.cat([normalised, codes.position, codes.presence[..., None]], -1)

    def outcome(self, codes: SlotCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward logits (*batch, reward_bins) and continue logit (*batch) of the transitions
        that lead to ``codes``."""
        logits = self.outcome_head(self._slot_features(codes), codes.position, codes.presence)
        return logits[..., :-1], logits[..., -1]

    def _tokens(self, codes: SlotCodes, actions: torch.Tensor) -> torch.Tensor:
        """codes (B, T), actions (B, T, ...) -> tokens (B, T, K + 1, width)."""
        slot_tokens = self.slot_in(self._slot_features(codes)) + self.token_type[0]
        action_tokens = self.embed_actions(actions)[:, :, None] + self.token_type[1]
        return torch.cat([slot_tokens, action_tokens], 2)

    def _bias(self, distance: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """distance, allowed (B, Nq, Nk) -> attention bias (B, heads, Nq, Nk)."""
        bias = self.distance_bias[:, distance.clamp(0, self.config.history - 1)].movedim(0, 1)
        return bias.masked_fill(~allowed[:, None], float("-inf"))

    def _heads(self, codes: SlotCodes, hidden: torch.Tensor) -> WorldModelOutput:
        """Input codes (*batch) and final hidden tokens (*batch, K + 1 or K, width) -> predictions."""
        k, dim = self.config.num_slots, self.config.slot_dim
        hidden = self.norm(hidden)
        delta = self.slot_out(hidden[..., :k, :])
        slots = codes.slots + delta[..., :dim] * self.slot_std
        position = codes.position + delta[..., dim : dim + 4]
        presence = codes.presence.clamp(PRESENCE_MARGIN, 1 - PRESENCE_MARGIN)
        presence_logits = delta[..., -1] + torch.logit(presence)
        predicted = SlotCodes(slots, position, torch.sigmoid(presence_logits))
        reward_logits, continue_logits = self.outcome(predicted)
        reward = symexp((reward_logits.softmax(-1) * self.reward_bins).sum(-1))
        return WorldModelOutput(predicted, presence_logits, reward, reward_logits, continue_logits)

    def reward_loss(self, reward_logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """(*batch) cross-entropy of the reward bins against the two-hot code of ``rewards``."""
        target = two_hot(symlog(rewards), self.reward_bins)
        return -(target * reward_logits.log_softmax(-1)).sum(-1)

    def forward(self, codes: SlotCodes, actions: torch.Tensor) -> WorldModelOutput:
        """Predictions from every step of codes with batch dims (B, T) and actions (B, T) or
        (B, T, A); step t attends to steps t - history + 1 .. t of those given."""
        self._check(codes)
        steps = codes.batch_shape[1]
        tokens = self._tokens(codes, actions)
        step = torch.arange(steps, device=tokens.device).repeat_interleave(self.config.num_slots + 1)
        distance = (step[:, None] - step[None, :])[None]
        bias = self._bias(distance, (distance >= 0) & (distance < self.config.history))
        x = tokens.flatten(1, 2)
        for block in self.blocks:
            x = block(x, bias)
        return self._heads(codes, x.unflatten(1, (steps, self.config.num_slots + 1)))

    def new_cache(self, batch_size: int) -> AttentionCache:
        """An empty :class:`AttentionCache` for stepping ``batch_size`` episodes."""
        config = self.config
        shape = (batch_size, config.num_heads, config.history, config.num_slots + 1, config.width // config.num_heads)
        return AttentionCache(
            [torch.zeros(shape, device=self.device) for _ in self.blocks],
            [torch.zeros(shape, device=self.device) for _ in self.blocks],
            torch.full((batch_size, config.history), -1, dtype=torch.long, device=self.device),
        )

    def step(
        self, codes: SlotCodes, actions: torch.Tensor, cache: AttentionCache, steps: torch.Tensor
    ) -> WorldModelOutput:
        """One step of B episodes: codes (B,) of their step ``steps`` (B,) (0 at an episode's
        start), actions (B,) or (B, A). Caches this step, attending to it and the cached ones."""
        self._check(codes)
        x = self._tokens(codes._map(lambda tensor: tensor[:, None]), actions[:, None])[:, 0]  # (B, K + 1, width)
        slot = cache.calls % self.config.history
        cache.calls += 1
        cache.steps[:, slot] = steps
        distance = (steps[:, None] - cache.steps).repeat_interleave(self.config.num_slots + 1, 1)[
            :, None
        ]  # (B, 1, keys)
        allowed = (
            (distance >= 0)
            & (distance < self.config.history)
            & (cache.steps >= 0).repeat_interleave(self.config.num_slots + 1, 1)[:, None]
        )
        bias = self._bias(distance, allowed)  # (B, heads, 1, keys): the same for every new token
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            # the action token's output of the last layer predicts nothing
            queries = self.config.num_slots if layer == last else None
            x = block(x, bias, (cache.keys[layer], cache.values[layer], slot), queries)
        return self._heads(codes, x)


def build_world_model(config: WorldModelConfig) -> SlotWorldModel:
    return SlotWorldModel(config)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def two_hot(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(*batch) values -> (*batch, N) weights on the two bins around each value (clipped to the
    outer bins), summing to 1, whose weighted mean is the value."""
    values = values.clamp(bins[0], bins[-1])
    above = torch.searchsorted(bins, values.contiguous(), right=True).clamp(1, len(bins) - 1)
    low, high = bins[above - 1], bins[above]
    weight_high = (values - low) / (high - low)
    weights = torch.zeros(*values.shape, len(bins), device=values.device, dtype=values.dtype)
    weights.scatter_(-1, (above - 1)[..., None], (1 - weight_high)[..., None])
    return weights.scatter_add(-1, above[..., None], weight_high[..., None])


def slot_error(predicted: SlotCodes, target: SlotCodes, slot_std: torch.Tensor) -> torch.Tensor:
    """(*batch) mean squared error of standardised slot vectors (1.0: the spread of the data)."""
    return ((predicted.slots - target.slots) / slot_std).square().mean((-1, -2))


def position_error(predicted: SlotCodes, target: SlotCodes) -> torch.Tensor:
    """(*batch) mean squared error of positions (x, y, size, depth)."""
    return (predicted.position - target.position).square().mean((-1, -2))

"""The video slot model: where a frame becomes slots.

Per frame: encoder -> features; queries -> aggregator -> slots; decoder -> image (training, or
when masks are asked for). Queries come from the initializer on an episode's first frame
(through the SmoothSA preheater when there is one) and from the transitioner, applied to the
previous frame's slots, afterwards. First frames get ``iterations_first`` aggregator
iterations, later frames ``iterations_next`` (SmoothSA: 3 and 1, the same shared weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ocrl.perception.decoders import DecoderOutput
from ocrl.perception.frames import prepare_frames
from ocrl.slots import SlotCodes, codes_from_masks


@dataclass
class PerceptionState:
    """Recurrent state of a batch of streams.

    slots: (B, K, D) slots of each stream's last frame, on the model's device.
    started: (B,) bool on the CPU: whether the stream has had a frame since :meth:`init_state`
        (kept on the CPU because it decides control flow, and reading a GPU flag would sync).
    """

    slots: torch.Tensor
    started: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.slots.shape[0]


@dataclass
class ClipOutput:
    """What :meth:`VideoSlotModel.forward` returns for a clip of B videos of T frames.

    reconstructions (B, T, 3, H, W), masks (B, T, K, H, W), slots (B, T, K, D), attention
    (B, T, K, h, w) on the feature grid, position (B, T, K, 4) and presence (B, T, K) from the
    decoded masks, depth_map (B, T, H, W) (None while the model has never been trained with
    ground-truth depth and none is given); ``losses`` holds each loss unweighted
    (``reconstruction``; ``preheat`` for SmoothSA; ``depth``, the depth probe's, when
    ground-truth depth is given) and ``loss`` their weighted sum, the one to minimise.
    """

    reconstructions: torch.Tensor
    masks: torch.Tensor
    slots: torch.Tensor
    attention: torch.Tensor
    position: torch.Tensor
    presence: torch.Tensor
    depth_map: torch.Tensor | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None


def take_streams(state: Any, index: torch.Tensor) -> Any:
    """The streams ``index`` (1-D long) of a recurrent state: a dataclass whose tensor fields
    (nested dataclasses too) have the streams along dimension 0; None stays None. Works for every
    model's state, whatever device each tensor lives on."""
    if state is None:
        return None
    if is_dataclass(state):
        return replace(state, **{item.name: take_streams(getattr(state, item.name), index) for item in fields(state)})
    return state[index.to(state.device)]


def put_streams(state: Any, index: torch.Tensor, part: Any) -> Any:
    """``state`` with the streams ``index`` replaced by ``part`` (what :func:`take_streams` took,
    advanced); a field either side lacks (None) becomes None. ``state`` is not modified."""
    if state is None or part is None:
        return None
    if is_dataclass(state):
        return replace(
            state,
            **{
                item.name: put_streams(getattr(state, item.name), index, getattr(part, item.name))
                for item in fields(state)
            },
        )
    return state.index_copy(0, index.to(state.device), part.to(state.dtype))


def episode_starts(is_first: Any, state: Any) -> torch.Tensor:
    """(B,) CPU bool: which streams start an episode (asked, or never started); ``state`` has
    ``batch_size`` and ``started`` (B,) bool, as every perception model's state does."""
    batch = state.batch_size
    if is_first is None:
        first = torch.zeros(batch, dtype=torch.bool)
    else:
        first = torch.as_tensor(
            np.asarray(is_first.detach().cpu() if isinstance(is_first, torch.Tensor) else is_first), dtype=torch.bool
        )
        if first.dim() == 0:
            first = first.expand(batch)
        if tuple(first.shape) != (batch,):
            raise ValueError(
                f"is_first must be a bool or have shape ({batch},) like the batch, got {tuple(first.shape)}"
            )
    return first | ~state.started


class VideoSlotModel(nn.Module):
    """A recurrent video slot model built from its parts (see :func:`ocrl.perception.build_perception`).

    Parts (already built): ``encoder`` frames (B, 3, H, W) -> features (B, N, F);
    ``initializer`` (batch_size, conditions) -> queries (B, K, D); ``aggregator`` (queries,
    features, num_iterations) -> slots (B, K, D), attention (B, K, N); ``transitioner`` slots ->
    next queries; ``decoder`` slots -> :class:`DecoderOutput`; optional ``preheater`` (queries,
    features) -> queries (SmoothSA).

    Online use: ``state = model.init_state(B)``, then per env step
    ``codes, state = model.step(frames, state, is_first)``. Without ``return_masks`` the decoder
    does not run: x, y, size and presence come from the aggregator's last attention map on the
    feature grid (h, w = resolution / downsample), which is cheap, and depth from the decoder's
    linear depth readout. With ``return_masks=True`` they come from the decoded alpha masks at
    full resolution (sharper, slower). Use one mode consistently for an agent. Depth is
    :data:`~ocrl.slots.UNKNOWN_DEPTH` until the model has been trained with ground-truth depth.
    """

    def __init__(
        self,
        encoder: nn.Module,
        initializer: nn.Module,
        aggregator: nn.Module,
        transitioner: nn.Module,
        decoder: nn.Module,
        *,
        num_slots: int,
        slot_dim: int,
        resolution: int,
        iterations_first: int = 3,
        iterations_next: int = 1,
        preheater: nn.Module | None = None,
        preheat_loss_weight: float = 1.0,
        depth_loss_weight: float = 1.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.initializer = initializer
        self.preheater = preheater
        self.aggregator = aggregator
        self.transitioner = transitioner
        self.decoder = decoder
        self.num_slots = num_slots
        self.slot_dim = slot_dim
        self.resolution = resolution
        self.iterations_first = iterations_first
        self.iterations_next = iterations_next
        self.preheat_loss_weight = preheat_loss_weight
        self.depth_loss_weight = depth_loss_weight
        # Set once training has seen ground-truth depth; until then the depth head is untrained
        # and codes report UNKNOWN_DEPTH instead of its arbitrary output. Saved with the weights.
        self.register_buffer("depth_supervised", torch.zeros((), dtype=torch.bool))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_step(self, step: int) -> None:
        """Tell schedules (the Gaussian initializer's noise annealing) the training step."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_step"):
                module.set_step(step)

    def gradient_groups(self) -> list[list[nn.Parameter]]:
        """Parameters split by the losses that train them, for clipping each group on its own.

        With a SmoothSA preheater, the preheat loss alone trains the preheater (it reads
        detached features and the aggregator its detached output), and its gradients are far
        larger than the reconstruction's: clipped together, they would shrink every other
        module's update.
        """
        if self.preheater is None or not self.preheater.detach_features:
            return [list(self.parameters())]
        preheat = list(self.preheater.parameters())
        chosen = {id(parameter) for parameter in preheat}
        return [preheat, [parameter for parameter in self.parameters() if id(parameter) not in chosen]]

    def init_state(self, batch_size: int) -> PerceptionState:
        """A state for ``batch_size`` streams that have not started: their next frame is a first frame."""
        return PerceptionState(
            slots=torch.zeros(batch_size, self.num_slots, self.slot_dim, device=self.device),
            started=torch.zeros(batch_size, dtype=torch.bool),
        )

    def first_frame(
        self, features: torch.Tensor, conditions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """features (B, N, F) of episodes' first frames -> slots (B, K, D), attention (B, K, N),
        preheated queries (B, K, D) or None."""
        queries = self.initializer(features.shape[0], conditions)
        preheated = None
        if self.preheater is not None:
            preheated = self.preheater(queries, features)
            if bool(self.preheater.active):
                # SmoothSA Eq. 17: the aggregator starts from the stop-gradient preheated queries
                queries = preheated.detach()
        slots, attention = self.aggregator(queries, features, self.iterations_first)
        return slots, attention, preheated

    def next_frame(self, features: torch.Tensor, previous_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, N, F), previous frame's slots (B, K, D) -> slots (B, K, D), attention (B, K, N)."""
        return self.aggregator(self.transitioner(previous_slots), features, self.iterations_next)

    def _attention_maps(self, attention: torch.Tensor) -> torch.Tensor:
        side = self.encoder.grid_size
        return rearrange(attention, "... k (h w) -> ... k h w", h=side, w=side)

    @torch.no_grad()
    def step(
        self,
        frames: Any,
        state: PerceptionState,
        is_first: Any = None,
        return_masks: bool = False,
        conditions: Any = None,
    ) -> tuple[SlotCodes, PerceptionState]:
        """Encode one frame per stream.

        Args:
            frames: uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1], H = W = ``resolution``.
            state: from :meth:`init_state` or the previous call.
            is_first: (B,) bool (or one bool): streams whose episode starts with this frame.
                They get initializer queries and ``iterations_first`` iterations; the others get
                transitioned queries and ``iterations_next``. Streams that never started count
                as first. None: only those.
            return_masks: also decode, and fill ``masks`` (B, K, H, W) and ``depth_map``.
            conditions: (B, K, 4) boxes or positions for a conditional initializer.

        Returns:
            codes (:class:`~ocrl.slots.SlotCodes`, batch dims (B,)) and the new state.
        Runs without gradients (online use); train with :meth:`forward`.
        """
        frames = prepare_frames(frames, self.resolution, self.device)
        if frames.shape[0] != state.batch_size:
            raise ValueError(f"got {frames.shape[0]} frames for a state of {state.batch_size} streams")
        first = episode_starts(is_first, state)
        if conditions is not None:
            conditions = torch.as_tensor(conditions, device=self.device)
        features = self.encoder(frames)
        if bool(first.all()):
            slots, attention, _ = self.first_frame(features, conditions)
        elif not bool(first.any()):
            slots, attention = self.next_frame(features, state.slots)
        else:
            # Mixed batch: run the two paths on their own samples (they differ in queries and
            # in iteration count) and put the results back in batch order.
            starting = first.nonzero().squeeze(1).to(self.device)
            continuing = (~first).nonzero().squeeze(1).to(self.device)
            first_slots, first_attention, _ = self.first_frame(
                features[starting], None if conditions is None else conditions[starting]
            )
            next_slots, next_attention = self.next_frame(features[continuing], state.slots[continuing])
            slots = (
                first_slots.new_empty(state.slots.shape)
                .index_copy(0, starting, first_slots)
                .index_copy(0, continuing, next_slots)
            )
            attention = (
                first_attention.new_empty(features.shape[0], *first_attention.shape[1:])
                .index_copy(0, starting, first_attention)
                .index_copy(0, continuing, next_attention)
            )
        new_state = PerceptionState(slots=slots, started=torch.ones_like(state.started))
        depth_known = bool(self.depth_supervised)
        if return_masks:
            decoded = self.decoder(slots)
            position, presence = codes_from_masks(decoded.masks)
            masks, depth, depth_map = decoded.masks, decoded.slot_depth, decoded.depth_map
        else:
            position, presence = codes_from_masks(self._attention_maps(attention))
            masks, depth, depth_map = None, self.decoder.read_depth(slots) if depth_known else None, None
        if depth_known and depth is not None:
            position[..., 3] = depth.clamp(0, 1)
        depth_map = depth_map.clamp(0, 1) if depth_known and depth_map is not None else None
        return SlotCodes(slots.float(), position, presence, masks, depth_map), new_state

    def decode(self, slots: torch.Tensor) -> DecoderOutput:
        """slots (B, K, D) -> :class:`DecoderOutput`."""
        return self.decoder(slots)

    @torch.no_grad()
    def draw(self, codes: SlotCodes, frames: Any = None) -> DecoderOutput:
        """Frames (B,) drawn from codes alone, e.g. a world model's predictions. Every perception
        model has ``draw``; ``frames`` (a real frame of each scene) give what the codes do not
        hold, which here is nothing: the slots alone are decoded."""
        return self.decoder(codes.slots.to(self.device))

    def render(self, state: PerceptionState) -> DecoderOutput:
        """The last frame's masks (B, K, H, W) and reconstruction (B, 3, H, W), decoded from the
        state's slots (every perception model has ``render``; evaluation and pictures use it)."""
        return self.decoder(state.slots)

    def forward(
        self, clip: Any, depth: torch.Tensor | None = None, conditions: torch.Tensor | None = None
    ) -> ClipOutput:
        """Train on clips that each start an episode (their first frame is a first frame).

        Args:
            clip: uint8 (B, T, H, W, 3) or float (B, T, 3, H, W) in [0, 1].
            depth: optional ground-truth depth (B, T, H, W), larger is farther, any units; each
                frame is divided by its maximum to give relative depth (far end 1).
            conditions: (B, K, 4) for a conditional initializer.

        Gives the same slots, masks and codes as :meth:`step` frame by frame (in eval mode),
        but batches the encoder and decoder over all frames.
        """
        frames = prepare_frames(clip, self.resolution, self.device, leading_dims=2)
        batch, length = frames.shape[:2]
        if depth is not None:
            depth = torch.as_tensor(depth, device=self.device, dtype=torch.float32)
            if tuple(depth.shape) != (batch, length, self.resolution, self.resolution):
                raise ValueError(
                    f"depth must be (B, T, H, W) = {(batch, length, self.resolution, self.resolution)}, got {tuple(depth.shape)}"
                )
            if not getattr(self.decoder, "predict_depth", False):
                raise ValueError(
                    "ground-truth depth was given but the decoder predicts no depth (decoder.predict_depth=False)"
                )
        features = rearrange(
            self.encoder(rearrange(frames, "b t c h w -> (b t) c h w")), "(b t) n f -> b t n f", b=batch
        )
        slots, attention, preheated = self.first_frame(features[:, 0], conditions)
        all_slots, all_attention = [slots], [attention]
        for index in range(1, length):
            slots, attention = self.next_frame(features[:, index], slots)
            all_slots.append(slots)
            all_attention.append(attention)
        slots = torch.stack(all_slots, dim=1)
        attention = torch.stack(all_attention, dim=1)
        decoded = self.decoder(rearrange(slots, "b t k d -> (b t) k d"))
        unflatten = lambda tensor: None if tensor is None else rearrange(tensor, "(b t) ... -> b t ...", b=batch)
        reconstructions, masks, slot_depth, depth_map = map(
            unflatten, (decoded.reconstruction, decoded.masks, decoded.slot_depth, decoded.depth_map)
        )
        if depth is not None and self.training:
            self.depth_supervised.fill_(True)
        depth_known = (depth is not None or bool(self.depth_supervised)) and slot_depth is not None
        position, presence = codes_from_masks(masks.detach())
        if depth_known:
            position[..., 3] = slot_depth.detach().clamp(0, 1)

        losses = {"reconstruction": F.mse_loss(reconstructions, frames)}
        loss = losses["reconstruction"]
        if preheated is not None:
            # SmoothSA Eq. 18: the preheater learns to predict the slots it precedes (self-distillation)
            losses["preheat"] = F.mse_loss(preheated.float(), all_slots[0].detach().float())
            loss = loss + self.preheat_loss_weight * losses["preheat"]
        if depth is not None:
            relative = depth / depth.flatten(2).amax(dim=-1).clamp_min(1e-6)[..., None, None]
            # A probe: each slot's depth is fitted, from the detached slot, to the ground truth
            # under its detached mask (minimised by the mask-weighted mean depth), so depth
            # supervision does not shape the slots or the masks.
            probe = self.decoder.read_depth(slots.detach())
            losses["depth"] = (masks.detach() * (probe[..., None, None] - relative[:, :, None]) ** 2).sum(dim=2).mean()
            loss = loss + self.depth_loss_weight * losses["depth"]
        return ClipOutput(
            reconstructions,
            masks,
            slots,
            self._attention_maps(attention),
            position,
            presence,
            depth_map.detach().clamp(0, 1) if depth_known else None,
            losses,
            loss,
        )

"""Loci-Segmented: where a frame becomes slots in Loci-s.

Per frame, one *pass*: decode the slots predicted for this frame (their masks, RGB and the
composed frame are the encoder's slot-wise inputs); seed empty slots at random positions in the
part of the foreground that no slot explains (:meth:`LociModel.seed`); encode every slot
(:class:`~ocrl.perception.loci.encoder.ObjectEncoder`); fuse observation and prediction with
the percept gate (new slots take the observation); decode the result; drop slots that hold no
foreground (:meth:`LociModel.prune`). On an episode's first frame the pass is repeated
(``warmup_*`` passes, encoder and decoder only, no gate). Then the transition predicts the next
frame's codes.

Training runs in three stages (paper Sec. 3.4-3.5, :mod:`ocrl.perception.loci.training`):
``"background"`` (uncertainty network + background autoencoder), ``"objects"`` (single objects
with ground-truth masks: encoder and decoder), ``"full"`` (videos, self-supervised).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.perception.frames import prepare_frames
from ocrl.perception.loci.background import BackgroundModule, BackgroundOutput
from ocrl.perception.loci.config import LociConfig
from ocrl.perception.loci.decoder import CascadedDecoder, Composition, SlotImages, compose, composed_rgb
from ocrl.perception.loci.encoder import ObjectEncoder
from ocrl.perception.loci.layers import gaussian_maps, l0_surrogate
from ocrl.perception.loci.transition import PerceptGate, SlotTransition
from ocrl.perception.model import episode_starts, put_streams, take_streams
from ocrl.slots import PRESENCE_AREA, SlotCodes, pixel_coordinates

STAGES = ("background", "objects", "full")
# size code a seeded slot starts with (about a small object's; the encoder measures the real one)
SEED_SIZE = 0.1


@dataclass
class LociSlots:
    """gestalt (B, K, D) in [0, 1], position (B, K, 4) = (x, y, size, priority logit),
    occupancy (B, K) in {0, 1} (float)."""

    gestalt: torch.Tensor
    position: torch.Tensor
    occupancy: torch.Tensor


@dataclass
class LociState:
    """Recurrent state of B streams.

    prior: the slots predicted for the next frame; posterior: the slots of the last frame;
    hidden (B, K, L, H): GateL0RD states; started (B,) bool on the CPU. For
    :meth:`LociModel.render` (None before the first frame): the last frame's composition without
    its RGB, the posterior's slot images without RGB, and the background's RGB (B, 3, H, W).
    """

    prior: LociSlots
    posterior: LociSlots
    hidden: torch.Tensor
    started: torch.Tensor
    composition: Composition | None = None
    images: SlotImages | None = None
    background_rgb: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def slots(self) -> torch.Tensor:
        """(B, K, D): the last frame's Gestalt codes (zero for unoccupied slots)."""
        return self.posterior.gestalt * self.posterior.occupancy[..., None]


@dataclass
class LociRendering:
    """What the model makes of a frame: masks (B, K, H, W) the slots' visible masks,
    background_mask (B, H, W) the rest (together they sum to 1), reconstruction (B, 3, H, W),
    depth_map (B, H, W)."""

    masks: torch.Tensor
    background_mask: torch.Tensor
    reconstruction: torch.Tensor
    depth_map: torch.Tensor


@dataclass
class Pass:
    """One pass over a frame: the fused slots, their decoding and composition, the decoding of
    the prior, the percept gates (B, K, 2) and which slots were seeded (B, K) bool."""

    slots: LociSlots
    images: SlotImages
    composition: Composition
    prior_composition: Composition
    alpha: torch.Tensor
    fresh: torch.Tensor


@dataclass
class LociOutput:
    """``losses`` holds each loss term unweighted, ``loss`` the weighted sum to minimise;
    ``rendering`` (B, T, ...) for the ``"full"`` stage."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    rendering: LociRendering | None = None


def relative_depth(depth: torch.Tensor) -> torch.Tensor:
    """Ground-truth depth (..., H, W), larger is farther, to relative depth: each frame divided by its maximum."""
    return depth / depth.flatten(-2).amax(dim=-1).clamp_min(1e-6)[..., None, None]


class LociModel(nn.Module):
    """Loci-s built from its parts (see :func:`ocrl.perception.loci.build_loci`).

    Online use, as every perception model: ``state = model.init_state(B)``, then per env step
    ``codes, state = model.step(frames, state, is_first)``. Codes: ``slots`` the Gestalt codes,
    ``position`` (x, y, size, depth = sigmoid(priority)), ``presence`` the slot's occupancy times
    how much object mask it decodes, optional ``masks`` (visible masks; the background, which is
    not a slot, holds the rest) and ``depth_map`` (the composed depth).
    """

    def __init__(
        self,
        background: BackgroundModule,
        encoder: ObjectEncoder,
        decoder: CascadedDecoder,
        gate: PerceptGate,
        transition: SlotTransition,
        config: LociConfig,
    ):
        super().__init__()
        self.background = background
        self.encoder = encoder
        self.decoder = decoder
        self.gate = gate
        self.transition = transition
        self.config = config
        self.num_slots = config.num_slots
        self.slot_dim = config.slot_dim
        self.resolution = config.resolution
        self.register_buffer("depth_supervised", torch.zeros((), dtype=torch.bool))
        self._generator: torch.Generator | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_step(self, step: int) -> None:
        """Nothing in Loci-s follows the training step (the stages are chosen by the trainer)."""

    # -------------------------------------------------------------------------------------
    # Parts of a pass

    def empty_slots(self, batch: int) -> LociSlots:
        device = self.device
        position = torch.zeros(batch, self.num_slots, 4, device=device)
        position[..., 2] = SEED_SIZE
        return LociSlots(
            torch.zeros(batch, self.num_slots, self.slot_dim, device=device),
            position,
            torch.zeros(batch, self.num_slots, device=device),
        )

    def decode(
        self, slots: LociSlots, background: BackgroundOutput, rgb: bool = True
    ) -> tuple[SlotImages, Composition]:
        """Decode the occupied slots and compose them with the background (``rgb=False``: masks
        and depth only, the composition without its RGB).

        Unoccupied slots are not decoded: they get no mask (logits -20), depth 1 and black RGB.
        Nothing sees what they would decode: the composition gives them no weight, the encoder's
        slot inputs and the codes' presence are multiplied by the occupancy, and pruning keeps
        only occupied slots.
        """
        batch, size = slots.occupancy.shape[0], self.resolution
        occupied = slots.occupancy > 0
        if bool(occupied.all()):
            images = self.decoder(slots.gestalt, slots.position, rgb)
        else:
            device = slots.occupancy.device
            images = SlotImages(
                torch.full((batch, self.num_slots, size, size), -20.0, device=device),
                torch.ones(batch, self.num_slots, size, size, device=device),
                torch.zeros(batch, self.num_slots, 3, size, size, device=device) if rgb else None,
            )
            if bool(occupied.any()):
                decoded = self.decoder(slots.gestalt[occupied][None], slots.position[occupied][None], rgb)
                images = SlotImages(
                    *(
                        None if part is None else whole.index_put((occupied,), part[0])
                        for whole, part in zip(_values(images), _values(decoded))
                    )
                )
        return images, self.compose(images, slots.occupancy, background)

    def compose(self, images: SlotImages, occupancy: torch.Tensor, background: BackgroundOutput) -> Composition:
        foreground = background.foreground if self.config.composition == "uncertainty" else None
        return compose(
            images, occupancy, background.rgb, background.depth, self.config.composition_temperature, foreground
        )

    def seed(
        self, slots: LociSlots, composition: Composition, foreground: torch.Tensor
    ) -> tuple[LociSlots, torch.Tensor]:
        """Place unoccupied slots at random positions in the unexplained foreground (Sec. 3.6).

        The residual ``foreground * uncovered`` (foreground that no slot's object mask reaches) is thresholded at 1/2 and sampled uniformly, one slot after another; after
        each sample the connected part of the residual around it (up to ``resolution / 4``
        pixels away) is removed, so that one pass does not put two slots on one object; a part
        smaller than ``assignment.min_foreground`` of the image gets no slot. Objects that touch
        form one part: the next pass seeds the one its slot did not explain. Returns the slots
        and which were seeded (B, K) bool. Slots beyond the first few parts stay empty when the
        sampled parts are fragments; the next pass tries again.
        """
        settings = self.config.assignment
        size = self.resolution
        residual = (foreground[:, 0].detach() * composition.uncovered.detach() > 0.5).float()
        minimum = settings.min_foreground * size * size
        x, y = pixel_coordinates(size, size, residual.device)
        occupancy, position = slots.occupancy.clone(), slots.position.clone()
        gestalt = slots.gestalt.clone()
        fresh = torch.zeros_like(occupancy, dtype=torch.bool)
        for k in range(self.num_slots):
            flat = residual.flatten(1)
            wanted = (occupancy[:, k] <= 0) & (flat.sum(dim=1) > minimum)
            if not bool(wanted.any()):
                continue
            index = torch.multinomial(flat + 1e-12, 1, generator=self._sampling_generator(flat.device))[:, 0]
            # grow the sampled pixel through the residual: its connected part (flood fill), only
            # in the streams that want a slot, until it stops growing
            rows = wanted.nonzero()[:, 0]
            inside = residual[rows, None]
            region = torch.zeros_like(inside).flatten(1).scatter_(1, index[rows, None], 1.0).view_as(inside)
            for _ in range(size // 4):
                grown = F.max_pool2d(region, 3, stride=1, padding=1) * inside
                if torch.equal(grown, region):
                    break
                region = grown
            residual = residual.index_put((rows,), residual[rows] * (1 - region[:, 0]))
            # a fragment (an edge that the slots' masks miss) is dropped, not given a slot
            wanted = wanted.index_put((rows,), region.flatten(1).sum(dim=1) >= minimum)
            seed_x, seed_y = x[index % size], y[index // size]
            new_position = torch.stack(
                [seed_x, seed_y, torch.full_like(seed_x, SEED_SIZE), torch.zeros_like(seed_x)], dim=-1
            )
            position[:, k] = torch.where(wanted[:, None], new_position, position[:, k])
            gestalt[:, k] = torch.where(wanted[:, None], torch.zeros_like(gestalt[:, k]), gestalt[:, k])
            occupancy[:, k] = torch.where(wanted, torch.ones_like(occupancy[:, k]), occupancy[:, k])
            fresh[:, k] = wanted
        return LociSlots(gestalt, position, occupancy), fresh

    def _sampling_generator(self, device: torch.device) -> torch.Generator | None:
        """Training samples from the global RNG; :meth:`step` from the model's own generator,
        reset by :meth:`init_state`, so that an evaluation is repeatable."""
        if self.training or self._generator is None:
            return None
        if self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.config.assignment.seed)
        return self._generator

    def prune(
        self,
        slots: LociSlots,
        images: SlotImages,
        composition: Composition,
        foreground: torch.Tensor,
        checked: torch.Tensor,
        regularise: bool,
        fresh: torch.Tensor | None = None,
        unexplained: torch.Tensor | None = None,
    ) -> LociSlots:
        """Nullify slots that hold no foreground, and (``regularise``) duplicates.

        A ``checked`` slot (B, K) bool is kept when its visible mask covers at least a quarter of
        ``assignment.min_foreground`` of the image and ``assignment.keep_overlap`` of it lies on
        ``foreground`` (B, 1, H, W) or, for a slot seeded in this pass (``fresh``), on
        ``unexplained`` (the foreground the other slots left): a new slot must take on something
        new. Any slot whose object mask has vanished is dropped. Regularised slots (the paper's
        regularised initial slots, here applied in every pass): two slots hold one object when
        they are closer than ``similar_distance`` and their Gestalt codes correlate above
        ``similar_correlation``, or when their object masks overlap with an IoU above 1/2 (two
        seeds in one object both decode the whole object); the one with less visible mass is
        nullified.
        """
        settings = self.config.assignment
        weights = composition.weights.detach()
        pixels = float(self.resolution**2)
        mass = weights.sum(dim=(-2, -1))
        on_foreground = (weights * foreground.detach()).sum(dim=(-2, -1)) / mass.clamp_min(1e-6)
        if fresh is not None and unexplained is not None:
            on_new = (weights * unexplained.detach()).sum(dim=(-2, -1)) / mass.clamp_min(1e-6)
            on_foreground = torch.where(fresh, on_new, on_foreground)
        holds = (mass > settings.min_foreground * pixels / 4) & (on_foreground > settings.keep_overlap)
        alive = torch.sigmoid(images.mask_logits.detach()).sum(dim=(-2, -1)) > 1.0
        keep = (slots.occupancy > 0) & alive & (holds | ~checked)
        if regularise:
            centred = slots.gestalt.detach() - slots.gestalt.detach().mean(dim=-1, keepdim=True)
            centred = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            correlation = centred @ centred.transpose(1, 2)
            distance = torch.cdist(slots.position[..., :2].detach(), slots.position[..., :2].detach())
            both = keep[:, :, None] & keep[:, None, :]
            masks = torch.sigmoid(images.mask_logits.detach()).flatten(2)
            overlap = masks @ masks.transpose(1, 2)
            areas = masks.sum(dim=-1)
            mask_iou = overlap / (areas[:, :, None] + areas[:, None, :] - overlap).clamp_min(1e-6)
            alike = (distance < settings.similar_distance) & (correlation > settings.similar_correlation)
            similar = both & (alike | (mask_iou > 0.5))
            order = torch.arange(self.num_slots, device=mass.device)
            # j beats k when it has more visible mass (ties: the lower index)
            beats = (mass[:, :, None] > mass[:, None, :]) | (
                (mass[:, :, None] == mass[:, None, :]) & (order[:, None] < order[None, :])
            )
            keep = keep & ~(similar & beats).any(dim=1)
        return replace(slots, occupancy=keep.to(slots.occupancy.dtype))

    def encoder_inputs(
        self,
        frames: torch.Tensor,
        background: BackgroundOutput,
        slots: LociSlots,
        images: SlotImages,
        composition: Composition,
        fresh: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-level inputs (B, 5, H, W) and slot-wise inputs (B, K, 7, H, W) (Sec. 2): the
        frame, the error of the composed prediction and the foreground; per slot its position
        Gaussian, visible mask, object mask, RGB and the others' visible masks. Seeded slots see
        only their Gaussian (what they would decode is not theirs yet)."""
        error = (frames - composition.rgb).abs().mean(dim=1, keepdim=True)
        frame_inputs = torch.cat([frames, error, background.foreground], dim=1)
        known = (slots.occupancy * (~fresh).float())[..., None, None]
        visible = composition.weights * known
        object_mask = torch.sigmoid(images.mask_logits) * known
        rgb = images.rgb * object_mask[:, :, None]
        others = composition.weights.sum(dim=1, keepdim=True) - composition.weights
        gaussian = gaussian_maps(slots.position, self.resolution)
        slot_inputs = torch.cat(
            [gaussian[:, :, None], visible[:, :, None], object_mask[:, :, None], rgb, others[:, :, None]], dim=2
        )
        return frame_inputs, slot_inputs

    def one_pass(
        self,
        frames: torch.Tensor,
        background: BackgroundOutput,
        prior: LociSlots,
        last_position: torch.Tensor,
        use_gate: bool,
        check_all: bool,
        rgb: bool = True,
    ) -> Pass:
        """One pass over a frame (see the module docstring). ``use_gate``: fuse with the prior
        through the percept gate (later frames) or take the observation (warm-up passes);
        ``check_all``: every slot must hold foreground to survive (warm-up), or only new ones;
        ``rgb=False``: the fused slots' RGB is not decoded (only a rendering would show it)."""
        prior_images, prior_composition = self.decode(prior, background)
        seeded, fresh = self.seed(prior, prior_composition, background.foreground)
        frame_inputs, slot_inputs = self.encoder_inputs(
            frames, background, seeded, prior_images, prior_composition, fresh
        )
        gestalt, position = self.encoder(frame_inputs, slot_inputs, seeded.gestalt)
        if use_gate:
            alpha = self.gate(gestalt, position, seeded.gestalt, seeded.position, last_position)
            alpha = torch.where(fresh[..., None], torch.ones_like(alpha), alpha)
        else:
            alpha = torch.ones(*gestalt.shape[:2], 2, device=gestalt.device)
        occupied = seeded.occupancy[..., None]
        fused = LociSlots(
            (alpha[..., :1] * gestalt + (1 - alpha[..., :1]) * seeded.gestalt) * occupied,
            torch.where(
                occupied > 0, alpha[..., 1:] * position + (1 - alpha[..., 1:]) * seeded.position, seeded.position
            ),
            seeded.occupancy,
        )
        images, composition = self.decode(fused, background, rgb)
        checked = torch.ones_like(fresh) if check_all else fresh
        regularise = self.config.assignment.kind == "regularised"
        unexplained = background.foreground * prior_composition.uncovered[:, None]
        kept = self.prune(fused, images, composition, background.foreground, checked, regularise, fresh, unexplained)
        if not torch.equal(kept.occupancy, fused.occupancy):
            composition = self.compose(images, kept.occupancy, background)
        return Pass(kept, images, composition, prior_composition, alpha, fresh)

    def frame(
        self,
        frames: torch.Tensor,
        background: BackgroundOutput,
        prior: LociSlots,
        last_position: torch.Tensor,
        hidden: torch.Tensor,
        warmup: int,
        rgb: bool = True,
    ) -> tuple[list[Pass], LociSlots, torch.Tensor, torch.Tensor]:
        """All passes over one frame, then the transition: (passes, next prior, new hidden,
        GateL0RD gates). ``warmup`` > 0 marks an episode's first frame (all streams first):
        ``warmup`` passes without the gate, starting from no slots. ``rgb``: as in :meth:`one_pass`."""
        passes = []
        if warmup > 0:
            slots = self.empty_slots(frames.shape[0])
            for _ in range(warmup):
                passes.append(
                    self.one_pass(frames, background, slots, last_position, use_gate=False, check_all=True, rgb=rgb)
                )
                slots = passes[-1].slots
            hidden = torch.zeros_like(hidden)
        else:
            passes.append(
                self.one_pass(frames, background, prior, last_position, use_gate=True, check_all=False, rgb=rgb)
            )
            # seeded slots hold a new object: their recurrent state starts afresh
            hidden = hidden * (~passes[-1].fresh).float()[..., None, None]
        posterior = passes[-1].slots
        gestalt, position, hidden, gates = self.transition(posterior.gestalt, posterior.position, hidden)
        occupied = posterior.occupancy[..., None]
        prior = LociSlots(
            gestalt * occupied, torch.where(occupied > 0, position, posterior.position), posterior.occupancy
        )
        hidden = hidden * occupied[..., None]
        return passes, prior, hidden, gates

    # -------------------------------------------------------------------------------------
    # Online use

    def init_state(self, batch_size: int) -> LociState:
        """A state for ``batch_size`` streams that have not started; also resets the sampling
        generator of slot assignment, so that evaluations repeat."""
        device = self.device
        self._generator = torch.Generator(device=device).manual_seed(self.config.assignment.seed)
        hidden = torch.zeros(
            batch_size, self.num_slots, self.transition.num_layers, self.transition.hidden_dim, device=device
        )
        empty = self.empty_slots(batch_size)
        return LociState(empty, empty, hidden, torch.zeros(batch_size, dtype=torch.bool))

    def _codes(self, last: Pass, return_masks: bool) -> SlotCodes:
        slots = last.slots
        occupied = slots.occupancy
        position = torch.cat([slots.position[..., :3], torch.sigmoid(slots.position[..., 3:])], dim=-1)
        object_mass = torch.sigmoid(last.images.mask_logits).mean(dim=(-2, -1))
        presence = occupied * (1 - torch.exp(-object_mass / PRESENCE_AREA))
        masks = last.composition.weights if return_masks else None
        depth_map = last.composition.depth.clamp(0, 1) if return_masks and bool(self.depth_supervised) else None
        return SlotCodes(
            (slots.gestalt * occupied[..., None]).float(), position.float(), presence.float(), masks, depth_map
        )

    @torch.no_grad()
    def step(
        self,
        frames: Any,
        state: LociState,
        is_first: Any = None,
        return_masks: bool = False,
        conditions: Any = None,
    ) -> tuple[SlotCodes, LociState]:
        """Encode one frame per stream: uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1].

        ``is_first`` (B,) bool or one bool: streams whose episode starts here (they get
        ``assignment.warmup_eval`` warm-up passes from no slots); streams that never started
        count as first. ``return_masks`` fills ``masks`` and ``depth_map``. Loci-s assigns its
        slots itself: ``conditions`` are refused.
        """
        if conditions is not None:
            raise ValueError("Loci-s assigns slots without ground truth; it takes no conditions")
        frames = prepare_frames(frames, self.resolution, self.device)
        if frames.shape[0] != state.batch_size:
            raise ValueError(f"got {frames.shape[0]} frames for a state of {state.batch_size} streams")
        first = episode_starts(is_first, state)
        background = self.background(frames)
        warmup = max(1, self.config.assignment.warmup_eval)
        groups = [(first, warmup), (~first, 0)]
        prior, posterior, hidden = state.prior, state.posterior, state.hidden.clone()
        codes_parts, composition_parts, image_parts = [], [], []
        for members, passes in groups:
            if not bool(members.any()):
                continue
            index = members.nonzero().squeeze(1).to(self.device)
            part_passes, part_prior, part_hidden, _ = self.frame(
                frames[index],
                take_streams(background, index),
                take_streams(prior, index),
                posterior.position[index],
                hidden[index],
                passes,
                rgb=False,
            )
            last = part_passes[-1]
            prior = put_streams(prior, index, part_prior)
            posterior = put_streams(posterior, index, last.slots)
            hidden = hidden.index_copy(0, index, part_hidden)
            codes_parts.append((index, self._codes(last, return_masks)))
            composition_parts.append((index, last.composition))
            image_parts.append((index, last.images))
        batch = state.batch_size
        codes = _merge(codes_parts, batch)
        composition, images = _merge(composition_parts, batch), _merge(image_parts, batch)
        started = torch.ones_like(state.started)
        return codes, LociState(prior, posterior, hidden, started, composition, images, background.rgb)

    @torch.no_grad()
    def draw(self, codes: SlotCodes, frames: Any) -> LociRendering:
        """Frames (B,) drawn from codes alone, e.g. a world model's predictions, over the
        background of ``frames`` (uint8 (B, H, W, 3) or float (B, 3, H, W): a real frame of each
        scene, e.g. the last one observed; the codes hold no background). Slots of presence
        above 0.5 are decoded and composed by their own masks: the uncertainty map that splits
        a real frame needs that frame."""
        frames = prepare_frames(frames, self.resolution, self.device)
        codes = codes.to(self.device)
        background = self.background(frames)
        priority = torch.logit(codes.position[..., 3:].clamp(1e-4, 1 - 1e-4))
        slots = LociSlots(
            codes.slots.clamp(0, 1),
            torch.cat([codes.position[..., :3], priority], dim=-1),
            (codes.presence > 0.5).float(),
        )
        images, composition = self.decode(slots, replace(background, foreground=None))
        return LociRendering(composition.weights, composition.background, composition.rgb, composition.depth)

    def render(self, state: LociState) -> LociRendering:
        """The last frame's visible masks, background mask, reconstruction and depth map.

        :meth:`step` does not decode the slots' RGB (nothing in the codes needs it); the
        reconstruction decodes it here, for the occupied slots, from the stored masks and depth.
        """
        if state.composition is None or state.images is None or state.background_rgb is None:
            raise ValueError("render needs a state that has seen a frame")
        composition, images, slots = state.composition, state.images, state.posterior
        rgb = torch.zeros(*images.depth.shape[:2], 3, *images.depth.shape[2:], device=images.depth.device)
        occupied = slots.occupancy > 0
        if bool(occupied.any()):
            rgb[occupied] = self.decoder.decode_rgb(
                slots.gestalt[occupied], slots.position[occupied], images.mask_logits[occupied], images.depth[occupied]
            )
        reconstruction = composed_rgb(composition.weights, composition.background, rgb, state.background_rgb)
        return LociRendering(composition.weights, composition.background, reconstruction, composition.depth)

    # -------------------------------------------------------------------------------------
    # Training

    def forward(
        self,
        frames: torch.Tensor,
        stage: str = "full",
        masks: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        foreground: torch.Tensor | None = None,
    ) -> LociOutput:
        """Training losses of one stage.

        Args:
            frames: float (B, T, 3, H, W) in [0, 1] (T = 1 for the first two stages).
            stage: ``"background"``, ``"objects"`` or ``"full"`` (the default: the whole model
                on videos, self-supervised, as ``model(frames)`` trains every perception model).
            masks: ground-truth instance ids (B, T, H, W) (``"objects"`` needs them).
            depth: optional ground-truth depth (B, T, H, W), larger is farther.
            foreground: the uncertainty network's target (B, T, H, W) in [0, 1]
                (``"background"``; default ``masks > 0``).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        frames = prepare_frames(frames, self.resolution, self.device, leading_dims=2)
        if depth is not None:
            depth = relative_depth(depth.to(self.device, torch.float32))
            if self.training:
                self.depth_supervised.fill_(True)
        if stage == "background":
            if foreground is None:
                if masks is None:
                    raise ValueError("the background stage needs masks or a foreground target")
                foreground = (masks > 0).float()
            return self._background_loss(
                frames.flatten(0, 1),
                foreground.to(self.device).flatten(0, 1).float(),
                None if depth is None else depth.flatten(0, 1),
            )
        if stage == "objects":
            if masks is None:
                raise ValueError("the objects stage needs ground-truth masks")
            return self._object_loss(
                frames.flatten(0, 1),
                masks.to(self.device).flatten(0, 1),
                None if depth is None else depth.flatten(0, 1),
            )
        return self._full_loss(frames, depth)

    def _background_loss(
        self, frames: torch.Tensor, foreground: torch.Tensor, depth: torch.Tensor | None
    ) -> LociOutput:
        target = foreground[:, None]
        output = self.background(frames, mask=target)
        weight = 1 - target
        losses = {
            "foreground": F.binary_cross_entropy_with_logits(output.foreground_logits, target),
            "background_rgb": ((output.rgb - frames) ** 2 * weight).sum() / (3 * weight.sum()).clamp_min(1.0),
        }
        if depth is not None:
            losses["background_depth"] = ((output.depth - depth[:, None]) ** 2 * weight).sum() / weight.sum().clamp_min(
                1.0
            )
        return LociOutput(sum(losses.values()), losses)

    def _object_loss(self, frames: torch.Tensor, masks: torch.Tensor, depth: torch.Tensor | None) -> LociOutput:
        """Single-object pretraining (Sec. 3.5): per frame up to K objects, each its own slot
        that sees only its Gaussian, placed at a random point between the object's centre and a
        random pixel of it; the slot must decode that object's mask, depth and RGB."""
        batch, size = frames.shape[0], self.resolution
        with torch.no_grad():
            background = self.background(frames)
            ids = int(masks.max())
            if ids == 0:
                raise ValueError("the objects stage got frames without any object")
            one_hot = F.one_hot(masks.long(), ids + 1)[..., 1:].permute(0, 3, 1, 2).float()  # (B, N, H, W)
            area = one_hot.sum(dim=(-2, -1))
            score = torch.rand_like(area) * (area >= 4)
            count = min(self.num_slots, ids)
            chosen = score.topk(count, dim=1).indices
            valid = torch.gather(area, 1, chosen) >= 4
            target = torch.gather(one_hot, 1, chosen[..., None, None].expand(-1, -1, size, size))  # (B, M, H, W)
            x, y = pixel_coordinates(size, size, frames.device)
            mass = target.sum(dim=(-2, -1)).clamp_min(1.0)
            centre_x = (target.sum(dim=-2) * x).sum(-1) / mass
            centre_y = (target.sum(dim=-1) * y).sum(-1) / mass
            var = ((target.sum(dim=-2) * x**2).sum(-1) + (target.sum(dim=-1) * y**2).sum(-1)) / mass
            spread = ((var - centre_x**2 - centre_y**2).clamp_min(0) / 2).sqrt()
            flat = target.flatten(0, 1).flatten(1)
            pixel = torch.multinomial(flat + (flat.sum(dim=1, keepdim=True) == 0).float(), 1)[:, 0].view(batch, count)
            blend = torch.rand_like(centre_x)
            seed_x = centre_x + blend * (x[pixel % size] - centre_x)
            seed_y = centre_y + blend * (y[pixel // size] - centre_y)
            seeds = torch.stack([seed_x, seed_y, torch.full_like(seed_x, SEED_SIZE), torch.zeros_like(seed_x)], dim=-1)
            error = (frames - background.rgb).abs().mean(dim=1, keepdim=True)
            frame_inputs = torch.cat([frames, error, background.foreground], dim=1)
            slot_inputs = torch.zeros(batch, count, 7, size, size, device=frames.device)
            slot_inputs[:, :, 0] = gaussian_maps(seeds, size)
        gestalt, position = self.encoder(frame_inputs, slot_inputs, gestalt_like(self, batch, count))
        images = self.decoder(gestalt, position)
        weight = valid.float()[..., None, None]
        per_pixel = F.binary_cross_entropy_with_logits(images.mask_logits, target, reduction="none")
        # objects cover a few percent of the frame: a per-pixel loss alone first learns "no
        # object anywhere"; the Dice term counts the object's own pixels as much as the rest
        probability = torch.sigmoid(images.mask_logits)
        dice = 1 - (2 * (probability * target).sum(dim=(-2, -1)) + 1) / (
            probability.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + 1
        )
        losses = {
            "mask": (per_pixel * weight).sum() / (weight.sum() * size * size).clamp_min(1.0),
            "dice": (dice * valid).sum() / valid.sum().clamp_min(1),
        }
        inside = target * weight
        losses["rgb"] = ((images.rgb - frames[:, None]) ** 2 * inside[:, :, None]).sum() / (3 * inside.sum()).clamp_min(
            1.0
        )
        truth = torch.stack([centre_x, centre_y, spread], dim=-1)
        losses["position"] = (((position[..., :3] - truth) ** 2).sum(-1) * valid).sum() / valid.sum().clamp_min(1)
        if depth is not None:
            losses["depth"] = ((images.depth - depth[:, None]) ** 2 * inside).sum() / inside.sum().clamp_min(1.0)
        return LociOutput(sum(losses.values()), losses)

    def _full_loss(self, frames: torch.Tensor, depth: torch.Tensor | None) -> LociOutput:
        """Videos, self-supervised (the background module stays fixed): reconstruction of each
        frame from its fused slots, prediction of each later frame from the previous one's
        transition, depth when given, L0 on the percept and GateL0RD gates, and coverage:
        together the slots should cover what the background module calls foreground."""
        batch, length = frames.shape[:2]
        with torch.no_grad():
            backgrounds = self.background(frames.flatten(0, 1))
        prior = self.empty_slots(batch)
        hidden = torch.zeros(
            batch, self.num_slots, self.transition.num_layers, self.transition.hidden_dim, device=self.device
        )
        last_position = prior.position
        terms: dict[str, list[torch.Tensor]] = {
            "reconstruction": [],
            "prediction": [],
            "coverage": [],
            "percept_gates": [],
            "gates": [],
        }
        if depth is not None:
            terms["depth"] = []
        renderings = []
        for t in range(length):
            background = BackgroundOutput(
                *(getattr(backgrounds, item.name).unflatten(0, (batch, length))[:, t] for item in fields(backgrounds))
            )
            warmup = max(1, self.config.assignment.warmup_train) if t == 0 else 0
            passes, next_prior, hidden, gates = self.frame(
                frames[:, t], background, prior, last_position, hidden, warmup
            )
            last = passes[-1]
            composition = last.composition
            terms["reconstruction"].append(F.mse_loss(composition.rgb, frames[:, t]))
            if t > 0:
                terms["prediction"].append(F.mse_loss(last.prior_composition.rgb, frames[:, t]))
                terms["percept_gates"].append(l0_surrogate(last.alpha))
            terms["gates"].append(l0_surrogate(gates))
            covered = (1 - composition.background).clamp(1e-4, 1 - 1e-4)
            terms["coverage"].append(F.binary_cross_entropy(covered, background.foreground[:, 0].detach()))
            if depth is not None:
                terms["depth"].append(F.mse_loss(composition.depth, depth[:, t]))
            renderings.append(composition)
            last_position, prior = last.slots.position, next_prior
        losses = {name: torch.stack(values).mean() for name, values in terms.items() if values}
        transition = self.config.transition
        weights = {
            "percept_gates": transition.percept_gate_l0,
            "gates": transition.transition_gate_l0,
            "coverage": 0.1,
        }
        loss = sum(weights.get(name, 1.0) * value for name, value in losses.items())
        rendering = LociRendering(
            torch.stack([c.weights for c in renderings], 1),
            torch.stack([c.background for c in renderings], 1),
            torch.stack([c.rgb for c in renderings], 1),
            torch.stack([c.depth for c in renderings], 1),
        )
        return LociOutput(loss, losses, rendering)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The parts a stage trains (the others are fixed in it)."""
        if stage == "background":
            return [self.background]
        if stage == "objects":
            return [self.encoder, self.decoder]
        return [self.encoder, self.decoder, self.gate, self.transition]


def gestalt_like(model: LociModel, batch: int, count: int) -> torch.Tensor:
    """Zero Gestalt codes (batch, count, D): the top-down condition of slots with no prediction."""
    return torch.zeros(batch, count, model.slot_dim, device=model.device)


def _values(item: Any) -> list[torch.Tensor | None]:
    """The fields of a dataclass of tensors, in order."""
    return [getattr(item, field.name) for field in fields(item)]


def _merge(parts: list[tuple[torch.Tensor, Any]], batch: int) -> Any:
    """Dataclasses of tensors (codes, compositions, slot images) of sub-batches (index, item)
    back into one batch in stream order; a field that any part lacks (None) stays None."""
    if len(parts) == 1:
        return parts[0][1]
    merged = []
    for values in zip(*(_values(item) for _, item in parts)):
        if any(value is None for value in values):
            merged.append(None)
            continue
        out = values[0].new_zeros(batch, *values[0].shape[1:])
        for (index, _), value in zip(parts, values):
            out = out.index_copy(0, index, value)
        merged.append(out)
    return type(parts[0][1])(*merged)

"""``build_loci``: a :class:`LociConfig` to a :class:`LociModel`, one builder call per part."""

from __future__ import annotations

from ocrl.perception.loci.background import BackgroundModule
from ocrl.perception.loci.config import LociConfig, check_loci_config
from ocrl.perception.loci.decoder import CascadedDecoder
from ocrl.perception.loci.encoder import ObjectEncoder
from ocrl.perception.loci.model import LociModel
from ocrl.perception.loci.transition import PerceptGate, SlotTransition


def build_loci(config: LociConfig) -> LociModel:
    """Build every part from its config and hand them to the model."""
    check_loci_config(config)
    return LociModel(
        background=BackgroundModule(config.background, config.resolution),
        encoder=ObjectEncoder(config.encoder, config.resolution, config.gestalt_dim),
        decoder=CascadedDecoder(config.decoder, config.resolution, config.gestalt_dim),
        gate=PerceptGate(config.slot_dim, config.transition.hidden_dim, config.transition.gate_noise),
        transition=SlotTransition(config.transition, config.slot_dim),
        config=config,
    )

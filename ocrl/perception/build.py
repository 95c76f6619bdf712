"""``build_perception``: a :class:`PerceptionConfig` to a :class:`VideoSlotModel`, one builder per module group."""

from __future__ import annotations

from ocrl.perception.aggregators import build_aggregator
from ocrl.perception.config import PerceptionConfig
from ocrl.perception.decoders import build_decoder
from ocrl.perception.encoders import build_encoder
from ocrl.perception.initializers import build_initializer
from ocrl.perception.model import VideoSlotModel
from ocrl.perception.preheater import build_preheater
from ocrl.perception.transitioner import build_transitioner


def build_perception(config: PerceptionConfig) -> VideoSlotModel:
    """Build every part from its config and hand them to the model."""
    feature_dim = config.encoder.feature_dim
    return VideoSlotModel(
        encoder=build_encoder(config.encoder, config.resolution),
        initializer=build_initializer(config.initializer, config.num_slots, config.slot_dim),
        aggregator=build_aggregator(config.aggregator, config.slot_dim, feature_dim),
        transitioner=build_transitioner(config.transitioner, config.slot_dim),
        decoder=build_decoder(config.decoder, config.slot_dim, config.resolution),
        preheater=build_preheater(config.preheater, config.slot_dim, feature_dim),
        num_slots=config.num_slots,
        slot_dim=config.slot_dim,
        resolution=config.resolution,
        iterations_first=config.aggregator.iterations_first,
        iterations_next=config.aggregator.iterations_next,
        preheat_loss_weight=config.preheater.loss_weight,
        depth_loss_weight=config.depth_loss_weight,
    )

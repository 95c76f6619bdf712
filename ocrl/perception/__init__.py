"""Perception: video slot models that turn frames into slot codes (:mod:`ocrl.slots`).

Build one from a preset::

    from ocrl.perception import build_perception, perception_config
    model = build_perception(perception_config("smoothsa", size="small", resolution=64))
    state = model.init_state(num_envs)
    codes, state = model.step(frames, state, is_first)   # frames uint8 (B, H, W, 3)

and train it with ``model(clip).loss`` on clips (B, T, H, W, 3). Save and load with
:mod:`ocrl.checkpoint`.
"""

from ocrl.perception.aggregators import InvertedAttentionTransformer, SlotAttention, build_aggregator
from ocrl.perception.build import build_perception
from ocrl.perception.config import (
    FAMILIES,
    SIZES,
    AggregatorConfig,
    DecoderConfig,
    EncoderConfig,
    InitializerConfig,
    PerceptionConfig,
    PreheaterConfig,
    TransitionerConfig,
    perception_config,
)
from ocrl.perception.decoders import DecoderOutput, SpatialBroadcastDecoder, build_decoder
from ocrl.perception.encoders import CNNBackbone, ImageEncoder, ResNetBackbone, build_encoder
from ocrl.perception.initializers import ConditionalQueries, GaussianQueries, LearnedQueries, annealing_factor, build_initializer
from ocrl.perception.model import ClipOutput, PerceptionState, VideoSlotModel, prepare_frames
from ocrl.perception.preheater import QueryPreheater, build_preheater
from ocrl.perception.transitioner import SlotTransitioner, build_transitioner

__all__ = [
    "FAMILIES",
    "SIZES",
    "AggregatorConfig",
    "CNNBackbone",
    "ClipOutput",
    "ConditionalQueries",
    "DecoderConfig",
    "DecoderOutput",
    "EncoderConfig",
    "GaussianQueries",
    "ImageEncoder",
    "InitializerConfig",
    "InvertedAttentionTransformer",
    "LearnedQueries",
    "PerceptionConfig",
    "PerceptionState",
    "PreheaterConfig",
    "QueryPreheater",
    "ResNetBackbone",
    "SlotAttention",
    "SlotTransitioner",
    "SpatialBroadcastDecoder",
    "TransitionerConfig",
    "VideoSlotModel",
    "annealing_factor",
    "build_aggregator",
    "build_decoder",
    "build_encoder",
    "build_initializer",
    "build_perception",
    "build_preheater",
    "build_transitioner",
    "perception_config",
    "prepare_frames",
]

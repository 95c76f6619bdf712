"""Perception: video slot models that turn frames into slot codes (:mod:`ocrl.slots`).

Build one from a preset::

    from ocrl.perception import build_perception, perception_config
    model = build_perception(perception_config("smoothsa", size="small", resolution=64))
    state = model.init_state(num_envs)
    codes, state = model.step(frames, state, is_first)   # frames uint8 (B, H, W, 3)

and train it with ``model(clip).loss`` on clips (B, T, H, W, 3) that start episodes, calling
``model.set_step(step)`` for the initializer's noise schedule. Save and load with
:mod:`ocrl.checkpoint`. ``python -m ocrl.perception.speed`` measures its speed.

Where a frame becomes slots: :class:`VideoSlotModel` (``model.py``); its parts, one module and
one ``build_*`` per group: ``encoders`` (CNN or small ResNet, then positional embedding,
LayerNorm, MLP), ``initializers`` (Gaussian with annealed noise, learned, conditional),
``aggregators`` (Slot Attention, TF-Inv), ``preheater`` (SmoothSA), ``transitioner``,
``decoders`` (spatial broadcast with RGB, alpha and depth).

Design notes:

- Families differ only in their configs (:func:`perception_config`): ``slot_attention`` is
  SAVi-like (the same 3 iterations on every frame), ``tf_inv`` swaps in the inverted-attention
  transformer of Wu et al. (per-layer weights, pre-LN, softmax over slots + renormalisation;
  with GRU updates, which the paper found needed for video), ``smoothsa`` adds the SmoothSA
  preheater (Sec. 3.2: a decoder block with cross- before self-attention, Eq. 17 stop-gradient
  on its output, Eq. 18 MSE to the stop-gradient slots) and differentiated recurrence
  (Sec. 3.3: 3 iterations on an episode's first frame, 1 after, shared weights). Our
  preheater reads stop-gradient features and its loss weight is 1 instead of the paper's 100;
  both measured, see :class:`PreheaterConfig`.
- ``step`` mixes episode starts per sample: starting streams get initializer queries and the
  first-frame iterations, the others transitioned queries and the next-frame iterations; a
  mixed batch runs both paths on their own samples (no wasted iterations).
- ``step`` does not decode unless masks are asked for: positions and presence then come from
  the last attention map (softmax over slots on the feature grid), depth from the per-slot
  depth probe. This is what makes online encoding cheap.
- Depth is a probe on detached slots, fitted to the ground truth under each slot's mask: fed
  back into the slots from the first step, it pulled them towards the far background before
  they had found any object (sprite videos: reconstruction stuck at the mean image).
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
from ocrl.perception.initializers import (
    ConditionalQueries,
    GaussianQueries,
    LearnedQueries,
    annealing_factor,
    build_initializer,
)
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

"""Typed configs of the video slot models, their presets, and their JSON round trip.

A :class:`PerceptionConfig` holds one config per module group (encoder, initializer, aggregator,
preheater, transitioner, decoder); :func:`ocrl.perception.build_perception` turns it into a model.
Presets: :func:`perception_config` with a family (:data:`FAMILIES`) and a size (:data:`SIZES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ocrl.config_json import JsonConfig
from ocrl.config_json import dataclass_from_dict as dataclass_from_dict  # agents import it from here
from ocrl.names import PERCEPTION_FAMILIES as FAMILIES

SIZES = ("quick", "small", "base")


@dataclass
class EncoderConfig:
    """Image to feature tokens.

    kind: ``"cnn"`` (plain strided convolutions, as in Slot Attention) or ``"resnet"`` (a small
        ResNet with GroupNorm).
    channels: CNN width; ResNet width of the first stage (later stages double, up to 4x).
    num_layers: CNN convolutions (at least log2(downsample)).
    blocks_per_stage: ResNet basic blocks per stage.
    kernel_size: CNN kernel size.
    downsample: total stride; None picks ``resolution // 16`` (/4 at 64 px, /8 at 128 px), so
        the feature grid is 16x16.
    feature_dim: width of the tokens after positional embedding + LayerNorm + MLP.
    """

    kind: str = "cnn"
    channels: int = 32
    num_layers: int = 4
    blocks_per_stage: int = 1
    kernel_size: int = 5
    downsample: int | None = None
    feature_dim: int = 64


@dataclass
class InitializerConfig:
    """First-frame queries.

    kind: ``"gaussian"`` (learned Gaussian, sigma annealed), ``"learned"`` (one learned query per
        slot), ``"conditional"`` (an MLP from a (K, 4) box or position per slot).
    per_slot_means: gaussian: one mean per slot (queries become distinct learned queries as sigma
        anneals to 0) or one shared mean (Locatello et al.; keep sigma, do not anneal it).
    initial_sigma: gaussian: starting value of the learned sigma, in units of the means'
        initial scale (D ** -0.5).
    anneal_steps: gaussian: training steps over which the noise scale falls from 1 to 0 along a
        cosine; 0 keeps it at 1.
    hidden_dim: conditional: MLP width.
    """

    kind: str = "gaussian"
    per_slot_means: bool = True
    initial_sigma: float = 1.0
    anneal_steps: int = 10_000
    hidden_dim: int = 128


@dataclass
class AggregatorConfig:
    """Features to slots given queries.

    kind: ``"slot_attention"`` (shared weights over iterations, GRU + MLP) or
        ``"inverted_attention_transformer"`` (TF-Inv: one set of weights per layer).
    iterations_first: iterations on an episode's first frame (TF-Inv: layers).
    iterations_next: iterations on later frames; TF-Inv runs its first ``iterations_next`` layers.
    num_heads: attention heads (the papers use 1).
    mlp_hidden_dim: width of the residual MLP.
    use_gru: TF-Inv only: GRU update instead of the residual one ("TF-Inv w/ GRU").
    """

    kind: str = "slot_attention"
    iterations_first: int = 3
    iterations_next: int = 1
    num_heads: int = 1
    mlp_hidden_dim: int = 128
    use_gru: bool = False


@dataclass
class PreheaterConfig:
    """SmoothSA query preheater: a transformer decoder block, cross-attention before
    self-attention, trained by MSE towards the (stop-gradient) slots it precedes.

    detach_features: the preheater reads stop-gradient features, so its loss trains only the
        preheater and the initializer. The paper sits on a frozen DINO encoder where the
        question does not arise; with a pixel encoder trained from scratch, letting the preheat
        loss into the encoder lets it make slots easy to predict by making features
        uninformative (on sprite videos reconstruction stalled at the mean image).
    loss_weight: the paper uses 100, where the loss also reaches shared weights. With detached
        features it only scales the preheater's own gradients, which Adam undoes, while under
        global gradient-norm clipping a weight of 100 shrinks every other module's update
        (sprite videos, clip norm 1: FG-ARI 0.16 instead of 0.67 after 1500 steps). Hence 1.
    start_step: the training step from which aggregation starts from the preheated queries;
        before it, from the initializer's (the preheater learns all along). With an encoder
        trained from scratch, preheating from step 0 collapsed all slots into one: features
        carry nothing yet, the preheater adds the same vector to every query, aggregation
        returns K equal slots, and the MSE target keeps the preheater there (sprite videos:
        slot spread 0.5 % of their norm, reconstruction the mean image after 2500 steps).
        Starting once the Gaussian noise has annealed lets the slots tell objects apart first.
    """

    enabled: bool = False
    num_heads: int = 4
    mlp_hidden_dim: int = 128
    loss_weight: float = 1.0
    detach_features: bool = True
    start_step: int = 0


@dataclass
class TransitionerConfig:
    """Slots of frame t to queries of frame t + 1.

    kind: ``"transformer"`` (pre-LN self-attention + MLP blocks over slots) or ``"identity"``.
    """

    kind: str = "transformer"
    num_layers: int = 1
    num_heads: int = 4
    mlp_hidden_dim: int = 128


@dataclass
class DecoderConfig:
    """Spatial broadcast decoder: per-slot RGB, alpha logits (softmax over slots) and depth.

    broadcast_size: side of the grid each slot is broadcast to.
    hidden_channels: width of its convolutions.
    num_layers: convolutions after the broadcast (the last ``upsamples`` of them are transposed,
        doubling the grid); the output is resized bilinearly to the frame resolution.
    kernel_size: kernel of the stride-1 convolutions (1 makes a per-pixel MLP decoder).
    predict_depth: add a depth channel (supervised when the data has ground-truth depth).
    """

    kind: str = "spatial_broadcast"
    broadcast_size: int = 16
    hidden_channels: int = 32
    num_layers: int = 3
    upsamples: int = 0
    kernel_size: int = 3
    predict_depth: bool = True


@dataclass
class PerceptionConfig(JsonConfig):
    """A whole video slot model. ``family`` names the preset it came from (informational)."""

    family: str = "smoothsa"
    resolution: int = 64
    num_slots: int = 7
    slot_dim: int = 64
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    initializer: InitializerConfig = field(default_factory=InitializerConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    preheater: PreheaterConfig = field(default_factory=PreheaterConfig)
    transitioner: TransitionerConfig = field(default_factory=TransitionerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    depth_loss_weight: float = 1.0


def perception_config(
    family: str = "smoothsa", size: str = "small", resolution: int = 64, num_slots: int | None = None
) -> PerceptionConfig:
    """A preset.

    Families:

    - ``"slot_attention"``: SAVi-like video Slot Attention: Gaussian queries, the same 3
      iterations on every frame, transformer transitioner.
    - ``"tf_inv"``: the same model with an inverted-attention transformer (3 layers, with GRU
      updates: the TF-Inv paper found the GRU needed for stable video training) as aggregator.
    - ``"smoothsa"``: Slot Attention with the SmoothSA query preheater and
      differentiated recurrence: 3 iterations on an episode's first frame, 1 after.

    Sizes: ``"quick"`` (trains in minutes on a CPU: 64-d slots, 32-channel 5x5 CNN, a
    per-pixel MLP decoder on a 16x16 grid), ``"small"`` (the default: the same with 3x3
    convolutions in the decoder), ``"base"`` (for a GPU: 128-d slots, ResNet encoder, decoder
    at 1/2 resolution). The decoders' logits are resized to the frame before the softmax over
    slots, so masks keep sharp edges. Train with Adam at about 4e-4: 1e-3 stalled the quick
    model at the mean image on sprite videos.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown perception family {family!r}; known: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown perception size {size!r}; known: {', '.join(SIZES)}")
    if size == "quick":
        config = PerceptionConfig(
            slot_dim=64,
            encoder=EncoderConfig(kind="cnn", channels=32, num_layers=4, kernel_size=5, feature_dim=64),
            initializer=InitializerConfig(anneal_steps=2_000),
            aggregator=AggregatorConfig(mlp_hidden_dim=128),
            preheater=PreheaterConfig(start_step=2_000),
            decoder=DecoderConfig(broadcast_size=16, hidden_channels=32, num_layers=3, kernel_size=1),
        )
    elif size == "small":
        config = PerceptionConfig(
            slot_dim=64,
            encoder=EncoderConfig(kind="cnn", channels=32, num_layers=4, kernel_size=5, feature_dim=64),
            initializer=InitializerConfig(anneal_steps=10_000),
            aggregator=AggregatorConfig(mlp_hidden_dim=128),
            preheater=PreheaterConfig(start_step=10_000),
            decoder=DecoderConfig(broadcast_size=16, hidden_channels=32, num_layers=3, kernel_size=3),
        )
    else:
        config = PerceptionConfig(
            num_slots=11,
            slot_dim=128,
            encoder=EncoderConfig(kind="resnet", channels=32, blocks_per_stage=2, feature_dim=128),
            initializer=InitializerConfig(anneal_steps=50_000),
            aggregator=AggregatorConfig(mlp_hidden_dim=256),
            preheater=PreheaterConfig(mlp_hidden_dim=256, start_step=50_000),
            transitioner=TransitionerConfig(mlp_hidden_dim=256),
            decoder=DecoderConfig(
                broadcast_size=max(8, resolution // 8), hidden_channels=64, num_layers=4, upsamples=2, kernel_size=5
            ),
        )
    config.family = family
    config.resolution = resolution
    if num_slots is not None:
        config.num_slots = num_slots
    if family == "slot_attention":
        config.aggregator.kind, config.aggregator.iterations_first, config.aggregator.iterations_next = (
            "slot_attention",
            3,
            3,
        )
    elif family == "tf_inv":
        config.aggregator.kind, config.aggregator.iterations_first, config.aggregator.iterations_next = (
            "inverted_attention_transformer",
            3,
            3,
        )
        config.aggregator.use_gru = True
    else:
        config.aggregator.kind, config.aggregator.iterations_first, config.aggregator.iterations_next = (
            "slot_attention",
            3,
            1,
        )
        config.preheater.enabled = True
    return config

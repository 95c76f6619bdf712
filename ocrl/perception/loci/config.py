"""Typed configs of Loci-Segmented (Loci-s) and its presets.

A :class:`LociConfig` holds one config per part (background module, slot-wise encoder, cascaded
decoder, transition, slot assignment); :func:`ocrl.perception.loci.build_loci` turns it into a
:class:`~ocrl.perception.loci.model.LociModel`. Presets: :func:`loci_config` with a size
(``quick`` for a CPU, ``base`` for a GPU). How it is trained, stage by stage, is
:class:`~ocrl.perception.loci.training.LociTrainingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ocrl.config_json import JsonConfig

LOCI_SIZES = ("quick", "base")
FOREGROUND_TARGETS = ("masks", "median")
COMPOSITIONS = ("uncertainty", "masks")
ASSIGNMENTS = ("random", "regularised")


@dataclass
class BackgroundConfig:
    """Background module (paper Sec. 3.4): an uncertainty U-Net that marks the foreground and a
    masked ViT autoencoder that regenerates the background (RGB and depth) behind it.

    channels: widths of the U-Net's three down stages (each halves the grid).
    patch_size: ViT patch side (pixels).
    embed_dim, num_layers, num_heads: the ViT.
    depth_bottleneck: width of the narrow code the background depth is decoded from (the paper
        constrains depth with a narrow bottleneck so that it stays a background depth).
    foreground_target: what the uncertainty network learns to predict: ``"masks"`` (the
        ground-truth instance masks > 0, where the data has them) or ``"median"`` (no labels:
        pixels that differ from the per-pixel median frame of the training stores, which is the
        background of a static camera whose objects move between episodes).
    median_threshold: ``"median"``: a pixel is foreground where some channel differs from the
        median by more than this (in [0, 1] intensity).
    """

    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    patch_size: int = 8
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    depth_bottleneck: int = 4
    foreground_target: str = "masks"
    median_threshold: float = 0.1


@dataclass
class LociEncoderConfig:
    """Slot-wise encoder (Sec. 2 and 3.2): each slot sees the frame plus its own predicted
    position, masks and RGB, and returns Gestalt and Position codes.

    channels: width after the patch embedding (the second stage doubles it).
    patch_size: stride of the patch embedding (the first grid is resolution / patch_size).
    blocks: ConvNeXt blocks per stage.
    kernel_size: depthwise kernel of the ConvNeXt blocks.
    hyper: top-down feedback: a hypernetwork turns the slot's predicted Gestalt code into
        residuals of the depthwise kernels (HyperConvNeXt, Fig. 2); off: plain ConvNeXt.
    binarise: Loci's binarising noise on the Gestalt codes while training (g + g (1 - g) N(0, 1)),
        which pushes codes to 0 or 1. Off in ``quick``: at CPU budgets it kept the colour out of
        the codes (RGB loss 0.11 after 700 single-object steps, reconstructions in pale tints).
    """

    channels: int = 32
    patch_size: int = 4
    blocks: int = 1
    kernel_size: int = 5
    hyper: bool = True
    binarise: bool = False


@dataclass
class LociDecoderConfig:
    """Cascaded decoder (Sec. 3.3): mask, then depth given the mask, then RGB given both.

    channels: width of each decoder's grid network (the grid is resolution / patch_size).
    patch_size: grid stride.
    blocks: ConvNeXt blocks of the depth and RGB decoders.
    head_channels: width of the per-pixel heads at full resolution (they see the upsampled grid
        features and the slot-relative coordinates, so edges are sharp at any resolution).
    """

    channels: int = 32
    patch_size: int = 4
    blocks: int = 1
    head_channels: int = 16


@dataclass
class LociTransitionConfig:
    """Percept gate (App. A.1) and transition (GateL0RD + self-attention over slots).

    hidden_dim: width of the transition.
    num_layers: GateL0RD + attention pairs.
    num_heads: attention heads.
    gate_noise: std of the Gaussian noise on the gates' pre-activations while training.
    percept_gate_l0, transition_gate_l0: weights of the L0 losses (fraction of open gates) on
        the percept gate and on the GateL0RD gates. The percept gate's must stay small against
        the reconstruction error (a mean squared error of ~0.006 per pixel here): at 0.01 it
        closed every percept gate of the quick model, which then ignored every frame after an
        episode's first and only predicted (held-out video FG-ARI 0.83 / 0.36 on ObjectGoal /
        MovingObjects against 0.85 / 0.56 with the gates held open; benchmarks/RESULTS.md).
    """

    hidden_dim: int = 128
    num_layers: int = 1
    num_heads: int = 4
    gate_noise: float = 0.1
    percept_gate_l0: float = 1e-4
    transition_gate_l0: float = 0.01


@dataclass
class AssignmentConfig:
    """Slot assignment without ground truth (Sec. 3.6).

    kind: ``"random"`` (positions sampled in the part of the uncertainty map that no slot
        explains yet) or ``"regularised"`` (the same, then after every warm-up pass slots too
        similar in position and Gestalt are nullified, the paper's regularised initial slots).
    warmup_train, warmup_eval: encoder/decoder-only passes on an episode's first frame while
        training and at evaluation (paper: 3 and 10).
    min_foreground: fraction of the image that a connected part of the unexplained foreground
        must cover to get a slot (0.005: 20 pixels at 64x64; the smallest sprites cover ~45).
    keep_overlap: a slot is kept after a warm-up pass when this fraction of its visible mask lies
        on the foreground.
    similar_distance, similar_correlation: regularised: two slots closer than this whose Gestalt
        codes correlate above this are duplicates; the one with less visible mass is nullified.
    seed: seed of the sampling generator, reset by ``init_state`` (evaluation is repeatable).
    """

    kind: str = "regularised"
    warmup_train: int = 2
    warmup_eval: int = 4
    min_foreground: float = 0.005
    keep_overlap: float = 0.5
    similar_distance: float = 0.1
    similar_correlation: float = 0.8
    seed: int = 0


@dataclass
class LociConfig(JsonConfig):
    """A whole Loci-s model. Slots are Gestalt codes of ``3 * gestalt_dim`` (mask, depth and
    RGB segments); position codes are (x, y, size, priority).

    composition: how a pixel is split between the background and the slots.
        ``"uncertainty"``: the background module's foreground decides (the uncertainty map as the
        masking function, Sec. 3.4); the slots share the foreground by their masks and depth
        priority. ``"masks"``: the slots' own masks decide (background ``prod_k (1 - m_k)``).
        Measured on held-out ObjectGoal (benchmarks/RESULTS.md, issue 14): the slots' decoded
        masks are a pixel short of the objects' edges, which "masks" gives to the background
        (mIoU 0.61), while the uncertainty network's edges are sharp (mIoU 0.81).
    """

    config_name = "loci config"

    family: str = "loci"
    resolution: int = 64
    num_slots: int = 7
    gestalt_dim: int = 32
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    encoder: LociEncoderConfig = field(default_factory=LociEncoderConfig)
    decoder: LociDecoderConfig = field(default_factory=LociDecoderConfig)
    transition: LociTransitionConfig = field(default_factory=LociTransitionConfig)
    assignment: AssignmentConfig = field(default_factory=AssignmentConfig)
    composition: str = "uncertainty"
    composition_temperature: float = 0.05

    @property
    def slot_dim(self) -> int:
        return 3 * self.gestalt_dim


def loci_config(size: str = "quick", resolution: int = 64, num_slots: int | None = None) -> LociConfig:
    """A preset: ``"quick"`` (trains in minutes on a CPU: 3 x 32 Gestalt, 32-channel encoder and
    decoders at 1/4 resolution) or ``"base"`` (for a GPU: 3 x 64 Gestalt, 64 channels, two
    blocks per stage, 10 warm-up passes at evaluation as in the paper)."""
    if size not in LOCI_SIZES:
        raise ValueError(f"unknown loci size {size!r}; known: {', '.join(LOCI_SIZES)}")
    if size == "quick":
        config = LociConfig()
    else:
        config = LociConfig(
            num_slots=11,
            gestalt_dim=64,
            background=BackgroundConfig(channels=[32, 64, 128], embed_dim=128, num_layers=4),
            encoder=LociEncoderConfig(channels=64, blocks=2, kernel_size=7),
            decoder=LociDecoderConfig(channels=64, blocks=2, head_channels=32),
            transition=LociTransitionConfig(hidden_dim=256, num_layers=2),
            assignment=AssignmentConfig(warmup_train=3, warmup_eval=10),
        )
    # a 16x16 grid whatever the resolution (1/4 at 64 px, 1/8 at 128 px)
    patch = max(1, resolution // 16)
    config.encoder.patch_size = config.decoder.patch_size = patch
    config.background.patch_size = max(4, resolution // 8)
    config.resolution = resolution
    if num_slots is not None:
        config.num_slots = num_slots
    return config


def check_loci_config(config: LociConfig) -> None:
    """Raise ValueError naming the field when a config cannot build a model."""
    if config.resolution % (4 * config.encoder.patch_size) or config.resolution % config.decoder.patch_size:
        raise ValueError(
            f"loci config: resolution {config.resolution} must be a multiple of 4 x encoder.patch_size and of decoder.patch_size"
        )
    if config.resolution % config.background.patch_size or config.resolution % 8:
        raise ValueError(
            f"loci config: resolution {config.resolution} must be a multiple of 8 and of background.patch_size"
        )
    if config.num_slots < 1 or config.gestalt_dim < 1:
        raise ValueError("loci config: num_slots and gestalt_dim must be at least 1")
    if config.background.foreground_target not in FOREGROUND_TARGETS:
        raise ValueError(
            f"loci config: background.foreground_target {config.background.foreground_target!r}; known: {', '.join(FOREGROUND_TARGETS)}"
        )
    if config.assignment.kind not in ASSIGNMENTS:
        raise ValueError(f"loci config: assignment.kind {config.assignment.kind!r}; known: {', '.join(ASSIGNMENTS)}")
    if len(config.background.channels) != 3:
        raise ValueError("loci config: background.channels must list 3 widths")
    if config.composition not in COMPOSITIONS:
        raise ValueError(f"loci config: composition {config.composition!r}; known: {', '.join(COMPOSITIONS)}")
    if config.composition_temperature <= 0:
        raise ValueError("loci config: composition_temperature must be positive")
    if min(config.transition.percept_gate_l0, config.transition.transition_gate_l0) < 0:
        raise ValueError("loci config: transition.percept_gate_l0 and transition_gate_l0 must not be negative")

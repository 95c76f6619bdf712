"""Loci-Segmented (Loci-s, ``loci-segmented.txt``): a perception family behind the same
contract as the slot-attention models (``init_state`` / ``step`` -> :class:`~ocrl.slots.SlotCodes`).

Where a frame becomes slots: :class:`LociModel` (``model.py``). Parts, one module each:
``background`` (uncertainty U-Net + masked background autoencoder), ``encoder`` (slot-wise
ConvNeXt encoder with hypernetwork kernel residuals -> Gestalt and Position codes),
``decoder`` (cascaded mask -> depth -> RGB decoders and the depth-priority composition),
``transition`` (percept gate, GateL0RD + attention). ``config.py`` holds the typed configs and
presets, ``training.py`` the staged training behind ``ocrl pretrain --model loci``.

The background is not a slot: the background module explains what no slot covers.
"""

from ocrl.perception.loci.build import build_loci
from ocrl.perception.loci.config import (
    AssignmentConfig,
    BackgroundConfig,
    LociConfig,
    LociDecoderConfig,
    LociEncoderConfig,
    LociTransitionConfig,
    loci_config,
)
from ocrl.perception.loci.decoder import Composition, SlotImages, compose
from ocrl.perception.loci.model import LociModel, LociOutput, LociRendering, LociSlots, LociState

__all__ = [
    "AssignmentConfig",
    "BackgroundConfig",
    "Composition",
    "LociConfig",
    "LociDecoderConfig",
    "LociEncoderConfig",
    "LociModel",
    "LociOutput",
    "LociRendering",
    "LociSlots",
    "LociState",
    "LociTransitionConfig",
    "SlotImages",
    "build_loci",
    "compose",
    "loci_config",
]

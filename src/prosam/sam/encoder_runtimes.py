"""Runtimes that execute SAM's image encoder: PyTorch, ONNX Runtime, OpenVINO.

Each runtime maps SAM's preprocessed ``(1, 3, S, S)`` float32 input to the ``(1, C, h, w)``
embedding, on the CPU for the ONNX-based ones. They know nothing of where their graph came
from; :mod:`prosam.sam.encoder_export` exports, checks and caches the graph they run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from prosam.errors import InputError

#: Every backend name, in the order ``auto`` prefers them (fastest first on this project's
#: CPU measurements: benchmarks/reports/encoder_backends.md).
BACKENDS = ("openvino", "onnxruntime", "torch")
#: Numerical precisions; reduced ones exist only where a runtime offers them.
PRECISIONS = ("fp32", "bf16", "int8")
#: The precision that stands for "the fastest a backend runs natively here": bf16 on
#: OpenVINO where the CPU has bfloat16 instructions, fp32 elsewhere (:func:`resolve_precision`).
AUTO_PRECISION = "auto"

_MODULE_OF = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}
_EXTRA_OF = {"onnxruntime": "prosam[onnx]", "openvino": "prosam[openvino]"}


class ImageEncoderRuntime(Protocol):
    """What runs SAM's image encoder: ``runtime(x)`` for a ``(1, 3, S, S)`` float32 input."""

    backend: str
    precision: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class RuntimeSettings:
    """Threads for a runtime (None: PyTorch's own thread count, which follows
    ``OMP_NUM_THREADS``)."""

    threads: int | None = None

    def resolved_threads(self) -> int:
        return int(self.threads or torch.get_num_threads())


def backend_installed(backend: str) -> bool:
    """Whether the Python package a backend needs can be imported."""
    check_backend(backend)
    return importlib.util.find_spec(_MODULE_OF[backend]) is not None


def precision_installed(precision: str) -> bool:
    """Whether what ``precision`` needs beyond its backend is installed (NNCF for int8)."""
    return precision != "int8" or importlib.util.find_spec("nncf") is not None


def installed_backends() -> list[str]:
    """The installed backends, fastest first; ``torch`` is always among them."""
    return [b for b in BACKENDS if backend_installed(b)]


def check_backend(backend: str, precision: str = "fp32") -> None:
    """Reject unknown backends and precisions a backend does not offer, in one line."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if precision not in (*PRECISIONS, AUTO_PRECISION):
        raise InputError(
            f"unknown precision {precision!r}; choose from {AUTO_PRECISION}, "
            f"{', '.join(PRECISIONS)}"
        )
    if precision not in ("fp32", AUTO_PRECISION) and backend != "openvino":
        raise InputError(f"precision {precision} is offered by the openvino backend only")


@functools.cache
def cpu_runs_bf16() -> bool:
    """Whether OpenVINO reports native bfloat16 arithmetic on this CPU (False without
    OpenVINO)."""
    if not backend_installed("openvino"):
        return False
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a runtime that cannot say: assume no
        return False


def resolve_precision(backend: str, precision: str) -> str:
    """``precision`` for ``backend`` with ``auto`` made concrete: bf16 on OpenVINO where
    :func:`cpu_runs_bf16`, else fp32 (chosen on the coco-mini test list against PyTorch:
    docs/backends.md)."""
    check_backend(backend, precision)
    if precision != AUTO_PRECISION:
        return precision
    return "bf16" if backend == "openvino" and cpu_runs_bf16() else "fp32"


def require_backend(backend: str) -> None:
    """An :class:`InputError` naming the extra to install when ``backend`` is missing."""
    if not backend_installed(backend):
        raise InputError(
            f"backend {backend} needs the {_MODULE_OF[backend]} package: "
            f"pip install '{_EXTRA_OF[backend]}'"
        )


class TorchImageEncoder:
    """The encoder module itself, run by PyTorch on whatever device it lives on."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def checking_backend() -> str:
    """The runtime that checks a new export against PyTorch: ONNX Runtime, else OpenVINO
    (an :class:`InputError` naming the extra to install when neither is)."""
    for backend in ("onnxruntime", "openvino"):
        if backend_installed(backend):
            return backend
    require_backend("onnxruntime")  # neither is installed: this raises
    return "onnxruntime"


def onnxruntime_session(path: str | os.PathLike[str], settings: RuntimeSettings) -> Any:
    """An ONNX Runtime CPU session for the graph at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.resolved_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_compiled(
    path: str | os.PathLike[str],
    settings: RuntimeSettings,
    *,
    precision: str = "fp32",
    compile_cache: str | os.PathLike[str] | None = None,
) -> Any:
    """The graph at ``path`` compiled by OpenVINO for the CPU at ``precision`` (OpenVINO's
    inference precision hint), its blobs kept in ``compile_cache`` for later starts."""
    import openvino as ov

    check_backend("openvino", precision)
    core = ov.Core()
    model: Any = str(path)
    if precision == "int8":
        model = int8_weights(core.read_model(str(path)))
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": settings.resolved_threads(),
        "PERFORMANCE_HINT": "LATENCY",
    }
    if compile_cache is not None:
        Path(compile_cache).mkdir(parents=True, exist_ok=True)
        config["CACHE_DIR"] = str(compile_cache)
    return core.compile_model(model, "CPU", config)


def int8_weights(model: Any) -> Any:
    """``model`` (an OpenVINO model) with its weights compressed to int8 by NNCF
    (asymmetric, per output channel, data-free); activations stay float32."""
    try:
        import nncf
    except ImportError:
        raise InputError("--precision int8 needs NNCF: pip install 'prosam[int8]'") from None
    nncf.set_log_level(logging.ERROR)  # no statistics table at every start
    quiet = io.StringIO()  # nor NNCF's progress bar
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


class OnnxRuntimeImageEncoder:
    """An exported encoder graph run by ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike[str], settings: RuntimeSettings) -> None:
        self.session = onnxruntime_session(path, settings)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: as_numpy(x)}
        return torch.from_numpy(self.session.run(None, feed)[0])


class OpenVinoGraph:
    """An exported graph compiled by OpenVINO for the CPU, with one inference request.

    ``precision`` is ``fp32``; ``bf16``, OpenVINO's inference precision hint (its own default
    on CPUs with bf16 instructions; faster, and checked before use); or ``int8``, the weights
    compressed to int8 by NNCF (:func:`int8_weights`) and computed in float32 (checked too).
    Compiled blobs are kept in ``compile_cache`` so later starts skip compilation.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: RuntimeSettings,
        *,
        precision: str = "fp32",
        compile_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self.precision = precision
        self.compiled = openvino_compiled(
            path, settings, precision=precision, compile_cache=compile_cache
        )
        self.request = self.compiled.create_infer_request()


class OpenVinoImageEncoder(OpenVinoGraph):
    """An exported encoder graph compiled by OpenVINO for the CPU (see :class:`OpenVinoGraph`)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: as_numpy(x)})
        return torch.from_numpy(np.array(out[0], dtype=np.float32, copy=True))


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """``x`` as a contiguous float32 array on the CPU (what the runtimes take)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())

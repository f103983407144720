"""The labelling defaults, importable without model code (the CLI's help shows them)."""

import os

DEFAULT_METHOD = "matcher"
"""The method ``prosam label``, ``prosam segment``, ``prosam demo`` and ``prosam.label.load``
use unless told otherwise."""
DEFAULT_SCORE_THRESHOLD = 0.0
DEFAULT_MIN_AREA_FRACTION = 1e-4
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_CLASS = "object"


def default_score_threshold(method: str) -> float:
    """The score threshold ``prosam label`` uses for ``method`` unless told otherwise: the
    method's calibrated presence threshold (its registry spec's), else
    :data:`DEFAULT_SCORE_THRESHOLD` (keep every non-empty mask)."""
    from prosam.methods.registry import get_method

    threshold = get_method(method).presence_threshold
    return DEFAULT_SCORE_THRESHOLD if threshold is None else float(threshold)


ENCODE_AHEAD_MIN_CORES = 4
"""With an ONNX runtime running SAM's encoder on fewer usable CPU cores than this, the job
encodes each target when it is due (docs/labelling.md, "Scale")."""


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_encode_ahead(
    encoder_backend: str = "torch", device: str = "cpu", cores: int | None = None
) -> int:
    """How many targets the job encodes ahead unless told: 1, except 0 when an ONNX runtime
    (``openvino``, ``onnxruntime``) runs SAM's encoder on a CPU with fewer than
    :data:`ENCODE_AHEAD_MIN_CORES` usable cores (``cores``, default this process's): there
    the encoder and the matching each use every core, and overlapping them was slower; a
    GPU's encoder, or PyTorch's on the CPU, gained from it."""
    if device != "cpu" or encoder_backend == "torch":
        return 1
    return 1 if (usable_cores() if cores is None else cores) >= ENCODE_AHEAD_MIN_CORES else 0

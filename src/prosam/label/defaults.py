"""The labelling defaults, importable without model code (the CLI's help shows them)."""

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

"""How good is a mask? Signals a prediction gives about its own mask, and a small calibrated
model that turns them into an expected IoU (see ``docs/labelling.md``, "Which masks to
check")."""

from prosam.quality.model import (
    EXPECTED_SIGNS,
    QualityModel,
    QualityModelLike,
    fit_quality_model,
    load_quality_model,
    resolve_quality_model,
    shipped_quality_model,
)
from prosam.quality.signals import mask_signals, shape_signals, stability_score

__all__ = [
    "EXPECTED_SIGNS",
    "QualityModel",
    "QualityModelLike",
    "fit_quality_model",
    "load_quality_model",
    "mask_signals",
    "resolve_quality_model",
    "shape_signals",
    "shipped_quality_model",
    "stability_score",
]

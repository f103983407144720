"""A mask's expected IoU from its signals: logistic regression on IoU as a soft target.

The model is ``estimate = sigmoid(bias + sum_i w_i * z_i)`` with ``z_i = (s_i - mean_i) /
scale_i`` the standardised signals. It is fitted (:func:`fit_quality_model`) by minimising
the binary cross-entropy between the estimate and each mask's true IoU in [0, 1] (a
fractional-response logit model), plus ``l2 / 2 * |w|^2``. With an intercept, the fit's
mean estimate equals the mean IoU of its data, and where the model is right it *is* the
expected IoU given the signals; how well it transfers is measured on other data
(``benchmarks/mask_quality.py``).

A signal missing from a mask (or not finite) counts as its mean on the fitting data
(``z = 0``). Each model carries a description of the data it was fitted on (``info``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from prosam.errors import InputError
from prosam.io import write_bytes_atomic

MODEL_VERSION = 1

SIGNAL_PHRASES: dict[str, tuple[str, str]] = {
    "score": ("the method's score is low", "the method's score is high"),
    "presence_peak": ("nothing matches the reference well", "a close match to the reference"),
    "presence_match": ("few parts match the reference", "many parts match the reference"),
    "presence_positive": ("little looks like the reference", "much looks like the reference"),
    "kept_matches": ("few consistent matches", "many consistent matches"),
    "best_proposal": ("no convincing candidate mask", "a convincing candidate mask"),
    "mask_purity": ("the mask holds much background", "the mask looks like the reference"),
    "mask_match": ("the mask matches the reference poorly", "the mask matches the reference"),
    "sam_iou": ("SAM doubts the mask", "SAM is sure of the mask"),
    "stability": ("the mask is unstable", "the mask is stable"),
    "area_fraction": ("the mask is small", "the mask covers much of the image"),
    "log_area_fraction": ("the mask is small", "the mask is large"),
    "border_fraction": ("the mask keeps off the border", "the mask runs along the border"),
    "components": ("the mask is in one piece", "the mask is in many pieces"),
    "largest_component": ("the mask is fragmented", "the mask is mostly one piece"),
    "fill": ("the mask is ragged", "the mask fills its box"),
    "instances": ("few instances", "many instances"),
    "uncertainty": ("the prompt samples agree", "the prompt samples disagree"),
}
"""Per signal: what a *low* and a *high* value means, for :meth:`QualityModel.reason`."""

EXPECTED_SIGNS: dict[str, int] = {
    "score": 1,
    "presence_peak": 1,
    "presence_match": 1,
    "presence_positive": 1,
    "kept_matches": 1,
    "best_proposal": 1,
    "mask_purity": 1,
    "mask_match": 1,
    "sam_iou": 1,
    "stability": 1,
    "border_fraction": -1,
    "components": -1,
    "largest_component": 1,
    "fill": 1,
    "uncertainty": -1,
}
"""The direction in which each signal should move the estimate (+1: higher is better),
for :func:`fit_quality_model`'s ``signs``; the mask's area and instance count may go
either way."""


@dataclass(frozen=True)
class QualityModel:
    """A fitted quality model (see the module's docstring); ``info`` says what it was fitted
    on and how it scored there."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not n or any(len(v) != n for v in (self.mean, self.scale, self.weights)):
            raise InputError("a quality model needs as many means, scales and weights as features")
        if any(not s > 0 for s in self.scale):
            raise InputError("a quality model's scales must be positive")

    def standardised(self, signals: Mapping[str, float]) -> np.ndarray:
        """``z`` of each feature (0 for a missing or non-finite signal)."""
        z = np.zeros(len(self.features))
        for i, name in enumerate(self.features):
            value = signals.get(name)
            if value is not None and math.isfinite(float(value)):
                z[i] = (float(value) - self.mean[i]) / self.scale[i]
        return z

    def contributions(self, signals: Mapping[str, float]) -> dict[str, float]:
        """Each feature's ``w_i * z_i``: how much it moves the estimate's logit."""
        z = self.standardised(signals)
        return {f: float(w * v) for f, w, v in zip(self.features, self.weights, z, strict=True)}

    def estimate(self, signals: Mapping[str, float]) -> float:
        """The expected IoU of a mask with these signals, in [0, 1]."""
        z = self.standardised(signals)
        return float(expit(self.bias + float(np.dot(self.weights, z))))

    def reason(self, signals: Mapping[str, float]) -> str:
        """In words, the feature that lowers the estimate most. Features whose weight runs
        against their :data:`EXPECTED_SIGNS` direction (they matter with others, as the
        peak of the match against its mean) are not named: "the mask is stable" is no
        reason to doubt a mask."""
        contributions = {
            name: value
            for (name, value), weight in zip(
                self.contributions(signals).items(), self.weights, strict=True
            )
            if weight * EXPECTED_SIGNS.get(name, 0) >= 0
        }
        name = min(contributions, key=lambda k: contributions[k], default=None)
        if name is None or contributions[name] >= 0:
            return "nothing lowers the estimate"
        weight = self.weights[self.features.index(name)]
        low, high = SIGNAL_PHRASES.get(name, (f"{name} is low", f"{name} is high"))
        return high if weight < 0 else low

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {
            "version": MODEL_VERSION,
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityModel:
        """The model of a :meth:`to_dict` dict."""
        if data.get("version") != MODEL_VERSION:
            raise InputError(f"quality model version {data.get('version')!r}, expected 1")
        try:
            return cls(
                tuple(str(f) for f in data["features"]),
                tuple(float(v) for v in data["mean"]),
                tuple(float(v) for v in data["scale"]),
                tuple(float(v) for v in data["weights"]),
                float(data["bias"]),
                dict(data.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a quality model: {err}") from None

    def digest(self) -> str:
        """sha256 of the model's canonical JSON (what identifies it in a job)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as JSON, atomically."""
        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())


def load_quality_model(path: str | os.PathLike[str]) -> QualityModel:
    """The model saved at ``path`` (one-line error when it is not one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read a quality model ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a quality model")
    return QualityModel.from_dict(data)


def shipped_quality_model(method: str) -> QualityModel | None:
    """The quality model prosam ships for ``method`` (``assets/quality/<method>.json``), or
    ``None`` when there is none."""
    asset = resources.files("prosam").joinpath("assets", "quality", f"{method}.json")
    if not asset.is_file():
        return None
    return QualityModel.from_dict(json.loads(asset.read_text()))


QualityModelLike = QualityModel | str | os.PathLike[str] | None
"""``"auto"`` (the method's shipped model, if any), ``"none"`` / ``None`` (no estimate), a
model, or a model file."""


def resolve_quality_model(spec: QualityModelLike, method: str) -> QualityModel | None:
    """The quality model ``spec`` names for ``method`` (see :data:`QualityModelLike`)."""
    if spec is None or isinstance(spec, QualityModel):
        return spec
    if str(spec) == "auto":
        return shipped_quality_model(method)
    if str(spec) == "none":
        return None
    return load_quality_model(spec)


def fit_quality_model(
    signals: Sequence[Mapping[str, float]],
    ious: Sequence[float],
    features: Sequence[str],
    *,
    l2: float = 1.0,
    signs: Mapping[str, int] | None = None,
    info: Mapping[str, Any] | None = None,
) -> QualityModel:
    """Fit a :class:`QualityModel` of ``features`` on masks' ``signals`` and true ``ious``
    (each in [0, 1]); ``l2`` is the ridge penalty on the standardised weights (per mask,
    not on the bias). ``signs`` (e.g. :data:`EXPECTED_SIGNS`) constrains a feature's weight
    to be >= 0 (+1) or <= 0 (-1), so the estimate moves the way the signal means."""
    if len(signals) != len(ious) or len(signals) < 2:
        raise InputError("fit_quality_model needs two or more masks, one IoU each")
    y = np.asarray(ious, dtype=np.float64)
    if not np.all((y >= 0) & (y <= 1)):
        raise InputError("IoUs must lie in [0, 1]")
    x = np.array([[float(s.get(f, math.nan)) for f in features] for s in signals], dtype=np.float64)
    x[~np.isfinite(x)] = np.nan
    missing = [f for f, column in zip(features, x.T, strict=True) if np.isnan(column).all()]
    if missing:
        raise InputError(f"no mask has the signal(s) {missing}")
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    scale[~(scale > 0)] = 1.0
    z = np.nan_to_num((x - mean) / scale, nan=0.0)
    n, k = z.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logit = theta[0] + z @ theta[1:]
        p = expit(logit)
        # -y log p - (1 - y) log(1 - p), written stably with logaddexp.
        value = np.mean(np.logaddexp(0.0, logit) - y * logit) + 0.5 * l2 * theta[1:] @ theta[1:]
        residual = (p - y) / n
        grad = np.concatenate([[residual.sum()], z.T @ residual + l2 * theta[1:]])
        return float(value), grad

    start = np.zeros(k + 1)
    mean_y = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    start[0] = math.log(mean_y / (1 - mean_y))
    signs = signs or {}
    bounds = [(None, None)] + [
        (0.0, None) if signs.get(f, 0) > 0 else (None, 0.0) if signs.get(f, 0) < 0 else (None, None)
        for f in features
    ]
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = result.x
    return QualityModel(
        tuple(features),
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in theta[1:]),
        float(theta[0]),
        dict(info or {}),
    )

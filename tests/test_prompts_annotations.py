"""Simulated reference annotations and their downsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prosam.errors import InputError
from prosam.prompts import (
    ANNOTATION_KINDS,
    downsample_annotation,
    draw_points,
    jitter_points,
    paste_occluder,
    random_kind,
    random_points,
    sample_point_prompts,
    sample_points,
    simulate_annotation,
    simulate_points,
    simulate_scribble,
)


def _disk(h: int = 64, w: int = 80, cy: int = 30, cx: int = 40, r: int = 18) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _ring(h: int = 64, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - 32) ** 2 + (xx - 40) ** 2
    return (d2 <= 28**2) & (d2 >= 22**2)


def _l_shape(h: int = 64, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[5:60, 5:12] = True  # vertical bar, 7 px wide
    m[53:60, 5:75] = True  # horizontal bar
    return m


MASKS = {"disk": _disk(), "ring": _ring(), "L": _l_shape()}


@pytest.mark.parametrize("kind", ANNOTATION_KINDS)
def test_same_seed_same_annotation(kind: str) -> None:
    m = MASKS["ring"]
    a = simulate_annotation(m, kind, 7)
    b = simulate_annotation(m, kind, np.random.default_rng(7))
    assert a.dtype == bool and a.shape == m.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["point", "scribble"])
def test_different_seeds_differ(kind: str) -> None:
    m = MASKS["disk"]
    outs = [simulate_annotation(m, kind, s) for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("seed", range(6))
def test_points_and_scribbles_lie_inside_mask(name: str, seed: int) -> None:
    m = MASKS[name]
    for kind in ("point", "scribble"):
        ann = simulate_annotation(m, kind, seed, point_radius=2, brush_radius=(1, 4))
        assert ann.any(), kind
        assert not (ann & ~m).any(), kind


def test_scribble_unclipped_centre_line_stays_inside() -> None:
    # A 1-pixel brush without clipping is the centre line itself.
    for name, m in MASKS.items():
        for seed in range(4):
            ann = simulate_scribble(m, seed, brush_radius=0, clip_to_mask=False)
            assert not (ann & ~m).any(), (name, seed)


def test_scribble_is_a_stroke_not_a_dot() -> None:
    m = MASKS["ring"]
    sizes = [simulate_scribble(m, s, num_strokes=1, brush_radius=0).sum() for s in range(5)]
    assert min(sizes) >= 10


def test_point_counts() -> None:
    m = MASKS["disk"]
    ann, pts = simulate_points(m, 3, num_points=20)
    assert pts.shape == (20, 2) and ann.sum() == 20
    assert len({tuple(p) for p in pts.tolist()}) == 20
    assert m[pts[:, 1], pts[:, 0]].all()
    np.testing.assert_array_equal(ann, draw_points(pts, m.shape))
    counts = {len(simulate_points(m, s, num_points=(1, 4))[1]) for s in range(40)}
    assert counts == {1, 2, 3, 4}
    # simulate_annotation draws the same points as simulate_points for the same seed.
    np.testing.assert_array_equal(simulate_annotation(m, "point", 5), simulate_points(m, 5)[0])


def test_point_count_capped_by_tiny_mask() -> None:
    m = np.zeros((10, 10), dtype=bool)
    m[2, 3] = m[7, 1] = True
    ann, pts = simulate_points(m, 0, num_points=20, point_radius=3)
    assert len(pts) == 2
    np.testing.assert_array_equal(ann, m)


def test_point_radius_draws_disks() -> None:
    m = np.ones((30, 30), dtype=bool)
    ann = draw_points(np.array([[15, 10]]), m.shape, radius=2)
    assert ann.sum() == 13  # digital disk of radius 2
    assert ann[10, 15] and ann[10, 17] and not ann[12, 17]


def test_box_and_mask_kinds() -> None:
    m = MASKS["L"]
    box = simulate_annotation(m, "box", 0)
    expected = np.zeros_like(m)
    expected[5:60, 5:75] = True
    np.testing.assert_array_equal(box, expected)
    np.testing.assert_array_equal(simulate_annotation(m, "mask", 0), m)


@pytest.mark.parametrize("kind", ANNOTATION_KINDS)
def test_empty_mask_raises(kind: str) -> None:
    with pytest.raises(InputError, match="empty"):
        simulate_annotation(np.zeros((8, 8), dtype=bool), kind, 0)


def test_bad_kind_and_ranges() -> None:
    m = MASKS["disk"]
    with pytest.raises(ValueError, match="kind"):
        simulate_annotation(m, "polygon", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_points"):
        simulate_annotation(m, "point", 0, num_points=(5, 2))


def test_random_kind_deterministic_and_covering() -> None:
    kinds = [random_kind(np.random.default_rng(s)) for s in range(40)]
    assert set(kinds) == set(ANNOTATION_KINDS)
    assert random_kind(3) == random_kind(3)


def test_sample_points_and_negatives() -> None:
    m = MASKS["disk"]
    pts = sample_points(m, 5, 1)
    np.testing.assert_array_equal(pts, random_points(m, 5, 1))
    neg = random_points(m, 50, 2, positive=False)
    assert not m[neg[:, 1], neg[:, 0]].any()
    coords, labels = sample_point_prompts(m, 4, num_positive=2, num_negative=3)
    assert coords.shape == (5, 2) and labels.tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(InputError):
        random_points(np.ones((4, 4), dtype=bool), 1, 0, positive=False)
    with pytest.raises(InputError, match="distinct"):
        random_points(np.eye(3, dtype=bool), 4, 0)


def test_jitter_points_clipped() -> None:
    pts = np.array([[0, 0], [9, 4]])
    out = jitter_points(pts, 0, sigma=5.0, image_size=(5, 10))
    assert out.shape == (2, 2)
    assert (out[:, 0] >= 0).all() and (out[:, 0] <= 9).all()
    assert (out[:, 1] >= 0).all() and (out[:, 1] <= 4).all()
    np.testing.assert_array_equal(out, jitter_points(pts, 0, sigma=5.0, image_size=(5, 10)))


def test_downsample_single_point_survives_max_and_area() -> None:
    rng = np.random.default_rng(0)
    ys = rng.integers(0, 480, size=40)
    xs = rng.integers(0, 640, size=40)
    lost_by_nearest = 0
    for y, x in zip(ys, xs, strict=True):
        ann = np.zeros((480, 640), dtype=bool)
        ann[y, x] = True
        mx = downsample_annotation(ann, (60, 80), "max")
        area = downsample_annotation(ann, (60, 80), "area")
        near = downsample_annotation(ann, (60, 80), "nearest")
        assert mx.shape == (60, 80) and mx.dtype == np.float32
        assert mx[y // 8, x // 8] == 1.0 and mx.sum() == 1.0
        assert area[y // 8, x // 8] == pytest.approx(1 / 64)
        assert area.sum() == pytest.approx(1 / 64)
        lost_by_nearest += near.sum() == 0
    assert lost_by_nearest >= 30  # nearest keeps a pixel only if y % 8 == x % 8 == 0


def test_downsample_thin_scribble_and_tensor_input() -> None:
    ann = np.zeros((2, 1, 96, 96), dtype=np.uint8)
    ann[0, 0, 10:80, 37] = 1  # 1-px vertical line
    t = torch.from_numpy(ann)
    out = downsample_annotation(t, (12, 12), "max")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 12, 12)
    assert out[0, 0, :, 4].sum() == 9 and out[1].sum() == 0
    area = downsample_annotation(ann[0, 0].astype(bool), (12, 12), "area")
    assert isinstance(area, np.ndarray)
    assert area.sum() * 64 == pytest.approx(70)
    with pytest.raises(ValueError, match="mode"):
        downsample_annotation(ann, (12, 12), "bilinear")  # type: ignore[arg-type]


def test_paste_occluder() -> None:
    m = _disk()
    img = np.zeros((*m.shape, 3), dtype=np.uint8)
    img[..., 1] = 100
    out, visible, occ = paste_occluder(img, m, 3, fill="color")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert occ.any() and (occ & m).any()
    np.testing.assert_array_equal(visible, m & ~occ)
    np.testing.assert_array_equal(out[~occ], img[~occ])
    again = paste_occluder(img, m, 3, fill="color")
    np.testing.assert_array_equal(out, again[0])
    patched = paste_occluder(img, m, 4, fill="patch", shape="rectangle")[0]
    assert (patched == img).all()  # a patch of a flat image is the same colour

"""Prompts typed by users: parsers, finite values, clicks on the image, boxes clipped to it."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from prosam.cli import main
from prosam.cli.options import parse_box, parse_point, parse_points
from prosam.errors import InputError, ProsamWarning
from prosam.label.api import annotation_to_mask, reference_from_annotation
from prosam.prompts.user_prompts import check_points_inside, clip_box
from prosam.sam import Predictor

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
non_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"])
sizes = st.tuples(st.integers(1, 2000), st.integers(1, 2000))


@given(finite, finite, st.sampled_from([None, 0, 1]))
def test_parse_point_reads_back_what_was_written(x, y, label):
    text = f"{x!r},{y!r}" + ("" if label is None else f",{label}")
    assert parse_point(text) == (x, y, 1 if label is None else label)


@given(st.lists(st.tuples(finite, finite, st.sampled_from([0, 1])), min_size=1, max_size=5))
def test_parse_points_reads_every_click(clicks):
    text = ";".join(f"{x!r},{y!r},{label}" for x, y, label in clicks)
    assert parse_points(text) == clicks


@given(st.lists(finite, min_size=4, max_size=4), st.integers(0, 3), non_finite)
def test_non_finite_coordinates_are_refused_at_parse_time(values, i, bad):
    parts = [repr(v) for v in values]
    parts[i] = bad
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        parse_box(",".join(parts))
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        parse_point(",".join(parts[:2]) if i < 2 else f"{bad},1")


@pytest.mark.parametrize("text", ["1,2,0.5", "1,2,2", "1,2,-1"])
def test_a_point_label_is_zero_or_one(text):
    with pytest.raises(argparse.ArgumentTypeError, match="label"):
        parse_point(text)


@given(st.lists(finite, min_size=4, max_size=4), sizes)
def test_a_clipped_box_lies_in_the_image_and_clipping_twice_changes_nothing(values, size):
    x0, x1 = sorted(values[:2])
    y0, y1 = sorted(values[2:])
    h, w = size
    overlaps = x1 > 0 and y1 > 0 and x0 < w and y0 < h
    if not overlaps:
        with pytest.raises(InputError, match="does not overlap"):
            clip_box((x0, y0, x1, y1), size)
        return
    if min(x1, w) - max(x0, 0) < 1 or min(y1, h) - max(y0, 0) < 1:
        with pytest.raises(InputError, match="has no area"):  # a line or a dot on the image
            clip_box((x0, y0, x1, y1), size)
        return
    clipped, changed = clip_box((x0, y0, x1, y1), size)
    cx0, cy0, cx1, cy1 = clipped
    assert 0 <= cx0 <= cx1 <= w and 0 <= cy0 <= cy1 <= h
    assert changed == (x0 < 0 or y0 < 0 or x1 > w or y1 > h)
    assert clip_box(clipped, size) == (clipped, False)
    # the part of the box on the image is kept whole
    assert (cx1 - cx0, cy1 - cy0) == (min(x1, w) - max(x0, 0), min(y1, h) - max(y0, 0))


@given(st.lists(st.one_of(finite, st.just(math.nan), st.just(math.inf)), min_size=2, max_size=2))
def test_points_are_refused_off_the_image_or_non_finite(point):
    x, y = point
    inside = all(math.isfinite(v) for v in point) and 0 <= x <= 30 and 0 <= y <= 20
    if inside:
        check_points_inside([point], (20, 30))
    else:
        with pytest.raises(InputError):
            check_points_inside([point], (20, 30))


def test_reference_box_is_clipped_with_a_warning():
    with pytest.warns(ProsamWarning, match="clipped to the 30x20 image: 5,2,30,20"):
        mask, kind = annotation_to_mask({"box": [5, 2, 900, 900]}, (20, 30))
    assert kind == "box" and np.array_equal(
        mask, annotation_to_mask({"box": [5, 2, 30, 20]}, (20, 30))[0]
    )
    for bad in ([np.nan, 0, 5, 5], [0, 0, np.inf, np.inf]):
        with pytest.raises(InputError, match="finite"):
            annotation_to_mask({"box": bad}, (20, 30))


def _photo(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (40, 52, 3), dtype=np.uint8)
    img[8:24, 10:30] = 220
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    return path, img


def test_background_clicks_on_a_reference_give_sams_mask(tmp_path, tiny_sam):
    _, img = _photo(tmp_path)
    predictor = Predictor(tiny_sam)
    clicks = {"points": [[15, 15], [40, 30]], "labels": [1, 0]}
    ref = reference_from_annotation(img, clicks, predictor)
    expected = predictor.predict(
        predictor.embed(img), points=np.array(clicks["points"]), point_labels=np.array([1, 0]),
        multimask_output=False,
    ).best()[0]  # fmt: skip
    assert ref.kind == "mask" and np.array_equal(ref.annotation, expected)
    drawn = reference_from_annotation(img, {"points": [[15, 15], [40, 30]]}, predictor)
    assert drawn.kind == "point" and drawn.annotation[30, 40]  # both clicks drawn as foreground
    assert not ref.annotation[30, 40] or not np.array_equal(ref.annotation, drawn.annotation)
    with pytest.raises(InputError, match="background clicks"):
        annotation_to_mask(clicks, img.shape[:2])
    with pytest.raises(InputError, match="foreground click"):
        reference_from_annotation(img, {"points": [[15, 15]], "labels": [0]}, predictor)


def _cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("box", ["nan,nan,nan,nan", "0,0,inf,inf", "1,2,3,-inf"])
@pytest.mark.parametrize("command", ["predict", "segment", "label"])
def test_non_finite_boxes_exit_2_in_every_command(tmp_path, capsys, command, box):
    photo, _ = _photo(tmp_path)
    out = tmp_path / ("m.png" if command == "predict" else "out")
    argv = {
        "predict": ["predict", str(photo), "--box", box],
        "segment": ["segment", "--ref", str(photo), "--ref-box", box, str(photo)],
        "label": ["label", "--ref", str(photo), "--ref-box", box, str(photo)],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out), "--model", "tiny"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "finite" in err and "Traceback" not in err
    assert not out.exists()


def test_predict_clips_a_box_partly_outside_the_image_and_says_so(tmp_path, capsys):
    photo, _ = _photo(tmp_path)
    common = ["--model", "tiny", "--no-embedding-cache"]
    code, _, err = _cli(
        ["predict", str(photo), "--box", "10,8,900,900", "--out", str(tmp_path / "a.png"), *common],
        capsys,
    )
    assert code == 0 and err.count("\n") == 1
    assert "prosam: warning: --box 10,8,900,900 clipped to the 52x40 image: 10,8,52,40" in err
    code, _, err = _cli(
        ["predict", str(photo), "--box", "10,8,52,40", "--out", str(tmp_path / "b.png"), *common],
        capsys,
    )
    assert code == 0 and "clipped" not in err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("command", ["segment", "label"])
def test_negative_reference_clicks_are_accepted_with_predicts_syntax(tmp_path, capsys, command):
    photo, _ = _photo(tmp_path)
    out = tmp_path / "out"
    code, _, err = _cli(
        [command, "--ref", str(photo), "--ref-points", "15,15;40,30,0", str(photo),
         "--out", str(out), "--model", "tiny", "--no-embedding-cache"]
        + (["--no-progress", "--workers", "0"] if command == "label" else []),
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert list(out.rglob("*.png"))

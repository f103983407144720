"""Bad, odd and hostile inputs over the CLI and the Python API: each is a one-line error
(exit 2, nothing written), a file skipped with its reason, or handled; never a traceback,
a hang or a silently wrong result."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from prosam.cli import join_negative_coordinates, main
from prosam.errors import InputError

TINY = ["--model", "tiny", "--backend", "torch", "--no-progress"]


@pytest.fixture
def photos(tmp_path):
    img = np.random.default_rng(0).integers(0, 80, (60, 80, 3), dtype=np.uint8)
    img[15:40, 20:50] = 230
    (tmp_path / "t").mkdir()
    Image.fromarray(img).save(tmp_path / "a.png")
    for name in ("x.png", "y.png"):
        Image.fromarray(img).save(tmp_path / "t" / name)
    return tmp_path


def _ref(photos):
    return ["--ref", str(photos / "a.png"), "--ref-box", "20,15,50,40"]


def _fails_cleanly(capsys, argv, message, out=None):
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()[-1]) > 0
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "banana"], "--device banana: not a device"),
        (["--method-option", "max_instances=abc"], "max_instances must be an integer"),
        (["--method-option", "bogus=1"], "has no option 'bogus'"),
        (["--score-threshold", "nan"], "expected a finite number"),
        (["--score-threshold", "inf"], "expected a finite number"),
        (["--min-area-fraction", "2"], "expected a fraction in [0, 1)"),
        (["--max-pixels", "0"], "expected an integer >= 1"),
        (["--method", "cpc", "--method-option", "outer_steps=-1"], "outer_steps must be >= 0"),
    ],
)
def test_label_refuses_bad_options_with_one_line(photos, capsys, extra, message):
    out = photos / "out"
    _fails_cleanly(
        capsys,
        ["label", *_ref(photos), str(photos / "t"), "--out", str(out), *TINY, *extra],
        message,
        out,
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_missing_gpu_is_one_line(photos, capsys):
    argv = ["predict", str(photos / "a.png"), "--point", "5,5", "--out", str(photos / "m.png")]
    _fails_cleanly(capsys, [*argv, *TINY[:4], "--device", "cuda"], "no CUDA GPU")


def test_segment_refuses_nan_and_a_path_class(photos, capsys):
    base = ["segment", *_ref(photos), str(photos / "t"), "--out", str(photos / "o"), *TINY]
    _fails_cleanly(capsys, [*base, "--score-threshold", "nan"], "finite number")
    _fails_cleanly(capsys, [*base, "--class", "../../evil"], "holds '/'")
    _fails_cleanly(capsys, [*base, "--class", "a/b"], "holds '/'")
    assert not (photos / "o").exists() and not (photos.parent / "evil").exists()


def test_a_box_without_area_and_a_folder_for_an_image(photos, capsys):
    out = photos / "m.png"
    _fails_cleanly(
        capsys,
        ["predict", str(photos / "a.png"), "--box", "10,10,10,10", "--out", str(out), *TINY[:4]],
        "has no area",
    )
    _fails_cleanly(
        capsys,
        ["predict", str(photos / "t"), "--point", "5,5", "--out", str(out), *TINY[:4]],
        "is a folder",
    )
    assert not out.exists()


def test_negative_coordinates_are_values_not_options(photos, capsys):
    assert join_negative_coordinates(["--box", "-5,-5,30,30", "--point", "-1,2"]) == [
        "--box=-5,-5,30,30",
        "--point=-1,2",
    ]
    assert join_negative_coordinates(["--box", "--out"]) == ["--box", "--out"]
    out = photos / "m.png"
    argv = ["predict", str(photos / "a.png"), "--box", "-5,-5,30,30", "--out", str(out)]
    assert main([*argv, *TINY[:4]]) == 0 and out.is_file()
    assert "clipped" in capsys.readouterr().err


def test_review_refuses_a_negative_limit_and_a_job_without_classes(photos, capsys):
    out = photos / "job"
    out.mkdir()
    (out / "job.json").write_text(json.dumps({"version": 3}))
    (out / "targets.json").write_text("[]")
    _fails_cleanly(capsys, ["review", str(out), "--limit", "-1"], "expected an integer >= 1")
    _fails_cleanly(capsys, ["review", str(out)], "names no classes")


def test_an_output_folder_that_is_a_link_loop(photos, capsys):
    loop = photos / "loop"
    os.symlink(loop, loop)
    _fails_cleanly(
        capsys,
        ["label", *_ref(photos), str(photos / "t"), "--out", str(loop), *TINY],
        "loop of links",
    )


def test_world_size_that_is_not_a_number(photos, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "banana")
    out = photos / "out"
    _fails_cleanly(
        capsys,
        ["label", *_ref(photos), str(photos / "t"), "--out", str(out), *TINY],
        "WORLD_SIZE='banana'",
    )


@pytest.mark.skipif(sys.platform != "linux", reason="file names of raw bytes: Linux")
def test_a_pipe_a_gif_and_a_non_utf8_name_are_reported_not_fatal(photos, capsys):
    folder = photos / "t"
    os.mkfifo(folder / "pipe.jpg")  # reading it would block forever
    (folder / "anim.gif").write_bytes(b"GIF89a")
    (folder / "photo.heic").write_bytes(b"....")
    Image.open(photos / "a.png").save(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    Image.open(photos / "a.png").convert("RGB").save(folder / "c.jfif", "JPEG")
    out = photos / "out"
    argv = ["label", *_ref(photos), str(folder), "--out", str(out), *TINY, "--score-threshold", "0"]
    assert main(argv) == 1
    failures = {
        f["file_name"]: f["reason"] for f in json.loads((out / "failures.json").read_text())
    }
    assert set(failures) == {"pipe.jpg", "anim.gif", "photo.heic"}
    assert "not a regular file" in failures["pipe.jpg"]
    assert "does not read GIF" in failures["anim.gif"]
    review = (out / "review.csv").read_bytes()
    assert b"caf\xe9.png" in review and b"c.jfif" in review
    assert main(["review", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_out_inside_the_targets_is_never_labelled(photos, capsys):
    folder = photos / "t"
    argv = ["label", *_ref(photos), str(folder), "--recursive", "--format", "png,overlay", *TINY]
    for out in (folder, folder / "labels"):
        assert main([*argv, "--out", str(out)]) == 0
        assert main([*argv, "--out", str(out)]) == 0
        targets = json.loads((out / "targets.json").read_text())
        assert sorted(t["file_name"] for t in targets if "/" not in t["key"]) == ["x.png", "y.png"]
        assert not [t for t in targets if t["key"].split("/")[0] in ("png", "overlay", "labels")]


def test_a_refused_cpc_rerun_changes_nothing(photos, capsys):
    out = photos / "out"
    argv = ["label", *_ref(photos), str(photos / "t"), "--out", str(out), *TINY, "--method", "cpc"]
    assert main([*argv, "--method-option", "outer_steps=1"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("calibration*") if p.is_file()}
    assert before
    _fails_cleanly(capsys, [*argv, "--method-option", "outer_steps=2"], "another configuration")
    after = {p.name: p.read_bytes() for p in out.glob("calibration*") if p.is_file()}
    assert after == before


def test_fit_refuses_a_class_that_is_not_text(tiny_sam):
    from prosam.label.api import Segmenter

    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    with pytest.raises(InputError, match="must be text, not NoneType"):
        Segmenter(tiny_sam, "persam").fit([(image, mask, None)])


@pytest.mark.parametrize("key", ["../../../evil", "/abs/evil", "a/../../../../evil"])
def test_writers_refuse_a_key_that_leaves_the_output(tmp_path, key):
    from prosam.label.records import record_path
    from prosam.label.writers import LabelMask, OverlayWriter, PngWriter, YoloWriter

    out = tmp_path / "out"
    masks = [LabelMask("cat", np.ones((8, 8), bool), 0.9)]
    for writer in (PngWriter(out, ["cat"]), YoloWriter(out, ["cat"]), OverlayWriter(out, ["cat"])):
        with pytest.raises(InputError, match="outside the output folder"):
            writer.add(key, (8, 8), masks, image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="outside the output folder"):
        record_path(out, key)
    assert not list(tmp_path.rglob("evil*")) and not os.path.exists("/abs")

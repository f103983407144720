"""``prosam segment``: output names mirror the targets' paths, failures on stderr, a summary."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main


def save_photo(path, seed, h=40, w=52):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[8:24, 10:30] = 220
    Image.fromarray(img).save(path)
    return path


def _segment(ref, targets, out, *extra):
    return main(
        ["segment", "--ref", str(ref), "--ref-box", "10,8,30,24", *map(str, targets),
         "--out", str(out), "--model", "tiny", "--no-embedding-cache", *extra]
    )  # fmt: skip


def test_two_targets_of_one_name_in_two_folders_get_two_masks(tmp_path, capsys):
    ref = save_photo(tmp_path / "ref.png", 0)
    a = save_photo(tmp_path / "t" / "a" / "x.jpg", 1)
    b = save_photo(tmp_path / "t" / "b" / "x.jpg", 2, 36)
    out = tmp_path / "masks"
    assert _segment(ref, [tmp_path / "t" / "a", tmp_path / "t" / "b"], out, "--instances") == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a/x-instances.png", "a/x.png", "b/x-instances.png", "b/x.png"]
    assert Image.open(out / "b" / "x.png").size == (52, 36)
    captured = capsys.readouterr()
    assert captured.out == f"{out}: 2 segmented, 0 failed" + captured.out.split("0 failed")[1]
    assert captured.out.count("\n") == 2 and a.is_file() and b.is_file()
    assert "answers to check" in captured.out.splitlines()[1]


def test_a_failed_target_is_one_stderr_line_and_the_others_are_segmented(tmp_path, capsys):
    ref = save_photo(tmp_path / "ref.png", 0)
    save_photo(tmp_path / "t" / "good.png", 1)
    (tmp_path / "t" / "bad.jpg").write_text("not a picture")
    Image.fromarray(np.zeros((2, 20000, 3), np.uint8)).save(tmp_path / "t" / "thin.png")
    out = tmp_path / "masks"
    assert _segment(ref, [tmp_path / "t"], out, "--no-progress") == 1
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2 and "bad.jpg: not a readable image" in skipped[0]
    assert "thin.png: image is 20000x2 pixels" in skipped[1]
    assert "skipped" not in captured.out and "1 segmented, 2 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "review.csv"]


@pytest.mark.parametrize("inside", [True, False])
def test_masks_written_inside_the_target_folder_are_not_targets(tmp_path, capsys, inside):
    ref = save_photo(tmp_path / "ref.png", 0)
    save_photo(tmp_path / "t" / "x.png", 1)
    out = tmp_path / "t" / "masks" if inside else tmp_path / "masks"
    assert _segment(ref, [tmp_path / "t"], out) == 0
    assert _segment(ref, [tmp_path / "t"], out) == 0
    assert sorted(p.name for p in out.rglob("*")) == ["review.csv", "x.png"]
    assert any("1 segmented" in line for line in capsys.readouterr().out.splitlines())


def test_instances_that_would_overwrite_a_target_mask_are_refused(tmp_path, capsys):
    ref = save_photo(tmp_path / "ref.png", 0)
    save_photo(tmp_path / "t" / "x.png", 1)
    save_photo(tmp_path / "t" / "x-instances.png", 2)
    assert _segment(ref, [tmp_path / "t"], tmp_path / "m", "--instances") == 2
    assert "x-instances" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_mask_never_overwrites_a_target(tmp_path, capsys):
    ref = save_photo(tmp_path / "ref.png", 0)
    target = save_photo(tmp_path / "t" / "x.png", 1)
    before = target.read_bytes()
    assert _segment(ref, [tmp_path / "t"], tmp_path / "t") == 2
    assert "would overwrite" in capsys.readouterr().err and target.read_bytes() == before


def test_a_target_scoring_under_the_threshold_gets_an_empty_mask(tmp_path, capsys):
    ref = save_photo(tmp_path / "ref.png", 0)
    targets = [save_photo(tmp_path / "t" / "x.png", 1), save_photo(tmp_path / "t" / "y.png", 2)]
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    assert _segment(ref, targets, keep, "--method", "persam", "--score-threshold=-1e9") == 0
    assert "without the object" not in capsys.readouterr().out
    assert _segment(ref, targets, drop, "--method", "persam", "--score-threshold", "1e9") == 0
    assert (
        "2 segmented, 0 failed, 2 without the object (score under 1e+09)" in capsys.readouterr().out
    )
    for name in ("x.png", "y.png"):
        assert not np.asarray(Image.open(drop / name)).any()
        assert Image.open(drop / name).size == Image.open(keep / name).size
    assert any(np.asarray(Image.open(keep / n)).any() for n in ("x.png", "y.png"))

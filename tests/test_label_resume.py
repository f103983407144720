"""A rerun follows the files: added, replaced and deleted targets, missing outputs, the job's
own output folder among the targets, and temporary files a killed run left."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from prosam.cli import main
from prosam.io import remove_stale_temporaries
from prosam.label.job import LabelJob
from prosam.sam import Predictor
from tests.fixtures_files import file_hashes
from tests.test_label_job import BrightMethod, bright_image

FORMATS = ["png", "png-indexed", "coco", "yolo", "overlay"]


@pytest.fixture(scope="module")
def predictor(tiny_sam) -> Predictor:
    return Predictor(tiny_sam)


def _save(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(bright_image(h, w, seed)).save(path)
    return path


def _tree(src: Path) -> None:
    _save(src / "a" / "x.png", 40, 56, 1)
    _save(src / "a" / "y.png", 48, 40, 2)
    _save(src / "b" / "z.png", 44, 44, 3)


def _change(src: Path) -> None:
    _save(src / "b" / "x.png", 36, 52, 4)  # added: the same name as a/x.png, another folder
    (src / "a" / "y.png").unlink()
    _save(src / "a" / "y.png", 56, 30, 5)  # replaced by another picture of another size
    (src / "b" / "z.png").unlink()  # deleted


def _run(predictor, out: Path, src: Path, method: BrightMethod | None = None):
    method = method or BrightMethod()
    job = LabelJob({"thing": method}, predictor, out, formats=FORMATS, workers=0, progress=False)
    summary = job.run(sorted(src.rglob("*.png")), root=src)
    return summary, method


def test_adding_replacing_and_deleting_targets_ends_like_a_fresh_run(tmp_path, predictor):
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "out"
    _run(predictor, out, src)
    assert (out / "png" / "thing" / "b" / "z.png").is_file()
    _change(src)
    summary, method = _run(predictor, out, src)
    assert method.calls == 2  # b/x.png (new) and a/y.png (replaced); a/x.png is untouched
    assert summary.replaced == 1 and summary.removed == 1 and summary.skipped == 1
    fresh = tmp_path / "fresh"
    _run(predictor, fresh, src)
    assert file_hashes(out) == file_hashes(fresh)
    coco = json.loads((out / "coco.json").read_text())
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]}
    assert sizes == {"a/x.png": (56, 40), "a/y.png": (30, 56), "b/x.png": (52, 36)}


def _label_cli(tmp_path: Path, src: Path, out: Path) -> int:
    ref = _save(tmp_path / "ref.png", 40, 56, 1)
    return main(
        ["label", "--ref", str(ref), "--ref-box", "5,5,30,30", "--class", "thing",
         str(src), "--recursive", "--out", str(out), "--format", ",".join(FORMATS),
         "--model", "tiny", "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
         "--no-progress"]
    )  # fmt: skip


def test_adding_replacing_and_deleting_targets_through_the_cli(tmp_path, capsys):
    src = tmp_path / "photos"
    _tree(src)
    out = tmp_path / "labels"
    assert _label_cli(tmp_path, src, out) == 0
    _change(src)
    assert _label_cli(tmp_path, src, out) == 0
    assert "2 labelled" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert _label_cli(tmp_path, src, fresh) == 0
    assert file_hashes(out) == file_hashes(fresh)


def test_an_out_folder_inside_the_targets_is_never_labelled(tmp_path, capsys):
    src = tmp_path / "photos"
    _tree(src)
    out = src / "labels"
    assert _label_cli(tmp_path, src, out) == 0
    first = file_hashes(out)
    assert _label_cli(tmp_path, src, out) == 0
    assert "0 labelled (0 with nothing found), 3 already done" in capsys.readouterr().out
    names = [t["file_name"] for t in json.loads((out / "targets.json").read_text())]
    assert names == ["a/x.png", "a/y.png", "b/z.png"] and file_hashes(out) == first


def test_missing_outputs_are_rewritten_from_the_record(tmp_path, predictor):
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "out"
    _run(predictor, out, src)
    before = file_hashes(out)
    for lost in ("png/thing/a/x.png", "overlay/a/x.jpg", "yolo/b/z.txt", "png/a/y.png"):
        (out / lost).unlink()
    summary, method = _run(predictor, out, src)
    assert method.calls == 0 and summary.backfilled == 3 and summary.processed == 0
    assert file_hashes(out) == before


def test_temporary_files_of_a_killed_run_are_removed(tmp_path, predictor):
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "out"
    _run(predictor, out, src)
    folder = out / "png" / "thing" / "a"
    dead = folder / ".x.png.pid999999999.k2j3.tmp"  # no such process
    old = folder / ".x.png.3h1f.tmp"  # no process id, a day old
    mine = folder / f".x.png.pid{os.getpid()}.q9z8.tmp"  # being written right now
    for tmp in (dead, old, mine):
        tmp.write_bytes(b"half")
    os.utime(old, (0, 0))
    _run(predictor, out, src)
    assert not dead.exists() and not old.exists() and mine.exists()
    assert remove_stale_temporaries(out, max_age_s=0) == 1 and not mine.exists()


def test_a_target_that_became_unreadable_loses_its_outputs(tmp_path, predictor):
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "out"
    _run(predictor, out, src)
    (src / "a" / "y.png").write_bytes(b"not a png any more")
    summary, _ = _run(predictor, out, src)
    assert summary.failed == 1 and summary.replaced == 1
    assert not [p for p in out.rglob("y.*") if "failures" not in p.parts]
    coco = json.loads((out / "coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a/x.png", "b/z.png"]


def test_a_record_keeps_what_identifies_its_file(tmp_path, predictor):
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "out"
    _run(predictor, out, src)
    record = json.loads((out / "records" / "a" / "x.json").read_text())
    data = (src / "a" / "x.png").read_bytes()
    assert record["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["file"]["size"] == len(data)
    # the same bytes written again (a new mtime) are still the same target
    (src / "a" / "x.png").write_bytes(data)
    summary, method = _run(predictor, out, src)
    assert method.calls == 0 and summary.replaced == 0


class SlowMethod(BrightMethod):
    """BrightMethod taking its time, so that two jobs overlap."""

    def predict(self, target):
        time.sleep(0.05)
        return super().predict(target)


def test_two_jobs_on_one_output_folder_share_the_work(tmp_path, predictor):
    """Two jobs at once (threads here: the per-target file locks are taken on separate open
    files, so they exclude each other as two processes' do)."""
    src = tmp_path / "src"
    for i in range(10):
        _save(src / f"p{i}.png", 30 + i, 40, i)
    out = tmp_path / "out"
    methods = [SlowMethod(), SlowMethod()]
    summaries = {}

    def run(i: int) -> None:
        summaries[i], _ = _run(predictor, out, src, methods[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert methods[0].calls + methods[1].calls == 10  # each target labelled exactly once
    assert methods[0].calls > 0 and methods[1].calls > 0  # by both
    assert sum(s.processed for s in summaries.values()) == 10
    assert all(s.ok for s in summaries.values()) and not (out / "locks").exists()
    fresh = tmp_path / "fresh"
    _run(predictor, fresh, src)
    assert file_hashes(out) == file_hashes(fresh)


def test_record_scores_keep_six_decimals():
    from prosam.label.records import rounded

    a = {"score": 0.3177986400729159, "signals": {"x": [1e-9, 2.5]}, "n": 3, "s": "t"}
    b = {"score": 0.31779860953114225, "signals": {"x": [-1e-9, 2.5000000001]}, "n": 3, "s": "t"}
    assert (
        rounded(a)
        == rounded(b)
        == {
            "score": 0.317799,
            "signals": {"x": [0.0, 2.5]},
            "n": 3,
            "s": "t",
        }
    )
    assert json.dumps(rounded(b)) == json.dumps(rounded(a))  # not "-0.0"

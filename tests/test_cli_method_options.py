"""``--method-option`` on ``prosam label`` and ``prosam segment``: options reach the method,
are recorded in the job, a resumed job with other options is refused, a bad option is a
one-line error with nothing written."""

from __future__ import annotations

import json

from prosam.cli import main
from tests.test_cli_segment import save_photo


def _photos(tmp_path):
    ref = save_photo(tmp_path / "ref.png", 0)
    save_photo(tmp_path / "t" / "a.jpg", 1)
    save_photo(tmp_path / "t" / "b.jpg", 2, 36)
    return ref, tmp_path / "t"


def _label(ref, targets, out, *extra):
    return main(
        ["label", "--ref", str(ref), "--ref-box", "10,8,30,24", "--class", "thing",
         str(targets), "--out", str(out), "--model", "tiny", "--no-embedding-cache",
         "--workers", "0", "--no-progress", *extra]
    )  # fmt: skip


def _segment(ref, targets, out, *extra):
    return main(
        ["segment", "--ref", str(ref), "--ref-box", "10,8,30,24", str(targets),
         "--out", str(out), "--model", "tiny", "--no-embedding-cache", "--no-progress",
         *extra]
    )  # fmt: skip


def test_label_records_its_method_options_and_refuses_to_resume_with_others(tmp_path, capsys):
    ref, targets = _photos(tmp_path)
    out = tmp_path / "labels"
    assert _label(ref, targets, out, "--method-option", "max_instances=1") == 0
    job = json.loads((out / "job.json").read_text())
    assert job["method_options"] == {"max_instances": "1"}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _label(ref, targets, out, "--method-option", "max_instances=2") == 2
    err = capsys.readouterr().err
    assert "differs in" in err and "method_options" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _label(ref, targets, out, "--method-option", "max_instances=1") == 0
    assert "0 labelled" in capsys.readouterr().out


def test_a_method_option_reaches_the_method(tmp_path, capsys):
    ref, targets = _photos(tmp_path)
    # matcher refuses max_points=0 in its constructor: the option got there
    assert _label(ref, targets, tmp_path / "l", "--method-option", "max_points=0") == 2
    assert "max_points" in capsys.readouterr().err
    assert not (tmp_path / "l" / "job.json").exists()
    assert _segment(ref, targets, tmp_path / "s", "--method-option", "max_points=0") == 2
    assert "max_points" in capsys.readouterr().err
    assert not list((tmp_path / "s").rglob("*.png"))


def test_unknown_or_malformed_options_are_one_line_errors(tmp_path, capsys):
    ref, targets = _photos(tmp_path)
    for extra in (["--method-option", "nonsense=1"], ["--method-option", "novalue"]):
        for run, out in ((_label, tmp_path / "l"), (_segment, tmp_path / "s")):
            assert run(ref, targets, out, *extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err
            assert ("nonsense" in err) or ("KEY=VALUE" in err)
            assert not out.exists() or not list(out.rglob("*.png"))


def test_segment_options_reach_each_class_of_several(tmp_path, capsys):
    ref, targets = _photos(tmp_path)
    other = save_photo(tmp_path / "ref2.png", 3)
    code = main(
        ["segment", "--ref", str(ref), "--ref-box", "10,8,30,24", "--class", "a",
         "--ref", str(other), "--ref-box", "10,8,30,24", "--class", "b", str(targets),
         "--out", str(tmp_path / "s"), "--model", "tiny", "--no-embedding-cache",
         "--no-progress", "--method-option", "max_points=0"]
    )  # fmt: skip
    assert code == 2 and "max_points" in capsys.readouterr().err

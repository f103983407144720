"""``--out`` is checked before any model loads; an unwritable embedding cache is only read."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main

#: A model that cannot load: a command that got to loading it fails with another message.
NO_MODEL = ["--model", "/nonexistent/weights.pth", "--no-download"]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def _argv(command, photo, out):
    return {
        "predict": ["predict", str(photo), "--point", "5,5"],
        "segment": ["segment", "--ref", str(photo), "--ref-box", "1,1,20,20", str(photo)],
        "label": ["label", "--ref", str(photo), "--ref-box", "1,1,20,20", str(photo)],
    }[command] + ["--out", str(out), *NO_MODEL]


def _fails_fast(argv, capsys, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "weights" not in err  # refused before the model loads


@pytest.mark.parametrize("name", ["mask.jpg", "mask", "mask.PNG.txt"])
def test_predict_refuses_an_out_suffix_it_does_not_write(tmp_path, photo, capsys, name):
    _fails_fast(_argv("predict", photo, tmp_path / name), capsys, "give a name ending in .png")
    assert not (tmp_path / name).exists()


def test_predict_refuses_an_existing_folder_as_out(tmp_path, photo, capsys):
    (tmp_path / "masks.png").mkdir()
    _fails_fast(_argv("predict", photo, tmp_path / "masks.png"), capsys, "is a folder")


@pytest.mark.parametrize("command", ["predict", "segment", "label"])
def test_out_under_a_file_is_refused(tmp_path, photo, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / ("m.png" if command == "predict" else "out")
    _fails_fast(_argv(command, photo, out), capsys, f"{blocker}: is a file, not a folder")


@pytest.mark.parametrize("command", ["segment", "label"])
def test_out_that_is_a_file_is_refused(tmp_path, photo, capsys, command):
    out = tmp_path / "out"
    out.write_text("x")
    _fails_fast(_argv(command, photo, out), capsys, "is a file, not a folder")
    assert out.read_text() == "x"


@pytest.mark.parametrize("command", ["predict", "segment", "label"])
def test_an_unwritable_folder_is_refused(tmp_path, photo, capsys, command, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and os.fspath(p) != str(locked))
    out = locked / "inner" / ("m.png" if command == "predict" else "out")
    _fails_fast(_argv(command, photo, out), capsys, f"{locked}: folder is not writable")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused(tmp_path, photo, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails_fast(_argv("predict", photo, locked / "m.png"), capsys, "not writable")
    finally:
        locked.chmod(0o700)


def test_an_unwritable_embedding_cache_is_only_read(tmp_path, photo, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "embeddings").write_text("not a folder")  # no entry can be written under it
    out = tmp_path / "m.png"
    argv = ["predict", str(photo), "--point", "5,5", "--out", str(out), "--model", "tiny"]
    assert main([*argv, "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "prosam: warning:" in err and "embedding cache not writable" in err
    assert err.count("\n") == 1 and out.is_file()


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (["--ref-box", "900,900,950,950"], "does not overlap"),
        (["--ref-mask", "missing.png"], "no such file"),
    ],
)
def test_label_refuses_a_bad_reference_before_the_model_loads(
    tmp_path, photo, capsys, annotation, message
):
    argv = ["label", "--ref", str(photo), *annotation, str(photo), "--out", str(tmp_path / "o")]
    _fails_fast([*argv, *NO_MODEL], capsys, message)

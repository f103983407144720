"""Random bad values for the options of ``predict``, ``segment`` and ``label`` (a seeded
generator): each run ends in a one-line error with exit status 2 and writes nothing, or,
for a value that happens to be valid, runs; never a traceback."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.cli.reports import strict_json

BAD_VALUES = [
    "", " ", "nan", "-inf", "1e999", "-1", "0", "abc", "1,2", "1,2,3", "1,2,3,4,5", "-5,-5,0,0",
    "\x00", "../../x", "a/b", "💥", "9" * 40, "0x10", "--", "=", "1;2", "{}", "[1]",
]  # fmt: skip
OPTIONS = {
    "predict": ["--point", "--box", "--multimask", "--device", "--precision", "--backend"],
    "segment": [
        "--ref-box", "--ref-points", "--class", "--score-threshold", "--method",
        "--method-option", "--device",
    ],
    "label": [
        "--ref-box", "--ref-points", "--class", "--score-threshold", "--min-area-fraction",
        "--max-pixels", "--shard", "--workers", "--encode-ahead", "--format", "--method",
        "--method-option", "--overlaps", "--device",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    img = np.random.default_rng(0).integers(0, 80, (30, 40, 3), dtype=np.uint8)
    img[8:20, 10:25] = 230
    Image.fromarray(img).save(folder / "a.png")
    return folder


def _argv(command, photo, out, option, value):
    tiny = ["--model", "tiny", "--backend", "torch"]
    if command == "predict":
        base = ["predict", str(photo / "a.png"), "--out", str(out / "m.png"), "--point", "5,5"]
    else:
        base = [command, "--ref", str(photo / "a.png"), "--ref-box", "10,8,25,20"]
        base += [str(photo / "a.png"), "--out", str(out)]
        base += ["--no-progress"] if command != "predict" else []
    return [*base, *tiny, f"{option}={value}"]


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_random_bad_values_never_show_a_traceback(photo, tmp_path, capsys, command):
    rng = random.Random(f"fuzz-{command}")
    for trial in range(10):
        option = rng.choice(OPTIONS[command])
        value = rng.choice(BAD_VALUES)
        out = tmp_path / f"out{trial}"
        try:
            code = main(_argv(command, photo, out, option, value))
        except SystemExit as exit_info:
            code = exit_info.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, (option, value, err)
        assert code in (0, 1, 2), (option, value, code)
        if code == 2:
            assert err.strip(), (option, value)
            assert err.strip().splitlines()[-1].startswith(("prosam", "usage")), err
            assert not out.exists() or not any(out.rglob("*.png")), (option, value)


def test_reports_are_strict_json_with_the_undefined_values_named():
    text = strict_json({"miou": float("nan"), "per_class": [1.0, math.inf], "n": 3})
    data = json.loads(text)  # Python's reader accepts NaN: check the text has none
    assert "NaN" not in text and "Infinity" not in text
    assert data["miou"] is None and data["per_class"] == [1.0, None] and data["n"] == 3
    assert data["non_finite"] == ["miou", "per_class[1]"]

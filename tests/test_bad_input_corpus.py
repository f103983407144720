"""A corpus of awkward and broken inputs, generated here, that every command survives.

Each case is one file. ``predict`` runs on it alone; ``segment`` and ``label`` run once over
the whole corpus folder (``label`` recursively, its ``--out`` inside the folder). For every
case and command: a good file is processed (its mask at the displayed size), a bad one is
one line naming the file and the problem, no command shows a traceback, nothing is left
half-written, and the exit status says whether something failed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.label.targets import plan_targets

COMMANDS = ("predict", "segment", "label")
MAX_PIXELS = 200 * 200  # label's --max-pixels in this corpus


def _photo(h: int = 30, w: int = 40, seed: int = 0) -> Image.Image:
    img = np.random.default_rng(seed).integers(0, 80, (h, w, 3), dtype=np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = 230
    return Image.fromarray(img)


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _exif(orientation: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = _photo(30, 40, orientation)
        exif = img.getexif()
        exif[0x0112] = orientation
        path.write_bytes(_jpeg(img, exif=exif))

    return write


@dataclass(frozen=True)
class Case:
    """A corpus file: how to write it, its displayed ``(H, W)`` when it is good, and for the
    commands it fails in, what the one line says."""

    name: str
    write: Callable[[Path], None]
    size: tuple[int, int] | None = None
    problem: str = ""
    fails_in: tuple[str, ...] = COMMANDS


def _save(img_fn: Callable[[], Image.Image], **kwargs) -> Callable[[Path], None]:
    return lambda path: img_fn().save(path, **kwargs)


CASES = [
    Case("photo.jpg", lambda p: p.write_bytes(_jpeg(_photo())), (30, 40), fails_in=()),
    Case("zero-byte.jpg", lambda p: p.write_bytes(b""), problem="not a readable image"),
    Case("text-as.jpg", lambda p: p.write_text("hello\n"), problem="not a readable image"),
    Case(
        "truncated.jpg",
        lambda p: p.write_bytes(_jpeg(_photo(60, 80))[:400]),
        problem="not a readable image",
    ),
    Case(
        "truncated.png",
        lambda p: p.write_bytes(_png_header_only(40, 30)),
        problem="not a readable image",
    ),
    Case(
        "cmyk.jpg", lambda p: p.write_bytes(_jpeg(_photo().convert("CMYK"))), (30, 40), fails_in=()
    ),
    Case(
        "sixteen-bit.png",
        _save(lambda: Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))),
        (30, 40),
        fails_in=(),
    ),
    Case("palette.png", _save(lambda: _photo().convert("P")), (30, 40), fails_in=()),
    Case("grey-alpha.png", _save(lambda: _photo().convert("LA")), (30, 40), fails_in=()),
    Case("rgba.png", _save(lambda: _photo().convert("RGBA")), (30, 40), fails_in=()),
    Case("one-pixel.png", _save(lambda: _photo(1, 1)), (1, 1), fails_in=()),
    Case(
        "thin-20000x2.png",
        _save(lambda: Image.fromarray(np.zeros((2, 20000, 3), np.uint8))),
        problem="image is 20000x2 pixels: too thin for SAM",
    ),
    Case(
        "huge-header.png",
        lambda p: p.write_bytes(_png_header_only(60000, 60000)),
        problem="image is too large",
    ),
    Case(
        "over-max-pixels.png",
        _save(lambda: _photo(250, 250)),
        (250, 250),
        problem=f"more than {MAX_PIXELS}",
        fails_in=("label",),
    ),
    *(
        Case(f"exif-{k}.jpg", _exif(k), (40, 30) if k >= 5 else (30, 40), fails_in=())
        for k in range(2, 9)
    ),
    Case("phöto 猫 with spaces.png", _save(lambda: _photo(seed=3)), (30, 40), fails_in=()),
    Case("same-stem.jpg", lambda p: p.write_bytes(_jpeg(_photo(seed=4))), (30, 40), fails_in=()),
    Case("same-stem.png", _save(lambda: _photo(28, 36, seed=5)), (28, 36), fails_in=()),
    Case("sub/deeper.png", _save(lambda: _photo(26, 34, seed=6)), (26, 34), fails_in=()),
]
if os.name == "posix":
    CASES += [
        Case(
            "link-to-rgba.png", lambda p: p.symlink_to(p.parent / "rgba.png"), (30, 40), fails_in=()
        ),
        Case(
            "broken-link.png", lambda p: p.symlink_to(p.parent / "gone.png"), problem="no such file"
        ),
    ]
BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "targets"
    root.mkdir()
    for case in CASES:
        path = root / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        case.write(path)
    return root


@pytest.fixture(scope="module")
def reference(corpus) -> Path:
    path = corpus.parent / "ref.png"
    _photo(seed=9).save(path)
    return path


@dataclass
class Run:
    code: int
    out: str
    err: str
    folder: Path


def _main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with its stdout and stderr."""
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


MODEL = ["--model", "tiny", "--no-embedding-cache"]


@pytest.fixture(scope="module")
def segmented(corpus, reference) -> Run:
    folder = corpus.parent / "masks"
    argv = ["segment", "--ref", str(reference), "--ref-box", "5,5,25,20", str(corpus)]
    code, out, err = _main(
        [*argv, str(corpus / "sub"), "--out", str(folder), *MODEL, "--no-progress"]
    )
    return Run(code, out, err, folder)


@pytest.fixture(scope="module")
def labelled(corpus, reference) -> Run:
    folder = corpus / "labels"  # inside the targets: never labelled itself
    argv = ["label", "--ref", str(reference), "--ref-box", "5,5,25,20", str(corpus), "--recursive"]
    argv += ["--out", str(folder), "--format", "png,coco,overlay", "--max-pixels", str(MAX_PIXELS)]
    code, out, err = _main([*argv, *MODEL, "--workers", "0", "--no-progress"])
    return Run(code, out, err, folder)


def _key(corpus: Path, name: str) -> str:
    keys = {e.file_name: e.key for e in plan_targets(sorted(corpus.rglob("*")), root=corpus)}
    return keys[name]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.height, img.width


@pytest.mark.parametrize("name", list(BY_NAME))
def test_predict(tmp_path, corpus, name):
    case, path = BY_NAME[name], corpus / name
    out = tmp_path / "mask.png"
    code, _, err = _main(["predict", str(path), "--point", "0,0", "--out", str(out), *MODEL])
    if "predict" in case.fails_in:
        assert code == 2 and not out.exists()
        assert err.startswith(f"prosam: error: {path}: ") and case.problem in err
        assert err.count("\n") == 1
    else:
        assert code == 0 and err == "" and _size(out) == case.size


@pytest.mark.parametrize("name", list(BY_NAME))
def test_segment(corpus, segmented, name):
    case, path = BY_NAME[name], corpus / name
    mask = segmented.folder / f"{_key(corpus, name)}.png"
    lines = [line for line in segmented.err.splitlines() if line.startswith(f"skipped: {path}:")]
    if "segment" in case.fails_in:
        assert not mask.exists() and len(lines) == 1 and case.problem in lines[0]
    else:
        assert not lines and _size(mask) == case.size


@pytest.mark.parametrize("name", list(BY_NAME))
def test_label(corpus, labelled, name):
    case = BY_NAME[name]
    failures = json.loads((labelled.folder / "failures.json").read_text())
    reasons = {f["file_name"]: f["reason"] for f in failures}
    mask = labelled.folder / "png" / "object" / f"{_key(corpus, name)}.png"
    if "label" in case.fails_in:
        assert (
            not mask.exists()
            and case.problem in reasons[name]
            and str(corpus / name) in reasons[name]
        )
    else:
        assert name not in reasons and _size(mask) == case.size


def test_every_command_says_when_something_failed(segmented, labelled):
    assert segmented.code == 1 and labelled.code == 1
    bad = sum("segment" in c.fails_in for c in CASES)
    assert f"{len(CASES) - bad} segmented, {bad} failed" in segmented.out
    assert "Traceback" not in segmented.err + labelled.err
    for folder in (segmented.folder, labelled.folder):
        assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_label_never_labels_its_own_outputs(corpus, labelled):
    coco = json.loads((labelled.folder / "coco.json").read_text())
    names = {i["file_name"] for i in coco["images"]}
    assert names == {c.name for c in CASES if "label" not in c.fails_in}


def test_the_installed_command_shows_no_traceback(tmp_path, corpus, reference):
    """The real entry point, with image-decoding worker processes."""
    argv = [sys.executable, "-m", "prosam.cli", "label", "--ref", str(reference)]
    argv += ["--ref-box", "5,5,25,20", str(corpus), "--out", str(tmp_path / "out"), *MODEL]
    argv += ["--workers", "2", "--max-pixels", str(MAX_PIXELS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "DecompressionBomb" not in done.stderr
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    top = [c for c in CASES if "label" in c.fails_in and "/" not in c.name]
    assert sorted(f["file_name"] for f in failures) == sorted(c.name for c in top)

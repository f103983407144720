from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prosam.cli import main
from prosam.errors import InputError
from prosam.label.job import LabelJob
from prosam.label.review import ReviewRow, review_order, write_contact_sheet
from prosam.methods.base import MethodOutput, Target
from prosam.quality import QualityModel
from prosam.sam import Predictor

# Bigger masks get lower estimates: estimate = sigmoid(-(area_fraction - 0.1) / 0.05).
AREA_MODEL = QualityModel(("area_fraction",), (0.1,), (0.05,), (-1.0,), 0.0, {"fitted_on": "x"})


class RectangleMethod:
    """A stub whose mask is the target's bright part (as in the job tests), score 0.8."""

    name = "rectangle"

    def fit(self, references) -> None:
        pass

    def predict(self, target: Target) -> MethodOutput:
        g = target.embedded.geometry
        s = g.image_size
        x = torch.from_numpy(target.image.mean(axis=2, dtype=np.float32))[None, None]
        x = F.interpolate(x, g.input_size, mode="bilinear", align_corners=False)
        x = F.pad(x, (0, s - g.input_size[1], 0, s - g.input_size[0]), value=0.0)
        logits = (F.interpolate(x, (s // 4, s // 4), mode="bilinear") - 128) / 8
        return MethodOutput(logits[0], 0.8, {"presence_peak": torch.tensor(0.5)})


@pytest.fixture(scope="module")
def predictor(tiny_sam) -> Predictor:
    return Predictor(tiny_sam)


def _image(side: int) -> np.ndarray:
    img = np.full((60, 80, 3), 20, np.uint8)
    img[10 : 10 + side, 10 : 10 + side] = 230
    return img


@pytest.fixture
def targets(tmp_path) -> list[Path]:
    names = {"small.png": 10, "a&b <big>.png": 40, "medium.png": 25}
    paths = []
    for name, side in names.items():
        p = tmp_path / "t" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(side)).save(p)
        paths.append(p)
    return paths


def _job(predictor, out, quality=AREA_MODEL, **kw) -> LabelJob:
    kw = {"workers": 0, "progress": False, "shard": (0, 1), "formats": ["coco", "overlay"], **kw}
    return LabelJob({"thing": RectangleMethod()}, predictor, out, quality=quality, **kw)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "review.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_review_order_is_worst_estimate_first_then_lowest_score():
    rows = [
        ReviewRow(0, "a", "c", 1, 0.9, 0.5, "", "a"),
        ReviewRow(0, "b", "c", 1, 0.2, 0.5, "", "b"),
        ReviewRow(0, "c", "c", 1, None, 0.1, "", "c"),
        ReviewRow(0, "d", "c", 1, 0.5, 0.5, "", "d"),
        ReviewRow(0, "e", "c", 1, None, 0.05, "", "e"),
        ReviewRow(0, "f", "c", 1, 0.2, 0.9, "", "f"),
    ]
    ordered = review_order(rows)
    assert [r.key for r in ordered] == ["b", "f", "d", "a", "e", "c"]  # ties keep their order
    assert [r.rank for r in ordered] == [1, 2, 3, 4, 5, 6]


def test_the_job_writes_estimates_to_records_coco_and_a_sorted_review_queue(
    tmp_path, targets, predictor
):
    out = tmp_path / "out"
    summary = _job(predictor, out).run(targets)
    assert summary.finalized
    rows = _rows(out)
    assert [r["file_name"] for r in rows] == ["a&b <big>.png", "medium.png", "small.png"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    estimates = [float(r["estimate"]) for r in rows]
    assert estimates == sorted(estimates) and estimates[0] < 0.5 < estimates[-1]
    coco = json.loads((out / "coco.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    for r in rows:
        record = json.loads((out / "records" / f"{r['key']}.json").read_text())
        entry = record["classes"][0]
        assert entry["quality"] == pytest.approx(AREA_MODEL.estimate(entry["signals"]), abs=2e-6)
        assert float(r["estimate"]) == pytest.approx(entry["quality"], abs=1e-4)
        assert r["reason"] == entry["reason"] == AREA_MODEL.reason(entry["signals"])
        ann = next(a for a in coco["annotations"] if a["image_id"] == by_name[r["file_name"]])
        assert ann["score"] == pytest.approx(entry["quality"]) and ann["method_score"] == 0.8
    assert rows[0]["reason"] == "the mask covers much of the image"

    before = (out / "review.csv").read_bytes()
    again = _job(predictor, out).run(targets)  # a finished job, rerun: the same queue
    assert again.skipped == len(targets) and (out / "review.csv").read_bytes() == before


def test_without_a_quality_model_coco_keeps_the_method_score(tmp_path, targets, predictor):
    out = tmp_path / "out"
    _job(predictor, out, quality=None).run(targets)
    rows = _rows(out)
    assert {r["estimate"] for r in rows} == {""} and len(rows) == len(targets)
    ann = json.loads((out / "coco.json").read_text())["annotations"][0]
    assert ann["score"] == 0.8 and "method_score" not in ann
    with pytest.raises(InputError, match="quality_model"):
        _job(predictor, out).run(targets)  # another estimate: another job


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.captions: list[str] = []
        self.open: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        if tag not in ("img", "meta", "br"):
            self.open.append(tag)
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


def test_contact_sheet_is_valid_escaped_relative_and_in_queue_order(tmp_path, targets, predictor):
    out = tmp_path / "out"
    _job(predictor, out).run(targets)
    assert main(["review", str(out), "--side", "64"]) == 0
    text = (out / "review.html").read_text()
    assert "a&amp;b &lt;big&gt;.png" in text and "<big>" not in text
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == []
    rows = _rows(out)
    assert len(page.images) == len(rows) == len(page.captions)
    for src, href, caption, row in zip(page.images, page.links, page.captions, rows, strict=True):
        assert not src.startswith("/") and ":" not in src and " " not in src
        assert Image.open(out / unquote(src)).size[0] <= 64
        assert (out / unquote(href)).is_file() and unquote(href).startswith("overlay/")
        assert caption.startswith(f"#{row['rank']} thing") and row["file_name"] in caption
    write_contact_sheet(out, limit=1)
    page = _Page()
    page.feed((out / "review.html").read_text())
    assert len(page.images) == 1 and "the first 1 shown" in (out / "review.html").read_text()


def test_review_refuses_a_folder_without_a_job(tmp_path, capsys):
    assert main(["review", str(tmp_path)]) == 2
    assert "no job.json" in capsys.readouterr().err

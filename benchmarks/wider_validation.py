"""A wider validation list: more episodes on the same validation target images.

The saved fold-0 validation list has 136 episodes; a choice that moves 11 of them can look
like a point of mIoU and vanish on the test list. This draws ``--n`` fresh episodes of the
same classes (another seed) and keeps those whose target is one of the validation list's
targets, so no test target is ever used as a target (references may come from anywhere,
as in the saved lists)::

    python benchmarks/wider_validation.py \\
        --val benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json \\
        --test benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json \\
        --n 3000 --seed 1 --out benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val-wide.json

For a method with nothing trained (``matcher``, ``gfsam``), classes outside the fold are as
good for choosing settings, so ``--all-classes --targets non-test`` draws episodes of every
class on every image that is not a test target: several times the target images, so the
bootstrap over target images (``benchmarks/compare_runs.py``) resolves smaller changes::

    python benchmarks/wider_validation.py \
        --val benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json \
        --test benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json \
        --all-classes --targets non-test --n 1000 --seed 2 \
        --out benchmarks/episodes/coco-mini-all-1shot-mask-val-nontest.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prosam.data.episodes import load_episodes, make_episodes, save_episodes
from prosam.data.specs import load_dataset_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val", required=True, help="the saved validation list")
    p.add_argument("--test", required=True, help="the saved test list (checked disjoint)")
    p.add_argument("--data", default=None, help="the dataset (default: the list's own)")
    p.add_argument("--n", type=int, default=2000, help="episodes drawn before filtering")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--targets",
        choices=("val", "non-test"),
        default="val",
        help="targets: the validation list's images, or every image that is not a test target",
    )
    p.add_argument(
        "--all-classes",
        action="store_true",
        help="draw every class of the dataset, not only the list's (training-free methods)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()

    meta = json.loads(Path(args.val).read_text())["meta"]
    dataset = load_dataset_spec(
        args.data or meta["data"],
        split=meta.get("split"),
        min_area_fraction=meta.get("min_area_fraction", 0.0),
    )
    val, _ = load_episodes(args.val, dataset)
    test, _ = load_episodes(args.test, dataset)
    test_targets = {e.target.key for e in test}
    targets = {e.target.key for e in val}
    if targets & test_targets:
        raise SystemExit("the validation and test lists share target images")
    if args.targets == "non-test":
        targets = {s.key for s in dataset} - test_targets
    classes = dataset.class_ids if args.all_classes else meta["classes"]
    drawn = make_episodes(dataset, classes, n=args.n, seed=args.seed, annotation=meta["annotation"])
    seen: set[tuple] = set()
    kept = []
    for e in drawn:
        key = (e.class_id, e.target.key, tuple(r.key for r in e.references))
        if e.target.key in targets and key not in seen:
            seen.add(key)
            kept.append(e)
    wide_meta = {
        **meta,
        "role": "validation (wider: targets of the saved validation list)"
        if args.targets == "val"
        else "validation (targets: every image that is not a test target)",
        "seed": args.seed,
        "drawn": args.n,
        "validation_targets_from": Path(args.val).name,
        "targets": args.targets,
        "classes": sorted({e.class_id for e in kept}),
        "class_set": "all" if args.all_classes else meta["class_set"],
    }
    digest = save_episodes(args.out, kept, wide_meta)
    classes = len({e.class_id for e in kept})
    print(f"{args.out}: {len(kept)} episodes over {classes} classes (sha256 {digest[:12]})")


if __name__ == "__main__":
    main()

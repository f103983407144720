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
    targets = {e.target.key for e in val}
    if targets & {e.target.key for e in test}:
        raise SystemExit("the validation and test lists share target images")
    drawn = make_episodes(
        dataset, meta["classes"], n=args.n, seed=args.seed, annotation=meta["annotation"]
    )
    seen: set[tuple] = set()
    kept = []
    for e in drawn:
        key = (e.class_id, e.target.key, tuple(r.key for r in e.references))
        if e.target.key in targets and key not in seen:
            seen.add(key)
            kept.append(e)
    wide_meta = {
        **meta,
        "role": "validation (wider: targets of the saved validation list)",
        "seed": args.seed,
        "drawn": args.n,
        "validation_targets_from": Path(args.val).name,
    }
    digest = save_episodes(args.out, kept, wide_meta)
    classes = len({e.class_id for e in kept})
    print(f"{args.out}: {len(kept)} episodes over {classes} classes (sha256 {digest[:12]})")


if __name__ == "__main__":
    main()

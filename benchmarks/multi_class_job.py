"""Per-target cost of multi-class labelling through ``prosam label``'s job itself.

    python benchmarks/multi_class_job.py --data ../shared/data/msrc-v2 --targets 20 \\
        --methods matcher,cpc --json benchmarks/reports/multi-class-job.json

The references are the first episode of the msrc-v2 three-entity test list (one per
class); the targets are the list's next ``--targets`` target images. Each method labels
them in a fresh job folder (png + coco); reported: the seconds before the first target
(fitting; for ``cpc`` its calibration), the job's seconds per target, and a rerun's seconds
(the calibration loaded, every target skipped). Embeddings come from the cache (warm it
first, e.g. with one run); CPC runs with ``num_sets=4,
outer_steps=5`` as in ``benchmarks/multi_class.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import prosam.label
from prosam.data.multi_entity import load_multi_entity_episodes
from prosam.io import write_bytes_atomic
from prosam.label.joint import joint_of

EPISODES = "benchmarks/episodes/msrc-all-3entity-1shot-mask-test.json"
FAST = {"num_sets": 4, "outer_steps": 5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--targets", type=int, default=20)
    p.add_argument("--methods", default="matcher,cpc")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    from prosam.data.specs import load_dataset_spec

    dataset = load_dataset_spec(f"coco:{args.data}")
    episodes, _ = load_multi_entity_episodes(EPISODES, dataset)
    first = episodes[0]
    refs = [
        (e.references[0].image_path, e.references[0].mask(e.class_id)[0], e.class_name)
        for e in first.entities
    ]
    targets = list(dict.fromkeys(ep.target.image_path for ep in episodes[1:]))[: args.targets]
    report = {"command": "python benchmarks/multi_class_job.py " + " ".join(sys.argv[1:])}
    report["classes"] = [c for *_, c in refs]
    for name in args.methods.split(","):
        options = FAST if name.startswith("cpc") else {}
        with tempfile.TemporaryDirectory() as tmp:
            seg = prosam.label.load(method=name, embedding_cache=True, **options)
            seg.target_predictor = seg.predictor  # targets' embeddings cached too
            t0 = time.perf_counter()
            seg.fit(refs)
            for joint in joint_of(seg.methods):
                joint.ensure_fitted()  # cpc: the calibration, here rather than in the job
            fitted = time.perf_counter() - t0
            summary = seg.label(targets, tmp, workers=0, progress=False)
            t1 = time.perf_counter()
            again = prosam.label.load(method=name, embedding_cache=True, **options)
            again.fit(refs)
            again.label(targets, tmp, workers=0, progress=False)
            rerun = time.perf_counter() - t1
        report[name] = {
            "fit_seconds": fitted,
            "job_seconds": summary.seconds,
            "seconds_per_target": summary.seconds / max(summary.processed, 1),
            "targets": summary.processed,
            "rerun_seconds": rerun,
        }
        print(name, report[name], flush=True)
    write_bytes_atomic(Path(args.json), (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()

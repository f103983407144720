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

import numpy as np
from _episode_setup import episode_setting

from prosam.evaluation.references import episode_inputs
from prosam.io import write_bytes_atomic
from prosam.methods import build_method
from prosam.metrics import mask_iou
from prosam.sam.transforms import original_size_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="default: the episode file's")
    parser.add_argument("--episodes", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    episodes, model, predictor = episode_setting(args.episodes, args.data, args.model)
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
            out = method.predict(target)
            masks.append(original_size_mask(out.low_res_logits, target.embedded.geometry))
        own.append(mask_iou(masks[0], truth, ignore))
        wrong.append(mask_iou(masks[1], truth, ignore))
        agree.append(mask_iou(masks[0], masks[1]))
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

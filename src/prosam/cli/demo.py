"""``prosam demo``: label the bundled example photos from one annotated reference."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prosam.cli.options import (
    add_model_args,
    load_model,
)

if TYPE_CHECKING:
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled example images and write overlays")
    p.add_argument("--out", default="prosam-demo", help="output folder (default ./prosam-demo)")
    add_model_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Label the bundled photos from one annotated reference, and segment them from boxes."""
    import prosam.label
    from prosam.data.coco import load_coco
    from prosam.io import write_image
    from prosam.label.defaults import DEFAULT_METHOD
    from prosam.label.review import write_contact_sheet
    from prosam.metrics import mask_iou
    from prosam.sam import Predictor
    from prosam.visualize import draw_box, overlay_masks

    examples = Path(str(resources.files("prosam") / "assets" / "examples"))
    coco = json.loads((examples / "cats.json").read_text())
    dataset = load_coco([(examples / "cats.json", examples)], description="bundled examples")
    (cat,) = dataset.class_ids
    samples = sorted(dataset, key=lambda s: s.key)
    model, cache = load_model(args)
    out = Path(args.out)

    # 1. One annotated reference (the first photo's cats) labels the other photos.
    segmenter = prosam.label.load(DEFAULT_METHOD, model, embedding_cache=False)
    segmenter.fit([(samples[0].image(), samples[0].mask(cat)[0], "cat")])
    segmenter.label(
        [s.image_path for s in samples[1:]],
        out / "labelled",
        formats=("png", "overlay", "coco"),
        workers=0,
        progress=False,
        restart=True,
    )
    sheet = write_contact_sheet(out / "labelled")
    # 2. SAM itself, prompted with each cat's box: a check of the frozen model.
    predictor = Predictor(model, cache=cache)
    ious = []
    for sample, info in zip(
        samples, sorted(coco["images"], key=lambda i: i["file_name"]), strict=True
    ):
        image = sample.image()
        embedded = predictor.embed(image)
        masks, preview = [], image
        for ann in (a for a in coco["annotations"] if a["image_id"] == info["id"]):
            x, y, w, h = ann["bbox"]
            box = np.array([x, y, x + w, y + h])
            masks.append(predictor.predict(embedded, box=box, multimask_output=False).best()[0])
            preview = draw_box(preview, box)
        truth = sample.mask(cat)[0]
        union = np.any(masks, axis=0)
        ious.append(mask_iou(union, truth))
        write_image(
            out / "from-boxes" / f"{Path(sample.key).stem}.jpg", overlay_masks(preview, masks)
        )
    print(
        f"reference: {samples[0].key} (its cats' masks); labelled {len(samples) - 1} photos "
        f"with {DEFAULT_METHOD} -> {(out / 'labelled').resolve()}; worst first: "
        f"{sheet.resolve()}"
    )
    print(
        f"SAM from each cat's box: mean IoU with the COCO masks {np.mean(ious):.3f} "
        f"-> {(out / 'from-boxes').resolve()}"
    )
    return 0

"""A small synthetic COCO-layout dataset written into a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {1: "square", 2: "bar", 3: "blob", 4: "dot"}


def write_coco_fixture(root: Path, images: int = 8, seed: int = 0) -> Path:
    """``root/annotations/instances_train.json`` + ``root/train/*.png``; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    doc = {
        "images": [],
        "annotations": [],
        "categories": [{"id": k, "name": v} for k, v in CLASSES.items()],
    }
    ann_id = 1
    for i in range(images):
        h, w = 48, 64
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        name = f"img{i:03d}.png"
        for cid in CLASSES:
            if (i + cid) % 3 == 0:
                continue
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 16))
            bw, bh = int(rng.integers(8, 20)), int(rng.integers(6, 16))
            img[y0 : y0 + bh, x0 : x0 + bw] = (60 * cid, 255 - 50 * cid, 120)
            poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": cid,
                    "segmentation": [poly],
                    "area": bw * bh,
                    "bbox": [x0, y0, bw, bh],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        Image.fromarray(img).save(root / "train" / name)
        doc["images"].append({"id": i, "file_name": name, "height": h, "width": w})
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root


def write_boxes_coco(
    root: Path, categories: list[str], images: dict[str, list[tuple[str, tuple[int, ...]]]]
) -> Path:
    """A single-split COCO folder (``annotations/instances.json`` + ``images/``) of 40x60
    images, each holding the named classes as filled boxes ``(x0, y0, x1, y1)``."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    ids = {name: i + 1 for i, name in enumerate(categories)}
    doc: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for n, i in ids.items()],
    }
    for i, (file_name, objects) in enumerate(images.items()):
        Image.fromarray(np.full((40, 60, 3), 10 * i, np.uint8)).save(root / "images" / file_name)
        doc["images"].append({"id": i, "file_name": file_name, "height": 40, "width": 60})
        for name, (x0, y0, x1, y1) in objects:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i,
                    "category_id": ids[name],
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    (root / "annotations" / "instances.json").write_text(json.dumps(doc))
    return root

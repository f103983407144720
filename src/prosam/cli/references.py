"""``--ref IMAGE`` groups shared by ``prosam label`` and ``prosam segment``: each
``--ref`` is followed by one annotation (``--ref-mask``, ``--ref-box``, ``--ref-points``
or ``--ref-scribble``) and optionally ``--class NAME``."""

from __future__ import annotations

import argparse
import warnings
from typing import TYPE_CHECKING, Any

from prosam.cli.options import (
    POINTS_HELP,
    attach_stable_from_args,
    load_model,
    parse_box,
    parse_points,
)
from prosam.errors import InputError, ProsamWarning
from prosam.label.classes import check_class_name, check_class_names
from prosam.label.defaults import DEFAULT_CLASS

if TYPE_CHECKING:
    from prosam.label.api import Segmenter

_ANNOTATIONS = ("ref_mask", "ref_box", "ref_points", "ref_scribble")


class ReferenceAction(argparse.Action):
    """Collect ``--ref`` and the options after it, in order, into ``args.references``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        refs = list(getattr(namespace, "references", None) or [])
        if self.dest == "ref":
            refs.append({"image": values, "class": None, "annotation": None})
        elif not refs:
            parser.error(f"{option_string} must follow a --ref")
        elif self.dest == "class_name":
            if refs[-1]["class"] is not None:
                parser.error(f"--ref {refs[-1]['image']}: --class given twice")
            try:
                refs[-1]["class"] = check_class_name(values)
            except InputError as err:
                parser.error(f"--class: {err}")
        elif refs[-1]["annotation"] is not None and self.dest != "ref_points":
            parser.error(f"--ref {refs[-1]['image']}: give one annotation per --ref")
        elif self.dest == "ref_points":
            kind, old = refs[-1]["annotation"] or ("ref_points", [])
            if kind != "ref_points":
                parser.error(f"--ref {refs[-1]['image']}: give one annotation per --ref")
            refs[-1]["annotation"] = ("ref_points", [*old, values])
        else:
            refs[-1]["annotation"] = (self.dest, values)
        namespace.references = refs


def add_reference_args(p: argparse.ArgumentParser) -> None:
    """``--ref`` and the options of its group; they collect into ``args.references``."""
    p.set_defaults(references=None)
    p.add_argument("--ref", action=ReferenceAction, metavar="IMAGE", help="a reference image")
    p.add_argument(
        "--ref-mask", action=ReferenceAction, metavar="PNG", help="its mask (0/255 or palette)"
    )
    p.add_argument("--ref-box", action=ReferenceAction, type=parse_box, metavar="X0,Y0,X1,Y1")
    p.add_argument(
        "--ref-points",
        action=ReferenceAction,
        type=parse_points,
        metavar="X,Y[,L][;X,Y[,L]...]",
        help=POINTS_HELP,
    )
    p.add_argument("--ref-scribble", action=ReferenceAction, metavar="PNG", help="non-zero = drawn")
    p.add_argument(
        "--class",
        dest="class_name",
        action=ReferenceAction,
        metavar="NAME",
        help="class of the preceding --ref (default: object)",
    )


def reference_annotation(ref: dict[str, Any]) -> Any:
    """The reference's annotation in the form :func:`prosam.label.api.annotation_to_mask` takes."""
    kind, value = ref["annotation"]
    if kind == "ref_mask":
        return value
    if kind == "ref_scribble":
        return {"scribble": value}
    if kind == "ref_box":
        return {"box": list(value)}
    clicks = [p for group in value for p in group]
    return {"points": [[x, y] for x, y, _ in clicks], "labels": [label for *_, label in clicks]}


def check_reference(ref: dict[str, Any]) -> None:
    """Refuse a reference that cannot be used before the model loads (its warnings, such as
    a clipped box, come once, when it is fitted)."""
    from prosam.io import read_image
    from prosam.label.api import annotation_to_mask

    image = read_image(ref["image"])
    annotation = reference_annotation(ref)
    if isinstance(annotation, dict) and 0 in annotation.get("labels", ()):
        return  # SAM draws this one: checked when fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProsamWarning)
        try:
            annotation_to_mask(annotation, image.shape[:2])
        except InputError as err:
            raise InputError(f"--ref {ref['image']}: {err}") from None


def references_from_args(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``--ref`` groups (each with an annotation) and their classes (``object`` for a
    group without ``--class``); one-line errors for a missing one."""
    references = args.references or []
    if not references:
        raise InputError("give at least one --ref IMAGE with --ref-mask/--ref-box/...")
    for ref in references:
        if ref["annotation"] is None:
            raise InputError(f"--ref {ref['image']}: give its --ref-mask, --ref-box, ...")
    classes = [DEFAULT_CLASS if r["class"] is None else r["class"] for r in references]
    check_class_names(list(dict.fromkeys(classes)))
    return references, classes


def fit_segmenter(
    args: argparse.Namespace,
    references: list[dict[str, Any]],
    classes: list[str],
    **options: Any,
) -> Segmenter:
    """Check the references, load the model (``--model``, ``--stable``), and fit a
    :class:`~prosam.label.api.Segmenter` of ``--method`` on them (``options`` go to it
    besides the checkpoint, score threshold and quality model the arguments give)."""
    from prosam.label.api import Segmenter
    from prosam.sam import Predictor

    for ref in references:
        check_reference(ref)
    model, cache = load_model(args)
    attach_stable_from_args(args, model)
    seg = Segmenter(
        model,
        args.method,
        checkpoint=args.checkpoint,
        predictor=Predictor(model, cache=cache),
        score_threshold=args.score_threshold,
        quality_model=args.quality_model,
        **options,
    )
    pairs = zip(references, classes, strict=True)
    return seg.fit([(r["image"], reference_annotation(r), c) for r, c in pairs])

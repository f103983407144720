"""Stable-SAM's robustness protocol: accuracy and stability under prompts of varying quality.

For every object and prompt kind (see :mod:`prosam.stable.prompts`), ``b`` random prompts
(20 in the paper) are drawn with a generator seeded by ``(seed, object index, kind)`` and
each is predicted with ``multimask_output=False``: one mask per prompt, as HQ-SAM's and
Stable-SAM's evaluations do, for points too (``multimask_points=True`` instead follows SAM's
interactive habit for a *single* click: three masks, keep the highest predicted IoU). Per
kind the report gives

- ``miou``: mean over objects of the mean IoU of the object's ``b`` masks;
- ``mbiou``: the same with Boundary IoU (dilation ratio 0.02);
- ``msf``: mean over objects of the mask stability (:func:`prosam.metrics.mask_stability`)
  of its ``b`` masks.

Identical prompts (``gt_box`` gives ``b`` copies of one box) are predicted once and the mask
reused, which is what a deterministic predictor would return anyway.

The predictor is anything with ``embed(image)`` and ``predict(embedded, points=,
point_labels=, box=, multimask_output=)``, e.g. :class:`prosam.sam.Predictor`; with a
Stable-SAM plugin attached to its SAM the same predictor evaluates Stable-SAM.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from prosam.errors import InputError
from prosam.metrics import boundary_iou, mask_iou, mask_stability
from prosam.stable.objects import ObjectItem
from prosam.stable.prompts import ROBUSTNESS_KINDS, Prompt, check_kind, sample_prompt

__all__ = ["PromptPredictor", "evaluate_robustness", "kind_rng", "to_markdown"]


class PromptPredictor(Protocol):
    """What :func:`evaluate_robustness` needs from a predictor."""

    def embed(self, image: np.ndarray) -> Any: ...

    def predict(
        self,
        embedded: Any,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> Any: ...


def kind_rng(seed: int, index: int, kind: str) -> np.random.Generator:
    """The generator of object ``index``'s prompts of ``kind`` (independent of other kinds)."""
    return np.random.default_rng([int(seed), int(index), zlib.crc32(kind.encode())])


def _as_item(item: ObjectItem | tuple[np.ndarray, ...]) -> ObjectItem:
    if isinstance(item, ObjectItem):
        return item
    return ObjectItem(*item)


def _predict_mask(
    predictor: PromptPredictor, embedded: Any, prompt: Prompt, multimask_points: bool
) -> np.ndarray:
    multi = (
        multimask_points
        and prompt.box is None
        and prompt.points is not None
        and len(prompt.points) == 1
    )
    pred = predictor.predict(
        embedded,
        points=prompt.points,
        point_labels=prompt.labels,
        box=prompt.box,
        multimask_output=multi,
    )
    masks, scores = np.asarray(pred.masks), np.asarray(pred.scores)
    return masks[int(np.argmax(scores))].astype(bool)


def evaluate_robustness(
    predictor: PromptPredictor,
    items: Iterable[ObjectItem | tuple[np.ndarray, ...]],
    kinds: Sequence[str] = ROBUSTNESS_KINDS,
    b: int = 20,
    seed: int = 0,
    *,
    dilation_ratio: float = 0.02,
    multimask_points: bool = False,
    progress: bool = False,
    records: bool = False,
) -> dict[str, Any]:
    """Per-kind mIoU, boundary mIoU and mSF over ``items`` (objects) with ``b`` prompts each.

    ``items`` are :class:`ObjectItem` s or ``(image, mask[, ignore])`` tuples; consecutive
    items sharing the same image array are embedded once. Objects for which a kind cannot be
    drawn (no box in an IoU range) are skipped for that kind and counted in ``skipped``.

    Returns ``{"kinds": {kind: {"miou", "mbiou", "msf", "objects", "skipped"}}, "objects",
    "b", "seed", "dilation_ratio", "multimask_points", "seconds"}`` (fractions in [0, 1],
    nan for a kind without objects), plus ``"records"`` (per object and kind) if asked.
    """
    if b < 1:
        raise InputError(f"b must be >= 1, got {b}")
    kinds = [check_kind(k) for k in kinds]
    sums = {k: {"iou": 0.0, "biou": 0.0, "sf": 0.0, "n": 0, "skipped": 0} for k in kinds}
    per_object: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    last_image: np.ndarray | None = None
    embedded: Any = None
    n_items = 0
    for index, raw in enumerate(tqdm(items, desc="robustness", unit="obj", disable=not progress)):
        item = _as_item(raw)
        mask = np.asarray(item.mask, dtype=bool)
        if not mask.any():
            raise InputError(f"object {index} ({item.key or 'no key'}) has an empty mask")
        if item.image is not last_image:
            embedded = predictor.embed(item.image)
            last_image = item.image
        n_items += 1
        record: dict[str, Any] = {"index": index, "key": item.key}
        for kind in kinds:
            rng = kind_rng(seed, index, kind)
            try:
                prompts = [sample_prompt(kind, mask, rng) for _ in range(b)]
            except InputError:
                sums[kind]["skipped"] += 1
                continue
            memo: dict[bytes, np.ndarray] = {}
            masks = []
            for prompt in prompts:
                key = prompt.key()
                if key not in memo:
                    memo[key] = _predict_mask(predictor, embedded, prompt, multimask_points)
                masks.append(memo[key])
            stack = np.stack(masks)
            iou = float(np.mean([mask_iou(m, mask, item.ignore) for m in stack]))
            biou = float(
                np.mean([boundary_iou(m, mask, dilation_ratio, item.ignore) for m in stack])
            )
            sf = mask_stability(stack)
            s = sums[kind]
            s["iou"] += iou
            s["biou"] += biou
            s["sf"] += sf
            s["n"] += 1
            record[kind] = {"iou": iou, "biou": biou, "sf": sf}
        if records:
            per_object.append(record)
    report: dict[str, Any] = {
        "kinds": {
            k: {
                "miou": s["iou"] / s["n"] if s["n"] else math.nan,
                "mbiou": s["biou"] / s["n"] if s["n"] else math.nan,
                "msf": s["sf"] / s["n"] if s["n"] else math.nan,
                "objects": s["n"],
                "skipped": s["skipped"],
            }
            for k, s in sums.items()
        },
        "objects": n_items,
        "b": b,
        "seed": seed,
        "dilation_ratio": dilation_ratio,
        "multimask_points": multimask_points,
        "seconds": time.perf_counter() - t0,
    }
    if records:
        report["records"] = per_object
    return report


def to_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    """A Markdown table of a :func:`evaluate_robustness` report (percent, like the paper)."""
    lines = [] if title is None else [f"**{title}**", ""]
    lines += [
        "| prompt | mIoU | mBIoU | mSF | objects |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in report["kinds"].items():
        cells = [f"{100 * r[m]:.1f}" for m in ("miou", "mbiou", "msf")]
        objects = f"{r['objects']}" + (f" ({r['skipped']} skipped)" if r.get("skipped") else "")
        lines.append(f"| {kind} | {' | '.join(cells)} | {objects} |")
    lines += [
        "",
        f"{report['objects']} objects, {report['b']} prompts per object and kind, "
        f"seed {report['seed']}.",
    ]
    return "\n".join(lines)

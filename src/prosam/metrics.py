"""Segmentation metrics for visual reference (few-shot) segmentation.

All functions take binary masks as numpy arrays or torch tensors (any device; tensors are copied
to the CPU). A mask may be ``bool`` or a numeric array holding only 0 and 1; anything else (logits,
probabilities, label maps with 255) raises :class:`ValueError`, as do masks of different shapes.
An optional ``ignore`` mask (True = ignore) removes pixels from every count.

Conventions for empty denominators, used throughout:

* an IoU whose union is 0 (prediction and target both empty on the valid pixels) is **1.0**:
  predicting nothing for nothing is a perfect answer;
* a rate (TPR, TNR, FPR, FNR) whose denominator is 0 is **nan**: e.g. the TPR of a target
  without foreground is undefined, and averaging it as 0 or 1 would bias the result.

Everything is computed with numpy on the CPU (one code path); counts are exact integers and
sums of per-episode scores are float64.

:class:`FSSAccumulator` streams the few-shot protocol (FSS mIoU, FB-IoU, per-episode mIoU,
pooled confusion rates, optional Boundary IoU) and can be merged, serialised to JSON, and
summed across ``torch.distributed`` ranks.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from prosam.errors import InputError

if TYPE_CHECKING:
    import torch

    MaskLike: TypeAlias = np.ndarray | torch.Tensor
else:
    MaskLike: TypeAlias = Any

__all__ = [
    "FSSAccumulator",
    "boundary_iou",
    "confusion_counts",
    "confusion_rates",
    "instance_average_precision",
    "intersection_union",
    "mask_iou",
    "mask_stability",
]

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: MaskLike) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_bool(x: MaskLike, name: str) -> np.ndarray:
    """Return ``x`` as a bool array; reject values other than 0/1."""
    arr = _to_numpy(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected a binary mask, got dtype {arr.dtype}")
    is_one = arr == 1
    if not np.all(is_one | (arr == 0)):
        raise InputError(f"{name}: a binary mask may only hold 0 and 1 (threshold it first)")
    return is_one


def _check_inputs(
    pred: MaskLike, target: MaskLike, ignore: MaskLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = _as_bool(pred, "pred")
    t = _as_bool(target, "target")
    if p.shape != t.shape:
        raise InputError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    if ignore is None:
        return p, t, None
    ig = _as_bool(ignore, "ignore")
    if ig.shape != p.shape:
        raise InputError(f"ignore shape {ig.shape} differs from the mask shape {p.shape}")
    return p, t, ig


def _iou(intersection: float, union: float) -> float:
    return 1.0 if union == 0 else intersection / union


def _rate(num: float, den: float) -> float:
    return math.nan if den == 0 else num / den


# --------------------------------------------------------------------------------------------
# pixel counts


def confusion_counts(
    pred: MaskLike, target: MaskLike, ignore: MaskLike | None = None
) -> dict[str, int]:
    """Pixel counts ``{"tp", "fp", "fn", "tn"}`` of a binary prediction, ignore pixels excluded."""
    p, t, ig = _check_inputs(pred, target, ignore)
    if ig is not None:
        valid = ~ig
        p = p & valid
        t = t & valid
        n = int(np.count_nonzero(valid))
    else:
        n = p.size
    tp = int(np.count_nonzero(p & t))
    n_pred = int(np.count_nonzero(p))
    n_target = int(np.count_nonzero(t))
    fp = n_pred - tp
    fn = n_target - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": n - tp - fp - fn}


def intersection_union(
    pred: MaskLike,
    target: MaskLike,
    ignore: MaskLike | None = None,
    *,
    foreground: bool = True,
) -> tuple[int, int]:
    """Intersection and union pixel counts of two binary masks of the same shape.

    Pixels where ``ignore`` is True count in neither. With ``foreground=False`` the counts are
    for the background class (the complements of the masks, on the valid pixels), as FB-IoU needs.
    """
    c = confusion_counts(pred, target, ignore)
    hit = c["tp"] if foreground else c["tn"]
    return hit, hit + c["fp"] + c["fn"]


def mask_iou(pred: MaskLike, target: MaskLike, ignore: MaskLike | None = None) -> float:
    """IoU of two binary masks over the non-ignored pixels; 1.0 when both are empty."""
    return _iou(*intersection_union(pred, target, ignore))


def confusion_rates(
    pred: MaskLike, target: MaskLike, ignore: MaskLike | None = None
) -> dict[str, float]:
    """Pixel rates ``{"tpr", "tnr", "fpr", "fnr"}`` (ProSAM Table 6), ignore pixels excluded.

    TPR = TP/(TP+FN), FNR = FN/(TP+FN), TNR = TN/(TN+FP), FPR = FP/(TN+FP). A rate whose
    denominator is 0 (no foreground, or no background, in the target) is ``nan``.
    """
    return _rates_from_counts(**confusion_counts(pred, target, ignore))


def _rates_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    return {
        "tpr": _rate(tp, tp + fn),
        "tnr": _rate(tn, tn + fp),
        "fpr": _rate(fp, tn + fp),
        "fnr": _rate(fn, tp + fn),
    }


# --------------------------------------------------------------------------------------------
# Boundary IoU


def _boundary_dilation(shape: tuple[int, int], dilation_ratio: float) -> int:
    h, w = shape
    # Python's round (half to even), as in the reference implementation.
    return max(1, round(dilation_ratio * math.sqrt(h * h + w * w)))


def _erode(mask: np.ndarray, d: int) -> np.ndarray:
    """Erode a 2-D bool mask ``d`` times with a 3x3 kernel, pixels outside the image being 0.

    Equal to the reference ``cv2.erode(pad(mask, 1, value=0), ones(3, 3), iterations=d)``:
    ``d`` iterated 3x3 erosions are one erosion by a ``(2d+1)`` square, computed here in
    ``O(H*W)`` with an integral image (a pixel survives iff its whole window is foreground).
    """
    h, w = mask.shape
    k = 2 * d + 1
    integral = np.zeros((h + k, w + k), dtype=np.int64)
    integral[d + 1 : d + 1 + h, d + 1 : d + 1 + w] = mask
    integral = integral.cumsum(axis=0).cumsum(axis=1)
    window = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return window == k * k


def _band(mask: np.ndarray, d: int) -> np.ndarray:
    return mask & ~_erode(mask, d)


def _boundary_iou_checked(
    p: np.ndarray, t: np.ndarray, ig: np.ndarray | None, dilation_ratio: float
) -> float:
    if p.ndim != 2:
        raise InputError(f"boundary IoU needs 2-D (H, W) masks, got shape {p.shape}")
    d = _boundary_dilation(p.shape, dilation_ratio)
    bp = _band(p, d)
    bt = _band(t, d)
    if ig is not None:
        valid = ~ig
        bp &= valid
        bt &= valid
    inter = int(np.count_nonzero(bp & bt))
    union = int(np.count_nonzero(bp | bt))
    return _iou(inter, union)


def boundary_iou(
    pred: MaskLike,
    target: MaskLike,
    dilation_ratio: float = 0.02,
    ignore: MaskLike | None = None,
) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021) of two 2-D binary masks.

    Each mask's boundary band is the mask minus its erosion by
    ``d = max(1, round(dilation_ratio * image_diagonal))`` pixels (zero padding, so a mask cut by
    the image border has a band there too); the result is the IoU of the two bands. Bands are
    computed on the full masks, then ``ignore`` pixels are dropped from the counts. Both bands
    empty (both masks empty) gives 1.0.
    """
    p, t, ig = _check_inputs(pred, target, ignore)
    return _boundary_iou_checked(p, t, ig, dilation_ratio)


# --------------------------------------------------------------------------------------------
# Stable-SAM stability


def mask_stability(masks: MaskLike) -> float:
    """Stable-SAM's mask stability mSF (eq. 1) of ``B`` masks ``(B, H, W)`` of one target.

    ``mean_b IoU(mask_b, union of all B masks)``: 1.0 when all masks agree. An empty union
    (every mask empty) gives 1.0.
    """
    m = _as_bool(masks, "masks")
    if m.ndim != 3 or m.shape[0] == 0:
        raise InputError(f"masks must have shape (B, H, W) with B >= 1, got {m.shape}")
    flat = m.reshape(m.shape[0], -1)
    union_count = int(np.count_nonzero(flat.any(axis=0)))
    if union_count == 0:
        return 1.0
    # Each mask is a subset of the union, so IoU(mask_b, union) = |mask_b| / |union|.
    sizes = np.count_nonzero(flat, axis=1).astype(np.float64)
    return float(np.mean(sizes / union_count))


def instance_average_precision(
    detections: Sequence[tuple[str, float, MaskLike]],
    ground_truth: Mapping[str, Sequence[MaskLike]],
    *,
    iou_threshold: float = 0.5,
) -> float:
    """COCO-style average precision of instance masks at one IoU threshold (AP50 by default).

    ``detections`` are ``(image key, score, mask)``; ``ground_truth`` maps every evaluated
    image's key to its instance masks (an empty list for an image without the class). Taken
    by decreasing score, a detection is a true positive when its best-overlapping still
    unmatched instance of the same image has ``IoU >= iou_threshold`` (that instance is then
    matched), else a false positive. AP is the mean over the 101 recall levels 0, 0.01, ...,
    1 of the precision envelope (COCO's interpolation). nan when there is no instance at all.

    Raises:
        InputError: a detection's image is not in ``ground_truth``, or masks of one image
            differ in shape.
    """
    gts = {k: [_as_bool(m, "instance") for m in v] for k, v in ground_truth.items()}
    total = sum(len(v) for v in gts.values())
    if total == 0:
        return math.nan
    matched = {k: np.zeros(len(v), dtype=bool) for k, v in gts.items()}
    order = sorted(range(len(detections)), key=lambda i: -float(detections[i][1]))
    hits = np.zeros(len(order), dtype=bool)
    for rank, i in enumerate(order):
        key, _, mask = detections[i]
        if key not in gts:
            raise InputError(f"detection on image {key!r}, which has no ground-truth entry")
        pred = _as_bool(mask, "detection")
        best, best_iou = -1, iou_threshold
        for j, gt in enumerate(gts[key]):
            if gt.shape != pred.shape:
                raise InputError(f"image {key!r}: masks of shapes {gt.shape} and {pred.shape}")
            if matched[key][j]:
                continue
            inter = int(np.count_nonzero(gt & pred))
            union = int(np.count_nonzero(gt | pred))
            iou = inter / union if union else 0.0
            if iou >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            matched[key][best] = True
            hits[rank] = True
    if len(hits) == 0:
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / total
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    levels = np.linspace(0.0, 1.0, 101)
    at = np.searchsorted(recall, levels, side="left")
    values = np.where(at < len(hits), envelope[np.minimum(at, len(hits) - 1)], 0.0)
    return float(values.mean())


# --------------------------------------------------------------------------------------------
# streaming few-shot accumulator


@dataclass
class _Stats:
    """Sums over a set of episodes (one class, or all of them)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    episodes: int = 0
    episode_iou_sum: float = 0.0
    boundary_episodes: int = 0
    boundary_iou_sum: float = 0.0

    def add(self, other: _Stats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Stats:
        out = cls()
        for f in fields(cls):
            value = d.get(f.name, 0)
            setattr(out, f.name, float(value) if isinstance(f.default, float) else int(value))
        return out


class FSSAccumulator:
    """Streaming metrics for the few-shot segmentation protocol.

    Feed one episode at a time with :meth:`update`; read :meth:`summary` and :meth:`per_class`.

    * ``miou_fss``: for each class, ``IoU_c = sum I / sum U`` over that class's episodes (pooled),
      then the mean over classes (the HSNet / VRP-SAM protocol);
    * ``fb_iou``: mean of the background and foreground IoU, each pooled over all episodes;
    * ``miou_per_episode``: mean over episodes of each episode's own foreground IoU, an episode
      with empty prediction and empty target (on valid pixels) counting 1.0;
    * ``tpr``/``tnr``/``fpr``/``fnr``: pixel rates pooled over all episodes (nan if undefined);
    * ``boundary_iou``: mean per-episode Boundary IoU over the episodes updated with
      ``boundary=True`` (nan if none).

    A pooled IoU whose union is 0 is 1.0, as for single episodes. State is plain ints (pixel
    counts) and float64 sums, so :meth:`state_dict` is JSON-serialisable.
    """

    def __init__(self, dilation_ratio: float = 0.02) -> None:
        self.dilation_ratio = float(dilation_ratio)
        self._classes: dict[int, _Stats] = {}

    # -- feeding ---------------------------------------------------------------------------

    def update(
        self,
        class_id: int,
        pred: MaskLike,
        target: MaskLike,
        ignore: MaskLike | None = None,
        *,
        boundary: bool = False,
    ) -> float:
        """Add one episode and return its foreground IoU.

        ``pred``/``target``/``ignore`` are binary masks of the same shape (2-D when
        ``boundary=True``, which also computes the episode's Boundary IoU).
        """
        return self.update_counts(class_id, pred, target, ignore, boundary=boundary)[0]

    def update_counts(
        self,
        class_id: int,
        pred: MaskLike,
        target: MaskLike,
        ignore: MaskLike | None = None,
        *,
        boundary: bool = False,
    ) -> tuple[float, dict[str, int]]:
        """:meth:`update`, also returning the episode's pixel counts (:func:`confusion_counts`)."""
        cid = operator.index(class_id)
        p, t, ig = _check_inputs(pred, target, ignore)
        b_iou = _boundary_iou_checked(p, t, ig, self.dilation_ratio) if boundary else None
        c = confusion_counts(p, t, ig)
        iou = _iou(c["tp"], c["tp"] + c["fp"] + c["fn"])
        stats = self._classes.setdefault(cid, _Stats())
        stats.add(
            _Stats(
                **c,
                episodes=1,
                episode_iou_sum=iou,
                boundary_episodes=0 if b_iou is None else 1,
                boundary_iou_sum=0.0 if b_iou is None else b_iou,
            )
        )
        return iou, c

    def reset(self) -> None:
        """Forget every episode."""
        self._classes.clear()

    @property
    def num_episodes(self) -> int:
        """Number of episodes seen."""
        return sum(s.episodes for s in self._classes.values())

    @property
    def classes(self) -> list[int]:
        """Sorted ids of the classes seen."""
        return sorted(self._classes)

    # -- reporting -------------------------------------------------------------------------

    @staticmethod
    def _report(s: _Stats) -> dict[str, float | int]:
        return {
            "iou": _iou(s.tp, s.tp + s.fp + s.fn),
            "iou_bg": _iou(s.tn, s.tn + s.fp + s.fn),
            "miou_per_episode": _rate(s.episode_iou_sum, s.episodes),
            "boundary_iou": _rate(s.boundary_iou_sum, s.boundary_episodes),
            **_rates_from_counts(s.tp, s.fp, s.fn, s.tn),
            "intersection": s.tp,
            "union": s.tp + s.fp + s.fn,
            "episodes": s.episodes,
            "boundary_episodes": s.boundary_episodes,
        }

    def per_class(self) -> dict[int, dict[str, float | int]]:
        """Per-class metrics, keyed by class id (sorted).

        Keys: ``iou`` (pooled foreground IoU, the term of ``miou_fss``), ``iou_bg``,
        ``miou_per_episode``, ``boundary_iou``, ``tpr``/``tnr``/``fpr``/``fnr``,
        ``intersection``, ``union``, ``episodes``, ``boundary_episodes``.
        """
        return {cid: self._report(self._classes[cid]) for cid in sorted(self._classes)}

    def _total(self) -> _Stats:
        total = _Stats()
        for cid in sorted(self._classes):  # fixed order: reproducible float sums
            total.add(self._classes[cid])
        return total

    def summary(self, class_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Overall metrics.

        ``miou_fss`` is the mean pooled IoU over the classes seen or, if ``class_ids`` is given,
        over the listed classes that have episodes: listed classes without episodes are reported
        in ``absent_classes`` and excluded, seen classes not listed in ``unlisted_classes`` and
        excluded, and ``warning`` then says so (otherwise it is None). ``class_ids`` affects
        ``miou_fss`` only; every other entry is over all episodes. Values that cannot be
        computed (no episodes) are nan.

        Keys: ``miou_fss``, ``fb_iou``, ``iou_fg``, ``iou_bg``, ``miou_per_episode``, ``tpr``,
        ``tnr``, ``fpr``, ``fnr``, ``boundary_iou``, ``num_episodes``, ``boundary_episodes``,
        ``num_classes`` (classes in ``miou_fss``), ``classes``, ``absent_classes``,
        ``unlisted_classes``, ``warning``.
        """
        seen = sorted(self._classes)
        absent: list[int] = []
        unlisted: list[int] = []
        if class_ids is None:
            used = seen
        else:
            wanted_set = {operator.index(c) for c in class_ids}
            wanted = sorted(wanted_set)
            used = [c for c in wanted if c in self._classes]
            absent = [c for c in wanted if c not in self._classes]
            unlisted = [c for c in seen if c not in wanted_set]
        ious = [self._report(self._classes[c])["iou"] for c in used]
        warning_parts = []
        if absent:
            warning_parts.append(f"classes without episodes, excluded from miou_fss: {absent}")
        if unlisted:
            warning_parts.append(f"classes seen but not listed, excluded from miou_fss: {unlisted}")

        total = self._total()
        t = self._report(total)
        empty = total.episodes == 0
        return {
            "miou_fss": sum(ious) / len(ious) if ious else math.nan,
            "fb_iou": math.nan if empty else (t["iou"] + t["iou_bg"]) / 2,
            "iou_fg": math.nan if empty else t["iou"],
            "iou_bg": math.nan if empty else t["iou_bg"],
            "miou_per_episode": t["miou_per_episode"],
            "tpr": t["tpr"],
            "tnr": t["tnr"],
            "fpr": t["fpr"],
            "fnr": t["fnr"],
            "boundary_iou": t["boundary_iou"],
            "num_episodes": total.episodes,
            "boundary_episodes": total.boundary_episodes,
            "num_classes": len(used),
            "classes": used,
            "absent_classes": absent,
            "unlisted_classes": unlisted,
            "warning": "; ".join(warning_parts) or None,
        }

    # -- combining and saving --------------------------------------------------------------

    def merge(self, other: FSSAccumulator) -> FSSAccumulator:
        """Add ``other``'s episodes to this accumulator (in place); return ``self``."""
        if other.dilation_ratio != self.dilation_ratio:
            raise InputError(
                f"cannot merge accumulators with dilation_ratio {self.dilation_ratio} "
                f"and {other.dilation_ratio}"
            )
        for cid in sorted(other._classes):
            self._classes.setdefault(cid, _Stats()).add(other._classes[cid])
        return self

    def state_dict(self) -> dict[str, Any]:
        """The state as plain Python ints, floats, lists and dicts (JSON-serialisable)."""
        return {
            "version": _STATE_VERSION,
            "dilation_ratio": self.dilation_ratio,
            "classes": [
                {"class_id": cid, **asdict(self._classes[cid])} for cid in sorted(self._classes)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state by one from :meth:`state_dict` (possibly via JSON)."""
        if state.get("version") != _STATE_VERSION:
            raise InputError(f"unsupported FSSAccumulator state version {state.get('version')!r}")
        classes: dict[int, _Stats] = {}
        for rec in state["classes"]:
            cid = int(rec["class_id"])
            if cid in classes:
                raise InputError(f"class {cid} appears twice in the state")
            classes[cid] = _Stats.from_dict(rec)
        self.dilation_ratio = float(state["dilation_ratio"])
        self._classes = classes

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FSSAccumulator:
        """A new accumulator holding ``state``."""
        acc = cls()
        acc.load_state_dict(state)
        return acc

    def all_reduce(self, group: Any = None) -> FSSAccumulator:
        """Sum the state over all ``torch.distributed`` ranks, in place; return ``self``.

        A no-op unless ``torch.distributed`` is available and initialised. Every rank must call
        it (a collective), once: calling it twice counts every episode ``world_size`` times more.
        States are gathered and merged in rank order, so all ranks end with identical results.
        """
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency
            return self
        if not (dist.is_available() and dist.is_initialized()):
            return self
        states: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        merged = FSSAccumulator(self.dilation_ratio)
        for state in states:
            merged.merge(FSSAccumulator.from_state_dict(state))
        self._classes = merged._classes
        return self

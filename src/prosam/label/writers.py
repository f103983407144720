"""Output formats of the auto-labelling workflow: PNG masks, COCO JSON, YOLO-seg, previews.

Every writer takes the class names (their order gives class indices) and, per image,
``add(key, image_size, masks, ...)`` where ``masks`` lists the :class:`LabelMask` kept for
that image (at most one per class; a class without a mask is "nothing found"). Per-image
files are written as they come, each atomically; :meth:`finalize` writes what covers the
whole data set (``coco.json``, ``classes.txt``).

Layout under the output folder ``OUT`` (``<key>`` is the image's stem, made unique):

- ``png``: ``OUT/png/<class>/<key>.png``, one 0/255 mask per image and class (all 0 when the
  class was not found); with ``indexed=True``: ``OUT/png/<key>.png``, one palette PNG per
  image, value 0 = background and value ``i`` = the ``i``-th class (1-based, in the order
  given), coloured with the PASCAL VOC colour map (:func:`voc_palette`); where masks of two
  classes overlap the higher-scoring class wins. ``prosam.io.read_label_map`` reads the
  values back.
- ``instances``: ``OUT/instances/<class>/<key>.png``, one palette PNG per image and class,
  value 0 = background and value ``i`` = the ``i``-th object of the class (1-based, best
  score first; a method without instances gives its class mask as object 1).
- ``coco``: ``OUT/coco.json``, one annotation per object found (per instance when the
  method gives instances, else per class mask), the mask as
  compressed RLE (``counts`` a string), its ``bbox`` ``[x, y, w, h]`` and ``area`` from the
  RLE, and ``score``: the class mask's quality estimate (its expected IoU, the same for
  every instance of the class in the image) when the job has a quality model, with the
  method's own score (the instance's, where there are instances) as ``method_score``; else
  the method's score. ``uncertainty`` when the method gives one. Categories are numbered
  from 1 in class order.
- ``yolo``: ``OUT/yolo/<key>.txt``, one line per polygon, ``class_idx x1 y1 x2 y2 ...``
  with ``x`` / ``y`` the boundary pixels' column / row divided by the image width / height
  (OpenCV ``findContours`` convention, as Ultralytics converts masks); an image without
  masks gets an empty file; ``OUT/yolo/classes.txt`` lists the names, one a line.
- ``overlay``: ``OUT/overlay/<key>.jpg``, the masks drawn over the image (one colour per
  class, see :data:`prosam.visualize.PALETTE`), downscaled to ``max_side`` pixels, with a
  legend: each found class's name in its colour and, when known, its quality estimate.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from prosam import __version__
from prosam.errors import InputError
from prosam.io import (
    atomic_path,
    inside,
    read_image,
    write_bytes_atomic,
    write_image,
    write_mask_png,
)
from prosam.label.classes import check_class_names, safe_name
from prosam.visualize import draw_legend, overlay_masks

ImageSource = np.ndarray | str | os.PathLike[str] | None
RLE = dict[str, Any]

FORMATS = ("png", "png-indexed", "instances", "coco", "yolo", "overlay")


class LabelMask(NamedTuple):
    """One class's mask on one image: a bool ``(H, W)`` array or a COCO RLE dict.

    ``instances``: the separate objects of the class, ``(mask, score)`` pairs whose union
    is ``mask`` (empty when the method gives no instances: the class mask is one object).
    """

    class_name: str
    mask: np.ndarray | RLE
    score: float
    extras: Mapping[str, Any] | None = None
    instances: Sequence[tuple[np.ndarray | RLE, float]] = ()

    def objects(self) -> list[tuple[np.ndarray | RLE, float]]:
        """The objects to write one annotation each for: the instances made disjoint
        (:func:`disjoint_objects`), else the mask. Every format writes these, so COCO,
        YOLO and the instance PNG agree on the count and the pixels."""
        if not self.instances:
            return [(self.mask, self.score)]
        return list(disjoint_objects(self.instances))


def disjoint_objects(
    objects: Sequence[tuple[np.ndarray | RLE, float]], *, min_own: float = 0.5
) -> list[tuple[np.ndarray, float]]:
    """Instances of one class with no pixel in two of them: best score first, each pixel to
    the best-scoring instance holding it. An instance left with under ``min_own`` of its
    pixels (a duplicate lying mostly inside better ones) is dropped, its leftover pixels
    with it. Ties keep the order given."""
    ranked = sorted(range(len(objects)), key=lambda i: -float(objects[i][1]))
    taken: np.ndarray | None = None
    kept = []
    for i in ranked:
        mask = as_bool_mask(objects[i][0])
        own = mask if taken is None else mask & ~taken
        if own.any() and own.sum() >= min_own * mask.sum():
            taken = mask.copy() if taken is None else taken | own
            kept.append((own, float(objects[i][1])))
    return kept


@runtime_checkable
class Writer(Protocol):
    """An output format: ``add`` per image, then ``finalize`` once."""

    name: str

    def add(
        self,
        key: str,
        image_size: tuple[int, int],
        masks: Sequence[LabelMask],
        *,
        file_name: str | None = None,
        image: ImageSource = None,
    ) -> None: ...

    def finalize(self) -> None: ...


# --------------------------------------------------------------------------- masks and RLE


def encode_mask(mask: np.ndarray) -> RLE:
    """COCO compressed RLE of a bool ``(H, W)`` mask, ``counts`` decoded to ``str`` for JSON."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: RLE) -> np.ndarray:
    """The bool ``(H, W)`` mask of an RLE from :func:`encode_mask`."""
    with warnings.catch_warnings():  # pycocotools' decode under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(_rle_for_coco(rle)).astype(bool)


def _rle_for_coco(rle: RLE) -> RLE:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def rle_bbox_area(rle: RLE) -> tuple[list[float], int]:
    """``([x, y, w, h], area)`` of an RLE, computed by pycocotools."""
    coco_rle = _rle_for_coco(rle)
    return [float(v) for v in mask_utils.toBbox(coco_rle)], int(mask_utils.area(coco_rle))


def as_bool_mask(mask: np.ndarray | RLE) -> np.ndarray:
    """A :class:`LabelMask` mask as a bool array (decoding an RLE)."""
    return decode_mask(mask) if isinstance(mask, Mapping) else np.asarray(mask, dtype=bool)


def as_rle(mask: np.ndarray | RLE) -> RLE:
    """A :class:`LabelMask` mask as an RLE dict (encoding an array)."""
    return dict(mask) if isinstance(mask, Mapping) else encode_mask(mask)


def _by_class(classes: Sequence[str], masks: Sequence[LabelMask]) -> dict[str, LabelMask]:
    found: dict[str, LabelMask] = {}
    for m in masks:
        if m.class_name not in classes:
            raise InputError(f"unknown class {m.class_name!r}; the writer has {list(classes)}")
        if m.class_name in found:
            raise InputError(f"two masks for class {m.class_name!r} on one image")
        found[m.class_name] = m
    return found


def _class_mask(found: Mapping[str, LabelMask], c: str, image_size: tuple[int, int]) -> np.ndarray:
    """The bool mask of class ``c`` (all ``False`` when it was not found)."""
    return as_bool_mask(found[c].mask) if c in found else np.zeros(image_size, dtype=bool)


class _PerImageWriter:
    """Base of the writers that write files per image under ``OUT/<folder>``, as they come."""

    name: str
    folder: str
    suffix: str

    def __init__(self, out_dir: str | os.PathLike[str], classes: Sequence[str]) -> None:
        self.classes = check_class_names(classes)
        self.out = Path(out_dir)
        self.root = self.out / self.folder

    def file(self, *parts: str) -> Path:
        """``OUT/<folder>/<parts...>``, refused when it would lie outside ``OUT`` (a key or
        class with ``..``, a link): checked before every write."""
        return inside(self.out, self.root.joinpath(*parts))

    def paths(self, key: str) -> list[Path]:
        """The files written for image ``key``."""
        return [self.root / f"{key}{self.suffix}"]

    def add(
        self,
        key: str,
        image_size: tuple[int, int],
        masks: Sequence[LabelMask],
        *,
        file_name: str | None = None,
        image: ImageSource = None,
    ) -> None:
        """Write the files of image ``key``."""
        self._write(key, image_size, masks, image)

    def _write(
        self, key: str, image_size: tuple[int, int], masks: Sequence[LabelMask], image: ImageSource
    ) -> None:
        """Write the files of image ``key`` in the writer's format."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Nothing to do: every file is written by :meth:`add`."""


# --------------------------------------------------------------------------- PNG


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3) uint8``, index 0 black, 1 dark red, 2 dark green..."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


class PngWriter(_PerImageWriter):
    """0/255 PNG masks per class, or one indexed palette PNG per image (``indexed=True``)."""

    folder = "png"
    suffix = ".png"

    def __init__(
        self, out_dir: str | os.PathLike[str], classes: Sequence[str], *, indexed: bool = False
    ) -> None:
        super().__init__(out_dir, classes)
        self.indexed = indexed
        self.name = "png-indexed" if indexed else "png"
        if indexed and len(self.classes) > 254:
            raise InputError("an indexed PNG holds at most 254 classes (255 is VOC's 'ignore')")
        self.folders = {c: safe_name(c) for c in self.classes}

    def paths(self, key: str) -> list[Path]:
        """The files written for image ``key``."""
        if self.indexed:
            return super().paths(key)
        return [self.root / self.folders[c] / f"{key}.png" for c in self.classes]

    def _write(
        self, key: str, image_size: tuple[int, int], masks: Sequence[LabelMask], image: ImageSource
    ) -> None:
        found = _by_class(self.classes, masks)
        h, w = image_size
        if self.indexed:
            labels = np.zeros((h, w), dtype=np.uint8)
            # Lowest score first, so the best-scoring class ends on top; ties: class order.
            index = {c: i + 1 for i, c in enumerate(self.classes)}
            order = sorted(found.values(), key=lambda m: (m.score, -index[m.class_name]))
            for m in order:
                labels[_sized(as_bool_mask(m.mask), image_size)] = index[m.class_name]
            img = Image.fromarray(labels, mode="P")
            img.putpalette(voc_palette().ravel().tolist())
            with atomic_path(self.file(f"{key}.png")) as tmp:
                img.save(tmp, format="PNG")
            return
        for c in self.classes:
            mask = _sized(_class_mask(found, c, image_size), image_size)
            write_mask_png(self.file(self.folders[c], f"{key}.png"), mask)


class InstanceWriter(PngWriter):
    """Instance-id palette PNGs, one per image and class (``OUT/instances/<class>/<key>.png``)."""

    folder = "instances"

    def __init__(self, out_dir: str | os.PathLike[str], classes: Sequence[str]) -> None:
        super().__init__(out_dir, classes)
        self.name = "instances"

    def _write(
        self, key: str, image_size: tuple[int, int], masks: Sequence[LabelMask], image: ImageSource
    ) -> None:
        found = _by_class(self.classes, masks)
        for c in self.classes:
            objects = found[c].objects() if c in found else []
            write_instance_png(self.file(self.folders[c], f"{key}.png"), objects, image_size)


def write_instance_png(
    path: str | os.PathLike[str],
    objects: Sequence[tuple[np.ndarray | RLE, float]],
    image_size: tuple[int, int],
) -> None:
    """An instance-id palette PNG: 0 background, ``i`` the ``i``-th of ``(mask, score)``
    ``objects`` by score (best first, on top where they overlap; at most 255)."""
    ids = np.zeros(tuple(int(v) for v in image_size), dtype=np.uint8)
    ranked = disjoint_objects(objects)[:255]
    for i, (mask, _) in enumerate(ranked):
        ids[_sized(mask, image_size)] = i + 1
    img = Image.fromarray(ids, mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    with atomic_path(Path(path)) as tmp:
        img.save(tmp, format="PNG")


def _sized(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    if mask.shape != tuple(image_size):
        raise InputError(f"mask {mask.shape} does not match the image size {tuple(image_size)}")
    return mask


# --------------------------------------------------------------------------- COCO


class CocoWriter:
    """One COCO JSON file with RLE masks, written at :meth:`finalize`.

    Image ids are the ``image_id`` given to :meth:`add` (default: 1, 2, ... in call order);
    annotation ids run from 1 in the order images are added, classes in class order.
    """

    name = "coco"

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        classes: Sequence[str],
        *,
        file_name: str = "coco.json",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.classes = check_class_names(classes)
        self.path = Path(out_dir) / file_name
        self.info = {"description": "prosam label", "version": __version__, **(info or {})}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.videos: list[dict[str, Any]] = []

    def add(
        self,
        key: str,
        image_size: tuple[int, int],
        masks: Sequence[LabelMask],
        *,
        file_name: str | None = None,
        image: ImageSource = None,
        image_id: int | None = None,
        image_fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Add an image and its masks; ``image_fields`` are added to its ``images`` entry
        (a video frame's ``video_id``, ``frame_id``, ``time``)."""
        found = _by_class(self.classes, masks)
        h, w = (int(v) for v in image_size)
        image_id = len(self.images) + 1 if image_id is None else int(image_id)
        entry = {"id": image_id, "file_name": file_name or key, "width": w, "height": h}
        self.images.append({**entry, **(image_fields or {})})
        for c in self.classes:
            if c not in found:
                continue
            m = found[c]
            quality = (m.extras or {}).get("quality")
            for mask, score in m.objects():
                rle = as_rle(mask)
                if list(rle["size"]) != [h, w]:
                    raise InputError(f"{key}: mask of size {rle['size']} on a {h}x{w} image")
                bbox, area = rle_bbox_area(rle)
                ann: dict[str, Any] = {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.classes.index(c) + 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    "score": float(score if quality is None else quality),
                }
                if quality is not None:
                    ann["method_score"] = float(score)
                uncertainty = (m.extras or {}).get("uncertainty")
                if isinstance(uncertainty, (int, float)):
                    ann["uncertainty"] = float(uncertainty)
                self.annotations.append(ann)

    def to_dict(self) -> dict[str, Any]:
        """The COCO data set as a dict."""
        categories = [
            {"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(self.classes)
        ]
        videos = {"videos": self.videos} if self.videos else {}
        return {
            "info": self.info,
            **videos,
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }

    def finalize(self) -> None:
        """Write the JSON file atomically."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        write_bytes_atomic(self.path, text.encode())


# --------------------------------------------------------------------------- YOLO


def instance_polygon(mask: np.ndarray, *, min_piece: float = 0.01) -> np.ndarray | None:
    """One YOLO-seg polygon for one instance: the outer boundary of each of its pieces
    (:func:`mask_polygons`), pieces under ``min_piece`` of the instance's area (specks)
    dropped, the rest joined into one ring by zero-width bridges between their nearest
    points (as Ultralytics' converter joins the parts of a COCO object). Holes are filled.
    ``None`` when nothing is left."""
    pixels = np.asarray(mask, dtype=bool)
    total = int(pixels.sum())
    polygons = mask_polygons(pixels)
    if total == 0 or not polygons:
        return None
    import cv2

    def area(poly: np.ndarray) -> float:
        return float(cv2.contourArea(poly.astype(np.float32).reshape(-1, 1, 2)))

    largest = max(area(p) for p in polygons)
    floor = min_piece * total
    pieces = [p for p in polygons if area(p) >= floor or area(p) == largest]
    ring = pieces[0]
    for piece in pieces[1:]:
        gaps = ((ring[:, None, :] - piece[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(gaps.argmin()), gaps.shape)
        around = np.roll(piece, -int(j), axis=0)
        ring = np.concatenate([ring[: i + 1], around, around[:1], ring[i:]])
    return ring


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer boundary polygons of a mask's 8-connected components, as ``(N, 2)`` ``x, y``
    pixel coordinates (OpenCV's ``findContours``, collinear points dropped by
    ``CHAIN_APPROX_SIMPLE``, as Ultralytics' converter does).

    Holes are not represented (YOLO-seg polygons have none, so a hole comes back filled);
    a component one pixel wide keeps every boundary pixel; components of one or two pixels,
    too small to give a polygon of three points, are left out. Components come in raster
    order of their first pixel.
    """
    import cv2

    pixels = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    simple, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    full, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for short, long in zip(simple, full, strict=True):
        contour = short if len(short) >= 3 else long  # a line of pixels: keep its pixels
        if len(contour) < 3:
            continue
        polygons.append(contour.reshape(-1, 2).astype(np.int64))
    return sorted(polygons, key=lambda xy: min((int(y), int(x)) for x, y in xy))


class YoloWriter(_PerImageWriter):
    """YOLO-seg label files (``OUT/yolo/<key>.txt``, one row per object:
    :func:`instance_polygon`) and ``OUT/yolo/classes.txt``."""

    name = "yolo"
    folder = "yolo"
    suffix = ".txt"

    def __init__(
        self, out_dir: str | os.PathLike[str], classes: Sequence[str], *, decimals: int = 6
    ) -> None:
        super().__init__(out_dir, classes)
        self.decimals = decimals

    def _write(
        self, key: str, image_size: tuple[int, int], masks: Sequence[LabelMask], image: ImageSource
    ) -> None:
        found = _by_class(self.classes, masks)
        h, w = image_size
        scale = np.array([w, h], dtype=np.float64)
        lines = []
        for idx, c in enumerate(self.classes):
            if c not in found:
                continue
            for mask, _ in found[c].objects():  # one row per instance
                poly = instance_polygon(_sized(as_bool_mask(mask), image_size))
                if poly is None:
                    continue
                coords = (poly / scale).ravel()
                lines.append(" ".join([str(idx), *(f"{v:.{self.decimals}f}" for v in coords)]))
        text = "".join(line + "\n" for line in lines)
        write_bytes_atomic(self.file(f"{key}.txt"), text.encode())

    def finalize(self) -> None:
        """Write ``classes.txt``."""
        text = "".join(c + "\n" for c in self.classes)
        write_bytes_atomic(self.file("classes.txt"), text.encode())


def read_yolo_polygons(
    path: str | os.PathLike[str], image_size: tuple[int, int]
) -> list[tuple[int, np.ndarray]]:
    """``(class_idx, (N, 2) x, y pixel polygon)`` for each line of a YOLO-seg file."""
    h, w = image_size
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        xy = np.asarray(parts[1:], dtype=np.float64).reshape(-1, 2) * [w, h]
        out.append((int(parts[0]), xy))
    return out


def rasterize_polygons(polygons: Sequence[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """Fill ``x, y`` pixel polygons (outline included) into a bool ``(H, W)`` mask."""
    import cv2

    h, w = image_size
    img = np.zeros((h, w), dtype=np.uint8)
    for poly in polygons:
        pts = np.rint(np.asarray(poly, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(img, [pts], 1)
        cv2.polylines(img, [pts], isClosed=True, color=1)
    return img.astype(bool)


# --------------------------------------------------------------------------- overlays


class OverlayWriter(_PerImageWriter):
    """JPEG previews, masks blended over the image (``OUT/overlay/<key>.jpg``)."""

    name = "overlay"
    folder = "overlay"
    suffix = ".jpg"

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        classes: Sequence[str],
        *,
        max_side: int = 1280,
        quality: int = 85,
    ) -> None:
        super().__init__(out_dir, classes)
        self.max_side = max_side
        self.quality = quality

    def _write(
        self, key: str, image_size: tuple[int, int], masks: Sequence[LabelMask], image: ImageSource
    ) -> None:
        if image is None:
            raise InputError("the overlay writer needs the image (array or path)")
        pixels = image if isinstance(image, np.ndarray) else read_image(image)
        if pixels.shape[:2] != tuple(image_size):
            raise InputError(f"{key}: image {pixels.shape[:2]} is not {tuple(image_size)}")
        found = _by_class(self.classes, masks)
        h, w = image_size
        layers = [_class_mask(found, c, image_size) for c in self.classes]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
            layers = [
                np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST))
                for m in layers
            ]
        legend = []
        for i, c in enumerate(self.classes):
            if c in found:
                quality = (found[c].extras or {}).get("quality")
                legend.append((c if quality is None else f"{c} {quality:.2f}", i))
        drawn = draw_legend(overlay_masks(pixels, layers), legend)
        write_image(self.file(f"{key}.jpg"), drawn, quality=self.quality)


def make_writer(
    name: str, out_dir: str | os.PathLike[str], classes: Sequence[str]
) -> PngWriter | InstanceWriter | CocoWriter | YoloWriter | OverlayWriter:
    """The writer of a format name (one of :data:`FORMATS`)."""
    if name == "png":
        return PngWriter(out_dir, classes)
    if name == "png-indexed":
        return PngWriter(out_dir, classes, indexed=True)
    if name == "instances":
        return InstanceWriter(out_dir, classes)
    if name == "coco":
        return CocoWriter(out_dir, classes)
    if name == "yolo":
        return YoloWriter(out_dir, classes)
    if name == "overlay":
        return OverlayWriter(out_dir, classes)
    raise InputError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")

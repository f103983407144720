"""What the page does with the model: open images, turn clicks into SAM masks, keep the
references, preview a method on a few targets and hand the folder to a labelling job.

One :class:`AppSession` serves one page process; every model call holds its lock, so the
web server's worker threads never run the model at once.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prosam.app.jobs import FORMATS, JobReference, JobRunner, ModelOptions
from prosam.app.paths import RootFolder, images_in
from prosam.app.uploads import store_upload
from prosam.errors import InputError
from prosam.label.api import Segmenter
from prosam.label.classes import check_class_names
from prosam.label.defaults import DEFAULT_METHOD
from prosam.label.job import load_target_image
from prosam.methods.registry import list_methods
from prosam.sam.model import FrozenSam
from prosam.sam.predictor import ImageEmbedding, Predictor
from prosam.visualize import draw_legend, overlay_masks

UPLOADS = "@uploads"
"""The name the page gives the folder of uploaded reference images (``@uploads/<file>``)."""
UPLOADED_TARGETS = "@uploaded-targets"
"""The name the page gives the folder of uploaded target images."""


@dataclass(frozen=True)
class AppSettings:
    """Where the page may read and write, and its limits."""

    root: Path
    workdir: Path
    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    preview_limit: int = 6
    model_options: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class OpenImage:
    """An image the page opened: pixels as prosam reads them, and its SAM embedding."""

    path: Path
    pixels: np.ndarray
    embedded: ImageEmbedding


@dataclass
class StoredReference:
    """A reference the user added: the image, its mask from SAM, the class name."""

    image: str
    path: Path
    pixels: np.ndarray
    mask: np.ndarray
    class_name: str


def png_data_url(array: np.ndarray) -> str:
    """A uint8 array (gray or RGB) as a ``data:image/png`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def jpeg_bytes(pixels: np.ndarray, *, max_side: int | None = None, quality: int = 90) -> bytes:
    """RGB pixels as JPEG bytes, shrunk to ``max_side`` when given."""
    img = Image.fromarray(pixels)
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _prompts(
    points: Sequence[Sequence[float]] | None,
    labels: Sequence[int] | None,
    box: Sequence[float] | None,
    size: tuple[int, int],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Clicks and box checked the way ``prosam predict`` checks them."""
    from prosam.prompts.user_prompts import check_points_inside, clip_box

    pts = np.asarray(points or [], dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels if labels is not None else [1] * len(pts), dtype=np.int64).ravel()
    if lab.shape != (len(pts),) or not set(lab.tolist()) <= {0, 1}:
        raise InputError("give one label, 0 or 1, for each click")
    if len(pts):
        check_points_inside(pts.tolist(), size)
    b = None
    if box is not None:
        raw = np.asarray(box, dtype=np.float64).ravel()
        if raw.shape != (4,) or not np.isfinite(raw).all():
            raise InputError("a box is x0, y0, x1, y1")
        b = np.array(clip_box(raw.tolist(), size)[0], dtype=np.float64)
    if not len(pts) and b is None:
        raise InputError("click on the image or draw a box first")
    return (pts if len(pts) else None), (lab if len(pts) else None), b


class AppSession:
    """The page's state and model work (see the module docstring)."""

    def __init__(
        self,
        model: FrozenSam,
        settings: AppSettings,
        *,
        predictor: Predictor | None = None,
        keep_images: int = 8,
    ) -> None:
        self.model = model
        self.settings = settings
        self.folder = RootFolder(settings.root)
        self.predictor = predictor or Predictor(model)
        self.uploads = settings.workdir / "uploads"
        self.jobs = JobRunner(
            settings.workdir / "jobs", settings.model_options, allowed_root=self.folder.root
        )
        self.lock = threading.Lock()
        self.keep_images = keep_images
        self.images: OrderedDict[str, OpenImage] = OrderedDict()
        self.references: list[StoredReference] = []
        self._fitted: tuple[tuple[str, int], Segmenter] | None = None
        self._references_version = 0  # bumped by every change of the references

    # -- images

    def image_path(self, name: str) -> Path:
        """The file behind a page image name: under the root, or ``@uploads/<file>``."""
        if name.startswith(UPLOADS + "/"):
            file_name = name[len(UPLOADS) + 1 :]
            path = self.uploads / file_name
            if "/" in file_name or "\\" in file_name or not path.is_file():
                raise InputError(f"{name!r}: no such upload")
            return path
        return self.folder.image(name)

    def upload(self, data: bytes, *, target: bool = False, file_name: str | None = None) -> str:
        """Store an uploaded image, a reference or (``target``) a target, under its own
        ``file_name`` made safe; its page name."""
        path = store_upload(
            data,
            self.uploads / "targets" if target else self.uploads,
            max_bytes=self.settings.max_upload_bytes,
            max_pixels=self.settings.max_pixels,
            file_name=file_name,
        )
        return f"{UPLOADED_TARGETS}/{path.name}" if target else f"{UPLOADS}/{path.name}"

    def open_image(self, name: str) -> OpenImage:
        """Read and embed an image once; later calls reuse it (the last few stay open)."""
        path = self.image_path(name)
        with self.lock:
            found = self.images.get(name)
            if found is not None and found.path == path:
                self.images.move_to_end(name)
                return found
            pixels = load_target_image(path, self.settings.max_pixels)
            opened = OpenImage(path, pixels, self.predictor.embed(pixels))
            self.images[name] = opened
            while len(self.images) > self.keep_images:
                self.images.popitem(last=False)
            return opened

    def image_info(self, name: str) -> dict[str, Any]:
        """Open ``name`` and say its size (the page draws in these pixel coordinates)."""
        t0 = time.perf_counter()
        opened = self.open_image(name)
        h, w = opened.pixels.shape[:2]
        return {"image": name, "width": w, "height": h, "ms": 1000 * (time.perf_counter() - t0)}

    # -- masks and references

    def _mask(
        self,
        opened: OpenImage,
        points: Sequence[Sequence[float]] | None,
        labels: Sequence[int] | None,
        box: Sequence[float] | None,
    ) -> tuple[np.ndarray, float]:
        pts, lab, b = _prompts(points, labels, box, opened.pixels.shape[:2])
        multimask = pts is not None and len(pts) == 1 and b is None  # as `prosam predict`
        with self.lock:
            prediction = self.predictor.predict(
                opened.embedded, points=pts, point_labels=lab, box=b, multimask_output=multimask
            )
        return prediction.best()

    def mask(
        self,
        name: str,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """SAM's mask for clicks and/or a box on an opened image, as a 0/255 PNG."""
        t0 = time.perf_counter()
        mask, score = self._mask(self.open_image(name), points, labels, box)
        return {
            "mask": png_data_url(mask.astype(np.uint8) * 255),
            "score": min(max(float(score), 0.0), 1.0),  # SAM's IoU head can say 1.02
            "area": int(mask.sum()),
            "ms": 1000 * (time.perf_counter() - t0),
        }

    def add_reference(
        self,
        name: str,
        class_name: str,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """Keep SAM's mask of these prompts as a reference of ``class_name``."""
        check_class_names([class_name])
        opened = self.open_image(name)
        mask, _ = self._mask(opened, points, labels, box)
        if not mask.any():
            raise InputError("SAM finds nothing there: click on the object")
        self.references.append(StoredReference(name, opened.path, opened.pixels, mask, class_name))
        self._references_version += 1
        return self.reference_list()

    def remove_reference(self, index: int) -> list[dict[str, Any]]:
        if not 0 <= index < len(self.references):
            raise InputError(f"no reference {index}")
        del self.references[index]
        self._references_version += 1
        return self.reference_list()

    def reference_list(self) -> list[dict[str, Any]]:
        """Each reference's class, image and a small overlay."""
        out = []
        for i, ref in enumerate(self.references):
            thumb = overlay_masks(ref.pixels, [ref.mask])
            img = Image.fromarray(thumb)
            img.thumbnail((160, 160))
            out.append(
                {
                    "index": i,
                    "class": ref.class_name,
                    "image": ref.image,
                    "area": int(ref.mask.sum()),
                    "thumb": png_data_url(np.asarray(img)),
                }
            )
        return out

    # -- preview and jobs

    def targets_folder(self, name: str) -> Path:
        """The folder of targets: under the root, or ``@uploaded-targets``."""
        if name == UPLOADED_TARGETS:
            folder = self.uploads / "targets"
            if not folder.is_dir():
                raise InputError("no targets were uploaded yet")
            return folder
        return self.folder.folder(name)

    def _segmenter(self, method: str) -> Segmenter:
        if not self.references:
            raise InputError("add a reference first: click on the object, then 'Add reference'")
        key = (method, self._references_version)
        if self._fitted is not None and self._fitted[0] == key:
            return self._fitted[1]
        segmenter = Segmenter(self.model, method, predictor=self.predictor, cache_targets=True)
        segmenter.fit([(r.pixels, r.mask, r.class_name) for r in self.references])
        self._fitted = (key, segmenter)
        return segmenter

    def preview(self, method: str, targets: str, limit: int | None = None) -> dict[str, Any]:
        """Segment the first few images of a targets folder; overlays and per-class answers."""
        check_method(method)
        folder = self.targets_folder(targets)
        n = self.settings.preview_limit if limit is None else max(1, min(int(limit), 24))
        files = images_in(folder, n)
        if not files:
            raise InputError(f"{targets!r} holds no images")
        t0 = time.perf_counter()
        with self.lock:
            segmenter = self._segmenter(method)
            results = segmenter.predict(files)
        cards = []
        for path, result in zip(files, results, strict=True):
            classes = list(result.masks)
            pixels = (
                result.image
                if result.image is not None
                else load_target_image(path, self.settings.max_pixels)
            )
            layers = [result.masks[c] for c in classes]
            legend = [
                (f"{c} {result.scores[c]:.2f}" if result.masks[c].any() else f"{c}: not here", i)
                for i, c in enumerate(classes)
            ]
            picture = draw_legend(overlay_masks(pixels, layers), legend)
            cards.append(
                {
                    "name": path.name,
                    "overlay": "data:image/jpeg;base64,"
                    + base64.b64encode(jpeg_bytes(picture, max_side=480)).decode(),
                    "classes": [
                        {
                            "class": c,
                            "found": bool(result.masks[c].any()),
                            "score": float(result.scores[c]),
                            "instances": len(result.instances.get(c, [])),
                            "quality": result.quality.get(c),
                        }
                        for c in classes
                    ],
                }
            )
        seconds = time.perf_counter() - t0
        return {"method": method, "targets": targets, "cards": cards, "seconds": seconds}

    def start_job(
        self, name: str, targets: str, method: str, formats: Sequence[str]
    ) -> dict[str, Any]:
        """Start ``prosam label`` on a whole targets folder with the current references."""
        check_method(method)
        folder = self.targets_folder(targets)
        refs = [JobReference(r.path, r.mask, r.class_name) for r in self.references]
        return self.jobs.start(
            name,
            refs,
            folder,
            method=method,
            formats=list(formats),
            shown_as=targets,
            allowed_root=folder if targets == UPLOADED_TARGETS else self.folder.root,
        )

    def config(self) -> dict[str, Any]:
        """What the page needs to draw its controls."""
        methods = [{"name": m.name, "summary": m.summary} for m in list_methods()]
        return {
            "root": str(self.folder.root),
            "methods": methods,
            "default_method": DEFAULT_METHOD,
            "formats": list(FORMATS),
            "default_formats": ["png", "coco", "overlay"],
            "max_upload_bytes": self.settings.max_upload_bytes,
            "model": self.model.name,
        }


def check_method(method: str) -> str:
    """A registered method (trained ones use the checkpoint bundled for the SAM)."""
    offered = {m.name for m in list_methods()}
    if method not in offered:
        raise InputError(f"unknown method {method!r}; one of {', '.join(sorted(offered))}")
    return method

"""Images sent from the page: size and pixel limits checked before anything is decoded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from urllib.parse import unquote

from PIL import Image

from prosam.app.paths import IMAGE_SUFFIXES
from prosam.errors import InputError
from prosam.io import inside, quiet_pillow, write_bytes_atomic
from prosam.label.classes import safe_name

#: ``image/...`` formats Pillow reports, and the suffix an upload is stored under.
FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def check_upload(data: bytes, *, max_bytes: int, max_pixels: int) -> str:
    """The stored suffix of an uploaded image, or an :class:`InputError`: over ``max_bytes``,
    over ``max_pixels`` (read from the header, before decoding), or not an image."""
    if len(data) > max_bytes:
        raise InputError(f"the upload is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with quiet_pillow(), Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except Exception:  # Pillow raises many kinds for a file that is not an image
        raise InputError("the upload is not an image Pillow can read") from None
    if w * h > max_pixels:
        raise InputError(f"the upload is {w}x{h} pixels, over the {max_pixels}-pixel limit")
    suffix = FORMAT_SUFFIXES.get(fmt or "")
    if suffix is None or suffix not in IMAGE_SUFFIXES:
        raise InputError(f"the upload is a {fmt} image; send JPEG, PNG, BMP, TIFF or WebP")
    return suffix


def upload_stem(file_name: str | None) -> str | None:
    """The stem an upload keeps from the user's file name (``None``: no usable name).

    Only the last path part counts; characters other than letters, digits, ``. _ -`` become
    ``_``, so the stored name can never leave the uploads folder."""
    if not file_name:
        return None
    base = unquote(file_name).replace("\\", "/").rsplit("/", 1)[-1]
    stem = safe_name(Path(base).stem)[:80]
    return None if stem in ("", "_") else stem


def store_upload(
    data: bytes,
    folder: Path,
    *,
    max_bytes: int,
    max_pixels: int,
    file_name: str | None = None,
) -> Path:
    """Save an upload under ``folder`` and return its path: under the user's file name
    (``file_name``, made safe) when given, else under its content's sha256. The same image
    twice is one file; another image of the same name gets its hash appended."""
    suffix = check_upload(data, max_bytes=max_bytes, max_pixels=max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    stem = upload_stem(file_name)
    path = folder / f"{stem or digest[:20]}{suffix}"
    if path.exists() and path.read_bytes() != data:
        path = folder / f"{stem}-{digest[:8]}{suffix}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(inside(folder, path), data)
    return path

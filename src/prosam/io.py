"""Reading images and masks robustly, and writing outputs atomically.

Images come back as ``(H, W, 3) uint8`` RGB arrays with EXIF orientation applied, whatever the
file's mode (grayscale, RGBA, palette, 16-bit, CMYK). Masks come back as label maps, in the
displayed orientation too; see :func:`read_binary_mask` for how foreground and ignore pixels
are told apart.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from prosam.errors import InputError, ProsamWarning

IGNORE_VALUE = 255

#: Marks the writer's process id in the names of :func:`atomic_path`'s temporary files.
TEMPORARY_TAG = "pid"

#: File formats whose compression changes pixel values: a mask saved in one rings at its edges.
LOSSY_FORMATS = frozenset({"JPEG", "MPO"})

#: Values at or above this count as foreground in an alpha channel or a thresholded lossy mask.
MASK_THRESHOLD = 128


@contextlib.contextmanager
def quiet_pillow() -> Iterator[None]:
    """Silence Pillow's ``DecompressionBombWarning``: prosam refuses images by its own limits
    (``--max-pixels``) with one line, and Pillow's own error above twice its limit is an
    :class:`InputError` too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def not_a_file(path: Path, wanted: str = "an image file") -> str:
    """Why ``path``, given where a file is expected, is not one: a folder, a pipe or device,
    or nothing at all (``wanted``: what to give instead)."""
    if path.is_dir():
        return f"is a folder; give {wanted}"
    if path.exists():
        return "is not a regular file (a pipe or a device)"
    return "no such file"


def _open(path: str | os.PathLike[str]) -> Image.Image:
    return _open_with_format(path)[0]


def _open_with_format(path: str | os.PathLike[str]) -> tuple[Image.Image, str | None]:
    """The decoded image, EXIF orientation applied, and its file format (e.g. ``"PNG"``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {not_a_file(path)}")
    try:
        with quiet_pillow(), Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img) or img, img.format
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: image is too large ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from err


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / max(hi, 1e-12)
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    # 16- and 32-bit integer images: use the bit depth actually present, so a 12-bit
    # sensor image stored in 16 bits is not rendered almost black.
    hi = int(arr.max()) if arr.size else 0
    bits = max(8, int(np.ceil(np.log2(hi + 1))))
    return (arr.astype(np.float64) * (255.0 / (2**bits - 1))).round().astype(np.uint8)


def pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an ``(H, W, 3) uint8`` RGB array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: transparent pixels carry no colour information.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an ``(H, W, 3) uint8`` RGB array, EXIF orientation applied."""
    return pil_to_rgb_array(_open(path))


def read_label_map(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask file as an ``(H, W) uint8`` label map.

    Palette PNGs give their palette indices (VOC style), grayscale files their values, and
    colour files the maximum over channels (so any coloured pixel counts as non-zero).
    """
    return _label_map_from_pil(_open(path))


def _label_map_from_pil(img: Image.Image) -> np.ndarray:
    if img.mode == "P":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        return np.clip(arr, 0, 255).astype(np.uint8) if arr.max() <= 255 else _to_uint8(arr)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return arr.max(axis=2)


def split_label_map(
    labels: np.ndarray, *, class_value: int | None = None, palette: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Split a label map into ``(foreground, ignore)`` boolean masks.

    Rules, in order:
    - ``class_value`` given: foreground is ``labels == class_value``; 255 is ignore.
    - a palette map (VOC style), or one holding values other than 0 and 255: foreground is
      any value in 1..254; 255 is ignore.
    - a map holding only 0 and 255 (a plain black/white mask): 255 is foreground.
    """
    if class_value is not None:
        return labels == class_value, labels == IGNORE_VALUE
    values = np.unique(labels)
    if not palette and set(values.tolist()) <= {0, IGNORE_VALUE}:
        return labels == IGNORE_VALUE, np.zeros(labels.shape, dtype=bool)
    ignore = labels == IGNORE_VALUE
    return (labels > 0) & ~ignore, ignore


def mask_alpha(img: Image.Image) -> np.ndarray | None:
    """The alpha channel of a mask image when it carries the mask (it is not constant)."""
    if img.mode not in ("RGBA", "LA", "PA") and not (
        img.mode == "P" and "transparency" in img.info
    ):
        return None
    alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3]
    return alpha if alpha.size and alpha.min() != alpha.max() else None


def read_binary_mask(
    path: str | os.PathLike[str],
    *,
    class_value: int | None = None,
    expected_size: tuple[int, int] | None = None,
    lossy: Literal["threshold", "refuse"] = "threshold",
) -> tuple[np.ndarray, np.ndarray]:
    """Read a mask file as ``(foreground, ignore)`` boolean arrays.

    The rule, in order:

    - an alpha channel that is not constant carries the mask: alpha >= 128 is foreground
      (the colours are not looked at);
    - a lossy file (JPEG) cannot hold exact values: with ``lossy="threshold"`` values >= 128
      are foreground, nothing is ignore, and a :class:`~prosam.errors.ProsamWarning` says so;
      ``lossy="refuse"`` makes it an :class:`InputError`;
    - otherwise the label map's values, see :func:`split_label_map` (0/255 masks, palette and
      label maps).

    ``expected_size`` is the ``(H, W)`` of the image the mask belongs to; a mismatch is an
    :class:`InputError` naming both sizes.
    """
    img, file_format = _open_with_format(path)
    alpha = mask_alpha(img)
    labels = alpha if alpha is not None else _label_map_from_pil(img)
    if expected_size is not None and labels.shape != tuple(expected_size):
        raise InputError(
            f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image is "
            f"{expected_size[1]}x{expected_size[0]}"
        )
    if alpha is not None:
        return alpha >= MASK_THRESHOLD, np.zeros(alpha.shape, dtype=bool)
    if file_format in LOSSY_FORMATS:
        if lossy == "refuse":
            raise InputError(
                f"{path}: a {file_format} mask is lossy (its edges ring with stray values); "
                "save the mask as PNG"
            )
        warnings.warn(
            f"{path}: {file_format} is lossy; mask read as values >= {MASK_THRESHOLD} "
            "(save masks as PNG to keep exact values)",
            ProsamWarning,
            stacklevel=2,
        )
        return labels >= MASK_THRESHOLD, np.zeros(labels.shape, dtype=bool)
    return split_label_map(labels, class_value=class_value, palette=img.mode == "P")


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` if it lies under ``root`` once ``..`` and links are resolved, else an
    :class:`~prosam.errors.InputError`: the one check every writer makes before it opens a
    file whose name came from a user, a class, a target key or a job.

    Refuses NUL bytes, absolute paths given as parts, link loops and anything outside."""
    text = os.fspath(path)
    if "\x00" in text:
        raise InputError("a path holds a NUL byte")
    try:
        base = Path(root).resolve()
        resolved = Path(path).resolve()
    except (RuntimeError, OSError) as err:  # a link loop, or a name too long
        why = "a loop of links" if isinstance(err, RuntimeError) else err.__class__.__name__
        raise InputError(f"{text}: cannot be resolved ({why})") from None
    if resolved != base and base not in resolved.parents:
        raise InputError(f"{text}: outside the output folder {root}")
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A crash inside the block leaves ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's process id in the name tells a killed run's leftovers from work in progress.
    prefix = f".{path.name}.{TEMPORARY_TAG}{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def remove_stale_temporaries(
    root: str | os.PathLike[str], *, max_age_s: float = 24 * 3600.0
) -> int:
    """Remove the temporary files :func:`atomic_path` left under ``root`` when its process
    was killed: those whose process is gone, and any older than ``max_age_s`` (a process on
    another machine sharing the folder). Returns how many were removed."""
    removed = 0
    now = time.time()
    for tmp in Path(root).rglob(".*.tmp"):
        pid = _writer_pid(tmp.name)
        try:
            stale = now - tmp.stat().st_mtime > max_age_s or (pid is not None and not _alive(pid))
            if stale:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # finished (or removed) meanwhile
            continue
    return removed


def _writer_pid(name: str) -> int | None:
    _, tag, rest = name.partition(f".{TEMPORARY_TAG}")
    digits = rest.split(".", 1)[0]
    return int(digits) if tag and digits.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. someone else's process
        return True
    return True


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write a boolean (or 0/1) mask as a 0/255 single-channel PNG, atomically."""
    arr = (np.asarray(mask) > 0).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG")


def write_image(path: str | os.PathLike[str], image: np.ndarray, *, quality: int = 90) -> None:
    """Write an RGB uint8 array as PNG or JPEG (chosen by suffix), atomically."""
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format=fmt, **kwargs)

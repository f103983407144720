"""Which files a labelling job targets, and what identifies each one.

A target's identity is its path relative to the **target root** plus its content hash. The
root is the folder common to the folder arguments and the folders of the files named (a
file added inside a target folder never moves it). Output names mirror the relative path
without its suffix (``a/x.jpg`` → key ``a/x``: ``png/<class>/a/x.png``), so two ``x.jpg``
in two folders never collide; where two targets would share a key (``x.jpg`` and ``x.png``,
or names equal but for case), each keeps its suffix (``a/x.jpg``), and names still equal
but for case also get 8 hex digits of the sha1 of the path.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prosam.data.folder import IMAGE_SUFFIXES, UNREAD_IMAGE_SUFFIXES
from prosam.errors import InputError

#: Keys a target cannot have: files prosam itself writes beside per-target outputs.
RESERVED_KEYS = frozenset({"classes"})
#: The folders a labelling job writes images into under its output folder: never targets
#: when a folder is scanned, even with ``--out`` equal to the targets folder.
JOB_OUTPUT_FOLDERS = frozenset(
    {"png", "instances", "yolo", "overlay", "review", "frames", "overlay-video", "corrections"}
)


def is_job_output(path: Path, out: str | os.PathLike[str] | None, scanned: Path) -> bool:
    """Whether ``path`` (found under the folder ``scanned``) lies in one of the
    :data:`JOB_OUTPUT_FOLDERS` of the job writing into ``out``, or of an earlier job (a
    folder holding ``job.json``) under ``scanned``."""
    if out is not None:
        try:
            rel = path.resolve().relative_to(Path(out).resolve())
        except ValueError:
            pass
        else:
            if len(rel.parts) > 1 and rel.parts[0] in JOB_OUTPUT_FOLDERS:
                return True
    for parent in path.parents:
        if parent == scanned or scanned not in parent.parents:
            return False
        if parent.name in JOB_OUTPUT_FOLDERS and (parent.parent / "job.json").is_file():
            return True
    return False


def expand_label_targets(
    items: Sequence[str],
    *,
    recursive: bool = False,
    out: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Files as given, folders expanded to their images, ``@list.txt`` to its lines; a
    folder's files under the output folder ``out`` are left out (:func:`without_output`)."""
    paths: list[Path] = []
    for item in items:
        if item.startswith("@"):
            listing = Path(item[1:])
            try:
                lines = listing.read_text().splitlines()
            except OSError as err:
                raise InputError(f"{listing}: cannot read the target list ({err})") from err
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    paths.append(p if p.is_absolute() else listing.parent / p)
            continue
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            # A broken link is a target too, and so is an image of a kind prosam does not
            # read: each fails, and says why, instead of being left out without a word.
            wanted = (*IMAGE_SUFFIXES, *UNREAD_IMAGE_SUFFIXES)
            images = sorted(
                q
                for q in found
                if (q.is_symlink() or not q.is_dir())  # a pipe too: reported, never read
                and q.suffix.lower() in wanted
                and not q.name.startswith(".")
                and not is_job_output(q, out, p)
            )
            paths += images if out is None else without_output(images, out, p)
        elif p.exists():
            paths.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return paths


def check_target_file(
    path: str | os.PathLike[str], allowed_root: str | os.PathLike[str] | None = None
) -> None:
    """Refuse (:class:`InputError`) a target that must not be read: not a regular file (a
    pipe would block, a device never ends), an image kind prosam does not read, or, with
    ``allowed_root``, a file whose real path (links followed) lies outside that folder."""
    p = Path(path)
    if allowed_root is not None:
        real, base = p.resolve(), Path(allowed_root).resolve()
        if base not in real.parents:
            raise InputError("it leads outside the allowed root folder: not opened")
    try:
        mode = p.stat().st_mode
    except OSError as err:
        raise InputError(f"no such file, or it cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
        raise InputError(f"it is {kind}: not read")
    kind = UNREAD_IMAGE_SUFFIXES.get(p.suffix.lower())
    if kind is not None:
        raise InputError(f"prosam does not read {kind} files: convert it to PNG or JPEG")


def without_output(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
) -> list[Path]:
    """``paths`` less the files under the output folder ``out`` when it lies inside the
    target tree (strictly below ``root``, symbolic links resolved): a job never labels its
    own outputs. An ``out`` that is the root itself or outside it excludes nothing."""
    out_dir = Path(out).resolve()
    if (
        root is None
        or out_dir == Path(root).resolve()
        or not out_dir.is_relative_to(Path(root).resolve())
    ):
        return [Path(p) for p in paths]
    return [Path(p) for p in paths if not Path(p).resolve().is_relative_to(out_dir)]


def target_root(items: Sequence[str], paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """The folder common to the folder ``items`` and the folders of ``paths`` (``None`` when
    there is none, e.g. paths on two drives)."""
    folders = [os.path.abspath(i) for i in items if not i.startswith("@") and Path(i).is_dir()]
    folders += [os.path.dirname(os.path.abspath(p)) for p in paths]
    if not folders:
        return None
    try:
        return Path(os.path.commonpath(folders))
    except ValueError:
        return None


@dataclass(frozen=True)
class TargetEntry:
    """A target in the full sorted list: where it is, its output key and COCO identity."""

    index: int
    path: Path
    key: str
    file_name: str

    @property
    def image_id(self) -> int:
        return self.index + 1


def plan_targets(
    paths: Sequence[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None
) -> list[TargetEntry]:
    """Sort targets by path relative to ``root`` and give each a key (module doc).

    ``root`` defaults to the folder common to the targets' folders. A path listed twice is
    labelled once; a symbolic link is a target of its own (its own path, its own outputs).
    """
    given = [Path(p) for p in paths]
    if not given:
        return []
    base = root if root is not None else target_root([], given)
    by_path: dict[str, Path] = {}
    for p in given:
        by_path.setdefault(_relative(p, base), p)
    items = sorted(by_path.items())
    keys = _unique_keys([rel for rel, _ in items])
    return [
        TargetEntry(i, p, key, rel)
        for i, ((rel, p), key) in enumerate(zip(items, keys, strict=True))
    ]


def _relative(path: Path, root: str | os.PathLike[str] | None) -> str:
    absolute = os.path.abspath(path)
    if root is not None:
        rel = os.path.relpath(absolute, root)
        if not rel.startswith(os.pardir):
            return Path(rel).as_posix()
    return Path(absolute).as_posix().lstrip("/")


def _unique_keys(rels: Sequence[str]) -> list[str]:
    """Keys for sorted relative paths (module doc), in linear time."""
    stems = [Path(rel).with_suffix("").as_posix() for rel in rels]
    taken = Counter(k.casefold() for k in stems)
    keys = [
        rel if taken[k.casefold()] > 1 or k.casefold() in RESERVED_KEYS else k
        for rel, k in zip(rels, stems, strict=True)
    ]
    taken = Counter(k.casefold() for k in keys)
    return [
        f"{k}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}" if taken[k.casefold()] > 1 else k
        for rel, k in zip(rels, keys, strict=True)
    ]


@dataclass(frozen=True)
class FileStamp:
    """What a target's record keeps of its file: the sha256 of its bytes, size, mtime."""

    sha256: str
    size: int
    mtime_ns: int

    def as_dict(self) -> dict[str, Any]:
        """The stamp as a record stores it."""
        return {"sha256": self.sha256, "size": self.size, "mtime_ns": self.mtime_ns}


def stamp_file(path: str | os.PathLike[str]) -> FileStamp:
    """The :class:`FileStamp` of a file (reads it whole)."""
    from prosam.core.files import sha256_file

    stat = os.stat(path)
    return FileStamp(sha256_file(path), stat.st_size, stat.st_mtime_ns)


def same_file(stamp: Any, path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` still holds the file a record's ``stamp`` (a dict) describes: its size
    and mtime unchanged, else its sha256 equal."""
    if not isinstance(stamp, dict) or "sha256" not in stamp:
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns) == (stamp.get("size"), stamp.get("mtime_ns")):
        return True
    try:
        return stamp_file(path).sha256 == stamp["sha256"]
    except OSError:
        return False

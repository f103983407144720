"""Datasets named on the command line: ``coco:DIR[,DIR...]``, ``folder:DIR``, ``pascal:ROOT``,
``coco20i:ROOT``.

A ``coco:`` directory holds ``annotations/instances_<split>.json`` files and the image
folders named after them (``<split>/``), the standard COCO layout; every split found is
loaded unless ``split`` narrows it.
"""

from __future__ import annotations

from pathlib import Path

from prosam.data.coco import load_coco
from prosam.data.folder import load_folder
from prosam.data.pascal import load_pascal_voc
from prosam.data.types import Dataset
from prosam.errors import InputError

SPEC_KINDS = ("coco", "folder", "pascal", "coco20i")


def coco_sources(root: Path, split: str | None = None) -> list[tuple[Path, Path]]:
    """``(annotation file, image folder)`` pairs of a COCO-layout directory:
    ``annotations/instances_<split>.json`` with ``<split>/``, or (one split)
    ``annotations/instances.json`` with ``images/``."""
    files = sorted((root / "annotations").glob("instances_*.json"))
    pairs = []
    for ann in files:
        name = ann.stem.removeprefix("instances_")
        if split is not None and name != split:
            continue
        if (root / name).is_dir():
            pairs.append((ann, root / name))
    single = root / "annotations" / "instances.json"
    if not pairs and split is None and single.is_file() and (root / "images").is_dir():
        pairs.append((single, root / "images"))  # one split: msrc-v2's layout
    if not pairs:
        wanted = f"instances_{split}.json" if split else "instances_*.json"
        raise InputError(f"{root}: no annotations/{wanted} with a matching image folder")
    return pairs


def load_dataset_spec(
    spec: str, *, split: str | None = None, min_area_fraction: float = 0.0
) -> Dataset:
    """Load the dataset a ``KIND:PATH[,PATH...]`` string names."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SPEC_KINDS or not rest:
        raise InputError(
            f"dataset {spec!r}: expected KIND:PATH with KIND one of {', '.join(SPEC_KINDS)}"
        )
    paths = [Path(p).expanduser() for p in rest.split(",") if p]
    for p in paths:
        if not p.exists():
            raise InputError(f"dataset {spec!r}: {p} does not exist")
    if kind == "coco":
        sources = [pair for p in paths for pair in coco_sources(p, split)]
        return load_coco(sources, min_area_fraction=min_area_fraction, description=spec)
    if len(paths) != 1:
        raise InputError(f"dataset {spec!r}: {kind} takes one directory")
    if kind == "folder":
        return load_folder(paths[0], description=spec)
    if kind == "pascal":
        return load_pascal_voc(paths[0], split=split or "val", min_area_fraction=min_area_fraction)
    year_split = split or "val2014"
    return load_coco(
        coco_sources(paths[0], year_split), min_area_fraction=min_area_fraction, description=spec
    )

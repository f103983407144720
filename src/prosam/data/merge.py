"""Extra training data joined to a main dataset by class name.

A second dataset (msrc-v2 beside coco-mini, say) adds images to the main dataset's classes:
each extra class whose name, after :data:`CLASS_ALIASES`, is a main class name takes that
class's id, and so follows that class's fold (a novel class stays novel, whatever dataset
its images come from). Extra classes with no counterpart are dropped: they are in no fold.
An extra class that is a *part* of a main class (:data:`PART_OF`: msrc-v2's ``face`` of
COCO's ``person``) is dropped too, but its images count as showing the whole (in
``present_classes``), so they are never taken as lacking it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from prosam.data.types import Dataset, Sample

__all__ = ["CLASS_ALIASES", "PART_OF", "merge_by_class_name"]

#: Other datasets' names for COCO classes (PASCAL VOC's and msrc-v2's spellings).
CLASS_ALIASES: dict[str, str] = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
    "body": "person",
}

#: Extra classes that are parts of a main class.
PART_OF: dict[str, str] = {"face": "person"}


class _RemappedMasks:
    """Loads an extra sample's masks under the main dataset's class ids."""

    def __init__(self, originals: dict[str, Sample], original_id: dict[int, int]) -> None:
        self.originals = originals
        self.original_id = original_id

    def __call__(self, sample: Sample, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        original = self.originals[sample.key]
        return original.mask(self.original_id[int(class_id)])

    def instances(self, sample: Sample, class_id: int) -> list[np.ndarray]:
        return self.originals[sample.key].instances(self.original_id[int(class_id)])


def merge_by_class_name(
    main: Dataset, extra: Dataset, *, prefix: str = "extra/"
) -> tuple[Dataset, list[str]]:
    """``main`` plus ``extra``'s images of the classes both name; return it and the names of
    the extra classes dropped. Extra keys get ``prefix`` (keys must stay unique)."""
    by_name = {name.lower(): cid for cid, name in main.class_names.items()}
    to_main: dict[int, int] = {}
    part_of: dict[int, int] = {}
    dropped: list[str] = []
    for cid, name in extra.class_names.items():
        key = CLASS_ALIASES.get(name.lower(), name.lower())
        if key in by_name:
            to_main[cid] = by_name[key]
            continue
        dropped.append(name)
        whole = PART_OF.get(name.lower())
        if whole in by_name:
            part_of[cid] = by_name[whole]
    loader = _RemappedMasks({}, {m: e for e, m in to_main.items()})
    added: list[Sample] = []
    for s in extra:
        classes = frozenset(to_main[c] for c in s.classes if c in to_main)
        if not classes:
            continue
        present = frozenset(
            {to_main[c] for c in s.present_classes if c in to_main}
            | {part_of[c] for c in s.present_classes if c in part_of}
        )
        new = replace(
            s, key=prefix + s.key, classes=classes, present_classes=present, loader=loader
        )
        loader.originals[new.key] = s
        added.append(new)
    merged = Dataset(
        [*main.samples, *added],
        main.class_names,
        f"{main.description} + {extra.description}",
        {**main.stats, "extra_images": len(added)},
    )
    return merged, sorted(dropped)

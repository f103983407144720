from __future__ import annotations

import pytest

from prosam.data.folds import PASCAL_CLASSES, coco20i_classes, fold_split, pascal5i_classes
from prosam.errors import InputError


def test_pascal5i_folds_are_contiguous() -> None:
    assert pascal5i_classes(0)[1] == [1, 2, 3, 4, 5]
    assert pascal5i_classes(3)[1] == [16, 17, 18, 19, 20]
    base, novel = pascal5i_classes(1)
    assert novel == [6, 7, 8, 9, 10]
    assert base == [1, 2, 3, 4, 5, *range(11, 21)]
    assert len(PASCAL_CLASSES) == 20


def test_coco20i_folds_are_interleaved() -> None:
    assert coco20i_classes(0)[1] == list(range(1, 81, 4))
    assert coco20i_classes(0)[1][:3] == [1, 5, 9] and coco20i_classes(0)[1][-1] == 77
    assert coco20i_classes(1)[1][:3] == [2, 6, 10]
    novel_union = sorted(c for f in range(4) for c in coco20i_classes(f)[1])
    assert novel_union == list(range(1, 81))
    base, novel = coco20i_classes(2)
    assert len(base) == 60 and len(novel) == 20 and not set(base) & set(novel)


def test_fold_split_any_ids_keeps_order() -> None:
    ids = [10, 30, 20, 50, 40, 60, 70]
    base, novel = fold_split(ids, 1, num_folds=3)
    assert novel == [30, 40] and base == [10, 20, 50, 60, 70]
    # Uneven contiguous blocks still cover every id once.
    blocks = [fold_split(ids, f, 3, "contiguous")[1] for f in range(3)]
    assert [c for b in blocks for c in b] == ids


@pytest.mark.parametrize(
    ("ids", "fold", "kwargs"),
    [
        ([1, 2, 3, 4], 4, {}),
        ([1, 2, 3], 0, {}),
        ([1, 1, 2, 3], 0, {}),
        ([1, 2, 3, 4], 0, {"scheme": "random"}),
    ],
)
def test_fold_split_rejects_bad_input(ids: list[int], fold: int, kwargs: dict) -> None:
    with pytest.raises(InputError):
        fold_split(ids, fold, **kwargs)

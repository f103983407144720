from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prosam.data.folder import load_folder
from prosam.errors import InputError

H, W = 12, 10


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(path)


def _mask(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
    img.save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "refs"
    square = np.zeros((H, W), dtype=np.uint8)
    square[2:6, 3:7] = 255
    _img(root / "zebra" / "a.jpg")
    _mask(root / "zebra" / "a.png", square)
    _img(root / "zebra" / "b.jpg")  # no mask: ignored
    _img(root / "zebra" / "c.png")  # PNG image: its mask is c_mask.png
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[0:3, 0:3] = 1
    labels[3, 0:3] = 255
    _mask(root / "zebra" / "c_mask.png", labels, palette=True)
    _img(root / "apple" / "x.jpeg")
    _mask(root / "apple" / "x.png", square)
    _img(root / "apple" / "y.png")  # PNG without a mask: ignored
    (root / "empty_class").mkdir()
    (root / ".hidden").mkdir()
    return root


def test_folder_dataset(folder: Path) -> None:
    with pytest.warns(UserWarning, match="2 images without a mask"):
        ds = load_folder(folder)
    assert ds.class_names == {1: "apple", 2: "empty_class", 3: "zebra"}
    assert ds.stats["unmasked_images"] == 2
    assert [s.key for s in ds] == ["apple/x.jpeg", "zebra/a.jpg", "zebra/c.png"]
    assert ds.class_ids == (1, 3)
    a = ds.sample("zebra/a.jpg")
    assert a.classes == {3} and a.size == (H, W) and a.image().shape == (H, W, 3)
    fg, ignore = a.mask(3)
    assert fg.sum() == 16 and fg[2, 3] and not ignore.any()
    fg, ignore = ds.sample("zebra/c.png").mask(3)
    assert fg.sum() == 9 and ignore.sum() == 3
    with pytest.raises(InputError):
        a.mask(1)


def test_folder_mask_size_mismatch(tmp_path: Path) -> None:
    _img(tmp_path / "cls" / "a.jpg")
    _mask(tmp_path / "cls" / "a.png", np.zeros((H + 1, W), dtype=np.uint8))
    ds = load_folder(tmp_path)
    with pytest.raises(InputError, match="mask is"):
        ds.sample("cls/a.jpg").mask(1)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="no class folders"):
        load_folder(tmp_path)

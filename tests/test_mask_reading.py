"""The rule reference masks are read by: 0/255 and label maps, alpha, lossy files, EXIF."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from prosam.errors import InputError, ProsamWarning
from prosam.io import read_binary_mask, read_image


def _truth(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - 30) ** 2 + (xx - 35) ** 2) < 22**2  # a disc: plenty of edge to ring


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_jpeg_mask_is_thresholded_with_a_warning(tmp_path):
    path = tmp_path / "mask.jpg"
    Image.fromarray(_truth().astype(np.uint8) * 255).save(path, quality=75)
    stray = np.asarray(Image.open(path))
    assert ((stray > 0) & (stray < 255)).mean() > 0.02  # the ringing this rule is about
    with pytest.warns(ProsamWarning, match=r"mask\.jpg: JPEG is lossy; mask read as values >= 128"):
        fg, ignore = read_binary_mask(path)
    assert _iou(fg, _truth()) > 0.97 and not ignore.any()


def test_a_jpeg_mask_can_be_refused(tmp_path):
    path = tmp_path / "mask.jpg"
    Image.fromarray(_truth().astype(np.uint8) * 255).save(path, quality=75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not also warned about
        with pytest.raises(InputError, match=r"mask\.jpg: a JPEG mask is lossy"):
            read_binary_mask(path, lossy="refuse")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_an_alpha_channel_that_varies_carries_the_mask(tmp_path, mode):
    truth = _truth()
    alpha = truth.astype(np.uint8) * 255
    colour = np.full(truth.shape, 200, np.uint8)  # the same colour everywhere
    bands = [colour] * (3 if mode == "RGBA" else 1)
    img = Image.fromarray(np.stack([*bands, alpha], axis=2), mode=mode)
    img.save(tmp_path / "mask.png")
    fg, ignore = read_binary_mask(tmp_path / "mask.png")
    assert np.array_equal(fg, truth) and not ignore.any()


def test_a_palette_transparency_carries_the_mask(tmp_path):
    truth = _truth()
    img = Image.fromarray(truth.astype(np.uint8), mode="P")
    img.putpalette([255, 255, 255, 255, 255, 255])  # both indices white: only alpha differs
    img.save(tmp_path / "mask.png", transparency=0)
    fg, _ = read_binary_mask(tmp_path / "mask.png")
    assert np.array_equal(fg, truth)


def test_an_opaque_alpha_channel_is_ignored(tmp_path):
    truth = _truth()
    grey = truth.astype(np.uint8) * 255
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "mask.png")
    fg, _ = read_binary_mask(tmp_path / "mask.png")
    assert np.array_equal(fg, truth)


def test_label_maps_keep_255_as_ignore(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 2:6] = 3
    labels[6:8] = 255
    Image.fromarray(labels).save(tmp_path / "labels.png")
    fg, ignore = read_binary_mask(tmp_path / "labels.png")
    assert np.array_equal(fg, labels == 3) and np.array_equal(ignore, labels == 255)


def test_a_mask_comes_back_in_the_displayed_orientation_like_its_image(tmp_path):
    truth = np.zeros((20, 40), bool)
    truth[:, :20] = True  # left half
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "m.png", exif=exif)
    photo = np.zeros((20, 40, 3), np.uint8)
    photo[truth] = 255
    Image.fromarray(photo).save(tmp_path / "p.png", exif=exif)
    fg, _ = read_binary_mask(tmp_path / "m.png", expected_size=(40, 20))
    assert fg.shape == (40, 20) and fg[:20].all() and not fg[20:].any()
    assert np.array_equal(read_image(tmp_path / "p.png")[..., 0] > 0, fg)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_reference_mask_file_gives_the_whole_object(tmp_path, suffix):
    from prosam.label.api import annotation_to_mask

    path = tmp_path / f"ref{suffix}"
    Image.fromarray(_truth().astype(np.uint8) * 255).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProsamWarning)
        mask, kind = annotation_to_mask(str(path), (60, 80))
    assert kind == "mask" and _iou(mask, _truth()) > 0.97

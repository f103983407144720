from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prosam.errors import InputError
from prosam.io import (
    atomic_path,
    read_binary_mask,
    read_image,
    read_label_map,
    write_mask_png,
)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "CMYK"])
def test_any_mode_reads_as_rgb_uint8(tmp_path, mode):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 9, 3), np.uint8))
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.convert(mode).save(path)
    out = read_image(path)
    assert out.shape == (8, 9, 3) and out.dtype == np.uint8


def test_16_bit_images_use_their_actual_bit_depth(tmp_path):
    arr = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)  # 12-bit data in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = read_image(path)
    assert out.shape == (2, 2, 3)
    assert out[0, 1, 0] == 255 and out[0, 0, 0] == 0 and 120 <= out[1, 0, 0] <= 135


def test_rgba_transparent_pixels_become_black(tmp_path):
    arr = np.full((2, 2, 4), 255, np.uint8)
    arr[0, 0, 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]


def test_voc_palette_mask_with_ignore(tmp_path):
    labels = np.array([[0, 15, 15], [255, 0, 3]], np.uint8)
    img = Image.fromarray(labels, "P")
    img.putpalette([i % 256 for i in range(768)])
    img.save(tmp_path / "voc.png")
    assert read_label_map(tmp_path / "voc.png").tolist() == labels.tolist()
    fg, ignore = read_binary_mask(tmp_path / "voc.png", class_value=15)
    assert fg.tolist() == [[False, True, True], [False, False, False]]
    assert ignore.tolist() == [[False, False, False], [True, False, False]]
    fg_any, _ = read_binary_mask(tmp_path / "voc.png")
    assert fg_any.tolist() == [[False, True, True], [False, False, True]]


def test_black_and_white_mask_255_is_foreground(tmp_path):
    write_mask_png(tmp_path / "m.png", np.array([[1, 0], [0, 1]], bool))
    fg, ignore = read_binary_mask(tmp_path / "m.png")
    assert fg.tolist() == [[True, False], [False, True]] and not ignore.any()
    assert np.unique(np.asarray(Image.open(tmp_path / "m.png"))).tolist() == [0, 255]


def test_mask_of_the_wrong_size_is_a_clear_error(tmp_path):
    write_mask_png(tmp_path / "m.png", np.zeros((4, 6), bool))
    with pytest.raises(InputError, match=r"6x4 \(WxH\).*its image is 5x4"):
        read_binary_mask(tmp_path / "m.png", expected_size=(4, 5))


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_corrupt_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"broken\.png"):
        read_image(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.jpg")


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_pillows_decompression_bomb_warning_never_leaks(tmp_path, monkeypatch):
    import warnings

    from prosam.label.job import load_target_image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2000 px: a "bomb" by Pillow's rule
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(tmp_path / "big.png").shape == (40, 50, 3)
        with pytest.raises(InputError, match="more than 1000"):
            load_target_image(tmp_path / "big.png", max_pixels=1000)
    assert not caught
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: Pillow refuses
    with pytest.raises(InputError, match=r"big\.png: image is too large"):
        read_image(tmp_path / "big.png")

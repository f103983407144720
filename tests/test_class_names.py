"""Class names: validated, mapped to safe folder names, collisions refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from prosam.cli import main
from prosam.errors import InputError
from prosam.label.classes import check_class_names, safe_name


@given(st.text(min_size=1, max_size=30))
def test_a_folder_name_never_leaves_its_folder(name):
    folder = safe_name(name)
    assert folder and "/" not in folder and "\\" not in folder and "\0" not in folder
    assert folder not in (".", "..") and not folder.startswith(".")
    assert safe_name(folder) == folder


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a b", "a_b"], "'a b' and 'a_b' would share the output folder 'a_b'"),
        (["a/b"], "holds '/'"),
        (["x/../../../outside/pwned"], "holds '/'"),
        (["..\\evil"], "holds"),
        ([".."], "starts with a dot"),
        ([".hidden"], "starts with a dot"),
        (["a\x00b"], "control character"),
        (["a\u2215b"], "holds"),  # DIVISION SLASH, a look-alike of '/'
        (["a\uff0fb"], "holds"),  # FULLWIDTH SOLIDUS
        (["x" * 101], "over 100 characters"),
        ([None], "must be text, not NoneType"),
        (["Cat", "cat"], "would share the output folder"),
        (["cat", "cat"], "given twice"),
        ([""], "must not be empty"),
        (["two\nlines"], "control character"),
        (["tab\there"], "control character"),
        ([" cat"], "starts or ends with a space"),
    ],
)
def test_bad_class_names_are_refused(names, message):
    with pytest.raises(InputError, match=message):
        check_class_names(names)


def test_unicode_and_punctuation_keep_distinct_folders():
    names = ["猫", "犬", "traffic light", "a.b", "c++", "t-shirt", "Column_Pole", "jack (o')"]
    assert check_class_names(names) == names
    assert [safe_name(n) for n in names] == [
        "猫",
        "犬",
        "traffic_light",
        "a.b",
        "c__",
        "t-shirt",
        "Column_Pole",
        "jack__o__",
    ]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def _label(photo, out, *classes):
    refs = [
        a for c in classes for a in ("--ref", str(photo), "--ref-box", "1,1,20,20", "--class", c)
    ]
    return main(
        [
            "label",
            *refs,
            str(photo),
            "--out",
            str(out),
            "--model",
            "/no/weights.pth",
            "--no-download",
        ]
    )


def test_label_refuses_colliding_classes_before_the_model_loads(tmp_path, photo, capsys):
    assert _label(photo, tmp_path / "out", "a b", "a_b") == 2
    err = capsys.readouterr().err
    message = "class names 'a b' and 'a_b' would share the output folder 'a_b'; rename one"
    assert err == f"prosam: error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("a\nb", "control"), ("../../evil", "holds '/'")],
)
def test_label_refuses_an_empty_or_multiline_class_at_parse_time(
    tmp_path, photo, capsys, name, message
):
    with pytest.raises(SystemExit) as exit_info:
        _label(photo, tmp_path / "out", name)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err

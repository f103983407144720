"""Labelling with Ray Data on a local Ray (2 CPUs): the same files as a local run, resumed
after a loss, and from a Ray Dataset of paths."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
from PIL import Image

from prosam.cli import main
from tests.fixtures_files import file_hashes
from tests.test_label_job import bright_image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("photos")
    for i in range(7):
        Image.fromarray(bright_image(40 + 4 * i, 56, i)).save(root / f"p{i}.png")
    ref = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.fromarray(bright_image(48, 64, 99)).save(ref)
    return root, ref


def _label(photos, out: Path, *extra: str) -> int:
    root, ref = photos
    return main(
        [
            "label",
            "--ref",
            str(ref),
            "--ref-box",
            "2,2,40,30",
            str(root),
            "--out",
            str(out),
            "--method",
            "persam",
            "--model",
            "tiny",
            "--format",
            "png,coco,yolo",
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def test_ray_job_writes_what_a_local_job_writes(local_ray, photos, tmp_path, capsys):
    assert _label(photos, tmp_path / "local") == 0
    assert _label(photos, tmp_path / "ray", "--ray", "--ray-actors", "2") == 0
    assert "7 labelled" in capsys.readouterr().out
    local, distributed = file_hashes(tmp_path / "local"), file_hashes(tmp_path / "ray")
    assert local == distributed and "coco.json" in local and len(local) > 20
    # a lost part of the work: only the targets without a record are labelled again
    for key in ("p2", "p5"):
        (tmp_path / "ray" / "records" / f"{key}.json").unlink()
    shutil.rmtree(tmp_path / "ray" / "png")
    (tmp_path / "ray" / "coco.json").unlink()
    assert _label(photos, tmp_path / "ray", "--ray") == 0
    assert "2 labelled" in capsys.readouterr().out
    again = file_hashes(tmp_path / "ray")
    assert {k: v for k, v in again.items() if not k.startswith("png/")} == {
        k: v for k, v in local.items() if not k.startswith("png/")
    }
    assert _label(photos, tmp_path / "ray", "--ray", "--shard", "0/2") == 2
    assert "Ray shares the work out itself" in capsys.readouterr().err


def test_label_a_ray_dataset_of_paths(local_ray, photos, tmp_path):
    import prosam.label

    root, ref = photos
    make = functools.partial(
        prosam.label.fitted, [(str(ref), {"box": [2, 2, 40, 30]})], "persam", model="tiny"
    )
    paths = sorted(str(p) for p in root.glob("*.png"))
    dataset = ray.data.from_items([{"path": p} for p in paths])
    summary = prosam.label.label_ray_dataset(
        dataset, make, tmp_path / "ray", formats=["png", "coco"], progress=False
    )
    assert summary.processed == 7 and summary.finalized and not summary.failures
    make().label(paths, tmp_path / "local", formats=["png", "coco"], progress=False)
    assert file_hashes(tmp_path / "ray") == file_hashes(tmp_path / "local")

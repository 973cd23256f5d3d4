"""The app in a real browser: Playwright drives Debian's Chromium (headless, kept off the network)
through the whole flow: pick an example, draw a stroke on the image, use it as the path, run,
wait for both videos and the 3D plot, save a screenshot to ``artifacts/app_screenshot.png``, and
check that closing the page removes the session's temporary files.

Skipped only outside CI when Chromium or the playwright package is missing; with ``CI=true`` a
missing browser is a failure (``bash run.sh test`` installs Debian's chromium).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from test_app_http import free_port, launch_app, stop_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--metrics-recording-only", "--no-default-browser-check",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"playwright is not installed (CI=true): {err}")
        pytest.skip("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing (CI=true): `apt-get install chromium` (bash run.sh test does)")
        pytest.skip(f"{CHROMIUM} is missing")
    return sync_playwright


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_browser")
    proc, url = launch_app(tmp, free_port(), flags=True)  # python app.py --host --port
    yield url, tmp
    stop_app(proc)


def _status(page) -> str:
    return page.inner_text("#status")


def test_example_stroke_run_in_chromium(app):
    sync_playwright = _require_browser()
    url, tmp = app
    sessions = tmp / "sessions"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            external: list[str] = []  # the page must work with no network: everything comes from the app
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else external.append(r.url))
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#examples button.gallery-item", timeout=180_000)
            page.wait_for_function("document.querySelector('#summary').innerText.includes('motorcycle')", timeout=180_000)
            page.get_by_label("256").check()  # small working size: a quick CPU run (rebuilds the first example)
            page.wait_for_function(
                "document.querySelector('#summary').innerText.includes('working size 256x')", timeout=180_000
            )
            page.locator("#examples button.gallery-item").nth(2).click()  # the synthetic room
            page.wait_for_function(
                "document.querySelector('#summary').innerText.includes('synthetic-room — working size 256x128')",
                timeout=180_000,
            )  # fmt: skip

            # draw a stroke on the scene image: from the centre to the right and a little up
            page.wait_for_timeout(1000)  # the editor's canvas draws its background
            box = page.locator("#stroke-editor canvas").first.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, box
            x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x0, y0)
            page.mouse.down()
            for i in range(1, 25):
                page.mouse.move(x0 + i * box["width"] / 100, y0 - i * box["height"] / 300, steps=2)
            page.mouse.up()
            page.get_by_role("tab", name="Stroke").click()
            page.click("#use-stroke")
            page.wait_for_function(
                "document.querySelector('#status').innerText.startsWith('Path set: stroke')", timeout=180_000
            )
            assert "33 frames" in _status(page)

            page.click("#run")
            for elem in ("#latent-video video", "#rgb-video video"):
                page.wait_for_selector(elem, timeout=240_000)
                assert page.get_attribute(elem, "src"), elem
            page.wait_for_selector("#cache-plot .js-plotly-plot", timeout=90_000)
            page.wait_for_function(
                "document.querySelector('#cache-plot .js-plotly-plot').data.length >= 4", timeout=90_000
            )  # points, frusta, source camera, trajectory
            page.wait_for_timeout(1500)  # let the videos show a frame
            page.screenshot(path=str(ARTIFACTS / "app_screenshot.png"), full_page=True)
            assert (ARTIFACTS / "app_screenshot.png").stat().st_size > 50_000
            assert not errors, errors
            assert not external, external

            # the session's files exist now, and go when the page closes
            assert [d for d in sessions.iterdir() if any(d.rglob("*.mp4"))], list(sessions.iterdir())
            page.close()
            deadline = time.time() + 30
            while any(sessions.iterdir()) and time.time() < deadline:
                time.sleep(0.5)
            assert not any(sessions.iterdir()), list(sessions.iterdir())
        finally:
            browser.close()

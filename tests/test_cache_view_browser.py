"""The 3D cache view as a visitor first sees it, drawn by plotly.js in headless Chromium: from the
source camera, the latent cells' patches in image colour reproduce the image inside the source
camera's frustum. Skipped outside CI when Chromium or playwright is missing (``test_app_browser``)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from mirage import plotting, scene
from mirage.images import image_to_uint8
from mirage.synthetic import default_camera, default_scene
from test_app_browser import ARTIFACTS, CHROMIUM, _require_browser

WEBGL = ["--no-sandbox", "--use-gl=swiftshader", "--enable-webgl", "--ignore-gpu-blocklist"]  # software WebGL


def _screenshot(fig, path) -> np.ndarray:  # -> [H, W, 3] uint8
    sync_playwright = _require_browser()
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=WEBGL)
        page = browser.new_page(viewport={"width": 1020, "height": 600})
        page.goto(html.as_uri())
        page.wait_for_selector(".gl-container canvas", timeout=60_000)
        page.wait_for_timeout(2000)  # the first WebGL frame
        page.screenshot(path=str(path))
        browser.close()
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _cells(picture: np.ndarray, rows: int, cols: int) -> np.ndarray:  # [H, W, 3] -> [rows, cols, 3] block means
    H, W, _ = picture.shape
    r = (np.arange(H) * rows // H)[:, None]
    c = (np.arange(W) * cols // W)[None, :]
    out = np.zeros((rows, cols, 3))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = picture[(r[:, 0] == i)][:, c[0] == j].reshape(-1, 3).mean(0)
    return out


def test_the_first_view_is_the_source_camera_and_shows_the_image(tmp_path):
    camera = default_camera(512, 288, 60.0)
    image, depth = default_scene().render(camera)
    state = scene.build_scene(scene.RawScene("room", image[0], depth[0], camera.K, "ground truth"), 512)  # 288x512
    fig = scene.scene_figure(state, "image").update_layout(width=1000, height=560, showlegend=False)  # only the view red
    ARTIFACTS.mkdir(exist_ok=True)
    shot = _screenshot(fig, ARTIFACTS / "cache_view_source.png")
    red = np.array([int(plotting.SOURCE_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    ys, xs = np.nonzero(np.abs(shot.astype(int) - red).sum(-1) < 60)  # the source frustum: the image's border
    assert len(xs) > 500, "the source camera's frustum is not on screen"
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    H, W = state.size
    assert (right - left) / (bottom - top) == pytest.approx(W / H, rel=0.03)  # the image's shape, seen head on
    inside = shot[top + 4 : bottom - 3, left + 4 : right - 3]  # [h, w, 3] inside the red border
    rows, cols = H // 16, W // 16  # one block per latent cell
    seen = _cells(inside, rows, cols)  # [rows, cols, 3]
    truth = _cells(image_to_uint8(state.image), rows, cols)
    corr = np.corrcoef(seen.reshape(-1), truth.reshape(-1))[0, 1]
    assert corr > 0.95, f"the view does not show the image from the source camera (correlation {corr:.3f})"
    flipped = np.corrcoef(seen[::-1].reshape(-1), truth.reshape(-1))[0, 1]
    assert flipped < corr - 0.2  # upright: y is down on screen as in the image
    assert fig.layout.scene.camera.up.y == -1

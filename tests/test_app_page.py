"""The page's path handlers called in-process (``app.<handler>.page``), as a click would call them:
what each returns to which component. The browser test drives the same handlers through Chromium."""

from __future__ import annotations

import types

import pytest

import app
import app_runtime as rt
from mirage import scene
from mirage.synthetic import default_camera, default_scene
from test_scene import _stroke_editor


@pytest.fixture()
def session(tmp_path) -> rt.Session:
    camera = default_camera(256, 160, 60.0)
    image, depth = default_scene().render(camera)
    state = scene.build_scene(scene.RawScene("room", image[0], depth[0], camera.K, "ground truth"), 256)
    session = rt.Session().new_scene(state)
    session.workdir = tmp_path
    app.use_preset.page(session, "pan_right", 10.0, 33, "latent")
    return session


REQUEST = types.SimpleNamespace(session_hash="test")  # what _track reads of gr.Request


def test_a_refused_keyframe_table_goes_back_to_the_last_accepted_one(session):
    rows = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 60.0], [0.1, 0.0, 0.2, 5.0, 0.0, 0.0, 60.0]]
    out = app.use_keyframes.page(session, rows, 33, "latent")
    assert out[app.ui.path_status].startswith("Path set")
    bad = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 60.0], [0.1, 0.0, "far", 5.0, 0.0, 0.0, 60.0]]
    out = app.use_keyframes.page(session, bad, 33, "latent")
    assert out[app.ui.path_status].startswith("**Not applied:**")
    assert out[app.ui.table] == rows and session.scene.recipe.kind == "keyframes"


def test_a_stroke_stays_drawn_while_it_is_the_path_and_goes_when_another_path_is_active(session):
    H, W = session.scene.size
    editor = _stroke_editor(H, W, (W // 2, H // 2), (W - 20, H // 2))
    out = app.use_stroke.page(session, editor, 33, 0.4, "source", "latent", REQUEST)
    assert out[app.ui.path_status].startswith("Path set") and app.ui.editor not in out
    limit = session.scene.recipe.depth_limit
    update = out[app.ui.depth_fraction]
    assert update["value"] == 0.4 and update["maximum"] == limit and f"{limit:.0%}" in update["info"]
    out = app.stroke_setting.page(session, 0.3, "source", "latent")  # a stroke setting: still the stroke
    assert app.ui.editor not in out
    out = app.use_preset.page(session, "orbit_left", 20.0, 33, "latent")
    assert out[app.ui.editor]["layers"] == [] and out[app.ui.editor]["background"].endswith(".png")


def test_a_stroke_too_far_is_refused_in_words_with_how_far_it_may_go(session):
    H, W = session.scene.size
    editor = _stroke_editor(H, W, (W // 2, H // 2), (W // 2 + 30, H // 2 + 10))
    out = app.use_stroke.page(session, editor, 33, 0.9, "source", "latent", REQUEST)
    assert "pass through the scene; it works up to" in out[app.ui.path_status]
    assert session.scene.recipe.kind == "preset"  # nothing changed

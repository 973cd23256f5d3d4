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


def test_a_path_changed_during_a_run_says_it_is_for_the_next_run(session):
    session.run = types.SimpleNamespace(running=True)  # what app_runs.stream sets while a chunk is being made
    out = app.use_preset.page(session, "orbit_left", 20.0, 33, "latent")
    assert out[app.ui.path_status].endswith("this one is for the next run.")
    session.run.running = False
    assert "next run" not in app.use_preset.page(session, "orbit_right", 20.0, 33, "latent")[app.ui.path_status]


def test_a_run_is_running_while_its_chunks_are_made_and_not_after(session):
    import app_runs as runs

    active = runs.start_run(session, runs.RunSpec(False), app.MODE)
    seen = [active.running for _ in runs.stream(session, active, runs.make_runner(active.spec, app.MODE))]
    assert seen and all(seen) and not active.running and active.note.startswith("**Done**")

"""Mirage demo: latent 3D memory vs pixel point cloud along a camera path (Gradio).

Layout and wiring only: scenes and paths are in ``mirage.scene``, runs, files and figures in
``mirage.preview``, and the app's own runtime (mode, device, sessions, UI formats, ZeroGPU) in
``app_runtime``. ``python app.py [--host H] [--port P] [--share]``; without flags gradio's own
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` / ``GRADIO_SHARE`` apply. Environment settings:
see ``app_runtime``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import shutil
import threading
import time
import types
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString
from gradio_client.utils import is_valid_file

import app_runtime as rt
from mirage import paths, preview, scene
from mirage.examples import ASSETS_DIR, EXAMPLES

try:  # Hugging Face ZeroGPU; a no-op decorator elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

LOG = logging.getLogger("mirage.app")
MODE = rt.detect_mode()
UPLOAD_TTL_S = rt.upload_ttl()  # checked at start: a bad $MIRAGE_UPLOAD_TTL stops the app with its message
DIRS = rt.SessionDirs(Path(gr.utils.get_upload_folder()) / "mirage-sessions")  # in Gradio's cache: results served in place
LONG_SIDES = list(scene.LONG_SIDES) + ([scene.FULL_LONG_SIDE] if MODE.generation else [])
PRESETS = list(paths.PRESETS)
GEN = rt.generation_defaults()
_WHAT = "generated video" if MODE.generation else "memory render at every frame (readout preview, no generative model)"
VIDEO_LABELS = {m: f"{label}: {_WHAT}" for m, label in preview.METHOD_LABELS.items()}
INPUT_LABELS = {m: f"{label}: what the model receives (the conditioning latent decoded"
                   f"{'' if MODE.generation else ' by the offline codec, one image per 4 frames'})"
                for m, label in preview.METHOD_LABELS.items()}  # fmt: skip
if MODE.generation:  # load once at start (on ZeroGPU this must happen outside @spaces.GPU)
    rt.load_pipeline(MODE.model_path, MODE.device)


def ui_errors(fn):
    """Turn the library's ValueError / FileNotFoundError (a refused input) into the client's error
    message, logged as one line; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError) as err:
            LOG.info("refused (%s): %s", fn.__name__, err)
            raise gr.Error(str(err), duration=None, print_exception=False) from None

    return wrapper


def _workdir(session: rt.Session, request: gr.Request):
    session.workdir = DIRS.get(request.session_hash)
    return session.workdir


def _track(request: gr.Request, *files) -> None:
    """Uploads this session handed in (files that came through Gradio's upload route, nothing else a
    client names): removed with the session (``end_session``)."""
    uploaded = getattr(demo, "upload_file_set", set())
    DIRS.track(request.session_hash, *(f for f in files if f is not None and str(f) in uploaded))


def _drop_state(session) -> None:  # gr.State delete_callback: the session's files go with its state
    if session is not None and session.workdir is not None:
        shutil.rmtree(session.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------- handlers
# Each action that can be refused has two entry points: the API one raises (clients get the message
# as an error), the page's one leaves every output as it was, puts the controls back to what the
# active path is (``app_runtime.path_controls``) and says why beside them, so nothing on the page
# shows a value that is not in effect and no plot hides behind an error badge.
def _frames(frames) -> int:
    return rt.check_frame_count(frames)


def _refused(err: Exception) -> str:
    """One log line (no traceback), a toast, and the message for the status line beside the control."""
    LOG.info("refused: %s", err)
    gr.Warning(str(err))
    return f"**Not applied:** {err}"


def _or_skip(value):
    return gr.skip() if value is None else value


N_CONTROLS = 6  # frames, preset, amount, preset_info, depth_fraction, look


def _controls(session):  # -> N_CONTROLS values: the path controls as the session's accepted paths set them
    c = rt.path_controls(session)
    info = gr.skip() if c.preset is None else rt.preset_description(c.preset)
    amount = gr.skip() if c.amount is None else gr.update(value=c.amount, info=paths.PRESETS[c.preset].unit)
    return _or_skip(c.frames), _or_skip(c.preset), amount, info, _or_skip(c.depth_fraction), _or_skip(c.look)


def _path_view(session, color_by):  # PATH_UI outputs after an accepted change (Session.change_path)
    state = session.scene
    note = f"Path set: {state.path_label}, {len(state.path)} frames."
    return (session, scene.scene_summary(state), scene.scene_figure(state, color_by), note, rt.active_path_line(state),
            *_controls(session))  # fmt: skip


def _path_refused(session, err):  # PATH_UI outputs after a refused change: everything as it was
    return (gr.skip(), gr.skip(), gr.skip(), _refused(err), gr.skip(), *_controls(session))


N_PATH_UI = 5 + N_CONTROLS  # state, summary, plot, path_status, active, controls
N_SCENE_UI = 8 + N_CONTROLS + 1  # state, editor, summary, plot, table, status, path_status, active, controls, size


def _new_scene(state, preset, amount, frames):
    """A loaded scene gets the preset path the controls show (if it fits), else stays without a path."""
    try:
        scene.preset_path(state, preset, _amount(amount), _frames(frames))
        return f"Path set: {state.path_label}, {len(state.path)} frames."
    except ValueError as err:
        LOG.info("default path refused: %s", err)
        return f"**The preset path does not fit this scene:** {err} Choose another path."


def _amount(amount):
    return None if amount is None or amount == "" else float(amount)


def _scene_view(session, state, request, preset, amount, frames, color_by, note, resized=False):  # SCENE_UI outputs
    """After a load: ``state`` becomes the session's scene, with the preset path the controls show
    unless it keeps a path of its own (the same input at a new working size)."""
    if resized and state.path is not None:
        path_note = f"Path kept: {state.path_label}, {len(state.path)} frames."
    else:
        path_note = _new_scene(state, preset, amount, frames)
    session.resized(state) if resized else session.new_scene(state)
    return (session, rt.editor_value(state, _workdir(session, request)), scene.scene_summary(state),
            scene.scene_figure(state, color_by), scene.default_keyframe_rows(state), note, path_note,
            rt.active_path_line(state), *_controls(session), max(state.size))  # fmt: skip


def _scene_refused(session, err):  # SCENE_UI outputs after a refused load: the previous scene stays
    long_side = gr.skip() if session.scene is None else max(session.scene.size)
    return (gr.skip(),) * 5 + (_refused(err), gr.skip(), gr.skip(), *_controls(session), long_side)


def _build(raw, long_side):
    """The scene at ``long_side``, keeping of the input only what the largest working size needs."""
    return scene.build_scene(scene.compact_raw(raw, max(LONG_SIDES)), int(long_side))


def _load_example(name, depth_choice, long_side, progress):
    progress(0.1, desc=f"loading {name}")
    return _build(scene.raw_from_example(name, depth_choice), long_side)


def _load_upload(image_file, depth_file, depth_choice, fov, long_side, request, progress):
    _track(request, image_file, depth_file)
    progress(0.1, desc="reading the image and its depth")
    return _build(scene.raw_from_upload(image_file, depth_file, depth_choice, float(fov)), long_side)


# The API (gradio_client, curl): errors raise with the message.
@ui_errors
def load_example(name, depth_choice, long_side, preset, amount, frames, color_by, request: gr.Request,
                 progress=gr.Progress()):  # fmt: skip
    new = _load_example(name, depth_choice, long_side, progress)
    out = _scene_view(rt.Session(), new, request, preset, amount, frames, color_by, "Loaded.")
    return (*out[:5], f"{out[5]} {out[6]}")


@ui_errors
def load_upload(image_file, depth_file, depth_choice, fov, long_side, preset, amount, frames, color_by, request: gr.Request,
                progress=gr.Progress()):  # fmt: skip
    new = _load_upload(image_file, depth_file, depth_choice, fov, long_side, request, progress)
    out = _scene_view(rt.Session(), new, request, preset, amount, frames, color_by, "Loaded.")
    return (*out[:5], f"{out[5]} {out[6]}")


def _api_path(make, name: str):
    """An API handler that applies ``make(scene, *args)`` to the session's scene (raises when refused)."""

    def handler(session, *args):
        *args, color_by = args
        return _path_view(session.change_path(make, *args), color_by)[:4]

    handler.__name__ = name  # the log line of a refusal names the endpoint
    return ui_errors(handler)


use_preset = _api_path(lambda st, preset, amount, frames: scene.preset_path(st, preset, _amount(amount), _frames(frames)),
                       "preset_path")  # fmt: skip
use_keyframes = _api_path(lambda st, table, frames: scene.keyframe_path(st, table, _frames(frames)), "keyframe_path")
_stroke = _api_path(lambda st, ed, f, fr, lk: scene.stroke_path(st, ed, _frames(f), float(fr), lk), "stroke_path")
_import = _api_path(lambda st, fl, f: scene.imported_path(st, fl, _frames(f)), "import_path")


def use_stroke(session, editor, frames, depth_fraction, look, color_by, request: gr.Request):
    _track(request, *(editor or {}).get("files", ()))
    return _stroke(session, editor, frames, depth_fraction, look, color_by)


def use_import(session, file, frames, color_by, request: gr.Request):
    _track(request, file)
    return _import(session, file, frames, color_by)


# The page: a refused value changes nothing and says so beside the control.
def page_example(index, session, depth_choice, long_side, preset, amount, frames, color_by, request: gr.Request,
                 progress=gr.Progress()):  # fmt: skip
    try:
        new = _load_example(EXAMPLES[int(index)].name, depth_choice, long_side, progress)
    except (ValueError, FileNotFoundError) as err:
        return _scene_refused(session, err)
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Loaded example **{new.raw.name}**.")


def page_example_select(session, depth_choice, long_side, preset, amount, frames, color_by, evt: gr.SelectData,
                        request: gr.Request, progress=gr.Progress()):  # fmt: skip
    return page_example(evt.index, session, depth_choice, long_side, preset, amount, frames, color_by, request, progress)


def page_upload(session, image_file, depth_file, depth_choice, fov, long_side, preset, amount, frames, color_by,
                request: gr.Request, progress=gr.Progress()):  # fmt: skip
    try:
        new = _load_upload(image_file, depth_file, depth_choice, fov, long_side, request, progress)
    except (ValueError, FileNotFoundError) as err:
        return _scene_refused(session, err)
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Loaded **{new.raw.name}**.")


def page_size(session, long_side, preset, amount, frames, color_by, request: gr.Request, progress=gr.Progress()):
    """A new working size: the same input, the same path motion from the new source camera."""
    if session.scene is None:
        return (gr.skip(),) * N_SCENE_UI
    try:
        progress(0.1, desc=f"refitting at {long_side} px")
        new = scene.rebuild_at(session.scene, int(long_side))
    except ValueError as err:
        return _scene_refused(session, err)
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Working size {new.size[1]}x{new.size[0]}.",
                       resized=True)  # fmt: skip


def _page_path(make):
    """A page handler that applies ``make(scene, *args) -> scene`` and shows it, or refuses."""

    def handler(session, *args):
        *args, color_by = args
        try:
            return _path_view(session.change_path(make, *args), color_by)
        except ValueError as err:
            return _path_refused(session, err)

    return handler


page_preset = _page_path(lambda st, preset, amount, frames: scene.preset_path(st, preset, _amount(amount), _frames(frames)))
page_keyframes = _page_path(lambda st, table, frames: scene.keyframe_path(st, table, _frames(frames)))


def page_stroke(session, editor, frames, fraction, look, color_by, request: gr.Request):
    def make(st, ed, f, fr, lk):
        _track(request, *(ed or {}).get("files", ()))
        return scene.stroke_path(st, ed, _frames(f), float(fr), lk)

    return _page_path(make)(session, editor, frames, fraction, look, color_by)


def page_import(session, file, frames, color_by, request: gr.Request):
    def make(st, fl, f):
        _track(request, fl)
        return scene.imported_path(st, fl, _frames(f))

    return _page_path(make)(session, file, frames, color_by)


page_frames = _page_path(lambda st, frames: scene.remake_path(st, _frames(frames)))
page_preset_choice = _page_path(lambda st, preset, frames: scene.preset_path(st, preset, None, _frames(frames)))  # its default amount


def page_amount(session, preset, amount, frames, color_by, amount_before):
    """Amount edited (Enter or leaving the field): applied when it changed since the field took focus."""
    if amount == amount_before:
        return (gr.skip(),) * N_PATH_UI
    return page_preset(session, preset, amount, frames, color_by)


def page_stroke_setting(session, depth_fraction, look, color_by):
    """A stroke setting changed: applied at once when the active path is a stroke (else at 'Use stroke')."""
    state = session.scene
    if state is None or state.recipe is None or state.recipe.kind != "stroke":
        return (gr.skip(),) * N_PATH_UI
    make = lambda st, f, lk: scene.remake_path(st, len(st.path), depth_fraction=float(f), look=lk)  # noqa: E731
    return _page_path(make)(session, depth_fraction, look, color_by)


@ui_errors
def export_path(session, request: gr.Request):
    state = scene.require_scene(session.scene)
    return [str(p) for p in scene.export_path(state, _workdir(session, request) / "path")]


def recolor(session, color_by):
    state = session.scene
    if state is None:
        return gr.skip(), gr.skip()
    growth = gr.skip() if session.result is None else preview.result_figures(state, session.result, color_by)[2]
    return scene.scene_figure(state, color_by), growth


def _gpu_seconds(state, method, conditioning, settings, *args, **kwargs) -> int:
    return rt.gpu_seconds(len(state.path), settings["num_inference_steps"], settings["guidance_scale"], conditioning)


@gpu(duration=_gpu_seconds)
def generate_on_gpu(state, method, conditioning, settings, progress=None):
    """One memory's generation: one GPU call (ZeroGPU schedules each call with its own duration)."""
    pipe = rt.load_pipeline(MODE.model_path, MODE.device, MODE.branches.get(conditioning))
    i = preview.METHODS.index(method)
    return preview.generate_method(state, pipe, method, progress=progress, progress_span=(i / 2, (i + 1) / 2), **settings)


def set_conditioning(conditioning):
    """A conditioning's own defaults into the sampling controls (they stay editable)."""
    d = rt.generation_defaults(conditioning)
    return (gr.update(value=d["steps"], info=f"{d['origin']} default: {d['steps']}"),
            gr.update(value=d["guidance"], info=f"{d['origin']} default: {d['guidance']:g} (1 = off, half the time)"),
            gr.update(value=d["negative_prompt"], label=f"Negative prompt ({d['origin']}'s default; used when guidance > 1)"))  # fmt: skip


def _run(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request, progress):
    state = session.scene
    scene.require_path(state)
    fps = rt.FPS
    if MODE.generation:
        conditioning = conditioning or "replace"
        settings = rt.pipe_settings(conditioning, prompt, int(steps), float(guidance), negative_prompt)
        if conditioning not in rt.TRAINING_FREE_CHOICES and conditioning not in MODE.branches:
            raise ValueError(f"{rt.CONDITIONINGS[conditioning]}: no checkpoint found ({'; '.join(MODE.branches_missing)})")
        if MODE.zero_gpu:
            rt.check_gpu_budget(len(state.path), int(steps), float(guidance), conditioning)
        progress(0.0, desc=f"loading {rt.CONDITIONINGS[conditioning]}")
        branch = MODE.branches.get(conditioning)
        rt.load_pipeline(MODE.model_path, MODE.device, branch)  # outside the GPU call (ZeroGPU loads in the main process)
        seed = int(seed)
        report = None if MODE.zero_gpu else progress  # a ZeroGPU call runs in another process
        methods = {m: generate_on_gpu(state, m, conditioning, {**settings, "seed": seed}, report) for m in preview.METHODS}
        result = preview.RunResult("generation", methods, {
            "conditioning": rt.short_conditioning(conditioning, branch), "branch": None if branch is None else branch.branch,
            "weights": MODE.model_path, "device": MODE.device, "seed": seed, "steps": int(steps), "guidance": float(guidance),
        })  # fmt: skip
        fps = rt.generation_defaults(conditioning)["fps"]
    else:
        result = preview.run_readout_preview(state, progress=progress)
    progress(0.95, desc="writing videos and the cache")
    out = rt.finish_run(session, result, _workdir(session, request) / f"run{session.version}", color_by, fps)
    f = out.files
    return (session, str(f.videos["latent"]), str(f.videos["rgb"]), str(f.received["latent"]), str(f.received["rgb"]),
            str(f.masks["latent"]), str(f.masks["rgb"]), str(f.side_by_side), *out.figures,
            [str(p) for p in f.downloads()], out.caption)  # fmt: skip


@ui_errors
def run(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request: gr.Request,
        progress=gr.Progress()):  # fmt: skip
    return _run(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request, progress)


def page_run(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request: gr.Request,
             progress=gr.Progress()):  # fmt: skip
    """Generate from the page: a refusal (no path yet, a run too long for the GPU) keeps the last results."""
    try:
        out = _run(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request, progress)
    except (ValueError, FileNotFoundError) as err:
        return (gr.skip(),) * 13 + (_refused(err),)
    state = session.scene
    return (*out, f"Done: {state.path_label}, {len(state.path)} frames.")


RELEASE_AFTER_S = 15.0  # a page whose connection comes back within this keeps its session


async def end_session(request: gr.Request) -> None:
    """The page's connection ended: unless the page is back within ``RELEASE_AFTER_S``, its state and
    files go then (Gradio alone would keep the state an hour). Async: the release runs on the event
    loop, where Gradio changes its state store too."""
    loop = asyncio.get_running_loop()
    loop.call_later(RELEASE_AFTER_S, _release_session, request.session_hash, time.time())


def _release_session(session: str, closed_at: float) -> None:
    holder = getattr(demo, "state_holder", None)
    if holder is not None:
        used = holder.time_last_used.get(session)
        if used is not None and used.timestamp() > closed_at + 2.0:  # an event since: the page came back
            return
        holder.delete_state(session)  # runs _drop_state on the session's values
        holder.session_data.pop(session, None)
        holder.time_last_used.pop(session, None)
    DIRS.remove(session)  # later calls for this session are refused: a run still going writes nothing
    rt.trim_memory()


# Two behaviours of Gradio 6.31's components changed per instance (a subclass would make Gradio write
# an app.pyi stub beside this file at import).
def _upload_file(component: gr.File) -> gr.File:
    """``gr.File(type="filepath")`` without the empty temporary file Gradio creates (and never
    removes) in its cache for every file it hands to a handler; the same check and value."""

    def process(self, f):
        if self.file_types and not is_valid_file(f.path, self.file_types):
            raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {self.file_types}")
        return NamedString(f.path)

    assert component.type == "filepath"
    component._process_single_file = types.MethodType(process, component)
    return component


def _editor_listing_files(component: gr.ImageEditor) -> gr.ImageEditor:
    """``gr.ImageEditor`` whose value also lists the uploaded files it arrived in (``"files"``), so
    that the session that drew them can remove them when it ends."""

    def preprocess(self, payload):
        value = type(self).preprocess(self, payload)
        if value is not None and payload is not None:
            parts = (payload.background, payload.composite, *(payload.layers or ()))
            value["files"] = [p.path for p in parts if getattr(p, "path", None)]
        return value

    component.preprocess = types.MethodType(preprocess, component)
    return component


# --------------------------------------------------------------------------------------- layout
CSS = """
#mode-banner {border-left: 4px solid #f59e0b; padding-left: 12px;}
.small-note {font-size: 0.85em; opacity: 0.85;}
#active-path {border-left: 4px solid #1f77b4; padding-left: 10px;}
"""
THEME = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
PLOTS_JS = (ASSETS_DIR / "plots.js").read_text()  # WebGL contexts of old plots released; the 3D view keeps its camera
MAX_UPLOAD = "100mb"  # Gradio refuses larger uploads before they reach a handler
LAUNCH = dict(allowed_paths=[str(ASSETS_DIR)], theme=THEME, css=CSS, js=PLOTS_JS, max_file_size=MAX_UPLOAD)  # demo.launch(**LAUNCH)


def build_demo() -> gr.Blocks:
    gallery = rt.example_gallery(MODE.depth_pro)
    with gr.Blocks(title="Mirage: latent spatial memory", delete_cache=(1800, 3600), analytics_enabled=False) as demo:
        state = gr.State(rt.Session(), delete_callback=_drop_state)
        amount_before = gr.State(None)  # the amount when its field took focus (applied on leaving only if changed)
        gr.Markdown(
            "# Mirage: latent spatial memory\n"
            "Pick a scene, give the camera a path, and compare two 3D memories on it: the **latent memory** (the video "
            "model's own latent tokens lifted to 3D, read with one projection on the latent grid) and the **pixel point "
            "cloud** baseline (rasterize every frame at full resolution, then encode it)."
        )
        gr.Markdown(MODE.banner(), elem_id="mode-banner")

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------- 1. input
            with gr.Column(scale=1, min_width=380):
                gr.Markdown("### 1. Scene")
                examples = gr.Gallery(
                    gallery, label="Examples (one click; the right half is the depth each starts from)", columns=3,
                    rows=1, height=150, object_fit="contain", allow_preview=False, selected_index=0, elem_id="examples",
                )  # fmt: skip
                gr.Markdown(rt.example_notes(MODE.depth_pro), elem_classes="small-note")
                status = gr.Markdown("Loading the first example…", elem_id="status")
                example_name = gr.Textbox(visible=False)
                example_button = gr.Button(visible=False)
                editor = _editor_listing_files(gr.ImageEditor(
                    label="Scene (draw a stroke here for a stroke path)", type="numpy", image_mode="RGBA", sources=(),
                    transforms=(), layers=False, fixed_canvas=False, format="png", elem_id="stroke-editor", height=380,
                    brush=gr.Brush(colors=["#ff2d2d"], default_color="#ff2d2d", color_mode="fixed", default_size=6),
                    eraser=gr.Eraser(default_size=12),
                ))
                summary = gr.Markdown(elem_id="summary")
                with gr.Accordion("Upload your own image", open=False):
                    image_file = _upload_file(gr.File(label="Image (PNG/JPEG/WebP/TIFF; RGB, RGBA, gray, 16-bit)",
                                                      file_types=["image"], type="filepath"))
                    depth_file = _upload_file(gr.File(label="Depth map (optional): .npy in metres or 16-bit PNG in mm",
                                                      file_types=[".npy", ".png"], type="filepath"))
                    fov = gr.Slider(20, 120, value=60, step=1, label="Horizontal field of view (°)",
                                    info="Used when the depth source gives none (planar prior, uploaded depth map).")
                    load_button = gr.Button("Load image", variant="secondary", elem_id="load-image")
                depth_choice = gr.Dropdown(
                    [(k, v) for k, v in rt.DEPTH_CHOICES.items()], value="auto", label="Depth source",
                    info="Depth Pro " + ("weights found." if MODE.depth_pro else "needs its weights: not found, so automatic "
                                         "depth for uploads is the planar prior (placeholder)."),
                )  # fmt: skip
                long_side = gr.Radio(LONG_SIDES, value=512, label="Working size (long side, px)",
                                     info="The preview runs on CPU; 1280 (704x1280) only with the GPU pipeline.")

            # ------------------------------------------------------------- 2. camera path
            with gr.Column(scale=1, min_width=380):
                gr.Markdown("### 2. Camera path")
                frames = gr.Dropdown(list(rt.FRAME_CHOICES), value=33, allow_custom_value=True, label="Frames",
                                     info=f"4N+1; chunks of 33 then +32; at most {rt.MAX_FRAMES}. Applies to the active path.",
                                     elem_id="frames")  # fmt: skip
                with gr.Tabs():
                    with gr.Tab("Preset", elem_id="preset-tab"):
                        preset = gr.Dropdown(PRESETS, value="orbit_left", label="Preset (applies at once)", elem_id="preset")
                        preset_info = gr.Markdown(rt.preset_description("orbit_left"), elem_classes="small-note",
                                                  elem_id="preset-info")  # fmt: skip
                        amount = gr.Number(paths.PRESETS["orbit_left"].default, label="Amount (applies on Enter or leaving the field)",
                                           info=paths.PRESETS["orbit_left"].unit, elem_id="amount")  # fmt: skip
                        preset_button = gr.Button("Use preset again", elem_id="use-preset")
                    with gr.Tab("Stroke", elem_id="stroke-tab"):
                        gr.Markdown("Draw on the scene image (left) from near the centre towards where the camera should go; "
                                    "the stroke is lifted to 3D with the depth and the camera travels along it.")
                        depth_fraction = gr.Slider(0.05, 0.9, value=0.5, step=0.05, label="How far (fraction of the depth under the stroke)")
                        look = gr.Radio(list(paths.LOOKS), value="source", label="Look", info="keep the source view or look along the stroke")
                        stroke_button = gr.Button("Use stroke as path", variant="primary", elem_id="use-stroke")
                    with gr.Tab("Keyframes"):
                        table = gr.Dataframe(headers=list(paths.KEYFRAME_COLUMNS), datatype="number", column_count=7, type="array",
                                             row_count=3, interactive=True, label="Keyframes (world = source camera; metres, degrees)")
                        keyframe_button = gr.Button("Use keyframes", variant="primary")
                    with gr.Tab("Import / export"):
                        path_file = _upload_file(gr.File(label="RealEstate10K .txt, nerfstudio transforms.json or mirage .json",
                                                         file_types=[".txt", ".json"], type="filepath"))
                        import_button = gr.Button("Import path", variant="primary")
                        export_button = gr.Button("Export current path (3 formats)")
                        export_files = gr.File(label="Path files", file_count="multiple", interactive=False)
                path_status = gr.Markdown(elem_id="path-status")
                color_by = gr.Radio([(label, c) for c, label in rt.COLOR_BY_LABELS.items()], value="latent",
                                    label="Colour the points by")
                plot = gr.Plot(label="Latent point cache and camera path (hover: frame, depth)", elem_id="cache-plot")

        # ----------------------------------------------------------------- 3. generate
        gr.Markdown("### 3. Generate")
        with gr.Row(visible=MODE.generation):
            conditioning = gr.Radio(
                rt.conditioning_choices(MODE), value="replace", label="Conditioning (both memories, same seed)",
                info="Training-free modes run the bare Wan2.2 model; a trained branch is offered when its checkpoint is "
                     "found (" + ("found: " + ", ".join(MODE.branches) if MODE.branches else "none found") + ").",
                elem_id="conditioning",
            )  # fmt: skip
        with gr.Row(visible=MODE.generation):
            seed = gr.Number(0, precision=0, label="Seed", info="the same for both memories")
            steps = gr.Slider(1, 100, value=GEN["steps"], step=1, label="Sampling steps",
                              info=f"Wan2.2-TI2V-5B default: {GEN['steps']}")
            guidance = gr.Slider(1.0, 10.0, value=GEN["guidance"], step=0.5, label="Guidance scale",
                                 info=f"Wan2.2-TI2V-5B default: {GEN['guidance']:g} (1 = off, half the time)")
        with gr.Row(visible=MODE.generation):
            prompt = gr.Textbox("", label="Prompt (optional)")
            negative_prompt = gr.Textbox(GEN["negative_prompt"], label=f"Negative prompt ({GEN['origin']}'s default; used when guidance > 1)",
                                         lines=2)  # fmt: skip
        gr.Markdown(
            f"Mode: **{MODE.name}**. " + ("Both memories run the diffusion model with the same seed and settings." if MODE.generation else
            "Offline, Generate shows **readout previews** of both memories (needs no weights); generation needs the "
            "Wan2.2-TI2V-5B weights."), elem_classes="small-note",
        )  # fmt: skip
        with gr.Row(equal_height=True):
            active = gr.Markdown(rt.active_path_line(None), elem_id="active-path")
            run_button = gr.Button("Generate" if MODE.generation else "Generate (readout preview)", variant="primary",
                                   elem_id="run", scale=0, min_width=240)  # fmt: skip
        run_status = gr.Markdown(elem_id="run-status")
        run_api = gr.Button(visible=False)
        with gr.Row():
            with gr.Column():
                latent_video = gr.Video(label=VIDEO_LABELS["latent"], elem_id="latent-video", autoplay=True, loop=True)
                latent_input = gr.Video(label=INPUT_LABELS["latent"], elem_id="latent-input", autoplay=True, loop=True)
                latent_mask = gr.Video(label="Latent memory: hole mask (white = seen)", autoplay=True, loop=True)
            with gr.Column():
                rgb_video = gr.Video(label=VIDEO_LABELS["rgb"], elem_id="rgb-video", autoplay=True, loop=True)
                rgb_input = gr.Video(label=INPUT_LABELS["rgb"], elem_id="rgb-input", autoplay=True, loop=True)
                rgb_mask = gr.Video(label="Pixel point cloud: hole mask (white = seen)", autoplay=True, loop=True)
        caption = gr.Markdown(elem_id="caption")
        with gr.Row():
            timing_plot = gr.Plot(label="Time per stage", elem_id="timing-plot")
            size_plot = gr.Plot(label="Cache size after the image and each chunk", elem_id="size-plot")
        growth_plot = gr.Plot(label="Latent cache, chunk by chunk", elem_id="growth-plot")
        with gr.Accordion("Downloads", open=True):
            side_video = gr.Video(label="Side by side", show_label=False, loop=True)
            downloads = gr.File(label="Videos, latent cache (.ply, .safetensors), path files", file_count="multiple", interactive=False)

        # ----------------------------------------------------------------- wiring
        controls = [frames, preset, amount, preset_info, depth_fraction, look]  # N_CONTROLS
        scene_ui = [state, editor, summary, plot, table, status, path_status, active, *controls, long_side]
        path_ui = [state, summary, plot, path_status, active, *controls]
        assert len(scene_ui) == N_SCENE_UI and len(path_ui) == N_PATH_UI
        scene_api = [state, editor, summary, plot, table, status]
        path_api = [state, summary, plot, path_status]
        path_ctl = [preset, amount, frames, color_by]
        private = dict(api_visibility="private")
        # the page
        examples.select(page_example_select, [state, depth_choice, long_side, *path_ctl], scene_ui, **private)
        load_button.click(page_upload, [state, image_file, depth_file, depth_choice, fov, long_side, *path_ctl], scene_ui, **private)
        long_side.input(page_size, [state, long_side, *path_ctl], scene_ui, **private)
        preset.input(page_preset_choice, [state, preset, frames, color_by], path_ui, **private)
        amount.focus(lambda a: a, amount, amount_before, **private)
        for event in (amount.submit, amount.blur):
            event(page_amount, [state, preset, amount, frames, color_by, amount_before], path_ui, **private).then(
                lambda a: a, amount, amount_before, **private)
        frames.input(page_frames, [state, frames, color_by], path_ui, trigger_mode="always_last", **private)
        preset_button.click(page_preset, [state, *path_ctl], path_ui, **private)
        stroke_button.click(page_stroke, [state, editor, frames, depth_fraction, look, color_by], path_ui, **private)
        depth_fraction.release(page_stroke_setting, [state, depth_fraction, look, color_by], path_ui, **private)
        look.input(page_stroke_setting, [state, depth_fraction, look, color_by], path_ui, **private)
        keyframe_button.click(page_keyframes, [state, table, frames, color_by], path_ui, **private)
        import_button.click(page_import, [state, path_file, frames, color_by], path_ui, **private)
        export_button.click(export_path, [state], export_files, api_name="export_path")
        color_by.input(recolor, [state, color_by], [plot, growth_plot], **private)
        run_out = [state, latent_video, rgb_video, latent_input, rgb_input, latent_mask, rgb_mask, side_video, timing_plot,
                   size_plot, growth_plot, downloads, caption]  # fmt: skip
        run_in = [state, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by]
        conditioning.change(set_conditioning, conditioning, [steps, guidance, negative_prompt], **private)
        run_button.click(page_run, run_in, [*run_out, run_status], concurrency_limit=1, concurrency_id="run", **private)
        demo.load(page_example, [gr.State(0), state, depth_choice, long_side, *path_ctl], scene_ui, **private)
        demo.unload(end_session)
        # the API (hidden triggers; a refusal raises with its message)
        example_button.click(load_example, [example_name, depth_choice, long_side, *path_ctl], scene_api, api_name="load_example")
        gr.Button(visible=False).click(load_upload, [image_file, depth_file, depth_choice, fov, long_side, *path_ctl], scene_api,
                                       api_name="load_image")  # fmt: skip
        gr.Button(visible=False).click(use_preset, [state, *path_ctl], path_api, api_name="preset_path")
        gr.Button(visible=False).click(use_stroke, [state, editor, frames, depth_fraction, look, color_by], path_api, api_name="stroke_path")
        gr.Button(visible=False).click(use_keyframes, [state, table, frames, color_by], path_api, api_name="keyframe_path")
        gr.Button(visible=False).click(use_import, [state, path_file, frames, color_by], path_api, api_name="import_path")
        run_api.click(run, run_in, run_out, api_name="run", concurrency_limit=1, concurrency_id="run")
    demo.queue(default_concurrency_limit=4)
    return demo


demo = build_demo()


def _sweep_uploads() -> None:  # a daemon thread: what browsers upload by themselves does not pile up
    while True:
        time.sleep(min(60.0, UPLOAD_TTL_S / 2))
        try:
            gone = DIRS.sweep(getattr(demo, "upload_file_set", ()), UPLOAD_TTL_S)
        except Exception:  # noqa: BLE001 - the sweeper must outlive any one bad pass
            LOG.exception("sweeping unclaimed uploads failed")
            continue
        if gone:
            LOG.info("removed %d unclaimed uploads older than %g s", len(gone), UPLOAD_TTL_S)


threading.Thread(target=_sweep_uploads, name="mirage-upload-sweep", daemon=True).start()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=None, help="server name (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", default=None, help="public gradio link (default: $GRADIO_SHARE)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **LAUNCH)

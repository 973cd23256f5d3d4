"""Mirage demo: latent 3D memory vs pixel point cloud along a camera path (Gradio).

Wiring only: scenes and paths are ``mirage.scene``, runs and what they show ``mirage.preview``, the
app's runtime (mode, weights, sessions, page text) ``app_runtime`` and its runs (settings, per-chunk
GPU calls and their durations, files) ``app_runs``. Each action is one function that returns
``{component: value}``; ``action`` makes its page variant (a refusal is said beside the control and
puts the controls back) and its API variant (a refusal raises with its message).
``python app.py [--host H] [--port P] [--share]``; without flags gradio's own ``GRADIO_SERVER_NAME``
/ ``GRADIO_SERVER_PORT`` / ``GRADIO_SHARE`` apply. Environment settings: see ``app_runtime``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import logging
import shutil
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

try:  # Hugging Face ZeroGPU (before anything touches CUDA); a no-op decorator elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

import gradio as gr
import torch
from gradio.utils import NamedString
from gradio_client.utils import is_valid_file

import app_runs as runs
import app_runtime as rt
from mirage import paths, preview, scene
from mirage.examples import ASSETS_DIR, EXAMPLES

LOG = logging.getLogger("mirage.app")
WEIGHTS_NOTE = rt.ensure_weights(log=LOG.warning)  # on a Space: what its preload lacks, before anything loads
MODE = rt.detect_mode()
UPLOAD_TTL_S = rt.upload_ttl()  # checked at start: a bad $MIRAGE_UPLOAD_TTL stops the app with its message
DIRS = rt.SessionDirs(Path(gr.utils.get_upload_folder()) / "mirage-sessions")  # in Gradio's cache: results served in place
SHARED = rt.SharedResults(Path(gr.utils.get_upload_folder()) / "mirage-shared")  # shared results outlive their session
LONG_SIDES = list(scene.LONG_SIDES) + (list(scene.GPU_SIZES) if MODE.generation else [])
GEN = rt.generation_defaults()
_WHAT = "generated video" if MODE.generation else "readout preview, no model (magenta: nothing stored)"
VIDEO_LABELS = {m: f"{label}: {_WHAT}" for m, label in preview.METHOD_LABELS.items()}
INPUT_LABELS = {m: f"{label}: what the model receives (the conditioning latent decoded"
                   f"{'' if MODE.generation else ' by the offline codec, one image per 4 frames'})"
                for m, label in preview.METHOD_LABELS.items()}  # fmt: skip


@gpu(duration=rt.AOT_STARTUP_SECONDS)
def gpu_prepare_aot() -> rt.AotStatus:
    """Start-up: the transformer's block compiled ahead of time, or found in the cache, in one long GPU call."""
    return rt.prepare_aot(MODE)


if MODE.generation:  # load once at start (on ZeroGPU this must happen outside @spaces.GPU)
    _AOT = rt.aot_wanted(MODE)  # a bad $MIRAGE_AOT (or $MIRAGE_FP8 below) stops the app here with its message
    rt.load_pipeline(MODE.model_path, MODE.device, zero_gpu=MODE.zero_gpu, aot=_AOT, fp8=rt.fp8_wanted(MODE))
    runs.init_costs(MODE)
    if _AOT:
        rt.aot_sizes()  # likewise a bad $MIRAGE_AOT_SIZES, before any GPU call
        try:
            runs.count_package_load(rt.apply_aot(MODE, gpu_prepare_aot()))
        except Exception as err:  # noqa: BLE001 - no package: the app runs eager and its banner says why
            LOG.warning("ahead-of-time compilation failed: %s", err)
            rt.apply_aot(MODE, rt.AotStatus((), f"start-up compilation failed ({type(err).__name__}: {str(err)[:200]})"))
ui = types.SimpleNamespace()  # the page's components (build_demo); handlers return {ui.<component>: value}
_LOCAL_GPU = threading.Lock()  # off ZeroGPU, one chunk at a time shares this process's device


# ----------------------------------------------------------------------------------------- chunks
@gpu(duration=runs.chunk_duration)
def gpu_chunk(spec: runs.RunSpec, inp: preview.RunInput, kind: str, run):
    """One chunk of one memory: on a ZeroGPU Space, one GPU call in a worker process (its arguments and
    what it yields travel pickled; its duration from ``app_runs.chunk_duration``). A generator: the
    chunk's progress reaches the page while it runs, then the run after the chunk and its view."""
    if MODE.zero_gpu:  # a worker forked from a process whose OpenMP threads did not come along: one CPU thread
        torch.set_num_threads(1)  # (the work is on the GPU; a parallel CPU op would wait forever for the lost threads)
    yield from runs.make_runner(spec, MODE).steps(inp, kind, run)


def _chunk_steps(spec: runs.RunSpec):
    """How a chunk runs: a GPU call for generation (a local device serves one chunk at a time), in this
    process for the readout preview."""
    if not spec.generation:
        return None
    if MODE.zero_gpu:
        return functools.partial(gpu_chunk, spec)

    def local(inp, kind, run):
        with _LOCAL_GPU:
            yield from gpu_chunk(spec, inp, kind, run)

    return local


# ----------------------------------------------------------------------------------------- actions
def _refused(err: Exception) -> str:
    """One log line (no traceback), a toast, and the message for the status line beside the control."""
    LOG.info("refused: %s", err)
    gr.Warning(str(err))
    return f"**Not applied:** {err}"


def action(refusal):
    """Give an action ``fn(session, ...) -> {component: value}`` (or a generator of them) its page variant
    ``fn.page`` (a refused input -> ``refusal(session, err)``: said beside the control, controls put back)
    and its API variant ``fn.api(outputs)`` (a refused input raises with its message; only ``outputs`` are
    returned). The one place errors are handled."""

    def wrap(fn):
        def api(outputs):
            keep = set(outputs)

            def refuse(err):
                LOG.info("refused (%s): %s", fn.__name__, err)
                return gr.Error(str(err), duration=None, print_exception=False)

            if inspect.isgeneratorfunction(fn):  # every update is every output as it now stands (nothing yet: None)

                @functools.wraps(fn)
                def stream(*args, **kwargs):
                    now = {k: None for k in outputs if not isinstance(k, gr.State)}
                    try:
                        for update in fn(*args, **kwargs):
                            now.update({k: v for k, v in update.items() if k in keep})
                            yield dict(now)
                    except (ValueError, FileNotFoundError) as err:
                        raise refuse(err) from None

                return stream

            @functools.wraps(fn)
            def handler(*args, **kwargs):
                try:
                    return {k: v for k, v in fn(*args, **kwargs).items() if k in keep}
                except (ValueError, FileNotFoundError) as err:
                    raise refuse(err) from None

            return handler

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def page(session, *args, **kwargs):
                try:
                    yield from fn(session, *args, **kwargs)
                except (ValueError, FileNotFoundError) as err:
                    yield refusal(session, err)
        else:
            @functools.wraps(fn)
            def page(session, *args, **kwargs):
                try:
                    return fn(session, *args, **kwargs)
                except (ValueError, FileNotFoundError) as err:
                    return refusal(session, err)

        fn.page, fn.api = page, api
        return fn

    return wrap


def _controls(session: rt.Session) -> dict:
    """The path controls as the session's accepted paths set them (nothing shows a value not applied)."""
    c = rt.path_controls(session)
    out = {ui.frames: c.frames, ui.preset: c.preset, ui.look: c.look}
    out = {k: v for k, v in out.items() if v is not None}
    top = scene.STROKE_FRACTIONS[-1] if c.depth_limit is None else c.depth_limit  # the slider offers what the stroke allows
    info = "how far a stroke may go is checked when it is used" if c.depth_limit is None else \
        f"this stroke keeps the camera out of the scene up to {top:.0%}"  # fmt: skip
    out[ui.depth_fraction] = gr.update(maximum=top, info=info, **({} if c.depth_fraction is None else {"value": c.depth_fraction}))
    if c.preset is not None:
        out[ui.amount] = gr.update(value=c.amount, info=paths.PRESETS[c.preset].unit)
        out[ui.preset_info] = rt.preset_description(c.preset)
    return out


def path_refused(session, err) -> dict:
    return {ui.path_status: _refused(err), **_controls(session)}


def keyframes_refused(session, err) -> dict:
    """A refused keyframe table goes back to the last one accepted, like every other control."""
    out = path_refused(session, err)
    if session.scene is not None:
        out[ui.table] = rt.path_controls(session).table
    return out


def scene_refused(session, err) -> dict:
    out = {ui.status: _refused(err), **_controls(session)}
    if session.scene is not None:
        out[ui.long_side] = max(session.scene.size)
    return out


def run_refused(session, err) -> dict:
    return {ui.run_status: _refused(err)}


def _frames(frames) -> int:
    return rt.check_frame_count(frames)


def _amount(amount):
    return None if amount is None or amount == "" else float(amount)


def _path_view(session: rt.Session, color_by) -> dict:
    state = session.scene
    busy = session.run is not None and session.run.running
    out = {ui.session: session, ui.summary: scene.scene_summary(state), ui.plot: scene.scene_figure(state, color_by),
           ui.path_status: f"Path set: {state.path_label}, {len(state.path)} frames."
                           + (" The run in progress keeps its own path: this one is for the next run." if busy else ""),
           ui.active: rt.active_path_line(state), **_controls(session)}  # fmt: skip
    if (state.recipe is None or state.recipe.kind != "stroke") and session.workdir is not None:
        out[ui.editor] = rt.editor_value(state, session.workdir)  # another path is active: a stroke drawn earlier goes
    return out


def _scene_view(session: rt.Session, new: scene.SceneState, request: gr.Request, preset, amount, frames, color_by,
                note: str, resized: bool = False) -> dict:  # fmt: skip
    """``new`` becomes the session's scene, with the preset path the controls show unless it keeps a
    path of its own (the same input at a new working size)."""
    if resized and new.path is not None:
        path_note = f"Path kept: {new.path_label}, {len(new.path)} frames."
    else:
        try:
            scene.preset_path(new, preset, _amount(amount), _frames(frames))
            path_note = f"Path set: {new.path_label}, {len(new.path)} frames."
        except ValueError as err:
            LOG.info("default path refused: %s", err)
            path_note = f"**The preset path does not fit this scene:** {err} Choose another path."
    session.resized(new) if resized else session.new_scene(new)
    return {ui.session: session, ui.editor: rt.editor_value(new, _workdir(session, request)), ui.summary: scene.scene_summary(new),
            ui.plot: scene.scene_figure(new, color_by), ui.table: scene.default_keyframe_rows(new),
            ui.status: f"{note} {path_note}", ui.path_status: path_note, ui.active: rt.active_path_line(new),
            ui.long_side: max(new.size), **_controls(session)}  # fmt: skip


def _workdir(session: rt.Session, request: gr.Request) -> Path:
    session.workdir = DIRS.get(request.session_hash)
    return session.workdir


def _track(request: gr.Request, *files) -> None:
    """Uploads this session handed in (files that came through Gradio's upload route, nothing else a
    client names): removed with the session (``end_session``)."""
    uploaded = getattr(demo, "upload_file_set", set())
    DIRS.track(request.session_hash, *(f for f in files if f is not None and str(f) in uploaded))


def _build(raw, long_side):
    """The scene at ``long_side``, keeping of the input only what the largest working size needs."""
    return scene.build_scene(scene.compact_raw(raw, max(LONG_SIDES)), int(long_side))


@action(scene_refused)
def load_example(session, name, depth_choice, long_side, preset, amount, frames, color_by, request: gr.Request,
                 progress=gr.Progress()):  # fmt: skip
    progress(0.1, desc=f"loading {name}")
    new = _build(scene.raw_from_example(name, depth_choice), long_side)
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Loaded example **{new.raw.name}**.")


def select_example(session, depth_choice, long_side, preset, amount, frames, color_by, evt: gr.SelectData,
                   request: gr.Request, progress=gr.Progress()):  # fmt: skip
    return load_example.page(session, EXAMPLES[int(evt.index)].name, depth_choice, long_side, preset, amount, frames,
                             color_by, request, progress)  # fmt: skip


def first_example(session, depth_choice, long_side, preset, amount, frames, color_by, request: gr.Request):
    return load_example.page(session, EXAMPLES[0].name, depth_choice, long_side, preset, amount, frames, color_by, request)


@action(scene_refused)
def load_upload(session, image_file, depth_file, depth_choice, fov, long_side, preset, amount, frames, color_by,
                request: gr.Request, progress=gr.Progress()):  # fmt: skip
    _track(request, image_file, depth_file)
    progress(0.1, desc="reading the image and its depth")
    new = _build(scene.raw_from_upload(image_file, depth_file, depth_choice, float(fov)), long_side)
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Loaded **{new.raw.name}**.")


@action(scene_refused)
def set_size(session, long_side, preset, amount, frames, color_by, request: gr.Request, progress=gr.Progress()):
    """A new working size: the same input, the same path motion from the new source camera."""
    progress(0.1, desc=f"refitting at {long_side} px")
    new = scene.rebuild_at(scene.require_scene(session.scene), int(long_side))
    return _scene_view(session, new, request, preset, amount, frames, color_by, f"Working size {new.size[1]}x{new.size[0]}.",
                       resized=True)  # fmt: skip


@action(path_refused)
def use_preset(session, preset, amount, frames, color_by):
    return _path_view(session.change_path(scene.preset_path, preset, _amount(amount), _frames(frames)), color_by)


@action(path_refused)
def pick_preset(session, preset, frames, color_by):  # a preset just picked: its default amount
    return _path_view(session.change_path(scene.preset_path, preset, None, _frames(frames)), color_by)


def edit_amount(session, preset, amount, frames, color_by, amount_before):
    """Amount edited (Enter or leaving the field): applied when it changed since the field took focus."""
    return {} if amount == amount_before else use_preset.page(session, preset, amount, frames, color_by)


@action(path_refused)
def use_stroke(session, editor, frames, depth_fraction, look, color_by, request: gr.Request):
    _track(request, *(editor or {}).get("files", ()))
    return _path_view(session.change_path(scene.stroke_path, editor, _frames(frames), float(depth_fraction), look), color_by)


@action(path_refused)
def stroke_setting(session, depth_fraction, look, color_by):
    """A stroke setting changed: applied at once when the active path is a stroke (else at 'Use stroke')."""
    state = session.scene
    if state is None or state.recipe is None or state.recipe.kind != "stroke":
        return {}
    remake = lambda st: scene.remake_path(st, len(st.path), depth_fraction=float(depth_fraction), look=look)  # noqa: E731
    return _path_view(session.change_path(remake), color_by)


@action(keyframes_refused)
def use_keyframes(session, table, frames, color_by):
    return _path_view(session.change_path(scene.keyframe_path, table, _frames(frames)), color_by)


@action(path_refused)
def use_import(session, file, frames, color_by, request: gr.Request):
    _track(request, file)
    return _path_view(session.change_path(scene.imported_path, file, _frames(frames)), color_by)


@action(path_refused)
def set_frames(session, frames, color_by):
    return _path_view(session.change_path(scene.remake_path, _frames(frames)), color_by)


@action(path_refused)
def export_path(session, request: gr.Request):
    state = scene.require_scene(session.scene)
    return {ui.export_files: [str(p) for p in scene.export_path(state, _workdir(session, request) / "path")]}


def recolor(session, color_by):
    if session.scene is None:
        return {}
    out = {ui.plot: scene.scene_figure(session.scene, color_by)}
    growth = runs.growth_figure(session, color_by)
    if growth is not None:
        out[ui.growth_plot] = growth
    return out


def set_conditioning(conditioning):
    """A conditioning's own defaults into the sampling controls (they stay editable)."""
    d = rt.generation_defaults(conditioning)
    return {ui.steps: gr.update(value=d["steps"], info=f"{d['origin']} default: {d['steps']}"),
            ui.guidance: gr.update(value=d["guidance"], info=f"{d['origin']} default: {d['guidance']:g} (1 = off, half the time)"),
            ui.negative_prompt: gr.update(value=d["negative_prompt"],
                                          label=f"Negative prompt ({d['origin']}'s default; used when guidance > 1)")}  # fmt: skip


# ---------------------------------------------------------------------------------------- the run
def _spec(seed, steps, guidance, prompt, negative_prompt, conditioning, readouts="reference") -> runs.RunSpec:
    if not MODE.generation:
        return runs.RunSpec(False)
    conditioning = conditioning or "replace"
    if conditioning not in rt.TRAINING_FREE_CHOICES and conditioning not in MODE.branches:
        raise ValueError(f"{rt.CONDITIONINGS[conditioning]}: no checkpoint found ({'; '.join(MODE.branches_missing)})")
    return runs.RunSpec(True, conditioning, prompt or "", int(steps), float(guidance), negative_prompt or "", int(seed),
                        readouts or "reference")  # fmt: skip


def _run_controls(running: bool, active: runs.ActiveRun | None) -> dict:
    """Stop while a run goes; afterwards Continue (when chunks are left), Undo (past the first chunk) and
    a segment to add."""
    left = active is not None and active.comparison.next_kind() is not None
    chunks = 0 if active is None else min(active.comparison.chunks_done(m) for m in preview.METHODS)
    return {ui.stop: gr.update(visible=running), ui.run_button: gr.update(interactive=not running),
            ui.resume: gr.update(visible=not running and left), ui.undo: gr.update(visible=not running and chunks > 1),
            ui.more: gr.update(visible=not running and active is not None)}  # fmt: skip


def _show(update: runs.RunUpdate) -> dict:
    out = {ui.run_status: update.status}
    if update.memory_files or update.files is not None:
        out[ui.results] = gr.update(visible=True)  # the result area appears with its first video
    for kind, files in (update.memory_files or {}).items():
        out.update({ui.video[kind]: str(files["video"]), ui.received[kind]: str(files["received"]),
                    ui.mask[kind]: str(files["mask"])})  # fmt: skip
    if update.files is not None:
        f = update.files
        out.update({ui.side_video: str(f.side_by_side), ui.downloads: [str(p) for p in f.downloads()], ui.caption: update.caption})
    if update.figures is not None:
        out.update(dict(zip((ui.timing_plot, ui.size_plot, ui.growth_plot), update.figures)))
    return out


def _stream(session: rt.Session, active: runs.ActiveRun, color_by, request: gr.Request, progress):
    """Run ``active`` on, showing every update; the final yield holds every output (the API returns it)."""
    _workdir(session, request)
    alive = lambda: DIRS.alive(request.session_hash)  # noqa: E731  a closed page: the run ends after its chunk
    with DIRS.streaming(request.session_hash):  # a page closed meanwhile: its files go after the last result is sent
        yield {ui.session: session, ui.run_status: "Starting…", **_run_controls(True, active)}
        runner = runs.make_runner(active.spec, MODE)
        for update in runs.stream(session, active, runner, _chunk_steps(active.spec), color_by, alive=alive):
            progress(update.fraction, desc=update.status)
            if not update.done:
                yield _show(update)
        yield _finished(session, active)


def _finished(session: rt.Session, active: runs.ActiveRun) -> dict:
    """Every output as the run now stands (the API returns this): what happened, and what was made."""
    out = {ui.session: session, ui.run_status: active.note, **_run_controls(False, active)}
    if active.memory_files:
        out[ui.results] = gr.update(visible=True)
    for kind, files in active.memory_files.items():
        out.update({ui.video[kind]: str(files["video"]), ui.received[kind]: str(files["received"]), ui.mask[kind]: str(files["mask"])})
    if active.files is not None:
        out.update({ui.side_video: str(active.files.side_by_side), ui.downloads: [str(p) for p in active.files.downloads()]})
    return out


def share_refused(session, err) -> dict:
    return {ui.share_link: _refused(err)}


@action(share_refused)
def share_result(session):
    """The run's side-by-side video and caption kept apart from the session, and a link that opens them."""
    active = session.run
    if active is None or active.files is None:
        raise ValueError("nothing to share yet: press Generate, and share when a chunk of both memories is done")
    key = SHARED.share(active.files.side_by_side, active.caption)
    return {ui.share_link: f"**Share link:** [?result={key}](?result={key}) (copy it: it opens this page with this result, the "
                           f"side-by-side video with its labels and caption; the video file is the one to post)."}


@action(run_refused)
def shared_result(key):
    """A shared result by its id (``share_result``): its video and caption, said as a shared one."""
    key = str(key).strip()
    found = SHARED.get(key)
    if found is None:
        raise ValueError(f"no shared result {key!r} here: the link is wrong, or it went to make room for newer ones")
    video_path, caption = found
    return {ui.side_video: str(video_path), ui.caption: f"**Shared result** `{key}`\n\n{caption}"}


def open_shared(request: gr.Request) -> dict:
    """The page opened with ``?result=<id>``: that result (``shared_result``), with the result area shown."""
    key = request.query_params.get("result") if request is not None else None
    if not key:
        return {ui.run_status: gr.skip()}  # (an empty dict would read as one value)
    try:
        shown = shared_result(key)
    except ValueError as err:
        return {ui.run_status: f"**Not found:** {err}."}
    return {**shown, ui.results: gr.update(visible=True),
            ui.run_status: f"Showing the shared result `{key}` (below, with its caption). Load a scene and press Generate "
                           "for your own."}  # fmt: skip


@action(run_refused)
def generate(session, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, readouts="reference",
             request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
    """Generate (or preview) both memories along the active path, chunk by chunk, from scratch."""
    active = runs.start_run(session, _spec(seed, steps, guidance, prompt, negative_prompt, conditioning, readouts), MODE)
    yield from _stream(session, active, color_by, request, progress)


@action(run_refused)
def resume(session, color_by, request: gr.Request, progress=gr.Progress()):
    """Go on with the run where it stopped (Stop, a chunk that failed, a closed page)."""
    if session.run is None:
        raise ValueError("no run to continue: press Generate")
    if session.run.comparison.next_kind() is None:
        raise ValueError("the run is complete: add a segment from its last camera to go on")
    yield from _stream(session, session.run, color_by, request, progress)


@action(run_refused)
def continue_run(session, segment, preset, amount, frames, editor, depth_fraction, look, table, color_by,
                 request: gr.Request, progress=gr.Progress()):  # fmt: skip
    """Add a segment from the run's last camera (a preset, back to the start, a stroke, keyframes) and
    generate only its chunks; both memories go on from where they are."""
    active = session.run
    if active is None:
        raise ValueError("no run to continue: press Generate first")
    if active.comparison.next_kind() is not None:
        raise ValueError("the run has chunks left: press Continue first, or Generate to start again")
    segment_frames = rt.check_frame_count(frames, rt.MAX_TOTAL_FRAMES - len(active.scene.path) + 1)
    _track(request, *(editor or {}).get("files", ()))
    state = replace(active.scene)
    scene.continue_path(state, segment, segment_frames, preset=preset, amount=_amount(amount), editor=editor,
                        depth_fraction=float(depth_fraction), look=look, rows=table, max_frames=rt.MAX_TOTAL_FRAMES)  # fmt: skip
    active.scene = state
    active.comparison.extend(state.path)
    session.scene = replace(state)  # the page's active path is the run's, with the new segment
    session.change_path(lambda st: st)
    yield {ui.plot: scene.scene_figure(session.scene, color_by), ui.active: rt.active_path_line(session.scene),
           ui.summary: scene.scene_summary(session.scene)}  # fmt: skip
    yield from _stream(session, active, color_by, request, progress)


@action(run_refused)
def undo(session, color_by, request: gr.Request):
    """Take the last chunk back from both memories: their caches and videos as they were before it."""
    active = session.run
    if active is None:
        raise ValueError("no run to undo a chunk of")
    chunk = active.comparison.undo()
    _workdir(session, request)
    active.note = f"Chunk {chunk + 1} taken back: both memories and videos are as they were after chunk {chunk}."
    return {**_show(runs.rewrite(session, active, color_by)), **_finished(session, active)}


def stop(session):
    """End the run after the chunk it is on (both memories); what was made stays."""
    if session.run is not None:
        session.run.stop = True
    return {ui.run_status: "**Stopping** after the chunk in progress…"}


# ------------------------------------------------------------------------------------ the session
RELEASE_AFTER_S = rt.release_after()  # a page whose connection comes back within this keeps its session


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
    DIRS.remove(session)  # later calls for this session are refused: a run still going stops after its chunk
    rt.trim_memory()


def _drop_state(session) -> None:  # gr.State delete_callback: the session's files go with its state
    if session is not None and session.workdir is not None and not DIRS.busy(session.workdir.name):
        shutil.rmtree(session.workdir, ignore_errors=True)  # (a run still sending: SessionDirs removes it after)


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
        ui.session = gr.State(rt.Session(), delete_callback=_drop_state)
        amount_before = gr.State(None)  # the amount when its field took focus (applied on leaving only if changed)
        gr.Markdown(
            "# Mirage: latent spatial memory\n"
            "Compare two 3D memories along a camera path: the **latent memory** (the video model's own latent tokens "
            "lifted to 3D) and the **pixel point cloud** baseline (rasterize every frame, then encode it).  \n"
            + MODE.headline(), elem_id="intro",
        )  # fmt: skip
        with gr.Accordion("This mode: weights, device, what needs weights", open=False, elem_id="mode-details"):
            gr.Markdown(MODE.banner() + _gpu_note(), elem_id="mode-banner")

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------- 1. input
            with gr.Column(scale=5, min_width=360):
                gr.Markdown("### 1. Scene")
                examples = gr.Gallery(
                    gallery, label="Examples (one click; right half: the depth each starts from)", columns=3,
                    rows=1, height=110, object_fit="contain", allow_preview=False, selected_index=0, elem_id="examples",
                )  # fmt: skip
                ui.status = gr.Markdown("Loading the first example…", elem_id="status")
                example_name = gr.Textbox(visible=False)
                example_button = gr.Button(visible=False)
                ui.editor = _editor_listing_files(gr.ImageEditor(
                    label="Scene (draw a stroke here for a stroke path)", type="numpy", image_mode="RGBA", sources=(),
                    transforms=(), layers=False, fixed_canvas=False, format="png", elem_id="stroke-editor", height=280,
                    brush=gr.Brush(colors=["#ff2d2d"], default_color="#ff2d2d", color_mode="fixed", default_size=6),
                    eraser=gr.Eraser(default_size=12),
                ))
                ui.long_side = gr.Radio([(rt.working_size_label(n), n) for n in LONG_SIDES], value=512,
                                        label="Working size (long side, px)",
                                        info="The preview runs on CPU; 1280 (Wan2.2's 704x1280) and 1248 (Spatia's "
                                             "704x1248) only with the GPU pipeline.")  # fmt: skip
                ui.summary = gr.Markdown(elem_id="summary")
                with gr.Accordion("The examples, your own image, the depth source", open=False, elem_id="scene-setup"):
                    gr.Markdown(rt.example_notes(MODE.depth_pro), elem_classes="small-note")
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

            # ------------------------------------------------------------- 2. camera path
            with gr.Column(scale=4, min_width=340):
                gr.Markdown("### 2. Camera path")
                ui.frames = gr.Dropdown(list(rt.FRAME_CHOICES), value=33, allow_custom_value=True, label="Frames",
                                        info=f"4N+1; chunks of 33 then +32; at most {rt.MAX_FRAMES}. Applies to the active path.",
                                        elem_id="frames")  # fmt: skip
                with gr.Tabs():
                    with gr.Tab("Preset", elem_id="preset-tab"):
                        ui.preset = gr.Dropdown(list(paths.PRESETS), value="orbit_left", label="Preset (applies at once)",
                                                elem_id="preset")  # fmt: skip
                        ui.preset_info = gr.Markdown(rt.preset_description("orbit_left"), elem_classes="small-note",
                                                     elem_id="preset-info")  # fmt: skip
                        ui.amount = gr.Number(paths.PRESETS["orbit_left"].default, label="Amount (applies on Enter or leaving the field)",
                                              info=paths.PRESETS["orbit_left"].unit, elem_id="amount")  # fmt: skip
                        preset_button = gr.Button("Use preset again", elem_id="use-preset")
                    with gr.Tab("Stroke", elem_id="stroke-tab"):
                        gr.Markdown("Draw on the scene image (left) from near the centre towards where the camera should go; "
                                    "the stroke is lifted to 3D with the depth and the camera travels along it.")
                        ui.depth_fraction = gr.Slider(scene.STROKE_FRACTIONS[0], scene.STROKE_FRACTIONS[-1], value=0.5, step=0.05,
                                                      label="How far (fraction of the depth under the stroke)")  # fmt: skip
                        ui.look = gr.Radio(list(paths.LOOKS), value="source", label="Look",
                                           info="keep the source view or look along the stroke")  # fmt: skip
                        stroke_button = gr.Button("Use stroke as path", variant="primary", elem_id="use-stroke")
                    with gr.Tab("Keyframes"):
                        ui.table = gr.Dataframe(headers=list(paths.KEYFRAME_COLUMNS), datatype="number", column_count=7,
                                                type="array", row_count=3, row_limits=(2, 64), interactive=True,
                                                show_row_numbers=True, elem_id="keyframes",
                                                label="Keyframes (world = source camera; metres, degrees)")  # fmt: skip
                        gr.Markdown("Signs: x right, y **down**, z forward (metres); yaw > 0 turns left, pitch > 0 looks "
                                    "up, roll > 0 rolls the camera clockwise seen from behind (degrees); fov_x in degrees. The first row "
                                    "is the source camera.", elem_classes="small-note")  # fmt: skip
                        with gr.Row():
                            add_row = gr.Button("Add a row", size="sm", elem_id="add-keyframe")
                            remove_row = gr.Button("Remove the last row", size="sm", elem_id="remove-keyframe")
                        keyframe_button = gr.Button("Use keyframes", variant="primary", elem_id="use-keyframes")
                    with gr.Tab("Import / export"):
                        path_file = _upload_file(gr.File(label="RealEstate10K .txt, nerfstudio transforms.json or mirage .json",
                                                         file_types=[".txt", ".json"], type="filepath"))
                        import_button = gr.Button("Import path", variant="primary")
                        export_button = gr.Button("Export current path (3 formats)")
                        ui.export_files = gr.File(label="Path files", file_count="multiple", interactive=False)
                ui.path_status = gr.Markdown(elem_id="path-status")

            # ------------------------------------------------------------- 3. generate
            with gr.Column(scale=3, min_width=280):
                gr.Markdown("### 3. Generate")
                ui.active = gr.Markdown(rt.active_path_line(None), elem_id="active-path")
                ui.run_button = gr.Button("Generate" if MODE.generation else "Generate (readout preview)", variant="primary",
                                          elem_id="run", size="lg")  # fmt: skip
                with gr.Row():
                    ui.stop = gr.Button("Stop after this chunk", variant="stop", elem_id="stop", visible=False)
                    ui.resume = gr.Button("Continue", elem_id="resume", visible=False)
                    ui.undo = gr.Button("Undo last chunk", elem_id="undo", visible=False)
                ui.run_status = gr.Markdown(elem_id="run-status")
                gr.Markdown(
                    ("Both memories run the diffusion model with the same seed and settings, one chunk at a time (latent, then "
                     "pixel): both videos grow side by side." if MODE.generation else
                     "Offline, Generate shows **readout previews** of both memories (no weights needed); generation needs "
                     "the Wan2.2-TI2V-5B weights."), elem_classes="small-note",
                )  # fmt: skip
                with gr.Accordion("Generation settings: conditioning, seed, steps, guidance, prompt", open=False, visible=MODE.generation, elem_id="gen-settings"):
                    conditioning = gr.Radio(
                        rt.conditioning_choices(MODE), value="replace", label="Conditioning (both memories, same seed)",
                        info="Training-free modes run the bare Wan2.2 model; a trained branch is offered when its checkpoint "
                             "is found (" + ("found: " + ", ".join(MODE.branches) if MODE.branches else "none found") + ").",
                        elem_id="conditioning",
                    )  # fmt: skip
                    readouts = gr.Radio([(label, k) for k, label in rt.READOUT_CHOICES.items()], value="reference",
                                        label="What a trained branch reads", visible=bool(MODE.branches), elem_id="readouts",
                                        info="Both memories, under a trained branch only: the readouts its reference trained "
                                             "it on (Mirage: its LatentPointCloud; Spatia: PyTorch3D discs on black), or ours.")  # fmt: skip
                    seed = gr.Number(0, precision=0, label="Seed", info="the same for both memories")
                    ui.steps = gr.Slider(1, 100, value=GEN["steps"], step=1, label="Sampling steps",
                                         info=f"Wan2.2-TI2V-5B default: {GEN['steps']}")
                    ui.guidance = gr.Slider(1.0, 10.0, value=GEN["guidance"], step=0.5, label="Guidance scale",
                                            info=f"Wan2.2-TI2V-5B default: {GEN['guidance']:g} (1 = off, half the time)")
                    prompt = gr.Textbox("", label="Prompt (optional)")
                    ui.negative_prompt = gr.Textbox(GEN["negative_prompt"], lines=2,
                                                    label=f"Negative prompt ({GEN['origin']}'s default; used when guidance > 1)")  # fmt: skip

        run_api, resume_api, continue_api, undo_api, stop_api = (gr.Button(visible=False) for _ in range(5))
        share_key = gr.Textbox(visible=False)
        # ----------------------------------------------------------------- results (shown once there are some)
        with gr.Column(visible=False, elem_id="results") as ui.results:
            ui.video, ui.received, ui.mask = {}, {}, {}
            with gr.Row():
                for kind in preview.METHODS:
                    with gr.Column():
                        ui.video[kind] = gr.Video(label=VIDEO_LABELS[kind], elem_id=f"{kind}-video", autoplay=True, loop=True)
                        ui.received[kind] = gr.Video(label=INPUT_LABELS[kind], elem_id=f"{kind}-input", autoplay=True, loop=True)
                        ui.mask[kind] = gr.Video(label=f"{preview.METHOD_LABELS[kind]}: hole mask (white = seen)", autoplay=True,
                                                 loop=True, elem_id=f"{kind}-mask")  # fmt: skip
            ui.caption = gr.Markdown(elem_id="caption")
            with gr.Group(visible=False) as ui.more:
                gr.Markdown("**Add a segment from the last camera**: lengthen the run's path and generate only its chunks; "
                            "both memories go on from where they are. A stroke comes from the scene image, keyframes from the "
                            "table (in the last camera's frame).")  # fmt: skip
                with gr.Row():
                    segment = gr.Radio([("preset", "preset"), ("back to the start", "return"), ("stroke", "stroke"),
                                        ("keyframes", "keyframes")], value="preset", label="Segment")  # fmt: skip
                    more_preset = gr.Dropdown(list(paths.PRESETS), value="pan_right", label="Preset")
                    more_amount = gr.Number(None, label="Amount (empty: the preset's default)")
                    more_frames = gr.Dropdown([33, 65, 97, 129], value=33, allow_custom_value=True, label="Frames of the segment")
                    more_button = gr.Button("Add segment and generate", variant="primary", elem_id="continue")
            with gr.Row():
                ui.timing_plot = gr.Plot(label="Time per stage", elem_id="timing-plot")
                ui.size_plot = gr.Plot(label="Cache size after the image and each chunk", elem_id="size-plot")
            ui.growth_plot = gr.Plot(label="Latent cache, chunk by chunk", elem_id="growth-plot")
            with gr.Row():
                share_button = gr.Button("Share this result", elem_id="share", scale=0, min_width=180)
                ui.share_link = gr.Markdown(elem_id="share-link")
            with gr.Accordion("Downloads", open=True):
                ui.side_video = gr.Video(label="Side by side", show_label=False, loop=True, elem_id="side-video")
                ui.downloads = gr.File(label="Videos, latent cache (.ply, .safetensors), path files", file_count="multiple",
                                       interactive=False)  # fmt: skip

        # ----------------------------------------------------------------- the 3D cache
        with gr.Row():
            color_by = gr.Radio([(label, c) for c, label in rt.COLOR_BY_LABELS.items()], value="image",
                                label="Colour the cells by", scale=0, min_width=300)
        ui.plot = gr.Plot(label="Latent cache: each cell's patch, seen from the source camera (drag to turn; "
                                "the pixel memory's points in the legend; hover: frame, depth)", elem_id="cache-plot")

        # ----------------------------------------------------------------- wiring
        S = ui.session
        controls = [ui.frames, ui.preset, ui.amount, ui.preset_info, ui.depth_fraction, ui.look]
        scene_ui = [S, ui.editor, ui.summary, ui.plot, ui.table, ui.status, ui.path_status, ui.active, *controls, ui.long_side]
        path_ui = [S, ui.summary, ui.plot, ui.path_status, ui.active, *controls, ui.editor]
        run_ui = [S, ui.run_status, *ui.video.values(), *ui.received.values(), *ui.mask.values(), ui.side_video,
                  ui.timing_plot, ui.size_plot, ui.growth_plot, ui.downloads, ui.caption, ui.stop, ui.run_button, ui.resume,
                  ui.undo, ui.more, ui.plot, ui.active, ui.summary, ui.results]  # fmt: skip
        scene_api = [S, ui.editor, ui.summary, ui.plot, ui.table, ui.status]
        path_api = [S, ui.summary, ui.plot, ui.path_status]
        run_api_out = [S, ui.run_status, ui.video["latent"], ui.video["rgb"], ui.received["latent"], ui.received["rgb"], ui.mask["latent"],
                       ui.mask["rgb"], ui.side_video, ui.timing_plot, ui.size_plot, ui.growth_plot, ui.downloads, ui.caption]  # fmt: skip
        path_ctl = [ui.preset, ui.amount, ui.frames, color_by]
        private = dict(api_visibility="private")
        run_opts = dict(concurrency_limit=4, concurrency_id="run", show_progress_on=[ui.run_status])
        # the page
        examples.select(select_example, [S, depth_choice, ui.long_side, *path_ctl], scene_ui, **private)
        load_button.click(load_upload.page, [S, image_file, depth_file, depth_choice, fov, ui.long_side, *path_ctl], scene_ui,
                          **private)  # fmt: skip
        ui.long_side.input(set_size.page, [S, ui.long_side, *path_ctl], scene_ui, **private)
        ui.preset.input(pick_preset.page, [S, ui.preset, ui.frames, color_by], path_ui, **private)
        ui.amount.focus(lambda a: a, ui.amount, amount_before, **private)
        for event in (ui.amount.submit, ui.amount.blur):
            event(edit_amount, [S, ui.preset, ui.amount, ui.frames, color_by, amount_before], path_ui, **private).then(
                lambda a: a, ui.amount, amount_before, **private)
        ui.frames.input(set_frames.page, [S, ui.frames, color_by], path_ui, trigger_mode="always_last", **private)
        preset_button.click(use_preset.page, [S, *path_ctl], path_ui, **private)
        stroke_button.click(use_stroke.page, [S, ui.editor, ui.frames, ui.depth_fraction, ui.look, color_by], path_ui, **private)
        ui.depth_fraction.release(stroke_setting.page, [S, ui.depth_fraction, ui.look, color_by], path_ui, **private)
        ui.look.input(stroke_setting.page, [S, ui.depth_fraction, ui.look, color_by], path_ui, **private)
        add_row.click(rt.add_keyframe_row, [ui.table], [ui.table], **private)
        remove_row.click(rt.remove_keyframe_row, [ui.table], [ui.table], **private)
        keyframe_button.click(use_keyframes.page, [S, ui.table, ui.frames, color_by], [*path_ui, ui.table], **private)
        import_button.click(use_import.page, [S, path_file, ui.frames, color_by], path_ui, **private)
        export_button.click(export_path.api([ui.export_files]), [S], [ui.export_files], api_name="export_path")
        color_by.input(recolor, [S, color_by], [ui.plot, ui.growth_plot], **private)
        run_in = [S, seed, ui.steps, ui.guidance, prompt, ui.negative_prompt, conditioning, color_by, readouts]
        conditioning.change(set_conditioning, conditioning, [ui.steps, ui.guidance, ui.negative_prompt], **private)
        ui.run_button.click(generate.page, run_in, run_ui, api_name="page_run", **run_opts, **private)
        ui.resume.click(resume.page, [S, color_by], run_ui, api_name="page_resume", **run_opts, **private)
        more_in = [S, segment, more_preset, more_amount, more_frames, ui.editor, ui.depth_fraction, ui.look, ui.table, color_by]
        more_button.click(continue_run.page, more_in, run_ui, api_name="page_add_segment", **run_opts, **private)
        ui.undo.click(undo.page, [S, color_by], run_ui, api_name="page_undo", **private)
        ui.stop.click(stop, [S], [ui.run_status], api_name="page_stop", concurrency_limit=None, **private)
        demo.load(first_example, [S, depth_choice, ui.long_side, *path_ctl], scene_ui, **private)
        demo.load(open_shared, None, [ui.side_video, ui.caption, ui.run_status, ui.results], **private)  # a link with ?result=<id>
        share_button.click(share_result.page, [S], [ui.share_link], **private)
        gr.Button(visible=False).click(share_result.api([ui.share_link]), [S], [ui.share_link], api_name="share")
        gr.Button(visible=False).click(shared_result.api([ui.side_video, ui.caption]), [share_key], [ui.side_video, ui.caption],
                                       api_name="shared_result")  # fmt: skip
        demo.unload(end_session)
        # the API (hidden triggers; a refusal raises with its message)
        example_button.click(load_example.api(scene_api), [S, example_name, depth_choice, ui.long_side, *path_ctl], scene_api,
                             api_name="load_example")  # fmt: skip
        gr.Button(visible=False).click(load_upload.api(scene_api), [S, image_file, depth_file, depth_choice, fov, ui.long_side,
                                                                    *path_ctl], scene_api, api_name="load_image")  # fmt: skip
        gr.Button(visible=False).click(use_preset.api(path_api), [S, *path_ctl], path_api, api_name="preset_path")
        gr.Button(visible=False).click(use_stroke.api(path_api), [S, ui.editor, ui.frames, ui.depth_fraction, ui.look, color_by],
                                       path_api, api_name="stroke_path")  # fmt: skip
        gr.Button(visible=False).click(use_keyframes.api(path_api), [S, ui.table, ui.frames, color_by], path_api,
                                       api_name="keyframe_path")  # fmt: skip
        gr.Button(visible=False).click(use_import.api(path_api), [S, path_file, ui.frames, color_by], path_api, api_name="import_path")
        run_api.click(generate.api(run_api_out), run_in, run_api_out, api_name="run", **run_opts)
        resume_api.click(resume.api(run_api_out), [S, color_by], run_api_out, api_name="resume", **run_opts)
        continue_api.click(continue_run.api(run_api_out), more_in, run_api_out, api_name="add_segment", **run_opts)
        undo_api.click(undo.api(run_api_out), [S, color_by], run_api_out, api_name="undo")
        stop_api.click(stop, [S], [ui.run_status], api_name="stop", concurrency_limit=None)
    demo.queue(default_concurrency_limit=4)
    return demo


def _gpu_note() -> str:
    """The banner's lines on the weights' start-up and on the device and what one chunk costs there."""
    lines = [WEIGHTS_NOTE] if WEIGHTS_NOTE else []
    lines += [runs.device_line(MODE, GEN["steps"], GEN["guidance"])] if MODE.generation else []
    return "".join(f"\n\n{line}" for line in lines)


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

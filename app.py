"""Mirage demo: latent 3D memory vs pixel point cloud along a camera path (Gradio).

Layout and wiring only: scenes and paths are in ``mirage.scene``, runs, files and figures in
``mirage.preview``, and the app's own runtime (mode, device, sessions, UI formats, ZeroGPU) in
``app_runtime``. ``python app.py [--host H] [--port P] [--share]``; without flags gradio's own
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` / ``GRADIO_SHARE`` apply. Environment settings:
see ``app_runtime``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil

import gradio as gr

import app_runtime as rt
from mirage import paths, preview, scene
from mirage.examples import ASSETS_DIR, EXAMPLES

try:  # Hugging Face ZeroGPU; a no-op decorator elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

MODE = rt.detect_mode()
DIRS = rt.SessionDirs(os.environ.get("MIRAGE_APP_TMP") or None)
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
    """Turn the library's ValueError / FileNotFoundError into a message in the page (the app keeps serving)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err), duration=None) from None

    return wrapper


def _workdir(state, request: gr.Request):
    state.workdir = DIRS.get(request.session_hash)
    return state.workdir


def _drop_state(state) -> None:  # gr.State delete_callback: the session's files go with its state
    if state is not None and state.workdir is not None:
        shutil.rmtree(state.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------- handlers
def _frames(frames) -> int:
    return rt.check_frame_count(frames)


def _scene_outputs(state, preset, amount, frames, color_by):
    """After a load: the default preset path (if it fits the scene), editor, summary, plot, table."""
    try:
        scene.preset_path(state, preset, amount, _frames(frames))
        status = f"Loaded. Path: {state.path_label}. Draw, edit keyframes or import to change it, then press Generate."
    except ValueError as err:
        status = f"Loaded, but the default path does not fit this scene: {err}"
    return (state, rt.editor_value(state), scene.scene_summary(state), scene.scene_figure(state, color_by),
            scene.default_keyframe_rows(state), status)  # fmt: skip


@ui_errors
def load_example(name, depth_choice, long_side, preset, amount, frames, color_by, progress=gr.Progress()):
    progress(0.1, desc=f"loading {name}")
    state = scene.build_scene(scene.raw_from_example(name, depth_choice), int(long_side))
    return _scene_outputs(state, preset, amount, frames, color_by)


def load_example_index(index, depth_choice, long_side, preset, amount, frames, color_by, progress=gr.Progress()):
    return load_example(EXAMPLES[int(index)].name, depth_choice, long_side, preset, amount, frames, color_by, progress)


@ui_errors
def load_upload(image_file, depth_file, depth_choice, fov, long_side, preset, amount, frames, color_by,
                progress=gr.Progress()):  # fmt: skip
    progress(0.1, desc="reading the image and its depth")
    raw = scene.raw_from_upload(image_file, depth_file, depth_choice, float(fov))
    state = scene.build_scene(raw, int(long_side))
    return _scene_outputs(state, preset, amount, frames, color_by)


@ui_errors
def change_size(state, long_side, color_by):
    if state is None:
        return state, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    new = scene.rebuild_at(state, int(long_side))
    return new, rt.editor_value(new), scene.scene_summary(new), scene.scene_figure(new, color_by), "Working size changed."


def _path_outputs(state, color_by):
    return state, scene.scene_summary(state), scene.scene_figure(state, color_by), f"Path set: {state.path_label}, {len(state.path)} frames."


@ui_errors
def use_preset(state, preset, amount, frames, color_by):
    return _path_outputs(scene.preset_path(state, preset, amount, _frames(frames)), color_by)


@ui_errors
def use_stroke(state, editor, frames, depth_fraction, look, color_by):
    return _path_outputs(scene.stroke_path(state, editor, _frames(frames), float(depth_fraction), look), color_by)


@ui_errors
def use_keyframes(state, table, frames, color_by):
    return _path_outputs(scene.keyframe_path(state, table, _frames(frames)), color_by)


@ui_errors
def use_import(state, file, frames, color_by):
    return _path_outputs(scene.imported_path(state, file, _frames(frames)), color_by)


@ui_errors
def export_path(state, request: gr.Request):
    state = scene.require_scene(state)
    return [str(p) for p in scene.export_path(state, _workdir(state, request) / "path")]


@ui_errors
def recolor(state, color_by):
    if state is None:
        return gr.skip(), gr.skip()
    growth = gr.skip() if state.result is None else preview.result_figures(state, state.result, color_by)[2]
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


@ui_errors
def run(state, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by, request: gr.Request,
        progress=gr.Progress()):  # fmt: skip
    state = scene.require_scene(state)
    if state.path is None:
        raise ValueError("no camera path yet: make one with a preset, a stroke, keyframes or an import")
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
    out = rt.finish_run(state, result, _workdir(state, request) / f"run{state.version}", color_by, fps)
    f = out.files
    return (state, str(f.videos["latent"]), str(f.videos["rgb"]), str(f.received["latent"]), str(f.received["rgb"]),
            str(f.masks["latent"]), str(f.masks["rgb"]), str(f.side_by_side), *out.figures,
            [str(p) for p in f.downloads()], out.caption)  # fmt: skip


def end_session(request: gr.Request) -> None:
    DIRS.remove(request.session_hash)


# --------------------------------------------------------------------------------------- layout
CSS = """
#mode-banner {border-left: 4px solid #f59e0b; padding-left: 12px;}
.small-note {font-size: 0.85em; opacity: 0.85;}
"""
THEME = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="Mirage: latent spatial memory", delete_cache=(1800, 3600), analytics_enabled=False) as demo:
        state = gr.State(None, delete_callback=_drop_state)
        gr.Markdown(
            "# Mirage: latent spatial memory\n"
            "Pick a scene, give the camera a path, and compare two 3D memories on it: the **latent memory** (the video "
            "model's own latent tokens lifted to 3D, read with one projection on the latent grid) and the **pixel point "
            "cloud** baseline (rasterize every frame at full resolution, then encode it)."
        )
        gr.Markdown(MODE.banner(), elem_id="mode-banner")
        status = gr.Markdown("Loading the first example…", elem_id="status")

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------- 1. input
            with gr.Column(scale=1, min_width=380):
                gr.Markdown("### 1. Scene")
                examples = gr.Dataset(
                    components=[gr.Image(visible=False)], samples=[[str(s.image_path)] for s in EXAMPLES],
                    type="index", layout="gallery", label="Examples (one click)", elem_id="examples",
                )
                gr.Markdown("\n".join(f"- **{s.name}**: {s.description}" for s in EXAMPLES), elem_classes="small-note")
                example_name = gr.Textbox(visible=False)
                example_button = gr.Button(visible=False)
                editor = gr.ImageEditor(
                    label="Scene (draw a stroke here for a stroke path)", type="numpy", image_mode="RGBA", sources=(),
                    transforms=(), layers=False, fixed_canvas=False, format="png", elem_id="stroke-editor", height=380,
                    brush=gr.Brush(colors=["#ff2d2d"], default_color="#ff2d2d", color_mode="fixed", default_size=6),
                    eraser=gr.Eraser(default_size=12),
                )
                summary = gr.Markdown(elem_id="summary")
                with gr.Accordion("Upload your own image", open=False):
                    image_file = gr.File(label="Image (PNG/JPEG/WebP/TIFF; RGB, RGBA, gray, 16-bit)",
                                         file_types=["image"], type="filepath")
                    depth_file = gr.File(label="Depth map (optional): .npy in metres or 16-bit PNG in mm",
                                         file_types=[".npy", ".png"], type="filepath")
                    fov = gr.Slider(20, 120, value=60, step=1, label="Horizontal field of view (°)",
                                    info="Used when the depth source gives none (planar prior, uploaded depth map).")
                    load_button = gr.Button("Load image", variant="secondary")
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
                                     info=f"4N+1; chunks of 33 then +32; at most {rt.MAX_FRAMES}.")
                with gr.Tabs():
                    with gr.Tab("Preset"):
                        preset = gr.Dropdown(PRESETS, value="orbit_left", label="Preset")
                        amount = gr.Number(paths.PRESETS["orbit_left"].default, label="Amount",
                                           info=paths.PRESETS["orbit_left"].unit)
                        preset_button = gr.Button("Use preset", variant="primary")
                    with gr.Tab("Stroke", elem_id="stroke-tab"):
                        gr.Markdown("Draw on the scene image (left) from near the centre towards where the camera should go; "
                                    "the stroke is lifted to 3D with the depth and the camera travels along it.")
                        depth_fraction = gr.Slider(0.05, 0.9, value=0.5, step=0.05, label="How far (fraction of the depth under the stroke)")
                        look = gr.Radio(["source", "forward"], value="source", label="Look", info="keep the source view or look along the stroke")
                        stroke_button = gr.Button("Use stroke as path", variant="primary", elem_id="use-stroke")
                    with gr.Tab("Keyframes"):
                        table = gr.Dataframe(headers=list(paths.KEYFRAME_COLUMNS), datatype="number", column_count=7,
                                             row_count=3, interactive=True, label="Keyframes (world = source camera; metres, degrees)")
                        keyframe_button = gr.Button("Use keyframes", variant="primary")
                    with gr.Tab("Import / export"):
                        path_file = gr.File(label="RealEstate10K .txt, nerfstudio transforms.json or mirage .json",
                                            file_types=[".txt", ".json"], type="filepath")
                        import_button = gr.Button("Import path", variant="primary")
                        export_button = gr.Button("Export current path (3 formats)")
                        export_files = gr.File(label="Path files", file_count="multiple", interactive=False)
                color_by = gr.Radio([("latent features (PCA)", "latent"), ("image colour", "image")], value="latent",
                                    label="Colour the points by")
                plot = gr.Plot(label="Latent point cache and camera path", elem_id="cache-plot")

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
        run_button = gr.Button("Generate" if MODE.generation else "Generate (readout preview)", variant="primary", elem_id="run")
        with gr.Row():
            with gr.Column():
                latent_video = gr.Video(label=VIDEO_LABELS["latent"], elem_id="latent-video", autoplay=True, loop=True)
                latent_input = gr.Video(label=INPUT_LABELS["latent"], elem_id="latent-input", autoplay=True, loop=True)
                latent_mask = gr.Video(label="Latent memory: hole mask (white = seen)", autoplay=True, loop=True)
            with gr.Column():
                rgb_video = gr.Video(label=VIDEO_LABELS["rgb"], elem_id="rgb-video", autoplay=True, loop=True)
                rgb_input = gr.Video(label=INPUT_LABELS["rgb"], elem_id="rgb-input", autoplay=True, loop=True)
                rgb_mask = gr.Video(label="Pixel point cloud: hole mask (white = seen)", autoplay=True, loop=True)
        caption = gr.Markdown()
        with gr.Row():
            timing_plot = gr.Plot(label="Time per stage")
            size_plot = gr.Plot(label="Cache size per chunk")
        growth_plot = gr.Plot(label="Latent cache, chunk by chunk")
        with gr.Accordion("Downloads", open=True):
            side_video = gr.Video(label="Side by side", show_label=False, loop=True)
            downloads = gr.File(label="Videos, latent cache (.ply, .safetensors), path files", file_count="multiple", interactive=False)

        # ----------------------------------------------------------------- wiring
        path_ctl = [preset, amount, frames, color_by]
        scene_out = [state, editor, summary, plot, table, status]
        path_out = [state, summary, plot, status]
        examples.click(load_example_index, [examples, depth_choice, long_side, *path_ctl], scene_out, api_visibility="private")
        example_button.click(load_example, [example_name, depth_choice, long_side, *path_ctl], scene_out, api_name="load_example")
        load_button.click(load_upload, [image_file, depth_file, depth_choice, fov, long_side, *path_ctl], scene_out, api_name="load_image")
        long_side.change(change_size, [state, long_side, color_by], [state, editor, summary, plot, status], api_visibility="private")
        preset.change(lambda p: gr.update(value=paths.PRESETS[p].default, info=paths.PRESETS[p].unit), preset, amount,
                      api_visibility="private")  # fmt: skip
        preset_button.click(use_preset, [state, *path_ctl], path_out, api_name="preset_path")
        stroke_button.click(use_stroke, [state, editor, frames, depth_fraction, look, color_by], path_out, api_name="stroke_path")
        keyframe_button.click(use_keyframes, [state, table, frames, color_by], path_out, api_name="keyframe_path")
        import_button.click(use_import, [state, path_file, frames, color_by], path_out, api_name="import_path")
        export_button.click(export_path, [state], export_files, api_name="export_path")
        color_by.change(recolor, [state, color_by], [plot, growth_plot], api_visibility="private")
        run_out = [state, latent_video, rgb_video, latent_input, rgb_input, latent_mask, rgb_mask, side_video, timing_plot, size_plot, growth_plot,
                   downloads, caption]  # fmt: skip
        conditioning.change(set_conditioning, conditioning, [steps, guidance, negative_prompt], api_visibility="private")
        run_button.click(run, [state, seed, steps, guidance, prompt, negative_prompt, conditioning, color_by], run_out, api_name="run",
                         concurrency_limit=1, concurrency_id="run")  # fmt: skip
        demo.load(load_example_index, [gr.State(0), depth_choice, long_side, *path_ctl], scene_out, api_visibility="private")
        demo.unload(end_session)
    demo.queue(default_concurrency_limit=4)
    return demo


demo = build_demo()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=None, help="server name (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", default=None, help="public gradio link (default: $GRADIO_SHARE)")
    args = parser.parse_args()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(ASSETS_DIR)],
                theme=THEME, css=CSS)  # fmt: skip

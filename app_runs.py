"""A visitor's run in the app: what Generate captured, the chunks it runs (each its own GPU call on a
ZeroGPU Space), what one chunk costs there, and the files and figures each chunk adds to the page.

The loop is the library's (``mirage.preview.run_comparison``: latent chunk 1, pixel chunk 1, latent
chunk 2, ...); the app only chooses how a chunk is run (``steps``: in this process, or wrapped as a
``@spaces.GPU`` generator that runs in a worker process) and turns each event into an update:

* ``Progress``: one line and a fraction for the run's one progress bar;
* a chunk done: that memory's videos so far, and once both memories have the chunk, the side-by-side
  video, the charts, the latent cache and the downloads, written into a folder of their own (no URL
  is reused, so the browser never shows an older file). Each chunk's new frames are encoded once, as a
  part of each video (``workdir/run{n}/parts``); a video so far is its parts joined without
  re-encoding, and the frames are dropped once both memories' parts of the chunk are written;
* a chunk that failed (the platform aborted the call, an error): said in words; both memories and
  every finished chunk stay as they were before it, and Continue goes on from there.

A chunk's GPU call asks for the duration ``COSTS`` predicts (``mirage.costs``), which every finished
chunk refines with the stage times measured on this GPU.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import app_runtime as rt
from mirage import preview, speed, video
from mirage.costs import ChunkCost, CostModel, prior_for
from mirage.families import FAMILIES
from mirage.frames import Chunking
from mirage.preview import ChunkDone, Comparison, Progress, ResultFiles, RunInput, run_comparison
from mirage.revisits import RevisitTally, revisit_pairs
from mirage.scene import PLANAR_PRIOR_LABEL, ColorBy, SceneState

__all__ = ["RunSpec", "ActiveRun", "RunUpdate", "COSTS", "init_costs", "chunk_cost", "chunk_duration", "check_fits",
           "make_runner", "device_line", "start_run", "stream", "rewrite", "growth_figure", "ChunkCost"]  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    """How Generate was asked to run; both memories run with it."""

    generation: bool  # the diffusion model (else the offline readout preview)
    conditioning: str = "replace"  # app_runtime.CONDITIONINGS
    prompt: str = ""
    steps: int = 50
    guidance: float = 5.0
    negative_prompt: str = ""
    seed: int = 0
    readouts: str = "reference"  # under a trained branch: its reference's readouts, or ours (mirage.families.READOUTS)

    @property
    def chunking(self) -> Chunking:
        return rt.generation_defaults(self.conditioning)["chunking"] if self.generation else Chunking()

    @property
    def fps(self) -> int:
        return rt.generation_defaults(self.conditioning)["fps"] if self.generation else rt.FPS

    def pipe_kwargs(self) -> dict[str, Any]:
        return rt.pipe_settings(self.conditioning, self.prompt, self.steps, self.guidance, self.negative_prompt, self.readouts)


def make_runner(spec: RunSpec, mode: rt.AppMode):
    """The runner of one memory's chunks: the readout preview, or generation with the pipeline (loaded
    with the run's branch, in this process: before any GPU call forks from it)."""
    if not spec.generation:
        return preview.PreviewRunner()
    branch = mode.branches.get(spec.conditioning)
    pipe = rt.loaded_pipeline(mode.model_path, mode.device, branch) or rt.load_pipeline(
        mode.model_path, mode.device, branch, mode.zero_gpu, rt.aot_wanted(mode), rt.fp8_wanted(mode))
    return preview.GenerationRunner(pipe, seed=spec.seed, **spec.pipe_kwargs())


# ------------------------------------------------------------------------------------------ costs
COSTS: CostModel = CostModel(None)  # this process's GPU; init_costs sets its prior


def init_costs(mode: rt.AppMode) -> CostModel:
    """The cost model of the GPU generation runs on: its name (on ZeroGPU, the card the platform
    reports; a call there gets half of it) and ``$MIRAGE_ZEROGPU_MAX_SECONDS`` as the cap."""
    global COSTS
    name = ""
    if mode.generation and mode.device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
    cap = float(rt.os.environ.get(rt.ZEROGPU_MAX_ENV, "120")) if mode.zero_gpu else 3600.0
    COSTS = CostModel(prior_for(name, half=mode.zero_gpu) if name else None, cap=cap,
                      granted_per_second=_zerogpu_duration_factor() if mode.zero_gpu else 1.0)  # fmt: skip
    COSTS.device_name = name or mode.device  # type: ignore[attr-defined]
    return COSTS


def count_package_load(status: rt.AotStatus) -> None:
    """Every GPU call's allowance grows by the load time of the ahead-of-time packages: a worker loads
    them at its first call, and ZeroGPU may fork a fresh worker for any call."""
    COSTS.allowance += status.load_seconds


def device_line(mode: rt.AppMode, steps: int, guidance: float) -> str:
    """The banner's line: the GPU generation runs on and what one chunk costs there (a later chunk of
    the pixel memory, the costlier one, at ``steps`` and ``guidance``); on ZeroGPU, what a call asks for."""
    aot = rt.aot_status()
    if mode.device != "cuda":
        return "Device: **CPU** (no GPU): each chunk's time is shown as it runs." + (f" Speed setting: {aot.line()}." if aot else "")
    cost = ChunkCost.of("rgb", (32, 65), 1, steps, guidance)
    where = getattr(COSTS, "device_name", mode.device)
    call = f"; each chunk of each memory is one GPU call, asking for {COSTS.request(cost)} s" if mode.zero_gpu else ""
    settings = rt.speed_settings(mode.device, mode.zero_gpu, aot is not None, rt.fp8_wanted(mode))
    if aot is not None:
        how = f" Speed setting: {aot.line()}" + "".join(f"; {part}" for part in speed.describe_vae(settings)) + "."
    elif mode.zero_gpu:
        how = f" Speed setting: {speed.describe(settings)} (SDPA; ZeroGPU runs no torch.compile)."
    else:
        first = "about 2 minutes with FP8" if settings.fp8 else "about 20 s"
        what = "the transformer and the VAE's norms" if settings.vae_fused else "the transformer"
        how = f" Speed setting: {speed.describe(settings)} (the first chunk compiles {what}: {first} on an H100)."
    return (f"GPU: **{where}**{' (ZeroGPU, half a card)' if mode.zero_gpu else ''}: {COSTS.describe(cost)} at 704x1280 "
            f"with {steps} steps and guidance {guidance:g}{call}.{how}")  # fmt: skip


def _zerogpu_duration_factor() -> float:
    """What ZeroGPU grants per second a ``large`` call asks for on this card: ``spaces`` multiplies the
    requested duration by its card profile's ``duration_factor`` (1.5 on the RTX Pro 6000 Blackwell;
    ``spaces/zero/client.py``, ``get_duration_seconds``). 1.0 where it cannot be read."""
    try:
        from spaces.zero import config

        return float(config.get_config()["duration_factor"])
    except Exception:  # noqa: BLE001 - another spaces version (or the test stand-in): grant what is asked
        return 1.0


def _cost(spec: RunSpec, size: tuple[int, int], kind: str, frame_range: tuple[int, int], index: int) -> ChunkCost:
    family = FAMILIES.get(spec.conditioning) if spec.generation else None
    return ChunkCost.of(kind, frame_range, index, spec.steps, spec.guidance, family, size)


def chunk_cost(spec: RunSpec, inp: RunInput, kind: str, run: Any) -> ChunkCost:
    """What the next chunk of ``kind``'s run (None: not started) does, for its duration."""
    ranges = spec.chunking.ranges(len(inp.path)) if run is None else preview._chunk_run(run).ranges
    index = 0 if run is None else len(preview._chunk_run(run).history)
    return _cost(spec, inp.size, kind, ranges[index], index)


def chunk_duration(spec: RunSpec, inp: RunInput, kind: str, run: Any, *args: Any, **kwargs: Any) -> int:
    """Seconds the GPU call of the next chunk asks for (a ZeroGPU ``duration`` callable: the call's arguments)."""
    return COSTS.request(chunk_cost(spec, inp, kind, run))


def check_fits(spec: RunSpec, state: SceneState) -> None:
    """``ValueError`` saying what to change when the run's longest chunk cannot fit one GPU call."""
    if not spec.generation:
        return
    ranges = spec.chunking.ranges(len(state.path))
    costs = [_cost(spec, state.size, "rgb", r, i) for i, r in enumerate(ranges[:2])]  # the pixel memory's are the costliest
    worst = max(costs, key=lambda c: COSTS.predict(c) or 0.0)
    if not COSTS.fits(worst):
        need, limit = COSTS.needed(worst), COSTS.cap * COSTS.granted_per_second
        raise ValueError(
            f"one chunk with {spec.steps} steps{' and guidance' if spec.guidance > 1 else ''} needs about {need:.0f} s of GPU "
            f"({rt.CONDITIONINGS[spec.conditioning]}), more than the {limit:.0f} s one call may take here: use fewer "
            f"steps{', or guidance 1 (half the time)' if spec.guidance > 1 else ''}. Longer paths are fine: each chunk is a call."
        )


# ------------------------------------------------------------------------------------- the run
@dataclass
class ActiveRun:
    """A run as Generate made it: its own copy of the scene and path (later edits are the next run's),
    its settings, both memories chunk by chunk, and where its files go."""

    number: int  # the session's n-th run: its files are under workdir/run{n}/
    spec: RunSpec
    scene: SceneState
    comparison: Comparison
    stop: bool = False  # set by Stop: the run ends after the chunk it is on (both memories)
    note: str = ""  # what happened last, in words (stopped, a chunk failed)
    failed: bool = False  # the last chunk tried did not finish
    files: ResultFiles | None = None  # the newest files of both memories' common chunks
    memory_files: dict[str, dict[str, Path]] = field(default_factory=dict)  # kind -> video, received, mask of its chunks
    parts: dict[str, list[dict[str, Path]]] = field(default_factory=lambda: {m: [] for m in preview.METHODS})  # per chunk
    side_parts: list[Path] = field(default_factory=list)  # the side-by-side video's part of each chunk both memories have
    writes: int = 0  # folders written so far (each update its own)
    revisits: dict[str, RevisitTally] = field(default_factory=dict)  # kind -> frames back at an earlier camera, scored
    caption: str = ""  # the caption of the newest files (what a shared result says)
    running: bool = False  # a chunk of it is being made now (path edits meanwhile are the next run's)


def start_run(session: rt.Session, spec: RunSpec, mode: rt.AppMode) -> ActiveRun:
    """A new run of the session's scene and path as they are now (``ValueError`` without a path, or when
    one chunk cannot fit a GPU call)."""
    from dataclasses import replace

    from mirage.scene import require_path

    require_path(session.scene)
    scene = replace(session.scene)  # the run's own: a later path change replaces the session scene's path, not this
    check_fits(spec, scene)
    session.runs += 1
    kind = "generation" if spec.generation else "readout preview"
    run = ActiveRun(session.runs, spec, scene, Comparison(kind, spec.chunking.overlap, settings=_settings(spec, mode)))
    if scene.raw.depth_source == PLANAR_PRIOR_LABEL or (spec.generation and not mode.depth_pro):  # what every chunk stands on
        run.comparison.settings["geometry"] = preview.PLACEHOLDER_GEOMETRY
    pairs = revisit_pairs(scene.path, scene.scene_depth)
    run.revisits = {m: RevisitTally(pairs) for m in preview.METHODS}
    session.run = run
    return run


@dataclass
class RunUpdate:
    """One step of a run as the page shows it."""

    status: str  # one line (markdown): what runs now, or what happened
    fraction: float  # of the run, for its progress bar
    memory_files: dict[str, dict[str, Path]] | None = None  # kind -> its videos so far (after one of its chunks)
    files: ResultFiles | None = None  # both memories' common chunks: side by side, cache, path (after a pair)
    figures: tuple | None = None  # (timing, cache size, cache growth) after a pair
    caption: str | None = None
    done: bool = False  # the run ended (finished, stopped, or a chunk failed)


def _progress_line(active: ActiveRun, event: Progress) -> tuple[str, float]:
    n = max(active.comparison.planned(), len(active.spec.chunking.ranges(len(active.scene.path))))
    done = sum(active.comparison.chunks_done(m) for m in preview.METHODS)
    part = event.step / event.steps if event.steps else 0.0
    what = f"step {event.step}/{event.steps}" if event.steps else event.stage
    line = f"Chunk {event.chunk + 1} of {n} · {preview.METHOD_LABELS[event.kind]} · {what}"
    return line, min(1.0, (done + part) / (2 * n))


def stream(session: rt.Session, active: ActiveRun, runner, steps: Callable[..., Iterator] | None = None,
           color_by: ColorBy = "latent", alive: Callable[[], bool] = lambda: True) -> Iterator[RunUpdate]:  # fmt: skip
    """Run ``active`` on from where it stands until both memories are done, Stop, a closed page
    (``alive()`` false), or a chunk fails, yielding an update per event (module docstring). ``steps``:
    how a chunk runs (default ``runner.steps``; on ZeroGPU the same generator wrapped as a GPU call)."""
    active.stop, active.note, active.failed, active.running = False, "", False, True
    t0 = time.perf_counter()
    try:
        yield from _stream(session, active, runner, steps, color_by, alive, t0)
    finally:
        active.running = False


def _stream(session: rt.Session, active: ActiveRun, runner, steps, color_by: ColorBy, alive,
            t0: float) -> Iterator[RunUpdate]:  # fmt: skip
    comp, spec = active.comparison, active.spec
    try:
        for event in run_comparison(active.scene, runner, comp, steps=steps, stop=lambda: active.stop or not alive()):
            if isinstance(event, Progress):
                line, fraction = _progress_line(active, event)
                yield RunUpdate(line, fraction)
                continue
            if not isinstance(event, ChunkDone):
                continue
            if spec.generation:  # what this GPU measured sizes the next calls
                COSTS.observe(_cost(spec, active.scene.size, event.kind, event.view.frame_range, event.view.index),
                              event.view.timings)  # fmt: skip
            if not alive():  # the page is gone: nothing more to write for it
                active.note = "**Stopped**: the page was closed."
                yield RunUpdate(active.note, 1.0, done=True)
                return
            yield _after_chunk(session, active, event.kind, color_by)
    except Exception as err:  # noqa: BLE001 - a chunk failed: said on the page, the run stays as it was before it
        kind = comp.next_kind() or preview.METHODS[0]
        chunk = comp.chunks_done(kind) + 1
        reason = getattr(err, "message", None) or str(err) or type(err).__name__  # gr.Error keeps its text in .message
        if reason == "GPU task aborted":  # the platform's words: it killed the call
            reason = "the platform aborted the GPU call: it ran past the duration it asked for, or the GPU was taken back"
        active.failed = True
        active.note = (f"**Chunk {chunk} of the {preview.METHOD_LABELS[kind].lower()} did not finish** ({reason}). Every "
                       f"chunk before it and both memories are as they were; press **Continue** to go on.")  # fmt: skip
        yield RunUpdate(active.note, 1.0, done=True)
        return
    n = min(comp.chunks_done(m) for m in preview.METHODS)
    left = comp.next_kind() is not None
    frames = active.comparison.views["latent"][n - 1].frame_range[1] if n else 0
    active.note = (f"**Stopped** after chunk {n} ({frames} of {len(active.scene.path)} frames): both memories and every "
                   f"file are as they were after it; press **Continue** to go on." if left else
                   f"**Done**: {active.scene.path_label}, {n} chunk(s), {frames} frames, {time.perf_counter() - t0:.0f} s.")  # fmt: skip
    yield RunUpdate(active.note, 1.0, done=True)


def _after_chunk(session: rt.Session, active: ActiveRun, kind: str, color_by: ColorBy) -> RunUpdate:
    """Write what the chunk of ``kind`` adds (its new frames, as parts of each video) and publish that
    memory's videos so far; once both memories have the chunk, also the shared files."""
    comp = active.comparison
    _write_parts(session, active, kind)
    folder = _new_folder(session, active)
    line, fraction = _progress_line(active, Progress(kind, comp.chunks_done(kind) - 1, "done"))
    update = RunUpdate(f"{line}: written", fraction)
    if len({comp.chunks_done(m) for m in preview.METHODS}) == 1:  # a pair: both memories have every chunk
        _write_side_part(session, active)
        _publish(active, folder, update, color_by)
    else:
        active.memory_files[kind] = _join(active.parts[kind], folder, preview.video_names(kind, comp.kind, _placeholder(active)))
        update.memory_files = dict(active.memory_files)
    return update


def rewrite(session: rt.Session, active: ActiveRun, color_by: ColorBy) -> RunUpdate:
    """Every file and figure of ``active`` again, from the parts of the chunks it now has (after Undo)."""
    comp = active.comparison
    for kind in preview.METHODS:  # the parts of chunks taken back go
        active.revisits[kind].truncate(comp.chunks_done(kind))
        for files in active.parts[kind][comp.chunks_done(kind) :]:
            for f in files.values():
                f.unlink(missing_ok=True)
        del active.parts[kind][comp.chunks_done(kind) :]
    pairs = min(comp.chunks_done(m) for m in preview.METHODS)
    for f in active.side_parts[pairs:]:
        f.unlink(missing_ok=True)
    del active.side_parts[pairs:]
    update = RunUpdate(active.note, 1.0, done=True)
    _publish(active, _new_folder(session, active), update, color_by)
    return update


def _write_parts(session: rt.Session, active: ActiveRun, kind: str) -> None:
    """The new frames of ``kind``'s last chunk (a later chunk's first ``overlap`` are the previous one's
    last) as one part of each of its videos: a growing video costs its new frames only."""
    comp = active.comparison
    view = comp.views[kind][-1]
    assert len(active.parts[kind]) == view.index, (kind, len(active.parts[kind]), view.index)
    new = slice(0 if view.index == 0 else comp.overlap, None)
    folder = _parts_folder(session, active)
    names = {k: f"{view.index:03d}_{n}" for k, n in preview.video_names(kind, comp.kind, _placeholder(active)).items()}
    fps = active.spec.fps
    active.revisits[kind].add(view.index, view.frame_range[0] + new.start, view.video[new])
    active.parts[kind].append({"video": video.write_video(folder / names["video"], view.video[new].numpy(), fps),
                               "received": video.write_video(folder / names["received"], view.received[new].numpy(), fps),
                               "mask": video.write_video(folder / names["mask"], video.mask_to_video(view.mask[new]), fps)})  # fmt: skip


def _write_side_part(session: rt.Session, active: ActiveRun) -> None:
    """The side-by-side part of the chunk both memories now have; their frames are released after it
    (everything of the chunk is in files): a long run keeps no frames in memory."""
    comp = active.comparison
    views = {m: comp.views[m][-1] for m in preview.METHODS}
    index = views["latent"].index
    assert len(active.side_parts) == index
    new = slice(0 if index == 0 else comp.overlap, None)
    frames = preview.side_by_side_frames(comp.result(), {m: v.video[new] for m, v in views.items()})  # [3, T, H, 2W + gap]
    name = f"{index:03d}_{preview.side_by_side_name(comp.kind, _placeholder(active))}"
    active.side_parts.append(video.write_video(_parts_folder(session, active) / name, frames, active.spec.fps))
    for v in views.values():
        v.release()


def _publish(active: ActiveRun, folder: Path, update: RunUpdate, color_by: ColorBy) -> None:
    """Both memories' videos of their common chunks, the side-by-side video, the cache and the path,
    into ``folder``, with the figures and caption, on ``update``."""
    comp = active.comparison
    for kind in preview.METHODS:
        active.memory_files[kind] = _join(active.parts[kind], folder, preview.video_names(kind, comp.kind, _placeholder(active)))
    side = video.concat_videos(active.side_parts, folder / preview.side_by_side_name(comp.kind, _placeholder(active)))
    result = comp.result()
    active.files = preview.write_result_files(active.scene, result, folder, active.spec.fps, videos=active.memory_files,
                                              side=side)  # fmt: skip
    update.memory_files = dict(active.memory_files)
    sc = active.scene
    no_depth = 1.0 - float(torch.isfinite(sc.depth).logical_and(sc.depth > 0).float().mean())
    head = (f"**Run {active.number}**: {sc.raw.name} ({sc.raw.depth_source} depth), {sc.path_label}, "
            f"{len(sc.path)} frames at {sc.size[1]}x{sc.size[0]}."
            + (f" The input has no depth on {100 * no_depth:.1f}% of its pixels: nothing is stored there, even in "
               "frame 0." if no_depth > 0.001 else "") + "\n\n")  # fmt: skip
    revisits = {m: t.score() for m, t in active.revisits.items()}
    active.caption = head + preview.result_caption(result, revisits)
    update.files, update.caption = active.files, active.caption
    update.figures = preview.result_figures(active.scene, result, color_by)


def _join(parts: list[dict[str, Path]], folder: Path, names: dict[str, str]) -> dict[str, Path]:
    return {k: video.concat_videos([p[k] for p in parts], folder / names[k]) for k in names}


def _run_folder(session: rt.Session, active: ActiveRun) -> Path:
    """workdir/run{n}: made inside the session's folder, never the folder itself (a closed page's
    folder is gone for good: ``FileNotFoundError``, and the run ends)."""
    folder = session.workdir / f"run{active.number}"
    folder.mkdir(exist_ok=True)
    return folder


def _parts_folder(session: rt.Session, active: ActiveRun) -> Path:
    folder = _run_folder(session, active) / "parts"
    folder.mkdir(exist_ok=True)
    return folder


def _settings(spec: RunSpec, mode: rt.AppMode) -> dict[str, Any]:
    """What the run was, for its caption and labels."""
    if not spec.generation:
        return dict(preview.PreviewRunner().settings)
    branch = mode.branches.get(spec.conditioning)
    return {"conditioning": rt.short_conditioning(spec.conditioning, branch), "branch": None if branch is None else branch.branch,
            "weights": mode.model_path, "device": mode.device, "seed": spec.seed, "steps": spec.steps,
            "guidance": spec.guidance, **({"readouts": rt.readouts_label(spec.conditioning, spec.readouts)} if branch else {})}  # fmt: skip


def _placeholder(active: ActiveRun) -> bool:  # the run stands on the planar prior: its files say so
    return active.comparison.settings.get("geometry") == preview.PLACEHOLDER_GEOMETRY


UPDATE_FILES_GRACE_S = 60.0  # an update's files outlive the next update by this long: a slow client still fetches them


def _new_folder(session: rt.Session, active: ActiveRun) -> Path:
    """A folder of its own for this update's files (workdir/run{n}/{k}). Folders of older updates go
    once two newer ones exist and they are ``UPDATE_FILES_GRACE_S`` old: a page (or API client) that
    is still fetching an update's videos when the next arrives finds them, and a long run keeps only
    its last minute of updates on disk."""
    base = _run_folder(session, active)
    active.writes += 1
    folder = base / f"{active.writes:03d}"
    folder.mkdir(exist_ok=True)
    old = time.time() - UPDATE_FILES_GRACE_S
    for stale in base.iterdir():
        if stale.is_dir() and stale.name.isdigit() and int(stale.name) <= active.writes - 2 and stale.stat().st_mtime < old:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def growth_figure(session: rt.Session, color_by: ColorBy):
    """The cache growth figure of the session's run, recoloured (None without a finished pair)."""
    active = session.run
    if active is None or active.files is None:
        return None
    result = active.comparison.result()
    return preview.result_figures(active.scene, result, color_by)[2]


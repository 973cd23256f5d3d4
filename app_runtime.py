"""What the Gradio app needs beyond the library: which mode this process runs in (weights, device),
per-session folders, UI value formats (depth-source labels, image-editor values, frame-count fields),
the loaded pipeline, ZeroGPU durations, and turning a run into what the page shows.

``app.py`` wires widgets to these and to ``mirage``; nothing in ``mirage/`` knows about Gradio.

Settings (environment variables):

* ``MIRAGE_MODEL_PATH``: a local Wan2.2-TI2V-5B-Diffusers folder (else the Hugging Face cache is searched);
* ``MIRAGE_DEVICE``: ``cuda`` or ``cpu`` for generation (default: ``cuda`` when available; ``cpu`` runs
  the same code, which is practical with small checkpoints only);
* ``MIRAGE_OFFLINE=1``: offline readout preview even when weights are present;
* ``MIRAGE_APP_TMP``: where session folders go (default: a fresh temporary folder);
* ``MIRAGE_ZEROGPU_MAX_SECONDS``: the longest GPU call a ZeroGPU Space may request (default 120).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirage import weights
from mirage.codecs import WAN22_MODEL_ID
from mirage.depth import weights_available
from mirage.frames import check_num_frames, chunk_ranges
from mirage.images import image_to_uint8
from mirage.pipeline import DEFAULTS, WAN22_LAYOUT
from mirage.preview import ResultFiles, RunResult, result_caption, result_figures, write_result_files
from mirage.scene import ColorBy, SceneState

MODEL_PATH_ENV = "MIRAGE_MODEL_PATH"
DEVICE_ENV = "MIRAGE_DEVICE"
OFFLINE_ENV = "MIRAGE_OFFLINE"
ZEROGPU_MAX_ENV = "MIRAGE_ZEROGPU_MAX_SECONDS"
FRAME_CHOICES = (33, 65, 97, 129, 161)  # 4N+1 path lengths offered in the UI
MAX_FRAMES = 161  # longest path accepted (5 chunks)
FPS = 16  # playback rate of the offline previews (the paper's); generation uses its mode's default
DEPTH_CHOICES: dict[str, str] = {  # UI label -> mirage.scene.DepthChoice
    "Automatic (uploaded map > ground truth > Depth Pro > planar prior)": "auto",
    "Depth Pro (needs its weights)": "depth-pro",
    "Uploaded depth map (.npy metres / 16-bit PNG mm)": "upload",
    "Example's ground truth": "ground-truth",
    "Planar prior (placeholder geometry, NOT an estimate)": "planar-prior",
}


# ----------------------------------------------------------------------------------------- mode
def find_model_weights(cache_dir: str | Path | None = None) -> tuple[str | None, str]:
    """(folder of a complete Wan2.2-TI2V-5B diffusers checkpoint or None, one line saying where we looked).

    ``$MIRAGE_MODEL_PATH`` when set, else the Hugging Face cache entry of ``WAN22_MODEL_ID``. Never
    touches the network."""
    env = os.environ.get(MODEL_PATH_ENV, "").strip()
    if env:
        folder = Path(env).expanduser()
        absent = weights.missing(folder, WAN22_LAYOUT) if folder.is_dir() else ["the folder itself"]
        why = f"${MODEL_PATH_ENV}={env!r}" + (f" lacks {', '.join(absent)}" if absent else "")
        return (str(folder) if not absent else None), why
    found = weights.find_local(WAN22_MODEL_ID, WAN22_LAYOUT, cache_dir)
    if found is not None:
        return str(found), f"HF cache ({found})"
    return None, f"no complete {WAN22_MODEL_ID} in the HF cache and ${MODEL_PATH_ENV} is unset"


def _zero_gpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


@dataclass(frozen=True)
class AppMode:
    """What this process can run."""

    generation: bool  # Wan2.2 weights and a device found: Generate runs the diffusion pipeline
    model_path: str | None  # folder of the Wan2.2 checkpoint, when found
    device: str  # "cuda" or "cpu": where generation runs
    zero_gpu: bool  # a Hugging Face ZeroGPU Space: GPU calls are scheduled per call
    depth_pro: bool  # Depth Pro weights found locally
    why: str  # one line: where the weights were looked for / why generation is off

    @property
    def name(self) -> str:
        return f"generation (Wan2.2, {self.device})" if self.generation else "offline readout preview"

    def banner(self) -> str:
        """Markdown for the top of the page: the active mode, the weights and device, what needs weights."""
        if self.generation:
            gen = (
                f"**Mode: generation** with Wan2.2-TI2V-5B from `{self.model_path}` on **{self.device}**"
                f"{' (ZeroGPU)' if self.zero_gpu else ''}: Generate runs the diffusion model once with each memory, "
                "same seed and settings."
            )
        else:
            gen = (
                "**Mode: offline readout preview** (no generative model). Generate shows what each memory holds along the "
                "path, decoded with the weight-free offline codec; the stage timings and cache sizes are real. Generation "
                f"needs the Wan2.2-TI2V-5B weights ({self.why}); set ${MODEL_PATH_ENV} or fill the HF cache, and "
                f"${DEVICE_ENV}=cpu to run it without a GPU."
            )
        depth = (
            "Depth Pro weights found: automatic depth uses Depth Pro."
            if self.depth_pro
            else "Depth Pro weights not found: uploads use the **planar prior** (placeholder geometry, not an estimate) "
            "unless you upload a depth map; the examples use their ground-truth depth."
        )
        return f"{gen}\n\n{depth}"


def detect_mode(cache_dir: str | Path | None = None) -> AppMode:
    """Look for weights and a device (no network). ``MIRAGE_OFFLINE=1`` forces offline mode;
    ``MIRAGE_DEVICE`` picks the device (``ValueError`` for anything but cuda/cpu, or cuda without one)."""
    folder, why = find_model_weights(cache_dir)
    zero = _zero_gpu()
    requested = os.environ.get(DEVICE_ENV, "").strip().lower()
    if requested not in ("", "cuda", "cpu"):
        raise ValueError(f"${DEVICE_ENV} must be 'cuda' or 'cpu', got {requested!r}")
    cuda = torch.cuda.is_available() or zero
    device = requested or ("cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise ValueError(f"${DEVICE_ENV}=cuda but no CUDA device is available")
    generation = bool(folder) and (device == "cpu" and requested == "cpu" or device == "cuda")
    if folder and not generation:
        why = f"weights found at {folder}, but no CUDA device (set ${DEVICE_ENV}=cpu to generate on the CPU)"
    if os.environ.get(OFFLINE_ENV, "").strip() in ("1", "true", "True"):
        generation, why = False, f"${OFFLINE_ENV} is set"
    return AppMode(generation, folder, device, zero, weights_available("depth-pro"), why)


# ----------------------------------------------------------------------------- session temp dirs
class SessionDirs:
    """One temporary folder per session under ``root``, created on first use and removed when the
    session ends. Without ``root`` a fresh temp folder is made (and removed at exit); a given root
    is kept, only the session folders made in it are removed."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.owned = root is None  # True: root was made here and goes at exit
        self.root = Path(tempfile.mkdtemp(prefix="mirage-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        atexit.register(self.remove_all)

    def get(self, session: str) -> Path:
        if not session or any(c in session for c in "/\\."):
            raise ValueError(f"session id must be a plain name, got {session!r}")
        with self._lock:
            folder = self.root / session
            folder.mkdir(parents=True, exist_ok=True)
            self._sessions.add(session)
            return folder

    def remove(self, session: str | None) -> bool:
        """Delete the session's folder; True if it existed."""
        if not session or session not in self._sessions:
            return False
        with self._lock:
            folder = self.root / session
            existed = folder.is_dir()
            shutil.rmtree(folder, ignore_errors=True)
            self._sessions.discard(session)
        return existed

    def remove_all(self) -> None:
        for session in list(self._sessions):
            self.remove(session)
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------------- UI formats
def editor_value(state: SceneState) -> dict:
    """The ``gr.ImageEditor`` value showing the working image with no stroke."""
    return {"background": image_to_uint8(state.image), "layers": [], "composite": None}


def check_frame_count(num_frames: Any, max_frames: int = MAX_FRAMES) -> int:
    """A frame-count field's value as an int: ``4N + 1``, at least 5 and at most ``max_frames``."""
    try:
        n = int(num_frames) if isinstance(num_frames, (int, np.integer)) else int(str(num_frames).strip())
    except ValueError:
        raise ValueError(f"frame count must be a whole number like 33, 65 or 97, got {num_frames!r}") from None
    if n > max_frames:
        raise ValueError(f"too many frames: {n} (at most {max_frames} in this mode, i.e. {(max_frames - 1) // 32} chunks)")
    return check_num_frames(n, min_latent_frames=2)


# ------------------------------------------------------------------------------------ generation
_PIPELINE: dict = {}  # the loaded MiragePipeline, shared by sessions
_PIPELINE_LOCK = threading.Lock()


def load_pipeline(model_path: str, device: str):
    """``MiragePipeline`` from ``model_path`` on ``device``, loaded once per process (bf16 transformer
    and text encoder on CUDA, float32 on the CPU; the VAE in float32). Memory updates need depth:
    Depth Pro when its weights are cached, else the (labelled) planar prior."""
    from mirage.pipeline import MiragePipeline

    with _PIPELINE_LOCK:
        if _PIPELINE.get("key") != (model_path, device):
            depth = "depth-pro" if weights_available("depth-pro") else "planar-prior"
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            pipe = MiragePipeline.from_pretrained(model_path, torch_dtype=dtype, depth_backend=depth, local_files_only=True)
            _PIPELINE.update(key=(model_path, device), pipe=pipe.to(device), depth=depth)
        return _PIPELINE["pipe"]


def zerogpu_max_seconds() -> int:
    return int(os.environ.get(ZEROGPU_MAX_ENV, "120"))


def gpu_seconds(num_frames: int, steps: int, guidance_scale: float) -> int:
    """Seconds to reserve on a ZeroGPU for one memory's run at 704x1280: 0.27 s per transformer call
    (two per step with guidance) and 5 s per chunk for decode, depth and the memory (both measured
    on an H100, ``benchmarks/results/pipeline_resident_cuda_h100.md``), plus 20 s for the call's
    start; a ZeroGPU slice of an H200 is not slower."""
    calls = 2 if guidance_scale > 1 else 1
    chunks = len(chunk_ranges(int(num_frames)))
    return int(math.ceil(20 + chunks * (0.27 * calls * int(steps) + 5)))


def check_gpu_budget(num_frames: int, steps: int, guidance_scale: float) -> int:
    """The duration of one memory's GPU call, or ``ValueError`` saying what to shorten when it
    exceeds what a ZeroGPU Space may request."""
    need, cap = gpu_seconds(num_frames, steps, guidance_scale), zerogpu_max_seconds()
    if need > cap:
        raise ValueError(
            f"{num_frames} frames with {steps} steps{' and guidance' if guidance_scale > 1 else ''} need about {need} s of GPU "
            f"per memory, more than the {cap} s this Space may request: use fewer frames or steps"
            f"{', or guidance 1' if guidance_scale > 1 else ''}."
        )
    return need


def generation_defaults() -> dict[str, Any]:
    """The training-free defaults the UI starts from (``mirage.pipeline.DEFAULTS``)."""
    d = DEFAULTS["training-free"]
    return {"steps": d.num_inference_steps, "guidance": d.guidance_scale, "negative_prompt": d.negative_prompt, "fps": d.fps}


# ------------------------------------------------------------------------------------- results
@dataclass
class RunOutputs:
    """Everything the app shows after a run."""

    files: ResultFiles  # videos, cache and path files
    figures: tuple  # (timing, cache size, cache growth) plotly figures
    caption: str  # markdown under the videos


def finish_run(state: SceneState, result: RunResult, folder: Path, color_by: ColorBy = "latent", fps: float = FPS) -> RunOutputs:
    """Write the files and figures of ``result``; keep a slim copy (no videos) in ``state.result``
    so that the colour toggle can redraw the growth figure without holding the videos."""
    files = write_result_files(state, result, folder, fps)
    out = RunOutputs(files, result_figures(state, result, color_by), result_caption(result))
    for run in result.methods.values():
        run.video = run.received = run.mask = None
        run.memory = run.memory if run is result.methods["latent"] else None
    state.result = result
    return out

"""What the Gradio app needs beyond the library: which mode this process runs in (weights, device),
per-session folders, UI value formats (depth-source labels, image-editor values, frame-count fields),
the loaded pipeline, ZeroGPU durations, and turning a run into what the page shows.

``app.py`` wires widgets to these and to ``mirage``; nothing in ``mirage/`` knows about Gradio.

Settings (environment variables):

* ``MIRAGE_MODEL_PATH``: a local Wan2.2-TI2V-5B-Diffusers folder (else the Hugging Face cache is searched);
* ``MIRAGE_SPATIA_BRANCH`` / ``MIRAGE_SPATIA_LORA``: Spatia's ``step-8500.safetensors`` and
  ``lora_weights_10000.safetensors`` (files, or a folder holding both; else the HF cache of
  ``Jinjing713/Spatia``); ``MIRAGE_MIRAGE_BRANCH`` / ``MIRAGE_MIRAGE_LORA``: a branch and LoRA trained
  with the official Mirage code (``vace.safetensors``, ``lora.safetensors``; the LoRA is optional).
  A branch found is offered as a conditioning choice in generation mode;
* ``MIRAGE_DEVICE``: ``cuda`` or ``cpu`` for generation (default: ``cuda`` when available; ``cpu`` runs
  the same code, which is practical with small checkpoints only);
* ``MIRAGE_OFFLINE=1``: offline readout preview even when weights are present;
* ``MIRAGE_ZEROGPU_MAX_SECONDS``: the longest GPU call a ZeroGPU Space may request (default 120);
* ``MIRAGE_AOT``: ``auto`` (default: on ZeroGPU with CUDA), ``on`` or ``off``: compile the transformer's
  block ahead of time at start-up (``mirage.aot``) for the sizes in ``MIRAGE_AOT_SIZES`` (``HxW,...``,
  default ``704x1280``), kept in ``MIRAGE_AOT_CACHE`` (default ``~/.cache/mirage/aot``);
* ``MIRAGE_UPLOAD_TTL``: seconds after which an upload that no session handed to a handler is removed
  (default 600; what a browser's image editor uploads by itself, or a file chosen but never loaded).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mirage import checkpoints, paths, scene, weights
from mirage.codecs import WAN22_MODEL_ID
from mirage.depth import weights_available
from mirage.examples import EXAMPLES
from mirage.families import DEFAULTS, FAMILIES, READOUTS, TRAINING_FREE_MODES
from mirage.frames import Chunking, check_num_frames
from mirage.images import image_to_uint8
from mirage.pipeline import WAN22_LAYOUT
from mirage.scene import PathRecipe, SceneState

MODEL_PATH_ENV = "MIRAGE_MODEL_PATH"
DEVICE_ENV = "MIRAGE_DEVICE"
OFFLINE_ENV = "MIRAGE_OFFLINE"
ZEROGPU_MAX_ENV = "MIRAGE_ZEROGPU_MAX_SECONDS"
FRAME_CHOICES = (33, 65, 97, 129, 161, 225, 321)  # 4N+1 path lengths offered in the UI
MAX_FRAMES = 321  # longest path Generate accepts at once (10 chunks); Continue adds to it
MAX_TOTAL_FRAMES = 641  # longest a run may grow with Continue (20 chunks)
FPS = 16  # playback rate of the offline previews (the paper's); generation uses its mode's default
COLOR_BY_LABELS = {"latent": "latent features (PCA)", "image": "image colour"}  # mirage.scene.ColorBy -> UI label
assert tuple(COLOR_BY_LABELS) == scene.COLOR_BY
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


BRANCH_ENV = {k: (f"MIRAGE_{k.upper()}_BRANCH", f"MIRAGE_{k.upper()}_LORA") for k in FAMILIES}  # settings per family


@dataclass(frozen=True)
class BranchFiles:
    """A trained side branch found on this machine."""

    kind: str  # "mirage" or "spatia"
    branch: str  # the branch file
    lora: str | None  # its LoRA file (None: a branch trained without one)
    where: str  # one line: where it was found


def find_branches(cache_dir: str | Path | None = None) -> tuple[dict[str, BranchFiles], list[str]]:
    """Trained branches on this machine (no network): ``$MIRAGE_<KIND>_BRANCH`` / ``_LORA`` (files, or
    folders holding the family's file names), else Spatia's public files in the HF cache. Returns the
    branches found and one line per family that was not (why)."""
    found, missing = {}, []
    for kind, (branch_env, lora_env) in BRANCH_ENV.items():
        family = FAMILIES[kind]
        branch_name, lora_name = family.branch_file, family.lora_file
        env_branch, env_lora = os.environ.get(branch_env, "").strip(), os.environ.get(lora_env, "").strip()
        if env_branch:
            branch = checkpoints.find_checkpoint(env_branch, branch_name)
            lora_source = env_lora or (env_branch if Path(env_branch).is_dir() else str(Path(env_branch).parent))
            lora = checkpoints.find_checkpoint(lora_source, lora_name)
            where = f"${branch_env}"
        elif family.weights_repo is not None:
            branch = checkpoints.find_checkpoint(family.weights_repo, branch_name, cache_dir)
            lora = checkpoints.find_checkpoint(family.weights_repo, lora_name, cache_dir)
            where = f"HF cache ({family.weights_repo})"
        else:
            missing.append(f"{kind}: ${branch_env} is unset ({family.code} publishes no weights)")
            continue
        if branch is None:
            missing.append(f"{kind}: no {branch_name} at {where}")
        elif lora is None and (family.weights_repo is not None or env_lora):
            missing.append(f"{kind}: {branch} found but no {lora_name} beside it or at ${lora_env}")
        else:
            found[kind] = BranchFiles(kind, str(branch), None if lora is None else str(lora), where)
    return found, missing


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
    branches: dict[str, BranchFiles] = field(default_factory=dict)  # trained branches found
    branches_missing: tuple[str, ...] = ()  # why the others were not

    @property
    def name(self) -> str:
        return f"generation (Wan2.2, {self.device})" if self.generation else "offline readout preview"

    def headline(self) -> str:
        """One line for the top of the page: what Generate does here (the rest is in ``banner``)."""
        if self.generation:
            return (f"**Generation** with Wan2.2-TI2V-5B on **{self.device}**{' (ZeroGPU)' if self.zero_gpu else ''}: both "
                    "memories, same seed and settings.")  # fmt: skip
        return ("**Offline readout preview** (no generative model, no weights): Generate shows what each memory holds along "
                "the path; the timings and cache sizes are real.")

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
        found = ", ".join(f"{CONDITIONINGS[k]} from `{b.branch}`" for k, b in self.branches.items())
        gen += (f"\n\nTrained conditioning offered: {found}." if found and self.generation else
                f"\n\nTrained branches found ({found}) run with the Wan2.2 weights." if found else
                "\n\nNo trained branch found, so conditioning is training-free (" + "; ".join(self.branches_missing) + ").")
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
    branches, missing = find_branches(cache_dir)
    return AppMode(generation, folder, device, zero, weights_available("depth-pro"), why, branches, tuple(missing))


# ------------------------------------------------------------------------------ weights on a Space
SPACE_ENV = "SPACE_ID"  # Hugging Face sets it in a Space's container
README = Path(__file__).with_name("README.md")


def on_space() -> bool:
    return bool(os.environ.get(SPACE_ENV, "").strip())


def preload_files(readme: Path = README) -> list[tuple[str, list[str]]]:
    """``(repo_id, files)`` of the README front matter's ``preload_from_hub``: what a Space downloads at
    build time (the one list of the weights the app loads)."""
    import yaml

    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{readme.name} has no front matter")
    front = yaml.safe_load(text.split("---\n", 2)[1])
    out = []
    for entry in front.get("preload_from_hub") or []:
        repo, _, rest = str(entry).partition(" ")
        out.append((repo, rest.split()[0].split(",") if rest.strip() else []))
    return out


def ensure_weights(cache_dir: str | Path | None = None, log=print) -> str:
    """On a Space, download what ``preload_from_hub`` lists and the HF cache lacks (the build normally
    has it all): in the main process, before any GPU call, each file's progress in the log. Off a
    Space nothing is downloaded. Returns one line for the banner."""
    if not on_space():
        return ""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    missing = [(repo, f) for repo, files in preload_files() for f in files
               if not isinstance(try_to_load_from_cache(repo, f, cache_dir=cache_dir), str)]  # fmt: skip
    if not missing:
        return "Weights: all preloaded with the Space."
    t0, done = time.time(), 0
    log(f"[mirage] downloading {len(missing)} weight files the Space's preload did not bring")
    for i, (repo, f) in enumerate(missing, start=1):
        log(f"[mirage] weights {i}/{len(missing)}: {repo} {f}")
        try:
            hf_hub_download(repo, f, cache_dir=cache_dir)
            done += 1
        except Exception as err:  # noqa: BLE001 - said on the page; the app runs with what it has
            log(f"[mirage] could not download {repo} {f}: {err}")
    return f"Weights: {done} of {len(missing)} missing files downloaded at start-up in {time.time() - t0:.0f} s."


# ----------------------------------------------------------------------------- session temp dirs
class SharedResults:
    """Results a visitor shared: the side-by-side video (the file to share: both memories, labelled) and
    the caption, copied out of the session's folder (which goes with the session) into ``root/<id>/``,
    where a link (``?result=<id>``) finds them; the newest ``keep`` are kept. The id is the first 12
    hex digits of the SHA-1 of the video's bytes: sharing one result twice gives one link."""

    def __init__(self, root: str | Path, keep: int = 200) -> None:
        self.root, self.keep = Path(root), int(keep)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def share(self, side_by_side: str | Path, caption: str) -> str:
        data = Path(side_by_side).read_bytes()
        key = hashlib.sha1(data).hexdigest()[:12]
        with self._lock:
            folder = self.root / key
            folder.mkdir(exist_ok=True)
            (folder / Path(side_by_side).name).write_bytes(data)
            (folder / "caption.md").write_text(caption, encoding="utf-8")
            os.utime(folder)  # the newest share
            for old in sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return key

    def get(self, key: str) -> tuple[Path, str] | None:
        """The shared video and caption of ``key`` (None: unknown, or gone to make room)."""
        if not (isinstance(key, str) and len(key) == 12 and all(c in "0123456789abcdef" for c in key)):
            return None
        folder = self.root / key
        videos = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
        if not videos or not (folder / "caption.md").is_file():
            return None
        return videos[0], (folder / "caption.md").read_text(encoding="utf-8")


class SessionDirs:
    """Everything a session leaves on disk, removed when the session ends: its folder under ``root``
    (created on first use) and the uploads it handed in (``track``). An upload that several sessions
    handed in (Gradio stores uploads by content) goes with the last of them. Without ``root`` a
    fresh temp folder is made (and removed at exit); a given root is kept, only the session folders
    made in it are removed. Put ``root`` inside Gradio's cache folder: results returned from there are
    served in place, not copied into the cache (where nothing would remove them with the session)."""

    def __init__(self, root: str | Path | None = None, grace_s: float = 10.0) -> None:
        self.owned = root is None  # True: root was made here and goes at exit
        # An upload a closed page handed in goes only after this many seconds unclaimed: Gradio keeps uploads
        # of the same content at one path, and another visitor may have sent the same file whose handler
        # has not run yet (so holds no claim)
        self.grace_s = float(grace_s)
        self.root = Path(tempfile.mkdtemp(prefix="mirage-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: set[str] = set()
        self._ended: set[str] = set()  # sessions removed: nothing more is made for them
        self._streaming: dict[str, int] = {}  # session -> runs sending results from its folder right now
        self._deferred: set[str] = set()  # ended sessions whose files go when their last run has sent its last result
        self._uploads: dict[Path, set[str]] = {}  # upload -> the sessions that handed it in
        self._lock = threading.Lock()
        atexit.register(self.remove_all)

    def _check(self, session: str) -> str:
        if not session or any(c in session for c in "/\\."):
            raise ValueError(f"session id must be a plain name, got {session!r}")
        if session in self._ended:
            raise ValueError("this page was closed: reload it to start again")
        return session

    def get(self, session: str) -> Path:
        with self._lock:
            folder = self.root / self._check(session)
            folder.mkdir(parents=True, exist_ok=True)
            self._sessions.add(session)
            return folder

    @contextlib.contextmanager
    def streaming(self, session: str) -> Iterator[None]:
        """While a run sends results from the session's folder, ``remove`` refuses the session at once
        but leaves its files until the run has sent its last result (Gradio reads each result's files
        after the handler yields it)."""
        with self._lock:
            self._streaming[session] = self._streaming.get(session, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._streaming[session] = self._streaming[session] - 1
                if not left:
                    del self._streaming[session]
                deferred = not left and session in self._deferred
            if deferred:
                self._deferred.discard(session)
                self._sessions.add(session)
                self.remove(session)

    def busy(self, session: str | None) -> bool:
        """Whether a run of ``session`` is sending results now (its files must stay)."""
        return bool(session) and session in self._streaming

    def alive(self, session: str | None) -> bool:
        """False once ``session`` was removed (its page closed): a run of it ends after its chunk."""
        return bool(session) and session not in self._ended

    def track(self, session: str, *files: str | Path | None) -> None:
        """Note uploads (paths in Gradio's cache) that ``session`` handed in; ``None`` and anything
        inside ``root`` (session folders are removed as folders) are skipped."""
        with self._lock:
            self._check(session)
            self._sessions.add(session)
            for f in files:
                if f is not None and self.root.resolve() not in Path(f).resolve().parents:
                    self._uploads.setdefault(Path(f).resolve(), set()).add(session)

    def remove(self, session: str | None) -> bool:
        """Delete the session's folder, refuse the session from now on, and delete the uploads it handed in
        that no session claims ``grace_s`` seconds later (``track``); True if it had anything."""
        if not session or session not in self._sessions:
            return False
        with self._lock:
            if session in self._streaming:  # refused from now on; the files go when its run has sent its last result
                self._ended.add(session)
                self._deferred.add(session)
                return True
            folder = self.root / session
            existed = folder.is_dir()
            shutil.rmtree(folder, ignore_errors=True)
            self._sessions.discard(session)
            self._ended.add(session)
            released = []
            for upload, holders in list(self._uploads.items()):
                holders.discard(session)
                if holders:
                    continue
                del self._uploads[upload]
                released.append(upload)
                existed = True
        if released:
            timer = threading.Timer(self.grace_s, self._drop_unclaimed, args=(released,))
            timer.daemon = True
            timer.start()
        return existed

    def _drop_unclaimed(self, uploads: list[Path]) -> None:
        with self._lock:
            for upload in uploads:
                if upload not in self._uploads:  # claimed by another session meanwhile: kept
                    _unlink_upload(upload)

    def sweep(self, uploads, max_age_s: float) -> list[Path]:
        """Delete ``uploads`` (paths in Gradio's cache) that no live session handed in and that are
        older than ``max_age_s``: what a browser uploads by itself (the image editor sends its
        background whenever it shows a new one) and no handler ever sees. Returns what went."""
        now, root = time.time(), self.root.resolve()
        old = []
        for f in map(Path, list(uploads)):  # stat outside the lock: handlers keep going
            try:
                if root not in f.resolve().parents and now - f.stat().st_mtime >= max_age_s:
                    old.append(f)
            except OSError:  # gone already
                continue
        gone = []
        with self._lock:
            for f in old:
                if f.resolve() not in self._uploads and _unlink_upload(f):  # claimed meanwhile: kept
                    gone.append(f)
        return gone

    def remove_all(self) -> None:
        """At exit: every session's folder and every upload handed in, now."""
        uploads = list(self._uploads)
        for session in list(self._sessions):
            self.remove(session)
        self._drop_unclaimed(uploads)
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


UPLOAD_TTL_ENV = "MIRAGE_UPLOAD_TTL"


RELEASE_AFTER_ENV = "MIRAGE_RELEASE_AFTER"


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"${name} must be a positive number of seconds, got {raw!r}")
    return value


def upload_ttl() -> float:
    """``$MIRAGE_UPLOAD_TTL`` in seconds (default 600): how long an unclaimed upload is kept."""
    return _seconds(UPLOAD_TTL_ENV, 600)


def release_after() -> float:
    """``$MIRAGE_RELEASE_AFTER`` in seconds (default 15): how long a closed page's session waits for
    the page to come back before its state and files go (and a run of it stops after its chunk)."""
    return _seconds(RELEASE_AFTER_ENV, 15)


def _unlink_upload(upload: Path) -> bool:
    """Delete an upload and the folder Gradio made for it (one per upload); False if it was gone."""
    try:
        upload.unlink()
    except OSError:
        return False
    try:
        upload.parent.rmdir()
    except OSError:  # not empty
        pass
    return True


def trim_memory() -> None:
    """Give freed heap memory back to the operating system (glibc keeps freed pages of large frees in
    its arenas; a closed session's tensors would otherwise stay in the server's resident size)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ----------------------------------------------------------------------------------- UI formats
def working_size_label(long_side: int) -> str:
    """A working size as the page names it: the long side, and whose size a GPU size is."""
    if long_side not in scene.GPU_SIZES:
        return str(long_side)
    size = (scene.GPU_SIZES[long_side], long_side)
    whose = "Wan2.2's" if size == scene.FULL_SIZE else " / ".join(f.label for f in FAMILIES.values() if f.defaults.size == size) + "'s"
    return f"{long_side} ({size[0]}x{long_side}, {whose} size)"


def editor_value(state: SceneState, folder: Path) -> dict:
    """The ``gr.ImageEditor`` value showing the working image with no stroke, its background written
    as a PNG into the session's ``folder`` (so it goes with the session)."""
    from PIL import Image

    pixels = image_to_uint8(state.image)  # [H, W, 3]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scene_{hashlib.sha1(pixels.tobytes()).hexdigest()[:12]}.png"  # a new name per image: no stale cache
    Image.fromarray(pixels).save(path)
    return {"background": str(path), "layers": [], "composite": None}


def add_keyframe_row(rows: Any) -> list[list[Any]]:
    """The keyframe table with one more row, a copy of its last (edited from there), up to ``paths.MAX_KEYFRAMES``."""
    rows = [list(r) for r in (rows.values.tolist() if hasattr(rows, "values") else rows or [])]
    if len(rows) >= paths.MAX_KEYFRAMES:
        return rows
    return rows + [list(rows[-1]) if rows else [0.0] * len(paths.KEYFRAME_COLUMNS)]


def remove_keyframe_row(rows: Any) -> list[list[Any]]:
    """The keyframe table without its last row, keeping at least two (the source and one more)."""
    rows = [list(r) for r in (rows.values.tolist() if hasattr(rows, "values") else rows or [])]
    return rows[:-1] if len(rows) > 2 else rows


def check_frame_count(num_frames: Any, max_frames: int = MAX_FRAMES) -> int:
    """A frame-count field's value as an int: ``4N + 1``, at least 5 and at most ``max_frames``."""
    try:
        n = int(num_frames) if isinstance(num_frames, (int, np.integer)) else int(str(num_frames).strip())
    except ValueError:
        raise ValueError(f"frame count must be a whole number like 33, 65 or 97, got {num_frames!r}") from None
    if n > max_frames:
        chunks = len(Chunking().ranges(max_frames))
        raise ValueError(f"too many frames: {n} (at most {max_frames} in this mode, i.e. {chunks} chunks)")
    return check_num_frames(n, min_latent_frames=2)


# ----------------------------------------------------------------------------- what the page says
def preset_description(preset: str) -> str:
    """The line under the preset control: what it does and what its amount measures."""
    info = paths.PRESETS[preset]
    return f"*{preset}*: {info.description}. Amount in {info.unit} (default {info.default:g})."


def active_path_line(state: SceneState | None) -> str:
    """The line beside Generate: the path Generate runs, however it was made."""
    if state is None or state.path is None:
        return "**Active path:** none yet: make one with a preset, a stroke, keyframes or an import."
    return f"**Active path** (Generate runs this): {state.path_label}, {len(state.path)} frames."


@dataclass(frozen=True)
class PathControls:
    """The path controls' values that match the scene (None: leave that control as it is)."""

    frames: int | None  # the active path's length
    preset: str | None  # the last preset path accepted, and its amount
    amount: float | None
    depth_fraction: float | None  # the last stroke path accepted: how far, and where it looks
    look: str | None
    depth_limit: float | None = None  # how far that stroke may go (the slider's top)
    table: list[list[float]] | None = None  # the last keyframe table accepted (the scene's default rows before one)


def path_controls(session: "Session") -> PathControls:
    """What the path controls must show: the active path's frame count, and the settings of the last
    preset and stroke paths accepted. After a refused value the controls go back to these, so none of
    them shows a value that was not applied."""
    state = session.scene
    if state is None or state.path is None:
        return PathControls(None, None, None, None, None)
    p, st, k = session.last_preset, session.last_stroke, session.last_keyframes
    amount = None if p is None else float(paths.PRESETS[p.preset].default if p.amount is None else p.amount)
    table = scene.default_keyframe_rows(state) if k is None else [[round(v, 4) for v in row] for row in paths.keyframe_table_rows(k.keyframes)]
    return PathControls(len(state.path), None if p is None else p.preset, amount,
                        None if st is None else st.depth_fraction, None if st is None else st.look,
                        None if st is None else st.depth_limit, table)  # fmt: skip


def example_captions(depth_pro: bool) -> list[str]:
    """One short, honest caption per example: where its depth comes from on this machine."""
    depth = {"motorcycle": "real photo, ground-truth depth", "synthetic-room": "rendered, exact depth",
             "motorcycle-no-depth": "depth: Depth Pro" if depth_pro else "depth: planar prior (no Depth Pro weights)"}  # fmt: skip
    return [f"{s.name} · {depth.get(s.name, s.description)}" for s in EXAMPLES]


def example_notes(depth_pro: bool) -> str:
    """Markdown under the examples: each one's description, and what runs without weights."""
    lines = [f"- **{s.name}**: {s.description}." for s in EXAMPLES]
    if not depth_pro:
        lines.append("- Without Depth Pro weights, *motorcycle-no-depth* runs on the **planar prior**: a ground plane and a "
                     "back wall, not the scene's depth; its memories and videos show that placeholder geometry.")  # fmt: skip
    return "\n".join(lines)


def example_gallery(depth_pro: bool) -> list[tuple[np.ndarray, str]]:
    """(thumbnail uint8 [h, w, 3], caption) per example: each thumbnail shows the image and the depth
    it starts from, so the examples look as different as they are (shared by every session)."""
    from mirage.examples import example_thumbnail

    estimated = "Depth Pro" if depth_pro else "planar prior"
    return [(example_thumbnail(s, estimated=estimated), caption) for s, caption in zip(EXAMPLES, example_captions(depth_pro))]


# ------------------------------------------------------------------------------------ generation
TRAINING_FREE_CHOICES = tuple(m for m in TRAINING_FREE_MODES if m != "off")  # "off" reads the memory but imposes nothing
_TRAINING_FREE_LABELS = {"replace": "readout noised into the latent", "context": "visible tokens clean, timestep 0"}
CONDITIONINGS: dict[str, str] = {  # value -> label; the trained ones are offered when their files are found
    **{m: f"Training-free: {m} ({_TRAINING_FREE_LABELS[m]})" for m in TRAINING_FREE_CHOICES},
    **{k: f"Trained branch: {f.label} " + (f"({f.weights_repo}) + LoRA" if f.weights_repo else "(official code, your checkpoint)")
       for k, f in FAMILIES.items()},
}


def short_conditioning(conditioning: str, branch: BranchFiles | None = None) -> str:
    """A few words for labels and captions: "training-free replace", "Spatia branch + LoRA", ..."""
    if conditioning in TRAINING_FREE_CHOICES:
        return f"training-free {conditioning}"
    return f"{FAMILIES[conditioning].label} branch" + ("" if branch is not None and branch.lora is None else " + LoRA")


def conditioning_choices(mode: AppMode) -> list[tuple[str, str]]:
    """(label, value) pairs for the conditioning control: training-free always, trained branches found."""
    return [(CONDITIONINGS[c], c) for c in (*TRAINING_FREE_CHOICES, *mode.branches)]


def generation_defaults(conditioning: str = "replace") -> dict[str, Any]:
    """The settings the UI shows for a conditioning (``mirage.families.DEFAULTS``: Wan2.2's own for the
    training-free modes, the reference's for a trained branch), with where they come from."""
    d = DEFAULTS["training-free" if conditioning in TRAINING_FREE_CHOICES else conditioning]
    return {"steps": d.num_inference_steps, "guidance": d.guidance_scale, "negative_prompt": d.negative_prompt, "fps": d.fps,
            "chunking": d.chunking, "origin": d.origin}  # fmt: skip


def pipe_settings(conditioning: str, prompt: str, steps: int, guidance: float, negative_prompt: str,
                  readouts: str = "reference") -> dict[str, Any]:  # fmt: skip
    """``MiragePipeline.start`` keyword arguments for one memory's run (both memories get the same). Under a
    trained branch, ``readouts`` ("reference": what it was trained on; "ours") and the path never padded
    past what the page shows (Spatia pads its last round: ``pad_last_chunk``)."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {conditioning!r}: choose one of {', '.join(CONDITIONINGS)}")
    if readouts not in READOUTS:
        raise ValueError(f"readouts must be one of {', '.join(READOUTS)}, got {readouts!r}")
    mode = conditioning if conditioning in TRAINING_FREE_CHOICES else "branch"
    branch = dict(readouts=readouts, pad_last_chunk=False) if mode == "branch" else {}
    return dict(prompt=prompt or "", num_inference_steps=int(steps), guidance_scale=float(guidance),
                negative_prompt=negative_prompt, memory_mode=mode, **branch)  # fmt: skip


READOUT_CHOICES = {"reference": "as the branch was trained (its reference's readouts)",
                   "ours": "ours (crack-free footprint splat + fusion; not what the branch was trained on)"}  # fmt: skip


def readouts_label(conditioning: str, readouts: str) -> str:
    """A few words for captions: which readouts a trained branch received."""
    family = FAMILIES[conditioning]
    if readouts == "ours":
        return "ours (footprint splat + fusion), not the branch's training readouts"
    ref = ", ".join(f"{k}: {v['readout'] if 'readout' in v else 'ours' + (' with black empty cells' if v.get('empty_latent') == 'black' else '')}"
                    for k, v in family.reference_memory.items())  # fmt: skip
    return f"{family.label}'s reference ({ref}; a memory it has none for: ours)"


_PIPELINE: dict = {}  # the loaded MiragePipeline, shared by sessions
_PIPELINE_LOCK = threading.Lock()


FP8_ENV = "MIRAGE_FP8"  # on | off (the default): torchao FP8 on the transformer's blocks, a dedicated GPU only


def fp8_wanted(mode: AppMode) -> bool:
    """``$MIRAGE_FP8``: ``on`` quantizes the transformer's blocks to FP8 (torchao, with regional
    compilation; a trained branch's blocks stay bf16): guidance 5 over 161 frames in 38.6 s instead
    of 46.8 s on an H100, every forward's output 1.9% (relative RMS) from bf16, the first chunk about
    2 minutes longer while it compiles. Off by default; refused where it cannot run (ZeroGPU runs no
    ``torch.compile``; the CPU has no FP8 kernels) and beside ``$MIRAGE_AOT`` (its package is bf16)."""
    value = os.environ.get(FP8_ENV, "off").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"${FP8_ENV} must be on or off, got {value!r}")
    if value == "on" and mode.generation and (mode.device != "cuda" or mode.zero_gpu):
        raise ValueError(f"${FP8_ENV}=on needs a dedicated CUDA GPU (it runs through torch.compile, which ZeroGPU "
                         f"does not run, and the CPU has no FP8 kernels); this app runs on "
                         f"{'ZeroGPU' if mode.zero_gpu else mode.device}")  # fmt: skip
    if value == "on" and aot_wanted(mode):
        raise ValueError(f"${FP8_ENV}=on and ${AOT_ENV}=on cannot go together: the ahead-of-time package is "
                         f"compiled from the bf16 block")  # fmt: skip
    return value == "on" and mode.generation


def speed_settings(device: str, zero_gpu: bool, aot: bool = False, fp8: bool = False):
    """What the transformer and the VAE run with: ``mirage.speed.choose`` for the device, without regional
    compilation when its block is compiled ahead of time (``aot``), with FP8 when asked (``fp8_wanted``).
    The fused blocks go with neither (README, "Speed settings"). On an H100 with FP8 they showed no gain
    we can stand behind (130.7 ms against 133.5 in another run) and a longer compile. As an AoT package
    they save about 5 ms a forward but took 6 s longer to load, which a ZeroGPU call may pay."""
    from mirage import speed

    settings = speed.choose(device, zero_gpu)
    settings = replace(settings, compile="off", fused=False) if aot else settings  # blocks compiled ahead of time instead
    return replace(settings, fp8=True, fused=False) if fp8 else settings


def load_pipeline(model_path: str, device: str, branch: BranchFiles | None = None, zero_gpu: bool = False,
                  aot: bool = False, fp8: bool = False):  # fmt: skip
    """``MiragePipeline`` from ``model_path`` on ``device``, loaded once per process (bf16 transformer
    and text encoder on CUDA, float32 on the CPU; the VAE loaded in float32), with ``branch`` loaded
    into it when given (one trained branch at a time; switching replaces it), run with the device's
    speed setting (``mirage.speed.choose``: on CUDA the VAE in bf16, as the references run it, and on
    a dedicated GPU the fused VAE and regional compilation unless ``aot``, blocks compiled ahead of time at start-up
    (``prepare_aot``); eager on ZeroGPU; nothing on the CPU; ``fp8``: ``fp8_wanted``). Memory updates
    need depth: Depth Pro when its weights are cached, else the (labelled) planar prior."""
    from mirage import speed
    from mirage.pipeline import MiragePipeline

    with _PIPELINE_LOCK:
        if _PIPELINE.get("key") != (model_path, device):
            depth = "depth-pro" if weights_available("depth-pro") else "planar-prior"
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            pipe = MiragePipeline.from_pretrained(model_path, torch_dtype=dtype, depth_backend=depth, local_files_only=True)
            pipe.to(device)
            if device == "cuda":  # the text encoder (11 GB) works once per prompt, then rests on the CPU: every
                pipe.enable_text_encoder_offload()  # conditioning fits a half Blackwell card (README, "GPU memory")
            settings = speed_settings(device, zero_gpu, aot, fp8)
            speed.apply(pipe.transformer, settings, vae=pipe.vae)
            _PIPELINE.update(key=(model_path, device), pipe=pipe, depth=depth, branch=None, speed=settings)
        pipe = _PIPELINE["pipe"]
        if branch is not None and _PIPELINE["branch"] != branch:
            pipe.load_branch(branch.kind, branch.branch, branch.lora, local_files_only=True)
            speed.apply_branch(pipe.branch, _PIPELINE["speed"])
            _PIPELINE["branch"] = branch
        return pipe


def loaded_pipeline(model_path: str, device: str, branch: BranchFiles | None = None):
    """The pipeline ``load_pipeline`` loaded with exactly ``branch`` (None: no trained branch asked
    for), or None, without taking its lock: what a GPU worker forked from this process uses (a lock
    held by another thread at the fork would never be released there)."""
    if _PIPELINE.get("key") != (model_path, device) or (branch is not None and _PIPELINE.get("branch") != branch):
        return None
    return _PIPELINE["pipe"]


# ----------------------------------------------------------------------- ahead-of-time compilation
AOT_ENV = "MIRAGE_AOT"  # auto (on ZeroGPU with CUDA) | on | off
AOT_SIZES_ENV = "MIRAGE_AOT_SIZES"  # working sizes to compile for, "HxW[,HxW...]" (default: the Wan2.2 GPU size)
AOT_CACHE_ENV = "MIRAGE_AOT_CACHE"  # where packages are kept (default: ~/.cache/mirage/aot)
AOT_STARTUP_SECONDS = 1500  # the start-up GPU call that compiles (ZeroGPU allows long calls at start-up)


@dataclass(frozen=True)
class AotStatus:
    """What start-up did about ahead-of-time compilation, for the banner."""

    packages: tuple = ()  # (what it is for, e.g. "704x1280, 33-frame chunks"; mirage.aot.Package)
    note: str = ""  # why none is used ("" when some is)

    @property
    def usable(self) -> list:
        return [p for _, p in self.packages if p.usable]

    @property
    def load_seconds(self) -> float:
        """What loading the usable packages took in the start-up check's child process: what each GPU
        worker pays again at its first call (``mirage.aot`` loads lazily per process)."""
        return sum(p.load.seconds or 0.0 for p in self.usable if p.load is not None)

    def line(self) -> str:
        if not self.usable:
            return f"transformer eager (no ahead-of-time package: {self.note})" if self.note else "transformer eager"
        parts = []
        for label, p in self.packages:
            made = "found in the cache" if p.compile_s is None else f"compiled at start-up in {p.compile_s:.0f} s"
            parts.append(f"{label} ({made}" + (")" if p.usable else f"; not used: {p.why_not()})"))
        load = f"; each GPU worker loads it at its first call ({self.load_seconds:.0f} s at start-up)" if self.load_seconds else ""
        return ("the transformer's block compiled ahead of time (AOTInductor) for " + "; ".join(parts)
                + f"{load}; other chunks run eager")  # fmt: skip


def aot_wanted(mode: AppMode) -> bool:
    """Whether start-up compiles the transformer's block ahead of time: ``$MIRAGE_AOT`` ``on``, ``off``, or
    ``auto`` (the default: on ZeroGPU with CUDA, where ``torch.compile`` does not run)."""
    value = os.environ.get(AOT_ENV, "auto").lower()
    if value not in ("auto", "on", "off"):
        raise ValueError(f"${AOT_ENV} must be auto, on or off, got {value!r}")
    return mode.generation and (value == "on" or (value == "auto" and mode.zero_gpu and mode.device == "cuda"))


def aot_sizes() -> list[tuple[int, int]]:
    """The working sizes (H, W) start-up compiles for (``$MIRAGE_AOT_SIZES``, default 704x1280)."""
    raw = os.environ.get(AOT_SIZES_ENV, "704x1280")
    try:
        sizes = [tuple(int(v) for v in item.lower().split("x")) for item in raw.split(",") if item.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32 for size in sizes):
        raise ValueError(f"${AOT_SIZES_ENV} must be sizes like 704x1280[,704x1248], multiples of 32 (the model's "
                         f"latent stride times its patch), got {raw!r}")
    return sizes  # type: ignore[return-value]


def prepare_aot(mode: AppMode) -> AotStatus:
    """Compile (or find in ``$MIRAGE_AOT_CACHE``) one package of the transformer's block per working
    size, for the default chunk of the training-free modes, and load each once in a child process
    (``mirage.aot.prepare``). On ZeroGPU this runs inside the start-up GPU call."""
    from mirage import aot
    from mirage.frames import num_latent_frames

    pipe = loaded_pipeline(mode.model_path, mode.device)
    if pipe is None:
        return AotStatus((), "the pipeline is not loaded")
    cache = Path(os.environ.get(AOT_CACHE_ENV) or Path.home() / ".cache" / "mirage" / "aot")
    chunk = generation_defaults()["chunking"].frames
    frames = num_latent_frames(chunk, pipe.codec.temporal_stride)
    stride, packages = pipe.codec.spatial_stride, []  # 512 text tokens: MiragePipeline.encode_prompt's length
    with torch._inductor.config.patch(compile_threads=1):  # no compile worker pool inside a GPU worker process
        for height, width in aot_sizes():
            inputs = aot.example_inputs(pipe.transformer, frames, height // stride, width // stride, device=pipe._execution_device)
            packages.append((f"{height}x{width}, {chunk}-frame chunks", aot.prepare(pipe.transformer, inputs, cache)))
    return AotStatus(tuple(packages))


def apply_aot(mode: AppMode, status: AotStatus) -> AotStatus:
    """Every block of the loaded transformer runs the usable packages of ``status`` (each GPU worker
    loads them at its first call); None usable: eager, and ``status`` says why."""
    from mirage import aot

    if not status.usable:
        failed = [p for _, p in status.packages if not p.usable]
        note = status.note or (f"the package does not load on this machine: {failed[0].why_not()}" if failed else "")
        status = AotStatus(status.packages, note)
    else:
        aot.apply(loaded_pipeline(mode.model_path, mode.device).transformer, status.usable)
    _PIPELINE["aot"] = status
    return status


def aot_status() -> AotStatus | None:
    """What start-up did about ahead-of-time compilation (None: it was not asked for)."""
    return _PIPELINE.get("aot")


# ------------------------------------------------------------------------------------- sessions
@dataclass
class Session:
    """What the app keeps for one browser session: its scene and what the page needs beside it."""

    scene: SceneState | None = None  # the loaded scene with its active path
    last_preset: PathRecipe | None = None  # the last preset path accepted (what the preset controls show)
    last_stroke: PathRecipe | None = None  # the last stroke path accepted (what the stroke controls show)
    last_keyframes: PathRecipe | None = None  # the last keyframe path accepted (what a refused table goes back to)
    version: int = 0  # bumped whenever the path changes
    workdir: Path | None = None  # this session's folder (SessionDirs), removed with the session
    run: "Any | None" = None  # the active run (app_runs.ActiveRun): its scene, settings, both memories, files
    runs: int = 0  # runs started in this session (each writes into its own folder)

    def new_scene(self, state: SceneState) -> "Session":
        """A scene just loaded (its path, if any, made for it)."""
        self.scene, self.last_preset, self.last_stroke, self.last_keyframes = state, None, None, None
        return self._path_changed()

    def resized(self, state: SceneState) -> "Session":
        """The same input at another working size (``scene.rebuild_at``): the controls keep their
        last accepted values, a stroke's pixels mapped into the new fit."""
        old, self.scene = self.scene, state
        self.last_stroke = scene.recipe_at(self.last_stroke, state.camera, old.camera)
        return self._path_changed()

    def change_path(self, make: Callable[..., Any], *args: Any) -> "Session":
        """Make the scene's path with ``make(scene, *args)`` (``mirage.scene.preset_path``, ``stroke_path``,
        ...) and note it: the controls' last accepted values, the version bumped. A refused path
        (``ValueError``) changes nothing, here or in the scene. A run already made keeps its own copy
        of the scene and path (``app_runs.ActiveRun``)."""
        make(scene.require_scene(self.scene), *args)
        return self._path_changed()

    def _path_changed(self) -> "Session":
        recipe = None if self.scene is None else self.scene.recipe
        if recipe is not None and recipe.kind == "preset":
            self.last_preset = recipe
        if recipe is not None and recipe.kind == "stroke":
            self.last_stroke = recipe
        if recipe is not None and recipe.kind == "keyframes":
            self.last_keyframes = recipe
        self.version += 1
        return self

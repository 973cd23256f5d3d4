"""Where model weights come from, in one place: a local folder, the Hugging Face cache, or a download.

Every loader of the library (the Wan2.2 pipeline and VAE, the depth backends, trained side
branches) describes what a complete checkpoint holds as a ``Layout``: relative paths and what each
must be (``"model"``: ``config.json`` plus weights, every shard of a sharded checkpoint included;
``"file"``; ``"dir"``: a non-empty folder). Then

* ``find_local(path_or_id, layout)`` answers "is it here?" and never touches the network;
* ``resolve(path_or_id, layout, what=..., hint=...)`` returns the folder, downloading only when
  allowed (``local_files_only=None`` means: only local files when ``HF_HUB_OFFLINE`` is set), and
  raises ``FileNotFoundError`` naming the path or hub id and what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterator, Literal, Mapping

__all__ = ["Layout", "hub_offline", "offline_mode", "has_model_weights", "missing", "find_local", "resolve"]

Layout = Mapping[str, Literal["model", "file", "dir"]]  # relative path ("." for the root) -> what it must be

_WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.bin")
_INDEX_FILES = tuple(f"{name}.index.json" for name in _WEIGHT_FILES)
_REPO_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*/[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def offline_mode(enabled: bool = True) -> Iterator[None]:
    """While loading with local files only, put huggingface_hub in offline mode too: it reads
    ``HF_HUB_OFFLINE`` once at import and otherwise makes requests of its own (e.g. to resolve a
    revision) even with ``local_files_only=True``."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def has_model_weights(folder: Path) -> bool:
    """``config.json`` and a weights file, or an index whose every shard is present."""
    if not (folder / "config.json").is_file():
        return False
    if any((folder / f).is_file() for f in _WEIGHT_FILES):
        return True
    for index in _INDEX_FILES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return False
            return bool(shards) and all((folder / s).is_file() for s in shards)
    return False


def missing(folder: Path, layout: Layout) -> list[str]:
    """The entries of ``layout`` that ``folder`` lacks, as ``"path (what)"`` strings."""
    absent = []
    for rel, kind in layout.items():
        p = folder / rel
        ok = {"model": lambda: p.is_dir() and has_model_weights(p), "file": p.is_file,
              "dir": lambda: p.is_dir() and any(p.iterdir())}[kind]()  # fmt: skip
        if not ok:
            absent.append(f"{rel} ({'config.json + weights' if kind == 'model' else kind})")
    return absent


def _is_repo_id(path_or_id: str) -> bool:
    return bool(_REPO_ID.match(path_or_id)) and ".." not in path_or_id and not Path(path_or_id).expanduser().exists()


def _cached_snapshot(repo_id: str, cache_dir: str | os.PathLike | None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (its ``main`` ref), or None; no network."""
    from huggingface_hub import snapshot_download

    try:
        with offline_mode():
            return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached, or a broken cache entry: both mean "not here"
        return None


def find_local(path_or_id: str | os.PathLike, layout: Layout, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder (an existing path, or the HF cache snapshot of a hub id) holding everything in
    ``layout``, or None. Never touches the network."""
    source = os.fspath(path_or_id)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder if not missing(folder, layout) else None
    if not _is_repo_id(source):
        return None
    snap = _cached_snapshot(source, cache_dir)
    return snap if snap is not None and not missing(snap, layout) else None


def _patterns(layout: Layout) -> list[str]:
    return [rel if kind == "file" else ("*" if rel == "." else f"{rel}/*") for rel, kind in layout.items()]


def resolve(
    path_or_id: str | os.PathLike,
    layout: Layout,
    *,
    what: str,
    hint: str = "",
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The folder holding ``layout`` for ``path_or_id``: a local folder, the HF cache, or a download
    (only when ``local_files_only`` is False, or None with ``HF_HUB_OFFLINE`` unset).

    Raises ``FileNotFoundError`` saying what ``what`` needs, where it looked and what is missing.
    """
    source = os.fspath(path_or_id)
    offline = hub_offline()
    local_only = offline if local_files_only is None else bool(local_files_only)
    tail = f" {hint}" if hint else ""
    folder = Path(source).expanduser()
    if folder.is_dir():
        absent = missing(folder, layout)
        if absent:
            raise FileNotFoundError(f"{what} needs model weights: the folder {source!r} lacks {', '.join(absent)}.{tail}")
        return folder
    if not _is_repo_id(source):
        raise FileNotFoundError(f"{what} needs model weights: {source!r} is neither a local folder nor a hub id.{tail}")
    cached = _cached_snapshot(source, cache_dir)
    if cached is not None and not missing(cached, layout):
        return cached
    where = f"local_files_only={local_only}, HF_HUB_OFFLINE={'set' if offline else 'unset'}, cache_dir={cache_dir!r}"
    if local_only:
        have = "" if cached is None else f" (the cached snapshot lacks {', '.join(missing(cached, layout))})"
        raise FileNotFoundError(f"{what} needs model weights: {source!r} is not in the Hugging Face cache{have} ({where}).{tail}")
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(source, allow_patterns=_patterns(layout), cache_dir=cache_dir))
    except Exception as err:  # no network, unknown repo, gated: all mean "weights not available"
        raise FileNotFoundError(
            f"{what} needs model weights: downloading {source!r} failed ({where}): {type(err).__name__}: {err}.{tail}"
        ) from err
    absent = missing(snap, layout)
    if absent:
        raise FileNotFoundError(f"{what} needs model weights: the download of {source!r} lacks {', '.join(absent)}.{tail}")
    return snap

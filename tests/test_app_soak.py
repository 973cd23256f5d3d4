"""Memory and files come back: 40 sessions against the launched app (offline mode), ten of them
uploading a 50 MB image, each making a path and running, then closing. The server must end within
300 MB of its resident memory at start, with no session folder and no upload or result left in
Gradio's cache. Prints the numbers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from test_app_http import EXAMPLE, PATH_CTL, free_port, launch_app, stop_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

SESSIONS, BIG_UPLOADS = 40, 10
MAX_GROWTH_MB = 300
RELEASE_S = 60  # a closed session's state and files are gone within this


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def big_png(path: Path, side: int = 4200) -> Path:
    """A ~50 MB PNG: random pixels, stored uncompressed."""
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=0)
    return path


def test_forty_sessions_give_back_memory_and_files(tmp_path):
    upload = big_png(tmp_path / "big_upload.png")
    size_mb = upload.stat().st_size / 2**20
    assert size_mb > 48, size_mb
    proc, url = launch_app(tmp_path, free_port(), flags=True)
    cache = tmp_path / "gradio"  # Gradio's cache, with the session folders in it
    try:
        start = rss_mb(proc.pid)
        start_files = set(files_under(cache))
        peak, t0 = start, time.time()
        for i in range(SESSIONS):
            c = Client(url, verbose=False)
            if i % (SESSIONS // BIG_UPLOADS) == 0:
                out = c.predict(handle_file(upload), None, "planar-prior", 60, 256, *PATH_CTL, api_name="/load_image")
                assert "big_upload.png" in out[1], out[1]
            else:
                c.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")
            c.predict("orbit_right", 10, 33, "latent", api_name="/preset_path")
            c.predict(i, 20, 5.0, "", "", "replace", "latent", api_name="/run")
            peak = max(peak, rss_mb(proc.pid))
            c.close()
        elapsed = time.time() - t0
        deadline = time.time() + RELEASE_S + 30
        while time.time() < deadline:  # files go within a minute of the last close
            left = [p for p in files_under(cache) if p not in start_files]
            if not left:
                break
            time.sleep(2)
        end = rss_mb(proc.pid)
        print(f"\nsoak: {SESSIONS} sessions ({BIG_UPLOADS} with a {size_mb:.1f} MB upload) in {elapsed:.0f} s; "
              f"server RSS start {start:.0f} MB, peak {peak:.0f} MB, end {end:.0f} MB ({end - start:+.0f} MB); "
              f"files left: {len(left)}")  # fmt: skip
        assert not left, left[:10]
        assert end - start <= MAX_GROWTH_MB, (start, peak, end)
    finally:
        stop_app(proc)


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def test_an_upload_at_the_pixel_limit_peaks_well_under_2_gb(tmp_path):
    """A small PNG of 16384x8192 pixels (the app's limit) is shrunk while it is decoded: the server's
    peak resident memory while loading it stays well under 2 GB above where it was."""
    from mirage.images import MAX_PIXELS, MAX_SIDE

    W, H = MAX_SIDE, MAX_PIXELS // MAX_SIDE  # 16384 x 8192
    png = tmp_path / "huge_but_small.png"
    PIL.Image.new("RGB", (W, H), (90, 140, 200)).save(png)
    proc, url = launch_app(tmp_path, free_port(), flags=True)
    try:
        c = Client(url, verbose=False)
        c.predict(*EXAMPLE, *PATH_CTL, api_name="/load_example")  # warm: the libraries a load needs are in
        before, hwm_before = rss_mb(proc.pid), status_mb(proc.pid, "VmHWM")
        out = c.predict(handle_file(png), None, "planar-prior", 60, 256, *PATH_CTL, api_name="/load_image")
        assert "huge_but_small.png" in out[1]
        peak = max(status_mb(proc.pid, "VmHWM"), hwm_before)
        print(f"\nupload of a {png.stat().st_size / 1024:.0f} KB PNG of {W}x{H}: server RSS {before:.0f} MB before, "
              f"peak {status_mb(proc.pid, 'VmHWM'):.0f} MB (high-water mark before: {hwm_before:.0f} MB), "
              f"{rss_mb(proc.pid):.0f} MB after")  # fmt: skip
        assert peak - before < 1024, (before, peak)  # well under 2 GB
        c.close()
    finally:
        stop_app(proc)

"""Tests for mirage/depth.py: tiny random transformers models, analytic focal scaling, files, priors, align_scale."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mirage.cameras import intrinsics_from_fov
from mirage.depth import (
    DEPTH_SOURCES,
    DepthAnythingV2MetricBackend,
    DepthEstimate,
    DepthProBackend,
    FileDepth,
    GroundTruthDepth,
    PlanarPriorBackend,
    align_scale,
    estimate_frames,
    load_depth_file,
    make_depth_backend,
    save_depth_png16,
    weights_available,
)
from mirage.testing import tiny_depth_anything_config, tiny_depth_pro_config

H, W = 24, 40


def _image(seed=0, h=H, w=W):  # -> [3, h, w] in [-1, 1]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 2 - 1


def _K(f=30.0, w=W, h=H):  # -> [3, 3] centred camera
    return torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def depth_pro():
    return DepthProBackend.from_config(tiny_depth_pro_config(), seed=0)


def _constant_depth_pro(canonical=0.25, fov_deg=50.0):
    """Tiny Depth Pro whose canonical inverse depth is ``canonical`` everywhere and whose fov is ``fov_deg``."""
    backend = DepthProBackend.from_config(tiny_depth_pro_config(), seed=1)
    last_conv = backend.model.head.layers[-2]  # Conv2d(32, 1, 1) before the final ReLU
    fov_conv = backend.model.fov_model.head.layers[-1]  # final Conv2d -> one value per image
    with torch.no_grad():
        last_conv.weight.zero_()
        last_conv.bias.fill_(canonical)
        fov_conv.weight.zero_()
        fov_conv.bias.fill_(fov_deg)
    return backend


# ----------------------------------------------------------------------------- Depth Pro
def test_depth_pro_random_weights_shapes(depth_pro):
    est = depth_pro.estimate(_image(), _K())
    assert isinstance(est, DepthEstimate) and est.source == "depth-pro"
    assert est.depth.shape == (H, W) and est.depth.dtype == torch.float32
    valid = ~torch.isnan(est.depth)
    assert valid.float().mean() > 0.5
    assert torch.isfinite(est.depth[valid]).all() and (est.depth[valid] > 0).all()
    torch.testing.assert_close(est.K, _K())


def test_depth_pro_analytic_depth_and_fov():
    c, fov = 0.25, 50.0
    backend = _constant_depth_pro(c, fov)
    est = backend.estimate(_image())
    # No K: K is the centred camera of the predicted fov, depth = f / (W c) = 1 / (2 tan(fov/2) c).
    torch.testing.assert_close(est.K, intrinsics_from_fov(W, H, fov))
    expected = 1.0 / (2 * math.tan(math.radians(fov / 2)) * c)
    torch.testing.assert_close(est.depth, torch.full((H, W), expected), rtol=1e-5, atol=0)
    # Known K: depth = fx / (W c); doubling fx doubles depth.
    for f in (30.0, 60.0):
        est_k = backend.estimate(_image(), _K(f))
        torch.testing.assert_close(est_k.depth, torch.full((H, W), f / (W * c)), rtol=1e-5, atol=0)
        torch.testing.assert_close(est_k.K, _K(f))


def test_depth_pro_focal_rescaling_random_weights(depth_pro):
    image = _image(3)
    free = depth_pro.estimate(image)
    f_est = float(free.K[0, 0])
    d30 = depth_pro.estimate(image, _K(30.0)).depth
    d60 = depth_pro.estimate(image, _K(60.0)).depth
    both = ~torch.isnan(d30) & ~torch.isnan(d60) & ~torch.isnan(free.depth)
    assert both.float().mean() > 0.5
    torch.testing.assert_close(d60[both], 2 * d30[both], rtol=1e-5, atol=0)
    torch.testing.assert_close(d30[both], free.depth[both] * 30.0 / f_est, rtol=1e-4, atol=0)


def test_depth_pro_patches_by_view_are_transformers_patches(depth_pro, monkeypatch):
    """``split_to_patches_by_view`` gives transformers' ``split_to_patches`` bit for bit (overlaps,
    strides that do not tile, the no-split case); a backend puts it in transformers' place, and its
    depth is the model's own through transformers' function."""
    from transformers.models.depth_pro import modeling_depth_pro

    from mirage.depth import depth_pro as module
    from mirage.depth.depth_pro import split_to_patches_by_view

    original = module.TRANSFORMERS_SPLIT_TO_PATCHES
    assert modeling_depth_pro.split_to_patches is split_to_patches_by_view and original is not None
    x = torch.randn(2, 3, 50, 50, generator=torch.Generator().manual_seed(0))  # [B, C, H, W]
    for patch, overlap in ((16, 0.0), (16, 0.25), (20, 0.5), (50, 0.2)):
        assert torch.equal(split_to_patches_by_view(x, patch, overlap), original(x, patch, overlap))
    image = _image()
    c, fov = depth_pro._predict(image[None])
    monkeypatch.setattr(modeling_depth_pro, "split_to_patches", original)
    c_ref, fov_ref = depth_pro._predict(image[None])  # the same model through transformers' own function
    assert torch.equal(c, c_ref) and torch.equal(fov, fov_ref)


def test_depth_pro_estimate_batch_matches_single(depth_pro):
    frames = torch.stack([_image(s) for s in range(5)], dim=1)  # [3, 5, H, W]; 5 > batch_size 4
    batch = depth_pro.estimate_batch(frames, _K())
    assert batch.shape == (5, H, W)
    single = torch.stack([depth_pro.estimate(frames[:, i], _K()).depth for i in range(5)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(estimate_frames(depth_pro, frames, _K()), batch, equal_nan=True)


def test_estimate_frames_with_per_frame_intrinsics():
    # a zoom path: each frame has its own focal length, and Depth Pro's depth scales with it
    backend = _constant_depth_pro()
    frames = torch.stack([_image(s) for s in range(3)], dim=1)  # [3, 3, H, W]
    Ks = torch.stack([_K(), _K(), _K()])
    Ks[1, :2, :2] *= 2.0
    out = estimate_frames(backend, frames, Ks)
    torch.testing.assert_close(out[1], 2.0 * out[0])
    torch.testing.assert_close(out[2], out[0])
    torch.testing.assert_close(estimate_frames(backend, frames, Ks[[0, 0, 0]]), estimate_frames(backend, frames, _K()))
    with pytest.raises(ValueError, match=r"\[3, 3, 3\]"):
        estimate_frames(backend, frames, Ks[:2])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(4, H, W), r"\[3, H, W\]"),
        (torch.zeros(H, W), r"\[3, H, W\]"),
        (torch.full((3, H, W), float("nan")), "non-finite"),
        (torch.full((3, H, W), 255.0), r"\[-1, 1\]"),
        (torch.zeros(3, H, W, dtype=torch.uint8), "float"),
    ],
)
def test_image_validation(depth_pro, bad, match):
    with pytest.raises(ValueError, match=match):
        depth_pro.estimate(bad)
    with pytest.raises(ValueError, match=match):
        PlanarPriorBackend().estimate(bad)


def test_depth_pro_bad_K_and_bad_fov(depth_pro):
    with pytest.raises(ValueError, match="K must be"):
        depth_pro.estimate(_image(), torch.eye(4))
    with pytest.raises(ValueError, match="frames must be"):
        depth_pro.estimate_batch(_image(), _K())
    with pytest.raises(ValueError, match="field of view of -5"):
        _constant_depth_pro(0.25, -5.0).estimate(_image())


def _fake_hf_cache(root, repo_id, folder_files: dict):
    """Lay out a Hugging Face cache entry for ``repo_id`` holding ``folder_files`` (name -> bytes)."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in folder_files.items():
        (snap / name).write_bytes(data)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_depth_pro_from_pretrained_local_folder_and_cache(depth_pro, tmp_path):
    folder = tmp_path / "tiny-depth-pro"
    depth_pro.model.save_pretrained(folder)
    assert weights_available("depth-pro", str(folder))
    loaded = make_depth_backend("depth-pro", path_or_id=str(folder), device="cpu")
    a, b = depth_pro.estimate(_image(), _K()).depth, loaded.estimate(_image(), _K()).depth
    torch.testing.assert_close(a, b, equal_nan=True)
    # The same files in a Hugging Face cache layout load by repo id, with no network.
    cache = tmp_path / "hf-cache"
    _fake_hf_cache(cache, "mirage-test/tiny-depth-pro", {p.name: p.read_bytes() for p in folder.iterdir()})
    assert weights_available("depth-pro", "mirage-test/tiny-depth-pro", cache_dir=str(cache))
    cached = DepthProBackend.from_pretrained("mirage-test/tiny-depth-pro", device="cpu", cache_dir=str(cache))
    torch.testing.assert_close(cached.estimate(_image(), _K()).depth, a, equal_nan=True)


def test_missing_weights_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not weights_available("depth-pro", str(empty))
    assert not weights_available("depth-pro", cache_dir=str(tmp_path / "no-cache"))
    assert not weights_available("depth-anything-v2-metric", cache_dir=str(tmp_path / "no-cache"))
    assert weights_available("planar-prior")
    with pytest.raises(FileNotFoundError, match="needs model weights"):
        DepthProBackend.from_pretrained(str(empty))
    with pytest.raises(FileNotFoundError, match="apple/DepthPro-hf"):
        DepthProBackend.from_pretrained(cache_dir=str(tmp_path / "no-cache"))
    with pytest.raises(FileNotFoundError, match="Depth-Anything-V2-Metric-Indoor-Small-hf"):
        make_depth_backend("depth-anything-v2-metric", cache_dir=str(tmp_path / "no-cache"))


# ----------------------------------------------------------------------------- Depth Anything V2 metric
@pytest.fixture(scope="module")
def depth_anything():
    backend = DepthAnythingV2MetricBackend.from_config(tiny_depth_anything_config(), seed=0, fov_x_deg=60.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the default init gives a constant map on this tiny model; make the head vary
        for p in backend.model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return backend


def test_depth_anything_shapes_and_K(depth_anything):
    est = depth_anything.estimate(_image())
    assert est.source == "depth-anything-v2-metric"
    assert est.depth.shape == (H, W) and est.depth.dtype == torch.float32
    assert torch.isfinite(est.depth).all() and (est.depth > 0).all() and (est.depth <= 20).all()
    assert est.depth.std() > 1e-3
    torch.testing.assert_close(est.K, intrinsics_from_fov(W, H, 60.0))
    est_k = depth_anything.estimate(_image(), _K(45.0))
    torch.testing.assert_close(est_k.K, _K(45.0))
    torch.testing.assert_close(est_k.depth, est.depth)  # the model takes no focal length


def test_depth_anything_analytic_constant_head():
    backend = DepthAnythingV2MetricBackend.from_config(tiny_depth_anything_config(), seed=0)
    with torch.no_grad():
        backend.model.head.conv3.weight.zero_()
        backend.model.head.conv3.bias.fill_(1.0)
    est = backend.estimate(_image(h=50, w=70))
    torch.testing.assert_close(est.depth, torch.full((50, 70), 20 * torch.sigmoid(torch.tensor(1.0)).item()))


def test_depth_anything_batch_and_round_trip(depth_anything, tmp_path):
    frames = torch.stack([_image(s) for s in range(3)], dim=1)  # [3, 3, H, W]
    batch = depth_anything.estimate_batch(frames, _K())
    single = torch.stack([depth_anything.estimate(frames[:, i]).depth for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)
    folder = tmp_path / "tiny-da"
    depth_anything.model.save_pretrained(folder)
    assert not weights_available("depth-anything-v2-metric", str(folder))  # processor config missing
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        DepthAnythingV2MetricBackend.from_pretrained(str(folder))
    depth_anything.processor.save_pretrained(folder)
    assert weights_available("depth-anything-v2-metric", str(folder))
    loaded = DepthAnythingV2MetricBackend.from_pretrained(str(folder), fov_x_deg=70.0, device="cpu")
    est = loaded.estimate(_image())
    torch.testing.assert_close(est.depth, depth_anything.estimate(_image()).depth)
    torch.testing.assert_close(est.K, intrinsics_from_fov(W, H, 70.0))


def test_depth_anything_rejects_relative_and_bad_fov():
    from transformers import DepthAnythingForDepthEstimation

    from mirage.testing import tiny_depth_anything_config

    cfg = tiny_depth_anything_config()
    cfg.depth_estimation_type = "relative"
    with pytest.raises(ValueError, match="metric"):
        DepthAnythingV2MetricBackend(DepthAnythingForDepthEstimation(cfg), None)
    with pytest.raises(ValueError, match="fov_x_deg"):
        DepthAnythingV2MetricBackend.from_config(tiny_depth_anything_config(), fov_x_deg=180.0)


# ----------------------------------------------------------------------------- files
def _depth_with_holes():  # [H, W] metres with NaN / inf / 0 / negative holes
    g = torch.Generator().manual_seed(0)
    d = 0.3 + 40 * torch.rand(H, W, generator=g)
    d[0, 0], d[1, 1], d[2, 2], d[3, 3] = float("nan"), float("inf"), 0.0, -1.0
    return d


def test_npy_round_trip(tmp_path):
    d = _depth_with_holes()
    np.save(tmp_path / "d.npy", d.numpy())
    loaded = load_depth_file(tmp_path / "d.npy")
    assert loaded.dtype == torch.float32 and loaded.shape == (H, W)
    invalid = torch.zeros(H, W, dtype=torch.bool)
    invalid[0, 0] = invalid[1, 1] = invalid[2, 2] = invalid[3, 3] = True
    assert torch.equal(torch.isnan(loaded), invalid)
    assert torch.equal(loaded[~invalid], d[~invalid])


def test_png16_round_trip_mm(tmp_path):
    d = _depth_with_holes()
    save_depth_png16(d, tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I;16")
        raw = np.array(im)
    assert raw[0, 0] == raw[1, 1] == raw[2, 2] == raw[3, 3] == 0  # invalid -> 0
    loaded = load_depth_file(tmp_path / "d.png")
    invalid = torch.isnan(loaded)
    assert invalid.sum() == 4 and invalid[0, 0] and invalid[3, 3]
    assert (loaded[~invalid] - d[~invalid]).abs().max() <= 0.0005 + 1e-6  # within half a millimetre
    save_depth_png16(loaded, tmp_path / "again.png")  # a second round trip is exact
    torch.testing.assert_close(load_depth_file(tmp_path / "again.png"), loaded, equal_nan=True, rtol=0, atol=0)


def test_depth_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_depth_file(tmp_path / "missing.npy")
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported depth file extension '.txt'"):
        load_depth_file(tmp_path / "d.txt")
    np.save(tmp_path / "3d.npy", np.ones((2, H, W), np.float32))
    with pytest.raises(ValueError, match=r"2-D \[H, W\], got shape \(2, 24, 40\)"):
        load_depth_file(tmp_path / "3d.npy")
    np.save(tmp_path / "empty.npy", np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="no valid pixel"):
        load_depth_file(tmp_path / "empty.npy")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "8bit.png")
    with pytest.raises(ValueError, match="8-bit"):
        load_depth_file(tmp_path / "8bit.png")
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="'RGB' PNG"):
        load_depth_file(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="65.535"):
        save_depth_png16(torch.full((H, W), 100.0), tmp_path / "far.png")
    with pytest.raises(ValueError, match=".png"):
        save_depth_png16(torch.ones(H, W), tmp_path / "d.jpg")


def _npy_header(shape, descr="<f4", version=(1, 0)) -> bytes:  # an .npy header with no data after it
    import io

    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _png_header(width, height, bit_depth=16, color_type=0) -> bytes:  # a PNG signature, IHDR, empty IDAT, IEND
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class _RunsOnUnpickle:  # a pickle payload that creates a marker file if it is ever unpickled
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_refused(path, match):
    """load_depth_file(path) raises ValueError matching ``match``, naming the file but not its folder."""
    with pytest.raises(ValueError, match=match) as info:
        load_depth_file(path)
    assert path.name in str(info.value)
    assert str(path.parent) not in str(info.value)
    return str(info.value)


def test_npy_not_an_npy_file_refused(tmp_path):
    np.savez(tmp_path / "arch.npz", a=np.ones((H, W), np.float32))
    (tmp_path / "renamed.npy").write_bytes((tmp_path / "arch.npz").read_bytes())  # a zip archive named .npy
    _assert_refused(tmp_path / "renamed.npy", r"^renamed\.npy is a \.npz archive .*save one \[H, W\] array in metres with np\.save")
    (tmp_path / "text.npy").write_bytes(b"1 2 3\n4 5 6\n")
    _assert_refused(tmp_path / "text.npy", r"^text\.npy is not a NumPy \.npy file \(it does not start with the \.npy magic")
    (tmp_path / "empty.npy").write_bytes(b"")
    _assert_refused(tmp_path / "empty.npy", r"^empty\.npy is not a NumPy \.npy file \(it is empty \(0 bytes\)\)")
    (tmp_path / "v3.npy").write_bytes(b"\x93NUMPY\x03\x00" + _npy_header((H, W))[8:])
    _assert_refused(tmp_path / "v3.npy", r"^v3\.npy: unsupported \.npy format version \(3, 0\)")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': [[[[[\n")
    _assert_refused(tmp_path / "junk.npy", r"^junk\.npy: corrupt \.npy header")


def test_npy_pickles_and_non_real_dtypes_refused_without_loading(tmp_path):
    marker = tmp_path / "pickle_ran"
    payload = np.empty((2, 2), dtype=object)
    payload[0, 0] = _RunsOnUnpickle(marker)
    np.save(tmp_path / "pickle.npy", payload, allow_pickle=True)
    _assert_refused(tmp_path / "pickle.npy", r"^pickle\.npy: depth \.npy must hold real numbers \(metres\), got dtype object")
    assert not marker.exists()  # the pickle was never executed
    np.save(tmp_path / "struct.npy", np.zeros((H, W), dtype=[("a", "<f4"), ("b", "<f4")]))
    _assert_refused(tmp_path / "struct.npy", r"^struct\.npy: depth \.npy must hold real numbers .*got dtype \[\('a', '<f4'\)")
    np.save(tmp_path / "complex.npy", np.ones((H, W), np.complex64))
    _assert_refused(tmp_path / "complex.npy", r"got dtype complex64")
    np.save(tmp_path / "bool.npy", np.ones((H, W), bool))
    _assert_refused(tmp_path / "bool.npy", r"got dtype bool")


def test_npy_huge_header_refused_from_the_header(tmp_path):
    import tracemalloc

    (tmp_path / "huge.npy").write_bytes(_npy_header((200000, 200000)))  # claims 149 GiB of float32
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        _assert_refused(tmp_path / "huge.npy", r"^huge\.npy: depth map size 200000x200000 \(WxH\) is too large \(max side 16384, max 134217728 pixels\)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # refused before any array was made
    (tmp_path / "long.npy").write_bytes(_npy_header((1, 16385)))  # few pixels, but one side too long
    _assert_refused(tmp_path / "long.npy", r"^long\.npy: depth map size 16385x1 \(WxH\) is too large")
    (tmp_path / "pixels.npy").write_bytes(_npy_header((16384, 8193)))  # 134 225 920 pixels: 8192 over
    _assert_refused(tmp_path / "pixels.npy", r"^pixels\.npy: depth map size 8193x16384 \(WxH\) is too large")
    (tmp_path / "zero.npy").write_bytes(_npy_header((0, W)))
    _assert_refused(tmp_path / "zero.npy", r"^zero\.npy: depth map is empty \(40x0 pixels, WxH\)")


def test_npy_data_size_must_match_the_header(tmp_path):
    np.save(tmp_path / "full.npy", np.ones((H, W), np.float32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    _assert_refused(
        tmp_path / "cut.npy",
        r"^cut\.npy: the \.npy file is truncated: its header says 40x24 \(WxH\) float32 \(3840 bytes of data\) "
        r"but the file holds 3830 bytes after the header",
    )
    (tmp_path / "long.npy").write_bytes(data + b"\x00" * 4)
    _assert_refused(tmp_path / "long.npy", r"^long\.npy: the \.npy file is longer than its header says: .*holds 3844 bytes")
    (tmp_path / "header_only.npy").write_bytes(_npy_header((H, W), version=(2, 0)))
    _assert_refused(tmp_path / "header_only.npy", r"truncated: .*holds 0 bytes after the header")


def test_npy_accepted_dtypes_layouts_and_versions(tmp_path):
    d = np.arange(1, H * W + 1, dtype=np.float64).reshape(H, W) / 100  # [H, W] metres, all valid
    cases = {
        "f8.npy": d,
        "fortran.npy": np.asfortranarray(d),
        "big_endian.npy": d.astype(">f4"),
        "half.npy": d.astype(np.float16),
        "int.npy": np.arange(1, H * W + 1, dtype=np.int16).reshape(H, W),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        loaded = load_depth_file(tmp_path / name)
        assert loaded.dtype == torch.float32 and loaded.shape == (H, W)
        assert torch.equal(loaded, torch.from_numpy(arr.astype(np.float32))), name
    with open(tmp_path / "v2.npy", "wb") as f:  # format 2.0 (a 4-byte header length)
        np.lib.format.write_array(f, d.astype(np.float32), version=(2, 0))
    assert torch.equal(load_depth_file(tmp_path / "v2.npy"), torch.from_numpy(d.astype(np.float32)))


def test_png_hostile_files_refused(tmp_path):
    (tmp_path / "long.png").write_bytes(_png_header(16385, 1))
    _assert_refused(tmp_path / "long.png", r"^long\.png: depth map size 16385x1 \(WxH\) is too large")
    (tmp_path / "pixels.png").write_bytes(_png_header(12000, 12000))  # 144 MP: over MAX_PIXELS, under PIL's bomb limit
    with pytest.warns(Image.DecompressionBombWarning):
        _assert_refused(tmp_path / "pixels.png", r"^pixels\.png: depth map size 12000x12000 \(WxH\) is too large")
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))  # 400 MP: PIL's own limit refuses it first
    _assert_refused(tmp_path / "bomb.png", r"^bomb\.png: depth map size is too large: .*400000000 pixels")
    (tmp_path / "text.png").write_bytes(b"not an image")
    _assert_refused(tmp_path / "text.png", r"^text\.png is not an image PIL can read")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.png").write_bytes((tmp_path / "photo.jpg").read_bytes())
    _assert_refused(tmp_path / "photo.png", r"^photo\.png is not a PNG \(it holds JPEG data\)")
    g = np.random.default_rng(0)
    save_depth_png16(torch.from_numpy(g.uniform(0.5, 60.0, (H, W))), tmp_path / "full.png")  # incompressible
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path / "cut.png", r"^cut\.png: cannot decode the PNG \(truncated or corrupt\)")


def test_depth_file_messages_name_the_file_not_its_folder(tmp_path):
    folder = tmp_path / "gradio" / "abc123"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="^depth file not found: missing.npy$"):
        load_depth_file(folder / "missing.npy")
    np.save(folder / "3d.npy", np.ones((2, H, W), np.float32))
    _assert_refused(folder / "3d.npy", r"^3d\.npy: depth must be 2-D \[H, W\], got shape \(2, 24, 40\)$")
    np.save(folder / "empty.npy", np.zeros((H, W), np.float32))
    _assert_refused(folder / "empty.npy", r"^empty\.npy: depth map \(24, 40\) has no valid pixel")
    (folder / "d.txt").write_text("1 2 3")
    _assert_refused(folder / "d.txt", r"^unsupported depth file extension '\.txt' for d\.txt:")
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(folder / "rgb.png")
    _assert_refused(folder / "rgb.png", r"^rgb\.png is a 'RGB' PNG")
    (folder / "huge.npy").write_bytes(_npy_header((200000, 200000)))
    with pytest.raises(ValueError, match=r"^huge\.npy: depth map size 200000x200000") as info:
        FileDepth(str(folder / "huge.npy"))  # the backend loads paths through load_depth_file
    assert str(folder) not in str(info.value)


def test_file_depth_sizes_and_intrinsics(tmp_path):
    d = _depth_with_holes()
    np.save(tmp_path / "d.npy", d.numpy())
    est = FileDepth(tmp_path / "d.npy", fov_x_deg=70.0).estimate(_image())
    assert est.source == "file" and torch.equal(torch.isnan(est.depth), ~(torch.isfinite(d) & (d > 0)))
    torch.testing.assert_close(est.K, intrinsics_from_fov(W, H, 70.0))
    # Size mismatch names both sizes; resize=True upsamples 2x with nearest (holes stay 2x2 NaN blocks).
    small = FileDepth(d, K=_K(30.0))
    with pytest.raises(ValueError, match=r"40x24 \(WxH\) but the image is 80x48.*resize=True"):
        small.estimate(_image(h=2 * H, w=2 * W))
    big = FileDepth(d, K=_K(30.0), resize=True).estimate(_image(h=2 * H, w=2 * W))
    expected = d.repeat_interleave(2, 0).repeat_interleave(2, 1)  # [2H, 2W]
    expected = torch.where(torch.isfinite(expected) & (expected > 0), expected, torch.tensor(float("nan")))
    torch.testing.assert_close(big.depth, expected, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(big.K, _K(60.0, w=2 * W, h=2 * H))
    with pytest.raises(ValueError, match=r"40x24 \(WxH\) but the image is 40x40"):
        FileDepth(d, K=_K(), resize=True).estimate(_image(h=W, w=W))  # aspect differs by 40%
    # Intrinsics errors.
    with pytest.raises(ValueError, match="not both"):
        FileDepth(d, fov_x_deg=60.0, K=_K())
    with pytest.raises(ValueError, match="no intrinsics"):
        FileDepth(d).estimate(_image())
    torch.testing.assert_close(FileDepth(d).estimate(_image(), _K(33.0)).K, _K(33.0))
    with pytest.raises(ValueError, match="disagrees"):
        FileDepth(d, K=_K(30.0)).estimate(_image(), _K(31.0))
    with pytest.raises(ValueError, match="no valid pixel"):
        FileDepth(torch.zeros(H, W), K=_K())


def test_ground_truth_depth():
    d = _depth_with_holes()
    est = GroundTruthDepth(d, _K(25.0)).estimate(_image())
    assert est.source == "ground-truth"
    torch.testing.assert_close(est.K, _K(25.0))
    assert torch.isnan(est.depth).sum() == 4 and torch.equal(est.depth[5:], d[5:])
    with pytest.raises(ValueError, match="40x24 \\(WxH\\) but the image is 40x25"):
        GroundTruthDepth(d, _K()).estimate(_image(h=25))
    with pytest.raises(ValueError, match="disagrees"):
        GroundTruthDepth(d, _K(25.0)).estimate(_image(), _K(26.0))


# ----------------------------------------------------------------------------- planar prior
def test_planar_prior_geometry():
    near, far, fov = 1.5, 8.0, 60.0
    prior = PlanarPriorBackend(fov_x_deg=fov, near=near, far=far)
    assert "placeholder" in prior.name and "not" in prior.name and not prior.needs_weights
    h, w = 48, 64
    est = prior.estimate(_image(h=h, w=w))
    assert est.source == "planar-prior" and est.depth.shape == (h, w)
    assert torch.isfinite(est.depth).all() and (est.depth > 0).all()
    assert torch.equal(est.depth, prior.estimate(_image(1, h=h, w=w)).depth)  # deterministic, image-independent
    K = intrinsics_from_fov(w, h, fov)
    torch.testing.assert_close(est.K, K)
    fy, cy = float(K[1, 1]), float(K[1, 2])
    col = est.depth[:, 0].double()  # [h]
    assert (est.depth == est.depth[:, :1]).all()  # same in every column
    assert (col[:-1] >= col[1:]).all()  # grows toward the top
    assert (col[: h // 2] == far).all()  # rows at or above the horizon see the wall
    slope = (torch.arange(h, dtype=torch.float64) + 0.5 - cy) / fy  # [h]
    ground = col < far
    assert ground.sum() > 5
    height = near * (h - cy) / fy
    ground_y = col[ground] * slope[ground]  # [n_ground] camera-space y of each ground row: the camera height
    torch.testing.assert_close(ground_y, torch.full_like(ground_y, height), rtol=1e-5, atol=0)
    torch.testing.assert_close(col[-1].item(), near * (h - cy) / (h - 0.5 - cy), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="near < far"):
        PlanarPriorBackend(near=5.0, far=2.0)


# ----------------------------------------------------------------------------- align_scale
def test_align_scale_robust_to_outliers_and_holes():
    g = torch.Generator().manual_seed(0)
    n = 64
    depth = 0.5 + 10 * torch.rand(n, n, generator=g)
    reference = 2.5 * depth * torch.exp(0.05 * torch.randn(n, n, generator=g))  # 5% inlier noise
    outliers = torch.rand(n, n, generator=g) < 0.2
    reference[outliers] *= torch.exp(0.3 + 1.7 * torch.rand(int(outliers.sum()), generator=g))  # one-sided, far off
    depth[torch.rand(n, n, generator=g) < 0.1] = float("nan")
    reference[torch.rand(n, n, generator=g) < 0.1] = 0.0
    s = align_scale(depth, reference)
    assert abs(s / 2.5 - 1) < 0.01
    both = torch.isfinite(depth) & (reference > 0)
    log_ratio = reference[both].log() - depth[both].log()  # [n_valid]
    assert abs(math.exp(float(log_ratio.mean())) / 2.5 - 1) > 0.05  # the outliers bias a plain mean...
    assert abs(math.exp(float(log_ratio.median())) / 2.5 - 1) > 0.01  # ...and a plain median, so rejection is needed
    assert align_scale(depth.double(), 3 * depth.double()) == pytest.approx(3.0, rel=1e-12)


def test_align_scale_mask_and_errors():
    depth = torch.linspace(1, 5, 400).reshape(20, 20)
    reference = 2.5 * depth
    reference[:, 8:] = 7.0 * depth[:, 8:]  # 60% of pixels at another scale, masked out below
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[:, :8] = True
    assert align_scale(depth, reference, mask) == pytest.approx(2.5, rel=1e-6)
    few = torch.full((20, 20), float("nan"))
    few[0, :5] = 1.0
    with pytest.raises(ValueError, match="got 5"):
        align_scale(few, reference)
    with pytest.raises(ValueError, match="one shape"):
        align_scale(depth, reference[:10])
    with pytest.raises(ValueError, match="mask must be bool"):
        align_scale(depth, reference, mask.float())


# ----------------------------------------------------------------------------- registry
def test_registry():
    assert set(DEPTH_SOURCES) == {"depth-pro", "depth-anything-v2-metric", "planar-prior"}
    assert DEPTH_SOURCES["depth-pro"].default_weights == "apple/DepthPro-hf"
    assert any("Outdoor" in w for w in DEPTH_SOURCES["depth-anything-v2-metric"].other_weights)
    prior = make_depth_backend("planar-prior", fov_x_deg=70.0, far=12.0)
    assert isinstance(prior, PlanarPriorBackend) and prior.far == 12.0
    frames = torch.stack([_image(s) for s in range(2)], dim=1)  # [3, 2, H, W]
    expected = prior.estimate(_image(), _K()).depth.expand(2, H, W)  # [2, H, W]
    torch.testing.assert_close(estimate_frames(prior, frames, _K()), expected)
    with pytest.raises(ValueError, match="unknown depth source 'midas'"):
        make_depth_backend("midas")
    with pytest.raises(ValueError, match="unknown depth source"):
        weights_available("midas")


def test_a_large_depth_map_is_subsampled_to_the_cover_without_blending(tmp_path):
    """``cover``: every k-th value (the centre of each k x k block), the same for .npy and PNG, and
    invalid values stay invalid (no average of a hole with its neighbours)."""
    from mirage.depth import load_depth_file

    H, W = 3 * 30, 3 * 50  # k = 3 for cover (30, 50)
    mm = (1000 + np.arange(H * W).reshape(H, W) % 60000).astype(np.uint16)  # [H, W] millimetres, all distinct per row
    mm[4, 4] = 0  # a hole at the centre of block (1, 1)
    png, npy = tmp_path / "d.png", tmp_path / "d.npy"
    Image.fromarray(mm).save(png)
    np.save(npy, mm.astype(np.float32) / 1000)
    expected = mm[1::3, 1::3].astype(np.float32) / 1000  # [30, 50]
    for f in (png, npy):
        d = load_depth_file(f, cover=(30, 50))
        assert d.shape == (30, 50)
        assert torch.isnan(d[1, 1]) and torch.equal(torch.nan_to_num(d), torch.nan_to_num(torch.from_numpy(np.where(expected > 0, expected, np.nan))))
        assert load_depth_file(f).shape == (H, W)  # no cover: full size

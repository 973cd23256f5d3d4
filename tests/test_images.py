"""Tests for mirage/images.py: loading every image mode, resolution choice, and consistent
resize/crop of image, depth and intrinsics."""

import numpy as np
import PIL.Image
import pytest
import torch

from mirage.images import (
    choose_resolution,
    fit_depth,
    fit_image_depth_camera,
    fit_intrinsics,
    fit_to_aspect,
    image_to_uint8,
    load_image,
    plan_fit,
)


# ------------------------------------------------------------------------------------------ load
def test_load_rgb_file_values(tmp_path):
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[3, 4] = (0, 255, 51)
    path = tmp_path / "rgb.png"
    PIL.Image.fromarray(arr).save(path)
    img = load_image(path)
    assert img.shape == (3, 4, 5) and img.dtype == torch.float32
    assert torch.allclose(img[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(img[:, 3, 4], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]), atol=1e-6)
    assert torch.allclose(img[:, 1, 1], torch.tensor([-1.0, -1.0, -1.0]))
    assert np.array_equal(image_to_uint8(img), arr)  # exact round trip


def test_load_rgba_white_and_drop():
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[0, 0, 3] = 0  # transparent
    arr[0, 1, 3] = 255  # opaque
    arr[1, 0, 3] = 51  # 20 % opaque
    white = load_image(PIL.Image.fromarray(arr))
    assert torch.allclose(white[:, 0, 0], torch.ones(3))  # transparent -> white
    assert torch.allclose(white[:, 0, 1], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(white[:, 1, 0], torch.tensor([1.0, 0.6, 0.6]), atol=1e-6)  # 0.2 red + 0.8 white
    dropped = load_image(arr, alpha="drop")
    assert torch.allclose(dropped[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_load_grayscale_and_16bit(tmp_path):
    gray = np.array([[0, 128], [255, 64]], np.uint8)
    img = load_image(PIL.Image.fromarray(gray))
    assert img.shape == (3, 2, 2)
    assert torch.allclose(img[:, 0, 1], torch.full((3,), 128 / 127.5 - 1), atol=1e-6)
    deep = np.array([[0, 65535], [32768, 1000]], np.uint16)
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(deep).save(path)  # 16-bit grayscale PNG
    from_file = load_image(path)
    from_array = load_image(deep)
    expected = torch.from_numpy(deep.astype(np.float32) / 65535 * 2 - 1)
    for img in (from_file, from_array):
        assert img.shape == (3, 2, 2)
        assert torch.allclose(img[0], expected, atol=1e-6) and torch.equal(img[0], img[2])
    big_endian = load_image(deep.astype(">u2"))
    assert torch.allclose(big_endian[0], expected, atol=1e-6)
    i16 = PIL.Image.frombytes("I;16", (2, 2), deep.tobytes())
    assert torch.allclose(load_image(i16)[1], expected, atol=1e-6)


def test_load_palette_with_and_without_transparency(tmp_path):
    pal = PIL.Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0])
    img = load_image(pal)
    assert torch.allclose(img[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(img[:, 0, 1], torch.tensor([-1.0, -1.0, 1.0]))
    path = tmp_path / "pal.png"
    pal.save(path, transparency=1)  # palette index 1 transparent
    img = load_image(path)
    assert torch.allclose(img[:, 0, 1], torch.ones(3))  # composited on white
    assert torch.allclose(img[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_load_float_array_and_tensor():
    arr = np.full((2, 3, 3), 0.25, np.float32)
    assert torch.allclose(load_image(arr), torch.full((3, 2, 3), -0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(arr * 5)
    t = torch.rand(3, 4, 4) * 2 - 1
    assert torch.equal(load_image(t), t)
    with pytest.raises(ValueError, match="-1, 1"):
        load_image(t * 3)


def test_load_errors(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_image(empty)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="too large"):
        load_image(np.zeros((20000, 2, 3), np.uint8))
    wide = tmp_path / "wide.png"
    PIL.Image.new("L", (20000, 1)).save(wide)
    with pytest.raises(ValueError, match="wide.png.*too large"):  # checked before decoding
        load_image(wide)
    with pytest.raises(ValueError, match="dtype"):
        load_image(np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    # truncated PNG: header ok, data cut
    path = tmp_path / "cut.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(path)


def test_load_applies_exif_orientation(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)  # stored landscape 4x2
    arr[0, 0] = 255
    img = PIL.Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW for display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    assert load_image(path).shape == (3, 4, 2)  # displayed portrait


def test_reduction_factor_keeps_the_cover():
    from mirage.images import reduction_factor

    assert reduction_factor(8192, 16384, (704, 1280)) == 11  # long 16384 // 1280 = 12, short 8192 // 704 = 11
    assert reduction_factor(16384, 8192, (704, 1280)) == 11  # the same for portrait
    assert reduction_factor(4200, 4200, (704, 1280)) == 3
    assert reduction_factor(700, 1300, (704, 1280)) == 1 and reduction_factor(100, 100, (704, 1280)) == 1
    assert reduction_factor(8192, 16384, None) == 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16", "P", "1"])
def test_load_with_cover_box_averages_while_decoding(tmp_path, mode):
    """A file larger than the cover is shrunk by a whole factor (k x k box average, here k = 3) and
    still covers it; its values are the block means of the full-size load."""
    rng = np.random.default_rng(1)
    H, W = 3 * 40, 3 * 70
    arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img = PIL.Image.fromarray(arr)
    if mode == "I;16":
        img = PIL.Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"big_{mode.replace(';', '')}.png"
    img.save(path)
    full = load_image(path)  # [3, H, W]
    small = load_image(path, cover=(40, 64))
    assert small.shape == (3, H // 3, W // 3)
    if mode not in ("P", "1"):  # palettes and bilevel are converted before averaging: no exact block mean
        blocks = full.reshape(3, H // 3, 3, W // 3, 3).mean(dim=(2, 4))  # [3, H/3, W/3]
        torch.testing.assert_close(small, blocks, atol=2.5 / 127.5, rtol=0)  # PIL rounds to the stored integers
    assert load_image(path, cover=(H, W)).shape == full.shape  # a cover it just meets: not shrunk


def test_load_with_cover_keeps_exif_orientation(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)  # stored landscape 80x40
    arr[:20, :40] = 255  # top-left quarter white
    img = PIL.Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW for display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    small = load_image(path, cover=(20, 40))  # reduced by 2 (JPEG draft scale), then turned
    assert small.shape == (3, 40, 20)  # displayed portrait
    assert float(small[:, :10, 10:].mean()) > 0.9 and float(small[:, 30:, :10].mean()) < -0.9  # white top-right


# ------------------------------------------------------------------------------------ resolution
def test_choose_resolution():
    assert choose_resolution(1080, 1920) == (704, 1280)
    assert choose_resolution(1920, 1080) == (1280, 704)
    assert choose_resolution(500, 500) == (704, 1280)  # square counts as landscape
    assert choose_resolution(300, 400, long_side=512) == (288, 512)  # 512 * 0.55 = 281.6 -> 288
    assert choose_resolution(400, 300, long_side=512) == (512, 288)
    h, w = choose_resolution(10, 20, long_side=640)
    assert (h, w) == (352, 640) and h % 32 == 0
    with pytest.raises(ValueError, match="500"):
        choose_resolution(10, 20, long_side=500)
    with pytest.raises(ValueError, match="exceeds"):
        choose_resolution(10, 20, long_side=256, short_side=512)


# --------------------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("src,dst", [((1000, 500), (320, 176)), ((480, 640), (176, 320)), ((333, 777), (128, 128))])
def test_fit_to_aspect_shapes(src, dst):
    W, H = src
    img = torch.rand(3, H, W) * 2 - 1
    out = fit_to_aspect(img, *dst)
    assert out.shape == (3, dst[1], dst[0])
    assert out.min() >= -1 and out.max() <= 1


def test_fit_constant_image_stays_constant():
    img = torch.full((3, 90, 200), 0.3)
    assert torch.allclose(fit_to_aspect(img, 64, 64), torch.full((3, 64, 64), 0.3), atol=1e-5)


def test_fit_intrinsics_literal():
    # 1000x500 -> 320x320: scale 0.64 -> 640x320, crop 160 columns on the left
    plan = plan_fit(1000, 500, 320, 320)
    assert (plan.resized_width, plan.resized_height, plan.left, plan.top) == (640, 320, 160, 0)
    K = torch.tensor([[500.0, 0, 500], [0, 500, 250], [0, 0, 1]])
    K2 = fit_intrinsics(K, 1000, 500, 320, 320)
    assert torch.allclose(K2, torch.tensor([[320.0, 0, 160], [0, 320, 160], [0, 0, 1]]))


def test_fit_ray_hits_same_scene_point():
    """The ray through an output pixel centre, at the source depth, projects back to the source
    position that the resize/crop samples for that pixel."""
    W, H, Wt, Ht = 301, 157, 96, 80
    K = torch.tensor([[210.0, 0, 140.3], [0, 190, 81.7], [0, 0, 1]])
    K2 = fit_intrinsics(K, W, H, Wt, Ht)
    plan = plan_fit(W, H, Wt, Ht)
    u2, v2 = torch.meshgrid(torch.arange(Wt) + 0.5, torch.arange(Ht) + 0.5, indexing="xy")  # output centres
    pix = torch.stack([u2, v2, torch.ones_like(u2)], -1).reshape(-1, 3).double()  # [P, 3]
    X = (torch.linalg.inv(K2.double()) @ pix.T).T * 3.7  # [P, 3] scene points at depth 3.7
    back = (K.double() @ X.T).T
    back = back[:, :2] / back[:, 2:]  # [P, 2] continuous source position
    expected_u = (pix[:, 0] + plan.left) / plan.scale_x  # sampling position of the resampler
    expected_v = (pix[:, 1] + plan.top) / plan.scale_y
    assert torch.allclose(back[:, 0], expected_u, atol=1e-6) and torch.allclose(back[:, 1], expected_v, atol=1e-6)


def test_fit_image_and_K_agree_on_a_blob():
    """A Gaussian blob at the projection of a scene point lands, after fitting, at the projection
    of the same point with the fitted K (sub-pixel centroid)."""
    W, H, Wt, Ht = 400, 300, 160, 96
    K = torch.tensor([[300.0, 0, 190], [0, 300, 160], [0, 0, 1]])
    X = torch.tensor([0.31, -0.2, 2.0])
    p = K @ X
    u0, v0 = float(p[0] / p[2]), float(p[1] / p[2])
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    blob = torch.exp(-((xx - u0) ** 2 + (yy - v0) ** 2) / (2 * 6.0**2))  # [H, W]
    img = (blob * 2 - 1).expand(3, H, W)
    out, _, K2 = fit_image_depth_camera(img, None, K, Wt, Ht)
    w = (out[0] + 1) / 2  # [Ht, Wt]
    w = w * (w > 0.02)
    yy2, xx2 = torch.meshgrid(torch.arange(Ht) + 0.5, torch.arange(Wt) + 0.5, indexing="ij")
    cu, cv = float((w * xx2).sum() / w.sum()), float((w * yy2).sum() / w.sum())
    q = K2 @ X
    assert abs(cu - float(q[0] / q[2])) < 0.05 and abs(cv - float(q[1] / q[2])) < 0.05


def test_fit_depth_linear_ramp_and_invalid():
    W, H, Wt, Ht = 200, 100, 64, 48
    u = torch.arange(W) + 0.5
    depth = (2.0 + 0.01 * u).expand(H, W).clone()  # linear in the continuous column
    depth[:, 150:] = torch.nan  # an invalid band on the right
    plan = plan_fit(W, H, Wt, Ht)
    for mode in ("bilinear", "nearest"):
        out = fit_depth(depth, Wt, Ht, mode)
        assert out.shape == (Ht, Wt)
        src_u = (torch.arange(Wt) + 0.5 + plan.left) / plan.scale_x  # [Wt] sampled source position
        interior = (src_u > 3) & (src_u < 147)
        expected = 2.0 + 0.01 * src_u
        # bilinear: the antialiased filter's discrete weights shift a ramp by < 0.1 px (0.001 m here),
        # a half-pixel convention error would be 0.005 m; nearest: at most half a source pixel
        tol = 1e-3 if mode == "bilinear" else 0.0051
        assert torch.allclose(out[:, interior], expected[interior].expand(Ht, -1), atol=tol)
        assert torch.isnan(out[:, src_u > 153]).all()  # invalid stays invalid
        assert (out[torch.isfinite(out)] <= 2.0 + 0.01 * 150 + 1e-4).all()  # nothing blended past the edge
    with pytest.raises(ValueError, match="aspect"):
        fit_image_depth_camera(torch.zeros(3, H, W), torch.ones(100, 100), None, Wt, Ht)


def test_fit_depth_at_other_resolution_matches():
    img = torch.zeros(3, 120, 200)
    depth_full = torch.full((120, 200), 5.0)
    depth_half = torch.full((60, 100), 5.0)
    _, d1, _ = fit_image_depth_camera(img, depth_full, None, 64, 64)
    _, d2, _ = fit_image_depth_camera(img, depth_half, None, 64, 64)
    assert d1.shape == d2.shape == (64, 64) and torch.allclose(d1, d2)

"""Tests for mirage/strokes.py: extracting, ordering and lifting a stroke drawn in an ImageEditor."""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from mirage.cameras import Camera, look_at
from mirage.strokes import lift_stroke, order_stroke, stroke_mask, stroke_pixels_from_layers

W, H = 160, 128


def layer_with(draw_fn) -> np.ndarray:  # -> RGBA [H, W, 4]
    im = PIL.Image.new("RGBA", (W, H), (0, 0, 0, 0))
    draw_fn(PIL.ImageDraw.Draw(im))
    return np.asarray(im).copy()


def editor_value(*layers):
    background = np.full((H, W, 3), 90, np.uint8)
    return {"background": background, "layers": list(layers), "composite": background}


def identity_camera(width=W, height=H, f=100.0):
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    return Camera(K, torch.eye(4), width, height)


# ------------------------------------------------------------------------------------- extraction
def test_straight_stroke_ordered_from_centre_outward():
    # drawn from the far end (20, 30) toward the centre; the order must still start near the centre
    layer = layer_with(lambda d: d.line([(20, 30), (100, 60)], fill=(255, 0, 0, 255), width=7))
    pts = stroke_pixels_from_layers(editor_value(layer), num_points=9)
    assert pts.shape == (9, 2) and pts.dtype == torch.float32
    assert torch.dist(pts[0], torch.tensor([100.0, 60.0])) < 4  # end nearer the centre (80, 64) first
    assert torch.dist(pts[-1], torch.tensor([20.0, 30.0])) < 4
    direction = torch.tensor([-80.0, -30.0]) / np.hypot(80, 30)
    along = (pts - pts[0]) @ direction  # monotone progress along the line
    assert (along[1:] > along[:-1]).all()
    normal = torch.tensor([30.0, -80.0]) / np.hypot(80, 30)
    offset = (pts - torch.tensor([20.0, 30.0])) @ normal  # stays on the line (brush width 7)
    assert offset.abs().max() < 3.5
    steps = (pts[1:] - pts[:-1]).norm(dim=1)  # equal spacing by arc length
    assert steps.max() / steps.min() < 1.5


def test_start_near_principal_point_flips_orientation():
    layer = layer_with(lambda d: d.line([(20, 64), (140, 64)], fill=(0, 0, 255, 255), width=3))
    left_first = stroke_pixels_from_layers(layer, 5, start_near=(10.0, 64.0))
    right_first = stroke_pixels_from_layers(layer, 5, start_near=(150.0, 64.0))
    assert left_first[0, 0] < 25 and left_first[-1, 0] > 135
    assert torch.allclose(right_first, left_first.flip(0), atol=1e-4)


def test_scribble_spiral_is_followed():
    t = np.linspace(0.5, 4 * np.pi, 300)
    r = 4 + 4.5 * t
    pts = list(zip(80 + r * np.cos(t), 64 + r * np.sin(t)))
    layer = layer_with(lambda d: d.line(pts, fill=(0, 255, 0, 255), width=9))
    out = stroke_pixels_from_layers(editor_value(layer), num_points=24)
    radius = (out - torch.tensor([79.5, 63.5])).norm(dim=1)  # index coords of the centre
    assert radius[0] < 15 and radius[-1] > 50  # from the inside of the spiral to the outside
    assert (radius[1:] - radius[:-1] > -4).all()  # it never jumps back across turns
    angle = np.unwrap(np.arctan2(out[:, 1] - 63.5, out[:, 0] - 79.5).numpy())
    assert abs(angle[-1] - angle[0]) > 3 * np.pi  # winds around, does not cut across


def test_several_layers_and_pen_lift_are_joined():
    a = layer_with(lambda d: d.line([(20, 20), (60, 20)], fill=(255, 0, 0, 255), width=3))
    b = layer_with(lambda d: d.line([(66, 20), (120, 20)], fill=(255, 0, 0, 128), width=3))
    mask = stroke_mask(editor_value(a, None, b))
    assert mask.sum() == (a[..., 3] > 0).sum() + (b[..., 3] > 0).sum()
    pts = order_stroke(mask, 6, start_near=(0.0, 20.0))
    assert pts[0, 0] < 22 and pts[-1, 0] > 118 and (pts[1:, 0] > pts[:-1, 0]).all()


def test_target_size_rescales_in_continuous_coordinates():
    layer = layer_with(lambda d: d.line([(40, 64), (120, 64)], fill=(255, 0, 0, 255), width=1))
    small = stroke_pixels_from_layers(layer, 2, start_near=(0.0, 64.0))
    big = stroke_pixels_from_layers(layer, 2, start_near=(0.0, 128.0), target_size=(2 * H, 2 * W))
    assert torch.allclose(big, (small + 0.5) * 2 - 0.5)


def test_stroke_errors():
    empty = np.zeros((H, W, 4), np.uint8)
    with pytest.raises(ValueError, match="no stroke drawn"):
        stroke_pixels_from_layers(editor_value(empty))
    with pytest.raises(ValueError, match="no stroke drawn"):
        stroke_pixels_from_layers({"background": None, "layers": [], "composite": None})
    dot = empty.copy()
    dot[50, 70, 3] = 255
    with pytest.raises(ValueError, match="single pixel"):
        stroke_pixels_from_layers(editor_value(dot))
    blob = empty.copy()
    blob[50:52, 70:72, 3] = 255
    with pytest.raises(ValueError, match="too short"):
        stroke_pixels_from_layers(editor_value(blob))
    with pytest.raises(ValueError, match="RGBA"):
        stroke_pixels_from_layers(editor_value(np.zeros((H, W, 3), np.uint8)))
    wrong_bg = {"background": np.zeros((10, 10, 3), np.uint8), "layers": [dot], "composite": None}
    with pytest.raises(ValueError, match="background"):
        stroke_mask(wrong_bg)


# ------------------------------------------------------------------------------------------- lift
def test_lift_principal_point_identity_camera():
    cam = identity_camera()
    depth = torch.full((H, W), 4.0)
    pp = torch.tensor([[W / 2 - 0.5, H / 2 - 0.5]])  # pixel whose centre is the principal point
    assert torch.allclose(lift_stroke(pp, depth, cam, 0.5), torch.tensor([[0.0, 0.0, 2.0]]))


def test_lift_off_axis_and_posed_camera():
    cam = identity_camera()
    depth = torch.full((H, W), 4.0)
    px = torch.tensor([[W / 2 - 0.5 + 50, H / 2 - 0.5 - 25]])  # 50 px right, 25 px up, f = 100
    expected = torch.tensor([[0.5 * 4 * 0.5, -0.25 * 4 * 0.5, 2.0]])
    assert torch.allclose(lift_stroke(px, depth, cam, 0.5), expected, atol=1e-5)
    eye = torch.tensor([1.0, -2.0, 0.5])
    posed = Camera(cam.K, look_at(eye, eye + torch.tensor([1.0, 0.0, 0.0])), W, H)  # looking along +x
    centre = lift_stroke(torch.tensor([[W / 2 - 0.5, H / 2 - 0.5]]), depth, posed, 0.25)
    assert torch.allclose(centre, (eye + torch.tensor([1.0, 0.0, 0.0]))[None], atol=1e-5)


def test_lift_invalid_depth_uses_nearest_valid_then_median():
    cam = identity_camera()
    depth = torch.full((H, W), 6.0)
    depth[50:81, 70:85] = torch.nan  # hole around pixel (79, 63)
    depth[50:81, 84] = 3.0  # nearest valid: 5 px right (others: 10 px left, >= 13 px up/down)
    pp = torch.tensor([[79.0, 63.0], [79.2, 62.6]])  # both fall in pixel (79, 63)
    z = lift_stroke(pp, depth, cam, 0.5)[:, 2]
    assert torch.allclose(z, torch.tensor([1.5, 1.5]))
    hole = torch.full((H, W), torch.nan)
    hole[:5, :5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    far = lift_stroke(torch.tensor([[120.0, 100.0]]), hole, cam, 0.5, search_radius=3)
    assert far[0, 2] == pytest.approx(0.5 * 3.0)  # nothing valid nearby: median of the valid depths
    with pytest.raises(ValueError, match="no valid"):
        lift_stroke(pp, torch.full((H, W), torch.nan), cam)


def test_lift_errors():
    cam = identity_camera()
    depth = torch.full((H, W), 4.0)
    with pytest.raises(ValueError, match="outside the image"):
        lift_stroke(torch.tensor([[10.0, 10.0], [W + 3.0, 10.0]]), depth, cam)
    with pytest.raises(ValueError, match="depth_fraction"):
        lift_stroke(torch.tensor([[10.0, 10.0]]), depth, cam, 0.95)
    with pytest.raises(ValueError, match="depth"):
        lift_stroke(torch.tensor([[10.0, 10.0]]), torch.ones(10, 10), cam)


def test_stroke_to_camera_path():
    paths = pytest.importorskip("mirage.paths")
    cam = identity_camera()
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    depth = 3.0 + 0.02 * xx  # a slanted wall
    layer = layer_with(lambda d: d.line([(80, 64), (140, 64)], fill=(255, 0, 0, 255), width=5))
    pixels = stroke_pixels_from_layers(layer, 8, start_near=(80.0, 64.0))
    points = lift_stroke(pixels, depth, cam, 0.5)  # [8, 3]
    assert (points[:, 2] < 0.5 * depth.max() + 1e-4).all() and (points[1:, 0] > points[:-1, 0]).all()
    path = paths.path_from_points(cam, points, 17)
    assert len(path) == 17
    assert torch.allclose(path.centers[0], torch.zeros(3), atol=1e-6)
    assert torch.allclose(path.centers[-1], points[-1], atol=1e-3)

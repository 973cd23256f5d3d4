"""Both memories through their public interface on the ray-cast scenes of ``test_footprints``: crack
rates under nine camera motions, disocclusions kept as holes, a one-frame memory equal to the plain
z-buffer, and the Middlebury warp of the pixel memory equal to it as well (run ``pytest -s`` to see
the rates)."""

import torch

from mirage.cameras import Camera, Cameras
from mirage.examples import crop_to_multiple, load_middlebury_motorcycle
from mirage.memory import LatentSpatialMemory, Observation, RGBPointCloudMemory
from test_footprints import GRID_H, GRID_K, GRID_W, MOTIONS, SCENES, _away_from, _ground_truth, _motion

S = 16  # the latent memory stores one point per 16x16 pixels: its grid is GRID_W x GRID_H for 640x384 images


def _both(scene, **kw):
    """Each memory built from the source view so that its storage grid is GRID_W x GRID_H: the latent
    memory for 640x384 images (depth given on its grid), the pixel memory for a 40x24 image."""
    _, depth = scene.render(Cameras(GRID_K[None], torch.eye(4)[None], GRID_W, GRID_H))  # [1, h, w] at the cell centres
    g = torch.Generator().manual_seed(0)
    K_pix = GRID_K.clone()
    K_pix[:2] *= S
    latent = LatentSpatialMemory(**kw).initialize(Observation(
        Camera(K_pix, torch.eye(4), GRID_W * S, GRID_H * S).batch(), depth, torch.randn(48, 1, GRID_H, GRID_W, generator=g)))
    image = torch.rand(3, 1, GRID_H, GRID_W, generator=g) * 2 - 1
    rgb = RGBPointCloudMemory(**kw).initialize(Observation(Camera(GRID_K, torch.eye(4), GRID_W, GRID_H).batch(), depth, frames=image))
    return {"latent": latent, "rgb": rgb}


def _shown(memory, K, cam_from_world):  # -> [h, w] bool, what the memory shows in the target camera on its grid
    if isinstance(memory, LatentSpatialMemory):  # test-side only: each memory's own view of the target camera
        K = K.clone()
        K[:2] *= S
        return memory.read_views(Cameras(K[None], cam_from_world[None], GRID_W * S, GRID_H * S)).mask[0]
    return memory.render(Cameras(K[None], cam_from_world[None], GRID_W, GRID_H)).mask[0]


def test_both_memories_read_magnified_views_without_cracks_and_keep_disocclusions():
    for scene_name in ("plane", "box"):
        memories = _both(SCENES[scene_name])
        for name in MOTIONS:
            K, T = _motion(name)
            should, occluded, _, _ = _ground_truth(SCENES[scene_name], K, T)
            deep = _away_from(occluded)
            for kind, mem in memories.items():
                shown = _shown(mem, K, T)
                crack = float((should & ~shown).sum() / should.sum())
                print(f"{scene_name:5s} {name:14s} {kind:6s} crack {100 * crack:5.2f}%  disoccluded holes kept "
                      f"{int((deep & ~shown).sum())}/{int(deep.sum())}")  # fmt: skip
                assert crack <= 0.01, (scene_name, name, kind, crack)
                if deep.any():
                    assert float((deep & ~shown).sum() / deep.sum()) >= 0.95, (scene_name, name, kind)


def test_a_one_frame_memory_reads_like_the_plain_zbuffer():
    """The band rule picks the oldest *frame*: within one frame the closest point wins, so the
    surface tolerance changes nothing for a memory built from one frame."""
    for kind, banded in _both(SCENES["box"]).items():
        hard = _both(SCENES["box"], surface_tolerance=0.0)[kind]
        for name in MOTIONS:
            K, T = _motion(name)
            if kind == "latent":
                K = K.clone()
                K[:2] *= S
                cams = Cameras(K[None], T[None], GRID_W * S, GRID_H * S)
                a, b = banded.read_views(cams), hard.read_views(cams)
                assert torch.equal(a.latents, b.latents) and torch.equal(a.mask, b.mask), (kind, name)
            else:
                cams = Cameras(K[None], T[None], GRID_W, GRID_H)
                a, b = banded.render(cams), hard.render(cams)
                assert torch.equal(a.frames, b.frames) and torch.equal(a.mask, b.mask), (kind, name)


def test_middlebury_warp_of_the_pixel_memory_is_the_plain_zbuffer():
    """Warping the real left view into the right camera: the pixel memory (one frame) gives exactly the
    plain z-buffer's render, where the old rule (lowest point index within the band) lost over 1 dB."""
    ex = crop_to_multiple(load_middlebury_motorcycle(), 16)
    obs = Observation.single(ex.camera_left, ex.depth_left, image=ex.left)
    right = ex.camera_right.batch()
    banded = RGBPointCloudMemory().initialize(obs).render(right)
    hard = RGBPointCloudMemory(surface_tolerance=0.0).initialize(obs).render(right)
    assert torch.equal(banded.frames, hard.frames) and torch.equal(banded.mask, hard.mask)
    seen = banded.mask[0]
    mse = float(((banded.frames[:, 0] - ex.right) ** 2).mean(0)[seen].mean())
    psnr = 10 * torch.log10(torch.tensor(4.0 / mse))  # values in [-1, 1]: peak-to-peak 2
    print(f"Middlebury left -> right warp, pixel memory: PSNR {float(psnr):.2f} dB on {float(seen.float().mean()):.1%} of pixels")
    assert psnr > 20

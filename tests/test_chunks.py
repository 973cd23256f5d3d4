"""The chunk step (``mirage.chunks``): which latents, frames, depths and cameras reach each memory update.

Every latent frame the denoiser returns carries its own path index ``g`` in its DC channel; the depth
part reads ``g`` back from the decoded frame it is handed and answers a depth that encodes it. The
memory built by ``run_chunks`` must then equal a memory built by hand from the convention
(``CONVENTIONS.md``: latent frame ``k`` of a chunk starting at pixel frame ``s`` uses the camera of pixel
frame ``s + 4k``; the pinned latents are not stored again), for both memories, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from mirage.chunks import ChunkParts, DepthResult, run_chunks, start_memory
from mirage.codecs import OfflineCodec
from mirage.frames import Chunking
from mirage.memory import MEMORY_KINDS, MemoryConfig, Observation, make_memory
from mirage.paths import make_preset_path
from mirage.synthetic import default_camera

H, W, T = 64, 96, 17
CHUNKING = Chunking(9, 9, 1)  # two chunks of 3 latent frames: pixel frames 0..8 and 8..16
UNIT = 0.05  # the DC latent of path latent frame g is UNIT * g
STAMP = 0.002  # decoded pixel frame t of a chunk is brightened by STAMP * t


class StampedCodec(OfflineCodec):
    """The offline codec whose decode also stamps each pixel frame with its index in the chunk, so that
    frames of one latent frame (which the offline codec decodes alike) can be told apart."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # [B, C, F, h, w] -> [B, 3, T, H, W]
        video = super().decode(latents)
        return video + STAMP * torch.arange(video.shape[2], dtype=video.dtype).view(1, 1, -1, 1, 1)


CODEC = StampedCodec()


def depth_of(g: int) -> float:  # the depth the depth part answers for path latent frame g
    return 1.5 + 0.25 * g


def tagged_latents(first_global: int, frames: int, pinned) -> torch.Tensor:  # -> [1, 48, F, h, w]
    """Latents whose frame k is tagged with its path latent index ``first_global + k`` (frame 0..P-1 pinned)."""
    z = torch.zeros(1, 48, frames, H // 16, W // 16)
    for k in range(frames):
        z[:, 0, k] = UNIT * (first_global + k)
    z[:, :, : pinned.shape[2]] = pinned
    return z


def read_tag(frame: torch.Tensor) -> tuple[int, int]:  # frame [3, H, W] decoded -> (path latent index, chunk pixel frame)
    g = int(torch.round(OfflineCodec().encode(frame[None, :, None])[0, 0, 0].mean() / UNIT))  # the DC latent of its cells
    base = OfflineCodec().decode(tagged_latents(g, 1, torch.zeros(1, 48, 0, H // 16, W // 16)))[0, :, 0]  # [3, H, W]
    return g, int(torch.round((frame - base).mean() / STAMP))


@pytest.fixture(scope="module")
def setting():
    camera = default_camera(W, H)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, H, W, generator=g) * 1.6 - 0.8
    path = make_preset_path("dolly_in", camera, num_frames=T, amount=0.3, scene_depth=2.0)  # every camera another z
    return camera, image, torch.full((H, W), 2.0), path


def test_each_update_gets_the_latents_frames_depth_and_cameras_of_its_own_latent_frames(setting):
    camera, image, depth, path = setting
    for kind in MEMORY_KINDS:
        seen_tags: list[list[int]] = []

        def denoise(chunk, conditioning):
            return tagged_latents(chunk.frame_range[0] // 4, len(chunk.latent_cameras), chunk.pinned)

        def depth_part(chunk, new_frames, previous_scale):  # new_frames [3, F-P, H, W]
            tags = [read_tag(new_frames[:, j]) for j in range(new_frames.shape[1])]  # (g, pixel frame in the chunk)
            seen_tags.append(tags)
            return DepthResult(torch.stack([torch.full((H, W), depth_of(g)) for g, _ in tags]), 1.0, True)

        memory = make_memory(kind, MemoryConfig(update_policy="append"), codec=CODEC)
        first_latent, _ = start_memory(memory, camera, image, depth, CODEC.encode)
        parts = ChunkParts(CODEC, lambda chunk: None, denoise, depth_part)
        results = run_chunks(memory, path, first_latent, parts, CHUNKING, continuation="latent")

        # the depth part saw pixel frames 4 and 8 of each chunk: path latent frames 1, 2 (chunk 0) and 3, 4 (chunk 1,
        # after its pinned frame 0)
        assert seen_tags == [[(1, 4), (2, 8)], [(3, 4), (4, 8)]]
        assert [r.pinned_latents for r in results] == [1, 1]
        # the same memory, built by hand from the convention
        expected = make_memory(kind, MemoryConfig(update_policy="append"), codec=CODEC)
        start_memory(expected, camera, image, depth, CODEC.encode)
        for start, stop in CHUNKING.ranges(T):
            gs = list(range(start // 4 + 1, (stop - 1) // 4 + 1))  # the chunk's new latent frames, by path index
            latents = tagged_latents(gs[0], len(gs), torch.zeros(1, 48, 0, H // 16, W // 16))[0]  # [48, F-P, h, w]
            decoded = CODEC.decode(torch.cat([torch.zeros_like(latents[:, :1]), latents], dim=1)[None])[0]  # [3, 9, H, W]
            frames = decoded[:, 4::4]  # [3, F-P, H, W] pixel frames 4, 8 of the chunk, with their stamps
            depths = torch.stack([torch.full((H, W), depth_of(g)) for g in gs])  # [F-P, H, W]
            expected.update(Observation(path[[4 * g for g in gs]], depths, latents, frames))
        assert torch.equal(memory.frame_ids, expected.frame_ids), kind
        assert torch.equal(memory.points, expected.points), kind
        assert torch.equal(memory.values, expected.values), kind
        # and each point sits at the depth of its own frame, in its own frame's camera
        for f in range(1, memory.frames_stored):
            cam = path[4 * f]
            z = (memory.points[memory.frame_ids == f] @ cam.cam_from_world[0, :3, :3].T + cam.cam_from_world[0, :3, 3])[:, 2]
            torch.testing.assert_close(z, torch.full_like(z, depth_of(f)), rtol=0, atol=1e-5)


def _preview_parts() -> ChunkParts:
    """The offline preview's parts: the latents are the readout, the depth the readout's own."""
    from mirage.chunks import identity_denoise, readout_depth

    return ChunkParts(CODEC, lambda chunk: None, identity_denoise, readout_depth)


def _run(setting, kind="latent", frames=T):
    from mirage.chunks import ChunkRun
    from mirage.paths import CameraPath

    camera, image, depth, path = setting
    memory = make_memory(kind, MemoryConfig(update_policy="append"), codec=CODEC)
    first_latent, initial = start_memory(memory, camera, image, depth, CODEC.encode)
    return ChunkRun(memory, CameraPath.starting_at(path.source, path[:frames]), first_latent, CHUNKING, "latent", None, initial)


def test_a_run_resumed_after_pickling_equals_one_run_straight_through(setting):
    """Each chunk can be its own call: the run crosses a pickle between chunks (as between GPU calls)
    and ends exactly where the same run ends in one go."""
    import pickle

    from mirage.chunks import step

    straight, split = _run(setting), _run(setting)
    while not straight.done:
        step(straight, _preview_parts())
    while not split.done:
        split = pickle.loads(pickle.dumps(split))  # the memory travels without its codec: given back before a step
        split.memory.codec = CODEC
        step(split, _preview_parts())
    assert [r.frame_range for r in split.history] == [r.frame_range for r in straight.history] == CHUNKING.ranges(T)
    for a, b in ((split.memory.points, straight.memory.points), (split.memory.values, straight.memory.values)):
        assert torch.equal(a, b)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(split.history, straight.history))
    with pytest.raises(ValueError, match="all 2 chunks of the 17-frame path are done: extend the path"):
        step(split, _preview_parts())


def test_undo_takes_the_last_chunk_back_exactly_and_extend_goes_on(setting):
    from mirage.chunks import step

    camera, image, depth, path = setting
    run = _run(setting, "rgb", frames=9)  # the pixel memory: one chunk of a 9-frame path
    before = (run.memory.points.clone(), run.memory.values.clone(), run.memory.frames_stored, list(run.memory.size_history))
    step(run, _preview_parts())
    assert run.done and run.memory.num_points > before[0].shape[0]
    dropped = run.undo()
    assert dropped.frame_range == (0, 9) and run.history == [] and not run.done
    assert torch.equal(run.memory.points, before[0]) and torch.equal(run.memory.values, before[1])
    assert (run.memory.frames_stored, run.memory.size_history) == before[2:]
    with pytest.raises(ValueError, match="no chunk to undo"):
        run.undo()
    step(run, _preview_parts())
    from mirage.cameras import Cameras
    from mirage.paths import CameraPath

    moved = path.cam_from_world.clone()
    moved[3, 0, 3] += 0.01  # frame 3, which chunk 0 already ran, elsewhere
    with pytest.raises(ValueError, match="must begin with the frames run so far"):
        run.extend(CameraPath.starting_at(path.source, Cameras(path.K, moved, path.width, path.height)))
    run.extend(path)  # the same cameras, then 8 more: one more chunk
    assert run.ranges == [(0, 9), (8, 17)] and not run.done
    step(run, _preview_parts())
    assert run.done
    with pytest.raises(ValueError, match="longer CameraPath than the 17 frames"):
        run.extend(path)

"""MiragePipeline with a trained side branch (``memory_mode="branch"``) on CPU, tiny random models.

A 4-layer random transformer, a random 2-block branch and a random LoRA in the checkpoint families'
own key names are loaded with ``load_branch``; ``branched_forward`` is wrapped to record what every
model call receives. The checks are on what the references specify: the sequence
``[references, chunk, preceding]`` with clean tokens at timestep 0, the 96-channel context built
from the memory, the LoRA switched per chunk, the pinned history, Wan's own sigma schedule.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler

import mirage.pipeline as pipeline_module
from mirage.codecs import WanVAECodec
from mirage.depth import PlanarPriorBackend
from mirage.frames import Chunking
from mirage.paths import make_preset_path
from mirage.families import DEFAULTS
from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline
from mirage.synthetic import default_camera, default_scene
from mirage.testing import (
    TINY_BRANCH_TRANSFORMER_CONFIG,
    TINY_TEXT_DIM,
    TINY_VAE_CONFIG,
    tiny_branch_state_dict,
    tiny_branch_transformer,
    tiny_lora_state_dict,
)

H, W, STEPS = 64, 96, 2
TOKENS = (H // 32) * (W // 32)  # tokens per latent frame: (h/2) * (w/2) = 2 * 3
LAYERS = (0, 2)  # the tiny branch: hints after blocks 0 and 2 of 4


def lora_state_dict(rank: int = 4, seed: int = 0, default: bool = True) -> dict:
    """A random LoRA for the tiny transformer in DiffSynth's module names (Spatia's file layout)."""
    return tiny_lora_state_dict(TINY_BRANCH_TRANSFORMER_CONFIG, rank, seed, default=default)


def branch_state_dict(seed: int = 1, zero_out: bool = False) -> dict:
    return tiny_branch_state_dict(TINY_BRANCH_TRANSFORMER_CONFIG, LAYERS, seed, zero_out)  # a trainer's prefix, stripped on load


def make_pipe() -> MiragePipeline:
    torch.set_num_threads(2)
    vae = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=0).vae
    return MiragePipeline(tiny_branch_transformer(), vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG),
                          depth_backend=PlanarPriorBackend())  # fmt: skip


@pytest.fixture(scope="module")
def scene():
    cam = default_camera(W, H)
    rgb, depth = default_scene().render(cam)  # [1, 3, H, W], [1, H, W]
    path = make_preset_path("orbit_left", cam, num_frames=25, amount=40.0, scene_depth=float(depth.median()))
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 8, TINY_TEXT_DIM, generator=gen), torch.randn(1, 8, TINY_TEXT_DIM, generator=gen)
    return rgb[0], depth[0], path, embeds


class CallRecorder:
    """Wraps ``mirage.pipeline.branched_forward``: keeps every call's inputs and whether the LoRA was on."""

    def __init__(self, monkeypatch, pipe: MiragePipeline) -> None:
        self.calls: list[dict] = []
        real = pipeline_module.branched_forward

        def wrapped(transformer, branch, hidden_states, timestep, encoder_hidden_states, *, context=None, num_ref_frames=0):
            q = transformer.blocks[0].attn1.to_q
            self.calls.append(dict(x=hidden_states.clone(), t=timestep.clone(), text=encoder_hidden_states.clone(),
                                   context=context.clone(), refs=num_ref_frames, lora=not getattr(q, "disable_adapters", True)))  # fmt: skip
            return real(transformer, branch, hidden_states, timestep, encoder_hidden_states, context=context,
                        num_ref_frames=num_ref_frames)  # fmt: skip

        monkeypatch.setattr(pipeline_module, "branched_forward", wrapped)


def run(pipe, scene, memory, num_frames, **kwargs):
    image, depth, path, (embeds, negative) = scene
    args = dict(prompt_embeds=embeds, num_frames=num_frames, num_inference_steps=STEPS, image_depth=depth,
                memory=memory, memory_mode="branch", generator=torch.Generator().manual_seed(0))  # fmt: skip
    if kwargs.get("guidance_scale", pipe.defaults_for(kwargs.get("memory_mode", "branch")).guidance_scale) > 1:
        args["negative_prompt_embeds"] = negative
    args.update(kwargs)
    return pipe(image, path, **args)


# ----------------------------------------------------------------------------- Mirage's format
@pytest.mark.parametrize("memory", ["latent", "rgb"])
def test_mirage_branch_sequence_context_and_continuation(scene, monkeypatch, memory):
    pipe = make_pipe().load_branch("mirage", branch_state_dict(), lora_state_dict(default=False), layers=LAYERS)
    rec = CallRecorder(monkeypatch, pipe)
    out = run(pipe, scene, memory, 25, chunking=Chunking(9, 9, 1))  # 3 chunks of 3 latents, one shared frame
    assert out.frame_ranges == [(0, 9), (8, 17), (16, 25)] and out.video.shape == (3, 25, H, W)
    assert len(rec.calls) == 3 * STEPS  # no guidance: one call per step
    white = pipe.codec.encode(torch.ones(1, 3, 9, H, W)).float()  # [1, 48, 3, h, w] the score of a 3-latent context
    earlier_latents = []
    for c, chunk in enumerate(out.chunks):
        calls = rec.calls[c * STEPS : (c + 1) * STEPS]
        R = calls[0]["refs"]
        Q = 0 if c == 0 else 2  # the two latents before the previous chunk's last one
        for call in calls:
            assert call["lora"]  # Mirage's LoRA is on in every chunk
            assert call["x"].shape == (1, 48, R + 3 + Q, 4, 6)
            t = call["t"].view(R + 3 + Q, TOKENS)
            assert (t[:R] == 0).all() and (t[R] == 0).all() and (t[R + 3 :] == 0).all()  # refs, frame 0, preceding clean
            assert (t[R + 1 : R + 3] > 0).all()
            ctx = call["context"]  # [1, 96, 3 + Q, h, w]: readout of the chunk then of the preceding latents; white
            assert ctx.shape == (1, 96, 3 + Q, 4, 6)
            torch.testing.assert_close(ctx[0, :48, :3], chunk.readout.latents.float(), rtol=0, atol=0)
            if c == 0:
                torch.testing.assert_close(ctx[:, 48:], white, rtol=0, atol=1e-6)
            else:
                previous = out.chunks[c - 1]
                torch.testing.assert_close(ctx[0, :48, 3:], previous.readout.latents[:, -3:-1].float(), rtol=0, atol=0)
                torch.testing.assert_close(call["x"][0, :, R + 3 :].float(), previous.latents[:, -3:-1].bfloat16().float()
                                           if call["x"].dtype == torch.bfloat16 else previous.latents[:, -3:-1])  # fmt: skip
            for r in range(R):  # every reference is a latent generated earlier
                assert any(torch.equal(call["x"][0, :, r], z) for z in earlier_latents)
        assert R <= 4 and (c > 0 or R == 0)
        if c > 0:  # the next chunk's frame 0 is the previous chunk's last latent
            assert torch.equal(chunk.latents[:, 0], out.chunks[c - 1].latents[:, -1])
        earlier_latents += [chunk.latents[:, k] for k in range(chunk.latents.shape[1])]
    assert any(call["refs"] > 0 for call in rec.calls)  # the orbit revisits what chunk 0 saw: references are used
    assert out.settings["branch"] == "mirage" and out.settings["reference_schedule"] is True


# ----------------------------------------------------------------------------- Spatia's format
@pytest.mark.parametrize("memory", ["rgb", "latent"])
def test_spatia_branch_history_hole_score_lora_and_guidance(scene, monkeypatch, memory):
    pipe = make_pipe().load_branch("spatia", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    rec = CallRecorder(monkeypatch, pipe)
    chunking = Chunking(13, 9, 5)  # as Spatia's 121 / 81 / 9 at a tiny size: 2 pinned history latents
    out = run(pipe, scene, memory, 21, chunking=chunking, guidance_scale=3.5)
    assert out.frame_ranges == [(0, 13), (8, 17), (12, 21)] and out.video.shape == (3, 21, H, W)
    assert len(rec.calls) == 3 * STEPS * 2  # guidance: a conditional and an unconditional call per step
    _, _, _, (embeds, negative) = scene
    for c, chunk in enumerate(out.chunks):
        calls = rec.calls[c * 2 * STEPS : (c + 1) * 2 * STEPS]
        F_ = chunk.latents.shape[1]
        P = 1 if c == 0 else 2
        T = chunk.frame_range[1] - chunk.frame_range[0]
        holes = 1 - chunk.readout.pixel_coverage  # [T, H, W] Spatia's score: 1 where nothing, soft at disc edges
        for k, call in enumerate(calls):
            assert call["lora"] == (c >= 1)  # Spatia uses its LoRA from the second round on
            torch.testing.assert_close(call["text"], (embeds if k % 2 == 0 else negative).to(call["text"]))
            R = call["refs"]
            assert call["x"].shape == (1, 48, R + F_, 4, 6)  # no preceding latents: the history is pinned
            t = call["t"].view(R + F_, TOKENS)
            assert (t[: R + P] == 0).all() and (t[R + P :] > 0).all()
            ctx = call["context"]
            assert ctx.shape == (1, 96, F_, 4, 6)
            torch.testing.assert_close(ctx[0, :48], chunk.readout.latents.float(), rtol=0, atol=0)
            if holes is not None:  # both memories: the score of what each shows, in [0, 1]
                score = pipe.codec.encode(holes.float()[None, None].expand(1, 3, T, H, W)).float()
                torch.testing.assert_close(ctx[:, 48:], score, rtol=0, atol=1e-6)
        if c > 0:  # the pinned history: the previous chunk's last 5 frames encoded as one video
            history = pipe.codec.encode(out.chunks[c - 1].frames[None, :, -5:]).float()  # [1, 48, 2, h, w]
            torch.testing.assert_close(chunk.latents[:, :2], history[0], rtol=0, atol=1e-6)
    assert out.settings["chunking"] == chunking and out.settings["guidance_scale"] == 3.5


def test_spatia_references_are_earlier_frames_encoded_alone(scene, monkeypatch):
    pipe = make_pipe().load_branch("spatia", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    rec = CallRecorder(monkeypatch, pipe)
    out = run(pipe, scene, "rgb", 21, chunking=Chunking(13, 9, 5), guidance_scale=1.0)
    frames = out.video  # [3, 21, H, W] the stitched video (each frame as it was decoded)
    used = 0
    for c in (1, 2):
        call = rec.calls[c * STEPS]
        start = out.frame_ranges[c][0]
        pool = [out.latents[0][:, 0] if f == 0 else pipe.codec.encode(frames[None, :, f : f + 1]).float()[0, :, 0]
                for f in range(0, start, 4)]  # path frame 0: the input image's latent  # fmt: skip
        for r in range(call["refs"]):
            assert any(torch.allclose(call["x"][0, :, r].float(), z, atol=1e-6) for z in pool)
        used += call["refs"]
    assert used > 0


def test_spatia_reference_of_path_frame_0_is_the_input_image(scene, monkeypatch):
    """Spatia's history begins with the input image itself (``all_hist_frames = [first_image]``): chosen as a
    reference, frame 0 is the image's latent (chunk 0's pinned latent), not an encoding of its decode."""
    import mirage.conditioning as conditioning

    pipe = make_pipe().load_branch("spatia", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    rec = CallRecorder(monkeypatch, pipe)
    monkeypatch.setattr(conditioning, "spatia_references", lambda memory, targets, candidates, **kw: [1, 0])  # frames 4, 0
    out = run(pipe, scene, "rgb", 17, chunking=Chunking(13, 9, 5), guidance_scale=1.0)
    x = rec.calls[STEPS]["x"][0]  # chunk 1's first call: [C, R + F, h, w], references first
    assert rec.calls[STEPS]["refs"] == 2
    image = out.latents[0][:, 0]  # [C, h, w] the input image's latent, pinned in chunk 0
    decoded = pipe.codec.encode(out.chunks[0].frames[None, :, 0:1]).float()[0, :, 0]  # frame 0 as decoded
    assert torch.equal(x[:, 1].float(), image) and not torch.allclose(x[:, 1].float(), decoded, atol=1e-3)
    frame4 = pipe.codec.encode(out.chunks[0].frames[None, :, 4:5]).float()[0, :, 0]
    torch.testing.assert_close(x[:, 0].float(), frame4, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- plumbing
def test_a_branch_that_adds_nothing_gives_the_bare_model(scene):
    """A zero-output branch without LoRA, one chunk, no references: exactly memory_mode "off" with the same schedule."""
    pipe = make_pipe()
    off = run(pipe, scene, "latent", 9, memory_mode="off", chunking=Chunking(9, 9, 1), guidance_scale=1.0, reference_schedule=True)
    pipe.load_branch("mirage", branch_state_dict(zero_out=True), None, layers=LAYERS)
    branch = run(pipe, scene, "latent", 9, chunking=Chunking(9, 9, 1))
    assert torch.equal(branch.latents[0], off.latents[0])
    nonzero = make_pipe().load_branch("mirage", branch_state_dict(), None, layers=LAYERS)
    assert not torch.equal(run(nonzero, scene, "latent", 9, chunking=Chunking(9, 9, 1)).latents[0], off.latents[0])


def test_training_free_modes_run_without_the_lora(scene):
    pipe = make_pipe()
    bare = run(pipe, scene, "latent", 9, memory_mode="replace", guidance_scale=1.0, chunking=Chunking(9, 9, 1))
    pipe.load_branch("spatia", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    after = run(pipe, scene, "latent", 9, memory_mode="replace", guidance_scale=1.0, chunking=Chunking(9, 9, 1))
    assert torch.equal(after.latents[0], bare.latents[0])
    pipe.use_lora(True)  # the same call with the adapter on differs: the LoRA is really loaded
    q = pipe.transformer.blocks[0].attn1.to_q
    x = torch.randn(1, 3, q.in_features)
    on = q(x)
    pipe.use_lora(False)
    assert not torch.allclose(on, q(x))


def test_reference_schedule_is_wans_own():
    """Wan's FlowUniPCMultistepScheduler at 20 steps, shift 5 (the timesteps the official Mirage code runs)."""
    pipe = make_pipe()
    pipe.set_timesteps(20, True, torch.device("cpu"))
    wan = [999, 989, 978, 965, 952, 937, 920, 902, 882, 859, 833, 803, 768, 728, 681, 624, 555, 468, 356, 208]
    assert pipe.scheduler.timesteps.tolist() == wan
    pipe.set_timesteps(20, False, torch.device("cpu"))
    assert pipe.scheduler.timesteps.tolist() != wan  # diffusers' own flow schedule differs by a step or two


def test_branch_defaults_follow_the_references(scene):
    pipe = make_pipe().load_branch("spatia", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    d = pipe.defaults_for("branch")
    assert (d.num_inference_steps, d.guidance_scale, d.chunking, d.fps, d.continuation) == (40, 3.5, Chunking(121, 81, 9), 24, "reencode")
    pipe.load_branch("mirage", branch_state_dict(), None, layers=LAYERS)
    d = pipe.defaults_for("branch")
    assert (d.num_inference_steps, d.guidance_scale, d.chunking, d.fps, d.continuation) == (20, 1.0, Chunking(33, 33, 1), 16, "latent")
    assert pipe.defaults_for("replace") == DEFAULTS["training-free"]
    pipe.load_branch("mirage", branch_state_dict(), None)  # no layers given: the family's spacing, every 2nd layer
    assert pipe.branch.config.layers == (0, 2)


def test_load_branch_errors_say_what_is_missing(tmp_path):
    pipe = make_pipe()
    with pytest.raises(ValueError, match="publishes no weights"):
        pipe.load_branch("mirage")
    with pytest.raises(ValueError, match="'vace'"):
        pipe.load_branch("vace", branch_state_dict())
    with pytest.raises(FileNotFoundError, match="Jinjing713/Spatia"):
        pipe.load_branch("spatia", local_files_only=True, cache_dir=tmp_path)
    bad = lora_state_dict()
    bad.pop(next(k for k in bad if "lora_B" in k))
    with pytest.raises(ValueError, match="has only"):
        pipe.load_branch("spatia", branch_state_dict(), bad, layers=LAYERS)
    assert pipe.branch is None and pipe.branch_kind is None  # nothing half-loaded


def test_offload_moves_the_branch_with_the_transformer(scene):
    pipe = make_pipe().load_branch("mirage", branch_state_dict(), lora_state_dict(), layers=LAYERS)
    resident = run(pipe, scene, "latent", 17, chunking=Chunking(9, 9, 1))
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._pinned_offload.modules["transformer"] == [pipe.transformer, pipe.branch]
    offloaded = run(pipe, scene, "latent", 17, chunking=Chunking(9, 9, 1))
    assert torch.equal(offloaded.video, resident.video)
    pipe.load_branch("mirage", branch_state_dict(seed=2), lora_state_dict(seed=2), layers=LAYERS)  # swapped while offloaded
    assert pipe._pinned_offload is not None and pipe._pinned_offload.modules["transformer"][1] is pipe.branch
    pipe.disable_model_cpu_offload()

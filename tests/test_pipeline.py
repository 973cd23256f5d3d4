"""MiragePipeline on CPU with the real diffusers/transformers classes at tiny sizes, random weights.

The video model is a 2-layer ``WanTransformer3DModel`` and a narrow Wan2.2-style ``AutoencoderKLWan``
(48 latent channels, patch size 2, residual, stride 16); the input image is the synthetic room at
96x64 (latent grid 6x4, tokens 3x2) with its exact depth, later depth comes from the weight-free
``PlanarPriorBackend``. Videos have 17 frames in two chunks of 9 (3 latent frames each).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from mirage.cameras import Cameras
from mirage.codecs import WanVAECodec
from mirage.depth import PlanarPriorBackend
from mirage.frames import Chunking
from mirage.memory import LatentSpatialMemory, MemoryConfig, RGBPointCloudMemory
from mirage.paths import CameraPath, make_preset_path
from mirage.chunks import STAGES
from mirage.families import DEFAULTS, WAN_NEGATIVE_PROMPT
from mirage.pipeline import WAN_UNIPC_CONFIG, MiragePipeline, token_visible
from mirage.synthetic import default_camera, default_scene
from mirage.testing import TINY_TEXT_DIM, TINY_VAE_CONFIG, save_tiny_wan_checkpoint, tiny_text_encoder, tiny_transformer

H, W, T, CHUNK, STEPS, TEXT_DIM = 64, 96, 17, 9, 3, TINY_TEXT_DIM


@pytest.fixture(scope="module")
def pipe() -> MiragePipeline:
    torch.set_num_threads(2)
    vae = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=0).vae
    scheduler = UniPCMultistepScheduler(**WAN_UNIPC_CONFIG)
    return MiragePipeline(tiny_transformer(), vae, scheduler, depth_backend=PlanarPriorBackend())


@pytest.fixture(scope="module")
def scene():
    cam = default_camera(W, H)
    rgb, depth = default_scene().render(cam)  # [1, 3, H, W], [1, H, W]
    path = make_preset_path("orbit_left", cam, num_frames=T, amount=30.0, scene_depth=float(depth.median()))
    embeds = torch.randn(1, 8, TEXT_DIM, generator=torch.Generator().manual_seed(0))  # [1, L, D]
    return rgb[0], depth[0], path, embeds


class Recorder:
    """Keeps the transformer's inputs (hidden_states, timestep) of every call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.inputs.append((kwargs["hidden_states"].detach().clone(), kwargs["timestep"].detach().clone()))

    def remove(self) -> None:
        self.handle.remove()


def generate(pipe, scene, record: bool = False, **kwargs):
    image, depth, path, embeds = scene
    args = dict(
        prompt_embeds=embeds, num_frames=T, chunking=Chunking(CHUNK, CHUNK, 1), num_inference_steps=STEPS, image_depth=depth,
        generator=torch.Generator().manual_seed(0), guidance_scale=1.0, continuation="latent",
    )
    args.update(kwargs)
    rec = Recorder(pipe.transformer) if record else None
    try:
        out = pipe(image, path, **args)
    finally:
        if rec is not None:
            rec.remove()
    return (out, rec) if record else out


@pytest.fixture(scope="module")
def replace_run(pipe, scene):
    return generate(pipe, scene, record=True, memory="latent", memory_mode="replace", memory_strength=1.0)


@pytest.fixture(scope="module")
def context_run(pipe, scene):
    return generate(pipe, scene, record=True, memory="latent", memory_mode="context", memory_strength=1.0)


@pytest.fixture(scope="module")
def rgb_run(pipe, scene):
    return generate(pipe, scene, memory="rgb", memory_mode="replace", memory_strength=1.0)


def later_frames(mask: torch.Tensor) -> torch.Tensor:  # [F, h, w] -> [F, h, w] with frame 0 cleared
    mask = mask.clone()
    mask[0] = False
    return mask


# ----------------------------------------------------------------------------- pure helpers
def test_token_visible_needs_all_four_cells():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # token (0, 0) complete
    mask[0, 2:, 2:] = True
    mask[0, 3, 3] = False  # token (1, 1) misses one cell
    mask[0, 0, 2] = True  # token (0, 1) has one cell
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(token_visible(mask), expected)


# ----------------------------------------------------------------------------- the loop
def test_two_chunks_give_the_right_frames_and_shapes(replace_run):
    out, rec = replace_run
    assert out.video.shape == (3, T, H, W) and out.video.dtype == torch.float32
    assert out.video.min() >= -1 and out.video.max() <= 1
    assert out.frame_ranges == [(0, 9), (8, 17)]
    assert [tuple(z.shape) for z in out.latents] == [(48, 3, 4, 6)] * 2
    assert [tuple(r.mask.shape) for r in out.readouts] == [(3, 4, 6)] * 2
    assert [tuple(r.latents.shape) for r in out.readouts] == [(48, 3, 4, 6)] * 2
    assert len(rec.inputs) == 2 * STEPS  # one transformer call per step (CFG off)
    assert len(out.chunk_timings) == len(out.peak_memory_bytes) == len(out.cache_bytes) == 2
    for c, timing in enumerate(out.chunk_timings):
        stages = {"readout", "project", "condition", "denoise", "decode", "depth", "update", "total"} | ({"prompt", "init"} if c == 0 else set())
        assert set(timing) == stages
        assert all(v > 0 for v in timing.values())  # every stage ran
        steps = sum(v for k, v in timing.items() if k in STAGES and k not in ("prompt", "init"))  # one after another
        # (prompt and init run before chunk 0 and are not in its total)
        assert timing["project"] <= timing["readout"] and steps <= timing["total"], timing
    assert out.peak_memory_bytes == [0, 0]  # CPU


def test_same_seed_same_video(pipe, scene, replace_run):
    again = generate(pipe, scene, memory="latent", memory_mode="replace", memory_strength=1.0)
    assert torch.equal(again.video, replace_run[0].video)
    other = generate(pipe, scene, memory="latent", memory_mode="replace", memory_strength=1.0,
                     generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.video, replace_run[0].video)


def test_replace_mode_final_latent_equals_readout_on_visible_cells_only(replace_run):
    out, _ = replace_run
    for latents, readout in zip(out.latents, out.readouts):
        visible = later_frames(readout.mask)  # [F, h, w]
        hidden = later_frames(~readout.mask)
        assert visible.any() and hidden.any()
        assert torch.equal(latents[:, visible], readout.latents[:, visible].float())
        differs = (latents[:, hidden] != readout.latents[:, hidden].float()).any(dim=0)  # [n_hidden]
        assert differs.all()


def test_replace_mode_feeds_the_readout_noised_with_one_fixed_eps(pipe, replace_run):
    out, rec = replace_run
    sigmas = pipe.scheduler.sigmas.tolist()  # the same schedule for every chunk
    for c, readout in enumerate(out.readouts):
        calls = rec.inputs[c * STEPS : (c + 1) * STEPS]
        visible = later_frames(readout.mask)
        r = readout.latents.float()[:, visible]  # [C, n]
        eps = [(x[0][:, visible] - (1 - s) * r) / s for (x, _), s in zip(calls, sigmas)]  # [C, n] per step
        for e in eps[1:]:
            torch.testing.assert_close(e, eps[0], rtol=1e-4, atol=1e-4)
        # frame 0 is the clean pinned latent with timestep 0, every other token gets t (replace mode)
        pinned = out.latents[0][:, 0] if c == 0 else out.latents[c - 1][:, -1]  # [C, h, w]
        tokens_per_frame = (H // 32) * (W // 32)
        for (x, t), step_t in zip(calls, pipe.scheduler.timesteps):
            assert torch.equal(x[0, :, 0], pinned)
            assert t.shape == (1, 3 * tokens_per_frame)
            assert torch.equal(t[0, :tokens_per_frame], torch.zeros(tokens_per_frame))
            assert torch.equal(t[0, tokens_per_frame:], torch.full((2 * tokens_per_frame,), float(step_t)))


def test_context_mode_gives_visible_tokens_clean_with_timestep_zero(pipe, context_run):
    out, rec = context_run
    for c, (latents, readout) in enumerate(zip(out.latents, out.readouts)):
        cells = later_frames(token_visible(readout.mask))  # [F, h, w] cells of fully visible tokens
        assert cells.any() and (later_frames(readout.mask) & ~cells).any()  # some visible cells are in partial tokens
        tokens = cells[:, ::2, ::2].reshape(-1)  # [F * h/2 * w/2]
        tokens[: (H // 32) * (W // 32)] = True  # frame 0
        for x, t in rec.inputs[c * STEPS : (c + 1) * STEPS]:
            assert torch.equal(x[0][:, cells], readout.latents[:, cells].float())
            assert torch.equal(t[0] == 0, tokens)
        assert torch.equal(latents[:, cells], readout.latents[:, cells].float())


def test_memory_strength_imposes_the_readout_only_during_the_first_steps(pipe, scene):
    out, rec = generate(pipe, scene, record=True, memory="latent", memory_strength=2 / 3)  # 2 of 3 steps
    sigmas = pipe.scheduler.sigmas.tolist()
    latents, readout = out.latents[1], out.readouts[1]
    visible = later_frames(readout.mask)
    r = readout.latents.float()[:, visible]  # [C, n]
    inputs = [x[0][:, visible] for x, _ in rec.inputs[STEPS:]]  # chunk 1, [C, n] per step
    eps = (inputs[0] - (1 - sigmas[0]) * r) / sigmas[0]
    torch.testing.assert_close(inputs[1], (1 - sigmas[1]) * r + sigmas[1] * eps, rtol=1e-4, atol=1e-4)
    off_path = (inputs[2] - ((1 - sigmas[2]) * r + sigmas[2] * eps)).abs().amax(dim=0)  # [n]
    assert (off_path > 1e-3).all()  # released: the model's own trajectory
    assert (latents[:, visible] != r).any(dim=0).all()


def test_later_chunks_start_from_the_previous_last_latent(replace_run, rgb_run):
    for out in (replace_run[0], rgb_run):
        assert torch.equal(out.latents[1][:, 0], out.latents[0][:, -1])


def test_memory_grows_after_each_chunk(replace_run):
    out, _ = replace_run
    sizes = [entry["num_points"] for entry in out.memory.size_history]
    assert [entry["step"] for entry in out.memory.size_history] == ["initialize", "update", "update"]
    assert sizes[0] == 4 * 6  # the image latent: every cell has valid ground-truth depth
    assert sizes[0] < sizes[1] < sizes[2]
    assert out.cache_bytes[0] < out.cache_bytes[1]
    assert out.cache_bytes[-1] == out.memory.nbytes
    assert isinstance(out.memory, LatentSpatialMemory)


def test_rgb_memory_runs_through_the_same_loop(rgb_run):
    out = rgb_run
    assert isinstance(out.memory, RGBPointCloudMemory)
    assert out.video.shape == (3, T, H, W)
    sizes = [entry["num_points"] for entry in out.memory.size_history]
    assert sizes[0] == H * W and sizes[0] < sizes[1] < sizes[2]
    for timing, readout, latents in zip(out.chunk_timings, out.readouts, out.latents):
        assert {"rasterize", "encode", "readout"} <= set(timing)
        assert readout.pixel_mask.shape == readout.pixel_depth.shape == (CHUNK, H, W)  # every pixel frame rasterized
        visible = later_frames(readout.mask)
        assert visible.any()
        assert torch.equal(latents[:, visible], readout.latents[:, visible].float())


def test_the_depth_stage_brings_an_estimate_to_the_memory_scale(pipe, scene):
    """A depth model that sees the wall at a third of its true depth: the depth stage finds the scale
    (3) on the cells the memory shows, and every point the chunks store lies on the true wall (z = 2 m)."""
    from mirage.depth import GroundTruthDepth

    image, _, _, embeds = scene
    cam = default_camera(W, H)
    wall = torch.full((H, W), 2.0)  # [H, W] a fronto-parallel wall: every camera of a truck path sees it at 2 m
    path = make_preset_path("truck_right", cam, num_frames=T, amount=0.6, scene_depth=2.0)
    third = MiragePipeline(pipe.transformer, pipe.vae, pipe.scheduler, depth_backend=GroundTruthDepth(wall / 3, cam.K))
    out = third(image, path, prompt_embeds=embeds, num_frames=T, chunking=Chunking(CHUNK, CHUNK, 1), num_inference_steps=STEPS,
                image_depth=wall, generator=torch.Generator().manual_seed(0), continuation="latent", guidance_scale=1.0)  # fmt: skip
    assert out.depth_scales == pytest.approx([3.0, 3.0], rel=1e-5) and out.depth_aligned == [True, True]
    stored = out.memory.frame_ids >= 1  # the points the chunks added (the right edge the truck uncovers)
    assert int(stored.sum()) == sum(c.added for c in out.chunks) > 0
    torch.testing.assert_close(out.memory.points[stored, 2], torch.full((int(stored.sum()),), 2.0), rtol=1e-5, atol=0)


def test_a_passed_memory_instance_is_initialized_and_returned(pipe, scene):
    memory = LatentSpatialMemory()
    out = generate(pipe, scene, memory=memory, num_frames=9)
    assert out.memory is memory and memory.num_points > 0
    assert out.video.shape == (3, 9, H, W) and len(out.latents) == 1


def test_guidance_calls_the_transformer_twice_per_step(pipe, scene):
    negative = torch.zeros(1, 8, TEXT_DIM)
    out, rec = generate(pipe, scene, record=True, num_frames=9, guidance_scale=3.0, negative_prompt_embeds=negative)
    assert len(rec.inputs) == 2 * STEPS and out.video.shape == (3, 9, H, W)
    for (x_cond, t_cond), (x_uncond, t_uncond) in zip(rec.inputs[::2], rec.inputs[1::2]):
        assert torch.equal(x_cond, x_uncond) and torch.equal(t_cond, t_uncond)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 16}, "4N\\+1"),
        ({"chunking": Chunking(8, 8, 1)}, "chunk first must be 4N\\+1 .*got 8"),
        ({"chunking": Chunking(1, 1, 1)}, "chunk first must be 4N\\+1 with N >= 1 .*got 1"),
        ({"chunking": Chunking(9, 9, 3)}, "chunk overlap must be 4k\\+1 .*got 3"),
        ({"chunking": Chunking(9, 9, 5), "continuation": "latent"}, "chunks must share 1 frame"),
        ({"chunking": 9}, "chunking must be a mirage.frames.Chunking"),
        ({"memory_mode": "branch"}, "needs a trained branch"),
        ({"num_frames": 1}, "at least 5 frames .*got 1"),
        ({"num_frames": 21}, "shorter than the video's num_frames=21"),
        ({"memory_strength": 1.5}, "memory_strength must be in \\[0, 1\\], got 1.5"),
        ({"memory_mode": "blend"}, "'blend'"),
        ({"memory": "voxels"}, "'voxels'"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt_embeds": torch.zeros(1, 8, 7)}, "\\[1, L, 32\\]"),
        ({"image_depth": torch.ones(32, 32)}, "image_depth"),
        ({"memory": LatentSpatialMemory(), "memory_config": MemoryConfig()}, "memory_config makes a new memory"),
    ],
)
def test_bad_arguments_raise_clear_errors(pipe, scene, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, scene, **kwargs)


def test_sizes_not_divisible_by_32_raise(pipe, scene):
    _, _, _, embeds = scene
    cam = default_camera(96, 48)
    path = Cameras(cam.K[None].expand(9, 3, 3), torch.eye(4).expand(9, 4, 4), 96, 48)
    with pytest.raises(ValueError, match="divisible by 32.*48x96"):
        pipe(torch.zeros(3, 48, 96), path, prompt_embeds=embeds, num_frames=9)


def test_prompt_and_embeds_are_exclusive(pipe, scene):
    image, _, path, embeds = scene
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        pipe(image, path, prompt="a room", prompt_embeds=embeds, num_frames=9)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        pipe(image, path, num_frames=9)


def test_from_pretrained_without_weights_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks transformer \\(config.json \\+ weights\\), vae"):
        MiragePipeline.from_pretrained(str(tmp_path), depth_backend=None)
    with pytest.raises(FileNotFoundError, match="weights: 'no-such-org/no-such-model' is not in the Hugging Face cache"):
        MiragePipeline.from_pretrained("no-such-org/no-such-model", local_files_only=True, depth_backend=None)


# ----------------------------------------------------------------------------- prompts
def test_prompt_embeddings_are_computed_once_per_prompt(pipe):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "room": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=6, d_model=TEXT_DIM, d_kv=8, d_ff=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
    ).eval()
    calls = []
    encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    text_pipe = MiragePipeline(pipe.transformer, pipe.vae, pipe.scheduler, encoder, tokenizer, PlanarPriorBackend())
    first = text_pipe.encode_prompt("a red room", max_sequence_length=8)
    assert first.shape == (1, 8, TEXT_DIM)
    assert first[0, :3].abs().sum(dim=-1).gt(0).all() and torch.equal(first[0, 3:], torch.zeros(5, TEXT_DIM))
    assert text_pipe.encode_prompt("a red room", max_sequence_length=8) is first
    assert len(calls) == 1
    text_pipe.encode_prompt("a room", max_sequence_length=8)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="pass prompt_embeds"):
        pipe.encode_prompt("a red room")


# ----------------------------------------------------------------------------- fidelity to diffusers
@pytest.fixture(scope="module")
def text_pipe(pipe) -> MiragePipeline:
    encoder, tokenizer = tiny_text_encoder()
    return MiragePipeline(pipe.transformer, pipe.vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), encoder, tokenizer,
                          PlanarPriorBackend())  # fmt: skip


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_memory_off_equals_diffusers_wan_i2v_pipeline(text_pipe, scene, guidance):
    """One chunk with the memory off is diffusers' WanImageToVideoPipeline(expand_timesteps=True): same
    prompt and negative prompt through the same text encoder, same seed, fp32 tiny classes."""
    from diffusers import WanImageToVideoPipeline

    image, depth, path, _ = scene
    prompt, negative = "a red room with camera moving slowly", "static low quality blurry"
    ours = text_pipe(image, CameraPath.starting_at(path.source, path[:9]), prompt, negative_prompt=negative,
                     guidance_scale=guidance, num_inference_steps=STEPS, memory_mode="off", image_depth=depth,
                     generator=torch.Generator().manual_seed(0), max_sequence_length=16)  # fmt: skip
    reference = WanImageToVideoPipeline(
        tokenizer=text_pipe.tokenizer, text_encoder=text_pipe.text_encoder, vae=text_pipe.vae, transformer=text_pipe.transformer,
        scheduler=UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), expand_timesteps=True,
    )  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    with pytest.warns(FutureWarning, match="value range in \\[-1,1\\]"):  # the image is passed in [-1, 1], exactly as ours
        ref = reference(image=image[None], prompt=prompt, negative_prompt=negative, height=H, width=W, num_frames=9,
                        num_inference_steps=STEPS, guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                        max_sequence_length=16, output_type="latent").frames  # [1, C, F, h, w] normalized latents
    assert ref.shape == (1, 48, 3, H // 16, W // 16)
    torch.testing.assert_close(ours.latents[0], ref[0].float(), rtol=0, atol=1e-6)
    assert ours.settings["guidance_scale"] == guidance


def test_defaults_are_wan22_ti2v_with_its_negative_prompt(text_pipe, scene):
    image, depth, path, _ = scene
    d = DEFAULTS["training-free"]
    assert (d.num_inference_steps, d.guidance_scale, d.flow_shift, d.negative_prompt) == (50, 5.0, 5.0, WAN_NEGATIVE_PROMPT)
    assert d.continuation == "reencode" and d.chunking == Chunking(33, 33, 1)
    calls = []
    handle = text_pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(k["encoder_hidden_states"]), with_kwargs=True)
    try:
        out = text_pipe(image, CameraPath.starting_at(path.source, path[:5]), "a room", image_depth=depth,
                        num_inference_steps=2, generator=torch.Generator().manual_seed(0), max_sequence_length=8)  # fmt: skip
    finally:
        handle.remove()
    assert out.settings["guidance_scale"] == 5.0 and out.settings["negative_prompt"] == WAN_NEGATIVE_PROMPT
    assert len(calls) == 4  # two steps, conditional and unconditional
    assert torch.equal(calls[1], text_pipe.encode_prompt(WAN_NEGATIVE_PROMPT, 8))


# ----------------------------------------------------------------------------- continuation
def test_reencode_continuation_starts_a_chunk_from_the_last_frame_encoded_alone(pipe, scene):
    out, rec = generate(pipe, scene, record=True, continuation="reencode")
    last_frame = out.chunks[0].frames[:, -1:]  # [3, 1, H, W] the last decoded frame of chunk 0
    expected = pipe.codec.encode(last_frame[None])[0, :, 0]  # [C, h, w] that frame encoded by itself
    first_input = rec.inputs[STEPS][0][0, :, 0]  # chunk 1's first transformer call, frame 0
    torch.testing.assert_close(first_input, expected.float(), rtol=0, atol=0)
    torch.testing.assert_close(out.latents[1][:, 0], expected.float(), rtol=0, atol=0)
    assert not torch.equal(out.latents[1][:, 0], out.latents[0][:, -1])  # not the previous latent
    assert torch.equal(out.video[:, CHUNK - 1], out.chunks[0].frames[:, -1])  # the shared frame comes from chunk 0


def test_latent_continuation_keeps_the_previous_last_latent(pipe, scene):
    out, rec = generate(pipe, scene, record=True, continuation="latent")
    assert torch.equal(rec.inputs[STEPS][0][0, :, 0], out.latents[0][:, -1])
    assert torch.equal(out.latents[1][:, 0], out.latents[0][:, -1])


# ----------------------------------------------------------------------------- loading
def test_from_pretrained_loads_a_diffusers_folder_and_the_hf_cache_layout(tmp_path, scene):
    folder = save_tiny_wan_checkpoint(tmp_path / "wan")
    loaded = MiragePipeline.from_pretrained(folder, torch_dtype=torch.float32, depth_backend="planar-prior")
    assert loaded.vae.dtype == torch.float32  # the released VAE dtype, whatever the transformer's
    image, depth, path, _ = scene
    out = loaded(image, CameraPath.starting_at(path.source, path[:9]), "a red room", num_inference_steps=2,
                 image_depth=depth, generator=torch.Generator().manual_seed(0), max_sequence_length=8)  # fmt: skip
    assert out.video.shape == (3, 9, H, W)
    bf16 = MiragePipeline.from_pretrained(folder, depth_backend=None)
    assert bf16.transformer.dtype == torch.bfloat16 and bf16.vae.dtype == torch.float32
    # the same files laid out as a Hugging Face cache entry load by repo id, with no network
    repo = tmp_path / "hub" / "models--mirage-test--tiny-wan"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import shutil

    shutil.copytree(folder, repo / "snapshots" / commit)
    cached = MiragePipeline.from_pretrained("mirage-test/tiny-wan", cache_dir=tmp_path / "hub", local_files_only=True,
                                            depth_backend=None)  # fmt: skip
    assert cached.transformer.config.num_layers == 2


# ----------------------------------------------------------------------------- offload
def test_pinned_offload_runs_one_model_at_a_time_and_changes_nothing(scene):
    """The offload policy on CPU (the pinned copies and their speed need CUDA; benchmarks/pipeline.py
    measures those): the model about to run is active, the others rest on the host, outputs are equal."""
    vae = WanVAECodec.from_config(TINY_VAE_CONFIG, seed=0).vae
    pipe = MiragePipeline(tiny_transformer(), vae, UniPCMultistepScheduler(**WAN_UNIPC_CONFIG), depth_backend=PlanarPriorBackend())
    resident = generate(pipe, scene, memory="rgb")
    pipe.enable_model_cpu_offload(device="cpu")
    offload = pipe._pinned_offload
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.append(offload.active)) for n, m in
             (("transformer", pipe.transformer), ("vae", pipe.vae.decoder))]  # fmt: skip
    try:
        offloaded = generate(pipe, scene, memory="rgb")
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(offloaded.video, resident.video)
    assert seen and set(seen) == {"transformer", "vae"}  # each ran while it was the active one
    assert offload.active is None  # nothing left on the device after the call
    assert pipe.codec.device == pipe._execution_device == torch.device("cpu")
    pipe.disable_model_cpu_offload()
    assert not hasattr(pipe.transformer, "_hf_hook")


# ----------------------------------------------------------------------------- as Spatia runs its rounds
def test_reseed_starts_every_chunk_from_the_seed(pipe, scene, monkeypatch):
    """Spatia calls generate_noise(seed) every round: every chunk's noise is drawn from the same state."""
    states = []
    denoise = pipe.denoise_chunk

    def spy(*args, generator=None, **kwargs):
        states.append(generator.get_state().clone())
        return denoise(*args, generator=generator, **kwargs)

    monkeypatch.setattr(pipe, "denoise_chunk", spy)
    generate(pipe, scene, reseed=True)
    assert len(states) == 2 and torch.equal(states[0], states[1])
    states.clear()
    generate(pipe, scene, reseed=False)
    assert not torch.equal(states[0], states[1])  # one generator going on (ours, and Mirage's)


def test_a_padded_last_chunk_runs_full_length_and_the_video_keeps_the_path(pipe, scene):
    from mirage.pipeline import padded_path

    image, depth, path, embeds = scene  # 17 frames in chunks of 9 with one shared: 2 chunks; of 13: (0, 13), (12, 17)
    chunking = Chunking(13, 13, 1)
    padded = padded_path(path, chunking)
    assert len(padded) == 25 and chunking.ranges(len(padded)) == [(0, 13), (12, 25)]
    assert torch.equal(padded.cam_from_world[17:], path.cam_from_world[16:].expand(8, 4, 4))
    assert padded_path(padded, chunking) is padded
    out = generate(pipe, scene, chunking=chunking, pad_last_chunk=True)
    assert [c.frame_range for c in out.chunks] == [(0, 13), (12, 25)] and out.video.shape[1] == T
    plain = generate(pipe, scene, chunking=chunking, pad_last_chunk=False)
    assert [c.frame_range for c in plain.chunks] == [(0, 13), (12, 17)]


def test_single_decode_is_one_decode_of_every_chunks_own_latents(pipe, scene):
    out = generate(pipe, scene, single_decode=True)
    latents = torch.cat([out.latents[0], out.latents[1][:, 1:]], dim=1)[None]  # chunk 2's pinned latent is chunk 1's last
    torch.testing.assert_close(out.video, pipe.codec.decode(latents)[0].float(), rtol=0, atol=0)
    stitched = generate(pipe, scene, single_decode=False).video
    assert out.video.shape == stitched.shape and not torch.equal(out.video, stitched)  # the causal VAE sees it all at once


def test_the_aot_example_inputs_are_what_the_pipeline_passes_the_transformer(pipe, scene):
    """A package compiled at start-up from ``aot.example_inputs`` fits the pipeline's own calls: for a
    chunk of ``CHUNK`` pixel frames at H x W, the repeated block gets the same tensors, shapes and
    dtypes (with guidance, both calls of a step)."""
    from mirage import aot, speed
    from mirage.frames import num_latent_frames

    block, seen = speed.repeated_blocks(pipe.transformer)[0], []
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(aot.signature(args, kwargs)), with_kwargs=True)
    try:
        generate(pipe, scene, num_frames=CHUNK, num_inference_steps=1, guidance_scale=5.0, negative_prompt_embeds=scene[3])
    finally:
        handle.remove()
    s = pipe.codec.spatial_stride
    example = aot.example_inputs(pipe.transformer, num_latent_frames(CHUNK), H // s, W // s, text_tokens=scene[3].shape[1])
    expected = aot.signature(*aot._block_call(pipe.transformer, example))
    assert len(seen) == 2 and seen == [expected, expected]

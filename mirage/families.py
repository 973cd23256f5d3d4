"""How Wan2.2-TI2V-5B is conditioned on a memory, in one table: the training-free modes and the two
trained side-branch families that exist for this backbone, with the facts every caller reads (the
pipeline, the branch-input builders, the checkpoint loaders, the app and the benchmarks).

* Training-free (``memory_mode`` ``"replace"``, ``"context"``, ``"off"``): the bare TI2V model, so
  Wan2.2-TI2V-5B's own sampling settings (``TRAINING_FREE_DEFAULTS``).
* ``FAMILIES["mirage"]``: the official Mirage code (microsoft/LatentSpatialMemory), no published weights.
* ``FAMILIES["spatia"]``: Spatia (ZhaoJingjing713/Spatia), weights on the Hub (``Jinjing713/Spatia``).

Sources of every number are in each entry's ``defaults.source`` and in the README ("Trained
conditioning").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .branch import BranchConfig
from .chunks import Continuation
from .frames import Chunking

__all__ = [
    "BranchKind",
    "BRANCH_KINDS",
    "TrainingFreeMode",
    "TRAINING_FREE_MODES",
    "MemoryMode",
    "MEMORY_MODES",
    "Readouts",
    "READOUTS",
    "WAN_NEGATIVE_PROMPT",
    "SPATIA_NEGATIVE_PROMPT",
    "GenerationDefaults",
    "TRAINING_FREE_DEFAULTS",
    "BranchFamily",
    "FAMILIES",
    "DEFAULTS",
]

BranchKind = Literal["mirage", "spatia"]
BRANCH_KINDS: tuple[str, ...] = get_args(BranchKind)
TrainingFreeMode = Literal["replace", "context", "off"]
TRAINING_FREE_MODES: tuple[str, ...] = get_args(TrainingFreeMode)
MemoryMode = Literal[TrainingFreeMode, Literal["branch"]]
MEMORY_MODES: tuple[str, ...] = get_args(MemoryMode)  # ("replace", "context", "off", "branch")

# Wan2.2's default negative prompt (Wan-Video/Wan2.2, wan/configs/shared_config.py, sample_neg_prompt).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

# Spatia's negative prompt (ZhaoJingjing713/Spatia, inference.py, NEGATIVE_PROMPT).
SPATIA_NEGATIVE_PROMPT = (
    "画面切换，画面切出，镜头切换，镜头渐黑，镜头渐亮，最差质量, 节目横幅, 低质量, 正常质量, JPEG压缩残留, 噪点, 模糊, 细节缺失, 马赛克, "
    "水印, 文字, 签名, 商标, 丑陋的, 畸形的, 毁容的, 解剖学错误, 形态糟糕, 多余的肢体, 残缺的肢体, 融合的手指, 画得不好的手, 画得不好的脸, "
    "僵硬的表情, 杂乱的构图, 不协调的元素, 空旷的画面, 透视错误, 比例失调, 变形的物体, 融合的物体, 物体穿模, 漂浮的物体, 平淡的光线, "
    "不自然的光源, 单调的色彩, 奇怪的颜色, 刺眼的颜色, 画面发灰"
)


# What a memory is read with under a trained branch: the readouts its reference trained it on, or ours
Readouts = Literal["reference", "ours"]
READOUTS: tuple[str, ...] = get_args(Readouts)


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling settings of one conditioning mode, as its reference uses them."""

    num_inference_steps: int  # sampling steps
    guidance_scale: float  # classifier-free guidance (1 = off)
    negative_prompt: str  # used when guidance_scale > 1
    flow_shift: float  # UniPC flow shift
    chunking: Chunking  # first chunk, later chunks, frames shared between chunks
    fps: int  # playback rate of the written videos
    continuation: Continuation  # the pinned first latents of a later chunk
    memory_strength: float  # share of the steps during which a training-free mode imposes the readout
    reference_schedule: bool  # sigmas linspace(0.999, 0) as Wan's own sampler (else diffusers' UniPC schedule)
    prompt_suffix: str  # appended to the prompt
    origin: str  # whose settings these are, in a few words for the page ("Wan2.2-TI2V-5B", "Spatia", ...)
    source: str  # where the numbers come from
    reseed: bool = False  # every chunk draws its noise from the seed afresh (Spatia: generate_noise(seed) per round)
    pad_last_chunk: bool = False  # a short last chunk runs at full length, its path padded with the last camera
    single_decode: bool = False  # the video is one decode of every chunk's latents (else each chunk's own decode)
    size: tuple[int, int] = (704, 1280)  # (short, long) side of the working size it runs at (Wan2.2-TI2V-5B's 704x1280)


TRAINING_FREE_DEFAULTS = GenerationDefaults(
    num_inference_steps=50, guidance_scale=5.0, negative_prompt=WAN_NEGATIVE_PROMPT, flow_shift=5.0,
    chunking=Chunking(33, 33, 1), fps=24, continuation="reencode", memory_strength=0.8, reference_schedule=False,
    prompt_suffix="", origin="Wan2.2-TI2V-5B",
    source="Wan2.2-TI2V-5B (wan/configs/wan_ti2v_5B.py: 50 steps, guide scale 5.0, shift 5.0, 24 fps; "
           "shared_config.py: negative prompt) sampled as diffusers' WanImageToVideoPipeline; chunks of 33 then +32 "
           "as in the paper",
)  # fmt: skip


@dataclass(frozen=True)
class BranchFamily:
    """A trained side-branch family: its checkpoint layout, what it receives and how it samples."""

    kind: BranchKind
    label: str  # for the page: "Spatia", "Mirage"
    code: str  # the reference code it was trained with
    weights_repo: str | None  # public weights on the Hub (None: none published)
    branch_file: str  # the branch checkpoint's file name in the reference's output / release
    lora_file: str  # the LoRA's file name
    layer_stride: int  # branch block k follows DiT layer layer_stride * k
    blocks: int  # branch blocks of the released / reference layout
    max_references: int  # clean reference latents placed before the chunk, at most
    reference_rule: dict[str, float]  # how references are chosen (the family's selection function's parameters)
    max_preceding: int  # clean preceding latents placed after the chunk, at most
    lora_from_chunk: int  # the LoRA is active from this chunk (0-based) on
    lora_key_tag: str  # PEFT adapter name inside the released LoRA's keys ("lora_A.default.weight"), "" if none
    defaults: GenerationDefaults
    # What the branch was trained on, per memory kind: the mirage.memory.MemoryConfig settings that build the
    # reference's readout (an empty dict: the reference has no such memory, ours is used and labelled so)
    reference_memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    restore_first: bool = False  # the first chunk's update stores latent 0 (the image) again, as the reference does
    reference_readouts_source: str = ""  # where the reference builds its readouts

    @property
    def branch_config(self) -> BranchConfig:  # the released layout's layers (the Wan2.2-TI2V-5B depth of 30)
        return BranchConfig(self.layers(self.blocks))

    def layers(self, blocks: int) -> tuple[int, ...]:
        """The DiT layers a branch of ``blocks`` blocks of this family follows."""
        return tuple(range(0, self.layer_stride * blocks, self.layer_stride))

    @property
    def extra_latents(self) -> int:  # latents beside the chunk's own in a transformer call, at most
        return self.max_references + self.max_preceding


FAMILIES: dict[str, BranchFamily] = {  # the one with public weights first (the order the page offers them)
    "spatia": BranchFamily(
        kind="spatia", label="Spatia", code="ZhaoJingjing713/Spatia", weights_repo="Jinjing713/Spatia",
        branch_file="step-8500.safetensors", lora_file="lora_weights_10000.safetensors", layer_stride=4, blocks=8,
        max_references=7, reference_rule={"reference_every": 4, "target_every": 12}, max_preceding=0, lora_from_chunk=1,
        lora_key_tag=".default",  # DiffSynth 1.x keeps PEFT's adapter name
        defaults=GenerationDefaults(
            num_inference_steps=40, guidance_scale=3.5, negative_prompt=SPATIA_NEGATIVE_PROMPT, flow_shift=5.0,
            chunking=Chunking(121, 81, 9), fps=24, continuation="reencode", memory_strength=0.0, reference_schedule=True,
            prompt_suffix=" 4K, realistic, high quality, HDR.", origin="Spatia",
            source="ZhaoJingjing713/Spatia (inference.py): 40 UniPC steps, shift 5, CFG 3.5 with its negative prompt, "
                   "121 frames then rounds of 81 that repeat the last 9 (encoded as 3 latents), 24 fps, up to 7 "
                   "references, the LoRA from the second round on; every round reseeded, the last one padded with "
                   "the last camera to 81 frames, the video one decode of all rounds' latents; 704x1248 "
                   "(--height 704, --width 1248)",
            reseed=True, pad_last_chunk=True, single_decode=True, size=(704, 1248),
        ),
        reference_memory={
            "rgb": dict(readout="spatia-reference", update_policy="append", voxel_size=None, max_depth=None,
                        hole_value=-1.0, point_radius=0.01, points_per_pixel=5, render_voxel=0.01, render_voxel_step=0.005),
            "latent": dict(empty_latent="black"),  # its background, encoded; the cells as ours read them
        },
        reference_readouts_source="ZhaoJingjing713/Spatia 5dd3457: utils/render_point_torch3d.py (PyTorch3D discs of "
                                  "radius 0.01 NDC, 5 points per pixel alpha-composited, black background), "
                                  "inference.py (render voxel 0.01 m + 0.005 m per round, score = 1 - coverage)",
    ),
    "mirage": BranchFamily(
        kind="mirage", label="Mirage", code="microsoft/LatentSpatialMemory", weights_repo=None,
        branch_file="vace.safetensors",  # names in the official README; the trainer writes step_XXXXXXX_vace.safetensors
        lora_file="lora.safetensors", layer_stride=2, blocks=15, max_references=4,
        reference_rule={"threshold": 0.04, "voxel_size": 0.1}, max_preceding=2, lora_from_chunk=0, lora_key_tag="",
        defaults=GenerationDefaults(
            num_inference_steps=20, guidance_scale=1.0, negative_prompt="", flow_shift=5.0, chunking=Chunking(33, 33, 1),
            fps=16, continuation="latent", memory_strength=0.0, reference_schedule=True, prompt_suffix="",
            origin="official Mirage",
            source="microsoft/LatentSpatialMemory (src/mirage/inference/mirage_pipeline.py, scripts/infer.py): 20 UniPC "
                   "steps, shift 5, no CFG, 33 frames then +32, 16 fps, the next chunk's frame 0 = the previous chunk's "
                   "last latent, 4 references and 2 preceding latents",
        ),
        reference_memory={
            "latent": dict(readout="mirage-reference", update_policy="append", voxel_size=None, max_depth=None,
                           surface_tolerance=0.0, token_dtype="float32"),
        },
        restore_first=True,
        reference_readouts_source="microsoft/LatentSpatialMemory b2cd738: src/mirage/latent_point_cloud.py (cells "
                                  "back-projected at integer (u, v), one cell per point by rounding, closest wins, "
                                  "every valid cell appended, float32, no far cut), mirage_pipeline.py (chunk 0's "
                                  "latents all stored, its frame 0 again)",
    ),
}  # fmt: skip
assert set(FAMILIES) == set(BRANCH_KINDS)

# Sampling settings by mode key: "training-free" and each family's kind.
DEFAULTS: dict[str, GenerationDefaults] = {"training-free": TRAINING_FREE_DEFAULTS,
                                           **{k: f.defaults for k, f in FAMILIES.items()}}  # fmt: skip

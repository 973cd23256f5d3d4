"""``mirage.branch`` against the reference implementations: DiffSynth-Studio's Wan DiT and VACE.

Builds DiffSynth's ``WanModel`` (TI2V flags: ``seperated_timestep``, ``fuse_vae_embedding_in_latents``)
and ``VaceWanModel`` at a tiny size in fp32, randomises every parameter from a seed, converts the
random state dicts to ours (the DiT through diffusers' own ``convert_wan_transformer_to_diffusers``,
the branch through ``mirage.checkpoints``) and compares, on the same inputs:

(a) **upstream**: no references, no branch; DiffSynth 2.0.12's ``model_fn_wan_video``
    (``diffsynth/pipelines/wan_video.py``, the TI2V per-token path: frame 0 at timestep 0, the
    others at ``t``) against ``branched_forward(transformer, None, ...)``: the velocity.
(b) **mirage**: the layout of the official Mirage inference (``generate_single_iteration``):
    ``[R = 2 references (t = 0), 9 target frames (frame 0 clean, the rest at t), P = 2 preceding
    frames (t = 0)]`` with a 96-channel context over target + preceding. The reference is the model
    function the official code runs, its vendored copy of DiffSynth's in
    ``src/mirage/spatia/wan_video_new.py`` (microsoft/LatentSpatialMemory), with its vendored
    ``WanModel`` / ``VaceWanModel``: the branch hints and the velocity.
(c) **upstream VACE**: no references, the branch on: DiffSynth 2.0.12's ``model_fn_wan_video`` with
    its own ``VaceWanModel`` (``diffsynth/models/wan_video_vace.py``) and a 96-channel
    ``vace_context`` over all 9 frames (frame 0 clean, the rest at ``t``, one scalar ``t`` as the
    upstream pipeline passes it) against ``branched_forward(transformer, branch, ...,
    context=..., num_ref_frames=0)``: the hints (captured from the ``vace(...)`` call inside the model
    function and from ``MemoryBranch.forward``) and the velocity.

(b) and (c) also report ``branch_effect_max_abs``, how far the velocity moves when the branch is
dropped: it must exceed ``100 * --tolerance``, so that the branch is not compared as a no-op.

Why (b) cannot use upstream DiffSynth (and (c) has no references): upstream has no
``num_ref_frames``. Its references are either ``reference_latents`` through a ``ref_conv`` (another
model) or VACE reference images prepended to the latents *and* to the VACE context (so they get
hints), with ordinary RoPE positions ``0 ..``, and its per-token timesteps only zero frame 0 (one
scalar ``t``). The vendored copy (shared by Mirage and Spatia) adds a second RoPE table at negative
time: the references sit at time ``-R .. -1`` and at height ``h' .. 2h' - 1``, are left out of the
VACE input (and get no hints), and the timestep may be given per latent frame. That is what
``mirage.branch`` reproduces. Without references the two model functions agree: both patch-embed
the context, add it (after ``before_proj``) to the latent tokens, run the VACE blocks on the
per-token modulation and RoPE of the whole sequence and add hint ``k`` after main block
``vace_layers[k]``.

Attention is forced to SDPA in the references (flash-attn rejects fp32); TF32 is off. Passes when
every maximum absolute difference is ``<= --tolerance`` (1e-4) and the branch matters; exits 1
otherwise.

The reference code is never part of this repository: ``--reference-root DIR`` points at an untracked
folder holding ``DiffSynth-Studio/diffsynth/`` (the package source, DiffSynth-Studio 2.0.12) and
``LatentSpatialMemory/src/mirage/spatia/`` (``wan_video_dit.py``, ``wan_video_vace.py``,
``utils.py``, ``wan_video_camera_controller.py``, ``wan_video_new.py``). Only (b) runs without the
``diffsynth`` package's dependencies (it needs torch, einops, safetensors); (a) and (c) import
``diffsynth`` (torchvision, modelscope, ...):

    python benchmarks/diffsynth_equivalence.py --reference-root .whl/ref --out results.json
    python benchmarks/diffsynth_equivalence.py --reference-root .whl/ref --skip-upstream --device cpu
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import platform
import sys
import types
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage.branch import BranchConfig, MemoryBranch, branched_forward  # noqa: E402
from mirage.checkpoints import convert_branch_state_dict, load_branch  # noqa: E402
from mirage.testing import randomize_parameters  # noqa: E402

# A tiny TI2V-like DiT: head_dim 48 (its RoPE axis split agrees between DiffSynth and diffusers).
DIT = dict(dim=96, num_heads=2, num_layers=6, ffn_dim=160, text_dim=64, freq_dim=256, in_dim=48, out_dim=48,
           patch_size=(1, 2, 2), eps=1e-6)  # fmt: skip
BRANCH_LAYERS = (0, 2, 4)  # Mirage's every second layer, on 6 layers
LATENT_HW = (8, 12)  # latent height, width: 4 x 6 tokens per frame
TEXT_TOKENS = 16
NUM_REFS, NUM_TARGET, NUM_PRECEDING = 2, 9, 2  # Mirage: R <= 4 refs, 9 target latents, P = 2 preceding latents


def force_sdpa(module: types.ModuleType) -> None:
    """Make a DiffSynth ``wan_video_dit`` module use ``F.scaled_dot_product_attention``."""
    for flag in ("FLASH_ATTN_3_AVAILABLE", "FLASH_ATTN_2_AVAILABLE", "SAGE_ATTN_AVAILABLE"):
        if hasattr(module, flag):
            setattr(module, flag, False)
    if hasattr(module, "COMPATIBILITY_MODE"):
        module.COMPATIBILITY_MODE = True


def load_vendored(root: Path) -> tuple[types.ModuleType, types.ModuleType, Callable]:
    """The official Mirage code's vendored ``wan_video_dit``, ``wan_video_vace`` and its
    ``model_fn_wan_video`` (compiled alone from ``wan_video_new.py``, whose other imports need the
    whole DiffSynth pipeline stack), as a package ``lsm_spatia`` (its own name is ``mirage.spatia``)."""
    folder = root / "LatentSpatialMemory" / "src" / "mirage" / "spatia"
    if not (folder / "wan_video_dit.py").is_file():
        raise FileNotFoundError(f"{folder} lacks wan_video_dit.py: see --reference-root in the docstring")
    package = types.ModuleType("lsm_spatia")
    package.__path__ = [str(folder)]
    sys.modules["lsm_spatia"] = package
    modules = {}
    for name in ("utils", "wan_video_camera_controller", "wan_video_dit", "wan_video_vace"):
        spec = importlib.util.spec_from_file_location(f"lsm_spatia.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    dit, vace = modules["wan_video_dit"], modules["wan_video_vace"]
    force_sdpa(dit)
    source = (folder / "wan_video_new.py").read_text()
    fn = next(node for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef) and node.name == "model_fn_wan_video")  # fmt: skip
    scope: dict[str, Any] = {"torch": torch, "Optional": Optional, "WanModel": dit.WanModel, "VaceWanModel": vace.VaceWanModel,
                             "sinusoidal_embedding_1d": dit.sinusoidal_embedding_1d}  # fmt: skip
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(folder / "wan_video_new.py"), "exec"), scope)
    return dit, vace, scope["model_fn_wan_video"]


def load_upstream(root: Path) -> tuple[types.ModuleType, types.ModuleType, Callable]:
    """DiffSynth-Studio's ``diffsynth.models.wan_video_dit``, ``diffsynth.models.wan_video_vace``
    and its ``model_fn_wan_video`` (``diffsynth.pipelines.wan_video``)."""
    folder = root / "DiffSynth-Studio"
    if not (folder / "diffsynth" / "__init__.py").is_file():
        raise FileNotFoundError(f"{folder} lacks diffsynth/: see --reference-root in the docstring")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from diffsynth.models import wan_video_dit, wan_video_vace
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    force_sdpa(wan_video_dit)
    return wan_video_dit, wan_video_vace, model_fn_wan_video


def build_dit(module: types.ModuleType, seed: int, std: float, device) -> torch.nn.Module:
    """DiffSynth's ``WanModel`` with the TI2V flags, every parameter random from ``seed``."""
    dit = module.WanModel(**DIT, has_image_input=False, seperated_timestep=True, require_vae_embedding=False,
                          require_clip_embedding=False, fuse_vae_embedding_in_latents=True)  # fmt: skip
    return randomize_parameters(dit, seed, std).to(device).eval()


def to_diffusers(dit: torch.nn.Module, device):
    """The same weights in a diffusers ``WanTransformer3DModel`` (diffusers' own key converter)."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    transformer = WanTransformer3DModel(
        patch_size=DIT["patch_size"], num_attention_heads=DIT["num_heads"],
        attention_head_dim=DIT["dim"] // DIT["num_heads"], in_channels=DIT["in_dim"], out_channels=DIT["out_dim"],
        text_dim=DIT["text_dim"], freq_dim=DIT["freq_dim"], ffn_dim=DIT["ffn_dim"], num_layers=DIT["num_layers"],
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=DIT["eps"], rope_max_seq_len=1024,
    )  # fmt: skip
    converted = convert_wan_transformer_to_diffusers({k: v.detach().clone() for k, v in dit.state_dict().items()})
    transformer.load_state_dict(converted, strict=True)
    return transformer.to(device).eval()


def build_branch(vace_module: types.ModuleType, transformer, seed: int, std: float, device):
    """A reference ``VaceWanModel`` (96-channel context, blocks at ``BRANCH_LAYERS``) with random
    parameters from ``seed``, the same weights in our ``MemoryBranch`` (strict ``load_branch``), and
    whether our converted names are diffusers' own VACE names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    vace = vace_module.VaceWanModel(vace_layers=BRANCH_LAYERS, vace_in_dim=96, patch_size=DIT["patch_size"],
                                    has_image_input=False, dim=DIT["dim"], num_heads=DIT["num_heads"],
                                    ffn_dim=DIT["ffn_dim"], eps=DIT["eps"])  # fmt: skip
    vace = randomize_parameters(vace, seed, std).to(device).eval()
    branch = MemoryBranch.for_transformer(transformer, BranchConfig(BRANCH_LAYERS))
    vace_state = {k: v.detach().clone() for k, v in vace.state_dict().items()}
    load_branch(branch, vace_state)  # strict
    ours_names = set(convert_branch_state_dict(vace_state))
    names_agree = ours_names == set(convert_wan_transformer_to_diffusers(dict(vace_state)))  # = diffusers' VACE names
    return vace, branch.to(device).eval(), names_agree


class HintRecorder:
    """Records the hints two branch modules return (forward hooks), to compare them pairwise."""

    def __init__(self, ref: torch.nn.Module, ours: torch.nn.Module):
        self.ref: list[torch.Tensor] = []
        self.ours: list[torch.Tensor] = []
        self._hooks = [ref.register_forward_hook(lambda m, a, out: self.ref.extend(out)),
                       ours.register_forward_hook(lambda m, a, out: self.ours.extend(out))]  # fmt: skip

    def __enter__(self) -> HintRecorder:
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()

    def diffs(self) -> list[float]:
        if len(self.ref) != len(self.ours) or not self.ref:
            raise RuntimeError(f"recorded {len(self.ref)} reference hints and {len(self.ours)} of ours")
        return [max_diff(a, b) for a, b in zip(self.ours, self.ref)]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def inputs(num_frames: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, DIT["in_dim"], num_frames, *LATENT_HW, generator=g)  # [1, 48, F_all, h, w]
    text = torch.randn(1, TEXT_TOKENS, DIT["text_dim"], generator=g)  # [1, S, text_dim] (UMT5 output)
    return latents.to(device), text.to(device)


def ti2v_timesteps(num_frames: int, t: float, device) -> torch.Tensor:
    """``[1, F * h' * w']`` per-token timesteps of upstream's TI2V path: frame 0 at 0, the rest at ``t``."""
    n = (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)  # tokens per latent frame
    per_frame = torch.full((num_frames,), t, device=device)
    per_frame[0] = 0
    return per_frame.repeat_interleave(n)[None]


@torch.no_grad()
def check_upstream(root: Path, seed: int, std: float, t: float, device) -> dict:
    """(a) no references, no branch: upstream DiffSynth's model function vs ours."""
    module, _, model_fn = load_upstream(root)
    dit = build_dit(module, seed, std, device)
    transformer = to_diffusers(dit, device)
    latents, text = inputs(NUM_TARGET, seed + 1, device)
    ref = model_fn(dit=dit, latents=latents, timestep=torch.tensor([t], device=device), context=text,
                   fuse_vae_embedding_in_latents=True)  # fmt: skip  # frame 0 at 0, the rest at t
    ours = branched_forward(transformer, None, latents, ti2v_timesteps(NUM_TARGET, t, device), text)
    return {"velocity_max_abs_diff": max_diff(ours, ref), "velocity_max_abs": float(ref.abs().max()),
            "latents": list(latents.shape), "timestep": t}  # fmt: skip


@torch.no_grad()
def check_mirage(root: Path, seed: int, std: float, t: float, device) -> dict:
    """(b) the Mirage layout: the vendored model function (refs at negative time, VACE) vs ours."""
    dit_module, vace_module, model_fn = load_vendored(root)
    dit = build_dit(dit_module, seed, std, device)
    transformer = to_diffusers(dit, device)
    vace, branch, names_agree = build_branch(vace_module, transformer, seed + 2, std, device)

    R, T, P = NUM_REFS, NUM_TARGET, NUM_PRECEDING
    latents, text = inputs(R + T + P, seed + 1, device)  # [refs, target (frame 0 clean), preceding]
    g = torch.Generator().manual_seed(seed + 3)
    context = torch.randn(1, 96, T + P, *LATENT_HW, generator=g).to(device)  # readout 48 + score 48, target + preceding
    per_frame = torch.tensor([0.0] * R + [0.0] + [t] * (T - 1) + [0.0] * P, device=device)  # [F_all]
    n = (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)

    with HintRecorder(vace, branch) as hints:
        ref = model_fn(dit=dit, vace=vace, latents=latents, timestep=per_frame, context=text, vace_context=[context[0]],
                       vace_scale=1.0, num_ref_frames=R, fuse_vae_embedding_in_latents=True)  # fmt: skip
        ours = branched_forward(transformer, branch, latents, per_frame.repeat_interleave(n)[None], text,
                                context=context, num_ref_frames=R)  # fmt: skip
    plain = branched_forward(transformer, None, latents, per_frame.repeat_interleave(n)[None], text, num_ref_frames=R)
    return {
        "hints_max_abs_diff": hints.diffs(),
        "hints_max_abs": [float(h.abs().max()) for h in hints.ref],
        "velocity_max_abs_diff": max_diff(ours, ref),
        "target_velocity_max_abs_diff": max_diff(ours[:, :, R : R + T], ref[:, :, R : R + T]),
        "velocity_max_abs": float(ref.abs().max()),
        "branch_effect_max_abs": max_diff(ours, plain),  # the branch and references matter: not a no-op comparison
        "branch_key_names_match_diffusers_converter": names_agree,
        "latents": list(latents.shape), "context": list(context.shape), "num_ref_frames": R,
        "per_frame_timestep": per_frame.tolist(),
    }  # fmt: skip


@torch.no_grad()
def check_upstream_vace(root: Path, seed: int, std: float, t: float, device) -> dict:
    """(c) no references, the branch on: upstream DiffSynth's model function with its own VACE vs ours."""
    dit_module, vace_module, model_fn = load_upstream(root)
    dit = build_dit(dit_module, seed, std, device)
    transformer = to_diffusers(dit, device)
    vace, branch, names_agree = build_branch(vace_module, transformer, seed + 2, std, device)

    latents, text = inputs(NUM_TARGET, seed + 1, device)  # [1, 48, 9, h, w]: frame 0 clean, the rest at t
    g = torch.Generator().manual_seed(seed + 4)
    context = torch.randn(1, 96, NUM_TARGET, *LATENT_HW, generator=g).to(device)  # [1, 96, 9, h, w] over every frame
    timestep = ti2v_timesteps(NUM_TARGET, t, device)  # [1, 9 * h' * w'], what upstream builds from the scalar t

    with HintRecorder(vace, branch) as hints:
        ref = model_fn(dit=dit, vace=vace, latents=latents, timestep=torch.tensor([t], device=device), context=text,
                       vace_context=context, vace_scale=1.0, fuse_vae_embedding_in_latents=True)  # fmt: skip
        ours = branched_forward(transformer, branch, latents, timestep, text, context=context, num_ref_frames=0)
    plain = branched_forward(transformer, None, latents, timestep, text)
    return {
        "hints_max_abs_diff": hints.diffs(),
        "hints_max_abs": [float(h.abs().max()) for h in hints.ref],
        "velocity_max_abs_diff": max_diff(ours, ref),
        "velocity_max_abs": float(ref.abs().max()),
        "branch_effect_max_abs": max_diff(ours, plain),  # the branch matters: not a no-op comparison
        "branch_key_names_match_diffusers_converter": names_agree,
        "latents": list(latents.shape), "context": list(context.shape), "num_ref_frames": 0, "timestep": t,
        "vace_scale": 1.0,
    }  # fmt: skip


def equivalence_parser(doc: str, out_help: str = "write the numbers as JSON") -> argparse.ArgumentParser:
    """The options every equivalence script against reference code takes (this one and the whole-loop
    scripts): the reference sources, device, seed and std of the random weights, tolerance, output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-root", type=Path, required=True, help="untracked folder of reference sources")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--std", type=float, default=0.05, help="std of the random parameters")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, help=out_help)
    return parser


def exact_fp32() -> None:
    """fp32 everywhere: TF32 off for matrix products and convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def main() -> int:
    parser = equivalence_parser(__doc__)
    parser.add_argument("--timestep", type=float, default=731.0)
    parser.add_argument("--skip-upstream", action="store_true", help="only (b): no diffsynth package needed")
    args = parser.parse_args()

    exact_fp32()
    device = torch.device(args.device)
    import diffusers

    sources = args.reference_root / "SOURCES.txt"
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": "float32", "attention": "sdpa",
        "config": {**DIT, "branch_layers": BRANCH_LAYERS, "latent_hw": LATENT_HW, "text_tokens": TEXT_TOKENS,
                   "seed": args.seed, "std": args.std},
        "reference_sources": sources.read_text().strip() if sources.is_file() else None,
        "tolerance": args.tolerance,
    }  # fmt: skip
    if not args.skip_upstream:
        upstream = check_upstream(args.reference_root, args.seed, args.std, args.timestep, device)
        result["upstream_no_refs_no_branch"] = upstream
        result["upstream_vace"] = check_upstream_vace(args.reference_root, args.seed, args.std, args.timestep, device)
    result["mirage_layout"] = check_mirage(args.reference_root, args.seed, args.std, args.timestep, device)

    branched = [result[k] for k in ("mirage_layout", "upstream_vace") if k in result]  # (b), (c): hints and branch
    diffs = [d for r in branched for d in (r["velocity_max_abs_diff"], *r["hints_max_abs_diff"])]
    if "upstream_no_refs_no_branch" in result:
        diffs.append(result["upstream_no_refs_no_branch"]["velocity_max_abs_diff"])
    result["max_abs_diff"] = max(diffs)
    names_agree = all(r["branch_key_names_match_diffusers_converter"] for r in branched)
    branch_matters = all(r["branch_effect_max_abs"] > 100 * args.tolerance for r in branched)
    result["passed"] = bool(result["max_abs_diff"] <= args.tolerance and names_agree and branch_matters)

    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"{'PASS' if result['passed'] else 'FAIL'}: max abs difference {result['max_abs_diff']:.3g} "
          f"(tolerance {args.tolerance:g})")  # fmt: skip
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

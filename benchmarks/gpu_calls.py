"""What the Space's GPU calls cost: a run cut into one call per chunk per memory (as the app runs it on
ZeroGPU) against one call per memory (as it ran before), and the peak GPU memory of one chunk per
conditioning with the text encoder kept on the CPU (``enable_text_encoder_offload``, the app's setting).

Full size with random weights (time and memory do not depend on weight values), the components of
``benchmarks/pipeline.py`` (Wan2.2 TI2V-5B transformer, float32 VAE, UMT5-XXL, Depth Pro timed with
the planar prior's geometry), driven through the app's runner (``mirage.preview.GenerationRunner``):

* **per chunk**: latent chunk 1, RGB chunk 1, latent chunk 2, ... Every call's arguments (the run
  input, the memory's run so far) and everything it yields (progress, then the run and the chunk's
  view with 8-bit frames) go through ``pickle`` as ZeroGPU's worker pipe carries them: bytes and
  seconds per call are measured. Time to the first result = both memories' first chunk done.
* **per memory**: each memory's whole run in one call, nothing pickled; the first result is shown
  when both calls end.

The two must give the same latents (the max difference is printed; same seed). Then one chunk per
conditioning (training-free, the Mirage branch of 15 blocks, Spatia's of 8 with its 121-frame first
round) for the peak memory.

    python benchmarks/gpu_calls.py --out benchmarks/results/gpu_calls_cuda_h100.json   # GPU
    python benchmarks/gpu_calls.py --small                                             # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import GiB, MiB, build, scene_inputs, sync  # noqa: E402  (benchmarks/pipeline.py)

from mirage.branch import MemoryBranch  # noqa: E402
from mirage.families import FAMILIES  # noqa: E402
from mirage.frames import Chunking  # noqa: E402
from mirage.preview import ChunkDone, GenerationRunner, RunInput  # noqa: E402
from mirage.synthetic import default_camera, default_scene  # noqa: E402
from mirage.testing import TI2V_5B_TRANSFORMER_CONFIG, TINY_TRANSFORMER_CONFIG, tiny_lora_state_dict  # noqa: E402

KINDS = ("latent", "rgb")


def run_input(args) -> RunInput:
    image, path = scene_inputs(args)
    cam = default_camera(args.width, args.height)
    _, depth = default_scene().render(cam)
    return RunInput(image, depth[0], cam, path)


def per_chunk(runner: GenerationRunner, inp: RunInput, chunks: int, device) -> dict:
    """The app on ZeroGPU: one call per chunk per memory, alternating, everything crossing pickled."""
    runs, calls, latents = {k: None for k in KINDS}, [], {k: [] for k in KINDS}
    t0 = time.perf_counter()
    first = None
    for index in range(chunks):
        for kind in KINDS:
            c0 = time.perf_counter()
            sent = pickle.dumps((inp, kind, runs[kind]), protocol=pickle.HIGHEST_PROTOCOL)
            a_inp, a_kind, a_run = pickle.loads(sent)
            args_s = time.perf_counter() - c0
            back_bytes, back_s, yields = 0, 0.0, 0
            for item in runner.steps(a_inp, a_kind, a_run):
                p0 = time.perf_counter()
                data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                item = pickle.loads(data)
                back_s += time.perf_counter() - p0
                back_bytes += len(data)
                yields += 1
                if isinstance(item, ChunkDone):
                    runs[kind] = item.run
                    latents[kind].append(item.run.chunks.history[-1].latents.float())
            sync(device)
            calls.append({"memory": kind, "chunk": index, "wall_s": time.perf_counter() - c0, "args_bytes": len(sent),
                          "args_pickle_s": args_s, "yield_bytes": back_bytes, "yield_pickle_s": back_s, "yields": yields})  # fmt: skip
            print(f"  call {kind} chunk {index + 1}: {calls[-1]['wall_s']:.2f} s, args {len(sent) / MiB:.1f} MiB, "
                  f"yields {back_bytes / MiB:.1f} MiB", flush=True)  # fmt: skip
        if first is None:
            first = time.perf_counter() - t0
    return {"wall_s": time.perf_counter() - t0, "first_result_s": first, "calls": calls, "latents": latents}


def per_memory(runner: GenerationRunner, inp: RunInput, chunks: int, device) -> dict:
    """Before: each memory's whole run in one call; the page saw nothing until both had ended."""
    latents, walls = {k: [] for k in KINDS}, {}
    t0 = time.perf_counter()
    for kind in KINDS:
        c0, run = time.perf_counter(), None
        for _ in range(chunks):
            for item in runner.steps(inp, kind, run):
                if isinstance(item, ChunkDone):
                    run = item.run
            latents[kind].append(run.chunks.history[-1].latents.float())
        sync(device)
        walls[kind] = time.perf_counter() - c0
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "first_result_s": wall, "call_wall_s": walls, "latents": latents}


def peak_per_conditioning(pipe, args, device) -> list[dict]:
    """One chunk (2 steps) per conditioning, the text encoder on the CPU: peak allocated memory."""
    out = []
    image, path = scene_inputs(args)
    config = TINY_TRANSFORMER_CONFIG if args.small else TI2V_5B_TRANSFORMER_CONFIG
    for label, kind in (("training-free (replace)", None), ("Mirage branch", "mirage"), ("Spatia branch", "spatia")):
        mode = "replace"
        if kind is not None:
            family = FAMILIES[kind]
            blocks = 1 if args.small else family.blocks
            with torch.device(device):
                branch = MemoryBranch.for_transformer(pipe.transformer, type(family.branch_config)(family.layers(blocks)))
            lora = tiny_lora_state_dict(config, rank=32, default=family.lora_key_tag == ".default")
            pipe.load_branch(kind, {k: v.to(torch.bfloat16) for k, v in branch.state_dict().items()}, lora,
                             layers=family.layers(blocks))  # fmt: skip
            del branch
            mode = "branch"
        torch.cuda.empty_cache() if device.type == "cuda" else None
        chunking = pipe.defaults_for(mode).chunking
        frames = chunking.first if not args.small else 9
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        pipe(image, path, "a camera moving through a room", num_frames=frames, chunking=Chunking(frames, frames, 1),
             num_inference_steps=2, memory="latent", memory_mode=mode, generator=torch.Generator().manual_seed(0))  # fmt: skip
        sync(device)
        peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
        row = {"conditioning": label, "frames": frames, "resident_bytes": int(resident), "peak_bytes": peak,
               "wall_s_2_steps": time.perf_counter() - t0,
               "guidance": pipe.defaults_for(mode).guidance_scale}  # fmt: skip
        print(f"  {label}: {frames} frames, resident {resident / GiB:.2f} GiB, peak {peak / GiB:.2f} GiB", flush=True)
        out.append(row)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke preset: tiny models, 64x96, 25 frames in chunks of 9")
    p.add_argument("--frames", type=int, default=None, help="default 161 (25 with --small)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps per chunk (default 4: the costs that scale with steps "
                                                        "are in benchmarks/pipeline.py; this measures what the calls add)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--skip-peaks", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    args.height, args.width = (64, 96) if args.small else (704, 1280)
    args.frames = args.frames or (25 if args.small else 161)
    args.chunk_frames = 9 if args.small else 33
    pipe = build(args, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe.enable_text_encoder_offload()
    chunking = Chunking(args.chunk_frames, args.chunk_frames, 1)
    chunks = len(chunking.ranges(args.frames))
    runner = GenerationRunner(pipe, seed=0, num_inference_steps=args.steps, guidance_scale=args.guidance, chunking=chunking,
                              prompt="a camera moving through a room")  # fmt: skip
    inp = run_input(args)
    print(f"warm-up (one chunk of each memory), then {args.frames} frames = {chunks} chunks, {args.steps} steps, "
          f"guidance {args.guidance}", flush=True)  # fmt: skip
    for kind in KINDS:
        list(runner.steps(inp, kind, None))
    print("per chunk (the app on ZeroGPU):", flush=True)
    split = per_chunk(runner, inp, chunks, device)
    print("per memory (one call each):", flush=True)
    whole = per_memory(runner, inp, chunks, device)
    diff = max(float((a - b).abs().max()) for k in KINDS for a, b in zip(split["latents"][k], whole["latents"][k]))
    calls = split["calls"]
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "size": [args.height, args.width], "frames": args.frames, "chunks": chunks, "steps": args.steps,
        "guidance": args.guidance, "text_encoder_offload": True,
        "per_chunk": {k: v for k, v in split.items() if k != "latents"},
        "per_memory": {k: v for k, v in whole.items() if k != "latents"},
        "max_latent_difference": diff,
    }  # fmt: skip
    lines = [
        f"## {result['device']}, torch {torch.__version__}: {args.frames} frames at {args.height}x{args.width}, {chunks} chunks, "
        f"{args.steps} steps, guidance {args.guidance}", "",
        "| | GPU calls | wall s | first result s | max latent difference |", "|---|---|---|---|---|",
        f"| one call per chunk per memory (pickled) | {len(calls)} | {split['wall_s']:.1f} | {split['first_result_s']:.1f} | {diff:.3g} |",
        f"| one call per memory | 2 | {whole['wall_s']:.1f} | {whole['first_result_s']:.1f} | (reference) |", "",
        "| call | wall s | arguments MiB | pickling args s | yielded MiB | pickling yields s | yields |", "|---|---|---|---|---|---|---|",
        *[f"| {c['memory']} chunk {c['chunk'] + 1} | {c['wall_s']:.2f} | {c['args_bytes'] / MiB:.2f} | {c['args_pickle_s']:.3f} | "
          f"{c['yield_bytes'] / MiB:.1f} | {c['yield_pickle_s']:.3f} | {c['yields']} |" for c in calls],
    ]  # fmt: skip
    if not args.skip_peaks:
        print("peak memory per conditioning (one chunk, 2 steps, text encoder on the CPU):", flush=True)
        result["peaks"] = peak_per_conditioning(pipe, args, device)
        lines += ["", "| conditioning (text encoder on the CPU) | frames | guidance | resident GiB | peak GiB |", "|---|---|---|---|---|",
                  *[f"| {r['conditioning']} | {r['frames']} | {r['guidance']} | {r['resident_bytes'] / GiB:.2f} | "
                    f"{r['peak_bytes'] / GiB:.2f} |" for r in result["peaks"]]]  # fmt: skip
    table = "\n".join(lines)
    print(table, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()

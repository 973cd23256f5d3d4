"""Ahead-of-time compiled blocks (mirage.aot) on the tiny transformer on the CPU, with the real torch
APIs: export, AOTInductor package without weights, a load in a child process, every block with its own
weights at the package's shapes and its own forward at any other; the start-up cache; the package's
inputs are the pipeline's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirage import aot, speed
from mirage.testing import TINY_TRANSFORMER_CONFIG, subclass_weight


def _model():
    return speed.random_transformer(TINY_TRANSFORMER_CONFIG, "cpu", torch.float32)


def _inputs(frames: int = 3) -> dict:  # one chunk of ``frames`` latent frames of 4 x 6 cells, 8 text tokens
    return aot.example_inputs(_model(), frames, 4, 6, text_tokens=8)


def test_aot_package_without_weights_runs_every_block_with_its_own(tmp_path):
    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
    package = aot.compile_block(model, x, tmp_path / "block.pt2")
    assert package.is_file()
    other = _model()  # the same architecture: the package holds no weights, each block passes its own
    for p in other.parameters():
        p.data.add_(0.01)
    with torch.no_grad():
        other_ref = other(**x)[0]
        aot.apply(model, package)
        aot.apply(other, package)
        torch.testing.assert_close(model(**x)[0], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other(**x)[0], other_ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref, other_ref)  # so the weights really came from each model
    assert aot.key(_model(), x) != aot.key(_model(), _inputs(frames=5))  # another size: another package


def test_the_key_tells_apart_blocks_that_run_differently_with_the_same_class_and_weights():
    """A package is compiled from what the block runs: fused RoPE and GELU (``mirage.fused``) or another
    attention backend keep the block's class and state dict but must not reuse each other's package."""
    x = _inputs()
    plain = aot.key(_model(), x)
    assert aot.key(_model(), x) == plain  # another instance of the same: the same package
    assert aot.key(speed.apply(_model(), speed.SpeedSettings(fused=True)), x) != plain
    assert aot.key(speed.apply(_model(), speed.SpeedSettings(attention="_native_math")), x) != plain


def test_the_key_follows_the_code_settings_and_weight_types_a_block_runs_with(monkeypatch):
    """What else decides what a package computes: a helper function in a processor's module (the
    module's source, not only the class's), a module's own setting (the GELU epilogue chosen at fuse
    time), a weight's tensor type (a quantized weight keeps its dtype in the state dict) and the
    process's attention backend where the processor names none."""
    import inspect

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    from mirage import fused

    x = _inputs()
    fused_model = speed.apply(_model(), speed.SpeedSettings(fused=True))
    fused_key, plain = aot.key(fused_model, x), aot.key(_model(), x)
    source = inspect.getsource
    with monkeypatch.context() as m:  # fused.py's text changes (e.g. its _rope), its classes' sources do not
        m.setattr(aot.inspect, "getsource", lambda obj: source(obj) + ("# changed" if obj is fused else ""))
        assert aot.key(fused_model, x) != fused_key
    fused_model.blocks[0].ffn.net[0].epilogue = False
    assert aot.key(fused_model, x) != fused_key
    typed = _model()
    subclass_weight(typed.blocks[0].ffn.net[0].proj)
    assert aot.key(typed, x) != plain
    default = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        _AttentionBackendRegistry.set_active_backend("_native_math")
        assert aot.key(_model(), x) != plain
    finally:
        _AttentionBackendRegistry.set_active_backend(default)
    assert aot.key(_model(), x) == plain


def _stack_flags(path) -> int:  # p_flags of the PT_GNU_STACK header, read with the system's readelf
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if "GNU_STACK" in ln]
    return sum(bit for letter, bit in (("R", 4), ("W", 2), ("E", 1)) if letter in line.split()[-2])


@pytest.mark.skipif(__import__("shutil").which("readelf") is None, reason="needs binutils' readelf")
def test_clear_executable_stack_drops_only_the_execute_bit(tmp_path):
    """A library whose stack header asks for RWE ends RW; a second call finds nothing to clear; other
    headers and bytes stay as they were."""
    import shutil
    import struct

    lib = tmp_path / "lib.so"
    shutil.copy(torch._C.__file__, lib)  # any 64-bit ELF library
    data = bytearray(lib.read_bytes())
    (table,) = struct.unpack_from("<Q", data, 0x20)
    entry, count = struct.unpack_from("<HH", data, 0x36)
    (header,) = [h for h in range(table, table + entry * count, entry) if struct.unpack_from("<I", data, h)[0] == 0x6474E551]
    struct.pack_into("<I", data, header + 4, 7)  # as the compiler leaves an AOTInductor library: RWE
    lib.write_bytes(bytes(data))
    assert _stack_flags(lib) == 7
    assert aot.clear_executable_stack(lib) is True
    assert _stack_flags(lib) == 6
    after = bytearray(lib.read_bytes())
    assert [i for i in range(len(data)) if data[i] != after[i]] == [header + 4]
    assert aot.clear_executable_stack(lib) is False
    (tmp_path / "not.so").write_bytes(b"plain text, not an ELF file")
    with pytest.raises(ValueError):
        aot.clear_executable_stack(tmp_path / "not.so")


def test_prepare_compiles_once_checks_in_a_child_and_applies_at_its_shapes_only(tmp_path):
    """The first prepare compiles into the cache and a child process loads the package; the second finds
    it. Applied, calls at the package's shapes run it (as eager, to float tolerance) and a call at another
    chunk length runs each block's own forward (exactly eager); remove counts both and restores eager."""
    model, x, longer = _model(), _inputs(), _inputs(frames=5)
    with torch.no_grad():
        ref, ref_longer = model(**x)[0], model(**longer)[0]
    pkg = aot.prepare(model, x, tmp_path)
    assert pkg.compile_s > 0 and pkg.load.ok and pkg.load.exit_code == 0 and pkg.usable
    assert 0 < pkg.load.seconds < 60  # what each process that loads it pays, measured in the child
    assert pkg.load.import_seconds > 0  # apart: the compiler's Python package, imported by apply (below)
    again = aot.prepare(model, x, tmp_path)
    assert again.compile_s is None and (again.path, again.key, again.signature) == (pkg.path, pkg.key, pkg.signature)
    assert sorted(p.name for p in tmp_path.iterdir()) == [pkg.path.name, pkg.path.name + ".json"]  # no temporary left
    aot.apply(model, pkg)
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(model(**longer)[0], ref_longer)
    blocks = len(speed.repeated_blocks(model))
    assert aot.remove(model) == {"package": blocks, "eager": blocks}
    with torch.no_grad():
        assert torch.equal(model(**x)[0], ref)


def test_a_fused_blocks_package_loads_where_mirage_aot_is_imported_and_computes_the_same(tmp_path):
    """A package compiled from fused blocks calls the custom op ``mirage::linear_gelu_tanh`` by name: a
    process loads it only with the op registered, which importing ``mirage.aot`` does (the child check
    imports nothing else of ours)."""
    model, x = speed.apply(_model(), speed.SpeedSettings(fused=True)), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
    pkg = aot.prepare(model, x, tmp_path)
    assert pkg.load.ok, pkg.load.detail
    aot.apply(model, pkg)
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], ref, rtol=1e-5, atol=1e-5)


def test_apply_imports_the_compiler_so_a_process_forked_later_pays_only_the_package_load():
    """A ZeroGPU worker is forked from the process that applied the package: after ``apply`` that process
    has ``torch._inductor`` (a fresh interpreter has not), so the worker's first call pays only what
    ``LoadCheck.seconds`` says."""
    code = ("import sys, torch; sys.path.insert(0, {root!r}); from mirage import aot; "  # (diffusers would import it too)
            "before = 'torch._inductor' in sys.modules; aot.apply(torch.nn.Module(), []); "
            "print(before, 'torch._inductor' in sys.modules)").format(root=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["False", "True"], r.stderr[-2000:]


def test_a_package_that_does_not_load_is_said_and_never_applied(tmp_path):
    bad = tmp_path / "block-0.pt2"
    bad.write_bytes(b"PK\x03\x04 not a package")
    check = aot.check_load(bad)
    assert not check.ok and check.exit_code not in (0, None) and check.detail and check.seconds is None
    pkg = aot.Package(bad, "0", [], None, check)
    assert not pkg.usable


def test_a_block_whose_weights_the_package_does_not_know_runs_eager_with_a_warning(tmp_path):
    """A LoRA adapter added after start-up renames a block's weights (``...base_layer.weight``): the
    package cannot be fed them, so every block says so once and runs its own forward, exactly eager;
    and such a transformer has another key (a package for it is compiled apart)."""
    from peft import LoraConfig

    model, x = _model(), _inputs()
    pkg = aot.prepare(model, x, tmp_path, check=False)
    aot.apply(model, pkg)
    model.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))  # lora_B starts at zero: the same function
    with torch.no_grad(), pytest.warns(UserWarning, match="not used for WanTransformerBlock: KeyError"):
        out = model(**x)[0]
    calls = aot.remove(model)
    with torch.no_grad():
        assert torch.equal(out, model(**x)[0])
    assert calls == {"package": 0, "eager": len(speed.repeated_blocks(model))}
    assert aot.key(model, x) != pkg.key


@pytest.mark.skipif(__import__("shutil").which("readelf") is None or __import__("shutil").which("nm") is None,
                    reason="needs binutils' readelf and nm")
def test_the_probe_says_what_a_compiled_library_is_made_of(tmp_path):
    """``benchmarks/aot_probe.py``'s inspection of a package (what a crashing load on the GPU machine is
    checked with): here the library takes the C++ standard library from the system, none of its
    internals inside it, and names the compiler that built it."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from aot_probe import inspect

    package = aot.compile_block(_model(), _inputs(), tmp_path / "block.pt2")
    (lib,) = inspect(str(package)).values()
    assert "libstdc++.so.6" in lib["needed"] and "libtorch_cpu.so" in lib["needed"]
    assert lib["libstdcxx_internals_count"] == 0 and lib["compiler"] and lib["compiler"][0].startswith(("GCC", "clang"))


def _regex_library(tmp_path, kind: str):
    """A shared library whose ``parse("cuda:0")`` builds and matches a ``std::regex`` as the package's
    ``parse_device_str`` does, linked against the system's libstdc++ (``shared``) or with a static copy
    of it (``static``, as the H100 machine's packages are)."""
    src = tmp_path / "rx.cpp"
    src.write_text('#include <regex>\n#include <string>\nextern "C" int parse(const char* s) {\n'
                   '  std::regex re("(cpu|cuda)(:([0-9]+))?");\n  return std::regex_match(std::string(s), re);\n}\n')
    flags = {"shared": [], "static": ["-static-libstdc++", "-static-libgcc"]}[kind]
    lib = tmp_path / f"{kind}.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", *flags, str(src), "-o", str(lib)], check=True)
    return lib


@pytest.mark.skipif(any(__import__("shutil").which(t) is None for t in ("readelf", "nm", "g++")),
                    reason="needs binutils and g++")
def test_the_probe_tells_a_library_with_its_own_libstdcxx_from_one_that_shares_the_processes(tmp_path):
    """The same std::regex code linked against the system's libstdc++ and with a static copy of it:
    only the second carries the standard library's locale internals (its own facet ids)."""
    import zipfile

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from aot_probe import inspect

    found = {}
    for kind in ("shared", "static"):
        with zipfile.ZipFile(tmp_path / f"{kind}.pt2", "w") as z:
            z.write(_regex_library(tmp_path, kind), f"data/aotinductor/model/{kind}.so")
        (found[kind],) = inspect(str(tmp_path / f"{kind}.pt2")).values()
    assert "libstdc++.so.6" in found["shared"]["needed"] and found["shared"]["libstdcxx_internals_count"] == 0
    assert "libstdc++.so.6" not in found["static"]["needed"] and found["static"]["libstdcxx_internals_count"] > 0


@pytest.mark.skipif(__import__("shutil").which("g++") is None or not __import__("sys").platform.startswith("linux"),
                    reason="needs g++ on Linux")
def test_a_library_with_its_own_libstdcxx_runs_once_the_processes_is_shared(tmp_path):
    """The H100 machine's package crash, reproduced on the CPU: a library carrying a static copy of
    libstdc++ and building a std::regex, loaded into a process where torch has loaded the shared
    libstdc++, dies; after ``aot.share_libstdcxx()`` (what every package load here does first) it runs.
    Each in a child process, since the first is meant to die."""
    lib, root = _regex_library(tmp_path, "static"), str(Path(__file__).parents[1])
    runs = {}
    for share in (False, True):
        code = (f"import sys, ctypes; sys.path.insert(0, {root!r}); import torch; from mirage import aot; "
                f"shared = aot.share_libstdcxx() if {share} else None; "
                f"print('shared', shared, 'match', ctypes.CDLL({str(lib)!r}).parse(b'cuda:0'))")
        runs[share] = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert runs[False].returncode != 0 and "match" not in runs[False].stdout, runs[False].stdout
    assert runs[True].returncode == 0 and "shared True match 1" in runs[True].stdout, runs[True].stderr[-2000:]

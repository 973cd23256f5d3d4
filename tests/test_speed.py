"""Speed settings (mirage.speed) on the tiny transformer on the CPU: every setting computes the same
function as eager; the ahead-of-time cycle (export, AOTInductor package without weights, load, every
block with its own weights) with the real torch APIs. Timings are benchmarks/speed.py's, on the GPU."""

from __future__ import annotations

import pytest
import torch

from mirage import speed
from mirage.testing import TINY_TRANSFORMER_CONFIG


def _inputs(seed: int = 0, frames: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, TINY_TRANSFORMER_CONFIG["in_channels"], frames, 4, 6, generator=g),
                timestep=torch.full((1, frames * 2 * 3), 500.0),
                encoder_hidden_states=torch.randn(1, 8, TINY_TRANSFORMER_CONFIG["text_dim"], generator=g),
                return_dict=False)  # fmt: skip


def _model():
    return speed.random_transformer(TINY_TRANSFORMER_CONFIG, "cpu", torch.float32)


def test_defaults_change_nothing_and_the_choice_follows_the_device():
    model, x = _model(), _inputs()
    with torch.no_grad():
        before = model(**x)[0]
        assert torch.equal(speed.apply(model, speed.SpeedSettings())(**x)[0], before)
    assert speed.choose("cuda", zero_gpu=False) == speed.SpeedSettings(compile="regional")
    assert speed.choose("cuda", zero_gpu=True) == speed.SpeedSettings()  # no torch.compile on ZeroGPU
    assert speed.choose("cpu", zero_gpu=False) == speed.SpeedSettings()
    assert speed.describe(speed.SpeedSettings(compile="regional", attention="native")) == "regional compilation, attention native"


def test_every_builtin_attention_backend_here_computes_the_same():
    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
        for backend in speed.available_attention_backends("cpu"):
            out = speed.apply(model, speed.SpeedSettings(attention=backend))(**x)[0]
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="built into PyTorch"):
        speed.apply(model, speed.SpeedSettings(attention="flash_hub"))  # a kernel download: refused


def test_aot_package_without_weights_runs_every_block_with_its_own(tmp_path):
    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model(**x)[0]
    package = speed.aot_compile(model, x, tmp_path / "block.pt2")
    assert package.is_file()
    other = _model()  # the same architecture: the package holds no weights, each block passes its own
    for p in other.parameters():
        p.data.add_(0.01)
    with torch.no_grad():
        other_ref = other(**x)[0]
        speed.aot_apply(model, package)
        speed.aot_apply(other, package)
        torch.testing.assert_close(model(**x)[0], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other(**x)[0], other_ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref, other_ref)  # so the weights really came from each model
    assert speed.aot_key(_model(), x) != speed.aot_key(_model(), _inputs(frames=5))  # another size: another package


def _stack_flags(path) -> int:  # p_flags of the PT_GNU_STACK header, read with the system's readelf
    import subprocess

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
    assert speed.clear_executable_stack(lib) is True
    assert _stack_flags(lib) == 6
    after = bytearray(lib.read_bytes())
    assert [i for i in range(len(data)) if data[i] != after[i]] == [header + 4]
    assert speed.clear_executable_stack(lib) is False
    (tmp_path / "not.so").write_bytes(b"plain text, not an ELF file")
    with pytest.raises(ValueError):
        speed.clear_executable_stack(tmp_path / "not.so")

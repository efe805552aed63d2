"""Compile gate and source rules for kernels/*.cu, without a GPU.

Every kernel file, as the loader hands it to cupy.RawModule, compiles through NVRTC with the
option list CuPy builds (tests/nvrtc_check.py) for sm_75, sm_80, sm_86, sm_89, sm_90
and every newer architecture the installed NVRTC knows, with an empty log (warnings fail)
and every entry point present in the binary. NVRTC comes from the nvidia-cuda-nvrtc-cu12
wheel (or a CUDA toolkit) through CuPy's own wrapper; where it cannot be loaded these tests
skip with the reason, unless GPUNN_REQUIRE_NVRTC=1 (set it in CI) turns that into a failure.

The source rules below keep the kernels emulatable and safe for large tensors.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpunn import kernels
import nvrtc_check
from gpunn.kernel_signatures import strip_comments

NVRTC_OK, NVRTC_REASON, _ = nvrtc_check.nvrtc_status()
ARCHS = nvrtc_check.target_archs() if NVRTC_OK else []
FILES = kernels.kernel_files()


def _need_nvrtc():
    if NVRTC_OK:
        return
    if os.environ.get("GPUNN_REQUIRE_NVRTC", "") not in ("", "0"):
        pytest.fail(f"GPUNN_REQUIRE_NVRTC is set but NVRTC is unavailable: {NVRTC_REASON}")
    pytest.skip(f"NVRTC unavailable: {NVRTC_REASON}")


@pytest.fixture(scope="module")
def results():
    """Every (file, arch) compile, two at a time (NVRTC releases the GIL)."""
    _need_nvrtc()
    jobs = [(f, a) for f in FILES for a in ARCHS]
    with ThreadPoolExecutor(2) as ex:
        return dict(zip(jobs, ex.map(lambda j: nvrtc_check.compile_file(*j), jobs)))


def test_target_archs_cover_turing_to_hopper():
    _need_nvrtc()
    assert {"75", "80", "86", "90"} <= set(ARCHS), ARCHS


@pytest.mark.parametrize("file", FILES)
def test_nvrtc_compiles_with_cupy_options(file, results):
    bad = [r for (f, _), r in results.items() if f == file and not r.ok]
    assert not bad, "\n\n".join(r.message() for r in bad)


def test_options_are_cupys():
    """The option list has CuPy's parts in CuPy's order around ours."""
    _need_nvrtc()
    opts, kind = nvrtc_check.cupy_compile_options(kernels.KERNEL_OPTIONS, "80")
    assert kind == "cubin"
    i = opts.index(kernels.KERNEL_OPTIONS[0])
    assert all(o.startswith("-I") and "_cccl" in o for o in opts[:i])
    assert opts[i:i + len(kernels.KERNEL_OPTIONS)] == kernels.KERNEL_OPTIONS
    assert [o for o in opts if "-std=" in o] == ["--std=c++14"]
    tail = opts[opts.index("-ftz=true"):]
    assert tail[:3] == ("-ftz=true", "-arch=sm_80", "--device-as-default-execution-space")


def test_gate_rejects_what_nvcc_accepts():
    """INFINITY without <math_constants.h>: nvcc -ptx takes it, NVRTC (and so CuPy) does not."""
    _need_nvrtc()
    src = 'extern "C" __global__ void k(float* y) { y[0] = INFINITY; }\n'
    r = nvrtc_check.compile_file("inf.cu", ARCHS[0], source=src, names=("k",), use_cache=False)
    assert not r.ok and "INFINITY" in r.log


def test_gate_fails_on_warnings_and_missing_entry_points():
    _need_nvrtc()
    src = 'extern "C" __global__ void k(float* y) { int unused = 3; y[0] = 1.0f; }\n'
    r = nvrtc_check.compile_file("w.cu", ARCHS[0], source=src, names=("k",), use_cache=False)
    assert not r.ok and "unused" in r.log
    src = 'extern "C" __global__ void k(float* y) { y[0] = 1.0f; }\n'
    r = nvrtc_check.compile_file("m.cu", ARCHS[0], source=src, names=("k", "k2"),
                                 use_cache=False)
    assert not r.ok and r.missing == ("k2",)


def test_compile_error_names_file_kernel_and_log(monkeypatch):
    """The loader turns CuPy's CompileException into KernelCompileError with the NVRTC log.
    (cupy.RawModule and the device context are faked: no GPU here.)"""
    cupy = pytest.importorskip("cupy")
    import contextlib

    class FakeModule:
        def __init__(self, code, options):
            self.code, self.options = code, options

        def get_function(self, name):
            raise cupy.cuda.compiler.CompileException(
                "pool.cu(3): error: identifier \"oops\" is undefined", self.code, "pool.cu",
                self.options)

    monkeypatch.setattr(cupy, "RawModule", FakeModule)
    monkeypatch.setattr(cupy.cuda, "Device", lambda idx: contextlib.nullcontext())
    kernels.clear_cache()
    try:
        with pytest.raises(kernels.KernelCompileError) as e:
            kernels.get_kernel("maxpool2d_forward", "float32", device=0)
    finally:
        kernels.clear_cache()
    msg = str(e.value)
    assert "kernels/pool.cu" in msg and "maxpool2d_forward_f32" in msg
    assert 'identifier "oops" is undefined' in msg and "--fmad=false" in msg


# -- source rules ---------------------------------------------------------------------------------
def _sources():
    return {f: strip_comments(kernels.kernel_path(f).read_text()) for f in FILES}


def test_no_block_level_features():
    """Grid-stride kernels only: nothing the thread-by-thread emulator cannot run faithfully,
    and no atomics (results must not depend on thread order)."""
    banned = re.compile(r"__shared__|__syncthreads|__syncwarp|__shfl|_sync\s*\(|atomic[A-Z]\w*")
    for f, src in _sources().items():
        hits = sorted(set(banned.findall(src)))
        assert not hits, f"{f} uses {hits}"


def test_thread_indices_are_64_bit():
    """blockIdx.x * blockDim.x is 32-bit unsigned arithmetic in CUDA: every such product must
    be widened first, or indices wrap past 2**32 threads-times-stride."""
    prod = re.compile(r"(\(long long\)\s*)?(blockIdx\.x\s*\*\s*blockDim\.x|blockDim\.x\s*\*\s*"
                      r"gridDim\.x)")
    for f, src in _sources().items():
        found = prod.findall(src)
        assert found, f"{f}: no grid-stride loop found"
        narrow = [m[1] for m in found if not m[0]]
        assert not narrow, f"{f}: 32-bit index products {narrow}; cast to (long long) first"


# parameters that keep one precision in both twins: batch-norm's float64 partial sums
FIXED_PRECISION = {("batchnorm.cu", "part"), ("batchnorm.cu", "part_in"),
                   ("batchnorm.cu", "part_out"), ("softmax_xent.cu", "loss_sum")}


def test_every_kernel_comes_in_float_and_double():
    sigs = kernels.all_signatures()
    for (f, name), sig in sigs.items():
        assert re.search(r"_f(32|64)$", name), f"{f}: {name} has no _f32/_f64 suffix"
        twin = name[:-3] + ("f64" if name.endswith("f32") else "f32")
        assert (f, twin) in sigs, f"{f}: {name} has no {twin}"
        other = sigs[(f, twin)]
        swap = {"float": "double", "double": "float"}
        assert [p.name for p in sig.params] == [p.name for p in other.params]
        for p, q in zip(sig.params, other.params):
            assert (p.pointer, p.const) == (q.pointer, q.const)
            if (f, p.name) in FIXED_PRECISION:
                assert p.ctype == q.ctype == "double", f"{f}: {name}'s {p.name} is not double"
                continue
            assert q.ctype == swap.get(p.ctype, p.ctype), f"{f}: {name}/{twin} differ at {p.name}"


def test_loader_source_is_the_file():
    for f in FILES:
        src = kernels.kernel_source(f)
        assert src.startswith(f'#line 1 "{f}"\n')
        assert src.split("\n", 1)[1] == kernels.kernel_path(f).read_text()


def test_gate_works_without_cuda_headers(monkeypatch):
    """With only the NVRTC wheel (no toolkit), CuPy's option assembly raises for want of a CUDA
    root; the gate rebuilds the same list without the CUDA include path and still compiles."""
    _need_nvrtc()
    from cupy._core import core

    def no_cuda_root(options):
        raise RuntimeError("Failed to auto-detect CUDA root directory.")

    full, _ = nvrtc_check.cupy_compile_options(kernels.KERNEL_OPTIONS, "80")
    monkeypatch.setattr(core, "assemble_cupy_compiler_options", no_cuda_root)
    opts, _ = nvrtc_check.cupy_compile_options(kernels.KERNEL_OPTIONS, "80")
    assert opts == tuple(o for o in full if not (o.startswith("-I") and "cupy" not in o))
    r = nvrtc_check.compile_file("optim.cu", "80", use_cache=False)
    assert r.ok, r.message()

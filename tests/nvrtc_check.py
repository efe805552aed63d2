"""Compile gate: every kernel file through NVRTC with the options ``cupy.RawModule`` uses, for
each target architecture, on a machine with no GPU (docs/KERNELS.md).

CuPy's public compile path asks the device for its compute capability, so it fails without
a GPU; NVRTC's program API does not need one. This module rebuilds the option list exactly as
CuPy does and calls NVRTC through CuPy's own low-level wrapper
(``cupy_backends.cuda.libs.nvrtc``). For CuPy 13/14 the list is
(``cupy/_core/core.pyx`` ``assemble_cupy_compiler_options`` + ``cupy/cuda/compiler.py``
``_compile_with_cache_cuda`` / ``_compile_using_nvrtc_no_warning``):

    -I<cupy>/_cccl/cub  -I<cupy>/_cccl/thrust  -I<cupy>/_cccl/libcudacxx   (bundled CCCL first)
    <our options>                       (gpunn.kernels.KERNEL_OPTIONS)
    --std=c++XX                         (only when ours name no standard; ours do)
    -I<cupy>/_core/include  [-I<CUDA>/include]
    -ftz=true
    -arch=sm_XX                         (cubin; compute_XX and PTX past NVRTC's newest sm,
                                         or with CUPY_COMPILE_WITH_PTX)
    --device-as-default-execution-space
    [--pch]                             (NVRTC >= 12.8 with CUPY_COMPILE_WITH_PCH)

The first part comes from CuPy's ``assemble_cupy_compiler_options`` itself where it can run;
where it cannot (it raises without any CUDA headers, which our kernels do not include) the
same list is rebuilt here without the CUDA include path.

A file passes when NVRTC compiles it with an empty log (warnings fail too) and the binary
holds every ``extern "C"`` entry point the loader may ask for.

    python tests/nvrtc_check.py        # table of file x arch, exit 1 on a failure
    python tests/nvrtc_check.py --kernel-dir examples/new_layer     # a folder of your own too

It lives with the tests, not in the package: it reads CuPy's private option assembly
(``cupy._core``), which the library itself must never depend on.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from gpunn.testing.cuda_emu.build import cache_dir

__all__ = ["nvrtc_status", "cupy_compile_options", "target_archs", "compile_file",
           "CompileResult", "BASE_ARCHS"]

BASE_ARCHS = ("75", "80", "86", "89", "90")     # Turing .. Hopper; newer ones NVRTC knows are added


def nvrtc_status() -> tuple:
    """``(usable, reason, version)``: whether NVRTC can be loaded through CuPy, never raising."""
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception as e:   # cupy missing or broken
        return False, (f"cupy is not importable ({type(e).__name__}: {e}); install the test "
                       "extra (cupy-cuda12x and nvidia-cuda-nvrtc-cu12)"), None
    try:
        version = tuple(nvrtc.getVersion())
    except Exception as e:
        return False, (f"libnvrtc cannot be loaded ({type(e).__name__}: {e}); pip install "
                       "nvidia-cuda-nvrtc-cu12 (or the CUDA toolkit)"), None
    return True, f"NVRTC {version[0]}.{version[1]}", version


def target_archs() -> list:
    """sm_75..sm_90 plus every newer architecture this NVRTC supports, as strings ("90")."""
    from cupy_backends.cuda.libs import nvrtc
    supported = [int(a) for a in nvrtc.getSupportedArchs()]
    out = [a for a in BASE_ARCHS if int(a) in supported]
    out += [str(a) for a in supported if a > int(BASE_ARCHS[-1])]
    return out


def _assembled(options: tuple) -> tuple:
    """CuPy's ``assemble_cupy_compiler_options(options)``, or its rebuild without CUDA headers."""
    from cupy._core import core
    try:
        return tuple(core.assemble_cupy_compiler_options(tuple(options)))
    except RuntimeError:
        pass                                      # no CUDA root found: headers absent
    inc = core._get_header_dir_path()
    std = () if any("-std=" in o for o in options) else ("--std=c++17",)
    cccl = tuple(core._get_cccl_include_options())
    return cccl + tuple(options) + std + (f"-I{inc}",)


def cupy_compile_options(options: tuple, arch: str) -> tuple:
    """The option list ``cupy.RawModule(code=..., options=options)`` hands to NVRTC on a
    device of compute capability ``arch``, and the output kind ("cubin" or "ptx")."""
    from cupy.cuda import compiler
    opts = _assembled(options) + ("-ftz=true",)
    if os.environ.get("CUPY_CUDA_COMPILE_WITH_DEBUG", "0") not in ("", "0"):
        opts += ("--device-debug", "--generate-line-info")
    use_ptx = bool(getattr(compiler, "_use_ptx", False))
    if not use_ptx and int(arch) <= int(compiler._get_max_compute_capability()):
        opts += (f"-arch=sm_{arch}",)
        kind = "cubin"
    else:
        opts += (f"-arch=compute_{arch}",)
        kind = "ptx"
    opts += ("--device-as-default-execution-space",)
    major, minor = compiler._get_nvrtc_version()
    if (major >= 13 or (major == 12 and minor >= 8)) and getattr(compiler, "_use_pch", False):
        opts += ("--pch",)
    return opts, kind


@dataclass
class CompileResult:
    file: str
    arch: str
    ok: bool
    log: str
    options: tuple
    missing: tuple            # entry points not found in the binary
    cached: bool = False      # a remembered pass of the identical compile

    def message(self) -> str:
        head = f"{self.file} for sm_{self.arch}: "
        if self.ok:
            return head + "ok"
        parts = [head + "FAILED"]
        if self.log.strip():
            parts.append("NVRTC log:\n" + self.log.strip())
        if self.missing:
            parts.append("entry points missing from the binary: " + ", ".join(self.missing))
        parts.append("options: " + " ".join(self.options))
        return "\n".join(parts)


def _pass_marker(source: str, options: tuple, names: tuple) -> Path:
    """Where a pass of exactly this compile is remembered (NVRTC is deterministic in these)."""
    import cupy
    from cupy.cuda import compiler
    key = hashlib.sha256("\0".join([source, *options, *names, repr(compiler._get_nvrtc_version()),
                                     cupy.__version__]).encode()).hexdigest()[:32]
    return cache_dir() / "nvrtc-passed" / key


def compile_file(file: str, arch: str, source: str | None = None,
                 names: tuple | None = None, *, use_cache: bool | None = None) -> CompileResult:
    """Compile ``kernels/<file>`` (the loader's exact code string) for ``arch``.

    A pass is remembered under the emulator's cache folder, keyed by the source, the full
    option list, the entry point names, NVRTC's and CuPy's versions; an identical compile is
    not repeated. ``use_cache=False`` or ``GPUNN_NVRTC_NOCACHE=1`` always compiles.
    """
    from cupy_backends.cuda.libs import nvrtc

    from gpunn import kernels
    if source is None:
        source = kernels.kernel_source(file)
    if names is None:
        names = tuple(kernels.signatures(file))
    options, kind = cupy_compile_options(kernels.KERNEL_OPTIONS, arch)
    if use_cache is None:
        use_cache = os.environ.get("GPUNN_NVRTC_NOCACHE", "") in ("", "0")
    marker = _pass_marker(source, options, names) if use_cache else None
    if marker is not None and marker.exists():
        return CompileResult(file, arch, True, "", options, (), cached=True)
    result = _compile(nvrtc, source, file, arch, options, kind, names)
    if marker is not None and result.ok:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{file} sm_{arch}\n")
    return result


def _compile(nvrtc, source, file, arch, options, kind, names) -> CompileResult:
    prog = nvrtc.createProgram(source, file, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
            compiled = True
        except nvrtc.NVRTCError:
            compiled = False
        log = nvrtc.getProgramLog(prog)
        log = log.decode() if isinstance(log, bytes) else (log or "")
        log = log.strip("\x00").strip()
        missing: tuple = ()
        if compiled:
            binary = nvrtc.getCUBIN(prog) if kind == "cubin" else nvrtc.getPTX(prog)
            binary = binary if isinstance(binary, bytes) else binary.encode()
            if kind == "cubin":    # ELF string table: NUL-terminated symbol names
                missing = tuple(n for n in names if b"\x00" + n.encode() + b"\x00" not in binary)
            else:
                missing = tuple(n for n in names if f".entry {n}(".encode() not in binary)
    finally:
        nvrtc.destroyProgram(prog)
    ok = compiled and not log and not missing
    return CompileResult(file, arch, ok, log, options, missing)


def main(argv=None) -> int:
    """``python tests/nvrtc_check.py [--kernel-dir DIR ...]``: gpunn's kernels, and a user's
    own folders of kernels (gpunn.kernels.add_kernel_dir) with them."""
    import argparse
    ap = argparse.ArgumentParser(description="Compile every kernel file through NVRTC with "
                                             "CuPy's options, for each target architecture.")
    ap.add_argument("--kernel-dir", action="append", default=[],
                    help="also check the .cu files in this folder")
    args = ap.parse_args(argv)
    ok, reason, _ = nvrtc_status()
    if not ok:
        print(f"NVRTC unavailable: {reason}")
        return 2
    from gpunn import kernels
    for d in args.kernel_dir:
        kernels.add_kernel_dir(d)
    archs = target_archs()
    print(f"{reason}; archs: {' '.join('sm_' + a for a in archs)}")
    failed = 0
    for f in kernels.kernel_files():
        results = [compile_file(f, a) for a in archs]
        bad = [r for r in results if not r.ok]
        failed += len(bad)
        print(f"{f:20s} {'ok' if not bad else 'FAILED'} ({len(kernels.signatures(f))} kernels)")
        for r in bad:
            print(r.message())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

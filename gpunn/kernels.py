"""Loads the CUDA kernels in ``kernels/*.cu`` for the ops' CUDA bodies (docs/KERNELS.md).

    from gpunn import kernels
    k = kernels.get_kernel("relu_forward", numpy.float32, device=0)   # relu_forward_f32
    k.launch(x.size, x, y, x.size)          # grid-stride launch; Python numbers converted
    k(grid, block, (x, y, numpy.int64(x.size)))                        # or as cupy.RawKernel

Each ``.cu`` file is compiled once per device by ``cupy.RawModule`` (NVRTC, options
:data:`KERNEL_OPTIONS`) and cached; the file holding a kernel is found from the parsed
sources (:func:`kernel_file`), so there is no table to keep in step. A compile failure raises
:class:`KernelCompileError` naming the file, the kernel, the options and NVRTC's log. Entry
points are plain ``extern "C"`` functions, one per dtype (``_f32`` / ``_f64``).

Every launch through a :class:`Kernel` checks its arguments against the kernel's parsed
signature (gpunn/kernel_signatures.py: exact NumPy scalar types, array dtypes,
C-contiguity), and :meth:`Kernel.launch` is the one place Python numbers are converted to the
parameter types. :func:`count_launches` counts every launch by entry name.

The CPU-emulated twins of these kernels are test machinery (gpunn/testing/cuda_emu); this
module never imports them. They come back as the same :class:`Kernel` class.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from .kernel_signatures import ArgumentTypeError, KernelSig, make_checker, parse_kernels

__all__ = [
    "KERNEL_OPTIONS", "KernelError", "KernelCompileError", "ArgumentTypeError", "Kernel",
    "kernels_dir", "kernel_files", "kernel_path", "kernel_source", "signatures", "all_signatures",
    "kernel_file", "kernel_entry", "kernel_name", "dtype_suffix", "get_kernel", "launch_config", "clear_cache",
    "count_launches", "reset_launch_counts", "DEFAULT_BLOCK", "MAX_BLOCKS", "add_kernel_dir",
    "remove_kernel_dir",
]

# Options for cupy.RawModule. The C++ standard is pinned (CuPy's default moved from c++14 to
# c++17 between releases). --fmad=false keeps a*b + c as two roundings, as NumPy computes it,
# so element-wise kernels and optimizer updates match the NumPy bodies bit for bit; these
# kernels are memory-bound, so fused multiply-adds would buy nothing measurable. CuPy itself
# appends -ftz=true (float32 denormals flush to zero on the GPU), its include paths, the
# -arch option and --device-as-default-execution-space; the compile gate uses the same list.
KERNEL_OPTIONS = ("--std=c++14", "--fmad=false")

DEFAULT_BLOCK = 256
MAX_BLOCKS = 4096            # grid-stride loops cover the rest; ~4 waves of 256-thread blocks


class KernelError(RuntimeError):
    """A kernel could not be found or loaded."""


class KernelCompileError(KernelError):
    """NVRTC rejected a kernel file; the message names the file, kernel, options and log."""


# -- where the sources are ----------------------------------------------------------------------
_found_dir: Path | None = None


def kernels_dir() -> Path:
    """The folder holding the ``.cu`` sources.

    ``$GPUNN_KERNELS_DIR`` if set; else the repository's ``kernels/`` when this is a source
    checkout (an editable install); else ``gpunn/_kernels``, where a wheel carries them as
    package data.
    """
    env = os.environ.get("GPUNN_KERNELS_DIR")
    if env:
        return Path(env)
    global _found_dir
    if _found_dir is not None:
        return _found_dir
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "kernels", here / "_kernels"):
        if any(cand.glob("*.cu")):
            _found_dir = cand
            return cand
    raise KernelError(f"no CUDA kernel sources found in {here.parent / 'kernels'} (source "
                      f"checkout) or {here / '_kernels'} (installed package); set "
                      "GPUNN_KERNELS_DIR to the folder holding the .cu files")


# Folders of a user's own kernels (add_kernel_dir), searched after kernels_dir().
_user_dirs: list = []


def add_kernel_dir(path) -> Path:
    """Make the ``.cu`` files in ``path`` available to ops (``backend.kernel(base, dtype)``),
    the emulator and the compile gate, beside gpunn's own. File names must not clash with
    gpunn's (``elementwise.cu``...) nor kernel names with any other file's."""
    d = Path(path).resolve()
    if not d.is_dir() or not any(d.glob("*.cu")):
        raise KernelError(f"add_kernel_dir: {d} is not a folder holding .cu files")
    if d in _user_dirs or d == kernels_dir().resolve():
        return d
    taken = {f: folder for folder in [kernels_dir(), *_user_dirs] for f in _names_in(folder)}
    for f in _names_in(d):
        if f in taken:
            raise KernelError(f"add_kernel_dir: {d / f} has the same name as {taken[f] / f}; "
                              "rename it")
    _user_dirs.append(d)
    _file_of.clear()
    try:
        defined_in = {}
        for (f, name) in all_signatures():
            other = defined_in.setdefault(name, f)
            if other != f:
                raise KernelError(f"add_kernel_dir: kernel {name!r} is defined in both {other} "
                                  f"and {f}")
    except Exception:
        _user_dirs.remove(d)
        raise
    return d


def remove_kernel_dir(path) -> None:
    """Undo :func:`add_kernel_dir` (kernels already compiled stay cached)."""
    d = Path(path).resolve()
    if d in _user_dirs:
        _user_dirs.remove(d)
        _file_of.clear()


def _names_in(folder: Path) -> list:
    return [p.name for p in folder.glob("*.cu")]


def kernel_files() -> list:
    """Names of the ``.cu`` files (gpunn's, then each added folder's), sorted."""
    return sorted(f for folder in [kernels_dir(), *_user_dirs] for f in _names_in(folder))


def kernel_path(file: str) -> Path:
    name = file if file.endswith(".cu") else file + ".cu"
    for folder in [kernels_dir(), *_user_dirs]:
        path = folder / name
        if path.is_file():
            return path
    raise KernelError(f"no kernel file {name!r} in {kernels_dir()}"
                      f"{''.join(', ' + str(d) for d in _user_dirs)}; there are: "
                      f"{', '.join(kernel_files())}")


def kernel_source(file: str) -> str:
    """The exact code string given to ``cupy.RawModule`` (and to the NVRTC compile gate)."""
    path = kernel_path(file)
    return f'#line 1 "{path.name}"\n' + path.read_text()


_sig_cache: dict = {}


def signatures(file: str) -> dict:
    """``{kernel name: KernelSig}`` parsed from ``file``."""
    path = kernel_path(file)
    key = (str(path), path.stat().st_mtime_ns)
    sigs = _sig_cache.get(key)
    if sigs is None:
        sigs = _sig_cache[key] = parse_kernels(path)
    return sigs


def all_signatures() -> dict:
    """``{(file, kernel name): KernelSig}`` over every kernel file."""
    return {(f, n): s for f in kernel_files() for n, s in signatures(f).items()}


# -- naming and launch helpers --------------------------------------------------------------------
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def dtype_suffix(dtype) -> str:
    """``"f32"`` / ``"f64"`` for float32 / float64; other dtypes have no kernels."""
    dt = np.dtype(dtype)
    try:
        return _SUFFIX[dt]
    except KeyError:
        raise TypeError(f"the CUDA kernels take float32 or float64 arrays, got {dt}") from None


def kernel_name(base: str, dtype) -> str:
    """``kernel_name("relu_forward", float32) == "relu_forward_f32"``."""
    return f"{base}_{dtype_suffix(dtype)}"


def launch_config(n: int, block: int = DEFAULT_BLOCK, max_blocks: int = MAX_BLOCKS) -> tuple:
    """``(grid, block)`` tuples for a grid-stride kernel over ``n`` items: the grid is
    ceil(n / block) capped at ``max_blocks`` and at least 1."""
    n = int(n)
    grid = max(1, min(-(-n // block), int(max_blocks)))
    return (grid,), (int(block),)


# -- launch counter ------------------------------------------------------------------------------
# Every call of a Kernel (real or emulated) counts here, by entry name ("relu_forward_f32"), so a
# test can prove that an op took its CUDA body. A Counter increment costs ~0.1 us per launch.
_launch_counter: Counter = Counter()


def count_launches() -> dict:
    """``{entry name: launches}`` since the start (or :func:`reset_launch_counts`)."""
    return dict(_launch_counter)


def reset_launch_counts() -> None:
    _launch_counter.clear()


# -- kernels ----------------------------------------------------------------------------------
class Kernel:
    """One entry point, callable as ``kernel(grid, block, args)`` like ``cupy.RawKernel``.

    ``sig`` is the parsed signature, ``emulated`` says whether this is the CPU twin (test
    machinery), ``max_blocks`` caps the grids :meth:`launch` picks (small for emulated
    kernels, so every grid-stride loop really strides).
    """

    __slots__ = ("file", "name", "sig", "emulated", "max_blocks", "_fn", "_check", "_convert",
                 "_fast")

    def __init__(self, file: str, sig: KernelSig, fn, emulated: bool, array_type,
                 max_blocks: int = MAX_BLOCKS):
        self.file = file
        self.name = sig.name
        self.sig = sig
        self.emulated = emulated
        self.max_blocks = max_blocks
        self._fn = fn
        self._check = make_checker(sig, array_type=array_type)
        self._convert = tuple(None if p.pointer else p.dtype for p in sig.params)
        self._fast = tuple(None if dt is None else _fast_spec(dt) for dt in self._convert)

    def __repr__(self) -> str:
        kind = "emulated" if self.emulated else "cuda"
        return f"<gpunn Kernel {self.file}:{self.sig} ({kind})>"

    def __call__(self, grid, block, args, **kwargs):
        self._check(args)
        _launch_counter[self.name] += 1
        return self._fn(grid, block, args, **kwargs)

    def launch(self, n: int, *values, block: int = DEFAULT_BLOCK):
        """A grid-stride launch over ``n`` work items: ``values`` in the kernel's parameter
        order, Python numbers converted to the parameter types by :meth:`marshal`."""
        grid, blk = launch_config(n, block, self.max_blocks)
        return self(grid, blk, self.marshal(*values))

    def marshal(self, *values) -> tuple:
        """Arguments in the kernel's exact types: numbers become ``numpy.int32`` /
        ``numpy.int64`` / ``numpy.float32`` / ... per parameter (integers range-checked);
        arrays pass through unchanged (they are checked at the call).

        On a GPU an eager step pays this per launch, beside CuPy's own call, so the common
        case (Python ints and bools in range, Python floats) takes a loop over precomputed
        types and bounds (~3 us for 14 arguments instead of ~11); anything else (NumPy
        integers, a HostValue, a bad value) takes the general path, which words the errors."""
        fast = self._fast
        if len(values) == len(fast):
            out = []
            for spec, v in zip(fast, values):
                if spec is None:
                    out.append(v)
                    continue
                t, lo, hi = spec
                tv = type(v)
                if tv is int or tv is bool:
                    if lo is None or lo <= v <= hi:
                        out.append(t(v))
                        continue
                elif tv is float and lo is None:
                    out.append(t(v))
                    continue
                break
            else:
                return tuple(out)
        return self._marshal_general(values)

    def _marshal_general(self, values) -> tuple:
        if len(values) != len(self._convert):
            raise ArgumentTypeError(f"{self.name} takes {len(self._convert)} arguments "
                                    f"({', '.join(str(p) for p in self.sig.params)}), got "
                                    f"{len(values)}")
        out = []
        for dt, v, p in zip(self._convert, values, self.sig.params):
            if dt is None:
                out.append(v)
            elif dt.kind in "iu":
                iv = int(v)
                if iv != v:
                    raise ArgumentTypeError(f"{self.name}: {p} needs an integer, got {v!r}")
                info = np.iinfo(dt)
                if not info.min <= iv <= info.max:
                    raise ArgumentTypeError(f"{self.name}: {p} = {iv} does not fit in {dt}")
                out.append(dt.type(iv))
            else:
                out.append(dt.type(v))
        return tuple(out)


def _fast_spec(dt) -> tuple:
    """(scalar type, min, max) of an integer parameter; (scalar type, None, None) of a float."""
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return dt.type, int(info.min), int(info.max)
    return dt.type, None, None


# -- finding and compiling --------------------------------------------------------------------
_file_of: dict = {}          # "relu_forward" -> "elementwise.cu", from the parsed sources
_raw_modules: dict = {}
_cuda_kernels: dict = {}
_lock = threading.Lock()


def kernel_file(base: str) -> str:
    """The ``.cu`` file defining kernel ``base`` (``"relu_forward"`` -> ``"elementwise.cu"``),
    found from the parsed sources, so there is no second table to keep in step."""
    if not _file_of:
        for (f, name) in all_signatures():
            _file_of.setdefault(name.rsplit("_", 1)[0], f)
    try:
        return _file_of[base]
    except KeyError:
        raise KernelError(f"no kernel {base!r} in {kernels_dir()}; the kernels are: "
                          f"{', '.join(sorted(_file_of))}") from None


def kernel_entry(base: str, dtype) -> tuple:
    """``(file, KernelSig)`` of ``base``'s entry point for ``dtype``."""
    file, name = kernel_file(base), kernel_name(base, dtype)
    sig = signatures(file).get(name)
    if sig is None:
        raise KernelError(f"kernels/{file} has no kernel {name!r}; it defines: "
                          f"{', '.join(signatures(file))}")
    return file, sig


def _compile(file: str, name: str, idx: int):
    import cupy
    path = kernel_path(file)
    key = (str(path), path.stat().st_mtime_ns)
    with _lock:
        mod = _raw_modules.get(key)
        if mod is None:
            mod = _raw_modules[key] = cupy.RawModule(code=kernel_source(file),
                                                     options=KERNEL_OPTIONS)
    try:
        with cupy.cuda.Device(idx):
            return mod.get_function(name)
    except cupy.cuda.compiler.CompileException as e:
        raise KernelCompileError(
            f"kernels/{path.name}: NVRTC failed compiling for kernel {name} on cuda:{idx} "
            f"(options {' '.join(KERNEL_OPTIONS)} plus CuPy's own):\n{e}") from None


def get_kernel(base: str, dtype, device: int | None = None) -> Kernel:
    """Kernel ``base`` for ``dtype`` (``"relu_forward"``, float32 -> ``relu_forward_f32``),
    compiled for CUDA device ``device`` (an ordinal; None: the current device) and cached for
    the life of the process."""
    import cupy
    idx = int(cupy.cuda.runtime.getDevice()) if device is None else int(device)
    key = (base, np.dtype(dtype), idx)
    k = _cuda_kernels.get(key)
    if k is None:
        file, sig = kernel_entry(base, dtype)
        k = _cuda_kernels[key] = Kernel(file, sig, _compile(file, sig.name, idx), False,
                                        cupy.ndarray)
    return k


def clear_cache() -> None:
    """Forget every loaded kernel and parsed signature (tests that edit sources use it)."""
    global _found_dir
    with _lock:
        _file_of.clear()
        _raw_modules.clear()
        _cuda_kernels.clear()
        _sig_cache.clear()
        _found_dir = None

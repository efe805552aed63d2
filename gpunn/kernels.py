"""Loads the CUDA kernels in ``kernels/*.cu`` and hands them to the ops (docs/KERNELS.md).

    from gpunn import kernels
    k = kernels.get_kernel("elementwise.cu", "relu_forward_f32", device=x.device.id)
    grid, block = kernels.launch_config(x.size)
    k(grid, block, k.marshal(x, y, x.size))          # -> (x, y, numpy.int64(x.size))

    k = kernels.get_kernel("relu_forward", x.dtype)  # by base name + dtype (file looked up)

    # the same, with the dtype suffix and device taken from x, and the grid from n:
    kernels.kernel_for(x, "elementwise.cu", "relu_forward").launch(x.size, x, y, x.size)

Each ``.cu`` file is compiled once per device by ``cupy.RawModule`` (NVRTC, options
:data:`KERNEL_OPTIONS`) and cached; a compile failure raises :class:`KernelCompileError`
naming the file, the kernel, the options and NVRTC's log. Entry points are plain
``extern "C"`` functions, one per dtype (``_f32`` / ``_f64``), so no name expressions are
needed and the names in the cubin are the names in the source.

Emulated CUDA (tests only): inside ``with kernels.emulation(order="shuffle"):`` (alias of
``use_emulation``), or with
``GPUNN_EMULATE_CUDA=1`` in the environment, ``get_kernel`` returns the CPU-emulated twin of
each kernel (gpunn.cuda_emu) behind the same call, working on NumPy arrays; ops check
:func:`emulation_active` (alias :func:`emulating`) to send NumPy arrays down their CUDA
bodies. :func:`count_launches` counts every launch by entry name.

Every launch through a :class:`Kernel` checks its arguments against the kernel's parsed
signature (exact NumPy scalar types, array dtypes, C-contiguity): a Python ``int`` where the
kernel takes ``int`` is an error here, not garbage on the GPU. :meth:`Kernel.marshal` does
the conversion from Python numbers.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from .cuda_emu.launcher import ORDERS, ArgumentTypeError, make_checker
from .cuda_emu.signatures import KernelSig, parse_kernels

__all__ = [
    "KERNEL_OPTIONS", "KernelError", "KernelCompileError", "ArgumentTypeError", "Kernel",
    "kernels_dir", "kernel_files", "kernel_path", "kernel_source", "signatures", "all_signatures",
    "get_kernel", "kernel_for", "use_emulation", "emulation_active", "launch_config", "dtype_suffix",
    "kernel_name", "clear_cache", "DEFAULT_BLOCK", "MAX_BLOCKS", "EMULATION_MAX_BLOCKS",
    "kernel_dir", "kernel_file", "emulation", "emulating", "count_launches", "reset_launch_counts",
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
EMULATION_MAX_BLOCKS = 16    # emulated launches use small grids so every loop really strides


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


def kernel_files() -> list:
    """Names of the ``.cu`` files, sorted."""
    return sorted(p.name for p in kernels_dir().glob("*.cu"))


def kernel_path(file: str) -> Path:
    name = file if file.endswith(".cu") else file + ".cu"
    path = kernels_dir() / name
    if not path.is_file():
        raise KernelError(f"no kernel file {name!r} in {kernels_dir()}; there are: "
                          f"{', '.join(kernel_files())}")
    return path


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


def launch_config(n: int, block: int = DEFAULT_BLOCK, max_blocks: int | None = None) -> tuple:
    """``(grid, block)`` tuples for a grid-stride kernel over ``n`` items.

    The grid is ceil(n / block) capped at ``max_blocks`` (default :data:`MAX_BLOCKS`, or
    :data:`EMULATION_MAX_BLOCKS` while emulating) and at least 1.
    """
    if max_blocks is None:
        max_blocks = EMULATION_MAX_BLOCKS if emulation_active() else MAX_BLOCKS
    n = int(n)
    grid = max(1, min(-(-n // block), int(max_blocks)))
    return (grid,), (int(block),)


# -- emulation switch ----------------------------------------------------------------------------
_emu_state = threading.local()


def _emu_stack() -> list:
    st = getattr(_emu_state, "stack", None)
    if st is None:
        st = _emu_state.stack = []
    return st


def _env_emulation() -> tuple | None:
    if os.environ.get("GPUNN_EMULATE_CUDA", "").strip().lower() in ("1", "true", "yes"):
        order = os.environ.get("GPUNN_EMULATE_ORDER", "forward").strip().lower() or "forward"
        return (_order(order), None)
    return None


def _emulation_setting() -> tuple | None:
    st = _emu_stack()
    if st:
        return st[-1]
    return _env_emulation()


def emulation_active() -> bool:
    """True inside :func:`use_emulation` (or with ``GPUNN_EMULATE_CUDA=1``)."""
    return _emulation_setting() is not None


@contextlib.contextmanager
def use_emulation(enabled: bool = True, *, order: str = "forward", sanitize: bool | None = None):
    """Test-only: while active, :func:`get_kernel` returns CPU-emulated kernels.

    ``order``: "forward" | "reverse" | "shuffled" thread order; ``sanitize``: use the
    ASan/UBSan build (default: ``$GPUNN_EMU_SANITIZE``). ``enabled=False`` switches emulation
    off inside an outer block. The setting is per Python thread.
    """
    order = _order(order)
    st = _emu_stack()
    st.append((order, sanitize) if enabled else None)
    try:
        yield
    finally:
        st.pop()


def _order(order: str) -> str:
    order = "shuffled" if order == "shuffle" else order
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (or 'shuffle'), got {order!r}")
    return order


def emulation(order: str = "forward", *, sanitize: bool | None = None):
    """``with kernels.emulation(order="forward" | "reverse" | "shuffle"):`` -- the same as
    :func:`use_emulation` (``"shuffle"`` and ``"shuffled"`` are one order)."""
    return use_emulation(True, order=order, sanitize=sanitize)


def emulating() -> bool:
    """Same as :func:`emulation_active`."""
    return emulation_active()


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

    ``sig`` is the parsed signature, ``emulated`` says whether this is the CPU twin.
    """

    __slots__ = ("file", "name", "sig", "emulated", "_fn", "_check")

    def __init__(self, file: str, sig: KernelSig, fn, emulated: bool, array_type):
        self.file = file
        self.name = sig.name
        self.sig = sig
        self.emulated = emulated
        self._fn = fn
        self._check = make_checker(sig, array_type=array_type)

    def __repr__(self) -> str:
        kind = "emulated" if self.emulated else "cuda"
        return f"<gpunn Kernel {self.file}:{self.sig} ({kind})>"

    def __call__(self, grid, block, args, **kwargs):
        self._check(args)
        _launch_counter[self.name] += 1
        return self._fn(grid, block, args, **kwargs)

    def launch(self, n: int, *values, block: int = DEFAULT_BLOCK):
        """``self(*launch_config(n, block), self.marshal(*values))``: a grid-stride launch
        over ``n`` work items with Python numbers converted to the parameter types."""
        grid, blk = launch_config(n, block)
        return self(grid, blk, self.marshal(*values))

    def marshal(self, *values) -> tuple:
        """Arguments in the kernel's exact types: Python numbers become ``numpy.int32`` /
        ``numpy.int64`` / ``numpy.float32`` / ... per parameter (range-checked); arrays pass
        through unchanged (they are checked at the call)."""
        params = self.sig.params
        if len(values) != len(params):
            raise ArgumentTypeError(f"{self.name} takes {len(params)} arguments "
                                    f"({', '.join(str(p) for p in params)}), got {len(values)}")
        out = []
        for p, v in zip(params, values):
            if p.pointer:
                out.append(v)
                continue
            t = p.dtype.type
            if p.dtype.kind in "iu":
                iv = int(v)
                if iv != v:
                    raise ArgumentTypeError(f"{self.name}: {p} needs an integer, got {v!r}")
                info = np.iinfo(p.dtype)
                if not info.min <= iv <= info.max:
                    raise ArgumentTypeError(f"{self.name}: {p} = {iv} does not fit in "
                                            f"{p.dtype}")
                out.append(t(iv))
            else:
                out.append(t(v))
        return tuple(out)


_by_request: dict = {}
_raw_modules: dict = {}
_raw_kernels: dict = {}
_emu_kernels: dict = {}
_lock = threading.Lock()


def _device_index(device) -> int:
    import cupy
    if device is None:
        return int(cupy.cuda.runtime.getDevice())
    if isinstance(device, (int, np.integer)):
        return int(device)
    if hasattr(device, "id"):                       # cupy.cuda.Device
        return int(device.id)
    from .backend import resolve_device
    dev = resolve_device(device)
    if not dev.is_cuda:
        raise KernelError(f"CUDA kernels need a CUDA device, got {device!r} (use "
                          "gpunn.kernels.use_emulation() to run them on the CPU in tests)")
    return dev.index


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


def kernel_dir() -> Path:
    """Same as :func:`kernels_dir`."""
    return kernels_dir()


def kernel_file(base: str) -> str:
    """The ``.cu`` file defining kernel ``base`` (``"relu_forward"`` -> ``"elementwise.cu"``),
    found from the parsed sources, so there is no second table to keep in step."""
    want = kernel_name(base, np.float32)
    for f in kernel_files():
        if want in signatures(f):
            return f
    names = sorted({n.rsplit("_", 1)[0] for (_, n) in all_signatures()})
    raise KernelError(f"no kernel {base!r} in {kernels_dir()}; the kernels are: "
                      f"{', '.join(names)}")


def get_kernel(file_or_base: str, name_or_dtype, device=None) -> Kernel:
    """A kernel, compiled for ``device`` (a CUDA ordinal, ``cupy.cuda.Device``, gpunn
    ``Device`` or device string; None: the current device). Two spellings:

    - ``get_kernel("relu_forward", numpy.float32)``: base name and dtype (``_f32``/``_f64``),
      the file found by :func:`kernel_file`;
    - ``get_kernel("elementwise.cu", "relu_forward_f32")``: file and exact entry name.

    Under :func:`use_emulation` the CPU twin comes back instead and ``device`` is ignored.
    Kernels are cached per (file, name, device) for the life of the process (emulated ones
    are rebuilt when their source changes; :func:`clear_cache` forgets everything).
    """
    if isinstance(name_or_dtype, str):
        return _get_by_file(file_or_base, name_or_dtype, device)
    return _get_by_file(kernel_file(file_or_base), kernel_name(file_or_base, name_or_dtype),
                        device)


def _get_by_file(file: str, name: str, device=None) -> Kernel:
    emu = _emulation_setting()
    fast = (file, name, emu if emu is not None else device)
    try:
        k = _by_request[fast]
    except (KeyError, TypeError):                  # TypeError: an unhashable device object
        k = None
    if k is not None and (emu is None or _fresh(k)):
        return k
    k = _get_kernel(file, name, device, emu)
    try:
        _by_request[fast] = k
    except TypeError:
        pass
    return k


def kernel_for(x, file: str, base: str) -> Kernel:
    """The ``base`` kernel for array ``x``: its dtype picks ``_f32`` / ``_f64`` and its
    device the compiled module (a NumPy array is accepted while emulating)."""
    name = kernel_name(base, x.dtype)
    if emulation_active():
        return get_kernel(file, name)
    dev = getattr(x, "device", None)
    if not hasattr(dev, "id"):
        raise KernelError(f"{name}: a CUDA kernel needs a CuPy array, got "
                          f"{type(x).__module__}.{type(x).__name__} (outside emulation)")
    return get_kernel(file, name, device=int(dev.id))


def _fresh(k: Kernel) -> bool:
    return k._fn.source_mtime_ns == kernel_path(k.file).stat().st_mtime_ns


def clear_cache() -> None:
    """Forget every loaded kernel and parsed signature (tests that edit sources use it)."""
    global _found_dir
    with _lock:
        _by_request.clear()
        _raw_kernels.clear()
        _raw_modules.clear()
        _emu_kernels.clear()
        _sig_cache.clear()
        _found_dir = None


def _get_kernel(file, name, device, emu) -> Kernel:
    sigs = signatures(file)
    sig = sigs.get(name)
    if sig is None:
        raise KernelError(f"kernels/{kernel_path(file).name} has no kernel {name!r}; it "
                          f"defines: {', '.join(sigs)}")
    if emu is not None:
        order, sanitize = emu
        from . import cuda_emu
        san = cuda_emu.sanitize_default() if sanitize is None else sanitize
        path = kernel_path(file)
        key = (str(path), path.stat().st_mtime_ns, name, order, san)
        k = _emu_kernels.get(key)
        if k is None:
            fn = cuda_emu.load_module(path, sanitize=san).get_function(name, order=order)
            fn.source_mtime_ns = key[1]
            k = _emu_kernels[key] = Kernel(path.name, sig, fn, True, np.ndarray)
        return k
    idx = _device_index(device)
    path = kernel_path(file)
    key = (str(path), path.stat().st_mtime_ns, name, idx)
    k = _raw_kernels.get(key)
    if k is None:
        import cupy
        fn = _compile(file, name, idx)
        k = _raw_kernels[key] = Kernel(path.name, sig, fn, False, cupy.ndarray)
    return k

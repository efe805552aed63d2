"""The emulated twin of a ``cupy.RawKernel``: same ``kernel(grid, block, args)`` call, NumPy
buffers, every (block, thread) run on the CPU by the library :mod:`.build` makes.

Strictness (each check fails loudly, naming the kernel and the argument):
- ``args`` must match the parsed signature exactly: a pointer takes a C-contiguous NumPy array
  of the element dtype (writeable unless ``const``); a scalar takes the exact NumPy scalar type
  (``numpy.int32`` for ``int``, ``numpy.float32`` for ``float``, ...). A Python ``int`` or
  ``float`` is refused: CuPy would pass it as 64 bits and an ``int`` / ``float`` parameter
  would read garbage on a GPU.
- Each array is copied into a scratch buffer with guard bytes on both sides; after the launch
  the guards must be intact (an out-of-bounds write raises :class:`GuardError`), ``const``
  arrays must be unchanged, and only then are written arrays copied back. The same array
  passed twice (an in-place call) shares one scratch buffer; partly overlapping arrays are
  refused, since the copies could not keep their aliasing.
- ``order`` runs the threads forward, in reverse or shuffled: a kernel whose result depends on
  thread order (a race) shows itself as a difference between orders.
- Launch limits of real devices are enforced (1024 threads per block, block.z <= 64,
  grid.y/z <= 65535), and dynamic shared memory is refused.

With ``sanitize=True`` (the ASan/UBSan build) buffers are exact-size ``malloc`` blocks from the
instrumented library instead, so AddressSanitizer reports any out-of-bounds read or write.
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np

from ...kernel_signatures import ArgumentTypeError, KernelSig, check_args

__all__ = ["EmulatedKernel", "EmulationError", "GuardError", "ArgumentTypeError", "ORDERS"]

ORDERS = ("forward", "reverse", "shuffled")
_ORDER_CODE = {"forward": 0, "reverse": 1, "shuffled": 2}
GUARD_BYTES = 4096
_GUARD_VALUE = 0xA7

_SCALAR_CTYPES = {
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
}


class EmulationError(RuntimeError):
    """An emulated launch went wrong (bad launch shape, failed run)."""


class GuardError(EmulationError):
    """A kernel wrote outside an argument array, or into an array it declares const."""


def _dim3(v, what: str, kernel: str) -> tuple:
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3:
        raise EmulationError(f"{kernel}: {what} must be a tuple of 1 to 3 ints (as for "
                             f"cupy.RawKernel), got {v!r}")
    out = []
    for d in v:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 1:
            raise EmulationError(f"{kernel}: {what} entries must be positive ints, got {v!r}")
        out.append(int(d))
    return tuple(out) + (1,) * (3 - len(out))


def _check_launch(grid: tuple, block: tuple, kernel: str) -> None:
    if block[0] * block[1] * block[2] > 1024 or block[0] > 1024 or block[1] > 1024 \
            or block[2] > 64:
        raise EmulationError(f"{kernel}: block {block} exceeds CUDA's limits (1024 threads, "
                             "x/y <= 1024, z <= 64)")
    if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
        raise EmulationError(f"{kernel}: grid {grid} exceeds CUDA's limits")


class _Scratch:
    """One argument's stand-in buffer for the launch (guarded, or exact-size malloc)."""

    def __init__(self, arr: np.ndarray, lib, sanitize: bool):
        self.arr = arr
        self.nbytes = arr.nbytes
        self.src = arr.reshape(-1).view(np.uint8)
        self.lib = lib
        self.sanitize = sanitize
        if sanitize:
            self.ptr = lib.gpunn_emu_alloc(self.nbytes)
            if not self.ptr and self.nbytes:
                raise MemoryError("gpunn_emu_alloc failed")
            ctypes.memmove(self.ptr, self.src.ctypes.data, self.nbytes)
            self.buf = None
        else:
            self.buf = np.full(self.nbytes + 2 * GUARD_BYTES, _GUARD_VALUE, dtype=np.uint8)
            self.buf[GUARD_BYTES:GUARD_BYTES + self.nbytes] = self.src
            self.ptr = self.buf.ctypes.data + GUARD_BYTES

    def data(self) -> np.ndarray:
        if self.sanitize:
            out = np.empty(self.nbytes, dtype=np.uint8)
            ctypes.memmove(out.ctypes.data, self.ptr, self.nbytes)
            return out
        return self.buf[GUARD_BYTES:GUARD_BYTES + self.nbytes]

    def check_guards(self, kernel: str, what: str) -> None:
        if self.sanitize:
            return                              # ASan watches the edges of the malloc block
        for side, part in (("before", self.buf[:GUARD_BYTES]),
                           ("after", self.buf[GUARD_BYTES + self.nbytes:])):
            bad = np.flatnonzero(part != _GUARD_VALUE)
            if bad.size:
                off = (int(bad[0]) - GUARD_BYTES) if side == "before" else int(bad[0])
                raise GuardError(f"{kernel}: out-of-bounds write {side} argument {what} "
                                 f"({self.arr.dtype}, {self.arr.size} elements): byte offset "
                                 f"{off} {'from its start' if side == 'before' else 'past its end'}"
                                 f", {bad.size} guard byte(s) changed")

    def release(self) -> None:
        if self.sanitize and self.ptr:
            self.lib.gpunn_emu_free(self.ptr)
            self.ptr = None


class EmulatedKernel:
    """Callable like ``cupy.RawKernel``: ``kernel(grid, block, args)``, on NumPy arrays.

    ``order``: "forward" | "reverse" | "shuffled" (a fresh permutation each call, from
    ``seed`` and the call count, so runs repeat). Per call, ``order=`` overrides it.
    """

    def __init__(self, lib: ctypes.CDLL, sig: KernelSig, *, order: str = "forward",
                 seed: int = 0, sanitize: bool = False):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.sig = sig
        self.name = sig.name
        self.order = order
        self.seed = seed
        self.sanitize = sanitize
        self._lib = lib
        self._fn = getattr(lib, f"gpunn_emu__{sig.name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_void_p]
        self._calls = itertools.count()
        self.source_mtime_ns = None        # set by gpunn.kernels to notice edited sources

    def __repr__(self) -> str:
        return f"<EmulatedKernel {self.sig} order={self.order}>"

    def __call__(self, grid, block, args, *, shared_mem: int = 0, order: str | None = None):
        name = self.name
        g = _dim3(grid, "grid", name)
        b = _dim3(block, "block", name)
        _check_launch(g, b, name)
        if shared_mem:
            raise EmulationError(f"{name}: dynamic shared memory cannot be emulated")
        check_args(self.sig, args)
        order = order or self.order
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")

        scratch: list = []           # one per distinct buffer
        holders: list = []           # ctypes values the args array points at
        owner: dict = {}             # argument index -> its scratch
        try:
            for k, (p, a) in enumerate(zip(self.sig.params, args)):
                if p.pointer:
                    s = self._scratch_for(a, k, args, owner, scratch)
                    owner[k] = s
                    holders.append(ctypes.c_void_p(s.ptr))
                else:
                    holders.append(_SCALAR_CTYPES[p.dtype](a.item()))
            argv = (ctypes.c_void_p * max(len(holders), 1))(
                *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
            gdim = (ctypes.c_uint * 3)(*g)
            bdim = (ctypes.c_uint * 3)(*b)
            perm = None
            if order == "shuffled":
                total = g[0] * g[1] * g[2] * b[0] * b[1] * b[2]
                rng = np.random.default_rng((self.seed, next(self._calls)))
                perm = rng.permutation(total).astype(np.int64)
            rc = self._fn(gdim, bdim, _ORDER_CODE[order],
                          None if perm is None else perm.ctypes.data, argv)
            if rc != 0:
                raise EmulationError(f"{name}: the emulated launch failed (code {rc})")
            self._check_and_copy_back(owner, scratch)
        finally:
            for s in scratch:
                s.release()

    def _scratch_for(self, a, k, args, owner, scratch):
        p = self.sig.params[k]
        if not p.const and not a.flags.writeable:
            raise ArgumentTypeError(f"{self.name}: argument {k} ({p}) is written by the kernel "
                                    "but the array is read-only")
        for j, s in owner.items():
            b = args[j]
            if a.nbytes and b.nbytes and np.may_share_memory(a, b):   # contiguous: exact
                if (a.ctypes.data, a.nbytes) == (b.ctypes.data, b.nbytes):
                    return s                              # the same buffer: in place
                raise ArgumentTypeError(f"{self.name}: arguments {j} and {k} partly overlap; "
                                        "the emulator only supports identical or disjoint "
                                        "buffers")
        s = _Scratch(a, self._lib, self.sanitize)
        scratch.append(s)
        return s

    def _check_and_copy_back(self, owner, scratch):
        params = self.sig.params
        written = {id(s) for k, s in owner.items() if not params[k].const}
        for k, s in owner.items():
            s.check_guards(self.name, f"{k} ({params[k]})")
        for k, s in owner.items():
            if id(s) not in written and not np.array_equal(s.data(), s.src):
                raise GuardError(f"{self.name}: argument {k} ({params[k]}) is const but its "
                                 "contents changed")
        done = set()
        for k, s in owner.items():
            if id(s) in written and id(s) not in done:
                s.src[...] = s.data()
                done.add(id(s))

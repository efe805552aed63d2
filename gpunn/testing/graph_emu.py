"""CUDA-graph capture and replay for the emulated CUDA backend: the graphed training step's CI.

On a GPU, a stream capture records every kernel the step launches (custom kernels, cuBLAS
GEMMs, CuPy's element-wise and reduction kernels, copies, fills) with the pointers and the
scalar arguments they had, executes nothing, and a replay runs exactly those kernels again on
whatever the memory then holds. This module gives the emulated CUDA the same semantics, so
everything a graph could get wrong shows up on the CPU:

- **Device arrays** are :class:`DeviceArray` (a NumPy subclass; :func:`to_device_arrays`
  moves a model and its optimizer onto the emulated device in place, same memory). Every
  operation on them goes through one place: ufunc calls and reductions
  (``__array_ufunc__``), NumPy functions (``__array_function__``, a fixed table), the methods
  that move data (``__setitem__``, ``fill``, ``copy``, ``astype``, ``argmax``, copying
  ``reshape``...), the CUDA bodies' kernel launches and GEMMs (:class:`GraphBackend` wraps
  them), and the allocations of ``xp`` (:data:`xp`, which ``get_array_module`` gives for
  these arrays). A reduction gives a 0-d device array, never a host scalar, as CuPy does.
- **Capture** (:class:`EmulatedCapture`, ``backend.graph_capture()``) records each of those
  operations as a node: the function, the scalar arguments as they were, and every buffer as
  a *pointer*: a weak reference to the memory's owner plus offset, shape and strides. The
  operations also run (the step's Python needs shapes and values to proceed), but at the end
  of the capture every buffer that existed before it is restored byte for byte and every
  buffer allocated inside it is filled with 0xFF bytes (NaN): so, as on a GPU, the capture
  has changed nothing and a graph that reads memory it never wrote reads garbage.
- Inside a capture it is an error (:class:`CaptureError`) to read a device value on the host
  (``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``, ``tobytes()``: a synchronisation, which
  a real capture refuses), to mix in a host array (a host-to-device copy, refused too), or to
  call a NumPy function the table does not record.
- **Memory**: the capture keeps the buffers allocated inside it (:attr:`EmulatedCapture.pool`,
  as the graph's private memory pool does on a GPU); it does NOT keep the buffers that existed
  before (parameters, optimizer state, static inputs): their owners must. A **replay**
  (:meth:`EmulatedCapture.launch`) first resolves every pointer and raises
  :class:`StaleBufferError` if a buffer was freed (or its memory replaced) since the capture,
  then runs the nodes in order.
"""
from __future__ import annotations

import contextvars
import types
import weakref

import numpy as np

__all__ = ["DeviceArray", "CaptureError", "StaleBufferError", "EmulatedCapture", "GraphBackend",
           "to_device_arrays", "device_array", "xp"]


class CaptureError(RuntimeError):
    """Something a CUDA stream capture would refuse, done inside the emulated capture."""


class StaleBufferError(RuntimeError):
    """A replay found a buffer of the recording freed or reallocated since the capture."""


_recorder = contextvars.ContextVar("gpunn_emulated_capture", default=None)


def _capturing():
    return _recorder.get()


# -- buffers as pointers ------------------------------------------------------------------------
def _root(a):
    """The object that owns ``a``'s memory (the end of its ``.base`` chain)."""
    b = a
    while True:
        nb = getattr(b, "base", None)
        if nb is None:
            return b
        b = nb


def _ptr(a) -> int:
    return a.__array_interface__["data"][0]


def _bytes(root):
    """The bytes of an array that owns its memory, whatever its memory order."""
    iface = {"data": (_ptr(root), False), "shape": (root.nbytes,), "typestr": "|u1",
             "version": 3}
    return np.asarray(types.SimpleNamespace(__array_interface__=iface, root=root))


class _View:
    """An array's memory as a graph node holds it: like a device pointer, it does not keep the
    memory alive. ``resolve()`` rebuilds the array, or raises StaleBufferError."""

    __slots__ = ("ref", "root_ptr", "offset", "shape", "strides", "dtype", "what")

    def __init__(self, a, what: str):
        root = _root(a)
        if not isinstance(root, np.ndarray):
            raise CaptureError(f"{what}: a device array must own its memory (got a view of "
                               f"{type(root).__name__})")
        self.ref = weakref.ref(root)
        self.root_ptr = _ptr(root)
        self.offset = _ptr(a) - self.root_ptr
        self.shape, self.strides, self.dtype = a.shape, a.strides, a.dtype
        self.what = what

    def resolve(self, node: str):
        root = self.ref()
        if root is None or _ptr(root) != self.root_ptr:
            raise StaleBufferError(
                f"replay of {node}: its {self.what} ({self.dtype}, shape {self.shape}) was freed "
                "or reallocated after the capture; the graph's owner must keep every buffer "
                "the captured step uses alive and in place (a GPU graph would read or write "
                "memory now given to someone else)")
        iface = {"data": (self.root_ptr + self.offset, False), "shape": self.shape,
                 "strides": self.strides, "typestr": self.dtype.str, "version": 3}
        holder = types.SimpleNamespace(__array_interface__=iface, root=root)  # keeps it alive
        arr = np.asarray(holder)
        return arr if arr.dtype == self.dtype else arr.view(self.dtype)


class _Node:
    """One recorded operation: ``fn(*args, **kwargs)`` with _View arguments resolved."""

    __slots__ = ("label", "fn", "args", "kwargs")

    def __init__(self, label, fn, args, kwargs):
        self.label, self.fn, self.args, self.kwargs = label, fn, args, kwargs

    def run(self):
        res = lambda v: _resolve(v, self.label)            # noqa: E731
        self.fn(*[res(a) for a in self.args], **{k: res(v) for k, v in self.kwargs.items()})


def _resolve(v, label):
    if isinstance(v, _View):
        return v.resolve(label)
    if isinstance(v, tuple):
        return tuple(_resolve(x, label) for x in v)
    if isinstance(v, list):
        return [_resolve(x, label) for x in v]
    return v


class _Recorder:
    """The state of one emulated capture."""

    def __init__(self):
        self.nodes: list = []
        self.pool: list = []            # roots allocated inside: the graph's own memory
        self._pool_ids: set = set()
        self._journal: dict = {}        # id(root) -> (root, saved bytes) of pre-existing buffers

    def allocated(self, root) -> None:
        if id(root) not in self._pool_ids:
            self._pool_ids.add(id(root))
            self.pool.append(root)

    def before_write(self, a) -> None:
        root = _root(a)
        if id(root) in self._pool_ids or id(root) in self._journal:
            return
        self._journal[id(root)] = (root, np.array(root, copy=True))

    def view(self, a, what: str, label: str):
        """A device array as a node argument (host arrays are refused)."""
        if not isinstance(a, DeviceArray):
            raise CaptureError(f"{label} inside the captured step takes {what} as a host array "
                               f"({type(a).__name__}, shape {getattr(a, 'shape', '?')}): on a "
                               "GPU that is a host-to-device copy, which capture refuses")
        return _View(a, what)

    def add(self, label, fn, args=(), kwargs=None) -> None:
        self.nodes.append(_Node(label, fn, tuple(args), dict(kwargs or {})))

    def finish(self) -> None:
        """Undo the capture's effects, as if nothing had executed."""
        for root, saved in self._journal.values():
            np.copyto(root, saved)
        for root in self.pool:
            _bytes(root).fill(0xFF)
        self._journal.clear()


def _is_dev(x):
    return isinstance(x, DeviceArray)


def _base(x):
    """A device array as a plain ndarray view (the same memory); anything else unchanged."""
    return x.view(np.ndarray) if isinstance(x, DeviceArray) else x


def _deep_base(v):
    if isinstance(v, DeviceArray):
        return v.view(np.ndarray)
    if isinstance(v, (tuple, list)):
        return type(v)(_deep_base(x) for x in v)
    return v


def _new(shape, dtype, rec=None) -> "DeviceArray":
    """A fresh device array (in the capture's pool when capturing)."""
    raw = np.empty(shape, dtype=dtype)
    if rec is not None:
        rec.allocated(raw)
    return raw.view(DeviceArray)


def _node_args(rec, values, label):
    """Arguments for a node: device arrays as _Views, host arrays refused, the rest as is."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, DeviceArray):
            out.append(_View(v, f"argument {i}"))
        elif isinstance(v, np.ndarray):
            rec.view(v, f"argument {i}", label)        # raises
        elif isinstance(v, (tuple, list)):
            out.append(type(v)(_node_args(rec, v, label)))
        else:
            out.append(v)
    return out


def _copy_into(src, _out):
    np.copyto(_out, src, casting="unsafe")


# -- the device array ---------------------------------------------------------------------------
_HOST_READS = ("__int__", "__float__", "__bool__", "__index__", "__complex__", "item", "tolist",
               "tobytes", "tofile")
_NOT_RECORDED = ("dot", "take", "put", "sort", "argsort", "nonzero", "searchsorted", "choose",
                 "compress", "trace", "cumsum", "cumprod", "round", "partition", "repeat",
                 "resize", "byteswap", "setfield", "itemset")


class DeviceArray(np.ndarray):
    """A NumPy array standing for memory on the emulated GPU (module docstring)."""

    __gpunn_xp__ = None            # set below: get_array_module gives this namespace

    # ufuncs: a + b, np.exp(x), x.sum(), x.max(axis=0), y += b, ...
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        rec = _capturing()
        label = f"np.{ufunc.__name__}.{method}" if method != "__call__" else f"np.{ufunc.__name__}"
        if rec is not None and method not in ("__call__", "reduce", "accumulate"):
            raise CaptureError(f"{label} is not recorded by the emulated capture")
        base_in = tuple(_base(x) for x in inputs)
        kw = {k: _deep_base(v) for k, v in kwargs.items()}
        if out is None:
            res = getattr(ufunc, method)(*base_in, **kw)
            results = res if isinstance(res, tuple) else (res,)
            outs = []
            for r in results:
                r = np.asarray(r)
                o = _new(r.shape, r.dtype, rec)
                np.copyto(o.view(np.ndarray), r)
                outs.append(o)
            outs = tuple(outs)
        else:
            outs = out if isinstance(out, tuple) else (out,)
            if rec is not None:
                for o in outs:
                    rec.view(o, "out", label)
                    rec.before_write(o)
            getattr(ufunc, method)(*base_in, out=tuple(_base(o) for o in outs), **kw)
        if rec is not None:
            args = _node_args(rec, inputs, label)
            kwn = {k: (_node_args(rec, [v], label)[0]) for k, v in kwargs.items()}
            kwn["out"] = tuple(_View(o, "output") for o in outs)
            rec.add(label, getattr(ufunc, method), args, kwn)
        return outs[0] if len(outs) == 1 else outs

    # NumPy functions on device arrays
    def __array_function__(self, func, types_, args, kwargs):
        rec = _capturing()
        name = getattr(func, "__name__", str(func))
        if func in _ALLOC_LIKE:
            return _ALLOC_LIKE[func](*args, **kwargs)
        if func is np.copyto:
            return _copyto(*args, **kwargs)
        if func in _THROUGH_METHODS:
            # NumPy's implementation calls the array's methods / ufuncs: recorded there
            return func._implementation(*args, **kwargs)
        if func in _PURE:
            res = np.asarray(func._implementation(*_deep_base(list(args)),
                                                  **{k: _deep_base(v) for k, v in kwargs.items()}))
            o = _new(res.shape, res.dtype, rec)
            np.copyto(o.view(np.ndarray), res)
            if rec is not None:
                label = f"np.{name}"
                a = _node_args(rec, list(args), label)
                k = {kk: _node_args(rec, [v], label)[0] for kk, v in kwargs.items()}
                rec.add(label, lambda *aa, _out, _f=func, **kk: np.copyto(_out, _f(*aa, **kk)),
                        a, {**k, "_out": _View(o, "output")})
            return o
        if rec is not None:
            raise CaptureError(f"np.{name} on a device array is not recorded by the emulated "
                               "capture (give the op a CUDA body, or use ufuncs)")
        res = func._implementation(*_deep_base(list(args)),
                                   **{k: _deep_base(v) for k, v in kwargs.items()})
        return _wrap(res)

    # data movement -----------------------------------------------------------------------
    def __getitem__(self, key):
        if _basic_key(key):
            r = np.ndarray.__getitem__(self, key)
            if not isinstance(r, np.ndarray):          # a single element: a 0-d device view
                r = np.ndarray.__getitem__(self, (key if isinstance(key, tuple) else (key,))
                                           + (Ellipsis,))
            return r
        rec = _capturing()
        bkey = _deep_base(key)
        res = np.ndarray.__getitem__(self.view(np.ndarray), bkey)
        res = np.asarray(res)
        o = _new(res.shape, res.dtype, rec)
        np.copyto(o.view(np.ndarray), res)
        if rec is not None:
            label = "x[advanced index]"
            k = _node_args(rec, [key], label)[0]
            rec.add(label, lambda src, kk, _out: np.copyto(_out, src[kk]),
                    [_View(self, "source"), k], {"_out": _View(o, "output")})
        return o

    def __setitem__(self, key, value):
        rec = _capturing()
        if rec is not None:
            label = "x[...] = v"
            rec.before_write(self)
            k = _node_args(rec, [key], label)[0]
            v = _node_args(rec, [value], label)[0]
            rec.add(label, lambda dst, kk, vv: dst.__setitem__(kk, vv),
                    [_View(self, "destination"), k, v])
        np.ndarray.__setitem__(self.view(np.ndarray), _deep_base(key), _deep_base(value))

    def fill(self, value):
        rec = _capturing()
        if rec is not None:
            if isinstance(value, np.ndarray):
                rec.view(value, "value", "x.fill")
            rec.before_write(self)
            rec.add("x.fill", lambda dst, v: dst.fill(v), [_View(self, "destination"), value])
        self.view(np.ndarray).fill(value)

    def copy(self, order="C"):
        return _copied(self, np.array(self.view(np.ndarray), order=order, copy=True),
                       "x.copy", lambda src, _out: np.copyto(_out, src))

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        dtype = np.dtype(dtype)
        if not copy and dtype == self.dtype:
            return self
        res = self.view(np.ndarray).astype(dtype, order=order, casting=casting)
        return _copied(self, res, f"x.astype({dtype})", _copy_into)

    def argmax(self, axis=None, out=None, **kw):
        return _arg_reduce(self, np.argmax, axis, out, kw)

    def argmin(self, axis=None, out=None, **kw):
        return _arg_reduce(self, np.argmin, axis, out, kw)

    def reshape(self, *shape, order="C"):
        res = self.view(np.ndarray).reshape(*shape, order=order)
        if np.may_share_memory(res, self.view(np.ndarray)):
            return res.view(DeviceArray)
        shp = res.shape
        return _copied(self, res, "x.reshape (a copy)",
                       lambda src, _out: np.copyto(_out, src.reshape(shp, order=order)))

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def flatten(self, order="C"):
        return self.copy(order=order).reshape(-1)


def _host_read(name):
    plain = getattr(np.ndarray, name)

    def method(self, *a, **k):
        if _capturing() is not None:
            raise CaptureError(f"host synchronisation inside the captured step: "
                               f"{name}() reads a device value on the host")
        return plain(self.view(np.ndarray), *a, **k)
    method.__name__ = name
    return method


def _not_recorded(name):
    plain = getattr(np.ndarray, name)

    def method(self, *a, **k):
        if _capturing() is not None:
            raise CaptureError(f"x.{name}() on a device array is not recorded by the emulated "
                               "capture")
        return _wrap(plain(self.view(np.ndarray), *_deep_base(list(a)), **k))
    method.__name__ = name
    return method


for _n in _HOST_READS:
    if hasattr(np.ndarray, _n):
        setattr(DeviceArray, _n, _host_read(_n))
for _n in _NOT_RECORDED:
    if hasattr(np.ndarray, _n):
        setattr(DeviceArray, _n, _not_recorded(_n))


def _basic_key(key) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    for k in items:
        if k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer)) \
                and not isinstance(k, (bool, np.bool_)):
            continue
        return False
    return True


def _wrap(res):
    if isinstance(res, np.ndarray) and not isinstance(res, DeviceArray):
        return res.view(DeviceArray)
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    return res


def _copied(src, res, label, replay):
    """``res`` (computed from ``src`` now) as a fresh device array, and its node."""
    rec = _capturing()
    o = _new(res.shape, res.dtype, rec)
    np.copyto(o.view(np.ndarray), res)
    if rec is not None:
        rec.add(label, replay, [_View(src, "source")], {"_out": _View(o, "output")})
    return o


def _arg_reduce(a, fn, axis, out, kw):
    rec = _capturing()
    res = np.asarray(fn(a.view(np.ndarray), axis=axis, **kw))
    o = out if out is not None else _new(res.shape, res.dtype, rec)
    if rec is not None:
        rec.before_write(o)
        rec.add(f"np.{fn.__name__}", lambda src, _out: fn(src, axis=axis, out=_out, **kw),
                [_View(a, "source")], {"_out": rec.view(o, "out", f"np.{fn.__name__}")})
    np.copyto(_base(o), res)
    return o


def _copyto(dst, src, casting="same_kind", where=True):
    rec = _capturing()
    if rec is not None:
        label = "np.copyto"
        rec.view(dst, "destination", label)
        rec.before_write(dst)
        a = _node_args(rec, [src, where], label)
        rec.add(label, lambda d, s, w: np.copyto(d, s, casting=casting, where=w),
                [_View(dst, "destination"), a[0], a[1]])
    np.copyto(_base(dst), _deep_base(src), casting=casting, where=_deep_base(where))


# -- the namespace (``xp``) of device arrays ---------------------------------------------------
def empty(shape, dtype=float, order="C"):
    if order != "C":
        raise ValueError(f"the emulated device allocates C order only, got order={order!r}")
    return _new(shape, dtype, _capturing())      # the one place device memory is allocated


def empty_like(a, dtype=None, order="K", subok=True, shape=None):
    return empty(a.shape if shape is None else shape, dtype=a.dtype if dtype is None else dtype)


def full(shape, fill_value, dtype=None):
    o = empty(shape, dtype=np.asarray(fill_value).dtype if dtype is None else dtype)
    o.fill(fill_value)                  # a recorded fill when capturing (cudaMemset)
    return o


def zeros(shape, dtype=float, order="C"):
    return full(shape, 0, dtype)


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype)


def zeros_like(a, dtype=None, order="K", subok=True, shape=None):
    return full(a.shape if shape is None else shape, 0, a.dtype if dtype is None else dtype)


def ones_like(a, dtype=None, order="K", subok=True, shape=None):
    return full(a.shape if shape is None else shape, 1, a.dtype if dtype is None else dtype)


def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    return full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype)


def asarray(a, dtype=None, order=None):
    """A device array: device arrays as they are (or converted, a recorded copy); host data
    copied to the device (refused inside a capture, as CuPy refuses it)."""
    if isinstance(a, DeviceArray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    if _capturing() is not None:
        raise CaptureError(f"a host-to-device copy inside the captured step "
                           f"({type(a).__name__}); CuPy refuses it during capture")
    return device_array(np.asarray(a, dtype=dtype))


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else a.copy()


def device_array(a) -> DeviceArray:
    """A copy of host array ``a`` on the emulated device (not inside a capture)."""
    if _capturing() is not None:
        raise CaptureError("a host-to-device copy inside the captured step")
    a = np.asarray(a)
    o = empty(a.shape, a.dtype)
    np.copyto(o.view(np.ndarray), a)
    return o


_ALLOC_LIKE = {np.empty_like: empty_like, np.zeros_like: zeros_like,
               np.ones_like: ones_like, np.full_like: full_like}
_THROUGH_METHODS = {np.sum, np.mean, np.amax, np.amin, np.max, np.min, np.argmax, np.argmin,
                    np.prod, np.all, np.any, np.clip, np.transpose, np.reshape, np.ravel,
                    np.squeeze, np.expand_dims, np.swapaxes, np.moveaxis, np.atleast_1d,
                    np.atleast_2d, np.var, np.std}
_PURE = {np.where, np.take, np.concatenate, np.stack, np.take_along_axis}


class _Namespace(types.ModuleType):
    """NumPy, with the allocation and conversion functions giving device arrays."""

    def __getattr__(self, name):
        return getattr(np, name)


xp = _Namespace("gpunn.testing.graph_emu.xp")
for _f in (empty, empty_like, zeros, zeros_like, ones, ones_like, full, full_like, asarray,
           ascontiguousarray):
    setattr(xp, _f.__name__, _f)
xp.array = lambda a, dtype=None, copy=True: (asarray(a, dtype).copy() if copy else asarray(a, dtype))
DeviceArray.__gpunn_xp__ = xp


# -- kernels and GEMMs --------------------------------------------------------------------------
class _RecordingKernel:
    """A CUDA body's kernel on the graph backend: launches recorded while capturing."""

    def __init__(self, k):
        self.k = k
        self.name, self.sig, self.file = k.name, k.sig, k.file
        self.emulated, self.max_blocks = True, k.max_blocks
        self._writes = [i for i, p in enumerate(k.sig.params) if p.pointer and not p.const]

    def marshal(self, *values):
        return self.k.marshal(*values)

    def launch(self, n, *values, block=None):
        from ..kernels import DEFAULT_BLOCK, launch_config
        grid, blk = launch_config(n, block or DEFAULT_BLOCK, self.k.max_blocks)
        return self(grid, blk, self.k.marshal(*values))

    def __call__(self, grid, block, args, **kw):
        rec = _capturing()
        if rec is not None:
            label = f"kernel {self.name}"
            views = []
            for i, (p, a) in enumerate(zip(self.sig.params, args)):
                views.append(rec.view(a, f"argument {i} ({p})", label) if p.pointer else a)
            for i in self._writes:
                rec.before_write(args[i])
            k = self.k
            rec.add(label, lambda *a, _g=grid, _b=block: k(_g, _b, a, **kw), views)
        return self.k(grid, block, tuple(_base(a) for a in args), **kw)

    def __repr__(self):
        return f"<recording {self.k!r}>"


class _RecordingBlas:
    """The emulated cuBLAS, with GEMMs recorded while capturing."""

    capturable = True

    def __init__(self, blas):
        self.blas = blas

    def gemm(self, op_a, op_b, m, n, k, A, lda, B, ldb, C, ldc):
        rec = _capturing()
        if rec is not None:
            label = f"cuBLAS gemm (m={m}, n={n}, k={k})"
            va, vb, vc = (rec.view(x, w, label) for x, w in ((A, "A"), (B, "B"), (C, "C")))
            rec.before_write(C)
            g = self.blas.gemm
            rec.add(label, lambda a, b, c: g(op_a, op_b, m, n, k, a, lda, b, ldb, c, ldc),
                    [va, vb, vc])
        self.blas.gemm(op_a, op_b, m, n, k, _base(A), lda, _base(B), ldb, _base(C), ldc)


class EmulatedCapture:
    """``with backend.graph_capture() as cap: ...`` then ``cap.launch()`` per replay; the same
    interface as gpunn.graphs.CudaCapture."""

    def __init__(self, backend):
        self.backend = backend
        self.nodes = None
        self.pool = None
        self._rec = None
        self._token = None
        self.replays = 0

    def __enter__(self):
        if _capturing() is not None:
            raise CaptureError("a capture is already in progress")
        self._rec = _Recorder()
        self._token = _recorder.set(self._rec)
        return self

    def __exit__(self, exc_type, exc, tb):
        _recorder.reset(self._token)
        self._rec.finish()
        if exc_type is None:
            self.nodes, self.pool = self._rec.nodes, self._rec.pool
        self._rec = None
        return False

    def prefill(self, arr, value) -> None:
        """Write ``value`` now without a node (the capture's run needs a sane value; a replay
        gets its value from StepValues.refresh)."""
        arr.view(np.ndarray).fill(value)

    def launch(self) -> None:
        if self.nodes is None:
            raise CaptureError("launch() before a successful capture")
        if _capturing() is not None:
            raise CaptureError("a graph cannot be launched inside a capture")
        for node in self.nodes:
            node.run()
        self.replays += 1

    def synchronize(self) -> None:
        """Nothing to wait for: emulated work is done when launch() returns."""

    def labels(self) -> list:
        return [n.label for n in self.nodes]


class GraphBackend:
    """Mixin for the emulated CUDA backend with graphs: device arrays, recorded kernels and
    GEMMs, ``graph_capture()`` (gpunn.testing.emulated_cuda(graphs=True))."""

    graphs = True

    def _graph_init(self):
        from .cublas_emu import EmulatedCublas
        self.xp = xp
        self.blas = _RecordingBlas(EmulatedCublas())
        self._rk: dict = {}

    def kernel(self, base, dtype):
        key = (base, np.dtype(dtype))
        k = self._rk.get(key)
        if k is None:
            k = self._rk[key] = _RecordingKernel(super().kernel(base, dtype))
        return k

    def graph_capture(self):
        return EmulatedCapture(self)


# -- moving a model onto the emulated device -------------------------------------------------
def to_device_arrays(model, optimizer=None):
    """View every array of ``model`` (its flat parameter buffers or loose parameters, its
    layers' buffers) and of ``optimizer`` (its state) as device arrays, in place and sharing
    memory; returns ``model``."""
    from ..parameter import FlatBuffer  # noqa: F401  (the buffers re-bind their views)
    params = model.parameters()
    flats = {id(p.flat): p.flat for p in params if p.flat is not None}
    for flat in flats.values():
        flat.values = flat.values.view(DeviceArray)
        flat.grads = flat.grads.view(DeviceArray)
        flat._bind_views()
    for p in params:
        if p.flat is None:
            p.bind(p.data.view(DeviceArray), p.grad.view(DeviceArray))
    for layer in model.walk():
        for k in list(layer.buffers):
            layer.buffers[k] = layer.buffers[k].view(DeviceArray)
    if optimizer is not None:
        optimizer.state = {b: [a.view(DeviceArray) for a in arrs]
                           for b, arrs in optimizer.state.items()}
    return model

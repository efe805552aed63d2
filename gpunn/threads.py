"""CPU threads: how many the NumPy bodies use, and the pool they run batch chunks on.

NumPy runs one op on one core, but it releases the GIL inside ufunc loops, copies and BLAS
calls, so the CPU bodies of the heavy ops (convolution, pooling, batch-norm, element-wise
work) split the batch into chunks and run the chunks on a small thread pool. This module owns
that pool and the thread count.

The count is, in order: :func:`set_num_threads`, the ``GPUNN_THREADS`` environment variable,
or the cores this process may run on (``os.sched_getaffinity``: a container's or taskset's
limit, not the machine's core count). ``gpunn train --threads`` / ``gpunn bench --threads``
set it.

BLAS: NumPy's BLAS (OpenBLAS in the wheels) gets the same count for the GEMMs the CPU
bodies call whole, capped at one thread per ~8M multiply-adds of the product
(:func:`gemm_threads`: a skinny GEMM gains nothing from 16 threads but their start-up and
their waiting for each other), and one thread inside a parallel region, where gpunn's pool already runs
one chunk per core (a multithreaded BLAS called from several threads at once oversubscribes
the cores, or serialises behind OpenBLAS's lock). The library is found with threadpoolctl,
which sets its thread count through the library's own call (well under a microsecond).

gpunn's chunking never makes results depend on the count: an op cuts the batch into chunks by
shape alone (a fixed number of samples per chunk) and combines the chunks' partial sums in
chunk order, so one thread and sixteen compute the same bits; threads only decide who computes
which chunk. (A GEMM handed to the BLAS whole, as Linear's are, is the BLAS's business:
OpenBLAS rounds some shapes differently with another thread count of its own.)
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["default_threads", "get_num_threads", "set_num_threads", "parallel_chunks",
           "chunk_bounds", "blas_threads", "gemm_threads", "blas_spin", "numpy_hugepages",
           "malloc_setting", "parallel_here", "samples_per_chunk"]


# -- OpenBLAS's idle spin: set before NumPy loads it --------------------------------------------
# After a multithreaded GEMM, OpenBLAS's workers spin for 2**OPENBLAS_THREAD_TIMEOUT cycles
# before they sleep (its default, 28: about 0.1 s). The pool regions that follow a GEMM then
# share their cores with a spinning thread: cnn-bn's max-pool, batch-norm and conv backward
# run after its Linear's weight-gradient GEMM. 2**22 cycles (about 1.5 ms at 2.7 GHz) keeps
# the workers awake between the GEMMs of one layer and of one small step, and lets them sleep
# during the chunked ops. Whole steps at two threads, batch 100, on the 2-vCPU Xeon
# (docs/benchmarks/README.md): cnn-bn 52.5 -> 44.5 ms, mlp1000 and model4 unchanged; a
# shorter spin (2**20 and below) makes mlp1000 slower (its GEMMs wait for woken workers).
# OpenBLAS reads the variable once, when it loads, so gpunn loads NumPy with it set (and
# takes it out of the environment again: no child process inherits it unasked); a value the
# user set is theirs, and a NumPy imported before gpunn keeps the library's default.
BLAS_SPIN_EXPONENT = 22
_SPIN_VAR = "OPENBLAS_THREAD_TIMEOUT"

# -- NumPy's transparent huge pages: also read once, when NumPy loads --------------------------
# NumPy advises the kernel to back every array of 4 MiB or more with transparent huge pages
# (madvise MADV_HUGEPAGE). Where the kernel's THP "defrag" setting is "madvise" (Debian's and
# Ubuntu's default), a page fault in such an array compacts memory on the spot whenever no
# free 2 MiB page is at hand, and every fresh large array (a data set converted to float32,
# each batch's activations) can stall on it. On the 2-vCPU Xeon (docs/benchmarks/README.md):
# Fashion-MNIST's uint8 -> float32 conversion 2.5 s, 2.45 s of it in the kernel, against
# 82 ms without the advice; whole one-epoch runs, 3-4 pairs: model4 13.4 -> 9.6 s (0.72x),
# cnn-bn 42.4 -> 38.1 s (0.90x), their user time unchanged. gpunn loads NumPy with
# NUMPY_MADVISE_HUGEPAGE=0; a value the user set is theirs.
_HUGEPAGE_VAR = "NUMPY_MADVISE_HUGEPAGE"
_NUMPY_ENV = {_SPIN_VAR: str(BLAS_SPIN_EXPONENT), _HUGEPAGE_VAR: "0"}


def _load_numpy() -> dict:
    """Import NumPy with gpunn's values of the variables it and its OpenBLAS read once, at
    load (taken out of the environment again after: no child process inherits them unasked).
    Per variable: "set", "late" (NumPy was imported first) or the user's value in words."""
    import sys
    how = {}
    for var in _NUMPY_ENV:
        if os.environ.get(var, "") != "":
            how[var] = f"{var}={os.environ[var]} (the user's)"
        else:
            how[var] = "late" if "numpy" in sys.modules else "set"
    ours = [var for var, h in how.items() if h == "set"]
    if not ours:
        return how
    for var in ours:
        os.environ[var] = _NUMPY_ENV[var]
    try:
        import numpy  # noqa: F401  (NumPy and OpenBLAS read the variables now)
    finally:
        for var in ours:
            del os.environ[var]
    return how


_numpy_how = _load_numpy()
_spin_how = _numpy_how[_SPIN_VAR]


# -- glibc's malloc: a step's large arrays reused, not mapped and faulted in afresh ------------
# glibc serves an allocation above its mmap threshold (128 KiB, rising with the blocks freed
# to at most 32 MiB) with a fresh mapping, unmapped again on free, and hands a free heap top
# above its trim threshold back to the kernel. Each step's large activations were then
# mapped, zero-filled a page fault per 4 KiB, and unmapped: on the 2-vCPU Xeon vgg-cifar's
# step (batch 128, 33.5 MB activations) took 47,657 page faults and 89-95 ms of system time,
# resnet-small's (batch 100) 7,563 faults; with both thresholds at 1 GiB, 0-2 and 27-61, the
# steps 0.84-0.99x as long, peak RSS +5% (docs/benchmarks/README.md). gpunn sets them with mallopt at
# import: arrays up to 1 GiB come from the heap and return to it for the next step, and the
# process keeps its high-water mark (as PyTorch's caching allocators do). The user's
# MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / GLIBC_TUNABLES win, GPUNN_MALLOC=default
# leaves glibc's own behaviour; another C library is left alone.
MALLOC_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3             # glibc's mallopt parameters


def _tune_malloc() -> str:
    """Set glibc's thresholds (see above); what was done, in words (for reports)."""
    if os.environ.get("GPUNN_MALLOC", "") == "default":
        return "the C library's default (GPUNN_MALLOC=default)"
    user = [f"{v}={os.environ[v]}" for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
            if os.environ.get(v, "") != ""]
    if "malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "") or \
            "malloc.trim_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return f"the user's {', '.join(user)}"
    import ctypes
    import sys
    glibc = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            glibc = hasattr(libc, "gnu_get_libc_version")      # musl has a mallopt stub
            mallopt = libc.mallopt
        except (OSError, AttributeError, TypeError):
            glibc = False
    if not glibc:
        return "the C library's default (not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD) and \
            mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD):
        return f"arrays up to {MALLOC_THRESHOLD >> 30} GiB kept for reuse (gpunn's mallopt)"
    return "glibc's default (mallopt refused gpunn's thresholds)"


_malloc_how = _tune_malloc()


def malloc_setting() -> str:
    """How the C library's malloc keeps freed large arrays, in words (for reports)."""
    return _malloc_how


def numpy_hugepages() -> str:
    """Whether NumPy advises huge pages for large arrays, and why, in words (for reports)."""
    import numpy as np
    try:
        on = bool(np._core.multiarray._get_madvise_hugepage())
    except AttributeError:                 # an older NumPy without the switch
        return "NumPy's default"
    how = _numpy_how[_HUGEPAGE_VAR]
    why = {"set": f"gpunn's {_HUGEPAGE_VAR}=0",
           "late": f"NumPy was imported before gpunn; set {_HUGEPAGE_VAR}=0 before it for "
                   f"gpunn's"}.get(how, how)
    return f"{'on' if on else 'off'} ({why})"


def blas_spin() -> str:
    """How long NumPy's OpenBLAS lets idle workers spin, in words (for reports)."""
    if _spin_how == "late":
        return (f"OpenBLAS's default (NumPy was imported before gpunn; set {_SPIN_VAR}="
                f"{BLAS_SPIN_EXPONENT} before it for gpunn's)")
    if _spin_how == "set":
        return f"2**{BLAS_SPIN_EXPONENT} cycles (gpunn's {_SPIN_VAR})"
    return _spin_how                       # the user's own value, as it was at load

_lock = threading.Lock()
_count: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_local = threading.local()          # set inside pool workers: never nest parallel regions


def _parse(value, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return n


def default_threads() -> int:
    """``GPUNN_THREADS`` if set, else the number of cores this process may use."""
    env = os.environ.get("GPUNN_THREADS")
    if env not in (None, ""):
        return _parse(env, "GPUNN_THREADS")
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):      # not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """The thread count the CPU bodies use now."""
    global _count
    if _count is None:
        _count = default_threads()
        _set_blas_threads(_count)
    return _count


def set_num_threads(n: int | None) -> int:
    """Use ``n`` threads from now on (None: back to the default), in gpunn's pool and in
    NumPy's BLAS; returns the count."""
    global _count
    with _lock:
        _count = default_threads() if n is None else _parse(n, "threads")
    _set_blas_threads(_count)
    return _count


# -- NumPy's BLAS -------------------------------------------------------------------------------
_blas = None               # the threadpoolctl controllers of NumPy's BLAS, found once
_blas_count = None         # what we last set (None: never: the library's own default)


def _numpy_blas():
    global _blas
    if _blas is None:
        try:
            import numpy as np
            from threadpoolctl import ThreadpoolController
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            # NumPy's own copy: torch and others bundle their BLAS, which must keep theirs
            here = os.path.dirname(os.path.dirname(np.__file__))
            own = [lib for lib in libs if os.path.abspath(lib.filepath).startswith(
                os.path.join(here, "numpy"))]
            _blas = own or libs
        except Exception:                # no threadpoolctl, or an unknown BLAS: leave it be
            _blas = []
    return _blas


def _set_blas_threads(n: int) -> None:
    global _blas_count
    if n != _blas_count:
        for lib in _numpy_blas():
            lib.set_num_threads(n)
        _blas_count = n


def blas_threads() -> int | None:
    """NumPy's BLAS thread count as gpunn last set it (None: untouched)."""
    return _blas_count


MACS_PER_THREAD = 1 << 23    # ~8M multiply-adds per BLAS thread: below that a thread costs more
_regions = 0                 # parallel regions running (BLAS is at one thread inside them)


@contextlib.contextmanager
def gemm_threads(macs: int):
    """NumPy's BLAS at one thread per MACS_PER_THREAD of a product of ``macs`` multiply-adds
    (at most the gpunn count) for the ``with`` block; inside a parallel region it stays at one.
    The block gets the count (``with gemm_threads(macs) as threads``): a product that runs on
    one thread may go to MKL instead (gpunn/ops/mkl.py).
    """
    n = get_num_threads()
    want = max(1, min(n, int(macs) // MACS_PER_THREAD))
    if _regions:                     # a pool worker's products run inside a region
        yield 1
        return
    if want == n or not _numpy_blas():
        yield want
        return
    _set_blas_threads(want)
    try:
        yield want
    finally:
        _set_blas_threads(n)


def _get_pool(n: int) -> ThreadPoolExecutor:
    """The pool of ``n`` workers (the calling thread is the n+1-th)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="gpunn",
                                       initializer=_mark_worker)
            _pool_size = n
        return _pool


def _mark_worker():
    _local.worker = True


def _after_fork_in_child():
    """A forked child (gpunn train --procs) has none of the parent's pool threads: forget the
    pool (the next region starts a new one) and the lock a worker may have held."""
    global _pool, _pool_size, _lock, _regions
    _pool, _pool_size, _regions = None, 0, 0
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def chunk_bounds(n: int, chunk: int) -> list:
    """[(lo, hi), ...] covering range(n) in pieces of ``chunk`` (the last may be shorter)."""
    chunk = max(1, int(chunk))
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


# A parallel region pays ~0.1-0.2 ms before a second thread works at full speed (a halted
# vCPU woken, cold caches; measured on the 2-core CI machine: two halves of an np.sin over
# 200K floats took 0.11 ms against 0.09 ms for one call, over 5M 1.56 against 2.94). So an op
# tells parallel_chunks its work, in element-operations (a convolution's multiply-adds, a few
# per element for batch-norm, one per element for pooling and the optimizer), and one under
# PARALLEL_MIN_WORK runs its chunks inline. The threshold was 12M while OpenBLAS's workers
# spun ~0.1 s after every GEMM on the very cores the pool wanted (see BLAS_SPIN_EXPONENT
# above); with that spin cut, whole steps at two threads, batch 100, 2-vCPU Xeon, 7
# interleaved rounds: model4 8.59 ms at 12M against 7.95-8.07 at 0-2M, cnn-bn 42.7 against
# 39.5-39.6, resnet-small 100.7 against 94.6-95.6; 4M already lost part of it.
# docs/benchmarks/README.md has the measurements.
PARALLEL_MIN_WORK = 1_000_000


def parallel_here(work: int | None = None) -> bool:
    """Whether a region of ``work`` element-operations would run on more than one thread
    here (the test :func:`parallel_chunks` makes, less the chunk count): a body whose best
    piece size depends on it (the optimizer update, :func:`samples_per_chunk`) asks first."""
    return not (get_num_threads() <= 1 or getattr(_local, "worker", False)
                or (work is not None and work < PARALLEL_MIN_WORK))


def samples_per_chunk(n: int, per_sample: int, one_thread_bytes: int, pool_bytes: int,
                      work: int | None = None, at_most: int | None = None) -> int:
    """Samples per chunk for a pass over n samples of ``per_sample`` bytes whose results do
    not depend on the chunks: ``one_thread_bytes`` (sized for the cache) on one thread; on
    the pool ``pool_bytes``, but at least two chunks per thread (a chunk of a sample or two is
    too short a region to share). ``at_most``: a cap either way."""
    per_sample = max(1, int(per_sample))
    if parallel_here(work):
        k = min(pool_bytes // per_sample, -(-n // (2 * get_num_threads())))
    else:
        k = one_thread_bytes // per_sample
    if at_most is not None:
        k = min(k, at_most)
    return max(1, k)


def parallel_chunks(fn, n: int, chunk: int, work: int | None = None) -> list:
    """Call ``fn(lo, hi)`` for every chunk of range(n); return the results in chunk order.
    ``work``: the region's size in element-operations; below PARALLEL_MIN_WORK the chunks
    run inline on the calling thread (None: no estimate, always eligible).

    With more than one thread and more than one chunk, the calling thread and up to
    ``threads - 1`` pool workers take chunks from a shared queue until it is empty (so a
    thread that lost its core to another process simply takes fewer chunks); inline
    otherwise, and always inline inside a pool worker (no nested parallel regions). An
    exception in any chunk is raised here after every chunk has finished.
    """
    bounds = chunk_bounds(n, chunk)
    threads = min(get_num_threads(), len(bounds))
    if threads <= 1 or not parallel_here(work):
        return [fn(lo, hi) for lo, hi in bounds]
    results = [None] * len(bounds)
    errors = []
    next_index = iter(range(len(bounds)))
    take = threading.Lock()

    def runner():
        while True:
            with take:
                i = next(next_index, None)
            if i is None:
                return
            try:
                results[i] = fn(*bounds[i])
            except BaseException as e:       # finish the other chunks: they write into
                errors.append(e)             # arrays the caller owns

    global _regions
    pool = _get_pool(get_num_threads() - 1)
    _set_blas_threads(1)                   # the pool is the parallelism: one BLAS thread each
    _regions += 1
    try:
        futures = [pool.submit(runner) for _ in range(threads - 1)]
        runner()
        for f in futures:
            f.result()
    finally:
        _regions -= 1
        _set_blas_threads(get_num_threads())
    if errors:
        raise errors[0]
    return results

"""Data-parallel ranks on one machine without MPI: forked processes and shared memory.

    gpunn train --procs 2 ...        # two processes on this machine, batch split between them

NumPy runs each small op on one core and holds the GIL between ops, so threads cannot make a
model4-sized step use two cores (docs/benchmarks/README.md measured it); processes can. This
is the same data parallelism as ``mpiexec -n N`` (gpunn/distributed/step.py: one all-reduce of
the flat gradient buffer per step, batch-norm per rank or SyncBatchNorm), with the
communicator replaced by one that needs nothing installed:

- :func:`launch` forks ``size - 1`` children before the model is built; each child continues
  from the same point as rank r, exactly like an MPI rank, and leaves Python normally
  (without the parent's exit handlers);
- the ranks share one anonymous ``mmap``: a barrier (each rank counts its arrivals in its own
  word), a slot of SLOT_BYTES per rank for the collectives (each rank copies its piece into
  its slot, and every rank sums the slots *in rank order*, so every replica gets the same
  bits; arrays larger than a slot go piece by piece), and an arena where
  :class:`SharedTraining` keeps the model's parameters and optimizer state once and every
  rank's gradients (the step reduces segments of them and splits the update between ranks);
- every wait has the deadline of the MPI communicator (``timeout``, GPUNN_DIST_TIMEOUT); the
  parent watches its children, and a child that dies breaks the barrier, so the others stop
  at once with a message naming the rank and how it ended; a child dies with its parent
  (PR_SET_PDEATHSIG).

CPU only: CUDA does not survive a fork, and GPUs go through NCCL under mpiexec.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import signal
import sys
import threading
import time

import numpy as np

from ..finite import last_nonfinite
from .comm import DEFAULT_TIMEOUT, Communicator, _check_buffer, _check_op, _say, _what

__all__ = ["ShmComm", "launch", "SLOT_BYTES", "MAX_PROCS"]

ARENA_MAX = 16 << 30
REDUCE_PIECE = 1 << 15      # elements per piece of the shared reduction (in L2 with its inputs)
SLOT_BYTES = 8 << 20         # per rank: an all-reduce moves at most this much per round
MAX_PROCS = 256
_HEADER = 64                 # per slot: the length of a pickled object (int64)
_no_change = contextlib.nullcontext()
_REDUCE = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum}


class _Shared:
    """What the ranks share; made before the fork, so every child inherits the same memory.

    The barrier: each rank counts the barriers it has reached in its own int64 of shared
    memory and waits until every rank's count has caught up (a rank only ever writes its own
    count, so no atomic read-modify-write is needed). x86 keeps stores in order and loads in
    order, so a rank that sees another's count also sees the slot it filled before; elsewhere
    the barrier is multiprocessing's (semaphores: full fences, ~0.3 ms instead of ~5 us).
    ``failed`` holds why the job stops; a rank waiting at the barrier sees it at once.
    """

    def __init__(self, size: int, slot_bytes: int):
        import multiprocessing as mp
        import platform
        ctx = mp.get_context("fork")
        self.size, self.slot_bytes = size, slot_bytes
        self.stride = _HEADER + slot_bytes
        self.ctl = 16 * size + 512               # counts, each rank's weight, then `failed`
        self.mem = mmap.mmap(-1, self.ctl + size * self.stride)   # MAP_SHARED | ANONYMOUS
        self.counts = np.frombuffer(self.mem, dtype=np.int64, count=size)
        self.weights = np.frombuffer(self.mem, dtype=np.float64, count=size, offset=8 * size)
        self.spin = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        # more ranks than cores: a spinning rank holds the core the one it waits for needs
        self.spins = 2000 if size <= cores else 20
        self.mp_barrier = None if self.spin else ctx.Barrier(size)
        self.arena, self.arena_used = _arena(), 0

    def take(self, nbytes: int):
        """The next ``nbytes`` of the shared arena (64-byte aligned), or None when it is
        full. Every rank takes the same sizes in the same order, so the offsets agree."""
        if self.arena is None:
            return None
        start = -(-self.arena_used // 64) * 64
        if start + nbytes > len(self.arena):
            return None
        self.arena_used = start + nbytes
        return memoryview(self.arena)[start:start + nbytes]

    @property
    def failed(self) -> str:
        raw = self.mem[16 * self.size:16 * self.size + 512]
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def fail(self, why: str) -> None:
        if not self.failed:
            b = why.encode()[:511]
            self.mem[16 * self.size:16 * self.size + len(b)] = b
        if self.mp_barrier is not None:
            try:
                self.mp_barrier.abort()
            except Exception:                              # noqa: BLE001 (already broken)
                pass

    def wait(self, rank: int, timeout: float) -> bool:
        """Wait for every rank; False when the job failed or the deadline passed."""
        if self.mp_barrier is not None:
            try:
                self.mp_barrier.wait(timeout or None)
                return True
            except threading.BrokenBarrierError:
                return False
        gen = int(self.counts[rank]) + 1
        self.counts[rank] = gen
        counts = self.counts
        spins = 0
        t0 = None
        nap = 50e-6
        while counts.min() < gen:
            spins += 1
            if spins < self.spins:
                continue
            if self.failed:
                return False
            now = time.monotonic()
            if t0 is None:
                t0 = now
            waited = now - t0
            if timeout and waited > timeout:
                return False
            if waited < 0.01:
                os.sched_yield()              # a rank that waits must not slow one working
            else:
                time.sleep(nap)
                nap = min(nap * 2, 0.001)
        return True

    def slot(self, rank: int, nbytes: int, dtype) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.mem, dtype=dt, count=nbytes // dt.itemsize,
                             offset=self.ctl + rank * self.stride + _HEADER)

    def header(self, rank: int) -> np.ndarray:
        return np.frombuffer(self.mem, dtype=np.int64, count=1,
                             offset=self.ctl + rank * self.stride)


def _arena():
    """Shared memory for the model (parameters, optimizer state, every rank's gradients),
    mapped before the fork: a quarter of the RAM, at most ARENA_MAX (an anonymous mapping
    only takes memory for the pages touched), or GPUNN_SHM_ARENA_BYTES (0: none); None if the
    system refuses (then each rank keeps its own model and the step all-reduces the gradients
    through the slots, as over MPI)."""
    from .comm import number_from_env
    size = number_from_env("GPUNN_SHM_ARENA_BYTES", int, "a number of bytes", 0, "0: none")
    if size is not None:
        return mmap.mmap(-1, size) if size > 0 else None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 4 << 30
    size = min(ram // 4, ARENA_MAX)
    while size >= 64 << 20:
        try:
            return mmap.mmap(-1, size)
        except (OSError, ValueError):
            size //= 4
    return None


class ShmComm(Communicator):
    """Rank ``rank`` of ``size`` processes forked by :func:`launch` on this machine."""

    backend = "shm"

    def __init__(self, shared: _Shared, rank: int, *, timeout: float = DEFAULT_TIMEOUT,
                 children=None):
        self._sh = shared
        self.rank, self.size = rank, shared.size
        self.local_rank, self.local_size = rank, shared.size
        self.timeout = float(timeout)
        self._children = children or {}           # rank -> pid (rank 0 only)
        self._finished = False

    # -- waiting ------------------------------------------------------------------------------
    def _wait(self, what: str) -> None:
        t0 = time.monotonic()
        if not self._sh.wait(self.rank, self.timeout):
            waited = time.monotonic() - t0
            why = self._sh.failed
            if why:
                self._stop(f"gpunn.distributed: rank {self.rank} of {self.size}: {what} "
                           f"cannot complete: {why}. Stopping.")
            self._stop(self._timeout_message(what, waited))

    def _stop(self, message: str, code: int = 1):
        """End this rank (and, from rank 0, the children) after saying why."""
        _say(message)
        self._break(message)
        self._end(code)

    def _break(self, why: str) -> None:
        self._sh.fail(why)

    def _end(self, code: int):
        for pid in self._children.values():           # rank 0's; none elsewhere
            _kill(pid)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def abort(self, message: str, code: int = 1):
        self._stop(message, code)

    # -- arrays -------------------------------------------------------------------------------
    def _pieces(self, x):
        flat = x.reshape(-1)
        step = max(1, self._sh.slot_bytes // x.itemsize)
        for lo in range(0, flat.size, step):
            yield flat[lo:lo + step]

    def allreduce(self, x, op: str = "sum", *, name: str = ""):
        _check_buffer(x, "allreduce")
        _check_op(op, x)
        _cpu_only(x, "allreduce")
        what = _what("allreduce", x, name)
        ufunc = _REDUCE[op]
        for piece in self._pieces(x):
            self._sh.slot(self.rank, piece.nbytes, piece.dtype)[:] = piece
            self._wait(what)
            # every rank sums the slots in the same order: the replicas get the same bits
            slot = lambda r: self._sh.slot(r, piece.nbytes, piece.dtype)     # noqa: E731
            if self.size > 1:
                ufunc(slot(0), slot(1), out=piece)
                for r in range(2, self.size):
                    ufunc(piece, slot(r), out=piece)
            self._wait(what)                      # the slots may be reused after this
        if op == "mean":
            x /= x.dtype.type(self.size)
        return x

    def broadcast(self, x, root: int = 0, *, name: str = ""):
        _check_buffer(x, "broadcast")
        self._check_root(root)
        _cpu_only(x, "broadcast")
        what = _what(f"broadcast from rank {root}", x, name)
        for piece in self._pieces(x):
            if self.rank == root:
                self._sh.slot(root, piece.nbytes, piece.dtype)[:] = piece
            self._wait(what)
            if self.rank != root:
                piece[:] = self._sh.slot(root, piece.nbytes, piece.dtype)
            self._wait(what)
        return x

    # -- objects ------------------------------------------------------------------------------
    def _bytes_from(self, root: int, payload: bytes | None, what: str) -> bytes:
        """``payload`` of rank ``root`` on every rank, through root's slot, piece by piece."""
        head = self._sh.header(root)
        if self.rank == root:
            head[0] = len(payload)
        self._wait(what)
        n = int(head[0])
        out = bytearray(n) if self.rank != root else None
        step = self._sh.slot_bytes
        self._wait(what)                          # everyone read the length
        for lo in range(0, n, step):
            k = min(step, n - lo)
            slot = self._sh.slot(root, k, np.uint8)
            if self.rank == root:
                slot[:] = np.frombuffer(payload, dtype=np.uint8, count=k, offset=lo)
            self._wait(what)
            if self.rank != root:
                out[lo:lo + k] = slot.tobytes()
            self._wait(what)
        return payload if self.rank == root else bytes(out)

    def broadcast_object(self, obj, root: int = 0):
        self._check_root(root)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) \
            if self.rank == root else None
        data = self._bytes_from(root, payload, f"broadcast of an object from rank {root}")
        return obj if self.rank == root else pickle.loads(data)

    def allgather_object(self, obj) -> list:
        mine = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        out = []
        for r in range(self.size):
            data = self._bytes_from(r, mine if r == self.rank else None,
                                    f"allgather of objects (rank {r}'s)")
            out.append(obj if r == self.rank else pickle.loads(data))
        return out

    def barrier(self) -> None:
        self._wait("barrier")

    # -- the model in shared memory (DistributedTrainStep) ------------------------------------
    def shared_training(self, model, optimizer, rows: int = 0):
        """Move ``model``'s parameters and ``optimizer``'s state into memory every rank
        shares (one copy) and each rank's gradients where the others can read them; returns
        the :class:`SharedTraining` the step uses, or None when that is not possible here
        (loose parameters, or the arena is full). Collective: every rank calls it with the
        same model and optimizer, after they were made equal (broadcast_model/_optimizer).
        ``rows``: this rank's batch in the first step (the stages of large Linear layers'
        weight gradients hold the largest: gpunn/distributed/weight_shards.py)."""
        ok = _shareable(optimizer) and self._sh.arena is not None
        got = self.allgather_object((bool(ok), int(rows)))
        if not all(g[0] for g in got):
            return None
        st = SharedTraining(self, optimizer, model, cap=max(g[1] for g in got))
        agreed = self.allgather_object(st.layout if st.ready else None)
        if any(a != agreed[0] or a is None for a in agreed):
            return None
        st.bind()
        return st

    # -- the end ------------------------------------------------------------------------------
    def finish(self, code: int = 0):
        """A child: leave the process (never returns). Rank 0: wait for every child and
        return the first non-zero exit status (0 when all ended well)."""
        self._finished = True
        if self.rank != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        worst = 0
        for r, pid in sorted(self._children.items()):
            status = _reap(pid)
            if status is not None and status != 0 and not worst:
                worst = status
        return worst


def _split_threads(size: int) -> None:
    """The job's thread count (gpunn.threads: --threads, GPUNN_THREADS or the usable cores)
    shared between its processes, at least one each."""
    from ..threads import get_num_threads, set_num_threads
    set_num_threads(max(1, get_num_threads() // size))


def _at_exit(comm: ShmComm):
    """Rank 0 leaves after its children: the job's exit status is the first failure's."""
    worst = comm.finish()
    if worst and worst != 130:                  # 130: Ctrl-C, which rank 0 reported
        _say(f"gpunn.distributed: a rank of {comm.size} ended with status {worst}")
        sys.stdout.flush()
        sys.stderr.flush()
    if worst:
        os._exit(worst)


def _cpu_only(x, what):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: processes started with --procs share host memory only; got "
                        f"a {type(x).__module__}.{type(x).__name__} (for GPUs use mpiexec, "
                        f"which moves GPU arrays through NCCL)")


def _kill(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


_reaped: dict = {}               # pid -> exit status, filled by the watcher threads


def _reap(pid):
    w = _watchers.get(pid)
    if w is not None:
        w.join()
    return _reaped.get(pid)


def _status(st) -> int:
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st)


def _describe(st) -> str:
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        try:
            nm = signal.Signals(sig).name
        except ValueError:
            nm = str(sig)
        return f"was killed by {nm}"
    return f"exited with status {os.WEXITSTATUS(st)}"


def _die_with_parent():
    """Linux: SIGTERM this child when its parent dies (no orphan waiting at a barrier)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)        # PR_SET_PDEATHSIG
    except Exception:                                       # noqa: BLE001 (not Linux)
        pass


_watchers: dict = {}             # pid -> its watcher thread


def _watch(comm: ShmComm, rank: int, pid: int):
    """Rank 0's thread per child: a child that ends early (a crash, a kill) breaks the
    barrier, so the other ranks stop with a message instead of waiting for the deadline.
    (waitpid on this one pid: other children of the process, e.g. a subprocess.run, are
    left to whoever started them.)"""
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return
    _reaped[pid] = _status(st)
    if _status(st) != 0 or not comm._finished:
        comm._break(f"rank {rank} (pid {pid}) {_describe(st)}")


def launch(size: int, *, timeout: float | None = None,
           slot_bytes: int = SLOT_BYTES) -> ShmComm:
    """Fork ``size - 1`` children; return this process's communicator (rank 0 in the
    parent, rank r in child r). Call it before building models and loading data (each rank
    does both); every rank then runs the same code. The children must end through
    ``comm.finish()``; rank 0's ``finish()`` waits for them."""
    from .comm import timeout_from_env
    size = int(size)
    if not 1 <= size <= MAX_PROCS:
        raise ValueError(f"procs must be between 1 and {MAX_PROCS}, got {size}")
    t = timeout_from_env() if timeout is None else float(timeout)
    if t < 0:
        raise ValueError(f"timeout must be >= 0 seconds (0: none), got {t}")
    if size > 1 and not sys.platform.startswith("linux"):
        # macOS's Accelerate and Windows have no safe fork of a process holding NumPy's BLAS
        raise RuntimeError(f"--procs / GPUNN_PROCS forks processes, which gpunn supports on "
                           f"Linux only (this is {sys.platform}); use mpiexec -n {size} instead")
    shared = _Shared(size, int(slot_bytes))
    sys.stdout.flush()
    sys.stderr.flush()
    pids = {}
    parent = os.getpid()
    for r in range(1, size):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            if os.getppid() != parent:             # the parent died before prctl took hold
                os._exit(1)
            # the parent's exit handlers are the parent's (its temporary folders, its run
            # lock): a child leaves Python normally, keeping its exit status, without them
            import atexit
            atexit._clear()
            os.environ.pop("GPUNN_PROCS", None)     # a program the child starts is not a rank
            _split_threads(size)
            return ShmComm(shared, r, timeout=t)
        pids[r] = pid
    os.environ.pop("GPUNN_PROCS", None)
    _split_threads(size)
    comm = ShmComm(shared, 0, timeout=t, children=pids)
    import atexit
    atexit.register(_at_exit, comm)
    for r, pid in pids.items():
        _watchers[pid] = threading.Thread(target=_watch, args=(comm, r, pid), daemon=True,
                                          name=f"gpunn-shm-watch-{r}")
        _watchers[pid].start()
    return comm


def _shareable(optimizer) -> bool:
    from ..parameter import FlatBuffer
    return all(isinstance(slot, FlatBuffer) and isinstance(slot.values, np.ndarray)
               for slot in optimizer.slots)


class SharedTraining:
    """One model trained by every rank out of shared memory (made by
    :meth:`ShmComm.shared_training`).

    Per flat buffer: the parameter values and the optimizer's state once, for all ranks;
    gradients once per rank. A step is then (DistributedTrainStep):

      backward  each rank writes its own gradient buffer
      barrier   every gradient is complete
      reduce    rank r sums segment r of every rank's gradients (weighted n_k / N), in rank
                order, piece by piece, into its own buffer; only rank r touches segment r
      barrier   every segment is reduced
      update    rank r updates segment r of the shared parameters and state
      barrier   the parameters are complete for the next forward

    The update needs only the averaged segment of its own rank, so that is all a rank's
    buffer holds of the average: elsewhere it keeps its own samples' gradient. When a hook
    between the backward pass and the update reads whole gradients (``spread``), rank r
    also writes each reduced piece into every rank's buffer, and every rank then holds the
    whole averaged gradient, as after an MPI all-reduce (for cnn-bn that copy is 9.8 MB per
    rank and step). The one such hook gpunn installs, the non-finite check, asks the
    reduction instead (``find_nonfinite``): each rank looks for NaN and inf in the pieces
    it has just summed, while they are in cache, and every rank reads every rank's answer
    after the barrier (:attr:`nonfinite`).

    Against an all-reduce through the slots this reads and writes each gradient about half as
    often and splits the optimizer's pass over the parameters between the ranks. A large
    Linear's weight gradient skips the sum altogether: its rows in segment r are computed by
    rank r at reduce time from every rank's staged (x, w dout), already summed
    (gpunn/distributed/weight_shards.py; the segments are cut on its row boundaries).
    """

    def __init__(self, comm: ShmComm, optimizer, model=None, cap: int = 0):
        self.comm, self.optimizer = comm, optimizer
        self.slots = list(optimizer.slots)
        n, rank = comm.size, comm.rank
        self.shards = self._shards(model, cap)
        self.layout = [(slot.size, str(slot.dtype), sorted(optimizer.state))
                       for slot in self.slots] + [(sh.j, sh.w0, sh.rows, sh.cols, sh.cap)
                                                  for sh in self.shards]
        self.values, self.grads, self.mine, self.state, self.segments = [], [], [], [], []
        self.scratch = []                              # per buffer: one reduction piece
        self.nonfinite = None                          # per buffer, after a reduce(find_nonfinite)
        # per rank and buffer: the last index of its segment whose average is NaN or inf (-1)
        self.found = self._take(n * len(self.slots), np.int64)
        self.ready = self.found is not None
        if self.ready:
            self.found = self.found.reshape(n, len(self.slots))
        for j, slot in enumerate(self.slots):
            dt, total = slot.dtype, slot.size
            v = self._take(total, dt)
            g = self._take(total * n, dt)
            st = {b: self._take(total, dt) for b in sorted(optimizer.state)}
            if v is None or g is None or any(a is None for a in st.values()):
                self.ready = False
                return
            self.values.append(v)
            self.grads.append(g.reshape(n, total))
            self.mine.append(self.grads[-1][rank])         # one view, kept: intact() checks it
            self.state.append(st)
            # segment r of n, on 16-element boundaries (whole cache lines per rank), and on
            # row boundaries inside a sharded weight (each of its rows is one rank's)
            cuts = [min(total, -(-(total * r // n) // 16) * 16) for r in range(n + 1)]
            cuts[-1] = total
            for sh in self.shards:
                if sh.j == j:
                    cuts = [sh.snap(c) for c in cuts]
            self.segments.append([slice(cuts[r], cuts[r + 1]) for r in range(n)])
            own = self.segments[-1][rank]
            self.scratch.append(np.empty(min(REDUCE_PIECE, own.stop - own.start), dtype=dt))
        self.rank = rank
        self.what = (f"shared reduction of {sum(s.size for s in self.slots)} "
                     f"{'/'.join(sorted({str(s.dtype) for s in self.slots}))} values")

    def _shards(self, model, cap: int) -> list:
        """A :class:`WeightShard` for each large Linear (with its stage in shared memory), or
        none when the first step had no rows or the arena has no room for the stages."""
        from .weight_shards import WeightShard, find_shards
        n, rank = self.comm.size, self.comm.rank
        shards = []
        for layer, j, w0 in (find_shards(model, self.slots) if cap > 0 else []):
            dt = self.slots[j].dtype
            X = self._take(n * cap * layer.in_features, dt)
            D = self._take(n * cap * layer.out_features, dt)
            flags = self._take(n, np.int64)
            if X is None or D is None or flags is None:
                break
            shards.append(WeightShard(layer, j, w0, X.reshape(n * cap, -1),
                                      D.reshape(n * cap, -1), flags, rank, n, cap))
        return shards

    def begin(self, weight: float) -> None:
        """A step starts on this rank with weight n_r / N: its large Linears may stage."""
        self.nonfinite = None         # an earlier step's finding never passes as this one's
        for sh in self.shards:
            sh.begin(weight)

    def _take(self, count, dtype):
        mv = self.comm._sh.take(count * np.dtype(dtype).itemsize)
        return None if mv is None else np.frombuffer(mv, dtype=dtype, count=count)

    def bind(self):
        """Rank 0's values and state into the shared arrays, then every rank's buffers
        re-pointed at them (the model's Parameters and the optimizer follow the views)."""
        opt, r = self.optimizer, self.rank
        for j, slot in enumerate(self.slots):
            if r == 0:
                self.values[j][:] = slot.values
                for b, a in self.state[j].items():
                    a[:] = opt.state[b][j]
            self.mine[j][:] = slot.grads
        self.comm.barrier()
        for j, slot in enumerate(self.slots):
            slot.values, slot.grads = self.values[j], self.mine[j]
            slot._bind_views()
            for b, a in self.state[j].items():
                opt.state[b][j] = a
        for sh in self.shards:
            sh.layer.defer_weight_grad = sh.defer
        self.comm.barrier()

    def intact(self) -> bool:
        """Still bound: nobody replaced a buffer (model.to(), a new optimizer state)."""
        opt = self.optimizer
        return all(slot.values is self.values[j] and slot.grads is self.mine[j]
                   and all(opt.state[b][j] is a for b, a in self.state[j].items())
                   for j, slot in enumerate(self.slots)) and opt.slots == self.slots

    def reduce(self, weight: float, name: str, *, spread: bool = True,
               find_nonfinite: bool = False) -> None:
        """The gradient average sum_k w_k g_k: rank r reduces segment r into its own buffer,
        and with ``spread`` into every rank's buffer too. ``find_nonfinite``: afterwards
        :attr:`nonfinite` holds, per buffer, the last index whose average is NaN or inf
        (-1: none), the same on every rank.

        Each rank's weight w_k (n_k / N) goes through shared memory and is applied inside
        the reduction, piece by piece in cache, instead of as a pass of its own over every
        rank's whole buffer. Equal weights (every batch but a short last one): the sum in
        rank order, then one multiply: w (g_0 + g_1) is exactly w g_0 + w g_1 for w = 1/2,
        and within rounding of it otherwise."""
        comm, r, n, sh = self.comm, self.rank, self.comm.size, self.comm._sh
        name = f"{name} ({self.what})"
        sh.weights[r] = weight
        for shard in self.shards:
            shard.before_barrier()
        comm._wait(name)
        ws = [float(w) for w in sh.weights]
        equal = all(w == ws[0] for w in ws)
        for shard in self.shards:
            shard.staged = [bool(f) for f in shard.flags]   # stable until the next barrier
        with np.errstate(over="ignore", invalid="ignore") if find_nonfinite else _no_change:
            self._reduce_segments(r, n, ws, equal, spread, find_nonfinite)
        comm._wait(name)                          # every segment is reduced (and spread)
        # read here, between this barrier and the update's: no rank writes `found` again
        # before every rank has passed the update's barrier
        self.nonfinite = [int(v) for v in self.found.max(axis=0)] if find_nonfinite else None

    def _reduce_segments(self, r, n, ws, equal, spread, find_nonfinite) -> None:
        """Rank r's segment of every buffer, summed (see :meth:`reduce`)."""
        for j, (g, segs, scratch) in enumerate(zip(self.grads, self.segments, self.scratch)):
            s = segs[r]
            t = g.dtype.type
            last = -1
            for lo, hi, shard in self._ranges(j, s):
                if shard is not None:             # summed by its GEMM over every rank's rows
                    shard.reduce(g, lo, hi, ws)
                    if find_nonfinite:
                        last = max(last, last_nonfinite(g[r, lo:hi], lo))
                    if spread:
                        for k in range(n):
                            if k != r:
                                g[k, lo:hi] = g[r, lo:hi]
                    continue
                last = max(last, self._reduce_range(g, lo, hi, r, n, ws, equal, scratch, t,
                                                    spread, find_nonfinite))
            self.found[r, j] = last

    def _ranges(self, j: int, s: slice) -> list:
        """This rank's segment ``s`` of buffer j as (lo, hi, shard or None) pieces: the rows
        of sharded weights, and what lies between them."""
        out, pos = [], s.start
        for sh in sorted((sh for sh in self.shards if sh.j == j), key=lambda sh: sh.w0):
            lo, hi = max(sh.span[0], s.start), min(sh.span[1], s.stop)
            if lo >= hi:
                continue
            if pos < lo:
                out.append((pos, lo, None))
            out.append((lo, hi, sh))
            pos = hi
        if pos < s.stop:
            out.append((pos, s.stop, None))
        return out

    def _reduce_range(self, g, start, stop, r, n, ws, equal, scratch, t, spread=True,
                      find_nonfinite=False) -> int:
        """The weighted sum of every rank's g[:, start:stop] into this rank's buffer (and
        with ``spread`` into every rank's), piece by piece in cache; returns the last index
        of a non-finite sum when asked to find one, else -1."""
        last = -1
        for lo in range(start, stop, REDUCE_PIECE):
            hi = min(lo + REDUCE_PIECE, stop)
            own = g[r, lo:hi]
            # with more than two ranks, or weights applied term by term, the sum goes
            # into scratch: this rank's own term must not be overwritten before it is read
            acc = own if (equal and n == 2) else scratch[:hi - lo]
            if equal:
                np.add(g[0, lo:hi], g[1, lo:hi], out=acc)
                for k in range(2, n):
                    np.add(acc, g[k, lo:hi], out=acc)
                if ws[0] != 1.0:
                    acc *= t(ws[0])
            else:
                tmp = np.empty_like(acc)
                np.multiply(g[0, lo:hi], t(ws[0]), out=acc)
                for k in range(1, n):
                    acc += np.multiply(g[k, lo:hi], t(ws[k]), out=tmp)
            if acc is not own:
                own[...] = acc
            if find_nonfinite:
                last = max(last, last_nonfinite(acc, lo))
            if spread:
                for k in range(n):            # every rank's copy of segment r, now
                    if k != r:
                        g[k, lo:hi] = acc
        return last

    def update(self, name: str) -> None:
        """The optimizer's step on this rank's segment of every buffer, then a barrier."""
        opt, r = self.optimizer, self.rank
        opt.t += 1
        for j in range(len(self.slots)):
            s = self.segments[j][r]
            opt._update(self.values[j][s], self.mine[j][s],
                        {b: a[s] for b, a in self.state[j].items()})
        self.comm._wait(name)

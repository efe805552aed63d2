"""A run directory trained by several ranks (``mpiexec -n N gpunn train ...``).

Rank 0 is the run: it checks the directory, takes the lock, writes config.json, the
checkpoints, the logs, the weights and the report, exactly as a single process does
(gpunn/runs.py). The other ranks load the data and build the model meanwhile, wait for rank 0's
checks (a refused directory or a bad resume stops every rank with rank 0's message), then
train with it and take part in the final sharded evaluation; they write nothing.

The run's *global* batch is recorded: ``config.json`` keeps ``batch_size`` (per rank, as
given) and ``ranks`` (how many the run started with), and every later resume trains at
``batch_size x ranks`` samples per step whatever the number of ranks it resumes on, so the
optimisation is the same run (see docs/DISTRIBUTED.md).
"""
from __future__ import annotations

import pickle

__all__ = ["PeerError", "agree", "run_on_ranks"]


class PeerError(RuntimeError):
    """Another rank (rank 0) failed with ``error``; that rank reports it."""

    def __init__(self, error: BaseException, rank: int = 0):
        super().__init__(f"rank {rank} stopped: {type(error).__name__}: {error}")
        self.error, self.rank = error, rank


def _sendable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:                               # noqa: BLE001 (any pickling failure)
        return RuntimeError(f"{type(e).__name__}: {e}")


def agree(comm, fn):
    """Run ``fn()`` on rank 0 and give its result to every rank; if it raises, rank 0 raises
    the exception and the other ranks :class:`PeerError` (so every rank stops, once)."""
    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except Exception as e:                      # noqa: BLE001 (re-raised below)
            error = e
    result, sent = comm.broadcast_object((result, None if error is None else _sendable(error)))
    if comm.rank == 0 and error is not None:
        raise error
    if sent is not None:
        raise PeerError(sent)
    return result


def run_on_ranks(comm, lead, train, cfg, out, *, resume: bool, overwrite: bool, log):
    """gpunn.runs.run_training on every rank of ``comm``: ``lead`` (the single-process flow)
    on rank 0, told to call ``before_train`` just before training; ``train`` on the others
    once rank 0 got there. Returns the run's summary on every rank."""
    from ..runs import build_all
    from ..train.logs import run_logs
    from ..train import RunLock
    from . import device_for_rank

    cfg, out = comm.broadcast_object((cfg, out))     # rank 0's settings and directory
    if not resume:
        cfg.ranks = comm.size                        # recorded: the run's global batch
    dev = device_for_rank(cfg.device, comm)
    if comm.rank == 0:
        released = []

        def before_train():
            comm.broadcast_object(None)
            released.append(True)
        try:
            return lead(cfg, out, resume=resume, overwrite=overwrite, log=log, device=dev,
                        before_train=before_train)
        except BaseException as e:
            if not released:                         # the others still wait for the go
                comm.broadcast_object(_sendable(e))
            raise
    built = build_all(cfg, dev)
    err = comm.broadcast_object(None)                # rank 0's checks passed, or why not
    if err is not None:
        raise PeerError(err)
    logs = run_logs(out, tensorboard=cfg.tensorboard)
    return train(cfg, out, built, dev, resume, log, RunLock(out), logs)

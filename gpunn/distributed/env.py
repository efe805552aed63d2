"""Where this process stands in a launch: was it started by an MPI launcher, how many ranks,
its local rank, and importing mpi4py with a message that says what to install.

Launch detection reads the variables the common launchers set for every rank, before MPI
is initialised (so gpunn can decide whether to initialise it at all):

    MPICH / Intel MPI (hydra), Slurm srun --mpi=pmi2   PMI_RANK, PMI_SIZE
    Open MPI (mpirun / mpiexec)                         OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
    PMIx launchers (Open MPI 5 prterun, srun --mpi=pmix) PMIX_RANK (size from MPI itself)
    MVAPICH2                                            MV2_COMM_WORLD_RANK, MV2_COMM_WORLD_SIZE

Slurm's own SLURM_PROCID / SLURM_NTASKS are *not* used: they are also set for a single
process inside an ``sbatch --ntasks=4`` script that never called ``srun``.
"""
from __future__ import annotations

import os

from ..extras import MissingExtra

__all__ = ["MPINotAvailable", "launched_by_mpi", "launch_size", "launch_rank", "import_mpi",
           "INSTALL_HINT"]

INSTALL_HINT = "pip install 'gpunn[mpi]'  (mpi4py, and MPICH with its mpiexec)"

_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class MPINotAvailable(MissingExtra):
    """Distributed training was asked for but mpi4py (or an MPI library) cannot be loaded."""


def _int_env(names, env):
    for name in names:
        v = env.get(name, "").strip()
        if v:
            try:
                return int(v), name
            except ValueError:
                pass
    return None, None


def launch_rank(env=None):
    """This process's rank as the launcher's variables give it, or None."""
    return _int_env(_RANK_VARS, os.environ if env is None else env)[0]


def launch_size(env=None):
    """(number of ranks, the variable it came from) as the launcher set them, or (None, None).
    A PMIx launch names no size variable: (None, "PMIX_RANK") then means "launched, size
    unknown until MPI starts"."""
    env = os.environ if env is None else env
    size, name = _int_env(_SIZE_VARS, env)
    if size is None and env.get("PMIX_RANK", "").strip():
        return None, "PMIX_RANK"
    return size, name


def launched_by_mpi(env=None) -> bool:
    """True when an MPI launcher started this process as one of several ranks (or, for PMIx,
    as one rank of an unknown number: MPI then says how many)."""
    size, name = launch_size(env)
    return (size is not None and size > 1) or (size is None and name is not None)


def import_mpi(why: str = "distributed training"):
    """``mpi4py.MPI``, or MPINotAvailable saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        size, name = launch_size()
        launched = (f" (this process was started by an MPI launcher: {name}={os.environ[name]})"
                    if name else "")
        raise MPINotAvailable(f"{why} needs mpi4py and an MPI library, which are not installed"
                              f"{launched}: {INSTALL_HINT}. [{type(e).__name__}: {e}]") from None
    return MPI

#!/usr/bin/env python3
"""Data-parallel scaling on the CPU: the same as ``gpunn bench --ranks N``.

    python scripts/bench_distributed.py [--ranks 2] [--batch 100] [--models mlp1000,model4,cnn-bn]

Prints a markdown table (docs/DISTRIBUTED.md holds a measured one): images/s of one rank on
one thread, one rank on N threads at N times the batch, N MPI ranks (with the mpi extra, pip
install 'gpunn[mpi]') and N forked ranks (gpunn train --procs) on one thread each, with the
scaling efficiencies.
"""
import argparse
import json
import sys

from gpunn.distributed.bench import DEFAULT_MODELS, format_scaling, run_scaling


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100, help="per-rank batch")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run_scaling(tuple(a.models.split(",")), batch=a.batch, ranks=a.ranks,
                      repeats=a.repeats, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=1) if a.json else format_scaling(res))


if __name__ == "__main__":
    main()

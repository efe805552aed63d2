"""Training-step speed of the zoo models beside PyTorch: a thin wrapper of ``gpunn bench``.

    python scripts/bench_train.py [gpunn bench options]     e.g. --quick, --models model4,cnn-bn

Everything (interleaved timing, the PyTorch twins, floors, memory, docs/benchmarks/ output)
lives in gpunn/bench/; ``gpunn bench --help`` lists the options.
"""
import sys

from gpunn.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])

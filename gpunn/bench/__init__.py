"""Benchmarks of gpunn's training step beside PyTorch's (``gpunn bench``).

- :mod:`gpunn.bench.runner`: the interleaved timing, the table, the JSON and docs/benchmarks/;
- :mod:`gpunn.bench.steps`: the training steps timed (gpunn, PyTorch, eager and graphed);
- :mod:`gpunn.bench.torch_twin`: a gpunn model translated into the same PyTorch network;
- :mod:`gpunn.bench.floor`: FLOPs and minimum bytes per step, the device's measured rates;
- :mod:`gpunn.bench.memory`: peak host RSS (child processes) and GPU allocator peaks;
- :mod:`gpunn.bench.profile`: per-layer times of one gpunn step.

Nothing here is imported by ``import gpunn``; PyTorch is imported only where it is timed.
"""
from .runner import DEFAULT_MODELS, BenchConfig, format_report, run_bench, write_results

__all__ = ["BenchConfig", "run_bench", "format_report", "write_results", "DEFAULT_MODELS"]

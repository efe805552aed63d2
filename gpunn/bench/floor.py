"""A model's floor: the arithmetic and the memory traffic one training step cannot avoid, and
the time they imply on a device whose GEMM rate and memory bandwidth are measured here.

FLOPs (multiply-add = 2) of one SGD step: forward, the weight gradient and (except for the
first layer, whose input needs none) the input gradient of every Conv2d and Linear; the
element-wise layers, pooling and the optimizer are counted as memory traffic only.

Minimum bytes (a lower bound that assumes perfect fusion): the input batch read once; every
activation a Conv2d, Linear or pooling layer produces written and read once in the forward
pass, and its gradient written and read once in the backward pass (4 x its size); each
parameter read in forward and backward, its gradient written, and the SGD-momentum update's
read of weight, gradient and velocity and write of weight and velocity (8 x). Element-wise
layers (ReLU, batch-norm, dropout, residual adds) are assumed fused into their neighbours.

floor time = max(FLOPs / GEMM rate, bytes / bandwidth): the step could not be faster even
if every kernel ran at the device's peak and nothing were stored twice.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Floor", "model_floor", "measure_device"]


@dataclass
class Floor:
    flops: float            # per training step
    bytes: float            # per training step, minimum
    gemm_flops_s: float     # the device's measured rate
    bandwidth_b_s: float    # the device's measured bandwidth

    @property
    def flops_ms(self):
        return 1e3 * self.flops / self.gemm_flops_s

    @property
    def bytes_ms(self):
        return 1e3 * self.bytes / self.bandwidth_b_s

    @property
    def ms(self):
        return max(self.flops_ms, self.bytes_ms)

    def as_dict(self):
        return {**asdict(self), "flops_ms": self.flops_ms, "bytes_ms": self.bytes_ms,
                "floor_ms": self.ms}


def _walk(layers, shape, batch, first, acc):
    """Accumulate (flops, activation elements) of ``layers`` from per-sample ``shape``."""
    for layer in layers:
        name = type(layer).__name__
        out = layer.output_shape(shape)
        if name == "Residual":
            _walk(layer.block, shape, batch, first, acc)
            _walk(layer.shortcut, shape, batch, first, acc)
        elif name in ("Conv2d", "Linear"):
            if name == "Conv2d":
                kh, kw = layer.kernel_size
                macs = layer.out_channels * layer.in_channels * kh * kw * out[1] * out[2]
            else:
                macs = layer.in_features * layer.out_features
            passes = 2 if first else 3          # forward, dW (, dx)
            acc["flops"] += 2.0 * macs * batch * passes
            acc["acts"] += batch * int(np.prod(out))
            first = False
        elif name in ("MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"):
            acc["acts"] += batch * int(np.prod(out))
        shape = out
    return shape


def model_floor(model, input_shape, batch: int, device_rates: dict, itemsize: int = 4) -> Floor:
    """The :class:`Floor` of one SGD-momentum step of ``model`` at ``batch``."""
    acc = {"flops": 0.0, "acts": 0}
    _walk(list(model.layers), tuple(input_shape), batch, True, acc)
    params = model.num_parameters()
    nbytes = itemsize * (batch * int(np.prod(input_shape)) + 4 * acc["acts"] + 8 * params)
    return Floor(acc["flops"], float(nbytes), device_rates["gemm_flops_s"],
                 device_rates["bandwidth_b_s"])


# -- the device's rates -------------------------------------------------------------------------
def _best(f, repeats):
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_device(device, *, quick: bool = False) -> dict:
    """float32 GEMM rate and memory bandwidth of ``device`` ("cpu" or a CUDA device), best
    of a few runs: {"gemm_flops_s", "bandwidth_b_s", "gemm_n", "copy_bytes"}.

    CPU: a square sgemm through NumPy's BLAS (its own threads), and a copy of a large array cut
    into chunks on gpunn's thread pool (what the CPU bodies can reach). GPU: cuBLAS through
    CuPy (TF32 off unless CUPY_TF32 is set) and a device-to-device copy.
    """
    from ..backend import resolve_device
    dev = resolve_device(device)
    if not dev.is_cuda:
        from ..threads import parallel_chunks
        n = 768 if quick else 1536
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        t = _best(lambda: a @ a, 3 if quick else 5)
        size = (64 if quick else 256) << 20
        src = np.ones(size // 4, dtype=np.float32)
        dst = np.empty_like(src)
        step = src.size // 64

        def copy():
            def part(lo, hi):
                dst[lo * step:hi * step] = src[lo * step:hi * step]
            parallel_chunks(part, 64, 4)
        tc = _best(copy, 3 if quick else 5)
        return {"gemm_flops_s": 2.0 * n ** 3 / t, "bandwidth_b_s": 2.0 * size / tc,
                "gemm_n": n, "copy_bytes": size}
    import cupy as cp
    with cp.cuda.Device(dev.index):
        n = 4096 if not quick else 2048
        a = cp.random.standard_normal((n, n), dtype=cp.float32)
        size = 1 << 30
        src = cp.ones(size // 4, dtype=cp.float32)
        dst = cp.empty_like(src)

        def timed(f, repeats):
            f()
            best = float("inf")
            for _ in range(repeats):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                f()
                end.record()
                end.synchronize()
                best = min(best, cp.cuda.get_elapsed_time(start, end) / 1e3)
            return best
        t = timed(lambda: a @ a, 5)
        tc = timed(lambda: dst.__setitem__(Ellipsis, src), 5)
        del a, src, dst
        cp.get_default_memory_pool().free_all_blocks()
        return {"gemm_flops_s": 2.0 * n ** 3 / t, "bandwidth_b_s": 2.0 * size / tc,
                "gemm_n": n, "copy_bytes": size}

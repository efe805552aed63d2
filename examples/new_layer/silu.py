"""A new layer end to end, outside gpunn's source tree: SiLU (swish) with its own CUDA kernel.

    python examples/new_layer/silu.py            # every check below; exit 1 if one fails

The steps a layer with a kernel goes through (docs/CONTRIBUTING.md walks through gpunn's own
GELU the same way):

1. the kernel, ``silu.cu`` beside this file, made available with ``gpunn.kernels.add_kernel_dir``;
2. the op: a NumPy body and, right below it, a CUDA body that launches the kernel (``@op``);
3. the layer: ``forward`` keeps what ``backward`` needs;
4. a gradient check of the layer in float64 (central differences);
5. the kernels' own test: their CPU-compiled twins (the emulator, ``gpunn.testing``), threads
   run forward, reverse and shuffled, against an independent NumPy reference;
6. a parity row: the layer's NumPy path against its CUDA path, on emulated CUDA here and on
   a real GPU too when one is usable.

The NVRTC compile gate checks the kernel file as CuPy will compile it on a GPU, from a source
checkout: ``python tests/nvrtc_check.py --kernel-dir examples/new_layer``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import gpunn
import gpunn.kernels
from gpunn.backend import get_array_module
from gpunn.errors import ShapeError
from gpunn.ops.dispatch import op

HERE = Path(__file__).resolve().parent
gpunn.kernels.add_kernel_dir(HERE)                 # 1. silu.cu joins gpunn's kernels


# -- 2. the op: NumPy body, then CUDA body ----------------------------------------------------
@op
def silu_forward(x):
    """y = x * sigmoid(x), the sigmoid in the overflow-free form the kernel uses."""
    xp, T = get_array_module(x), x.dtype.type
    e = xp.exp(-xp.abs(x))
    s = xp.where(x >= 0, T(1) / (T(1) + e), e / (T(1) + e))
    return x * s


@silu_forward.cuda
def _silu_forward_cuda(b, x):
    x = b.xp.ascontiguousarray(x)
    y = b.xp.empty_like(x)
    b.kernel("silu_forward", x.dtype).launch(x.size, x, y, x.size)
    return y


@op
def silu_backward(dout, x):
    """dx = dout * (s + x * s * (1 - s)), s = sigmoid(x)."""
    xp, T = get_array_module(x), x.dtype.type
    e = xp.exp(-xp.abs(x))
    s = xp.where(x >= 0, T(1) / (T(1) + e), e / (T(1) + e))
    return dout * (s + x * s * (T(1) - s))


@silu_backward.cuda
def _silu_backward_cuda(b, dout, x):
    dout, x = b.xp.ascontiguousarray(dout), b.xp.ascontiguousarray(x)
    dx = b.xp.empty_like(x)
    b.kernel("silu_backward", x.dtype).launch(x.size, dout, x, dx, x.size)
    return dx


# -- 3. the layer ---------------------------------------------------------------------------
class SiLU(gpunn.Layer):
    """y = x * sigmoid(x). x: any shape."""

    def forward(self, x, *, train=None):
        self.check_input(x)
        self._x = x
        return silu_forward(x)

    def backward(self, dout):
        x = self._need_cache("_x")
        if dout.shape != x.shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(x.shape)}, "
                             f"got {tuple(dout.shape)}")
        return silu_backward(dout, x)

    def output_shape(self, in_shape):
        return tuple(in_shape)


def reference(x):
    """Independent float64 references for the kernel test: y = x / (1 + exp(-x)) and
    dy/dx = s (1 + x (1 - s)), s = 1 / (1 + exp(-x))."""
    v = x.astype(np.float64)
    with np.errstate(over="ignore"):
        s = 1 / (1 + np.exp(-v))
    return v * s, s * (1 + v * (1 - s))


def kernel_errors(dtype, order, rng) -> tuple:
    """Largest error of each kernel's CPU twin against the reference (relative, floor 1)."""
    from gpunn.testing import emulated_kernel
    x = (rng.standard_normal(4099) * 4).astype(dtype)
    x[:4] = [0.0, -0.0, 90.0, -90.0]               # zeros, saturation both ways
    dout = rng.standard_normal(x.size).astype(dtype)
    y_ref, d_ref = reference(x)
    grid, block = gpunn.kernels.launch_config(x.size, max_blocks=16)   # loops go round
    y, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    emulated_kernel("silu_forward", dtype, order=order)(grid, block, (x, y, np.int64(x.size)))
    emulated_kernel("silu_backward", dtype, order=order)(grid, block,
                                                         (dout, x, dx, np.int64(x.size)))

    def err(a, ref):
        return float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), 1)))
    return err(y, y_ref), err(dx, dout * d_ref)


def main() -> int:
    from gpunn.parity import Side, layer_parity

    failures = []
    rng = np.random.default_rng(0)

    # 4. gradient check, float64, inside a small model
    x = rng.standard_normal((4, 6)) * 3
    res = gpunn.check_layer(SiLU(), x)
    print(f"gradcheck SiLU: max relative error {res.max_rel_error:.2e}")
    if res.max_rel_error > 1e-7:
        failures.append("gradcheck")

    # 5. the kernels' CPU-compiled twins against the reference, three thread orders
    for dtype, tol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        worst = max(max(kernel_errors(dtype, order, rng))
                    for order in ("forward", "reverse", "shuffled"))
        print(f"kernels silu_forward/backward {np.dtype(dtype).name}: worst error {worst:.1e} "
              f"over 3 thread orders -> {'ok' if worst <= tol else 'FAILED'}")
        if worst > tol:
            failures.append(f"kernels {np.dtype(dtype).name}")

    # 6. parity rows: the NumPy path against the CUDA path of the whole layer
    cases = [("SiLU", lambda dt: SiLU(), (3, 5, 7), True)]
    sides = [Side("emulated")]
    if gpunn.backend.cuda_available():
        sides.append(Side("cuda"))
    for side in sides:
        for dtype in (np.float64, np.float32):
            (row,) = layer_parity(side, dtype, cases=cases)
            print(f"parity {side.kind:8s} {row.dtype}: forward {row.forward:.1e}, backward "
                  f"{row.backward:.1e}, {row.launches} kernel launches -> "
                  f"{'ok' if row.ok else 'FAILED'}")
            if not row.ok:
                failures.append(f"parity {side.kind} {row.dtype}")

    # and it trains like any layer
    model = gpunn.Sequential(gpunn.Linear(8, 16, rng=0), SiLU(), gpunn.Linear(16, 3, rng=1))
    opt = gpunn.Adam(model.parameters(), lr=1e-2)
    loss = gpunn.CrossEntropyLoss()
    xb = rng.standard_normal((64, 8)).astype(np.float32)
    yb = (xb[:, 0] > 0).astype(np.int64) + (xb[:, 1] > 0)
    first = None
    for _ in range(100):
        value = float(loss(model(xb), yb))
        first = value if first is None else first
        model.backward(loss.backward())
        opt.step()
    print(f"training: loss {first:.3f} -> {value:.3f}")
    if not value < 0.5 * first:
        failures.append("training")

    print("all checks passed" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

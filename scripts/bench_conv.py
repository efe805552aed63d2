"""CPU speed of gpunn's conv and pool bodies beside the coursework way, in one run.

    python scripts/bench_conv.py [--repeats 20]

Conv2d(8, 8, 3, padding=1) forward + backward on a (100, 8, 14, 14) float32 batch:
gpunn (im2col by strided views, col2im by strided accumulation) vs the coursework
(fancy-index im2col with index arrays, col2im with np.add.at), and the weight-gradient GEMM in
both operand orders. 2x2 max-pool at (100, 8, 28, 28): forward as the element-wise maximum of
four strided slices vs reshape().max(), and a training step (forward keeping the argmax +
backward) vs reshape().max() with a mask backward.
Prints medians and ratios; this is a measurement, not a test.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpunn.layers import Conv2d, MaxPool2d
from gpunn.ops.conv import im2col


# -- the coursework way -----------------------------------------------------------------------
def _indices(x_shape, kh, kw, pad, stride):
    n, c, h, w = x_shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    i0 = np.tile(np.repeat(np.arange(kh), kw), c)
    i1 = stride * np.repeat(np.arange(oh), ow)
    j0 = np.tile(np.arange(kw), kh * c)
    j1 = stride * np.tile(np.arange(ow), oh)
    i = i0.reshape(-1, 1) + i1.reshape(1, -1)
    j = j0.reshape(-1, 1) + j1.reshape(1, -1)
    k = np.repeat(np.arange(c), kh * kw).reshape(-1, 1)
    return k, i, j, oh, ow


def im2col_indices(x, kh, kw, pad, stride):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k, i, j, _, _ = _indices(x.shape, kh, kw, pad, stride)
    cols = xp[:, k, i, j]                                  # (N, C*kh*kw, oh*ow)
    return cols.transpose(1, 2, 0).reshape(kh * kw * x.shape[1], -1)


def col2im_indices(cols, x_shape, kh, kw, pad, stride):
    n, c, h, w = x_shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    k, i, j, _, _ = _indices(x_shape, kh, kw, pad, stride)
    cr = cols.reshape(c * kh * kw, -1, n).transpose(2, 0, 1)
    np.add.at(xp, (slice(None), k, i, j), cr)
    return xp[:, :, pad:-pad, pad:-pad] if pad else xp


def coursework_conv_step(x, W, b, dout):
    n, c, h, wd = x.shape
    o = W.shape[0]
    col = im2col_indices(x, 3, 3, 1, 1)                    # (C*9, oh*ow*N), columns (pixel, n)
    y = (W.reshape(o, -1) @ col + b[:, None]).reshape(o, h, wd, n).transpose(3, 0, 1, 2)
    d = dout.transpose(1, 2, 3, 0).reshape(o, -1)
    dW = (d @ col.T).reshape(W.shape)
    db = d.sum(axis=1)
    dx = col2im_indices(W.reshape(o, -1).T @ d, x.shape, 3, 3, 1, 1)
    return y, dW, db, dx


def coursework_pool_step(x, dout):
    """2x2 max-pool forward + backward by reshape; the mask sends the gradient to every tied
    maximum (not only the first one), as coursework code usually did."""
    n, c, h, w = x.shape
    x6 = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = x6.max(axis=(3, 5))
    mask = x6 == out[:, :, :, None, :, None]
    dx = (mask * dout[:, :, :, None, :, None]).reshape(x.shape)
    return out, dx


# -- timing -----------------------------------------------------------------------------------
def median_ms(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    x = rng.standard_normal((100, 8, 14, 14)).astype(np.float32)
    dout = rng.standard_normal((100, 8, 14, 14)).astype(np.float32)
    conv = Conv2d(8, 8, 3, padding=1, rng=0)

    def gpunn_conv():
        conv.forward(x, train=True)
        return conv.backward(dout)

    W, b = conv.params["W"], conv.params["b"]
    y_ref, dW_ref, _, dx_ref = coursework_conv_step(x, W, b, dout)
    # both ways compute the same numbers
    np.testing.assert_allclose(conv.forward(x, train=True), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.backward(dout), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.grads["W"], dW_ref, rtol=1e-3, atol=1e-3)

    xp = rng.standard_normal((100, 8, 28, 28)).astype(np.float32)
    pool = MaxPool2d(2)
    np.testing.assert_array_equal(pool.forward(xp), xp.reshape(100, 8, 14, 2, 14, 2).max(axis=(3, 5)))
    dpool = rng.standard_normal((100, 8, 14, 14)).astype(np.float32)

    def gpunn_pool_step():
        pool.forward(xp, train=True)
        return pool.backward(dpool)
    np.testing.assert_array_equal(gpunn_pool_step(), coursework_pool_step(xp, dpool)[1])  # no ties

    col = im2col(x, 3, 3, (1, 1), (1, 1, 1, 1))              # (72, 19600), as the layer has it
    d = dout.transpose(1, 0, 2, 3).reshape(8, -1)            # (8, 19600)

    rows = [
        ("conv 3x3 fwd+bwd (100,8,14,14)", median_ms(gpunn_conv, args.repeats),
         median_ms(lambda: coursework_conv_step(x, W, b, dout), args.repeats),
         "fancy-index im2col + np.add.at"),
        ("max-pool 2x2 fwd (100,8,28,28)", median_ms(lambda: pool.forward(xp), args.repeats),
         median_ms(lambda: xp.reshape(100, 8, 14, 2, 14, 2).max(axis=(3, 5)), args.repeats),
         "reshape().max(axis=(3, 5))"),
        ("  same, keeping the argmax", median_ms(lambda: pool.forward(xp, train=True), args.repeats),
         median_ms(lambda: xp.reshape(100, 8, 14, 2, 14, 2).max(axis=(3, 5)), args.repeats),
         "reshape().max(axis=(3, 5))"),
        ("max-pool 2x2 fwd+bwd (training)", median_ms(gpunn_pool_step, args.repeats),
         median_ms(lambda: coursework_pool_step(xp, dpool), args.repeats),
         "reshape().max() + mask backward"),
        ("conv dW GEMM (8x19600 @ 19600x72)", median_ms(lambda: (col @ d.T).T, args.repeats),
         median_ms(lambda: d @ col.T, args.repeats), "d @ col.T (gpunn: (col @ d.T).T)"),
    ]
    print(f"float32, median of {args.repeats}; numpy {np.__version__}")
    print(f"{'operation':34s} {'gpunn ms':>9s} {'coursework ms':>14s} {'speed-up':>9s}  coursework way")
    for name, g, c, how in rows:
        print(f"{name:34s} {g:9.2f} {c:14.2f} {c / g:8.1f}x  {how}")


if __name__ == "__main__":
    main()

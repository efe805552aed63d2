"""Every CUDA kernel, run on the CPU through the emulator (gpunn.testing.cuda_emu), against the
independent NumPy references in kernel_refs.py.

Each kernel runs with its threads in three orders (forward, reverse, shuffled), with a grid
smaller than the work (so grid-stride loops go round more than once) and with the loader's
own launch configuration, on odd sizes. Comparisons are exact (assert_array_equal) wherever
the kernel and the reference do the same IEEE operations in the same order; exp / log / tanh
go through libm in the kernel and NumPy's own routines in the reference, so those are held
to a few ulp (stated per test). The emulator's own strictness (argument types, guard bytes,
thread order, unsupported CUDA features) is tested at the end, and a coverage test fails for
any kernel in kernels/ that no test here runs.

Under scripts/sanitize_kernels.sh the same tests run against the ASan/UBSan build.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import kernel_refs as ref
from gpunn import kernel_signatures, kernels
from gpunn.testing import EMULATION_MAX_BLOCKS, emulated_cuda, emulated_kernel
from gpunn.testing import cuda_emu
from gpunn.testing.cuda_emu import (ArgumentTypeError, EmulatedKernel, EmulationError,
                                    EmulatorBuildError, GuardError, SignatureError)

DTYPES = [np.float32, np.float64]
ORDERS = ["forward", "reverse", "shuffled"]
# "cuda": the same test on a real GPU through cupy.RawModule (pytest -m gpu; skipped without)
RUNS = ORDERS + [pytest.param("cuda", marks=pytest.mark.gpu)]
SMALL = ((3,), (32,))                   # 96 threads: every test's work is larger
SANITIZE = cuda_emu.sanitize_default()

# Kernel families each test below runs, per file: the coverage test checks this against
# every entry point in kernels/ (names are <base>_f32 / <base>_f64).
TESTED = {
    "elementwise.cu": [],              # filled from the ACTIVATIONS table below
    "dropout.cu": ["dropout_forward", "dropout_forward_dyn"],
    "im2col.cu": ["im2col", "col2im"],
    "conv_epilogue.cu": ["conv_output_forward", "conv_output_backward"],
    "pool.cu": ["maxpool2d_forward", "maxpool2d_forward_noargmax", "maxpool2d_backward",
                "avgpool2d_forward", "avgpool2d_backward", "relu_maxpool2d_forward",
                "relu_maxpool2d_forward_noargmax", "relu_maxpool2d_backward"],
    "softmax_xent.cu": ["softmax_xent", "softmax_xent_finish"],
    "batchnorm.cu": ["batchnorm_partial_stats", "batchnorm_fold", "batchnorm_stats",
                     "batchnorm_normalise", "batchnorm_partial_grad", "batchnorm_grad_coeffs",
                     "batchnorm_backward_dx"],
    "optim.cu": ["sgd_update", "sgd_momentum_update", "adam_update", "sgd_update_dyn",
                 "sgd_momentum_update_dyn", "adam_update_dyn"],
}


@pytest.fixture(scope="module", autouse=True)
def _built():
    """Build (or find cached) every kernel library up front, two compilers at a time."""
    paths = [kernels.kernel_path(f) for f in kernels.kernel_files()]
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda p: cuda_emu.build_library(p, sanitize=SANITIZE), paths))


def K(file, base, dtype, order):
    """The kernel as an op gets it: emulated with threads in ``order``
    (gpunn.testing.emulated_kernel), or (order "cuda") the real one from the loader
    (gpunn.kernels.get_kernel) behind a NumPy adapter."""
    assert kernels.kernel_file(base) == file
    if order == "cuda":
        return _OnDevice(kernels.get_kernel(base, dtype, device=0))
    k = emulated_kernel(base, dtype, order=order)
    assert k.emulated and k.name == kernels.kernel_name(base, dtype)
    return k


class _OnDevice:
    """Runs a real CUDA kernel on NumPy arguments: copies arrays to the GPU (one device array
    per distinct NumPy array, so in-place calls stay in place), launches, copies written
    arrays back."""

    def __init__(self, k):
        assert not k.emulated
        self.k = k
        self.marshal = k.marshal

    def __call__(self, grid, block, args, order=None):
        import cupy
        dev, written, dargs = {}, set(), []
        for p, a in zip(self.k.sig.params, args):
            if p.pointer and isinstance(a, np.ndarray):
                if id(a) not in dev:
                    dev[id(a)] = (a, cupy.asarray(a))
                if not p.const:
                    written.add(id(a))
                dargs.append(dev[id(a)][1])
            else:
                dargs.append(a)
        self.k(grid, block, tuple(dargs))
        cupy.cuda.runtime.deviceSynchronize()
        for key in written:
            a, d = dev[key]
            a[...] = d.get()


def configs(n):
    """Launch shapes to try for n work items: a small grid, and the loader's default."""
    return [SMALL, kernels.launch_config(n, max_blocks=EMULATION_MAX_BLOCKS)]


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def assert_ulp(actual, expected, maxulp):
    np.testing.assert_array_max_ulp(actual, expected, maxulp=maxulp,
                                    dtype=np.dtype(expected.dtype))


# -- element-wise -----------------------------------------------------------------------------
SIZES = [0, 1, 97, 1000, 4099]


def _signed_inputs(rng, n, dtype):
    x = randn(rng, n, dtype, 3.0)
    x[: min(n, 4)] = np.array([0.0, -0.0, 1e-3, -80.0][: min(n, 4)], dtype=dtype)
    return x


ACTIVATIONS = ref.ACTIVATIONS           # one row per activation kernel pair: kernel_refs.py
TESTED["elementwise.cu"] = [f"{a[0]}_{way}" for a in ACTIVATIONS for way in ("forward", "backward")]
TESTED["elementwise.cu"] += ["bias_relu_forward", "add_relu_forward"]


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_forward(dtype, order, rng):
    """A Linear's epilogue in place: y + b per column, then the ReLU if asked: the bits of
    NumPy's y + b and kernel_refs.relu (signed zeros, NaN and -inf included)."""
    for rows, cols in [(1, 1), (7, 10), (33, 37), (100, 3)]:
        y0 = randn(rng, (rows, cols), dtype, 3.0)
        b = randn(rng, cols, dtype)
        y0.flat[:4] = np.array([-0.0, np.nan, -np.inf, 0.0], dtype=dtype)[:y0.size]
        for relu in (0, 1):
            want = y0 + b
            want = ref.relu(want) if relu else want
            for grid, block in configs(y0.size):
                y = y0.copy()
                K("elementwise.cu", "bias_relu_forward", dtype, order)(
                    grid, block, (y, b, np.int64(y.size), np.int32(cols), np.int32(relu)))
                np.testing.assert_array_equal(y, want)
                assert np.array_equal(np.signbit(y), np.signbit(want))


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_relu_forward(dtype, order, rng):
    """A residual sum and its ReLU in one pass: the bits of kernel_refs.relu(a + b)."""
    for n in SIZES:
        a, b = _signed_inputs(rng, n, dtype), randn(rng, n, dtype)
        if n > 8:
            a[4:8] = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=dtype)
            b[4:8] = np.array([1.0, -np.inf, 1.0, -1.0], dtype=dtype)   # NaN, inf - inf, 0
        with np.errstate(invalid="ignore"):
            want = ref.relu(a + b)
        for grid, block in configs(n):
            y = np.full_like(a, 7.0)
            K("elementwise.cu", "add_relu_forward", dtype, order)(
                grid, block, (a, b, y, np.int64(n)))
            np.testing.assert_array_equal(y, want)
            assert np.array_equal(np.signbit(y), np.signbit(want))


def _assert_close(actual, expected, tol):
    kind, n = tol
    if kind == "exact":
        np.testing.assert_array_equal(actual, expected)
    elif kind == "ulp":
        assert_ulp(actual, expected, n)
    else:
        e = float(np.finfo(expected.dtype).eps) * n
        np.testing.assert_allclose(actual, expected, rtol=e, atol=e)


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,fwd,bwd,reads,extra,fwd_tol,bwd_tol", ACTIVATIONS,
                         ids=[a[0] for a in ACTIVATIONS])
def test_activation_kernels(name, fwd, bwd, reads, extra, fwd_tol, bwd_tol, dtype, order, rng):
    extra = tuple(dtype(v) for v in extra)
    for n in SIZES:
        x = _signed_inputs(rng, n, dtype)
        if n > 8:
            x[4:8] = np.array([30.0, -30.0, 700.0, -700.0], dtype=dtype)  # saturation, overflow
        dout = randn(rng, n, dtype)
        N = np.int64(n)
        for grid, block in configs(n):
            y = np.full_like(x, np.nan)
            with np.errstate(over="ignore", invalid="ignore"):
                K("elementwise.cu", f"{name}_forward", dtype, order)(grid, block, (x, y, N, *extra))
                _assert_close(y, fwd(x, *extra), fwd_tol)
                arg = x if reads == "x" else y
                dx = np.full_like(x, np.nan)
                K("elementwise.cu", f"{name}_backward", dtype, order)(grid, block,
                                                                      (dout, arg, dx, N, *extra))
                _assert_close(dx, bwd(dout, arg, *extra), bwd_tol)


def test_elementwise_in_place(rng):
    """y is x (the ops may run activations in place): the emulator keeps the aliasing."""
    x = randn(rng, 1001, np.float32)
    expect = ref.relu(x)
    K("elementwise.cu", "relu_forward", np.float32, "shuffled")(SMALL[0], SMALL[1],
                                                                 (x, x, np.int64(x.size)))
    np.testing.assert_array_equal(x, expect)


# -- dropout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_bit_exact(dtype, order, rng):
    for n, p, seed, step in [(1, 0.5, 0, 0), (999, 0.3, 12345, 7), (4097, 0.9, 2**63 + 5, 2**40),
                             (300, 0.0, 1, 1)]:
        x = randn(rng, n, dtype)
        y_ref, mask_ref = ref.dropout(x, p, seed, step)
        key = np.uint64(ref.stream_key(seed, step))
        thr = np.uint32(round(p * 2**24))
        scale = dtype(1.0 / (1.0 - p))
        for grid, block in configs(n):
            y = np.full_like(x, np.nan)
            mask = np.full_like(x, np.nan)
            K("dropout.cu", "dropout_forward", dtype, order)(
                grid, block, (x, y, mask, np.int64(n), key, thr, scale))
            assert mask.tobytes() == mask_ref.tobytes()
            assert y.tobytes() == y_ref.tobytes()
            # the graph-capturable twin reads the key from device memory
            y.fill(np.nan)
            mask.fill(np.nan)
            K("dropout.cu", "dropout_forward_dyn", dtype, order)(
                grid, block, (x, y, mask, np.int64(n), np.array([key]), thr, scale))
            assert mask.tobytes() == mask_ref.tobytes()
            assert y.tobytes() == y_ref.tobytes()
        if n > 100 and 0 < p:
            assert abs((mask == 0).mean() - p) < 0.06


# -- im2col / col2im ----------------------------------------------------------------------------
# (N, C, H, W), kh, kw, stride, pad (top, bottom, left, right)
CONV_CASES = [
    ((2, 3, 7, 5), 3, 3, (1, 1), (1, 1, 1, 1)),
    ((1, 2, 8, 9), 3, 2, (2, 3), (0, 1, 2, 0)),      # asymmetric everything
    ((3, 1, 5, 5), 1, 1, (1, 1), (0, 0, 0, 0)),
    ((2, 2, 6, 7), 5, 4, (2, 2), (1, 2, 1, 2)),      # TF "same": the extra pad at the end
    ((1, 1, 4, 4), 4, 4, (1, 1), (0, 0, 0, 0)),      # one window covering the image
    ((2, 3, 9, 6), 3, 3, (3, 2), (2, 2, 0, 1)),
    ((2, 2, 10, 9), 2, 1, (3, 4), (0, 0, 0, 2)),     # stride > kernel: pixels no window reads
]


def _geom(case):
    shape, kh, kw, stride, pad = case
    n, c, h, w = shape
    oh, ow = ref.out_size(h, w, kh, kw, stride, pad)
    return tuple(np.int32(v) for v in (n, c, h, w, kh, kw, stride[0], stride[1], pad[0], pad[2],
                                       oh, ow))


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im(dtype, order, rng):
    for case in CONV_CASES:
        shape, kh, kw, stride, pad = case
        x = randn(rng, shape, dtype)
        col_ref = ref.im2col(x, kh, kw, stride, pad)
        g = _geom(case)
        for grid, block in configs(col_ref.size):
            col = np.full_like(col_ref, np.nan)
            K("im2col.cu", "im2col", dtype, order)(grid, block, (x, col) + g)
            np.testing.assert_array_equal(col, col_ref)
        dcol = randn(rng, col_ref.shape, dtype)
        dx_ref = ref.col2im(dcol, shape, kh, kw, stride, pad)
        for grid, block in configs(x.size):
            dx = np.full_like(x, np.nan)
            K("im2col.cu", "col2im", dtype, order)(grid, block, (dcol, dx) + g)
            np.testing.assert_array_equal(dx, dx_ref)   # same terms, same (i, j) order
        if dtype is np.float64:                          # adjoint: <im2col x, d> = <x, col2im d>
            np.testing.assert_allclose(np.vdot(col_ref, dcol), np.vdot(x, dx), rtol=1e-12)


# -- pooling ----------------------------------------------------------------------------------
POOL_CASES = [
    ((2, 3, 8, 8), 2, 2, (2, 2), (0, 0, 0, 0)),
    ((1, 2, 7, 9), 3, 3, (1, 1), (1, 1, 1, 1)),      # overlapping windows
    ((2, 1, 5, 6), 2, 3, (2, 2), (0, 1, 1, 1)),      # "same"-style asymmetric pad
    ((1, 3, 6, 5), 3, 2, (2, 1), (1, 0, 0, 1)),
    ((3, 2, 3, 3), 3, 3, (1, 1), (2, 2, 2, 2)),      # windows mostly padding
    ((2, 2, 10, 10), 2, 2, (3, 3), (0, 0, 0, 0)),    # stride > kernel: pixels no window covers
]


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool(dtype, order, rng):
    for case in POOL_CASES:
        shape, kh, kw, stride, pad = case
        # small integers: ties everywhere, so "first maximum wins" is really tested
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        out_ref, arg_ref = ref.maxpool(x, kh, kw, stride, pad)
        g = _geom(case)
        for grid, block in configs(out_ref.size):
            out = np.full_like(out_ref, np.nan)
            arg = np.full(out_ref.shape, -7, dtype=np.int32)
            K("pool.cu", "maxpool2d_forward", dtype, order)(grid, block, (x, out, arg) + g)
            np.testing.assert_array_equal(out, out_ref)
            np.testing.assert_array_equal(arg, arg_ref)
            out2 = np.full_like(out_ref, np.nan)
            K("pool.cu", "maxpool2d_forward_noargmax", dtype, order)(grid, block, (x, out2) + g)
            np.testing.assert_array_equal(out2, out_ref)
        dout = randn(rng, out_ref.shape, dtype)
        dx_ref = ref.maxpool_backward(dout, arg_ref, shape, kh, kw, stride, pad)
        for grid, block in configs(x.size):
            dx = np.full_like(x, np.nan)
            K("pool.cu", "maxpool2d_backward", dtype, order)(grid, block, (dout, arg_ref, dx) + g)
            np.testing.assert_array_equal(dx, dx_ref)


def test_maxpool_nan_propagates(rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    g = _geom(((1, 1, 4, 4), 2, 2, (2, 2), (0, 0, 0, 0)))
    out = np.zeros((1, 1, 2, 2), np.float32)
    arg = np.zeros((1, 1, 2, 2), np.int32)
    K("pool.cu", "maxpool2d_forward", np.float32, "forward")((1,), (4,), (x, out, arg) + g)
    assert np.isnan(out[0, 0, 0, 0]) and not np.isnan(out[0, 0, 1, 1])
    assert arg[0, 0, 0, 0] in (0, 1, 4)                  # a real pixel before the NaN, not 5


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_avgpool(include_pad, dtype, order, rng):
    for case in POOL_CASES[:4]:
        shape, kh, kw, stride, pad = case
        x = randn(rng, shape, dtype)
        out_ref = ref.avgpool(x, kh, kw, stride, pad, include_pad)
        g = _geom(case) + (np.int32(include_pad),)
        for grid, block in configs(out_ref.size):
            out = np.full_like(out_ref, np.nan)
            K("pool.cu", "avgpool2d_forward", dtype, order)(grid, block, (x, out) + g)
            np.testing.assert_array_equal(out, out_ref)
        dout = randn(rng, out_ref.shape, dtype)
        dx_ref = ref.avgpool_backward(dout, shape, kh, kw, stride, pad, include_pad)
        for grid, block in configs(x.size):
            dx = np.full_like(x, np.nan)
            K("pool.cu", "avgpool2d_backward", dtype, order)(grid, block, (dout, dx) + g)
            np.testing.assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_maxpool(dtype, order, rng):
    """The fused ReLU + max-pool against max-pooling the ReLU's output: same values, same
    argmax (the negatives all tie at 0), and relu_backward of the pooled gradient."""
    for case in POOL_CASES:
        shape, kh, kw, stride, pad = case
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        x.reshape(-1)[::7] = dtype(np.nan) if dtype is np.float64 else x.reshape(-1)[::7]
        out_ref, arg_ref = ref.relu_maxpool(x, kh, kw, stride, pad)
        g = _geom(case)
        for grid, block in configs(out_ref.size):
            out = np.full_like(out_ref, -5)
            arg = np.full(out_ref.shape, -7, dtype=np.int32)
            K("pool.cu", "relu_maxpool2d_forward", dtype, order)(grid, block, (x, out, arg) + g)
            np.testing.assert_array_equal(out, out_ref)
            np.testing.assert_array_equal(arg[~np.isnan(out_ref)], arg_ref[~np.isnan(out_ref)])
            out2 = np.full_like(out_ref, -5)
            K("pool.cu", "relu_maxpool2d_forward_noargmax", dtype, order)(grid, block,
                                                                          (x, out2) + g)
            np.testing.assert_array_equal(out2, out_ref)
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        out_ref, arg_ref = ref.relu_maxpool(x, kh, kw, stride, pad)
        dout = randn(rng, out_ref.shape, dtype)
        dx_ref = ref.relu_maxpool_backward(dout, arg_ref, x, kh, kw, stride, pad)
        for grid, block in configs(x.size):
            dx = np.full_like(x, np.nan)
            K("pool.cu", "relu_maxpool2d_backward", dtype, order)(
                grid, block, (dout, arg_ref, x, dx) + g)
            np.testing.assert_array_equal(dx, dx_ref)
            assert np.signbit(dx).tolist() == np.signbit(dx_ref).tolist()


# -- convolution epilogue -------------------------------------------------------------------------
@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_output(dtype, order, rng):
    for n, o, p in [(1, 1, 1), (3, 5, 7), (2, 8, 97), (4, 3, 1)]:
        ycol = randn(rng, (o, n * p), dtype)
        ycol.reshape(-1)[::11] = dtype(0)
        b = randn(rng, o, dtype)
        for has_bias in (0, 1):
            for relu in (0, 1):
                y_ref = ref.conv_output(ycol, b if has_bias else None, n, relu)
                for grid, block in configs(y_ref.size):
                    y = np.full((n, o, p), np.nan, dtype=dtype)
                    K("conv_epilogue.cu", "conv_output_forward", dtype, order)(
                        grid, block, (ycol, b if has_bias else ycol, y, np.int32(n),
                                      np.int32(o), np.int64(p), np.int32(has_bias),
                                      np.int32(relu)))
                    np.testing.assert_array_equal(y, y_ref)
                dout = randn(rng, (n, o, p), dtype)
                d_ref = ref.conv_output_backward(dout, y_ref, relu)
                for grid, block in configs(d_ref.size):
                    d = np.full((o, n * p), np.nan, dtype=dtype)
                    K("conv_epilogue.cu", "conv_output_backward", dtype, order)(
                        grid, block, (dout, y_ref, d, np.int32(n), np.int32(o), np.int64(p),
                                      np.int32(relu)))
                    np.testing.assert_array_equal(d, d_ref)
                    assert np.signbit(d).tolist() == np.signbit(d_ref).tolist()


# -- softmax cross-entropy ----------------------------------------------------------------------
# The kernel sums exp(z - m) left to right, NumPy pairwise, and the exps differ by libm vs
# NumPy: loss and gradient are held to rtol 4e-6 (float32) / 1e-13 (float64), plus a tiny atol
# for gradient entries that cancel to ~0.
XENT_TOL = {np.float32: (4e-6, 1e-7), np.float64: (1e-13, 1e-16)}


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent(dtype, order, rng):
    rtol, atol = XENT_TOL[dtype]
    for n, k, spread, reduction in [(1, 1, 1.0, "mean"), (7, 10, 3.0, "mean"),
                                    (33, 37, 10.0, "sum"), (5, 4, 1e4, "mean")]:
        z = randn(rng, (n, k), dtype, spread)
        if k > 2:
            z[0, 1] = z[0, 2] = z[0].max() + 1         # a tie: argmax is the first
        labels = rng.integers(0, k, size=n)
        labels[0] = 2 if k > 2 else 0
        labels[-1] = z[-1].argmax()                    # at least one hit
        scale = 1.0 / n if reduction == "mean" else 1.0
        loss_ref, dz_ref = ref.softmax_xent(z, labels, scale)
        hits_ref = ref.softmax_xent_hits(z, labels)
        for grid, block in configs(n):
            loss = np.full(n, np.nan, dtype=dtype)
            hits = np.full(n, -1, dtype=np.int32)
            dz = np.full_like(z, np.nan)
            K("softmax_xent.cu", "softmax_xent", dtype, order)(
                grid, block, (z, labels, loss, hits, dz, np.int32(n), np.int32(k),
                              dtype(scale)))
            assert np.isfinite(loss).all() and np.isfinite(dz).all()
            np.testing.assert_allclose(loss, loss_ref, rtol=rtol, atol=atol)
            np.testing.assert_allclose(dz, dz_ref, rtol=rtol, atol=atol)
            np.testing.assert_array_equal(hits, hits_ref)
        assert (k <= 2 or hits[0] == 0) and hits[-1] == 1


@pytest.mark.parametrize("order", RUNS)
def test_softmax_xent_hits_follow_numpy_argmax_on_nan_and_ties(order):
    nan = np.nan
    z = np.array([[1.0, nan, 3.0, nan],      # first NaN wins: 1
                  [nan, 5.0, 6.0, 7.0],      # 0
                  [2.0, 2.0, 1.0, 2.0],      # first of the tie: 0
                  [-0.0, 0.0, -1.0, -2.0],   # -0.0 == 0.0: the first, 0
                  [-3.0, -1.0, -2.0, -1.0]])  # 1
    for labels in ([1, 0, 0, 0, 1], [2, 3, 1, 1, 3]):
        labels = np.array(labels)
        hits = np.full(5, -1, dtype=np.int32)
        K("softmax_xent.cu", "softmax_xent", np.float64, order)(
            (2,), (3,), (z, labels, np.zeros(5), hits, np.zeros_like(z), np.int32(5),
                         np.int32(4), np.float64(1.0)))
        np.testing.assert_array_equal(hits, ref.softmax_xent_hits(z, labels))


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_finish(dtype, order, rng):
    """The loss in a fixed order (so the CPU emulation and a GPU agree bit for bit) and the
    running sums, exactly as the reference adds them; N around the 32-row load batches and
    the 8 running sums."""
    for n in (1, 7, 8, 31, 32, 33, 100, 512, 515):
        rows = (rng.random(n) * 3).astype(dtype)
        rows[n // 2] = dtype(1e6)                     # the order matters at this spread
        hits = (rng.random(n) < 0.6).astype(np.int32)
        for mean in (0, 1):
            for tally in (0, 1):
                loss = np.full((), np.nan, dtype=dtype)
                loss_sum, correct = np.array(12.25), np.array(5, dtype=np.int64)
                # a grid of many threads: only thread 0 of block 0 works
                K("softmax_xent.cu", "softmax_xent_finish", dtype, order)(
                    (2,), (4,), (rows, hits, loss, loss_sum, correct, np.int32(n),
                                 np.int32(mean), np.int32(tally)))
                want = ref.softmax_xent_finish(rows, hits, mean, 12.25, 5)
                assert loss.tobytes() == np.asarray(want[0], dtype=dtype).tobytes()
                if tally:
                    assert float(loss_sum) == want[1] and int(correct) == want[2]
                else:
                    assert float(loss_sum) == 12.25 and int(correct) == 5
                np.testing.assert_allclose(loss, rows.astype(np.float64).sum() / (n if mean else 1),
                                           rtol=1e-6 if dtype is np.float32 else 1e-14)


# -- batch normalisation ----------------------------------------------------------------------
# (N, C, S, V, F): runs of V values below, equal to and above S, runs not dividing N*S or S,
# V = 1, BatchNorm1d's S = 1; folds of F partials (one fold, two, none); the ops' own V = 32
# (the kernels load 8 values at a time: runs and folds of 8 or more take that path)
BN_CASES = [(5, 3, 7, 4, 3), (5, 3, 7, 11, 2), (2, 2, 16, 1, 4), (9, 4, 1, 3, 2), (4, 2, 25, 7, 32),
            (40, 2, 30, 32, 8)]


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_kernels(dtype, order, rng):
    """The seven kernels of a training (and an evaluation) step, each against kernel_refs.py
    given the previous kernel's outputs: the float64 partial sums and their folds in their
    stated order and everything after them exactly; the statistics and parameter gradients
    also against the textbook float64 formulas, with a channel whose mean is 1e4 times its
    spread."""
    T = dtype
    B = "batchnorm.cu"
    for ci, (n, c, s, v, f) in enumerate(BN_CASES):
        x = randn(rng, (n, c, s), T)
        x[:, 0] += T(1e4)                               # the shift keeps its variance exact
        gamma, beta = randn(rng, c, T) + T(1), randn(rng, c, T)
        rm0, rv0 = randn(rng, c, T), np.abs(randn(rng, c, T)) + T(0.5)
        dout, y = randn(rng, (n, c, s), T), randn(rng, (n, c, s), T)
        y[0, 0, 0] = T(0)                               # the mask's edge: y = 0 passes nothing
        geo = (np.int64(n), np.int32(c), np.int64(s))
        eps, mom = T(1e-5), T(0.1)
        cfg = ci % 2                                    # small grid, or the loader's default
        run = lambda base, work, args: K(B, base, T, order)(*configs(work)[cfg], args)  # noqa: E731

        def folded(part):
            """The forward's and backward's folds, each against the reference -> (part, P)."""
            parts = -(-(n * s) // v)
            while parts > f:
                q = -(-parts // f)
                out = np.full(2 * c * q, np.nan)
                run("batchnorm_fold", c * q, (part, out, np.int32(c), np.int64(parts),
                                              np.int32(f)))
                np.testing.assert_array_equal(out, ref.batchnorm_fold(part, c, parts, f))
                part, parts = out, q
            return part, parts

        for train in (1, 0):
            part, parts = np.full(2, np.nan), 1
            if train:
                part = np.full(2 * c * -(-(n * s) // v), np.nan)
                run("batchnorm_partial_stats", part.size // 2, (x, part, *geo, np.int32(v)))
                np.testing.assert_array_equal(part, ref.batchnorm_partial_stats(x, v))
                part, parts = folded(part)
            stats = [np.full(c, np.nan, T) for _ in range(4)]
            rm, rv = rm0.copy(), rv0.copy()
            run("batchnorm_stats", c, (x, part, gamma, beta, *stats, rm, rv, *geo,
                                       np.int64(parts), eps, mom, np.int32(train)))
            want = ref.batchnorm_stats(x, part, gamma, beta, rm0, rv0, parts, eps, mom, train)
            for got, w in zip(stats + [rm, rv], want):
                np.testing.assert_array_equal(got, w)
            mean, inv_std, scale, shift = stats
            if train:
                x64 = x.astype(np.float64)
                tight = 1e-13 if T == np.float64 else 1e-7
                np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=tight)
                var = (1 / inv_std.astype(np.float64)) ** 2 - float(eps)
                np.testing.assert_allclose(var, x64.var(axis=(0, 2)),
                                           rtol=1e-9 if T == np.float64 else 1e-5)
            for relu in (0, 1):
                out = np.full_like(x, np.nan)
                run("batchnorm_normalise", x.size, (x, scale, shift, out, *geo, np.int32(relu)))
                np.testing.assert_array_equal(out, ref.batchnorm_normalise(x, scale, shift, relu))

                gpart = np.full(2 * c * -(-(n * s) // v), np.nan)
                run("batchnorm_partial_grad", gpart.size // 2, (dout, y, x, mean, gpart, *geo,
                                                                np.int32(v), np.int32(relu)))
                np.testing.assert_array_equal(
                    gpart, ref.batchnorm_partial_grad(dout, y, x, mean, v, relu))
                gpart, gparts = folded(gpart)
                coeffs = [np.full(c, np.nan, T) for _ in range(5)]
                run("batchnorm_grad_coeffs", c, (gpart, gamma, inv_std, *coeffs, *geo,
                                                 np.int64(gparts), np.int32(train)))
                want = ref.batchnorm_grad_coeffs(gpart, gamma, inv_std, n * s, gparts, train)
                for got, w in zip(coeffs, want):
                    np.testing.assert_array_equal(got, w)
                dgamma, dbeta, k, kb1, c2 = coeffs
                dm = dout.astype(np.float64) * ((y > 0) if relu else 1)
                xhat = (x.astype(np.float64) - mean[:, None]) * inv_std[:, None].astype(np.float64)
                loose = 1e-12 if T == np.float64 else 2e-5
                np.testing.assert_allclose(dbeta, dm.sum(axis=(0, 2)), rtol=loose, atol=loose)
                np.testing.assert_allclose(dgamma, (dm * xhat).sum(axis=(0, 2)), rtol=loose,
                                           atol=loose * 10)
                dx = np.full_like(x, np.nan)
                run("batchnorm_backward_dx", x.size, (dout, y, x, mean, k, kb1, c2, dx, *geo,
                                                      np.int32(relu), np.int32(train)))
                np.testing.assert_array_equal(
                    dx, ref.batchnorm_backward_dx(dout, y, x, mean, k, kb1, c2, relu, train))


def test_softmax_xent_bad_label_poisons_its_row(rng):
    z = randn(rng, (4, 5), np.float64)
    labels = np.array([1, -1, 5, 4], dtype=np.int64)
    z[1, 4] = z[2, 4] = 10.0                          # argmax 4: "label" 5 - 1 is no hit
    loss = np.zeros(4)
    hits = np.full(4, -1, dtype=np.int32)
    dz = np.zeros_like(z)
    K("softmax_xent.cu", "softmax_xent", np.float64, "forward")(
        (1,), (8,), (z, labels, loss, hits, dz, np.int32(4), np.int32(5), np.float64(0.25)))
    assert np.isnan(loss[1:3]).all() and np.isnan(dz[1:3]).all()
    assert hits[1] == hits[2] == 0
    good = [0, 3]
    loss_ref, dz_ref = ref.softmax_xent(z[good], labels[good], 0.25)
    np.testing.assert_allclose(loss[good], loss_ref, rtol=1e-13)
    np.testing.assert_allclose(dz[good], dz_ref, rtol=1e-13, atol=1e-16)


# -- optimizers -------------------------------------------------------------------------------
@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd(dtype, order, rng):
    for n in (1, 1001):
        for mu, nesterov, ema, wd in [(0.0, 0, 0, 0.0), (0.0, 0, 0, 0.01), (0.9, 0, 0, 0.0),
                                      (0.9, 1, 0, 5e-4), (0.8, 0, 1, 0.01), (0.5, 1, 1, 0.0)]:
            p0, g, v0 = (randn(rng, n, dtype) for _ in range(3))
            p_ref, v_ref = ref.sgd(p0, g, v0, 0.05, mu, nesterov, wd, ema)
            for grid, block in configs(n):
                p = p0.copy()
                for dyn in ("", "_dyn"):        # _dyn: lr read from device memory
                    lr = np.array([0.05], dtype=dtype) if dyn else dtype(0.05)
                    p = p0.copy()
                    if mu == 0:
                        K("optim.cu", "sgd_update" + dyn, dtype, order)(
                            grid, block, (p, g, np.int64(n), lr, dtype(wd)))
                    else:
                        v = v0.copy()
                        K("optim.cu", "sgd_momentum_update" + dyn, dtype, order)(
                            grid, block, (p, g, v, np.int64(n), lr, dtype(mu), dtype(wd),
                                          np.int32(nesterov), np.int32(ema)))
                        np.testing.assert_array_equal(v, v_ref)
                    np.testing.assert_array_equal(p, p_ref)


@pytest.mark.parametrize("order", RUNS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam(dtype, order, rng):
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    for n in (1, 1001):
        for wd, t in [(0.0, 1), (0.01, 7)]:
            p0, g = randn(rng, n, dtype), randn(rng, n, dtype)
            m0 = randn(rng, n, dtype, 0.1)
            v0 = np.abs(randn(rng, n, dtype, 0.1))
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t          # host float64, then the dtype
            p_ref, m_ref, v_ref = ref.adam(p0, g, m0, v0, lr, b1, b2, eps, wd, bc1, bc2)
            for grid, block in configs(n):
                p, m, v = p0.copy(), m0.copy(), v0.copy()
                K("optim.cu", "adam_update", dtype, order)(
                    grid, block, (p, g, m, v, np.int64(n)) + tuple(
                        dtype(a) for a in (lr, b1, b2, eps, wd, bc1, bc2)))
                np.testing.assert_array_equal(m, m_ref)
                np.testing.assert_array_equal(v, v_ref)
                np.testing.assert_array_equal(p, p_ref)
                # the graph-capturable twin: lr, bc1, bc2 read from device memory
                p, m, v = p0.copy(), m0.copy(), v0.copy()
                dev = [np.array([a], dtype=dtype) for a in (lr, bc1, bc2)]
                K("optim.cu", "adam_update_dyn", dtype, order)(
                    grid, block, (p, g, m, v, np.int64(n), dev[0]) + tuple(
                        dtype(a) for a in (b1, b2, eps, wd)) + (dev[1], dev[2]))
                np.testing.assert_array_equal(m, m_ref)
                np.testing.assert_array_equal(v, v_ref)
                np.testing.assert_array_equal(p, p_ref)


# -- coverage ---------------------------------------------------------------------------------
def test_every_kernel_has_an_emulation_test():
    tested = {(f, f"{base}_{sfx}") for f, bases in TESTED.items() for base in bases
              for sfx in ("f32", "f64")}
    present = set(kernels.all_signatures())
    missing = sorted(present - tested)
    assert not missing, f"kernels with no emulation test (add them to TESTED and a test): {missing}"
    stale = sorted(tested - present)
    assert not stale, f"TESTED names kernels that do not exist: {stale}"
    # and the raw scan agrees with the parser: no __global__ function escapes the list
    for f in kernels.kernel_files():
        src = kernels.kernel_path(f).read_text()
        assert set(kernel_signatures.global_function_names(src)) == set(kernels.signatures(f))


# -- the emulator's own strictness ----------------------------------------------------------------
SELFTEST_CU = r"""
extern "C" __global__ void off_by_one(float* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i <= n;
         i += (long long)blockDim.x * gridDim.x) y[i] = 1.0f;
}
extern "C" __global__ void before_start(float* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) y[i - 1] = 1.0f;
}
extern "C" __global__ void writes_const(const float* x, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) const_cast<float*>(x)[i] = 0.0f;
}
extern "C" __global__ void last_writer_wins(int* y) {
    y[0] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
}
"""
SHARED_CU = r"""
extern "C" __global__ void uses_shared(float* y) {
    __shared__ float buf[32];
    buf[threadIdx.x] = 1.0f;
    y[threadIdx.x] = buf[threadIdx.x];
}
"""


def _fixture_cu(name, text):
    """A test kernel file at a stable path (so its build is cached across runs)."""
    d = cuda_emu.cache_dir() / "test-sources"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.cu"
    if not path.exists():
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def selftest():
    return cuda_emu.load_module(_fixture_cu("selftest", SELFTEST_CU))


no_sanitize = pytest.mark.skipif(SANITIZE, reason="under ASan an out-of-bounds write aborts "
                                 "the process (that is the sanitizer's check)")


@no_sanitize
def test_guard_bytes_catch_write_past_the_end(selftest):
    y = np.zeros(100, np.float32)
    with pytest.raises(GuardError, match=r"off_by_one: out-of-bounds write after argument 0"):
        selftest.get_function("off_by_one")((2,), (32,), (y, np.int64(100)))
    assert (y == 0).all()                      # nothing copied back from a failed launch


@no_sanitize
def test_guard_bytes_catch_write_before_the_start(selftest):
    y = np.zeros(10, np.float32)
    with pytest.raises(GuardError, match=r"before argument 0"):
        selftest.get_function("before_start")((1,), (32,), (y, np.int64(10)))


def test_const_argument_must_not_change(selftest):
    x = np.ones(10, np.float32)
    with pytest.raises(GuardError, match="const"):
        selftest.get_function("writes_const")((1,), (16,), (x, np.int64(10)))


def test_thread_order_shows_races(selftest):
    k = selftest.get_function("last_writer_wins")
    seen = {}
    for order in ORDERS:
        y = np.zeros(1, np.int32)
        k((4,), (8,), (y,), order=order)
        seen[order] = int(y[0])
    assert seen["forward"] == 31 and seen["reverse"] == 0


def test_shared_memory_is_refused():
    with pytest.raises(EmulatorBuildError, match="__shared__ cannot be emulated"):
        cuda_emu.build_library(_fixture_cu("shared", SHARED_CU), sanitize=SANITIZE)


def test_template_global_is_refused():
    src = "template <typename T> __global__ void f(T* y) {}\n"
    with pytest.raises(SignatureError, match="not 'extern"):
        kernel_signatures.parse_source(src, "t.cu")


@pytest.fixture
def relu32():
    return K("elementwise.cu", "relu_forward", np.float32, "forward")


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x, y, 10), r"argument 2 \(long long n\) needs numpy.int64"),
    (lambda x, y: (x, y, np.int32(10)), "needs numpy.int64"),
    (lambda x, y: (x.astype(np.float64), y, np.int64(10)), "needs dtype float32"),
    (lambda x, y: (x[::2], y, np.int64(5)), "C-contiguous"),
    (lambda x, y: (list(x), y, np.int64(10)), "needs an array"),
    (lambda x, y: (x, y), "takes 3 arguments"),
])
def test_argument_types_must_match_exactly(relu32, bad, match):
    x = np.zeros(10, np.float32)
    y = np.zeros(10, np.float32)
    with pytest.raises(ArgumentTypeError, match=match):
        relu32((1,), (32,), bad(x, y))


def test_float_scalar_must_be_the_kernel_dtype():
    k = K("elementwise.cu", "leaky_relu_forward", np.float32, "forward")
    x = np.zeros(4, np.float32)
    with pytest.raises(ArgumentTypeError, match="needs numpy.float32"):
        k((1,), (4,), (x, x, np.int64(4), 0.1))
    with pytest.raises(ArgumentTypeError, match="needs numpy.float32"):
        k((1,), (4,), (x, x, np.int64(4), np.float64(0.1)))


@pytest.mark.parametrize("grid, block, match", [
    (1, (32,), "grid must be a tuple"),
    ((1,), (2048,), "exceeds CUDA's limits"),
    ((0,), (32,), "positive ints"),
    ((1, 70000), (32,), "exceeds CUDA's limits"),
])
def test_launch_shape_is_checked(relu32, grid, block, match):
    x = np.zeros(4, np.float32)
    with pytest.raises(EmulationError, match=match):
        relu32(grid, block, (x, x.copy(), np.int64(4)))


def test_read_only_output_and_partial_overlap_are_refused(relu32):
    x = np.zeros(10, np.float32)
    y = np.zeros(10, np.float32)
    y.flags.writeable = False
    with pytest.raises(ArgumentTypeError, match="read-only"):
        relu32((1,), (32,), (x, y, np.int64(10)))
    buf = np.zeros(20, np.float32)
    with pytest.raises(ArgumentTypeError, match="partly overlap"):
        relu32((1,), (32,), (buf[:10], buf[5:15], np.int64(10)))


def test_emulated_backend_switch_and_marshal():
    from gpunn.backend import NUMPY, backend_of, use_backend
    x = np.linspace(-1, 1, 999)
    assert backend_of(x) is NUMPY
    with emulated_cuda(order="reverse") as b:
        assert backend_of(x) is b and b.kernels and b.xp is np
        k = b.kernel("sgd_momentum_update", np.float32)
        assert isinstance(k._fn, EmulatedKernel) and k._fn.order == "reverse"
        assert k.emulated and k.max_blocks == EMULATION_MAX_BLOCKS
        assert b.kernel("sgd_momentum_update", np.float32) is k            # cached
        with use_backend(NUMPY):
            assert backend_of(x) is NUMPY
        assert backend_of(x) is b
    assert backend_of(x) is NUMPY
    assert kernels.launch_config(10**6, max_blocks=EMULATION_MAX_BLOCKS) == (
        (EMULATION_MAX_BLOCKS,), (kernels.DEFAULT_BLOCK,))
    assert kernels.launch_config(10**7) == ((kernels.MAX_BLOCKS,), (kernels.DEFAULT_BLOCK,))
    assert kernels.launch_config(0) == ((1,), (kernels.DEFAULT_BLOCK,))
    p = np.zeros(3, np.float32)
    args = k.marshal(p, p, p, 3, 0.1, 0.9, 0, True, False)
    assert [type(a) for a in args[3:]] == [np.int64, np.float32, np.float32, np.float32,
                                          np.int32, np.int32]
    with pytest.raises(ArgumentTypeError, match="does not fit"):
        K("im2col.cu", "im2col", np.float32, "forward").marshal(p, p, *([2**31] * 12))
    with pytest.raises(ArgumentTypeError, match="needs an integer, got 2.5"):
        k.marshal(p, p, p, 2.5, 0.1, 0.9, 0, True, False)
    with pytest.raises(ArgumentTypeError, match="takes 9 arguments"):
        k.marshal(p, p)
    with pytest.raises(kernels.KernelError, match="no kernel 'relu'"):
        emulated_kernel("relu", np.float32)
    assert kernels.kernel_name("im2col", np.float64) == "im2col_f64"
    y = np.zeros_like(x)
    k = emulated_kernel("relu_forward", x.dtype, order="shuffle")
    assert k.name == "relu_forward_f64" and k._fn.order == "shuffled"
    k.launch(x.size, x, y, x.size)
    np.testing.assert_array_equal(y, ref.relu(x))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.dtype_suffix(np.int32)
    with pytest.raises(ValueError, match="order must be one of"):
        emulated_cuda(order="sideways").__enter__()


def test_marshal_fast_path_gives_what_the_general_path_gives():
    """Kernel.marshal's fast path (Python ints, bools and floats) converts exactly as the
    general one; NumPy numbers, HostValues and out-of-range values take the general path,
    errors included."""
    from gpunn.graphs import HostValue
    k = K("optim.cu", "sgd_momentum_update", np.float32, "forward")
    p = np.zeros(3, np.float32)
    # (p, g, v, n: int64, lr, mu, wd: float32, nesterov, ema: int32)
    cases = [(p, p, p, 3, 0.1, 0.9, 0.0, True, False),
             (p, p, p, True, 1, -2, 0, 0, 1),                      # ints for floats, bools
             (p, p, p, np.int64(3), np.float64(0.1), np.float32(0.9), 0.0, np.int32(0), 1),
             (p, p, p, 3, HostValue(lambda: 0.25), 0.9, 0.0, 1, 0),
             (p, p, p, 2**63 - 1, 1e30, 0.9, 0.0, 2**31 - 1, -2**31)]
    for vals in cases:
        fast, general = k.marshal(*vals), k._marshal_general(vals)
        assert [type(a) for a in fast] == [type(a) for a in general]
        for a, b in zip(fast, general):
            assert a is b if isinstance(a, np.ndarray) else a.tobytes() == b.tobytes()
    for bad, match in [((p, p, p, 3, 0.1, 0.9, 0.0, 2**31, 0), "does not fit"),
                       ((p, p, p, -1 - 2**63, 0.1, 0.9, 0.0, 0, 0), "does not fit"),
                       ((p, p, p, 3, 0.1, 0.9, 0.0, 0, -1 - 2**31), "does not fit"),
                       ((p, p, p, 2.5, 0.1, 0.9, 0.0, 0, 0), "needs an integer")]:
        with pytest.raises(ArgumentTypeError, match=match):
            k.marshal(*bad)


def test_loader_base_name_dtype_and_launch_counter():
    """kernel_file from the parsed sources, kernel_entry, count_launches."""
    assert kernels.kernel_file("col2im") == "im2col.cu"
    assert kernels.kernel_file("sgd_momentum_update") == "optim.cu"
    with pytest.raises(kernels.KernelError, match="no kernel 'relu'.*relu_forward"):
        kernels.kernel_file("relu")
    file, sig = kernels.kernel_entry("relu_forward", np.dtype(np.float64))
    assert file == "elementwise.cu" and sig.name == "relu_forward_f64"
    x = np.linspace(-2, 2, 777).astype(np.float32)
    y = np.zeros_like(x)
    before = kernels.count_launches().get("relu_forward_f32", 0)
    k = emulated_kernel("relu_forward", np.float32)
    grid, block = kernels.launch_config(x.size)
    k(grid, block, (x, y, np.int64(x.size)))
    np.testing.assert_array_equal(y, ref.relu(x))
    assert kernels.count_launches()["relu_forward_f32"] == before + 1

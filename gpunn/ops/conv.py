"""im2col / col2im for NCHW convolutions: the NumPy body and the CUDA body side by side.

Layout (shared with kernels/im2col.cu):
    col: (C*kh*kw, N*oh*ow); row (c*kh + i)*kw + j, column (n*oh + y)*ow + x
    col[row, col] = x[n, c, y*sy + i - pt, x*sx + j - pl], or 0 outside the image.
``col2im`` is its adjoint: each pixel receives the sum of every col entry that read it.

stride = (sy, sx); pad = (pt, pb, pl, pr): top, bottom, left, right (asymmetric for "same").
"""
from __future__ import annotations


import numpy as np

from ..backend import get_array_module
from . import mkl
from .dispatch import op
from .geometry import conv_output_size, crop_padding, pad_input

__all__ = ["im2col", "col2im", "conv_output", "conv_output_backward", "conv2d_forward",
           "conv2d_backward"]


# -- im2col -------------------------------------------------------------------------------------
def _windows(xpad, kh, kw, sy, sx, oh, ow):
    """A strided view (C, kh, kw, N, oh, ow) of the padded input: no copy, no index arrays."""
    xp = get_array_module(xpad)
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(c, kh, kw, n, oh, ow), strides=(sc, sh, sw, sn, sh * sy, sw * sx))


@op
def im2col(x, kh: int, kw: int, stride: tuple, pad: tuple):
    """x: (N, C, H, W) -> col: (C*kh*kw, N*oh*ow)."""
    n, c, h, w = x.shape
    sy, sx = stride
    oh = conv_output_size(h, kh, sy, pad[0], pad[1])
    ow = conv_output_size(w, kw, sx, pad[2], pad[3])
    xpad = pad_input(get_array_module(x).ascontiguousarray(x), pad)
    # one copy: the view's (C, kh, kw) rows and (N, oh, ow) columns flatten in col's order
    return _windows(xpad, kh, kw, sy, sx, oh, ow).reshape(c * kh * kw, n * oh * ow)


def _geometry(x_shape, kh, kw, stride, pad):
    """The kernels' geometry arguments: (n, c, h, w, kh, kw, sy, sx, pt, pl, oh, ow)."""
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1])
    ow = conv_output_size(w, kw, stride[1], pad[2], pad[3])
    return (n, c, h, w, kh, kw, stride[0], stride[1], pad[0], pad[2], oh, ow)


@im2col.cuda
def _im2col_cuda(b, x, kh, kw, stride, pad):
    """kernels/im2col.cu: one thread per (channel, output pixel) writing its kh*kw rows
    (grid-stride), a gather, no index arrays."""
    x = b.xp.ascontiguousarray(x)
    geo = _geometry(x.shape, kh, kw, stride, pad)
    n, c, oh, ow = geo[0], geo[1], geo[10], geo[11]
    col = b.xp.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    b.kernel("im2col", x.dtype).launch(c * n * oh * ow, x, col, *geo)
    return col


# -- col2im -------------------------------------------------------------------------------------
@op
def col2im(col, x_shape: tuple, kh: int, kw: int, stride: tuple, pad: tuple, out=None):
    """col: (C*kh*kw, N*oh*ow) -> dx: (N, C, H, W), summing overlapping contributions;
    ``out``: a C-contiguous array of dx's shape to write it into."""
    xp = get_array_module(col)
    n, c, h, w = x_shape
    sy, sx = stride
    pt, pb, pl, pr = pad
    oh = conv_output_size(h, kh, sy, pt, pb)
    ow = conv_output_size(w, kw, sx, pl, pr)
    cols = col.reshape(c, kh, kw, n, oh, ow)
    # Accumulate one kernel offset at a time: each (i, j) touches a strided grid of pixels
    # with no repeats, so a plain += on a strided slice is exact (no np.add.at needed).
    dxp = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sy * oh:sy, j:j + sx * ow:sx] += cols[:, i, j].transpose(1, 0, 2, 3)
    dx = crop_padding(dxp, pad, h, w)
    if out is not None:
        out[...] = dx
        return out
    return dx


@col2im.cuda
def _col2im_cuda(b, col, x_shape, kh, kw, stride, pad, out=None):
    """kernels/im2col.cu: one thread per input pixel summing the col entries that read it
    (no atomics)."""
    col = b.xp.ascontiguousarray(col)
    dx = b.xp.empty(tuple(x_shape), dtype=col.dtype) if out is None else out
    b.kernel("col2im", col.dtype).launch(dx.size, col, dx, *_geometry(x_shape, kh, kw, stride, pad))
    return dx


# -- the convolution's output: bias, fused ReLU, NCHW layout ------------------------------------
@op
def conv_output(ycol, b, n: int, oh: int, ow: int, relu: bool = False, out=None):
    """The GEMM's ycol: (O, N*oh*ow) -> y: (N, O, oh, ow), plus the bias b: (O,) (or None),
    then ReLU when ``relu`` (a Conv2d fused with the ReLU after it, gpunn.fuse). ``ycol`` may
    be overwritten; ``out``: a C-contiguous array of y's shape to write y into."""
    o = ycol.shape[0]
    if b is not None:
        ycol += b[:, None]
    y = get_array_module(ycol).ascontiguousarray(ycol.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))
    if relu:
        from .activation import relu_forward
        y = relu_forward(y)
    if out is not None:
        out[...] = y
        return out
    return y


@conv_output.cuda
def _conv_output_cuda(bk, ycol, b, n, oh, ow, relu=False, out=None):
    """kernels/conv_epilogue.cu: one pass (bias, ReLU, layout) instead of three."""
    ycol = bk.xp.ascontiguousarray(ycol)
    o = ycol.shape[0]
    y = bk.xp.empty((n, o, oh, ow), dtype=ycol.dtype) if out is None else out
    bias = ycol if b is None else bk.xp.ascontiguousarray(b)   # unread without a bias
    bk.kernel("conv_output_forward", ycol.dtype).launch(y.size, ycol, bias, y, n, o, oh * ow,
                                                        b is not None, bool(relu))
    return y


@op
def conv_output_backward(dout, y=None):
    """dout: (N, O, oh, ow) -> d: (O, N*oh*ow), the GEMM-side gradient; with the forward's
    output ``y`` (a fused ReLU) masked by y > 0 first."""
    if y is not None:
        from .activation import relu_backward
        dout = relu_backward(dout, y)
    return dout.transpose(1, 0, 2, 3).reshape(dout.shape[1], -1)


@conv_output_backward.cuda
def _conv_output_backward_cuda(bk, dout, y=None):
    dout = bk.xp.ascontiguousarray(dout)
    n, o, oh, ow = dout.shape
    d = bk.xp.empty((o, n * oh * ow), dtype=dout.dtype)
    mask = dout if y is None else bk.xp.ascontiguousarray(y)   # unread without a ReLU
    bk.kernel("conv_output_backward", dout.dtype).launch(d.size, dout, mask, d, n, o, oh * ow,
                                                         y is not None)
    return d


# -- the whole convolution: chunked on the CPU, im2col + GEMM + epilogue on a GPU ---------------
# The CPU bodies work on chunks of samples so that each chunk's im2col block, GEMM output and
# the passes over it stay in cache, and run the chunks on gpunn's thread pool (one BLAS
# thread per chunk). Layout per chunk: col (n, C*kh*kw, oh*ow), one GEMM per sample,
# Wm @ col[i] -> (O, oh*ow), which *is* sample i of the NCHW output: no transposed copy
# either way. Forward keeps only x (backward rebuilds each chunk's col, a copy, cheaper than
# storing N*oh*ow*C*kh*kw values). The weight gradient is summed per chunk and the chunks'
# sums added in chunk order; a chunk's size depends only on the shapes, so the result does not
# depend on the thread count.
CHUNK_BYTES = 512 << 10          # an im2col block per chunk: it and the GEMM output stay in L2
# Bigger blocks where that pays more than cache: on the pool's threads (a chunk of one or two
# samples is too short a region to share; forward only, whose results do not depend on the
# chunks) and for the one-GEMM weight gradient of wide convolutions (a longer reduction
# axis per GEMM; always, so that the sums stay the thread count's equal). Measured on the
# 2-vCPU Xeon (docs/benchmarks/README.md): 16 -> 16 channels, 28x28, batch 100, two threads,
# forward 10.5 -> 5.7 ms, backward 22.3 -> 11.5 ms; 64 -> 64 at 16x16, batch 128, one
# thread, backward 78 -> 68 ms.
PARALLEL_CHUNK_BYTES = 4 << 20
WIDE_CHUNK_BYTES = 4 << 20
MIN_CHUNKS = 8                   # enough chunks to share among the threads
WIDE_K = 128                     # C*kh*kw from which dW is one GEMM per chunk (see backward)
KEEP_COL_BYTES = 16 << 20        # forward keeps an im2col of at most this much for backward


def _samples_per_chunk(n, c, kh, kw, oh, ow, itemsize, chunk_bytes=None):
    per_sample = c * kh * kw * oh * ow * itemsize
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, min(budget // max(per_sample, 1), -(-n // MIN_CHUNKS)))


def _col_chunk(x, lo, hi, kh, kw, stride, pad, oh, ow, rows_first=False, into=None):
    """The (hi - lo, C*kh*kw, oh*ow) im2col block of samples lo..hi of x (written into
    ``into`` when given); rows_first: the (C*kh*kw, (hi - lo)*oh*ow) block (im2col's layout)
    instead."""
    xpad = pad_input(x[lo:hi], pad)
    sn, sc, sh, sw = xpad.strides
    n, c = xpad.shape[:2]
    if into is not None:
        np.copyto(into.reshape(n, c, kh, kw, oh, ow), np.lib.stride_tricks.as_strided(
            xpad, shape=(n, c, kh, kw, oh, ow),
            strides=(sn, sc, sh, sw, sh * stride[0], sw * stride[1])))
        return into
    if rows_first:
        v = np.lib.stride_tricks.as_strided(
            xpad, shape=(c, kh, kw, n, oh, ow),
            strides=(sc, sh, sw, sn, sh * stride[0], sw * stride[1]))
        return v.reshape(c * kh * kw, n * oh * ow)
    v = np.lib.stride_tricks.as_strided(
        xpad, shape=(n, c, kh, kw, oh, ow),
        strides=(sn, sc, sh, sw, sh * stride[0], sw * stride[1]))
    return v.reshape(n, c * kh * kw, oh * ow)


def _one_gemm_per_chunk(Wm, k: int, pixels: int) -> bool:
    """Whether a chunk's product with the (M, k) matrix ``Wm`` runs as one MKL GEMM over the
    chunk's samples and pixels at once, (M, k) @ (k, n * pixels), with the layout change to
    (n, M, pixels) after it, instead of NumPy's matmul broadcast over the samples (one
    OpenBLAS GEMM of M rows per sample). Only for wide rows (k >= WIDE_K) and where MKL
    takes a one-thread product of the dtype (gpunn/ops/mkl.py; GPUNN_BLAS=openblas: never).
    Measured on the 2-vCPU Xeon (docs/benchmarks/README.md): forward 0.63-1.00x and the
    input gradient 0.77-1.02x the time at 16-256 channels, CIFAR sizes; whole resnet20 and
    vgg-cifar steps 0.84-0.96x. MKL computes each output element over k in the same order
    whatever the chunk's width, so the chunking (and the thread count) still leaves every
    bit as it is (tests/test_mkl.py)."""
    # the im2col block is made contiguous, so W stands for both operands in MKL's checks
    return k >= WIDE_K and mkl.handles(Wm, Wm, False, False, None, 1, Wm.shape[0] * k * pixels)


def _chunk_product(Wm, col, n: int):
    """(M, k) @ (k, n * pixels) by MKL (see :func:`_one_gemm_per_chunk`), as an (n, M,
    pixels) view: the caller's write into its (n, M, pixels) block is the layout change."""
    return mkl.gemm(Wm, col).reshape(Wm.shape[0], n, -1).transpose(1, 0, 2)


@op
def conv2d_forward(x, W, b, stride: tuple, pad: tuple, relu: bool = False):
    """x: (N, C, H, W), W: (O, C, kh, kw), b: (O,) or None -> (y (N, O, oh, ow), cache for
    :func:`conv2d_backward`); relu: y = max(conv + b, 0) (a fused Conv2d + ReLU)."""
    from ..threads import parallel_chunks, samples_per_chunk
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1])
    ow = conv_output_size(w, kw, stride[1], pad[2], pad[3])
    Wm = W.reshape(o, -1)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    bias = None if b is None else b[:, None]
    # a small im2col block is kept for backward's weight gradient (its sample-major layout is
    # the one that backward uses below WIDE_K); a big one is rebuilt there, chunk by chunk
    k = c * kh * kw
    keep = np.empty((n, k, oh * ow), dtype=x.dtype) \
        if k < WIDE_K and n * k * oh * ow * x.itemsize <= KEEP_COL_BYTES else None

    one_gemm = keep is None and _one_gemm_per_chunk(Wm, k, oh * ow)

    def chunk(lo, hi):
        yc = y[lo:hi].reshape(hi - lo, o, oh * ow)
        if one_gemm:
            col = _col_chunk(x, lo, hi, kh, kw, stride, pad, oh, ow, rows_first=True)
            yt = _chunk_product(Wm, col, hi - lo)
            if bias is not None:
                np.add(yt, bias, out=yc)
            else:
                yc[...] = yt
        else:
            col = _col_chunk(x, lo, hi, kh, kw, stride, pad, oh, ow,
                             into=None if keep is None else keep[lo:hi])
            np.matmul(Wm, col, out=yc)
            if bias is not None:
                yc += bias
        if relu:
            np.maximum(yc, 0, out=yc)
    work = n * o * c * kh * kw * oh * ow
    per = samples_per_chunk(n, c * kh * kw * oh * ow * x.itemsize, CHUNK_BYTES,
                            PARALLEL_CHUNK_BYTES, work, at_most=-(-n // MIN_CHUNKS))
    parallel_chunks(chunk, n, per, work=work)
    return y, ("x", x, keep)


@conv2d_forward.cuda
def _conv2d_forward_cuda(bk, x, W, b, stride, pad, relu=False):
    from .gemm import gemm
    n, _, h, w = x.shape
    o, _, kh, kw = W.shape
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1])
    ow = conv_output_size(w, kw, stride[1], pad[2], pad[3])
    Wm = W.reshape(o, -1)
    # The cache keeps x, not col: col is kh*kw times x's size (resnet20 at batch 128 kept
    # ~0.8 GB of them between forward and backward) and backward rebuilds it with one im2col
    # pass; x is usually held anyway (the layer before keeps its output for its own backward)
    y = None
    step = _gpu_chunk(x, kh, kw, oh, ow)
    for lo in range(0, n, step):              # the whole batch, or pieces of `step` samples
        hi = min(n, lo + step)
        col = im2col(x[lo:hi], kh, kw, stride, pad)            # (C*kh*kw, n*oh*ow)
        ycol = gemm(Wm, col)                                   # (O, n*oh*ow)
        del col
        if y is None:                         # allocated once col is gone
            y = bk.xp.empty((n, o, oh, ow), dtype=x.dtype)
        # + b, (ReLU), the layout change to (n, O, oh, ow): one pass (kernels/conv_epilogue.cu)
        conv_output(ycol, b, hi - lo, oh, ow, relu, out=y[lo:hi])
        del ycol
    return y, ("x", x, tuple(x.shape))


GPU_COL_BYTES = 128 << 20   # the largest im2col matrix the CUDA bodies build at once


def _gpu_chunk(x, kh, kw, oh, ow) -> int:
    """Samples per im2col matrix on a GPU: all of them, unless col would pass GPU_COL_BYTES
    (vgg-cifar's 64 -> 64 convolution at 32x32, batch 128: 302 MB in one piece; cuDNN's
    implicit GEMM needs none). Each further piece costs its launches: im2col, GEMM, output
    pass forward; im2col, layout, two GEMMs, col2im and two small sums backward."""
    per_sample = x.shape[1] * kh * kw * oh * ow * x.dtype.itemsize
    return max(1, GPU_COL_BYTES // max(1, per_sample))


@op
def conv2d_backward(dout, cache, W, stride: tuple, pad: tuple, bias: bool, y_relu=None,
                    input_grad: bool = True, out=None):
    """dout: (N, O, oh, ow) -> (dx (N, C, H, W) or None without ``input_grad``, dW like W,
    db (O,) or None without ``bias``). ``y_relu``: the forward's output when it fused a ReLU
    (dout is then masked by y > 0 first). ``out``: (dW, db or None) arrays to write the
    parameter gradients into (a layer's gradient buffers), returned as they are."""
    from ..threads import parallel_chunks
    x = cache[1]
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    oh, ow = dout.shape[2:]
    Wm = W.reshape(o, -1)
    dx = np.empty_like(x) if input_grad else None
    sy, sx = stride
    pt, pb, pl, pr = pad
    # stride 1: dx is the convolution of dout with W flipped and transposed (C, O, kh, kw),
    # padded by kernel - 1 - pad: an im2col gather of dout and one GEMM per sample, much
    # cheaper than scattering the GEMM's columns back (col2im's kh*kw strided adds)
    # (col2im wins when the input has far fewer channels than the output: the first layer)
    tpad = (kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr)
    transposed = input_grad and stride == (1, 1) and min(tpad) >= 0 and o <= 2 * c
    # a long weight-gradient row (C*kh*kw >= WIDE_K): one GEMM over the chunk, the chunk's
    # samples and pixels on its reduction axis, beats a GEMM per sample by ~15% (measured:
    # 20 vs 25 ms at 16 -> 16 channels, 32x32, batch 128; below, at 8 -> 8, 14x14, batch 100,
    # 1.7 vs 1.3 ms the other way)
    wide = c * kh * kw >= WIDE_K
    kept = cache[2] if len(cache) > 2 else None
    if transposed:
        Wt = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(c, -1)
    dx_one_gemm = transposed and _one_gemm_per_chunk(Wt, o * kh * kw, h * w)

    def chunk(lo, hi):
        d = dout[lo:hi]
        if y_relu is not None:
            d = d * (y_relu[lo:hi] > 0)
        d = np.ascontiguousarray(d)
        d3 = d.reshape(hi - lo, o, oh * ow)
        if wide:
            col = _col_chunk(x, lo, hi, kh, kw, stride, pad, oh, ow, rows_first=True)
            dW = (col @ d3.transpose(1, 0, 2).reshape(o, -1).T).T          # (O, C*kh*kw)
        else:
            col = kept[lo:hi] if kept is not None else \
                _col_chunk(x, lo, hi, kh, kw, stride, pad, oh, ow)
            dW = np.matmul(d3, col.transpose(0, 2, 1)).sum(axis=0)
        db = d3.sum(axis=2).sum(axis=0) if bias else None
        if transposed and dx_one_gemm:
            dcol = _col_chunk(d, 0, hi - lo, kh, kw, (1, 1), tpad, h, w, rows_first=True)
            dx[lo:hi].reshape(hi - lo, c, h * w)[...] = _chunk_product(Wt, dcol, hi - lo)
        elif transposed:
            dcol = _col_chunk(d, 0, hi - lo, kh, kw, (1, 1), tpad, h, w)  # (n, O*kh*kw, H*W)
            np.matmul(Wt, dcol, out=dx[lo:hi].reshape(hi - lo, c, h * w))
        elif input_grad:
            dcol = np.matmul(Wm.T, d3).reshape(hi - lo, c, kh, kw, oh, ow)
            dxp = np.zeros((hi - lo, c, h + pt + pb, w + pl + pr), dtype=x.dtype)
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, i:i + sy * oh:sy, j:j + sx * ow:sx] += dcol[:, :, i, j]
            dx[lo:hi] = dxp[:, :, pt:pt + h, pl:pl + w]
        return dW, db
    macs = n * o * c * kh * kw * oh * ow                 # per GEMM: dW, and dx if asked for
    parts = parallel_chunks(chunk, n, _samples_per_chunk(
        n, c, kh, kw, oh, ow, x.itemsize, WIDE_CHUNK_BYTES if wide else CHUNK_BYTES),
        work=macs * (2 if input_grad else 1))
    dW = parts[0][0]
    for p in parts[1:]:
        dW += p[0]
    db = None
    if bias:
        db = parts[0][1]
        for p in parts[1:]:
            db += p[1]
    dW = dW.reshape(W.shape)
    return (dx,) + _written(out, dW, db)


def _written(out, dW, db) -> tuple:
    """(dW, db), copied into ``out``'s arrays when given."""
    if out is None:
        return dW, db
    out[0][...] = dW
    if db is not None:
        out[1][...] = db
    return out[0], (out[1] if db is not None else None)


@conv2d_backward.cuda
def _conv2d_backward_cuda(bk, dout, cache, W, stride, pad, bias, y_relu=None, input_grad=True,
                          out=None):
    """col rebuilt from the cached x, the whole batch or pieces of samples (_gpu_chunk): dW =
    d @ col.T in W's own layout, so the GEMM writes straight into out's dW (no transposing
    copy; the long N*oh*ow axis is contiguous in both operands), db reduced into out's db,
    both summed over the pieces; dx written piece by piece."""
    from .gemm import gemm
    xp = bk.xp
    x = cache[1]
    n = x.shape[0]
    o, c, kh, kw = W.shape
    Wm = W.reshape(o, -1)
    step = _gpu_chunk(x, kh, kw, *dout.shape[2:])
    dWm = out[0].reshape(o, -1) if out is not None else xp.empty(Wm.shape, dtype=W.dtype)
    db = None
    if bias:
        db = out[1] if out is not None else xp.empty(o, dtype=W.dtype)
    dx = None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        col = im2col(x[lo:hi], kh, kw, stride, pad)             # (C*kh*kw, n*oh*ow)
        d = conv_output_backward(dout[lo:hi], None if y_relu is None else y_relu[lo:hi])
        if lo == 0:
            gemm(d, col, transb=True, out=dWm)
        else:
            dWm += gemm(d, col, transb=True)
        del col                               # back to the pool before dcol, its own size
        if bias:
            if lo == 0:
                d.sum(axis=1, out=db)
            else:
                db += d.sum(axis=1)
        if not input_grad:
            del d
            continue
        dcol = gemm(Wm, d, transa=True)                         # Wm.T @ d
        del d                                 # each piece's buffers go as soon as they can
        if dx is None:
            dx = xp.empty(x.shape, dtype=x.dtype)
        col2im(dcol, (hi - lo,) + tuple(x.shape[1:]), kh, kw, stride, pad, out=dx[lo:hi])
        del dcol
    return dx, dWm.reshape(W.shape), db

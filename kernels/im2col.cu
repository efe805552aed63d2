// im2col / col2im for NCHW convolutions (docs/CONVENTIONS.md, "im2col").
//
//   x: (N, C, H, W);  col: (C*kh*kw, N*oh*ow), row (c*kh + i)*kw + j, column (n*oh + y)*ow + x
//   col[row, column] = x[n, c, y*sy + i - pt, x*sx + j - pl], or 0 outside the image.
//
// pb and pr are implied by oh and ow (computed on the host: oh = (H + pt + pb - kh) / sy + 1).
// col2im is the adjoint in gather form: one thread per input pixel sums, in (i, j) row-major
// order, every col entry that read it. No atomics, so the result does not depend on thread
// order, and the summation order is the NumPy body's (one kernel offset at a time).
// Flat indices are 64-bit: C*kh*kw * N*oh*ow passes 2**31 at realistic sizes.
//
// Integer division is the expensive part of these gathers on a GPU: a 64-bit one is a
// subroutine (nvcc's fast path, when both operands fit in 32 bits, is still ~20 instructions)
// against a few for a load or a store. So im2col runs one thread per (c, n, yo, xo), which
// decomposes its position once (three divisions) and writes all kh*kw rows of its column,
// instead of one thread per col entry and seven divisions each; consecutive threads still
// write consecutive columns of each row, so the stores of a warp stay coalesced. col2im finds
// the windows that read its pixel with one division per axis: along rows, i runs up from
// (h + pt) % sy in steps of sy while yo = (h + pt - i) / sy counts down from (h + pt) / sy;
// the same i, yo pairs and the same order as testing i = 0..kh-1 for (h + pt - i) % sy == 0,
// without a division per (i, j).

template <typename T>
__device__ __forceinline__ void im2col(const T* x, T* col, int N, int C, int H, int W, int kh,
                                       int kw, int sy, int sx, int pt, int pl, int oh, int ow) {
    const long long ncols = (long long)N * oh * ow;
    const long long total = (long long)C * ncols;           // (c, column) pairs
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long c = idx / ncols;
        const long long column = idx - c * ncols;           // (n*oh + yo)*ow + xo
        const long long ny = column / ow;                   // n*oh + yo
        const int xo = (int)(column - ny * ow);
        const long long n = ny / oh;
        const int yo = (int)(ny - n * oh);
        const T* xs = x + (n * C + c) * H * W;
        T* out = col + c * kh * kw * ncols + column;        // row c*kh*kw, then + ncols per row
        const int h0 = yo * sy - pt;
        const int w0 = xo * sx - pl;
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
            const bool row_in = h >= 0 && h < H;
            for (int j = 0; j < kw; ++j, out += ncols) {
                const int w = w0 + j;
                *out = (row_in && w >= 0 && w < W) ? xs[(long long)h * W + w] : T(0);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void col2im(const T* col, T* dx, int N, int C, int H, int W, int kh,
                                       int kw, int sy, int sx, int pt, int pl, int oh, int ow) {
    const long long ncols = (long long)N * oh * ow;
    const long long total = (long long)N * C * H * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long nch = idx / W;                      // (n*C + c)*H + h
        const int w = (int)(idx - nch * W);
        const long long nc = nch / H;
        const int h = (int)(nch - nc * H);
        const long long n = nc / C;
        const long long c = nc - n * C;
        const int hq = (h + pt) / sy, hr = (h + pt) - hq * sy;   // pt, pl >= 0 (the host's)
        const int wq = (w + pl) / sx, wr = (w + pl) - wq * sx;
        const T* cs = col + c * kh * kw * ncols + n * oh * ow;   // row c*kh*kw, sample n
        T acc = T(0);
        for (int i = hr, yo = hq; i < kh && yo >= 0; i += sy, --yo) {
            if (yo >= oh) continue;
            for (int j = wr, xo = wq; j < kw && xo >= 0; j += sx, --xo) {
                if (xo >= ow) continue;
                acc += cs[((long long)i * kw + j) * ncols + (long long)yo * ow + xo];
            }
        }
        dx[idx] = acc;
    }
}

extern "C" __global__ void im2col_f32(const float* x, float* col, int N, int C, int H, int W,
                                      int kh, int kw, int sy, int sx, int pt, int pl, int oh,
                                      int ow) {
    im2col<float>(x, col, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
extern "C" __global__ void im2col_f64(const double* x, double* col, int N, int C, int H, int W,
                                      int kh, int kw, int sy, int sx, int pt, int pl, int oh,
                                      int ow) {
    im2col<double>(x, col, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
extern "C" __global__ void col2im_f32(const float* col, float* dx, int N, int C, int H, int W,
                                      int kh, int kw, int sy, int sx, int pt, int pl, int oh,
                                      int ow) {
    col2im<float>(col, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
extern "C" __global__ void col2im_f64(const double* col, double* dx, int N, int C, int H, int W,
                                      int kh, int kw, int sy, int sx, int pt, int pl, int oh,
                                      int ow) {
    col2im<double>(col, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}

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

template <typename T>
__device__ __forceinline__ void im2col(const T* x, T* col, int N, int C, int H, int W, int kh,
                                       int kw, int sy, int sx, int pt, int pl, int oh, int ow) {
    const long long ncols = (long long)N * oh * ow;
    const long long total = (long long)C * kh * kw * ncols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long row = idx / ncols;
        const long long column = idx - row * ncols;
        const int j = (int)(row % kw);
        const int i = (int)((row / kw) % kh);
        const int c = (int)(row / ((long long)kw * kh));
        const int xo = (int)(column % ow);
        const int yo = (int)((column / ow) % oh);
        const int n = (int)(column / ((long long)ow * oh));
        const int h = yo * sy + i - pt;
        const int w = xo * sx + j - pl;
        T v = T(0);
        if (h >= 0 && h < H && w >= 0 && w < W) {
            v = x[(((long long)n * C + c) * H + h) * W + w];
        }
        col[idx] = v;
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
        const int w = (int)(idx % W);
        const int h = (int)((idx / W) % H);
        const int c = (int)((idx / ((long long)W * H)) % C);
        const int n = (int)(idx / ((long long)W * H * C));
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            const int hp = h + pt - i;               // = yo * sy for the window that reads (h, w)
            if (hp < 0 || hp % sy != 0) continue;
            const int yo = hp / sy;
            if (yo >= oh) continue;
            for (int j = 0; j < kw; ++j) {
                const int wp = w + pl - j;
                if (wp < 0 || wp % sx != 0) continue;
                const int xo = wp / sx;
                if (xo >= ow) continue;
                const long long row = ((long long)c * kh + i) * kw + j;
                const long long column = ((long long)n * oh + yo) * ow + xo;
                acc += col[row * ncols + column];
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

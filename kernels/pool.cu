// Max and average pooling over NCHW (docs/CONVENTIONS.md, "maxpool2d" / "avgpool2d").
//
//   x: (N, C, H, W) -> out: (N, C, oh, ow); window (y, x) starts at (y*sy - pt, x*sx - pl).
//   max: padding acts as -inf; argmax (int32) = h*W + w in the unpadded plane of that (n, c);
//        ties go to the first maximum in row-major window order; a NaN makes the output NaN
//        and leaves argmax at the last maximum before it (as the NumPy body's maximum / `>`).
//   avg: mean over in-bounds pixels (count_include_pad = 0) or sum / (kh*kw) (= 1).
// Backward kernels run one thread per INPUT pixel and gather, in (i, j) row-major order, the
// gradient of every window that covers it: no atomics, so the result does not depend on
// thread order, and the summation order is the NumPy body's.
// windows(): the windows that cover input row h are found with one division per axis, not
// one per (i, j) (integer division is a slow, many-instruction sequence on a GPU): i runs up
// from (h + pt) % sy in steps of sy while yo = (h + pt - i) / sy counts down from
// (h + pt) / sy, stopping below 0; yo >= oh is skipped. The same (i, yo) pairs, in the same
// order, as testing every i for (h + pt - i) % sy == 0 (kernels/im2col.cu's col2im does the
// same).

__device__ __forceinline__ float pl_neg_inf(float) { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ double pl_neg_inf(double) {
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

// -- max pooling ------------------------------------------------------------------------------

// RELU: the fused ReLU + max-pool (gpunn.fuse): every in-bounds pixel is read as
// relu(x) = x > 0 || x != x ? x : 0 (padding stays -inf), so output and argmax (ties included:
// the negatives all become 0) are those of max-pooling relu_forward's output.
template <typename T, bool WITH_ARGMAX, bool RELU = false>
__device__ __forceinline__ void maxpool2d_forward(const T* x, T* out, int* argmax, int N, int C,
                                                  int H, int W, int kh, int kw, int sy, int sx,
                                                  int pt, int pl, int oh, int ow) {
    const long long total = (long long)N * C * oh * ow;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const int xo = (int)(idx % ow);
        const int yo = (int)((idx / ow) % oh);
        const long long plane = idx / ((long long)ow * oh);       // n*C + c
        const T* xs = x + plane * H * W;
        const int h0 = yo * sy - pt;
        const int w0 = xo * sx - pl;
        T best = T(0);
        int best_k = 0;
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j;
                T v = (h >= 0 && h < H && w >= 0 && w < W) ? xs[(long long)h * W + w]
                                                           : pl_neg_inf(T(0));
                if (RELU && h >= 0 && h < H && w >= 0 && w < W) {
                    v = (v > T(0) || v != v) ? v : T(0);
                }
                if (i == 0 && j == 0) {
                    best = v;
                } else if (v > best) {
                    best = v;
                    best_k = i * kw + j;
                } else if (v != v) {
                    best = v;                       // NaN propagates; argmax stays put
                }
            }
        }
        out[idx] = best;
        if (WITH_ARGMAX) {
            argmax[idx] = (h0 + best_k / kw) * W + (w0 + best_k % kw);
        }
    }
}

// dout, argmax: (N, C, oh, ow) -> dx: (N, C, H, W). RELU (the fused ReLU + max-pool): the
// gathered sum is then multiplied as relu_backward does, by (x > 0 ? 1 : 0) with x the
// pre-activation input, so dx is bit for bit relu_backward(maxpool2d_backward(...), x).
template <typename T, bool RELU = false>
__device__ __forceinline__ void maxpool2d_backward(const T* dout, const int* argmax, const T* x,
                                                   T* dx, int N, int C, int H, int W, int kh,
                                                   int kw, int sy, int sx, int pt, int pl,
                                                   int oh, int ow) {
    const long long total = (long long)N * C * H * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long plane_h = idx / W;                  // plane*H + h
        const int w = (int)(idx - plane_h * W);
        const long long plane = plane_h / H;                // n*C + c
        const int h = (int)(plane_h - plane * H);
        const long long obase = plane * oh * ow;
        const int me = h * W + w;
        const int hq = (h + pt) / sy, hr = (h + pt) - hq * sy;   // windows(): see the top
        const int wq = (w + pl) / sx, wr = (w + pl) - wq * sx;
        T acc = T(0);
        for (int i = hr, yo = hq; i < kh && yo >= 0; i += sy, --yo) {
            if (yo >= oh) continue;
            for (int j = wr, xo = wq; j < kw && xo >= 0; j += sx, --xo) {
                if (xo >= ow) continue;
                const long long o = obase + (long long)yo * ow + xo;
                if (argmax[o] == me) acc += dout[o];
            }
        }
        if (RELU) acc = acc * (x[idx] > T(0) ? T(1) : T(0));
        dx[idx] = acc;
    }
}

extern "C" __global__ void maxpool2d_forward_f32(const float* x, float* out, int* argmax, int N,
                                                 int C, int H, int W, int kh, int kw, int sy,
                                                 int sx, int pt, int pl, int oh, int ow) {
    maxpool2d_forward<float, true>(x, out, argmax, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
extern "C" __global__ void maxpool2d_forward_f64(const double* x, double* out, int* argmax, int N,
                                                 int C, int H, int W, int kh, int kw, int sy,
                                                 int sx, int pt, int pl, int oh, int ow) {
    maxpool2d_forward<double, true>(x, out, argmax, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
// Evaluation: the same maximum, no argmax written.
extern "C" __global__ void maxpool2d_forward_noargmax_f32(const float* x, float* out, int N,
                                                          int C, int H, int W, int kh, int kw,
                                                          int sy, int sx, int pt, int pl, int oh,
                                                          int ow) {
    maxpool2d_forward<float, false>(x, out, nullptr, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow);
}
extern "C" __global__ void maxpool2d_forward_noargmax_f64(const double* x, double* out, int N,
                                                          int C, int H, int W, int kh, int kw,
                                                          int sy, int sx, int pt, int pl, int oh,
                                                          int ow) {
    maxpool2d_forward<double, false>(x, out, nullptr, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                                     ow);
}
extern "C" __global__ void maxpool2d_backward_f32(const float* dout, const int* argmax, float* dx,
                                                  int N, int C, int H, int W, int kh, int kw,
                                                  int sy, int sx, int pt, int pl, int oh,
                                                  int ow) {
    maxpool2d_backward<float>(dout, argmax, nullptr, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                              ow);
}
extern "C" __global__ void maxpool2d_backward_f64(const double* dout, const int* argmax,
                                                  double* dx, int N, int C, int H, int W, int kh,
                                                  int kw, int sy, int sx, int pt, int pl, int oh,
                                                  int ow) {
    maxpool2d_backward<double>(dout, argmax, nullptr, dx, N, C, H, W, kh, kw, sy, sx, pt, pl,
                               oh, ow);
}

// -- fused ReLU + max pooling (gpunn.fuse: a ReLU followed by a MaxPool2d) --------------------
extern "C" __global__ void relu_maxpool2d_forward_f32(const float* x, float* out, int* argmax,
                                                      int N, int C, int H, int W, int kh, int kw,
                                                      int sy, int sx, int pt, int pl, int oh,
                                                      int ow) {
    maxpool2d_forward<float, true, true>(x, out, argmax, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                                         ow);
}
extern "C" __global__ void relu_maxpool2d_forward_f64(const double* x, double* out, int* argmax,
                                                      int N, int C, int H, int W, int kh, int kw,
                                                      int sy, int sx, int pt, int pl, int oh,
                                                      int ow) {
    maxpool2d_forward<double, true, true>(x, out, argmax, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                                          ow);
}
extern "C" __global__ void relu_maxpool2d_forward_noargmax_f32(const float* x, float* out, int N,
                                                               int C, int H, int W, int kh,
                                                               int kw, int sy, int sx, int pt,
                                                               int pl, int oh, int ow) {
    maxpool2d_forward<float, false, true>(x, out, nullptr, N, C, H, W, kh, kw, sy, sx, pt, pl,
                                          oh, ow);
}
extern "C" __global__ void relu_maxpool2d_forward_noargmax_f64(const double* x, double* out,
                                                               int N, int C, int H, int W, int kh,
                                                               int kw, int sy, int sx, int pt,
                                                               int pl, int oh, int ow) {
    maxpool2d_forward<double, false, true>(x, out, nullptr, N, C, H, W, kh, kw, sy, sx, pt, pl,
                                           oh, ow);
}
extern "C" __global__ void relu_maxpool2d_backward_f32(const float* dout, const int* argmax,
                                                       const float* x, float* dx, int N, int C,
                                                       int H, int W, int kh, int kw, int sy,
                                                       int sx, int pt, int pl, int oh, int ow) {
    maxpool2d_backward<float, true>(dout, argmax, x, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                                    ow);
}
extern "C" __global__ void relu_maxpool2d_backward_f64(const double* dout, const int* argmax,
                                                       const double* x, double* dx, int N, int C,
                                                       int H, int W, int kh, int kw, int sy,
                                                       int sx, int pt, int pl, int oh, int ow) {
    maxpool2d_backward<double, true>(dout, argmax, x, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh,
                                     ow);
}

// -- average pooling --------------------------------------------------------------------------

// The divisor of window (yo, xo): kh*kw, or its in-bounds pixel count (as the NumPy body:
// (min(h0+kh, H) - max(h0, 0)) * (min(w0+kw, W) - max(w0, 0))).
template <typename T>
__device__ __forceinline__ T avg_divisor(int h0, int w0, int H, int W, int kh, int kw,
                                         int count_include_pad) {
    if (count_include_pad) return T(kh * kw);
    const int rows = (h0 + kh < H ? h0 + kh : H) - (h0 > 0 ? h0 : 0);
    const int cols = (w0 + kw < W ? w0 + kw : W) - (w0 > 0 ? w0 : 0);
    return T(rows * cols);
}

template <typename T>
__device__ __forceinline__ void avgpool2d_forward(const T* x, T* out, int N, int C, int H, int W,
                                                  int kh, int kw, int sy, int sx, int pt, int pl,
                                                  int oh, int ow, int count_include_pad) {
    const long long total = (long long)N * C * oh * ow;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const int xo = (int)(idx % ow);
        const int yo = (int)((idx / ow) % oh);
        const long long plane = idx / ((long long)ow * oh);
        const T* xs = x + plane * H * W;
        const int h0 = yo * sy - pt;
        const int w0 = xo * sx - pl;
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                acc += xs[(long long)h * W + w];
            }
        }
        out[idx] = acc / avg_divisor<T>(h0, w0, H, W, kh, kw, count_include_pad);
    }
}

// dout: (N, C, oh, ow) -> dx: (N, C, H, W); each window shares dout / divisor with its pixels.
template <typename T>
__device__ __forceinline__ void avgpool2d_backward(const T* dout, T* dx, int N, int C, int H,
                                                   int W, int kh, int kw, int sy, int sx, int pt,
                                                   int pl, int oh, int ow,
                                                   int count_include_pad) {
    const long long total = (long long)N * C * H * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long plane_h = idx / W;                  // plane*H + h
        const int w = (int)(idx - plane_h * W);
        const long long plane = plane_h / H;                // n*C + c
        const int h = (int)(plane_h - plane * H);
        const long long obase = plane * oh * ow;
        const int hq = (h + pt) / sy, hr = (h + pt) - hq * sy;   // windows(): see the top
        const int wq = (w + pl) / sx, wr = (w + pl) - wq * sx;
        T acc = T(0);
        for (int i = hr, yo = hq; i < kh && yo >= 0; i += sy, --yo) {
            if (yo >= oh) continue;
            for (int j = wr, xo = wq; j < kw && xo >= 0; j += sx, --xo) {
                if (xo >= ow) continue;
                const T div = avg_divisor<T>(yo * sy - pt, xo * sx - pl, H, W, kh, kw,
                                             count_include_pad);
                acc += dout[obase + (long long)yo * ow + xo] / div;
            }
        }
        dx[idx] = acc;
    }
}

extern "C" __global__ void avgpool2d_forward_f32(const float* x, float* out, int N, int C, int H,
                                                 int W, int kh, int kw, int sy, int sx, int pt,
                                                 int pl, int oh, int ow, int count_include_pad) {
    avgpool2d_forward<float>(x, out, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow,
                             count_include_pad);
}
extern "C" __global__ void avgpool2d_forward_f64(const double* x, double* out, int N, int C,
                                                 int H, int W, int kh, int kw, int sy, int sx,
                                                 int pt, int pl, int oh, int ow,
                                                 int count_include_pad) {
    avgpool2d_forward<double>(x, out, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow,
                              count_include_pad);
}
extern "C" __global__ void avgpool2d_backward_f32(const float* dout, float* dx, int N, int C,
                                                  int H, int W, int kh, int kw, int sy, int sx,
                                                  int pt, int pl, int oh, int ow,
                                                  int count_include_pad) {
    avgpool2d_backward<float>(dout, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow,
                              count_include_pad);
}
extern "C" __global__ void avgpool2d_backward_f64(const double* dout, double* dx, int N, int C,
                                                  int H, int W, int kh, int kw, int sy, int sx,
                                                  int pt, int pl, int oh, int ow,
                                                  int count_include_pad) {
    avgpool2d_backward<double>(dout, dx, N, C, H, W, kh, kw, sy, sx, pt, pl, oh, ow,
                               count_include_pad);
}

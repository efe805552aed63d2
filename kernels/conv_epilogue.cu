// The convolution's epilogue: bias, an optional fused ReLU, and the layout change from the
// GEMM's (O, N*P) to NCHW (N, O, P), in one pass each way (docs/CONVENTIONS.md, "conv_output").
//
//   forward:  y[n, o, p] = act(ycol[o, n*P + p] + b[o])      (b only when has_bias)
//             act = ReLU when relu: v > 0 || v != v ? v : 0 (NaN stays NaN, as relu_forward)
//   backward: d[o, n*P + p] = dout[n, o, p] * (relu ? (y[n, o, p] > 0 ? 1 : 0) : 1)
//             y is the forward's output (y > 0 exactly where the pre-activation was > 0)
//
// The NumPy body computes the same: y += b[:, None] on the GEMM output, the transposed copy,
// np.maximum(y, 0); backward dout * (y > 0) and the transposed copy. So results agree bit for
// bit with the unfused Conv2d + ReLU. P = oh*ow. Pure gathers: no atomics, any thread order.

template <typename T>
__device__ __forceinline__ void conv_output_forward(const T* ycol, const T* b, T* y, int N, int O,
                                                    long long P, int has_bias, int relu) {
    const long long total = (long long)N * O * P;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long p = idx % P;
        const long long no = idx / P;                // n*O + o
        const int o = (int)(no % O);
        const long long n = no / O;
        T v = ycol[(long long)o * N * P + n * P + p];
        if (has_bias) v = v + b[o];
        if (relu) v = (v > T(0) || v != v) ? v : T(0);
        y[idx] = v;
    }
}

template <typename T>
__device__ __forceinline__ void conv_output_backward(const T* dout, const T* y, T* d, int N,
                                                     int O, long long P, int relu) {
    const long long total = (long long)N * O * P;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long np_ = (long long)N * P;
        const int o = (int)(idx / np_);
        const long long r = idx % np_;               // n*P + p
        const long long n = r / P;
        const long long p = r % P;
        const long long src = (n * O + o) * P + p;
        T g = dout[src];
        if (relu) g = g * (y[src] > T(0) ? T(1) : T(0));
        d[idx] = g;
    }
}

extern "C" __global__ void conv_output_forward_f32(const float* ycol, const float* b, float* y,
                                                   int N, int O, long long P, int has_bias,
                                                   int relu) {
    conv_output_forward<float>(ycol, b, y, N, O, P, has_bias, relu);
}
extern "C" __global__ void conv_output_forward_f64(const double* ycol, const double* b,
                                                   double* y, int N, int O, long long P,
                                                   int has_bias, int relu) {
    conv_output_forward<double>(ycol, b, y, N, O, P, has_bias, relu);
}
extern "C" __global__ void conv_output_backward_f32(const float* dout, const float* y, float* d,
                                                    int N, int O, long long P, int relu) {
    conv_output_backward<float>(dout, y, d, N, O, P, relu);
}
extern "C" __global__ void conv_output_backward_f64(const double* dout, const double* y,
                                                    double* d, int N, int O, long long P,
                                                    int relu) {
    conv_output_backward<double>(dout, y, d, N, O, P, relu);
}

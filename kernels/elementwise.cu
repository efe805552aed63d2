// Element-wise activations, forward and backward.
// Semantics: docs/CONVENTIONS.md ("Elementwise"); kernel list and call shapes: docs/KERNELS.md.
//
// Every entry point is `extern "C"`, one per dtype (suffix _f32 / _f64), and forwards to a
// __device__ template body. Loops are grid-stride with 64-bit indices, so any grid covers any n.
// No __restrict__: the ops may call these in place (y is x, dx is dout).

template <typename T> __device__ __forceinline__ T ew_exp(T x);
template <> __device__ __forceinline__ float ew_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double ew_exp<double>(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T ew_tanh(T x);
template <> __device__ __forceinline__ float ew_tanh<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ double ew_tanh<double>(double x) { return tanh(x); }

__device__ __forceinline__ long long ew_first() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long ew_stride() {
    return (long long)blockDim.x * gridDim.x;
}

// -- ReLU: y = x > 0 ? x : 0 (NaN stays NaN, as np.maximum and PyTorch);  dx = dout * (x > 0) --

template <typename T>
__device__ __forceinline__ void relu_forward(const T* x, T* y, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = x[i];
        y[i] = (v > T(0) || v != v) ? v : T(0);    // v != v: NaN propagates, never hidden
    }
}

// x may be the forward's input or its output y (x > 0 exactly where y > 0).
template <typename T>
__device__ __forceinline__ void relu_backward(const T* dout, const T* x, T* dx, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        dx[i] = dout[i] * (x[i] > T(0) ? T(1) : T(0));
    }
}

extern "C" __global__ void relu_forward_f32(const float* x, float* y, long long n) {
    relu_forward<float>(x, y, n);
}
extern "C" __global__ void relu_forward_f64(const double* x, double* y, long long n) {
    relu_forward<double>(x, y, n);
}
extern "C" __global__ void relu_backward_f32(const float* dout, const float* x, float* dx,
                                             long long n) {
    relu_backward<float>(dout, x, dx, n);
}
extern "C" __global__ void relu_backward_f64(const double* dout, const double* x, double* dx,
                                             long long n) {
    relu_backward<double>(dout, x, dx, n);
}

// -- LeakyReLU: y = x > 0 ? x : slope*x;  dx = dout * (x > 0 ? 1 : slope) -------------------

template <typename T>
__device__ __forceinline__ void leaky_relu_forward(const T* x, T* y, long long n, T slope) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = x[i];
        y[i] = v > T(0) ? v : slope * v;
    }
}

template <typename T>
__device__ __forceinline__ void leaky_relu_backward(const T* dout, const T* x, T* dx,
                                                    long long n, T slope) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        dx[i] = dout[i] * (x[i] > T(0) ? T(1) : slope);
    }
}

extern "C" __global__ void leaky_relu_forward_f32(const float* x, float* y, long long n,
                                                  float slope) {
    leaky_relu_forward<float>(x, y, n, slope);
}
extern "C" __global__ void leaky_relu_forward_f64(const double* x, double* y, long long n,
                                                  double slope) {
    leaky_relu_forward<double>(x, y, n, slope);
}
extern "C" __global__ void leaky_relu_backward_f32(const float* dout, const float* x, float* dx,
                                                   long long n, float slope) {
    leaky_relu_backward<float>(dout, x, dx, n, slope);
}
extern "C" __global__ void leaky_relu_backward_f64(const double* dout, const double* x,
                                                   double* dx, long long n, double slope) {
    leaky_relu_backward<double>(dout, x, dx, n, slope);
}

// -- Sigmoid: y = 1/(1+exp(-x)), or e/(1+e) with e = exp(x) for x < 0 (no overflow);
//    dx = dout*y*(1-y), from the forward's output y -----------------------------------------

template <typename T>
__device__ __forceinline__ void sigmoid_forward(const T* x, T* y, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = x[i];
        if (v >= T(0)) {
            y[i] = T(1) / (T(1) + ew_exp<T>(-v));
        } else {
            T e = ew_exp<T>(v);
            y[i] = e / (T(1) + e);
        }
    }
}

template <typename T>
__device__ __forceinline__ void sigmoid_backward(const T* dout, const T* y, T* dx, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T s = y[i];
        dx[i] = dout[i] * s * (T(1) - s);
    }
}

extern "C" __global__ void sigmoid_forward_f32(const float* x, float* y, long long n) {
    sigmoid_forward<float>(x, y, n);
}
extern "C" __global__ void sigmoid_forward_f64(const double* x, double* y, long long n) {
    sigmoid_forward<double>(x, y, n);
}
extern "C" __global__ void sigmoid_backward_f32(const float* dout, const float* y, float* dx,
                                                long long n) {
    sigmoid_backward<float>(dout, y, dx, n);
}
extern "C" __global__ void sigmoid_backward_f64(const double* dout, const double* y, double* dx,
                                                long long n) {
    sigmoid_backward<double>(dout, y, dx, n);
}

// -- Tanh: y = tanh(x);  dx = dout*(1 - y*y), from the forward's output y ---------------------

template <typename T>
__device__ __forceinline__ void tanh_forward(const T* x, T* y, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        y[i] = ew_tanh<T>(x[i]);
    }
}

template <typename T>
__device__ __forceinline__ void tanh_backward(const T* dout, const T* y, T* dx, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T t = y[i];
        dx[i] = dout[i] * (T(1) - t * t);
    }
}

extern "C" __global__ void tanh_forward_f32(const float* x, float* y, long long n) {
    tanh_forward<float>(x, y, n);
}
extern "C" __global__ void tanh_forward_f64(const double* x, double* y, long long n) {
    tanh_forward<double>(x, y, n);
}
extern "C" __global__ void tanh_backward_f32(const float* dout, const float* y, float* dx,
                                             long long n) {
    tanh_backward<float>(dout, y, dx, n);
}
extern "C" __global__ void tanh_backward_f64(const double* dout, const double* y, double* dx,
                                             long long n) {
    tanh_backward<double>(dout, y, dx, n);
}

// -- GELU, tanh form (PyTorch's GELU(approximate="tanh")) --------------------------------------
// u = k0*(x + k1*(x*x*x)), t = tanh(u), y = (0.5*x)*(1 + t), with k0 = sqrt(2/pi), k1 = 0.044715;
// dx = dout * (0.5*(1 + t) + (0.5*x)*((1 - t*t)*(k0*(1 + k3*(x*x))))), k3 = 3*k1, from the input x.
// Evaluated in exactly this order by the NumPy body (gpunn/ops/activation.py).

template <typename T>
__device__ __forceinline__ void gelu_forward(const T* x, T* y, long long n) {
    const T k0 = T(0.7978845608028654), k1 = T(0.044715);
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = x[i];
        T t = ew_tanh<T>(k0 * (v + k1 * (v * v * v)));
        y[i] = (T(0.5) * v) * (T(1) + t);
    }
}

template <typename T>
__device__ __forceinline__ void gelu_backward(const T* dout, const T* x, T* dx, long long n) {
    const T k0 = T(0.7978845608028654), k1 = T(0.044715), k3 = T(0.134145);
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = x[i];
        T x2 = v * v;
        T t = ew_tanh<T>(k0 * (v + k1 * (x2 * v)));
        T d = T(0.5) * (T(1) + t) + (T(0.5) * v) * ((T(1) - t * t) * (k0 * (T(1) + k3 * x2)));
        dx[i] = dout[i] * d;
    }
}

extern "C" __global__ void gelu_forward_f32(const float* x, float* y, long long n) {
    gelu_forward<float>(x, y, n);
}
extern "C" __global__ void gelu_forward_f64(const double* x, double* y, long long n) {
    gelu_forward<double>(x, y, n);
}
extern "C" __global__ void gelu_backward_f32(const float* dout, const float* x, float* dx,
                                             long long n) {
    gelu_backward<float>(dout, x, dx, n);
}
extern "C" __global__ void gelu_backward_f64(const double* dout, const double* x, double* dx,
                                             long long n) {
    gelu_backward<double>(dout, x, dx, n);
}

// -- A Linear layer's output epilogue: y (N, cols) in place, y + b[col], then ReLU if relu ----
// (the bias add of every Linear, and the ReLU of a fused Linear + ReLU, gpunn.fuse; the ReLU is
// relu_forward's expression, so the pair gives the two ops' bits)

template <typename T>
__device__ __forceinline__ void bias_relu_forward(T* y, const T* b, long long n, int cols,
                                                  int relu) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        T v = y[i] + b[i % cols];
        if (relu) {
            v = (v > T(0) || v != v) ? v : T(0);
        }
        y[i] = v;
    }
}

extern "C" __global__ void bias_relu_forward_f32(float* y, const float* b, long long n, int cols,
                                                 int relu) {
    bias_relu_forward<float>(y, b, n, cols, relu);
}
extern "C" __global__ void bias_relu_forward_f64(double* y, const double* b, long long n,
                                                 int cols, int relu) {
    bias_relu_forward<double>(y, b, n, cols, relu);
}

// -- A residual block's output with the ReLU after it: y = relu(a + b) (gpunn.fuse; the sum and
// relu_forward's expression, so the pair gives the two ops' bits) ------------------------------

template <typename T>
__device__ __forceinline__ void add_relu_forward(const T* a, const T* b, T* y, long long n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const T v = a[i] + b[i];
        y[i] = (v > T(0) || v != v) ? v : T(0);
    }
}

extern "C" __global__ void add_relu_forward_f32(const float* a, const float* b, float* y,
                                                long long n) {
    add_relu_forward<float>(a, b, y, n);
}
extern "C" __global__ void add_relu_forward_f64(const double* a, const double* b, double* y,
                                                long long n) {
    add_relu_forward<double>(a, b, y, n);
}

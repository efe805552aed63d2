// SiLU (swish), the example layer of examples/new_layer/silu.py: y = x * sigmoid(x),
// dx = dout * (s + x * s * (1 - s)) with s = sigmoid(x), from the input x.
// The sigmoid is the overflow-free form: s = 1/(1+e) for x >= 0, e/(1+e) otherwise, e = exp(-|x|).
// Same shape as gpunn's own kernels: a __device__ template, grid-stride loop with 64-bit
// indices, one extern "C" entry point per dtype, no shared memory, no atomics, no #include.

template <typename T> __device__ __forceinline__ T silu_exp(T x);
template <> __device__ __forceinline__ float silu_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double silu_exp<double>(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T silu_sigmoid(T v) {
    T e = silu_exp<T>(v >= T(0) ? -v : v);
    return v >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ void silu_forward(const T* x, T* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        T v = x[i];
        y[i] = v * silu_sigmoid<T>(v);
    }
}

template <typename T>
__device__ __forceinline__ void silu_backward(const T* dout, const T* x, T* dx, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        T v = x[i];
        T s = silu_sigmoid<T>(v);
        dx[i] = dout[i] * (s + v * s * (T(1) - s));
    }
}

extern "C" __global__ void silu_forward_f32(const float* x, float* y, long long n) {
    silu_forward<float>(x, y, n);
}
extern "C" __global__ void silu_forward_f64(const double* x, double* y, long long n) {
    silu_forward<double>(x, y, n);
}
extern "C" __global__ void silu_backward_f32(const float* dout, const float* x, float* dx,
                                             long long n) {
    silu_backward<float>(dout, x, dx, n);
}
extern "C" __global__ void silu_backward_f64(const double* dout, const double* x, double* dx,
                                             long long n) {
    silu_backward<double>(dout, x, dx, n);
}

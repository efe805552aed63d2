// Fused softmax cross-entropy: per-row loss and dL/dlogits in one pass over each row
// (docs/CONVENTIONS.md, "Softmax cross-entropy"; the NumPy body is gpunn/ops/softmax_xent.py).
//
//   z: (N, K) logits, labels: (N,) int32 in [0, K)
//   m = max_k z_k,  s = sum_k exp(z_k - m)
//   loss_rows[r] = log(s) - (z_label - m)          (= log(s) + m - z_label, cancellation-free)
//   dz[r, k]     = (exp(z_k - m) / s - [k == label]) * scale    (scale: 1/N for mean, 1 for sum)
//
// One thread per row, grid-stride over rows: no shared memory, no reduction across threads,
// so it suits classifier heads (K up to a few thousand). The caller reduces loss_rows (sum, or
// mean) with the array library. A label outside [0, K) poisons its row (loss and gradient NaN),
// as the NumPy body does, instead of reading out of bounds; the op checks labels beforehand.
// dz may not alias z.

template <typename T> __device__ __forceinline__ T sx_exp(T x);
template <> __device__ __forceinline__ float sx_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double sx_exp<double>(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T sx_log(T x);
template <> __device__ __forceinline__ float sx_log<float>(float x) { return logf(x); }
template <> __device__ __forceinline__ double sx_log<double>(double x) { return log(x); }

__device__ __forceinline__ float sx_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double sx_nan(double) {
    return __longlong_as_double(0x7ff8000000000000LL);
}

template <typename T>
__device__ __forceinline__ void softmax_xent(const T* z, const int* labels, T* loss_rows, T* dz,
                                             int N, int K, T scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < N; r += stride) {
        const T* zr = z + r * K;
        T* dr = dz + r * K;
        const int label = labels[r];
        const bool valid = label >= 0 && label < K;

        T m = zr[0];
        for (int k = 1; k < K; ++k) {
            const T v = zr[k];
            if (v > m || v != v) m = v;              // NaN propagates, as max() does
        }
        T s = T(0);
        for (int k = 0; k < K; ++k) {
            const T e = sx_exp<T>(zr[k] - m);
            dr[k] = e;                               // keep exp(z - m) for the gradient pass
            s += e;
        }
        if (!valid) s = sx_nan(T(0));

        loss_rows[r] = sx_log<T>(s) - (valid ? zr[label] - m : T(0));
        for (int k = 0; k < K; ++k) {
            T p = dr[k] / s;
            if (k == label) p -= T(1);
            dr[k] = p * scale;
        }
    }
}

extern "C" __global__ void softmax_xent_f32(const float* z, const int* labels, float* loss_rows,
                                            float* dz, int N, int K, float scale) {
    softmax_xent<float>(z, labels, loss_rows, dz, N, K, scale);
}
extern "C" __global__ void softmax_xent_f64(const double* z, const int* labels,
                                            double* loss_rows, double* dz, int N, int K,
                                            double scale) {
    softmax_xent<double>(z, labels, loss_rows, dz, N, K, scale);
}

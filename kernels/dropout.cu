// Inverted dropout from the counter-based generator of docs/CONVENTIONS.md ("Counter-based RNG"):
//     bits_i = splitmix64(key + i),  keep_i = (bits_i >> 40) >= threshold,
//     mask_i = keep_i ? scale : 0,   y_i = x_i * mask_i
// key = splitmix64(seed ^ splitmix64(step)) is computed on the host (gpunn/ops/random.py,
// stream_key) and passed in; threshold = round(p * 2**24); scale = 1/(1-p) in the dtype.
// Each element's bits depend only on (key, i): the mask is the same bit for bit as the NumPy
// body's, whatever the launch shape or thread order. uint64 arithmetic wraps mod 2**64.

__device__ __forceinline__ unsigned long long dr_splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// x, y, mask: n elements (y may be x). Writes both y and the mask that backward multiplies by.
template <typename T>
__device__ __forceinline__ void dropout_forward(const T* x, T* y, T* mask, long long n,
                                                unsigned long long key, unsigned int threshold,
                                                T scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned long long bits = dr_splitmix64(key + (unsigned long long)i);
        T m = (bits >> 40) >= (unsigned long long)threshold ? scale : T(0);
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void dropout_forward_f32(const float* x, float* y, float* mask,
                                               long long n, unsigned long long key,
                                               unsigned int threshold, float scale) {
    dropout_forward<float>(x, y, mask, n, key, threshold, scale);
}
extern "C" __global__ void dropout_forward_f64(const double* x, double* y, double* mask,
                                               long long n, unsigned long long key,
                                               unsigned int threshold, double scale) {
    dropout_forward<double>(x, y, mask, n, key, threshold, scale);
}

// dropout_forward_dyn: the same, with the key read from device memory. A step captured in a
// CUDA graph uses it: the graphed step writes each replay's key (stream_key(seed, step) of
// that step, computed on the host exactly as for the eager kernel) before launching the graph.
extern "C" __global__ void dropout_forward_dyn_f32(const float* x, float* y, float* mask,
                                                   long long n, const unsigned long long* key,
                                                   unsigned int threshold, float scale) {
    dropout_forward<float>(x, y, mask, n, *key, threshold, scale);
}
extern "C" __global__ void dropout_forward_dyn_f64(const double* x, double* y, double* mask,
                                                   long long n, const unsigned long long* key,
                                                   unsigned int threshold, double scale) {
    dropout_forward<double>(x, y, mask, n, *key, threshold, scale);
}

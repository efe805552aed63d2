// Fused in-place optimizer updates, one pass over a flat parameter array
// (docs/CONVENTIONS.md, "SGD" / "Adam"; the NumPy body is gpunn/ops/optim_update.py).
//
// SGD (PyTorch form):  g' = g + wd*p;  v = mu*v + g'  (ema: v = mu*v + (1-mu)*g');
//                      step = nesterov ? g' + mu*v : v;  p -= lr*step
//   sgd_update:          momentum 0, no buffer: p -= lr*g'
//   sgd_momentum_update: the rest; nesterov and ema are int flags (0 / 1)
// Adam (PyTorch, L2 decay):  g' = g + wd*p;  m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'*g';
//                      p -= (m / (sqrt(v)/sqrt(bc2) + eps)) * (lr/bc1)
//   bc1 = 1 - b1**t and bc2 = 1 - b2**t come from the host (float64 there, passed as the dtype).
//
// Every operation is written in the NumPy body's order (including (m/denom)*(lr/bc1)), so with
// the loader's --fmad=false the float32 and float64 updates round exactly as NumPy's do.

template <typename T> __device__ __forceinline__ T op_sqrt(T x);
template <> __device__ __forceinline__ float op_sqrt<float>(float x) { return sqrtf(x); }
template <> __device__ __forceinline__ double op_sqrt<double>(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ void sgd_update(T* p, const T* g, long long n, T lr, T wd) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gp = wd != T(0) ? pi * wd + g[i] : g[i];
        p[i] = pi - gp * lr;
    }
}

template <typename T>
__device__ __forceinline__ void sgd_momentum_update(T* p, const T* g, T* v, long long n, T lr,
                                                    T mu, T wd, int nesterov, int ema) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gp = wd != T(0) ? pi * wd + g[i] : g[i];
        const T vi = v[i] * mu + (ema ? (T(1) - mu) * gp : gp);
        v[i] = vi;
        const T step = nesterov ? gp + mu * vi : vi;
        p[i] = pi - step * lr;
    }
}

template <typename T>
__device__ __forceinline__ void adam_update(T* p, const T* g, T* m, T* v, long long n, T lr,
                                            T b1, T b2, T eps, T wd, T bc1, T bc2) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    const T sqrt_bc2 = op_sqrt<T>(bc2);
    const T lr_t = lr / bc1;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gp = wd != T(0) ? pi * wd + g[i] : g[i];
        const T mi = m[i] * b1 + gp * (T(1) - b1);
        const T vi = v[i] * b2 + gp * (T(1) - b2) * gp;
        m[i] = mi;
        v[i] = vi;
        const T denom = op_sqrt<T>(vi) / sqrt_bc2 + eps;
        p[i] = pi - (mi / denom) * lr_t;
    }
}

extern "C" __global__ void sgd_update_f32(float* p, const float* g, long long n, float lr,
                                          float wd) {
    sgd_update<float>(p, g, n, lr, wd);
}
extern "C" __global__ void sgd_update_f64(double* p, const double* g, long long n, double lr,
                                          double wd) {
    sgd_update<double>(p, g, n, lr, wd);
}
extern "C" __global__ void sgd_momentum_update_f32(float* p, const float* g, float* v,
                                                   long long n, float lr, float mu, float wd,
                                                   int nesterov, int ema) {
    sgd_momentum_update<float>(p, g, v, n, lr, mu, wd, nesterov, ema);
}
extern "C" __global__ void sgd_momentum_update_f64(double* p, const double* g, double* v,
                                                   long long n, double lr, double mu, double wd,
                                                   int nesterov, int ema) {
    sgd_momentum_update<double>(p, g, v, n, lr, mu, wd, nesterov, ema);
}
extern "C" __global__ void adam_update_f32(float* p, const float* g, float* m, float* v,
                                           long long n, float lr, float b1, float b2, float eps,
                                           float wd, float bc1, float bc2) {
    adam_update<float>(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
}
extern "C" __global__ void adam_update_f64(double* p, const double* g, double* m, double* v,
                                           long long n, double lr, double b1, double b2,
                                           double eps, double wd, double bc1, double bc2) {
    adam_update<double>(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
}

// *_dyn: the same updates with the values that change between steps (lr; Adam's bias
// corrections) read from device memory, one element each. A step captured in a CUDA graph
// uses these: the graphed step writes each replay's values (computed on the host exactly as
// for the kernels above) before launching the graph, so both compute the same bits.
extern "C" __global__ void sgd_update_dyn_f32(float* p, const float* g, long long n,
                                              const float* lr, float wd) {
    sgd_update<float>(p, g, n, *lr, wd);
}
extern "C" __global__ void sgd_update_dyn_f64(double* p, const double* g, long long n,
                                              const double* lr, double wd) {
    sgd_update<double>(p, g, n, *lr, wd);
}
extern "C" __global__ void sgd_momentum_update_dyn_f32(float* p, const float* g, float* v,
                                                       long long n, const float* lr, float mu,
                                                       float wd, int nesterov, int ema) {
    sgd_momentum_update<float>(p, g, v, n, *lr, mu, wd, nesterov, ema);
}
extern "C" __global__ void sgd_momentum_update_dyn_f64(double* p, const double* g, double* v,
                                                       long long n, const double* lr, double mu,
                                                       double wd, int nesterov, int ema) {
    sgd_momentum_update<double>(p, g, v, n, *lr, mu, wd, nesterov, ema);
}
extern "C" __global__ void adam_update_dyn_f32(float* p, const float* g, float* m, float* v,
                                               long long n, const float* lr, float b1, float b2,
                                               float eps, float wd, const float* bc1,
                                               const float* bc2) {
    adam_update<float>(p, g, m, v, n, *lr, b1, b2, eps, wd, *bc1, *bc2);
}
extern "C" __global__ void adam_update_dyn_f64(double* p, const double* g, double* m, double* v,
                                               long long n, const double* lr, double b1,
                                               double b2, double eps, double wd,
                                               const double* bc1, const double* bc2) {
    adam_update<double>(p, g, m, v, n, *lr, b1, b2, eps, wd, *bc1, *bc2);
}

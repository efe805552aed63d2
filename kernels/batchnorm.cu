// Batch normalisation over x: (N, C, S), S = H*W (BatchNorm2d) or 1 (BatchNorm1d), statistics
// per channel c over its m = N*S values (the NumPy body is gpunn/ops/norm.py, same formulas).
// A channel's values are taken in t = n*S + s order and cut into P = ceil(m / V) runs of V.
//
// Forward (training), instead of CuPy's ~17 element-wise and reduction kernels:
//   batchnorm_partial_stats  C*P threads: thread (c, p) sums d = x - K and d*d in float64 over
//                            run p (K = the channel's first value, a shift that keeps the
//                            squares from cancelling); a warp reads 32 neighbouring runs
//   batchnorm_fold           C*ceil(P/F) threads: each adds F neighbouring pairs of partial
//                            sums in order; launched until P <= F (a fixed tree, so the sums
//                            do not depend on thread order, block size or device)
//   batchnorm_stats          C threads: the P partials in order -> mean, var (biased),
//                            inv_std = 1/sqrt(var + eps), scale = gamma*inv_std,
//                            shift = beta - mean*gamma*inv_std, running statistics updated
//                            (train = 0: the running statistics normalise; part unread)
//   batchnorm_normalise      N*C*S threads: y = x*scale + shift, then ReLU if relu (the fused
//                            BatchNorm + ReLU of gpunn.fuse; relu_forward's expression)
// Backward:
//   batchnorm_partial_grad   C*P threads: sums of dm and dm*(x - mean) in float64 over run p,
//                            dm = dout, or dout*(y > 0) after a fused ReLU (relu_backward's);
//                            then batchnorm_fold as above
//   batchnorm_grad_coeffs    C threads: dbeta, dgamma = inv_std * sum dm*(x - mean), and the
//                            per-channel constants of dx below
//   batchnorm_backward_dx    N*C*S threads: dx = dm*k - (x - mean)*c2 - kb1 (train), dm*k
//                            (evaluation), k = gamma*inv_std, kb1 = k*dbeta/m,
//                            c2 = k*inv_std*dgamma/m
// No shared memory and no atomics (kernels/README.md): every partial sum has one thread and a
// fixed order. Partial sums are (s1, s2) pairs: part[2*(c*P + p)] and part[2*(c*P + p) + 1].

__device__ __forceinline__ float bn_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double bn_sqrt(double v) { return sqrt(v); }

// Loads are issued BN_BATCH at a time and then added one by one in order: the same sums as a
// plain loop (the order is the contract the tests check), without a wait for memory per value.
#define BN_BATCH 8

// s1 += part[2p], s2 += part[2p + 1] for p in [p0, p1), in order.
__device__ __forceinline__ void bn_add_pairs(const double* part, long long p0, long long p1,
                                             double& s1, double& s2) {
    long long p = p0;
    for (; p + BN_BATCH <= p1; p += BN_BATCH) {
        double a[BN_BATCH], b[BN_BATCH];
        for (int j = 0; j < BN_BATCH; ++j) {
            a[j] = part[2 * (p + j)];
            b[j] = part[2 * (p + j) + 1];
        }
        for (int j = 0; j < BN_BATCH; ++j) {
            s1 += a[j];
            s2 += b[j];
        }
    }
    for (; p < p1; ++p) {
        s1 += part[2 * p];
        s2 += part[2 * p + 1];
    }
}

// The offset of value t of channel c, and a step to t + 1, without a division per value.
struct BnCursor {
    long long off, s, S, jump;
    __device__ BnCursor(long long t, int c, int C, long long S_)
        : off((t / S_) * C * S_ + (long long)c * S_ + t % S_), s(t % S_), S(S_),
          jump((long long)(C - 1) * S_ + 1) {}
    __device__ void next() {
        if (++s == S) {
            s = 0;
            off += jump;
        } else {
            ++off;
        }
    }
};

template <typename T>
__device__ __forceinline__ void bn_partial_stats(const T* x, double* part, long long N, int C,
                                                 long long S, int V) {
    const long long m = N * S;
    const long long P = (m + V - 1) / V;
    const long long total = (long long)C * P;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const int c = (int)(idx / P);
        const long long t0 = (idx % P) * V;
        const long long t1 = t0 + V < m ? t0 + V : m;
        const double K = (double)x[(long long)c * S];
        double s1 = 0.0, s2 = 0.0;
        BnCursor at(t0, c, C, S);
        long long t = t0;
        for (; t + BN_BATCH <= t1; t += BN_BATCH) {
            double v[BN_BATCH];
            for (int j = 0; j < BN_BATCH; ++j, at.next()) {
                v[j] = (double)x[at.off];
            }
            for (int j = 0; j < BN_BATCH; ++j) {
                const double d = v[j] - K;
                s1 += d;
                s2 += d * d;
            }
        }
        for (; t < t1; ++t, at.next()) {
            const double d = (double)x[at.off] - K;
            s1 += d;
            s2 += d * d;
        }
        part[2 * idx] = s1;
        part[2 * idx + 1] = s2;
    }
}

// part_in: C*P pairs -> part_out: C*ceil(P/F) pairs, each the in-order sum of F neighbours.
__device__ __forceinline__ void bn_fold(const double* part_in, double* part_out, int C,
                                        long long P, int F) {
    const long long Q = (P + F - 1) / F;
    const long long total = (long long)C * Q;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long c = idx / Q;
        const long long p0 = (idx % Q) * F;
        const long long p1 = p0 + F < P ? p0 + F : P;
        double s1 = 0.0, s2 = 0.0;
        bn_add_pairs(part_in + 2 * c * P, p0, p1, s1, s2);
        part_out[2 * idx] = s1;
        part_out[2 * idx + 1] = s2;
    }
}

template <typename T>
__device__ __forceinline__ void bn_stats(const T* x, const double* part, const T* gamma,
                                         const T* beta, T* mean, T* inv_std, T* scale, T* shift,
                                         T* running_mean, T* running_var, long long N, int C,
                                         long long S, long long P, T eps, T momentum,
                                         int train) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
        T mu, var;
        if (train) {
            double s1 = 0.0, s2 = 0.0;
            bn_add_pairs(part + 2 * c * P, 0, P, s1, s2);
            const double m = (double)(N * S);
            const double d = s1 / m;                         // mean - K
            double v = s2 / m - d * d;
            v = v > 0.0 ? v : 0.0;
            mu = (T)((double)x[c * S] + d);
            var = (T)v;
            // the NumPy body's rm *= 1 - mom; rm += mom * mean (and the unbiased variance)
            const T keep = T(1) - momentum;
            running_mean[c] = running_mean[c] * keep + momentum * mu;
            running_var[c] = running_var[c] * keep + momentum * var * (T)(m / (m - 1.0));
        } else {
            mu = running_mean[c];
            var = running_var[c];
        }
        const T istd = T(1) / bn_sqrt(var + eps);
        mean[c] = mu;
        inv_std[c] = istd;
        scale[c] = gamma[c] * istd;
        shift[c] = beta[c] - mu * gamma[c] * istd;
    }
}

template <typename T>
__device__ __forceinline__ void bn_normalise(const T* x, const T* scale, const T* shift, T* y,
                                             long long N, int C, long long S, int relu) {
    const long long total = N * C * S;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += stride) {
        const int c = (int)((i / S) % C);
        T v = x[i] * scale[c] + shift[c];
        if (relu) {
            v = (v > T(0) || v != v) ? v : T(0);
        }
        y[i] = v;
    }
}

template <typename T>
__device__ __forceinline__ void bn_partial_grad(const T* dout, const T* y, const T* x,
                                                const T* mean, double* part, long long N, int C,
                                                long long S, int V, int relu) {
    const long long m = N * S;
    const long long P = (m + V - 1) / V;
    const long long total = (long long)C * P;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const int c = (int)(idx / P);
        const long long t0 = (idx % P) * V;
        const long long t1 = t0 + V < m ? t0 + V : m;
        const T mu = mean[c];
        double s1 = 0.0, s2 = 0.0;
        BnCursor at(t0, c, C, S);
        long long t = t0;
        for (; t + BN_BATCH <= t1; t += BN_BATCH) {
            T d[BN_BATCH], xc[BN_BATCH];
            for (int j = 0; j < BN_BATCH; ++j, at.next()) {
                d[j] = dout[at.off];
                if (relu) {
                    d[j] = d[j] * (y[at.off] > T(0) ? T(1) : T(0));
                }
                xc[j] = x[at.off] - mu;
            }
            for (int j = 0; j < BN_BATCH; ++j) {
                s1 += (double)d[j];
                s2 += (double)d[j] * (double)xc[j];
            }
        }
        for (; t < t1; ++t, at.next()) {
            T d = dout[at.off];
            if (relu) {
                d = d * (y[at.off] > T(0) ? T(1) : T(0));
            }
            s1 += (double)d;
            s2 += (double)d * (double)(x[at.off] - mu);
        }
        part[2 * idx] = s1;
        part[2 * idx + 1] = s2;
    }
}

template <typename T>
__device__ __forceinline__ void bn_grad_coeffs(const double* part, const T* gamma,
                                               const T* inv_std, T* dgamma, T* dbeta, T* k,
                                               T* kb1, T* c2, long long N, int C, long long S,
                                               long long P, int train) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
        double s1 = 0.0, s2 = 0.0;
        bn_add_pairs(part + 2 * c * P, 0, P, s1, s2);
        const T istd = inv_std[c];
        const T db = (T)s1;
        const T dg = (T)(s2 * (double)istd);
        dbeta[c] = db;
        dgamma[c] = dg;
        const T kc = gamma[c] * istd;
        k[c] = kc;
        if (train) {
            const T m = (T)(N * S);
            kb1[c] = kc * (db / m);
            c2[c] = kc * istd * (dg / m);
        } else {
            kb1[c] = T(0);
            c2[c] = T(0);
        }
    }
}

template <typename T>
__device__ __forceinline__ void bn_backward_dx(const T* dout, const T* y, const T* x,
                                               const T* mean, const T* k, const T* kb1,
                                               const T* c2, T* dx, long long N, int C,
                                               long long S, int relu, int train) {
    const long long total = N * C * S;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += stride) {
        const int c = (int)((i / S) % C);
        T d = dout[i];
        if (relu) {
            d = d * (y[i] > T(0) ? T(1) : T(0));
        }
        T out = d * k[c];
        if (train) {
            out = out - (x[i] - mean[c]) * c2[c];
            out = out - kb1[c];
        }
        dx[i] = out;
    }
}

extern "C" __global__ void batchnorm_partial_stats_f32(const float* x, double* part, long long N,
                                                       int C, long long S, int V) {
    bn_partial_stats<float>(x, part, N, C, S, V);
}
extern "C" __global__ void batchnorm_partial_stats_f64(const double* x, double* part,
                                                       long long N, int C, long long S, int V) {
    bn_partial_stats<double>(x, part, N, C, S, V);
}

// one body for both dtypes (the sums are float64 either way); the twins keep the naming rule
extern "C" __global__ void batchnorm_fold_f32(const double* part_in, double* part_out, int C,
                                              long long P, int F) {
    bn_fold(part_in, part_out, C, P, F);
}
extern "C" __global__ void batchnorm_fold_f64(const double* part_in, double* part_out, int C,
                                              long long P, int F) {
    bn_fold(part_in, part_out, C, P, F);
}

extern "C" __global__ void batchnorm_stats_f32(const float* x, const double* part,
                                               const float* gamma, const float* beta,
                                               float* mean, float* inv_std, float* scale,
                                               float* shift, float* running_mean,
                                               float* running_var, long long N, int C,
                                               long long S, long long P, float eps,
                                               float momentum, int train) {
    bn_stats<float>(x, part, gamma, beta, mean, inv_std, scale, shift, running_mean,
                    running_var, N, C, S, P, eps, momentum, train);
}
extern "C" __global__ void batchnorm_stats_f64(const double* x, const double* part,
                                               const double* gamma, const double* beta,
                                               double* mean, double* inv_std, double* scale,
                                               double* shift, double* running_mean,
                                               double* running_var, long long N, int C,
                                               long long S, long long P, double eps,
                                               double momentum, int train) {
    bn_stats<double>(x, part, gamma, beta, mean, inv_std, scale, shift, running_mean,
                     running_var, N, C, S, P, eps, momentum, train);
}

extern "C" __global__ void batchnorm_normalise_f32(const float* x, const float* scale,
                                                   const float* shift, float* y, long long N,
                                                   int C, long long S, int relu) {
    bn_normalise<float>(x, scale, shift, y, N, C, S, relu);
}
extern "C" __global__ void batchnorm_normalise_f64(const double* x, const double* scale,
                                                   const double* shift, double* y, long long N,
                                                   int C, long long S, int relu) {
    bn_normalise<double>(x, scale, shift, y, N, C, S, relu);
}

extern "C" __global__ void batchnorm_partial_grad_f32(const float* dout, const float* y,
                                                      const float* x, const float* mean,
                                                      double* part, long long N, int C,
                                                      long long S, int V, int relu) {
    bn_partial_grad<float>(dout, y, x, mean, part, N, C, S, V, relu);
}
extern "C" __global__ void batchnorm_partial_grad_f64(const double* dout, const double* y,
                                                      const double* x, const double* mean,
                                                      double* part, long long N, int C,
                                                      long long S, int V, int relu) {
    bn_partial_grad<double>(dout, y, x, mean, part, N, C, S, V, relu);
}

extern "C" __global__ void batchnorm_grad_coeffs_f32(const double* part, const float* gamma,
                                                     const float* inv_std, float* dgamma,
                                                     float* dbeta, float* k, float* kb1,
                                                     float* c2, long long N, int C, long long S,
                                                     long long P, int train) {
    bn_grad_coeffs<float>(part, gamma, inv_std, dgamma, dbeta, k, kb1, c2, N, C, S, P, train);
}
extern "C" __global__ void batchnorm_grad_coeffs_f64(const double* part, const double* gamma,
                                                     const double* inv_std, double* dgamma,
                                                     double* dbeta, double* k, double* kb1,
                                                     double* c2, long long N, int C,
                                                     long long S, long long P, int train) {
    bn_grad_coeffs<double>(part, gamma, inv_std, dgamma, dbeta, k, kb1, c2, N, C, S, P, train);
}

extern "C" __global__ void batchnorm_backward_dx_f32(const float* dout, const float* y,
                                                     const float* x, const float* mean,
                                                     const float* k, const float* kb1,
                                                     const float* c2, float* dx, long long N,
                                                     int C, long long S, int relu, int train) {
    bn_backward_dx<float>(dout, y, x, mean, k, kb1, c2, dx, N, C, S, relu, train);
}
extern "C" __global__ void batchnorm_backward_dx_f64(const double* dout, const double* y,
                                                     const double* x, const double* mean,
                                                     const double* k, const double* kb1,
                                                     const double* c2, double* dx, long long N,
                                                     int C, long long S, int relu, int train) {
    bn_backward_dx<double>(dout, y, x, mean, k, kb1, c2, dx, N, C, S, relu, train);
}

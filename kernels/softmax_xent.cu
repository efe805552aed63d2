// Fused softmax cross-entropy: per-row loss and dL/dlogits in one pass over each row, then
// the loss and a training loop's running metrics in one more launch
// (docs/CONVENTIONS.md, "Softmax cross-entropy"; the NumPy body is gpunn/ops/softmax_xent.py).
//
//   z: (N, K) logits, labels: (N,) int64 in [0, K) (the data sets' label dtype: no cast)
//   m = max_k z_k,  s = sum_k exp(z_k - m)
//   loss_rows[r] = log(s) - (z_label - m)          (= log(s) + m - z_label, cancellation-free)
//   dz[r, k]     = (exp(z_k - m) / s - [k == label]) * scale    (scale: 1/N for mean, 1 for sum)
//   hits[r]      = 1 if the row's first maximal logit is at its label, else 0 (NumPy's argmax:
//                  a NaN counts as the maximum, the first NaN wins; a tie goes to the first)
//
// softmax_xent: one thread per row, grid-stride over rows: no shared memory, no reduction
// across threads, so it suits classifier heads (K up to a few thousand). A label outside
// [0, K) poisons its row (loss and gradient NaN, no hit), as the NumPy body does, instead of
// reading out of bounds; the op checks labels beforehand. dz may not alias z.
//
// softmax_xent_finish: ONE thread. loss[0] = the rows' sum (in double, eight running sums over
// the rows r = 0, 8, 16, ...; 1, 9, ...; added pairwise at the end: a fixed order, so a GPU and
// the CPU emulation give the same bits), rounded to T, then divided by N when mean. With
// tally != 0 it also adds what a training step's running metrics add: loss_sum[0] +=
// double(loss * T(N)) and correct[0] += the number of hits. This replaces eight small launches
// (the sum, the mean, loss * N, its addition, argmax, ==, the count, its addition); one
// thread suffices for a batch's rows (its loads are issued XENT_BATCH at a time, so they
// overlap instead of waiting one by one).

#define XENT_LANES 8
#define XENT_BATCH 32

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
__device__ __forceinline__ void softmax_xent(const T* z, const long long* labels, T* loss_rows,
                                             int* hits, T* dz, int N, int K, T scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < N; r += stride) {
        const T* zr = z + r * K;
        T* dr = dz + r * K;
        const long long label = labels[r];
        const bool valid = label >= 0 && label < K;

        T m = zr[0];
        int best = 0;                                // argmax: strict >, a NaN ends the search
        for (int k = 1; k < K; ++k) {
            const T v = zr[k];
            if (m != m) break;                       // m is NaN: max() and argmax stay put
            if (v > m || v != v) {
                m = v;
                best = k;
            }
        }
        T s = T(0);
        for (int k = 0; k < K; ++k) {
            const T e = sx_exp<T>(zr[k] - m);
            dr[k] = e;                               // keep exp(z - m) for the gradient pass
            s += e;
        }
        if (!valid) s = sx_nan(T(0));

        loss_rows[r] = sx_log<T>(s) - (valid ? zr[label] - m : T(0));
        hits[r] = (valid && best == label) ? 1 : 0;
        for (int k = 0; k < K; ++k) {
            T p = dr[k] / s;
            if (k == label) p -= T(1);
            dr[k] = p * scale;
        }
    }
}

template <typename T>
__device__ __forceinline__ void softmax_xent_finish(const T* loss_rows, const int* hits, T* loss,
                                                    double* loss_sum, long long* correct, int N,
                                                    int mean, int tally) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double lane[XENT_LANES] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};    // row r: lane r % 8
    long long count = 0;
    int r = 0;
    for (; r + XENT_BATCH <= N; r += XENT_BATCH) {
        T v[XENT_BATCH];
        int h[XENT_BATCH];
        for (int q = 0; q < XENT_BATCH; ++q) {       // the loads first: they overlap
            v[q] = loss_rows[r + q];
            h[q] = hits[r + q];
        }
        for (int q = 0; q < XENT_BATCH; ++q) {       // r is a multiple of 8
            lane[q % XENT_LANES] += (double)v[q];
            count += h[q];
        }
    }
    for (; r < N; r += XENT_LANES) {
        for (int q = 0; q < XENT_LANES; ++q) {
            if (r + q < N) {
                lane[q] += (double)loss_rows[r + q];
                count += hits[r + q];
            }
        }
    }
    const double total = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    T l = (T)total;
    if (mean) l = l / (T)N;
    loss[0] = l;
    if (tally) {
        loss_sum[0] += (double)(l * (T)N);
        correct[0] += count;
    }
}

extern "C" __global__ void softmax_xent_f32(const float* z, const long long* labels,
                                            float* loss_rows, int* hits, float* dz, int N, int K,
                                            float scale) {
    softmax_xent<float>(z, labels, loss_rows, hits, dz, N, K, scale);
}
extern "C" __global__ void softmax_xent_f64(const double* z, const long long* labels,
                                            double* loss_rows, int* hits, double* dz, int N,
                                            int K, double scale) {
    softmax_xent<double>(z, labels, loss_rows, hits, dz, N, K, scale);
}
extern "C" __global__ void softmax_xent_finish_f32(const float* loss_rows, const int* hits,
                                                   float* loss, double* loss_sum,
                                                   long long* correct, int N, int mean,
                                                   int tally) {
    softmax_xent_finish<float>(loss_rows, hits, loss, loss_sum, correct, N, mean, tally);
}
extern "C" __global__ void softmax_xent_finish_f64(const double* loss_rows, const int* hits,
                                                   double* loss, double* loss_sum,
                                                   long long* correct, int N, int mean,
                                                   int tally) {
    softmax_xent_finish<double>(loss_rows, hits, loss, loss_sum, correct, N, mean, tally);
}

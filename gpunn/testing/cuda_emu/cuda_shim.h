// cuda_shim.h: just enough of CUDA C for g++ to compile gpunn's kernels/*.cu unchanged and run
// them on the CPU, one (block, thread) at a time (see gpunn/cuda_emu/__init__.py).
//
// - __global__ / __device__ / __host__ vanish; __forceinline__ is an always-inline hint.
// - blockIdx, threadIdx (uint3) and blockDim, gridDim (dim3) are thread-local globals that the
//   launcher sets before it calls the kernel function for each (block, thread).
// - Math comes from libm (expf, exp, logf, tanh, sqrtf, ...), the bit-cast intrinsics are
//   memcpy, and atomics are real atomics (GCC __atomic builtins), so a kernel that needs one
//   still gives the right answer when its threads run in any order.
// - Anything that only makes sense with threads running together (__shared__, __syncthreads,
//   warp shuffles and votes) is a compile error here: such a kernel needs its own plan.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static_assert(false, "__shared__ cannot be emulated thread by thread");
#define __syncthreads() static_assert(false, "__syncthreads cannot be emulated thread by thread")
#define __syncwarp(...) static_assert(false, "__syncwarp cannot be emulated thread by thread")
#define __shfl_sync(...) static_assert(false, "warp shuffles cannot be emulated thread by thread")
#define __shfl_down_sync(...) static_assert(false, "warp shuffles cannot be emulated")
#define __shfl_up_sync(...) static_assert(false, "warp shuffles cannot be emulated")
#define __shfl_xor_sync(...) static_assert(false, "warp shuffles cannot be emulated")
#define __ballot_sync(...) static_assert(false, "warp votes cannot be emulated")
#define __any_sync(...) static_assert(false, "warp votes cannot be emulated")
#define __all_sync(...) static_assert(false, "warp votes cannot be emulated")

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
};

inline thread_local uint3 blockIdx;
inline thread_local uint3 threadIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// -- bit casts --------------------------------------------------------------------------------
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline float __uint_as_float(unsigned int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, sizeof i); return i; }
inline unsigned int __float_as_uint(float v) {
    unsigned int i; std::memcpy(&i, &v, sizeof i); return i;
}
inline double __longlong_as_double(long long v) {
    double d; std::memcpy(&d, &v, sizeof d); return d;
}
inline long long __double_as_longlong(double v) {
    long long i; std::memcpy(&i, &v, sizeof i); return i;
}

// -- integer min / max (CUDA declares these for device code) ---------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

// -- atomics: return the old value, as CUDA's do ----------------------------------------------
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
template <typename F>
inline F gpunn_emu_atomic_float_add(F* a, F v) {
    F old, desired;
    __atomic_load(a, &old, __ATOMIC_SEQ_CST);
    do {
        desired = old + v;
    } while (!__atomic_compare_exchange(a, &old, &desired, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
    return old;
}
inline float atomicAdd(float* a, float v) { return gpunn_emu_atomic_float_add(a, v); }
inline double atomicAdd(double* a, double v) { return gpunn_emu_atomic_float_add(a, v); }
inline int atomicMax(int* a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST,
                                                    __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline int atomicMin(int* a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
    while (old > v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST,
                                                    __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline int atomicCAS(int* a, int compare, int v) {
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare,
                                    unsigned long long v) {
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}

// -- the launcher -----------------------------------------------------------------------------
// Runs `call()` once per (block, thread) of the launch. order: 0 forward (block-major, x fastest),
// 1 reverse, 2 the permutation `perm` of linear thread ids [0, total). Returns 0, or -1 when
// perm is missing for order 2.
template <typename Call>
inline int gpunn_emu_launch(const unsigned int* grid, const unsigned int* block, int order,
                            const long long* perm, Call call) {
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    const long long per_block = (long long)block[0] * block[1] * block[2];
    const long long blocks = (long long)grid[0] * grid[1] * grid[2];
    const long long total = per_block * blocks;
    if (order == 2 && perm == nullptr) return -1;
    for (long long k = 0; k < total; ++k) {
        const long long id = order == 0 ? k : order == 1 ? total - 1 - k : perm[k];
        const long long b = id / per_block;
        const long long t = id - b * per_block;
        blockIdx = uint3{(unsigned int)(b % grid[0]), (unsigned int)((b / grid[0]) % grid[1]),
                         (unsigned int)(b / ((long long)grid[0] * grid[1]))};
        threadIdx = uint3{(unsigned int)(t % block[0]), (unsigned int)((t / block[0]) % block[1]),
                          (unsigned int)(t / ((long long)block[0] * block[1]))};
        call();
    }
    return 0;
}

"""Counter-based random numbers that the NumPy body and the CUDA kernels compute bit for bit.

Each element's bits are a pure function of (seed, step, flat index), so a dropout mask does
not depend on the device, the launch shape or the order threads run in:

    splitmix64(z): z += 0x9E3779B97F4A7C15
                   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                   z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                   return z ^ (z >> 31)
    key    = splitmix64(seed ^ splitmix64(step))
    bits_i = splitmix64(key + i)

All arithmetic is uint64 wrapping mod 2**64 (NumPy array arithmetic wraps silently).
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def splitmix64_int(z: int) -> int:
    """Scalar splitmix64 on Python ints (host side: seeds and keys)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, step: int) -> int:
    """The 64-bit key of one (seed, step) stream."""
    return splitmix64_int((int(seed) & _MASK64) ^ splitmix64_int(int(step) & _MASK64))


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank ``rank`` of a data-parallel job draws with: ``seed`` itself on rank 0
    (so one rank draws what a single process draws), a different stream on every other rank."""
    if int(rank) == 0:
        return int(seed)
    return splitmix64_int((int(seed) & _MASK64) ^ splitmix64_int(0x72616E6B00000000 | int(rank)))


def splitmix64(z, xp=np):
    """Vectorised splitmix64 over a uint64 array (wrapping arithmetic)."""
    z = z + xp.uint64(_GOLDEN)
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(_M1)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(_M2)
    return z ^ (z >> xp.uint64(31))


def random_bits(key: int, n: int, xp=np):
    """``bits_i = splitmix64(key + i)`` for i in [0, n), as a uint64 array on ``xp``'s device."""
    i = xp.arange(n, dtype=xp.uint64)
    return splitmix64(i + xp.uint64(key), xp)


def keep_threshold(p: float) -> int:
    """Integer threshold on the top 24 bits: an element is kept when ``bits >> 40 >= t``."""
    return int(round(float(p) * (1 << 24)))

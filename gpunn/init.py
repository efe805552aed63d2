"""Weight initialisers, drawn on the host with NumPy so a seed gives the same weights on any
device; the caller moves the result to its device.

Fans follow PyTorch's convention: for a Linear weight ``(in, out)`` fan_in = in, fan_out = out;
for a Conv2d weight ``(out, in, kh, kw)`` fan_in = in*kh*kw, fan_out = out*kh*kw.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["make_rng", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "zeros",
           "INITIALISERS", "get_initialiser"]


def make_rng(rng=None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _check(shape, fan_in, fan_out):
    if fan_in <= 0 or fan_out <= 0:
        raise ValueError(f"initialiser: fans must be positive, got fan_in={fan_in}, "
                         f"fan_out={fan_out} for shape {tuple(shape)}")


def xavier_uniform(shape, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    _check(shape, fan_in, fan_out)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return make_rng(rng).uniform(-a, a, size=shape).astype(dtype)


def xavier_normal(shape, fan_in, fan_out, rng=None, dtype=np.float32, gain=1.0):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    _check(shape, fan_in, fan_out)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (make_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def he_uniform(shape, fan_in, fan_out, rng=None, dtype=np.float32):
    """He et al. (2015) for ReLU nets: U(-a, a) with a = sqrt(6 / fan_in)."""
    _check(shape, fan_in, fan_out)
    a = math.sqrt(6.0 / fan_in)
    return make_rng(rng).uniform(-a, a, size=shape).astype(dtype)


def he_normal(shape, fan_in, fan_out, rng=None, dtype=np.float32):
    """He normal: N(0, 2 / fan_in)."""
    _check(shape, fan_in, fan_out)
    return (make_rng(rng).standard_normal(size=shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def zeros(shape, fan_in=1, fan_out=1, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


INITIALISERS = {
    "xavier_uniform": xavier_uniform, "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal, "glorot_normal": xavier_normal,
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "he_normal": he_normal, "kaiming_normal": he_normal,
    "zeros": zeros,
}


def get_initialiser(init):
    """Look up an initialiser by name, or pass a callable ``f(shape, fan_in, fan_out, rng, dtype)``."""
    if callable(init):
        return init
    try:
        return INITIALISERS[init]
    except KeyError:
        raise ValueError(f"unknown initialiser {init!r}; choose one of "
                         f"{', '.join(sorted(INITIALISERS))} or pass a callable") from None

"""Inverted dropout with masks from a counter-based generator (same mask on any device)."""
from __future__ import annotations

from ..errors import ShapeError
from ..graphs import HostValue
from ..init import make_rng
from ..ops.dropout import dropout_forward
from ..ops.random import rank_seed
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Zero each element with probability ``p`` in training and scale the rest by 1/(1-p);
    the identity when ``train=False``.

    The mask is a pure function of (seed, step, element index); ``step`` counts training
    forwards and is saved in ``state_dict`` (as ``host_state``), so a resumed run draws the
    same masks as an uninterrupted one, on the CPU or a GPU. ``rank`` (0 by default; set per
    process by gpunn.distributed) is folded into the seed, so data-parallel replicas drop
    different units and rank 0 draws the single-process masks; it is not saved (a resumed
    run may have another number of ranks).
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None, rng=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        if seed is None:
            seed = int(make_rng(rng).integers(0, 2**63 - 1))
        self.host_state["seed"] = int(seed)
        self.host_state["step"] = 0
        self.rank = 0
        self._mask = None

    def forward(self, x, *, train=None):
        self.check_input(x)
        if not self._mode(train) or self.p == 0.0:
            self._mask = None
            return x
        # the step count as a HostValue: its number now, and a later step's number when a
        # CUDA graph replays this forward (gpunn/graphs.py)
        hs = self.host_state
        y, self._mask = dropout_forward(x, self.p, rank_seed(hs["seed"], self.rank),
                                        HostValue(lambda: hs["step"]))
        self.host_state["step"] += 1
        return y

    def backward(self, dout):
        if self._mask is None:   # eval mode or p == 0: identity
            return dout
        if dout.shape != self._mask.shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape "
                             f"{tuple(self._mask.shape)}, got {tuple(dout.shape)}")
        return dout * self._mask

    def extra_repr(self):
        return f"p={self.p}"

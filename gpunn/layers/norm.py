"""Batch normalisation (Ioffe & Szegedy, 2015) over the batch (and spatial) axes.

Training uses the batch statistics and updates running estimates in place (PyTorch's
convention: running = (1 - momentum) * running + momentum * batch, with the unbiased
variance); evaluation uses the running estimates.
"""
from __future__ import annotations

import numpy as np

from ..backend import backend_of, get_array_module
from ..errors import ShapeError
from ..backend import check_dtype
from ..ops.norm import batchnorm_backward, batchnorm_forward
from .base import Layer

__all__ = ["BatchNorm1d", "BatchNorm2d", "SyncBatchNorm"]


class _BatchNorm(Layer):
    _ndim = None          # 2 for (N, F), 4 for (N, C, H, W)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype=np.float32):
        super().__init__()
        if int(num_features) <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be positive, got {eps}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        dtype = check_dtype(dtype, type(self).__name__)
        self.add_param("gamma", np.ones(self.num_features, dtype=dtype))
        self.add_param("beta", np.zeros(self.num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)
        self._cache = None

    def _axes_and_shape(self):
        if self._ndim == 2:
            return (0,), (1, -1)
        return (0, 2, 3), (1, -1, 1, 1)

    def forward(self, x, *, train=None):
        return self._forward(x, train)

    def backward(self, dout):
        return self._backward(dout)

    # the bodies, shared with a fused BatchNorm + ReLU (gpunn.fuse): relu=True applies the
    # ReLU to the output; y_relu, that output, masks dout first
    def _forward(self, x, train=None, relu=False):
        self.check_input(x, self._ndim, feature_axis=1, features=self.num_features)
        train = self._mode(train)
        if train and x.size // self.num_features < 2:
            raise ShapeError(f"{self!r}: training needs more than one value per feature "
                             f"to compute batch statistics, got input shape {tuple(x.shape)}")
        y, self._cache = batchnorm_forward(x, self.params["gamma"], self.params["beta"],
                                           self.buffers["running_mean"],
                                           self.buffers["running_var"], self.eps,
                                           self.momentum, train, relu=relu)
        self._shape = x.shape
        return y

    def _backward(self, dout, y_relu=None):
        cache = self._need_cache("_cache")
        if dout.shape != self._shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(self._shape)}, "
                             f"got {tuple(dout.shape)}")
        # the ops write dgamma and dbeta straight into the gradient buffers (no copy launches)
        dx, _, _ = batchnorm_backward(dout, cache, self.params["gamma"], y_relu=y_relu,
                                      out=(self.grads["gamma"], self.grads["beta"]))
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """x: (N, F) -> (N, F); statistics per feature over the batch."""
    _ndim = 2

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.num_features,):
            raise ShapeError(f"{self!r}: expects per-sample input ({self.num_features},), got "
                             f"{tuple(in_shape)}")
        return tuple(in_shape)


class BatchNorm2d(_BatchNorm):
    """x: (N, C, H, W) -> same; statistics per channel over batch and space."""
    _ndim = 4

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.num_features:
            raise ShapeError(f"{self!r}: expects per-sample input ({self.num_features}, H, W), "
                             f"got {tuple(in_shape)}")
        return tuple(in_shape)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the *global* batch: all ranks of a
    data-parallel job together (gpunn.distributed), as if one process saw every sample.

    x: (N, F) or (N, C, H, W) -> same; per-feature (per-channel) statistics. Alone (a world
    of one) it computes what BatchNorm1d/2d compute. ``comm``: the communicator (default: the
    world of ``gpunn.distributed.init()``).

    Forward (training): all-reduce [sum x, count] -> global mean; all-reduce
    sum (x - mean)^2 -> global variance (two passes, as the single-process layer computes
    it; sums in float64). Backward: each rank's dout is the gradient of its own loss L_r, and
    the job minimises L = sum_r w_r L_r (w_r = n_r / N for a mean loss: the weight
    DistributedTrainStep sets in ``grad_weight``; None: n_r / N from the counts). One
    all-reduce of the two weighted sums S1 = sum_r w_r sum dout and
    S2 = sum_r w_r sum dout * xhat gives dL/dx; the layer returns it divided by w_r (this
    rank's units, which the step's gradient weighting expects):

        dx = gamma * inv_std * (dout - S1 / (w_r M) - xhat * S2 / (w_r M))    M: global count

    gamma and beta get this rank's own sums (the step weights and sums them).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype=np.float32, comm=None):
        super().__init__(num_features, eps, momentum, dtype=dtype)
        self.comm = comm
        self.grad_weight = None

    @classmethod
    def convert_sync_batchnorm(cls, model, comm=None) -> int:
        """Make every BatchNorm1d/2d inside ``model`` a SyncBatchNorm (statistics of the
        global batch over ``comm``'s ranks), in place, as torch's ``convert_sync_batchnorm``;
        each layer keeps its parameters (and their places in the flat buffers), running
        statistics and settings. Returns how many were converted."""
        count = 0
        for layer in model.walk():
            if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
                layer.__class__ = cls            # same state, another forward/backward
                layer.comm, layer.grad_weight = comm, None
                count += 1
        return count

    def _world(self):
        if self.comm is not None:
            return self.comm
        from ..distributed import world
        return world()

    def _geometry(self, x):
        ndim = getattr(x, "ndim", None)
        self.check_input(x, ndim if ndim in (2, 4) else 4, feature_axis=1,
                         features=self.num_features)
        return ((0,), (1, -1)) if x.ndim == 2 else ((0, 2, 3), (1, -1, 1, 1))

    def forward(self, x, *, train=None):
        axes, bshape = self._geometry(x)
        xp, T, C = get_array_module(x), x.dtype.type, self.num_features
        gamma = self.params["gamma"].reshape(bshape)
        beta = self.params["beta"].reshape(bshape)
        if not self._mode(train):
            inv_std = 1 / xp.sqrt(self.buffers["running_var"].reshape(bshape) + T(self.eps))
            xhat = (x - self.buffers["running_mean"].reshape(bshape)) * inv_std
            self._cache = (xhat, inv_std, False, None)
            return gamma * xhat + beta
        comm = self._world()
        m_local = x.size // C
        if not backend_of(x).kernels:        # the NumPy bodies (not a GPU, not emulated)
            return self._forward_cpu(x, comm, m_local)
        s = xp.empty(C + 1, dtype=np.float64)
        s[:C] = x.sum(axis=axes, dtype=np.float64)
        s[C] = m_local
        comm.allreduce(s, "sum", name=f"{self!r}: the batch sums")
        count = s[C]
        if xp is np and count < 2:
            raise ShapeError(f"{self!r}: training needs more than one value per feature over "
                             f"all ranks, got {int(count)} (input shape {tuple(x.shape)} here)")
        mean = (s[:C] / count).astype(x.dtype).reshape(bshape)
        xc = x - mean
        q = (xc * xc).sum(axis=axes, dtype=np.float64)
        comm.allreduce(q, "sum", name=f"{self!r}: the batch variance")
        var = (q / count).astype(x.dtype).reshape(bshape)
        inv_std = 1 / xp.sqrt(var + T(self.eps))
        xhat = xc * inv_std
        mom = T(self.momentum)
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm *= 1 - mom
        rm += mom * mean.reshape(-1)
        rv *= 1 - mom
        rv += mom * var.reshape(-1) * (count / (count - 1)).astype(x.dtype)
        self._cache = (xhat, inv_std, True, (m_local, count))
        return gamma * xhat + beta

    # -- the CPU path: gpunn/ops/norm.py's chunked passes, the ranks' sums combined between --
    def _forward_cpu(self, x, comm, m_local):
        """One read of x for the statistics (per chunk, combined in float64), the ranks'
        (count, mean, sum of squared deviations) gathered and combined in rank order (Chan
        et al.), then one normalising pass."""
        C = self.num_features
        counts = []                             # (this rank's, every rank's) values per feature

        def combine(m, mean, m2):
            table = np.zeros((comm.size, 2 * C + 1))
            table[comm.rank] = np.concatenate([[m], mean, m2])
            comm.allreduce(table, "sum", name=f"{self!r}: the batch statistics")
            count, mu, q = 0.0, np.zeros(C), np.zeros(C)
            for row in table:                   # rank order: every rank gets the same bits
                n_r, mu_r, q_r = row[0], row[1:C + 1], row[C + 1:]
                if n_r == 0:
                    continue
                total = count + n_r
                delta = mu_r - mu
                mu = mu + delta * (n_r / total)
                q = q + q_r + delta * delta * (count * n_r / total)
                count = total
            if count < 2:
                raise ShapeError(f"{self!r}: training needs more than one value per feature "
                                 f"over all ranks, got {int(count)} (input shape "
                                 f"{tuple(x.shape)} here)")
            counts.append((m_local, count))
            return count, mu, q
        # (N, F) and (N, C, H, W) alike: the ops work on (N, C, S)
        y, cache = batchnorm_forward(x, self.params["gamma"], self.params["beta"],
                                     self.buffers["running_mean"], self.buffers["running_var"],
                                     self.eps, self.momentum, True, combine=combine)
        self._cache = ("cpu", cache, x.shape, counts[0])
        return y

    def _backward_cpu(self, dout):
        _, cache, shape, (m_local, count) = self._cache
        if dout.shape != shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(shape)}, "
                             f"got {tuple(dout.shape)}")
        C, comm = self.num_features, self._world()
        w = self.grad_weight if self.grad_weight is not None else m_local / count

        def combine(dbeta, dgamma, m):
            g = np.concatenate([dbeta * w, dgamma * w])
            comm.allreduce(g, "sum", name=f"{self!r}: the backward sums")
            scale = 1 / (w * count)
            return g[:C] * scale, g[C:] * scale
        dx, dgamma, dbeta = batchnorm_backward(dout, cache, self.params["gamma"], combine=combine)
        self.store_grad("gamma", dgamma)
        self.store_grad("beta", dbeta)
        return dx

    def backward(self, dout):
        if self._cache is not None and isinstance(self._cache[0], str):
            return self._backward_cpu(dout)
        xhat, inv_std, batch_stats, counts = self._need_cache("_cache")
        if dout.shape != xhat.shape:
            raise ShapeError(f"{self!r}: backward expected dout of shape {tuple(xhat.shape)}, "
                             f"got {tuple(dout.shape)}")
        axes = (0,) if dout.ndim == 2 else (0, 2, 3)
        bshape = (1, -1) if dout.ndim == 2 else (1, -1, 1, 1)
        C, xp = self.num_features, get_array_module(dout)
        dbeta = dout.sum(axis=axes)
        dgamma = (dout * xhat).sum(axis=axes)
        self.store_grad("gamma", dgamma)
        self.store_grad("beta", dbeta)
        gamma = self.params["gamma"].reshape(bshape)
        if not batch_stats:
            return dout * gamma * inv_std
        m_local, count = counts
        w = self.grad_weight
        if w is None:
            w = m_local / count                # a device scalar on a GPU: no host sync
        g = xp.empty(2 * C, dtype=np.float64)
        g[:C] = dbeta * w
        g[C:] = dgamma * w
        self._world().allreduce(g, "sum", name=f"{self!r}: the backward sums")
        scale = 1 / (w * count)
        s1 = (g[:C] * scale).astype(dout.dtype).reshape(bshape)
        s2 = (g[C:] * scale).astype(dout.dtype).reshape(bshape)
        return (dout - s1 - xhat * s2) * (gamma * inv_std)

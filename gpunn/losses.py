"""Losses with a ``forward`` / ``backward`` pair, and an L2 penalty for reporting.

A loss's ``forward(prediction, target)`` returns the scalar loss as a **0-d array of the
prediction's dtype on the prediction's device** (NumPy or CuPy). On a GPU this keeps the
training step free of host synchronisation; ``float(loss)`` (or ``loss.item()``) copies it
to the host when a number is reported. ``backward()`` then returns dL/dprediction for the
last forward; it takes no argument because a loss is always the end of the graph.

Input checks name the loss and show expected vs actual shapes. Label ranges are checked on
the host for NumPy labels (a min/max, cheap); for CuPy labels the check would cost a device
sync every step, so by default it is skipped there and the fused op instead turns any row
with an out-of-range label into NaN (see ``check_labels``).
"""
from __future__ import annotations

import numpy as np

from .backend import FLOAT_DTYPES, backend_of, device_of, get_array_module
from .errors import DTypeError, ShapeError
from .ops.softmax_xent import REDUCTIONS, softmax_cross_entropy, softmax_cross_entropy_soft

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss", "SoftmaxCrossEntropy", "l2_penalty"]


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_same_device(name, a, b, what_a, what_b):
    if device_of(a) != device_of(b):
        from .backend import DeviceError
        raise DeviceError(f"{name}: {what_a} is on {device_of(a)} but {what_b} is on "
                          f"{device_of(b)}; move them to one device (gpunn.backend.to_device)")


def _check_float(name, x, what):
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: {what} must be an array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: {what} dtype must be float32 or float64, got {x.dtype}")


class Loss:
    """The loss contract: ``forward(prediction, target)`` -> 0-d array (the prediction's dtype
    and device), keeping what ``backward()`` needs; ``backward()`` -> dL/dprediction."""

    reduction = "mean"

    def forward(self, prediction, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class CrossEntropyLoss(Loss):
    """Softmax followed by cross-entropy on logits, fused and stable for any magnitude (as
    PyTorch's ``CrossEntropyLoss``, which also takes logits).

    forward(logits: (N, K), labels) -> 0-d array (logits' dtype and device)
        labels: (N,) class indices of any integer dtype, in [0, K); or (N, K) per-class
        targets (one-hot or soft probabilities; any numeric dtype, used in the logits' dtype).
    backward() -> dlogits: (N, K)

    reduction: "mean" (divide by N) or "sum".
    check_labels: "auto" (default) checks index labels against [0, K) when they are NumPy
        arrays and skips the check for CuPy arrays (it would sync the device; an out-of-range
        label then gives a NaN loss); True always checks; False never does.
    """

    def __init__(self, reduction: str = "mean", check_labels="auto"):
        self.reduction = _check_reduction(type(self).__name__, reduction)
        if check_labels not in ("auto", True, False):
            raise ValueError(f"{type(self).__name__}: check_labels must be 'auto', True or False, "
                             f"got {check_labels!r}")
        self.check_labels = check_labels
        self._dlogits = None
        self._tally = None          # forward_tally's running sums, for the op to add into

    def forward(self, logits, labels):
        name = repr(self)
        _check_float(name, logits, "logits")
        if logits.ndim != 2:
            raise ShapeError(f"{name}: expected 2-d logits (N, K), got shape {tuple(logits.shape)}")
        n, k = logits.shape
        if n == 0 or k == 0:
            raise ShapeError(f"{name}: logits (N, K) must be non-empty, got shape {(n, k)}")
        xp = get_array_module(logits)
        if not hasattr(labels, "shape"):           # lists, tuples: host labels
            labels = np.asarray(labels)
        _check_same_device(name, logits, labels, "logits", "labels")

        ldt = np.dtype(labels.dtype)
        if labels.ndim == 1:
            if labels.shape[0] != n:
                raise ShapeError(f"{name}: labels must have shape ({n},) to match logits "
                                 f"{(n, k)}, got {tuple(labels.shape)}")
            if ldt.kind not in "iu":
                hint = " (convert with labels.astype(np.int64))" if ldt.kind == "f" else ""
                raise DTypeError(f"{name}: class-index labels must have an integer dtype, "
                                 f"got {ldt}{hint}; per-class targets must be 2-d (N, K)")
            check = self.check_labels
            # "auto": check on the NumPy backend only; on a CUDA device (real or the tests'
            # emulated one) reading the labels back would wait for the device
            if check is True or (check == "auto" and not backend_of(labels).kernels):
                self._check_range(labels, k, xp)
            loss, self._dlogits = softmax_cross_entropy(logits, labels, self.reduction,
                                                        tally=self._tally)
        elif labels.ndim == 2:
            if tuple(labels.shape) != (n, k):
                raise ShapeError(f"{name}: per-class targets must have the logits' shape "
                                 f"{(n, k)}, got {tuple(labels.shape)}")
            if ldt.kind not in "iufb":
                raise DTypeError(f"{name}: per-class targets must be numeric, got {ldt}")
            loss, self._dlogits = softmax_cross_entropy_soft(logits, labels, self.reduction)
        else:
            raise ShapeError(f"{name}: labels must be (N,) class indices or (N, K) targets for "
                             f"logits {(n, k)}, got shape {tuple(labels.shape)}")
        return loss

    def forward_tally(self, logits, labels, loss_sum, correct):
        """:meth:`forward`, adding to a training loop's running metrics as it goes:
        ``loss_sum += loss * N`` and ``correct +=`` the rows whose largest logit is at the
        label (for per-class targets: at the target's largest entry). loss_sum: 0-d float64,
        correct: 0-d int64, on the logits' device, updated in place. For index labels this is
        part of the loss op (on a GPU: two launches for the loss and both sums)."""
        labels_nd = getattr(labels, "ndim", None)
        if labels_nd == 1:
            self._tally = (loss_sum, correct)
            try:
                return self.forward(logits, labels)
            finally:
                self._tally = None
        loss = self.forward(logits, labels)
        loss_sum += loss * len(logits)
        if labels_nd == 2:
            correct += (logits.argmax(axis=1) == labels.argmax(axis=1)).sum()
        else:
            correct += (logits.argmax(axis=1) == labels).sum()
        return loss

    def _check_range(self, labels, k, xp):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            first = int(xp.argmax((labels < 0) | (labels >= k)))
            raise ValueError(f"{self!r}: labels must be class indices in [0, {k}) for logits "
                             f"with {k} classes; got {bad} (first bad label at index {first}; "
                             f"labels range over [{lo}, {hi}])")

    def backward(self):
        """dL/dlogits for the last forward, (N, K) in the logits' dtype."""
        if self._dlogits is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return self._dlogits


# The name before 0.2; kept as an alias for one release.
SoftmaxCrossEntropy = CrossEntropyLoss


class MSELoss(Loss):
    """Mean squared error, as PyTorch's ``MSELoss``.

    forward(pred, target) -> 0-d array; pred and target have the same shape (no
    broadcasting: an (N,) target against (N, 1) predictions is an error, not an (N, N) loss).
    "mean": sum((pred - target)^2) / pred.size, backward 2 (pred - target) / pred.size;
    "sum":  sum((pred - target)^2), backward 2 (pred - target).
    (The coursework's 1/2N sum ||y - t||^2 is ``0.5 * MSELoss("sum")(y, t) / N``.)
    """

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction("MSELoss", reduction)
        self._diff = None

    def forward(self, pred, target):
        name = repr(self)
        _check_float(name, pred, "prediction")
        if not hasattr(target, "shape"):
            target = np.asarray(target)
        _check_same_device(name, pred, target, "prediction", "target")
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(f"{name}: target must have the prediction's shape "
                             f"{tuple(pred.shape)}, got {tuple(target.shape)}")
        if pred.size == 0:
            raise ShapeError(f"{name}: empty prediction, shape {tuple(pred.shape)}")
        if np.dtype(target.dtype).kind not in "iufb":
            raise DTypeError(f"{name}: target must be numeric, got {target.dtype}")
        xp = get_array_module(pred)
        dt = pred.dtype
        diff = pred - target.astype(dt, copy=False)
        flat = diff.ravel()
        loss = xp.vdot(flat, flat)
        if self.reduction == "mean":
            loss = loss / dt.type(pred.size)
        self._diff = diff
        return xp.asarray(loss, dtype=dt)

    def backward(self):
        """dL/dpred for the last forward, in the prediction's dtype and shape."""
        if self._diff is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        d = self._diff
        scale = 2.0 / d.size if self.reduction == "mean" else 2.0
        return d * d.dtype.type(scale)


# Parameter names that are not weights: biases and batch-norm's shift and scale.
NON_WEIGHT_NAMES = frozenset({"b", "bias", "beta", "gamma"})


def l2_penalty(model_or_params, lam: float, *, weights_only: bool = True):
    """lam / 2 * sum ||W||^2, the L2 term of a regularised objective (for reporting).

    model_or_params: a model/layer (anything with ``named_parameters()``), its
        ``named_parameters()`` (``(name, Parameter)`` pairs), a list of Parameters, of
        ``(name, param, grad)`` triples, of ``(param, grad)`` pairs, or of bare arrays.
    weights_only: with names available (a model or triples), skip arrays whose last name
        component is a bias or batch-norm parameter (``b``, ``bias``, ``beta``, ``gamma``),
        the usual coursework convention. Unnamed pairs carry no names, so every array counts.
        Note the optimizers' ``weight_decay=lam`` is the gradient of
        ``l2_penalty(model, lam, weights_only=False)`` (it decays every parameter, as in PyTorch).

    Returns a 0-d array on the parameters' device, in the first parameter's dtype, so it can
    be added to a loss without a host sync; ``float()`` it to report.
    """
    lam = float(lam)
    if lam < 0:
        raise ValueError(f"l2_penalty: lam must be >= 0, got {lam}")
    items = list(model_or_params.named_parameters() if hasattr(model_or_params,
                                                                "named_parameters")
                 else model_or_params)
    named, arrays = [], []
    for it in items:
        if isinstance(it, tuple) and len(it) in (2, 3) and isinstance(it[0], str):
            named.append((it[0], getattr(it[1], "data", it[1])))     # (name, Parameter | array, ...)
        else:
            arrays.append(getattr(it, "data", it[0] if isinstance(it, tuple) else it))
    arrays += [p for name, p in named
               if not (weights_only and name.rsplit(".", 1)[-1] in NON_WEIGHT_NAMES)]
    if not arrays:
        return np.asarray(0.0)
    xp = get_array_module(*arrays)
    dt = arrays[0].dtype
    total = xp.zeros((), dtype=dt)
    for p in arrays:
        flat = p.ravel()
        total += xp.vdot(flat, flat).astype(dt, copy=False)
    total *= dt.type(0.5 * lam)
    return total

"""ONNX export: a gpunn model as an ONNX graph for deployment runtimes (onnxruntime, TensorRT,
OpenVINO...), through the ``onnx`` package (the ``onnx`` extra).

The graph takes float32 ``input`` of shape (batch, *input_shape) — NCHW for images, with a
dynamic batch axis — and returns ``logits`` (batch, K): what ``model.forward(x, train=False)``
returns. Each layer becomes the ONNX operator that computes the same thing in inference form:

    Linear          Gemm (W is (in, out) as gpunn stores it: transB = 0)
    Conv2d          Conv; padding "same" becomes TensorFlow's asymmetric pads, fixed for the
                    exported input size (the odd pixel at the bottom / right)
    MaxPool2d       MaxPool (padding acts as -inf, floor output size as gpunn computes)
    AvgPool2d       AveragePool, count_include_pad as the layer has it
    GlobalAvgPool2d GlobalAveragePool + Flatten
    ReLU, LeakyReLU, Sigmoid, Tanh, Softmax (axis 1)
    GELU            Gelu(approximate="tanh") from opset 20; before that its formula in
                    Mul/Add/Tanh nodes
    Dropout         nothing (the identity at inference)
    BatchNorm*      BatchNormalization with the running statistics (inference form)
    Flatten         Flatten (axis 1)
    Residual        the block and the shortcut (identity or projection) joined by Add
    Sequential      its layers in order

A layer without a converter is an error naming it. The run's class names and input
preparation go into the model's metadata (``metadata_props``) when given.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .extras import require

__all__ = ["to_onnx", "check_onnx", "DEFAULT_OPSET"]

DEFAULT_OPSET = 20          # the first with Gelu (onnxruntime >= 1.17)
MIN_OPSET = 13              # Softmax over one axis, Gemm / Conv / pools in their current form


class _Graph:
    """Nodes and initializers as they are emitted, with fresh value names."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, hint):
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint, array):
        """A float32 (or int64) initializer; returns its name."""
        name = self.name(hint)
        a = np.asarray(array)
        a = a.astype(np.int64 if a.dtype.kind in "iu" else np.float32)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def node(self, op, inputs, hint=None, **attrs):
        out = self.name(hint or op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


def _host(a):
    from .backend import to_numpy
    return np.asarray(to_numpy(a))


def _pads(layer, shape):
    """gpunn's (pt, pb, pl, pr) for a per-sample (C, H, W) input -> ONNX's [pt, pl, pb, pr]."""
    from .ops.geometry import window_geometry
    what = "kernel" if type(layer).__name__ == "Conv2d" else "window"
    (pt, pb, pl, pr), _, _ = window_geometry(shape[1], shape[2], layer.kernel_size, layer.stride,
                                             layer.padding, repr(layer), what)
    return [pt, pl, pb, pr]


def _gelu_formula(g, x):
    """0.5 x (1 + tanh(k0 (x + k1 x^3))) in primitive nodes (opsets before 20)."""
    from .ops.activation import _GELU_K0, _GELU_K1
    x3 = g.node("Mul", [g.node("Mul", [x, x]), x])
    inner = g.node("Add", [x, g.node("Mul", [x3, g.const("gelu_k1", _GELU_K1)])])
    t = g.node("Tanh", [g.node("Mul", [inner, g.const("gelu_k0", _GELU_K0)])])
    half_x = g.node("Mul", [x, g.const("half", 0.5)])
    return g.node("Mul", [half_x, g.node("Add", [t, g.const("one", 1.0)])], hint="gelu")


def _emit(g, layer, x, shape, where):
    """Nodes computing ``layer`` on value ``x`` (per-sample shape ``shape``); returns the output
    value's name and per-sample shape."""
    from . import layers as L
    from .model import Sequential

    out_shape = layer.output_shape(shape)
    p = {k: _host(v) for k, v in layer.params.items()}
    if isinstance(layer, Sequential):
        for i, child in enumerate(layer.layers):
            x, shape = _emit(g, child, x, shape, f"{where}.{i}" if where else str(i))
        return x, shape
    if isinstance(layer, L.Residual):
        h, s = x, shape
        for i, child in enumerate(layer.block):
            h, s = _emit(g, child, h, s, f"{where}.{i}")
        sc, t = x, shape
        for j, child in enumerate(layer.shortcut):
            sc, t = _emit(g, child, sc, t, f"{where}.{len(layer.block) + j}")
        return g.node("Add", [sc, h], hint="residual"), out_shape
    if isinstance(layer, L.Linear):
        ins = [x, g.const("W", p["W"])] + ([g.const("b", p["b"])] if "b" in p else [])
        return g.node("Gemm", ins, hint="linear"), out_shape
    if isinstance(layer, L.Conv2d):
        ins = [x, g.const("W", p["W"])] + ([g.const("b", p["b"])] if "b" in p else [])
        return g.node("Conv", ins, hint="conv", kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=_pads(layer, shape)), out_shape
    if isinstance(layer, L.MaxPool2d):
        return g.node("MaxPool", [x], kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=_pads(layer, shape), ceil_mode=0), out_shape
    if isinstance(layer, L.AvgPool2d):
        return g.node("AveragePool", [x], kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=_pads(layer, shape), ceil_mode=0,
                      count_include_pad=int(layer.count_include_pad)), out_shape
    if isinstance(layer, L.GlobalAvgPool2d):
        return g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), out_shape
    if isinstance(layer, L.ReLU):
        return g.node("Relu", [x]), out_shape
    if isinstance(layer, L.LeakyReLU):
        return g.node("LeakyRelu", [x], alpha=float(layer.slope)), out_shape
    if isinstance(layer, L.Sigmoid):
        return g.node("Sigmoid", [x]), out_shape
    if isinstance(layer, L.Tanh):
        return g.node("Tanh", [x]), out_shape
    if isinstance(layer, L.GELU):
        if g.opset >= 20:
            return g.node("Gelu", [x], approximate="tanh"), out_shape
        return _gelu_formula(g, x), out_shape
    if isinstance(layer, L.Softmax):
        return g.node("Softmax", [x], axis=1), out_shape
    if isinstance(layer, L.Dropout):
        return x, out_shape
    if isinstance(layer, L.norm._BatchNorm):
        ins = [x, g.const("gamma", p["gamma"]), g.const("beta", p["beta"]),
               g.const("running_mean", _host(layer.buffers["running_mean"])),
               g.const("running_var", _host(layer.buffers["running_var"]))]
        return g.node("BatchNormalization", ins, hint="batchnorm",
                      epsilon=float(layer.eps)), out_shape
    if isinstance(layer, L.Flatten):
        return g.node("Flatten", [x], axis=1), out_shape
    raise NotImplementedError(
        f"ONNX export: no converter for layer {where} ({layer!r}); gpunn/onnx_export.py "
        f"converts {', '.join(_SUPPORTED)}")


_SUPPORTED = ("Sequential", "Residual", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d",
              "GlobalAvgPool2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
              "Dropout", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm", "Flatten")


def to_onnx(model, input_shape, path=None, *, opset: int = DEFAULT_OPSET,
            class_names=None, metadata: dict | None = None, name: str = "gpunn"):
    """The ONNX ModelProto of ``model`` for per-sample ``input_shape`` (e.g. (1, 28, 28));
    written to ``path`` when given. Weights go in as float32 whatever the model's dtype.

    ``class_names`` and ``metadata`` (JSON-able values) are stored in ``metadata_props``.
    Raises NotImplementedError naming a layer without a converter, ShapeError when the model
    cannot take ``input_shape``, MissingExtra when onnx is not installed.
    """
    onnx = require("onnx", "onnx", "ONNX export")
    from .model import Sequential

    opset = int(opset)
    if opset < MIN_OPSET:
        raise ValueError(f"to_onnx: opset must be >= {MIN_OPSET}, got {opset}")
    input_shape = tuple(int(s) for s in input_shape)
    seq = model if isinstance(model, Sequential) else Sequential(model)
    out_shape = seq.output_shape(input_shape)            # ShapeError naming the layer
    g = _Graph(onnx, opset)
    y, shape = _emit(g, seq, "input", input_shape, "")
    if y == "input" or not g.nodes or g.nodes[-1].output[0] != y:
        y = g.node("Identity", [y])                      # an output must come from a node
    g.nodes[-1].output[0] = "logits"
    g.nodes[-1].name = "logits"
    T = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, name,
        [onnx.helper.make_tensor_value_info("input", T, ["batch", *input_shape])],
        [onnx.helper.make_tensor_value_info("logits", T, ["batch", *out_shape])],
        initializer=g.inits)
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                               producer_name="gpunn", producer_version=_version())
    m.ir_version = min(m.ir_version, _ir_version_for(onnx, opset))
    m.doc_string = f"gpunn export of {getattr(model, 'name', type(model).__name__)}"
    meta = {"input_shape": list(input_shape), **(metadata or {})}
    if class_names is not None:
        meta["class_names"] = list(class_names)
    onnx.helper.set_model_props(m, {k: json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(m, full_check=True)         # shapes inferred and checked too
    if path is not None:
        onnx.save(m, str(path))
    return m


def _version():
    from . import __version__
    return __version__


def _ir_version_for(onnx, opset):
    """The IR version the opset came with (newer runtimes read older IR; not the reverse)."""
    for entry in onnx.helper.VERSION_TABLE:          # (release, ir, ai.onnx opset, ...)
        if entry[2] >= opset:
            return entry[1]
    return onnx.IR_VERSION


def check_onnx(model, path, input_shape, *, batch: int = 4, seed: int = 0, x=None) -> float:
    """Run the exported model at ``path`` in onnxruntime on ``x`` (default: a random float32
    batch) and return the norm-relative difference ``|a - b| / |a|`` from
    ``model.forward(x, train=False)`` (float32, on the CPU). Needs onnxruntime."""
    ort = require("onnxruntime", "onnx", "checking an ONNX export")
    from .backend import to_device, to_numpy

    if x is None:
        x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    params = model.parameters()
    if params:                          # the model's dtype and device (float32 / CPU if none)
        from .backend import device_of
        x_in = to_device(x.astype(params[0].dtype), device_of(params[0].data))
    else:
        x_in = x
    ref = _host(model.forward(x_in, train=False))
    ref, got = ref.astype(np.float64), np.asarray(to_numpy(got), dtype=np.float64)
    if ref.shape != got.shape:
        return math.inf
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(ref - got) / den) if den > 0 else float(np.linalg.norm(got))

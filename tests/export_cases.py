"""What the ONNX export and the torch interop tests run: every zoo model (from the registry, so
a new model is covered when it is added), every layer case of gpunn.parity.layer_cases() (a
new layer needs one there already), and padding cases the layer list does not reach."""
import numpy as np

import gpunn
from gpunn import zoo
from gpunn.parity import layer_cases


def zoo_input_shape(name):
    return getattr(zoo, "INPUT_SHAPES", {}).get(name, (1, 28, 28))


ZOO = list(zoo.MODELS)

# asymmetric TensorFlow "same" pads (odd total: the extra pixel bottom / right), even kernels,
# pairs, both count_include_pad settings; each (name, factory(dtype), per-sample input shape)
PADDING_CASES = [
    ("Conv2d(2, 3, 4, same)", lambda dt: gpunn.Conv2d(2, 3, 4, padding="same", rng=4, dtype=dt), (2, 7, 6)),
    ("Conv2d(2, 3, 2, s2, same)", lambda dt: gpunn.Conv2d(2, 3, 2, stride=2, padding="same", rng=5, dtype=dt), (2, 7, 9)),
    ("Conv2d(2, 3, 3, s2, same, no bias)", lambda dt: gpunn.Conv2d(2, 3, 3, stride=2, padding="same", bias=False, rng=6, dtype=dt), (2, 8, 10)),
    ("Conv2d(2, 3, (3, 5), s(2, 1), pad (1, 2))", lambda dt: gpunn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2), rng=7, dtype=dt), (2, 7, 8)),
    ("MaxPool2d(2, 2, same)", lambda dt: gpunn.MaxPool2d(2, 2, "same"), (2, 7, 9)),
    ("MaxPool2d(3, 2, same) even", lambda dt: gpunn.MaxPool2d(3, 2, "same"), (2, 8, 10)),
    ("MaxPool2d(3, 1, pad 1)", lambda dt: gpunn.MaxPool2d(3, 1, 1), (2, 5, 6)),
    ("AvgPool2d(2, 2, same)", lambda dt: gpunn.AvgPool2d(2, 2, "same"), (2, 7, 9)),
    ("AvgPool2d(2, 2, same, incl)", lambda dt: gpunn.AvgPool2d(2, 2, "same", count_include_pad=True), (2, 7, 9)),
    ("AvgPool2d(3, 2, same) even", lambda dt: gpunn.AvgPool2d(3, 2, "same"), (2, 8, 10)),
    ("AvgPool2d(3, 2, pad 1)", lambda dt: gpunn.AvgPool2d(3, 2, 1), (2, 7, 8)),
    ("AvgPool2d(3, 2, pad 1, incl)", lambda dt: gpunn.AvgPool2d(3, 2, 1, count_include_pad=True), (2, 7, 8)),
]

LAYERS = [(name, make, shape) for name, make, shape, _ in layer_cases()] + PADDING_CASES


def randomize(model, seed=0):
    """Every parameter random (biases and batch-norm scales too, not their zero / one
    initial values) and batch-norm running statistics away from (0, 1), so inference-form
    batch norm and every bias are really tested."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        scale = 0.5 if p.data.ndim == 1 else 1.0
        p.data[...] = (rng.standard_normal(p.shape) * scale * np.std(p.data)
                       if p.data.ndim > 1 and np.std(p.data) > 0
                       else rng.standard_normal(p.shape) * scale).astype(p.dtype)
    for layer in model.walk():
        if "running_mean" in layer.buffers:
            rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
            rm[...] = (rng.standard_normal(rm.shape) * 0.3).astype(rm.dtype)
            rv[...] = rng.uniform(0.5, 2.0, rv.shape).astype(rv.dtype)
    return model


def zoo_model(name, dtype=np.float32, seed=0, **kw):
    m = gpunn.build_model(name, zoo_input_shape(name), 10, seed=seed, dtype=dtype, **kw)
    return randomize(m, seed)


def layer_model(make, dtype=np.float32, seed=0):
    return randomize(gpunn.Sequential(make(dtype)), seed)

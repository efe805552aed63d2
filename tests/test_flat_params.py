"""Parameters in flat buffers: views, layout, moves, assignment, and one fused optimizer update
per buffer that gives the same bits as per-array updates."""
import numpy as np
import pytest

from gpunn.errors import DTypeError, ShapeError
from gpunn.layers import BatchNorm1d, Conv2d, Flatten, Linear, ReLU
from gpunn.model import Sequential
from gpunn.optim import SGD, Adam
from gpunn.parameter import ALIGN_BYTES, FlatBuffer, Parameter

F64 = np.float64


def _cnn(dtype=np.float32, seed=0):
    return Sequential(Conv2d(1, 3, 3, padding=1, rng=seed, dtype=dtype), ReLU(), Flatten(),
                      Linear(3 * 4 * 4, 5, rng=seed + 1, dtype=dtype), BatchNorm1d(5, dtype=dtype),
                      Linear(5, 3, bias=False, rng=seed + 2, dtype=dtype))


def test_views_share_one_buffer_per_dtype_aligned_with_zero_gaps():
    m = _cnn()
    params = m.parameters()
    flat = params[0].flat
    assert isinstance(flat, FlatBuffer) and all(p.flat is flat for p in params)
    assert flat.params == params
    for layer in m.walk():
        for k, a in layer.params.items():
            assert np.shares_memory(a, flat.values) and np.shares_memory(layer.grads[k], flat.grads)
            assert a.ctypes.data % ALIGN_BYTES == 0 and a.flags.c_contiguous
    used = np.zeros(flat.size, bool)
    for i, p in enumerate(params):
        used[flat.slice_of(i)] = True
    assert used.sum() == sum(p.size for p in params) < flat.size     # alignment leaves gaps
    assert not flat.values[~used].any() and not flat.grads[~used].any()


def test_one_buffer_per_dtype_in_a_mixed_model():
    m = Sequential(Linear(4, 3, rng=0, dtype=np.float32), Linear(3, 2, rng=1, dtype=F64))
    flats = {id(p.flat): p.flat for p in m.parameters()}
    assert sorted(str(f.dtype) for f in flats.values()) == ["float32", "float64"]


def test_assignment_writes_into_the_buffer_and_is_checked():
    m = _cnn()
    layer = m.layers[3]
    view = layer.params["W"]
    layer.params["W"] = np.ones((48, 5), np.float32)
    assert layer.params["W"] is view and np.all(view == 1)
    assert np.all(m.parameters()[0].flat.values[m.parameters()[0].flat.slice_of(2)] == 1)
    with pytest.raises(ShapeError, match=r"Linear\(48, 5.*params\['W'\]: expected shape \(48, 5\), got \(5, 48\)"):
        layer.params["W"] = np.ones((5, 48), np.float32)
    with pytest.raises(DTypeError, match=r"params\['W'\]: expected dtype float32, got float64"):
        layer.params["W"] = np.ones((48, 5))
    with pytest.raises(KeyError, match="has no parameter 'V'"):
        layer.grads["V"] = np.ones(3)
    layer.grads["b"] = np.full(5, 2.0, np.float32)
    assert np.all(layer.grads["b"] == 2)


def test_optimizer_built_before_a_move_keeps_training():
    # No GPU here: a dtype move re-packs the buffers just as a device move re-points them.
    a, b = _cnn(np.float32), _cnn(F64)
    opt_a = SGD(a, 0.1, momentum=0.9)
    opt_b = SGD(b, 0.1, momentum=0.9)
    a.to(dtype=F64)
    assert a.parameters()[0].flat.values.dtype == F64
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4))
    for _ in range(2):
        for m, o in ((a, opt_a), (b, opt_b)):
            m.backward(np.ones_like(m.forward(x, train=True)))
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.dtype == F64
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-6)
    assert opt_a.state["velocity"][0].dtype == F64


@pytest.mark.gpu
def test_optimizer_built_before_to_cuda_trains_on_the_gpu():
    import cupy
    cpu, gpu = _cnn(F64), _cnn(F64)
    opt_c, opt_g = Adam(cpu, 0.01), Adam(gpu, 0.01)
    gpu.to("cuda")
    assert isinstance(gpu.parameters()[0].flat.values, cupy.ndarray)
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4))
    for _ in range(3):
        cpu.backward(np.ones_like(cpu.forward(x, train=True)))
        gpu.backward(cupy.ones_like(gpu.forward(cupy.asarray(x), train=True)))
        opt_c.step()
        opt_g.step()
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        np.testing.assert_allclose(q.data.get(), p.data, rtol=1e-12, atol=1e-14)
    assert isinstance(opt_g.state["m"][0], cupy.ndarray)


OPTIMIZERS = {
    "sgd": lambda ps: SGD(ps, 0.1),
    "momentum": lambda ps: SGD(ps, 0.1, momentum=0.9),
    "nesterov+wd": lambda ps: SGD(ps, 0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "ema": lambda ps: SGD(ps, 0.1, momentum=0.9, ema=True, weight_decay=0.01),
    "adam": lambda ps: Adam(ps, 0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_flat_update_equals_per_array_updates_bit_for_bit(kind, dtype):
    m = _cnn(dtype)
    loose = [(p.data.copy(), p.grad.copy()) for p in m.parameters()]
    opt_flat, opt_loose = OPTIMIZERS[kind](m), OPTIMIZERS[kind](loose)
    assert len(opt_flat.slots) == 1 and len(opt_loose.slots) == len(loose)
    rng = np.random.default_rng(1)
    for _ in range(4):
        for p, (_, g) in zip(m.parameters(), loose):
            g[...] = rng.standard_normal(g.shape)
            p.grad[...] = g
        opt_flat.step()
        opt_loose.step()
    for p, (q, _) in zip(m.parameters(), loose):
        np.testing.assert_array_equal(p.data, q)
    sf, sl = opt_flat.state_dict(), opt_loose.state_dict()
    assert sf.keys() == sl.keys()
    for k in sf:
        if isinstance(sf[k], np.ndarray):
            np.testing.assert_array_equal(sf[k], sl[k], err_msg=k)


@pytest.mark.parametrize("kind,op", [("momentum", "sgd_update"), ("adam", "adam_update")])
def test_one_update_call_per_buffer(kind, op, monkeypatch):
    import gpunn.optim.optimizers as optimizers
    calls = []
    real = getattr(optimizers, op)
    monkeypatch.setattr(optimizers, op, lambda p, *a: calls.append(p.shape) or real(p, *a))
    m = Sequential(_cnn(np.float32), Linear(3, 2, rng=9, dtype=F64))   # two dtypes: two buffers
    opt = OPTIMIZERS[kind](m)
    opt.step()
    assert len(calls) == 2 and all(len(s) == 1 for s in calls)


def test_nested_sequential_keeps_its_buffer_and_the_outer_optimizer_is_exact():
    inner = _cnn(F64)
    inner_opt = SGD(inner, 0.1, momentum=0.5)
    outer = Sequential(inner, Linear(3, 2, rng=4, dtype=F64))
    assert outer.parameters()[0].flat is inner_opt.slots[0]      # not re-packed
    opt = SGD(outer, 0.1, momentum=0.5)
    ref = [(p.data.copy(), p.grad.copy()) for p in outer.parameters()]
    ref_opt = SGD(ref, 0.1, momentum=0.5)
    for p, (_, g) in zip(outer.parameters(), ref):
        p.grad[...] = 1.5
        g[...] = 1.5
    opt.step()
    ref_opt.step()
    for p, (q, _) in zip(outer.parameters(), ref):
        np.testing.assert_array_equal(p.data, q)


def test_old_format_optimizer_state_loads():
    # the per-parameter key format written before flat buffers (see tests/fixtures too)
    m = Sequential(Linear(3, 2, rng=0, dtype=F64))
    old = {"type": "SGD", "num_params": 2, "t": 5, "lr": 0.2, "momentum": 0.9,
           "nesterov": False, "weight_decay": 0.0, "ema": False,
           "velocity.0": np.arange(6.0).reshape(3, 2), "velocity.1": np.array([7.0, 8.0])}
    opt = SGD(m, 0.1, momentum=0.9)
    opt.load_state_dict(old)
    assert opt.t == 5 and opt.lr == 0.2
    flat = opt.slots[0]
    np.testing.assert_array_equal(opt.state["velocity"][0][flat.slice_of(0)], np.arange(6.0))
    np.testing.assert_array_equal(opt.state["velocity"][0][flat.slice_of(1)], [7.0, 8.0])
    sd = opt.state_dict()
    for k in old:
        np.testing.assert_array_equal(sd[k], old[k])


def test_parameter_repr_and_standalone_layers():
    lin = Linear(3, 2, rng=0)
    p = lin.parameters()[0]
    assert isinstance(p, Parameter) and p.flat is None and "alone" in repr(p)
    opt = SGD(lin, 0.1)                 # a standalone layer is packed by its optimizer
    assert p.flat is opt.slots[0] and "flat" in repr(p)


def test_layer_and_sequential_default_to_the_same_mode():
    from gpunn.layers import Dropout
    d = Dropout(0.5, seed=1)
    m = Sequential(Dropout(0.5, seed=1))
    x = np.ones((4, 8), np.float32)
    assert d.training and m.training
    y = d(x)
    np.testing.assert_array_equal(y, m(x))             # both train: the same mask
    assert not np.all(y == x)
    m.eval()
    d.eval()
    assert not m.layers[0].training
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(m(x), x)
    np.testing.assert_array_equal(d.forward(x, train=True), m.forward(x, train=True))

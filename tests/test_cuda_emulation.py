"""The whole CUDA path on the CPU: ops take their CUDA bodies (grid sizes, argument
marshalling, allocation) and the RawKernel sources run compiled for the CPU, compared step by
step with the NumPy path."""
import numpy as np
import pytest

from gpunn.parity import layer_parity, training_parity

from gpunn.testing import emulated_cuda


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_layer_matches(side, dtype):
    rows = layer_parity(side, dtype)
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(f"{r.what}: fwd {r.forward:.2e} bwd {r.backward:.2e} "
                              f"launches {r.launches}" for r in bad)
    assert any(r.launches > 0 for r in rows)


@pytest.mark.parametrize("model", ["model4", "cnn-bn"])
def test_training_matches_float64(side, model):
    row = training_parity(side, model, np.float64, steps=24, batch=16)
    assert row.forward < 1e-10 and row.backward < 1e-10, row
    assert row.launches > 24 * 5


def test_adam_and_float32_training(side):
    row = training_parity(side, "model2", np.float64, steps=12, batch=16, optimizer="adam")
    assert row.forward < 1e-10 and row.backward < 1e-10, row
    row = training_parity(side, "model4", np.float32, steps=12, batch=16)
    assert row.ok, row


def test_dropout_masks_identical_to_numpy_body(side):
    from gpunn.ops.dropout import dropout_forward
    x = np.random.default_rng(0).standard_normal((7, 33)).astype(np.float32)
    y_ref, m_ref = dropout_forward(x, 0.4, seed=9, step=3)
    with emulated_cuda():
        y, m = dropout_forward(x, 0.4, seed=9, step=3)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_relu_propagates_nan_like_the_numpy_body(side):
    from gpunn.ops.activation import relu_forward
    x = np.array([-1.0, np.nan, 2.0, 0.0, -np.inf], dtype=np.float32)
    ref = relu_forward(x)
    with emulated_cuda():
        y = relu_forward(x)
    np.testing.assert_array_equal(y, ref)          # NaN == NaN for assert_array_equal
    assert np.isnan(y[1])


def test_parity_command_emulated(side):
    from click.testing import CliRunner
    from gpunn.cli import main
    r = CliRunner().invoke(main, ["parity", "--emulate", "--steps", "4", "--models", "model2",
                                  "--dtype", "float64"])
    assert r.exit_code == 0, r.output
    assert "emulated CUDA" in r.output and ", 0 failed" in r.output


def test_parity_command_without_gpu_says_why():
    from click.testing import CliRunner
    from gpunn.backend import cuda_available
    from gpunn.cli import main
    if cuda_available():
        pytest.skip("a GPU is present")
    r = CliRunner().invoke(main, ["parity"])
    assert r.exit_code == 2 and "--emulate" in r.output


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_is_three_launches_each_way_on_cuda(relu):
    """A BatchNorm2d (and a fused BatchNorm + ReLU) step on the CUDA path, as a captured graph
    records it: the six kernels of kernels/batchnorm.cu (five in evaluation mode), no
    element-wise or reduction launches of the array library, and the parameter gradients
    written straight into the gradient buffers (no copies)."""
    from gpunn.fuse import fuse, fused_pairs
    from gpunn.layers import BatchNorm2d, ReLU
    from gpunn.model import Sequential
    from gpunn.testing import device_array, to_device_arrays
    net = Sequential(BatchNorm2d(3, dtype=np.float64), *([ReLU()] if relu else []))
    fuse(net)
    assert len(fused_pairs(net)) == int(relu)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    kernels = ["partial_stats", "stats", "normalise", "partial_grad", "grad_coeffs",
               "backward_dx"]
    for train in (True, False):
        with emulated_cuda(graphs=True) as backend:
            to_device_arrays(net)
            xd, dout = device_array(x), device_array(np.ones_like(x))
            with backend.graph_capture() as cap:
                net.forward(xd, train=train)
                net.backward(dout)
        want = [f"kernel batchnorm_{k}_f64" for k in kernels if train or k != "partial_stats"]
        assert cap.labels() == want


def test_a_convolution_keeps_its_input_not_the_im2col_matrix_on_cuda():
    """Between forward and backward the CUDA body holds x (which the layer before keeps
    anyway), not col, kh*kw times its size; backward rebuilds col with one im2col launch and
    gives the same gradients as the NumPy body."""
    from gpunn import kernels
    from gpunn.layers import Conv2d
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 6, 5))
    dout = rng.standard_normal((3, 4, 6, 5))
    ref = Conv2d(2, 4, 3, padding=1, rng=1, dtype=np.float64)
    ref.forward(x, train=True)
    dx_ref = ref.backward(dout)
    layer = Conv2d(2, 4, 3, padding=1, rng=1, dtype=np.float64)
    with emulated_cuda():
        layer.forward(x, train=True)
        held = [a for a in layer._cache[1] if isinstance(a, np.ndarray)]
        assert len(held) == 1 and held[0] is x
        kernels.reset_launch_counts()
        dx = layer.backward(dout)
        assert kernels.count_launches().get("im2col_f64") == 1
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    for k in ("W", "b"):
        np.testing.assert_allclose(layer.grads[k], ref.grads[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
def test_a_large_convolution_runs_in_pieces_of_samples_on_cuda(monkeypatch, relu):
    """Where im2col would pass GPU_COL_BYTES the CUDA bodies take the batch a few samples at
    a time (7 samples as 3 + 3 + 1 here): the same output and gradients as in one piece, the
    weight and bias gradients summed over the pieces into the layer's buffers."""
    from gpunn import kernels
    from gpunn.ops import conv as conv_ops
    from gpunn.layers import Conv2d
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 9, 8))
    runs = []
    for cap in (None, 3 * 3 * 9 * 5 * 4 * 8):          # C*kh*kw*oh*ow*8 bytes: 3 samples
        if cap is not None:
            monkeypatch.setattr(conv_ops, "GPU_COL_BYTES", cap)
        layer = Conv2d(3, 4, 3, stride=2, padding=1, rng=1, dtype=np.float64)
        with emulated_cuda():
            kernels.reset_launch_counts()
            y = layer._forward(x, relu=relu)
            dout = np.random.default_rng(1).standard_normal(y.shape)
            dx = layer._backward(dout, y if relu else None)
            launches = kernels.count_launches()
        runs.append((y, dx, layer.grads["W"].copy(), layer.grads["b"].copy(), launches))
    (y0, dx0, w0, b0, n0), (y1, dx1, w1, b1, n1) = runs
    assert y0.shape == (7, 4, 5, 4)
    assert n0["im2col_f64"] == 2 and n1["im2col_f64"] == 6      # forward + backward, 3 pieces
    assert n1["col2im_f64"] == 3
    np.testing.assert_allclose(y1, y0, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w1, w0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b1, b0, rtol=1e-12, atol=1e-12)


def test_the_loss_and_the_running_metrics_are_two_launches_on_cuda():
    """A training step's loss with its running loss and correct count, as a captured graph
    records it: the row kernel and the finishing kernel, nothing else (no cast of the int64
    labels, no sum, mean, argmax, comparison, count or additions of the array library)."""
    from gpunn.losses import CrossEntropyLoss
    from gpunn.testing import device_array
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((9, 4)), rng.integers(0, 4, size=9)
    with emulated_cuda(graphs=True) as backend:
        zd, yd = device_array(z), device_array(y)
        loss_sum, correct = device_array(np.zeros(())), device_array(np.zeros((), np.int64))
        with backend.graph_capture() as cap:
            CrossEntropyLoss().forward_tally(zd, yd, loss_sum, correct)
    assert cap.labels() == ["kernel softmax_xent_f64", "kernel softmax_xent_finish_f64"]

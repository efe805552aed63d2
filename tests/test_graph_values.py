"""gpunn.graphs: HostValue and StepValues, the per-step numbers of a graph-style step, and the
_dyn kernels the CUDA bodies launch there (emulated CUDA): same results as the eager kernels."""
import numpy as np
import pytest

from gpunn.graphs import GraphCaptureError, HostValue, StepValues, graph_step, step_values
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, Adam
from gpunn.testing import emulated_cuda
from gpunn.zoo import build_model
from gpunn import kernels
from gpunn.backend import NUMPY


def test_host_value_reads_its_getter_each_time():
    box = {"n": 3}
    v = HostValue(lambda: box["n"])
    k = v.derive(lambda s: s * 10).derive(lambda s: s + 1)
    assert int(v) == 3 and float(v) == 3.0 and int(k) == 31
    box["n"] = 5
    assert int(v) == 5 and k.value() == 51 and k.value(offset=-1) == 41
    assert np.float32(HostValue(lambda: 0.1)) == np.float32(0.1)
    assert "HostValue(5)" == repr(v)


class _Capture:
    def __init__(self):
        self.prefilled = []

    def prefill(self, arr, value):
        self.prefilled.append(value)
        arr[...] = value


def test_step_values_offsets_and_refresh():
    host = {"step": 7, "lr": 0.5}
    sv = StepValues(_Capture())
    read_then_increment = sv.device(NUMPY, HostValue(lambda: host["step"]), np.int64)
    host["step"] += 1                     # the owner's increment after the read (Dropout)
    lr = sv.device(NUMPY, HostValue(lambda: host["lr"]), np.float32)
    const = sv.device(NUMPY, 2.5, np.float64)
    sv.finish()
    assert sv.capture.prefilled == [7, np.float32(0.5), 2.5]
    host["step"] = 7                     # capture undone; the replay's host advance:
    host["step"] += 1
    assert sv.refresh() == 3             # first refresh writes everything
    assert read_then_increment[0] == 7 and lr[0] == np.float32(0.5) and const[0] == 2.5
    host["step"] += 1
    assert sv.refresh() == 1 and read_then_increment[0] == 8
    host["lr"] = 0.25
    host["step"] += 1
    assert sv.refresh() == 2 and lr[0] == np.float32(0.25)
    with pytest.raises(GraphCaptureError, match="fixed"):
        sv.device(NUMPY, 1.0, np.float64)


def test_a_float_changing_inside_the_step_is_refused():
    box = {"lr": 0.1}
    sv = StepValues(_Capture())
    sv.device(NUMPY, HostValue(lambda: box["lr"]), np.float64)
    box["lr"] = 0.2
    with pytest.raises(GraphCaptureError, match="only integer"):
        sv.finish()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_graph_style_step_launches_dyn_kernels_and_computes_the_same(opt_name):
    """Dropout's key and the optimizer's lr / bias corrections read from device memory give
    the eager kernels' bits (model4 with dropout, float64 and float32)."""
    for dt in (np.float64, np.float32):
        finals = []
        for graph_style in (False, True):
            m = build_model("model4", (1, 12, 12), 5, seed=1, dtype=dt, dropout=0.4)
            opt = SGD(m.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd" \
                else Adam(m.parameters(), lr=3e-3)
            loss = CrossEntropyLoss()
            rng = np.random.default_rng(0)
            with emulated_cuda():
                kernels.reset_launch_counts()
                for _ in range(3):
                    x = rng.standard_normal((4, 1, 12, 12)).astype(dt)
                    y = rng.integers(0, 5, size=4)
                    sv = StepValues() if graph_style else None
                    if graph_style:
                        with graph_step(sv):
                            assert step_values() is sv
                            loss.forward(m.forward(x, train=True), y)
                            m.backward(loss.backward())
                            opt.step()
                        assert len(sv.entries) == (2 if opt_name == "sgd" else 4)
                    else:
                        loss.forward(m.forward(x, train=True), y)
                        m.backward(loss.backward())
                        opt.step()
                counts = kernels.count_launches()
            sfx = "f64" if dt == np.float64 else "f32"
            upd = "sgd_momentum_update" if opt_name == "sgd" else "adam_update"
            assert counts.get(f"dropout_forward{'_dyn' if graph_style else ''}_{sfx}") == 3
            assert counts.get(f"{upd}{'_dyn' if graph_style else ''}_{sfx}") == 3
            finals.append(m.state_dict())
        for k in finals[0]:
            assert finals[0][k].tobytes() == finals[1][k].tobytes(), (dt, k)
    assert step_values() is None

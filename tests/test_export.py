"""ONNX export (the onnx extra): every zoo model and every layer type, run in onnxruntime,
against gpunn's evaluation-mode forward in float32 (relative 1e-5); gpunn export end to end."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import gpunn
from gpunn.cli import main
from gpunn.errors import ShapeError
from gpunn.extras import MissingExtra
from gpunn.onnx_export import check_onnx, to_onnx
from gpunn.runs import load_model

from export_cases import LAYERS, ZOO, layer_model, zoo_input_shape, zoo_model

REASON = "the onnx extra is not installed (pip install 'gpunn[onnx]': onnx and onnxruntime)"
TOL = 1e-5


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason=REASON)
    return pytest.importorskip("onnxruntime", reason=REASON)


def _run(ort, path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def _assert_same(model, path, ort, shape, batches=(3, 1)):
    """Logits from onnxruntime == gpunn's eval forward, norm-relative and element by element
    (to 1e-5 of the largest logit), at more than one batch size (the batch axis is dynamic)."""
    rng = np.random.default_rng(1)
    for n in batches:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        ref = model.forward(x, train=False)
        got = _run(ort, path, x)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL * np.abs(ref).max())
        assert check_onnx(model, path, shape, x=x) <= TOL


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_exports(name, ort, tmp_path):
    shape = zoo_input_shape(name)
    model = zoo_model(name).eval()
    path = tmp_path / f"{name}.onnx"
    to_onnx(model, shape, path)
    _assert_same(model, path, ort, shape)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_type_exports(name, make, shape, opset, ort, tmp_path):
    model = layer_model(make)
    path = tmp_path / "layer.onnx"
    proto = to_onnx(model, shape, path, opset=opset)
    _assert_same(model, path, ort, shape)
    if name == "GELU":      # opset 20 has the operator; before it the formula is spelled out
        ops = {n.op_type for n in proto.graph.node}
        assert ("Gelu" in ops) == (opset >= 20) and ("Tanh" in ops) == (opset < 20)
    if name.startswith("Dropout"):
        assert [n.op_type for n in proto.graph.node] == ["Identity"]


def test_the_graph_interface(ort, tmp_path):
    import onnx
    model = zoo_model("model4").eval()
    to_onnx(model, (1, 28, 28), tmp_path / "m.onnx", class_names=list("abcdefghij"),
            metadata={"preprocessing": {"pixel_scale": 255.0}})
    m = onnx.load(str(tmp_path / "m.onnx"))
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 10]
    assert [o.version for o in m.opset_import] == [20]
    meta = {p.key: json.loads(p.value) for p in m.metadata_props}
    assert meta == {"input_shape": [1, 28, 28], "class_names": list("abcdefghij"),
                    "preprocessing": {"pixel_scale": 255.0}}
    pads = [list(a.ints) for n in m.graph.node if n.op_type == "Conv" for a in n.attribute
            if a.name == "pads"]
    assert pads == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_a_float64_model_exports_as_float32(ort, tmp_path):
    model = zoo_model("cnn-bn", dtype=np.float64).eval()
    to_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28))
    got = _run(ort, tmp_path / "m.onnx", x.astype(np.float32))
    assert got.dtype == np.float32
    assert check_onnx(model, tmp_path / "m.onnx", (1, 28, 28), x=x) <= TOL


def test_a_layer_without_a_converter_is_named(ort, tmp_path):
    class Square(gpunn.Layer):
        def forward(self, x, *, train=None):
            return x * x

    model = gpunn.Sequential(gpunn.Flatten(), Square(), gpunn.Linear(4, 2))
    with pytest.raises(NotImplementedError, match=r"layer 1 \(Square\(\)\).*converts .*Conv2d"):
        to_onnx(model, (1, 2, 2), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_input_shape_and_opset(ort, tmp_path):
    with pytest.raises(ShapeError):
        to_onnx(zoo_model("model4"), (1, 2, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset must be >= 13"):
        to_onnx(zoo_model("model1"), (1, 28, 28), tmp_path / "m.onnx", opset=11)


def test_without_onnx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtra, match=r"pip install 'gpunn\[onnx\]'"):
        to_onnx(zoo_model("model1"), (1, 28, 28), tmp_path / "m.onnx")


# -- gpunn export -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "m4"
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model4",
                                  "--epochs", "1", "--max-steps", "5", "--eval-every", "0",
                                  "--no-progress", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_gpunn_export_onnx(run_dir, ort, tmp_path):
    import onnx
    path = tmp_path / "model.onnx"
    r = CliRunner().invoke(main, ["export", str(run_dir), "--onnx", str(path)])
    assert r.exit_code == 0, r.output
    assert "input float32 (batch, 1, 28, 28) -> logits (batch, 10)" in r.output
    assert "onnxruntime: relative difference" in r.output
    model = load_model(run_dir)
    x = np.random.default_rng(3).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(ort, path, x), model.forward(x, train=False),
                               rtol=0, atol=1e-5 * np.abs(model.forward(x, train=False)).max())
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["class_names"] == list(model.class_names) and meta["gpunn_model"] == "model4"
    assert meta["preprocessing"]["pixel_scale"] is not None


def test_gpunn_export_needs_a_format_and_a_finished_run(run_dir, tmp_path):
    r = CliRunner().invoke(main, ["export", str(run_dir)])
    assert r.exit_code == 2 and "--onnx" in r.output
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text(
        (run_dir / "config.json").read_text())
    r = CliRunner().invoke(main, ["export", str(tmp_path / "unfinished"), "--onnx",
                                  str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "weights.npz not found" in r.output


def test_gpunn_export_without_onnx(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    r = CliRunner().invoke(main, ["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "pip install 'gpunn[onnx]'" in r.output

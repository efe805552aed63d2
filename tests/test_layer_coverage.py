"""One list of layer cases (gpunn.parity.layer_cases) drives both the gradient checks here and
the device-parity rows (emulated CUDA in CI, a real GPU with ``-m gpu``); this file fails when
a public layer class has no case in it, so a new layer cannot skip either check."""
import numpy as np
import pytest

import gpunn.layers
from gpunn.gradcheck import check_layer
from gpunn.parity import layer_cases

CASES = layer_cases()


def _public_layer_classes():
    return {getattr(gpunn.layers, n) for n in gpunn.layers.__all__} - {gpunn.layers.Layer}


def test_every_public_layer_has_a_case():
    covered = {type(make(np.float64)) for _, make, _, _ in CASES}
    missing = sorted(c.__name__ for c in _public_layer_classes() - covered)
    assert not missing, (f"no case in gpunn.parity.layer_cases() for {missing}: add one (it "
                         "gives the layer a gradient check and a parity row; docs/CONTRIBUTING.md)")


def test_coverage_check_sees_a_missing_layer(monkeypatch):
    """The check above is not vacuous: a public class without a case is reported."""
    class Gelu(gpunn.layers.Layer):
        pass
    monkeypatch.setattr(gpunn.layers, "Gelu", Gelu, raising=False)
    monkeypatch.setattr(gpunn.layers, "__all__", [*gpunn.layers.__all__, "Gelu"])
    with pytest.raises(AssertionError, match="Gelu"):
        test_every_public_layer_has_a_case()


@pytest.mark.parametrize("name,make,shape,_kernels", CASES, ids=[c[0] for c in CASES])
def test_gradcheck_every_case(name, make, shape, _kernels):
    # not seed 0: check_layer draws its output weights R from seed 0, and x parallel to R makes
    # batch-norm's input gradient cancel to ~0, where relative errors mean nothing; and not
    # seed 1: one conv output inside Residual(Conv, ReLU) lies within eps of the ReLU kink
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, *shape)) * 2
    x = np.where(np.abs(x) < 1e-3, 0.5, x)       # off the ReLU-family kinks
    res = check_layer(make(np.float64), x, train=True)
    assert res.max_rel_error < 1e-6, f"{name}: {res}"

"""Initialisers: the distributions they promise, seeded on the host."""
import numpy as np
import pytest

from gpunn.init import get_initialiser, he_normal, he_uniform, make_rng, xavier_normal, xavier_uniform


@pytest.mark.parametrize("f,std", [
    (xavier_uniform, np.sqrt(2 / (400 + 200))), (xavier_normal, np.sqrt(2 / (400 + 200))),
    (he_uniform, np.sqrt(2 / 400)), (he_normal, np.sqrt(2 / 400))])
def test_standard_deviations(f, std):
    w = f((400, 200), 400, 200, rng=0)
    assert w.dtype == np.float32 and w.shape == (400, 200)
    assert abs(w.std() - std) < 0.02 * std and abs(w.mean()) < 0.02 * std


def test_seeded_and_dtype():
    a = xavier_uniform((3, 4), 3, 4, rng=5, dtype=np.float64)
    np.testing.assert_array_equal(a, xavier_uniform((3, 4), 3, 4, rng=5, dtype=np.float64))
    assert a.dtype == np.float64
    g = make_rng(1)
    assert make_rng(g) is g


def test_errors():
    with pytest.raises(ValueError, match="unknown initialiser 'glorot'.*xavier_uniform"):
        get_initialiser("glorot")
    with pytest.raises(ValueError, match="fans must be positive"):
        xavier_uniform((0, 3), 0, 3)
    with pytest.raises(TypeError, match="rng must be"):
        make_rng("seed")

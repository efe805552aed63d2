"""SGD / Adam against hand-computed steps, state dicts, argument checks, LR schedules."""
import math

import numpy as np
import pytest

from gpunn.errors import StateDictError
from gpunn.layers import Linear
from gpunn.model import Sequential
from gpunn.optim import SGD, Adam, CosineAnnealingLR, ExponentialLR, StepLR

DTYPES = [np.float32, np.float64]
P0 = [1.0, -2.0]
GRADS = [[0.5, -1.0], [0.25, 0.5], [-1.0, 2.0]]      # the gradient fed in at steps 1, 2, 3


def _tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _run(make_opt, dtype, grads=GRADS):
    """Three steps from P0 with the given gradients; returns p after each step."""
    p = np.array(P0, dtype=dtype)
    g = np.zeros_like(p)
    opt = make_opt([(p, g)])
    out = []
    for gt in grads:
        g[...] = gt
        opt.step()
        assert p.dtype == dtype and all(a.dtype == dtype for b in opt.state.values() for a in b)
        out.append(p.copy())
    return out


# Expected values worked by hand, lr = 0.1 throughout.
SGD_CASES = {
    # p -= 0.1 g
    "plain": (dict(), [[0.95, -1.9], [0.925, -1.95], [1.025, -2.15]]),
    # v1 = g1 = [.5, -1]; v2 = .9 v1 + g2 = [.7, -.4]; v3 = .9 v2 + g3 = [-.37, 1.64]; p -= .1 v
    "momentum": (dict(momentum=0.9), [[0.95, -1.9], [0.88, -1.86], [0.917, -2.024]]),
    # same v; step = g + .9 v: [.95, -1.9], [.88, .14], [-1.333, 3.476]
    "nesterov": (dict(momentum=0.9, nesterov=True),
                 [[0.905, -1.81], [0.817, -1.824], [0.9503, -2.1716]]),
    # g' = g + .1 p: [.6, -1.2], [.344, .312], [-.90944, 1.80888]
    "weight_decay": (dict(weight_decay=0.1),
                     [[0.94, -1.88], [0.9056, -1.9112], [0.996544, -2.092088]]),
    # g' as above but with momentum: v1 = [.6, -1.2]; g'2 = [.344, .312], v2 = [.884, -.768];
    # g'3 = [-.91484, 1.81968], v3 = [-.11924, 1.12848]
    "momentum+wd": (dict(momentum=0.9, weight_decay=0.1),
                    [[0.94, -1.88], [0.8516, -1.8032], [0.863524, -1.916048]]),
    # g'1 = [.6, -1.2], v1 = g'1, step1 = [1.14, -2.28];
    # g'2 = [.3386, .3228], v2 = [.8786, -.7572], step2 = [1.12934, -.35868];
    # g'3 = [-.9226934, 1.8263868], v3 = [-.1319534, 1.1449068], step3 = [-1.04145146, 2.85680292]
    "nesterov+wd": (dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                    [[0.886, -1.772], [0.773066, -1.736132], [0.877211146, -2.021812292]]),
    # v = .9 v + .1 g: v1 = [.05, -.1], v2 = [.07, -.04], v3 = [-.037, .164]
    "ema": (dict(momentum=0.9, ema=True), [[0.995, -1.99], [0.988, -1.986], [0.9917, -2.0024]]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_hand_computed(case, dtype):
    kwargs, expected = SGD_CASES[case]
    got = _run(lambda ps: SGD(ps, lr=0.1, **kwargs), dtype)
    np.testing.assert_allclose(got, expected, **_tol(dtype))


def _sgd_reference(p, grads, lr, mu, nesterov, wd, ema):
    """Scalar float64 loop over CONVENTIONS.md's SGD formula (independent of the op)."""
    p, v, out = list(p), [0.0] * len(p), []
    for g in grads:
        for i in range(len(p)):
            gp = g[i] + wd * p[i]
            if mu == 0:
                step = gp
            else:
                v[i] = mu * v[i] + ((1 - mu) * gp if ema else gp)
                step = gp + mu * v[i] if nesterov else v[i]
            p[i] -= lr * step
        out.append(list(p))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov,ema,wd", [(n, e, w) for n in (False, True)
                                             for e in (False, True) for w in (0.0, 0.05)])
def test_sgd_all_flag_combinations(nesterov, ema, wd, dtype):
    got = _run(lambda ps: SGD(ps, 0.3, momentum=0.8, nesterov=nesterov, weight_decay=wd, ema=ema),
               dtype)
    ref = _sgd_reference(P0, GRADS, 0.3, 0.8, nesterov, wd, ema)
    np.testing.assert_allclose(got, ref, **_tol(dtype))


def test_sgd_leaves_grad_untouched():
    p, g = np.array(P0), np.array(GRADS[0])
    for kwargs in (dict(), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                   dict(momentum=0.9, ema=True, weight_decay=0.1)):
        SGD([(p, g)], 0.1, **kwargs).step()
        np.testing.assert_array_equal(g, GRADS[0])


# Adam, lr = 0.1, betas = (0.9, 0.999), eps = 1e-8, no weight decay.
# element 0, g = .5, .25, -1:  m = .05, .07, -.037;  v = .00025, .00031225, .00131193775
# element 1, g = -1, .5, 2:    m = -.1, -.04, .164;  v = .001, .001249, .005247751
# bc1 = .1, .19, .271;  bc2 = .001, .001999, .002997001
def _adam_expected():
    def upd(p, m, v, bc1, bc2):
        return p - (0.1 / bc1) * m / (math.sqrt(v) / math.sqrt(bc2) + 1e-8)
    a1 = upd(1.0, 0.05, 0.00025, 0.1, 0.001)
    b1 = upd(-2.0, -0.1, 0.001, 0.1, 0.001)
    a2 = upd(a1, 0.07, 0.00031225, 0.19, 0.001999)
    b2 = upd(b1, -0.04, 0.001249, 0.19, 0.001999)
    a3 = upd(a2, -0.037, 0.00131193775, 0.271, 0.002997001)
    b3 = upd(b2, 0.164, 0.005247751, 0.271, 0.002997001)
    return [[a1, b1], [a2, b2], [a3, b3]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_hand_computed(dtype):
    got = _run(lambda ps: Adam(ps, lr=0.1), dtype)
    expected = _adam_expected()
    # step 1 moves every element by lr * g / (|g| + eps), i.e. almost exactly lr
    assert expected[0][0] == pytest.approx(0.9, abs=1e-8)
    np.testing.assert_allclose(got, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_weight_decay_hand_computed(dtype):
    # g' = g + .1 p depends on the previous p, so the chain is written out step by step
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.1
    p, m, v, expected = list(P0), [0.0, 0.0], [0.0, 0.0], []
    for t, g in enumerate(GRADS, start=1):
        for i in range(2):
            gp = g[i] + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gp
            v[i] = b2 * v[i] + (1 - b2) * gp * gp
            p[i] -= (lr / (1 - b1 ** t)) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + eps)
        expected.append(list(p))
    # step 1 by hand: g'1 = [.6, -1.2], so p1 = p0 - .1 * sign(g'1) (to ~1e-8)
    assert expected[0] == pytest.approx([0.9, -1.9], abs=1e-8)
    got = _run(lambda ps: Adam(ps, lr=lr, weight_decay=wd), dtype)
    np.testing.assert_allclose(got, expected, **_tol(dtype))


# -- state dicts ----------------------------------------------------------------------------------
def _two_param_problem(dtype=np.float64):
    rng = np.random.default_rng(3)
    return [(rng.standard_normal((3, 2)).astype(dtype), np.zeros((3, 2), dtype)),
            (rng.standard_normal(2).astype(dtype), np.zeros(2, dtype))]


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, 0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: SGD(ps, 0.1),
    lambda ps: Adam(ps, 0.01, weight_decay=0.01)], ids=["sgd-nesterov", "sgd-plain", "adam"])
def test_state_dict_round_trip_continues_identically(make, tmp_path):
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(p.shape) for p, _ in _two_param_problem()] for _ in range(4)]

    def feed(ps, opt, k):
        for (_, g), gk in zip(ps, grads[k]):
            g[...] = gk
        opt.step()

    ps_a = _two_param_problem()
    opt_a = make(ps_a)
    feed(ps_a, opt_a, 0)
    feed(ps_a, opt_a, 1)
    # through an .npz, as a checkpoint would store it
    np.savez(tmp_path / "opt.npz", **opt_a.state_dict())
    with np.load(tmp_path / "opt.npz") as f:
        saved = dict(f)

    ps_b = [(p.copy(), g.copy()) for p, g in ps_a]
    opt_b = make([(p, g) for p, g in ps_b])
    opt_b.lr = 0.5                                      # restored from the state dict
    opt_b.load_state_dict(saved)
    assert opt_b.t == 2 and opt_b.lr == opt_a.lr
    for k in (2, 3):
        feed(ps_a, opt_a, k)
        feed(ps_b, opt_b, k)
    for (pa, _), (pb, _) in zip(ps_a, ps_b):
        np.testing.assert_array_equal(pa, pb)


def test_state_dict_mismatch_errors_change_nothing():
    opt = Adam(_two_param_problem(), 0.01)
    sd = opt.state_dict()
    before = opt.state_dict()

    def unchanged():
        after = opt.state_dict()
        assert after.keys() == before.keys()
        assert all(np.array_equal(after[k], before[k]) for k in before)

    other = Adam(_two_param_problem()[:1], 0.01).state_dict()
    with pytest.raises(StateDictError, match="state for 1 parameters, this optimizer has 2"):
        opt.load_state_dict(other)
    unchanged()
    bad = dict(sd, t=7, lr=0.3)
    bad["v.1"] = np.zeros(3)
    with pytest.raises(StateDictError, match=r"v\.1 \(param 1\): expected \(2,\), got \(3,\)"):
        opt.load_state_dict(bad)
    unchanged()
    with pytest.raises(StateDictError, match="missing keys: m.0"):
        opt.load_state_dict({k: v for k, v in sd.items() if k != "m.0"})
    with pytest.raises(StateDictError, match="for SGD, not Adam"):
        opt.load_state_dict(SGD(_two_param_problem(), 0.1).state_dict())
    with pytest.raises(StateDictError, match="beta1"):
        opt.load_state_dict(dict(sd, beta1=1.5))
    unchanged()


def test_state_dict_is_host_values():
    sd = SGD(_two_param_problem(np.float32), 0.1, momentum=0.5).state_dict()
    assert sd["type"] == "SGD" and sd["num_params"] == 2 and sd["t"] == 0
    assert sd["velocity.0"].dtype == np.float32 and isinstance(sd["velocity.0"], np.ndarray)


# -- models, zero_grad, devices -------------------------------------------------------------------
def test_model_params_zero_grad_and_rebind():
    model = Sequential(Linear(3, 2, rng=0, dtype=np.float64))
    opt = SGD(model, 0.1, momentum=0.9)
    assert [n for n in opt.names] == ["0.W", "0.b"]
    for p in model.parameters():
        p.grad[...] = 1.0
    W0 = model.layers[0].params["W"].copy()
    opt.step()
    np.testing.assert_allclose(model.layers[0].params["W"], W0 - 0.1)
    opt.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())

    # assigning new values writes into the parameter: the optimizer updates what was assigned
    # (before flat buffers, an assignment replaced the array and the optimizer lost track)
    model.layers[0].params["W"] = np.full((3, 2), 2.0)
    assert opt.params[0].data is model.layers[0].params["W"]
    model.layers[0].grads["W"] = np.ones((3, 2))
    opt.step()
    np.testing.assert_allclose(model.layers[0].params["W"], 2.0 - 0.1 * (0.9 * 1.0 + 1.0))


def test_lr_is_settable_and_validated():
    opt = SGD(_two_param_problem(), 0.1)
    opt.lr = 0.05
    assert opt.lr == 0.05
    opt.lr = 0.0                   # schedules may anneal to zero
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1


@pytest.mark.parametrize("make,match", [
    (lambda ps: SGD(ps, 0.0), "lr must be > 0"),
    (lambda ps: SGD(ps, float("nan")), "finite"),
    (lambda ps: SGD(ps, "fast"), "must be a number"),
    (lambda ps: SGD(ps, 0.1, momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (lambda ps: SGD(ps, 0.1, momentum=-0.1), "momentum"),
    (lambda ps: SGD(ps, 0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda ps: SGD(ps, 0.1, weight_decay=-1e-4), "weight_decay must be >= 0"),
    (lambda ps: Adam(ps, betas=(0.9, 1.0)), r"beta2 \(betas\[1\]\) must be in"),
    (lambda ps: Adam(ps, betas=(-0.1, 0.9)), "beta1"),
    (lambda ps: Adam(ps, betas=0.9), "pair"),
    (lambda ps: Adam(ps, eps=0), "eps must be > 0"),
    (lambda ps: SGD([], 0.1), "empty parameter list"),
    (lambda ps: SGD([ps[0], ps[0]], 0.1), "same array"),
    (lambda ps: SGD([(ps[0][0], ps[1][1])], 0.1), "does not match"),
    (lambda ps: SGD([ps[0][0]], 0.1), "pair"),
])
def test_argument_validation(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(_two_param_problem())


# -- schedules ------------------------------------------------------------------------------------
def _lrs(sched, epochs):
    out = [sched.get_last_lr()]
    for _ in range(epochs):
        sched.step()
        out.append(sched.get_last_lr())
        assert sched.optimizer.lr == out[-1]
    return out


def test_step_lr():
    sched = StepLR(SGD(_two_param_problem(), 0.1), step_size=3, gamma=0.5)
    assert _lrs(sched, 7) == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_exponential_lr():
    sched = ExponentialLR(SGD(_two_param_problem(), 0.2), gamma=0.9)
    assert _lrs(sched, 5) == pytest.approx([0.2 * 0.9 ** e for e in range(6)], rel=1e-15)


def test_cosine_annealing_lr():
    sched = CosineAnnealingLR(Adam(_two_param_problem(), 0.1), T_max=4, eta_min=0.01)
    got = _lrs(sched, 8)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(9)]
    assert got == pytest.approx(expected, rel=1e-15)
    assert got[2] == pytest.approx(0.055)
    assert got[4] == pytest.approx(0.01) and got[8] == pytest.approx(0.1)
    # down to exactly zero is allowed
    zero = CosineAnnealingLR(SGD(_two_param_problem(), 0.1), T_max=2)
    assert _lrs(zero, 2)[-1] == pytest.approx(0.0, abs=1e-18)


def test_schedule_state_dict_round_trip():
    opt = SGD(_two_param_problem(), 0.1)
    sched = CosineAnnealingLR(opt, T_max=10, eta_min=0.001)
    for _ in range(3):
        sched.step()
    sd = sched.state_dict()
    opt2 = SGD(_two_param_problem(), 0.7)
    sched2 = CosineAnnealingLR(opt2, T_max=5)
    sched2.load_state_dict(sd)
    assert (sched2.last_epoch, sched2.T_max, sched2.eta_min, sched2.base_lr) == (3, 10, 0.001, 0.1)
    assert opt2.lr == opt.lr
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(StateDictError, match="for CosineAnnealingLR, not StepLR"):
        StepLR(opt2, 2).load_state_dict(sd)
    with pytest.raises(ValueError, match="step_size must be a positive integer"):
        StepLR(opt2, 0)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(opt2, 2.5)


# -- optional: PyTorch reference ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_matches_torch_if_installed(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(5)]
    p, g = p0.copy(), np.zeros_like(p0)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    if kind == "adam":
        opt, topt = (Adam([(p, g)], 0.01, weight_decay=0.01),
                     torch.optim.Adam([tp], 0.01, weight_decay=0.01))
    else:
        nes = kind == "nesterov"
        opt, topt = (SGD([(p, g)], 0.1, momentum=0.9, nesterov=nes, weight_decay=0.01),
                     torch.optim.SGD([tp], 0.1, momentum=0.9, nesterov=nes, weight_decay=0.01))
    for gk in grads:
        g[...] = gk
        opt.step()
        tp.grad = torch.tensor(gk)
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# -- GPU parity (skipped without a usable CUDA device) --------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, 0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: SGD(ps, 0.1, momentum=0.9, ema=True),
    lambda ps: Adam(ps, 0.01, weight_decay=0.01)], ids=["sgd-nesterov", "sgd-ema", "adam"])
def test_cuda_matches_numpy(make):
    import cupy
    cpu = _two_param_problem()
    gpu = [(cupy.asarray(p), cupy.asarray(g)) for p, g in cpu]
    opt_c, opt_g = make(cpu), make(gpu)
    assert all(isinstance(a, cupy.ndarray) for b in opt_g.state.values() for a in b)
    rng = np.random.default_rng(5)
    for _ in range(3):
        for (_, gc), (_, gg) in zip(cpu, gpu):
            gk = rng.standard_normal(gc.shape)
            gc[...] = gk
            gg[...] = cupy.asarray(gk)
        opt_c.step()
        opt_g.step()
    for (pc, _), (pg, _) in zip(cpu, gpu):
        np.testing.assert_allclose(pg.get(), pc, rtol=1e-12, atol=1e-14)
    sd = opt_g.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if "." in k)

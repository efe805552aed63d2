"""Faults inside the training loop: non-finite values, out of memory, failed writes, a second
writer, and what each leaves on disk (the last checkpoint, intact and loadable)."""
import errno
import io
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from gpunn.data import make_synthetic
from gpunn.errors import NonFiniteError, OutOfMemoryError, RunLockedError, RunWriteError
from gpunn.losses import CrossEntropyLoss
from gpunn.optim import SGD, CosineAnnealingLR
from gpunn.serialization import load_checkpoint, load_npz
from gpunn.train import RunLock, TrainConfig, TrainStep, fit
from gpunn.train import extensions as ext
from gpunn.train import loop
from gpunn.train.extensions import LOCK
from gpunn.zoo import build_model


def _model(dropout=0.2):
    return build_model("model2", (1, 12, 12), 10, seed=0, dropout=dropout)


def _fit(data, out, model=None, epochs=2, lr=0.05, resume=False, sched_T=None, log=None, **cfg):
    m = model or _model()
    opt = SGD(m, lr=lr, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=sched_T) if sched_T else None
    conf = TrainConfig(epochs=epochs, batch_size=50, eval_every=100, progress=False, **cfg)
    res = fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(out) if out else None,
              scheduler=sched, resume=resume, log=log or (lambda s: None))
    return m, res


def _poison_grad_at(model, layer_index, key, step):
    """Make layer ``layer_index``'s gradient ``key`` NaN in backward call number ``step``."""
    layer = model[layer_index]
    orig, calls = layer.backward, [0]

    def backward(dout):
        out = orig(dout)
        calls[0] += 1
        if calls[0] == step:
            layer.grads[key].reshape(-1)[3] = np.nan
        return out
    layer.backward = backward


# -- non-finite values --------------------------------------------------------------------------
def test_a_non_finite_gradient_stops_the_run_naming_step_and_layer(data, tmp_path):
    m = _model()
    _poison_grad_at(m, 1, "W", step=7)          # 10 steps an epoch; checkpoints at steps 2, 4, 6
    with pytest.raises(NonFiniteError) as info:
        _fit(data, tmp_path, model=m, save_best=True)
    msg = str(info.value)
    assert "at step 7 (epoch 1, batch 7 of 10)" in msg
    assert "'1.W', of layer 1 Linear(144, 32" in msg and "the loss is finite" in msg
    assert "the last checkpoint" in msg and "(step 6, epoch 0.60), is intact" in msg
    assert "smaller learning rate (now 0.05)" in msg
    ck = load_checkpoint(tmp_path / "checkpoint.npz")            # loadable, and from step 6
    assert ck["state"]["step"] == 6
    assert all(np.isfinite(v).all() for v in ck["model"].values())
    assert all(np.isfinite(v).all() for v in load_npz(tmp_path / "best.npz").values())
    assert not (tmp_path / LOCK).exists()                        # the lock went with the run
    _fit(data, tmp_path, model=_model(), resume=True)            # and the run resumes from it


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_nan_loss_from_a_huge_learning_rate_stops_at_once(data):
    with pytest.raises(NonFiniteError, match=r"non-finite values at step \d+ .*the loss is "
                                             r"(nan|inf).*no checkpoint is written"):
        _fit(data, None, lr=1e12, epochs=3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_the_guard_nan_trains_to_the_end(data):
    """What the guard prevents: the same run with check_finite=False 'succeeds'."""
    _, res = _fit(data, None, lr=1e12, epochs=1, check_finite=False)
    assert not np.isfinite(res.history["train_loss"][-1])


def test_the_guard_checks_a_gpu_like_device_only_every_few_steps_but_before_each_save(data,
                                                                                      tmp_path):
    """With every=50 (the GPU setting) a NaN at step 3 is still caught before the checkpoint
    at step 4 is written; the message names step 3, recorded on the device at the time."""
    m = _model()
    _poison_grad_at(m, 4, "b", step=3)
    opt = SGD(m, lr=0.05)
    guard = ext.NonFiniteGuard(every=50)
    conf = TrainConfig(epochs=1, batch_size=50, eval_every=200, progress=False,
                       check_finite=False)
    with pytest.raises(NonFiniteError, match="at step 3 .*'4.b', of layer 4 Linear"):
        fit(m, CrossEntropyLoss(), opt, data, conf, log=lambda s: None,
            extensions=[guard, ext.Checkpoint(str(tmp_path))])
    assert not (tmp_path / "checkpoint.npz").exists()


# -- out of memory ------------------------------------------------------------------------------
def _oom_error(size, total):
    try:
        from cupy.cuda.memory import OutOfMemoryError as CupyOOM
        return CupyOOM(size, total)
    except ImportError:                         # the same attributes CuPy's error carries
        e = MemoryError(f"Out of memory allocating {size:,} bytes")
        e._size, e._total = size, total
        return e


def test_out_of_memory_is_one_line_with_batch_size_memory_and_a_suggestion(data, tmp_path,
                                                                           monkeypatch):
    orig, calls = TrainStep.__call__, [0]

    def step(self, xb, yb):
        calls[0] += 1
        if calls[0] == 5:
            raise _oom_error(3 * 2**30, 70 * 2**30)
        return orig(self, xb, yb)
    monkeypatch.setattr(TrainStep, "__call__", step)
    monkeypatch.setattr(loop, "memory_info", lambda dev: (512 * 2**20, 80 * 2**30,
                                                          "CuPy's pool holds 70.00 GiB"))
    with pytest.raises(OutOfMemoryError) as info:
        _fit(data, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "at step 5 (epoch 1, batch size 50)" in msg
    assert msg.startswith("out of GPU memory on cpu at step 5")
    assert "asked for 3.00 GiB; 512.0 MiB free of 80.00 GiB (CuPy's pool holds 70.00 GiB)" in msg
    assert "smaller --batch-size (e.g. 25)" in msg
    assert "(step 4, epoch 0.40), is intact" in msg
    assert load_checkpoint(tmp_path / "checkpoint.npz")["state"]["step"] == 4


def test_host_out_of_memory_names_the_host(data, monkeypatch):
    def step(self, xb, yb):
        np.empty((2**62,), dtype=np.uint8)      # NumPy refuses at once: no memory is touched
    monkeypatch.setattr(TrainStep, "__call__", step)
    with pytest.raises(OutOfMemoryError, match=r"out of host memory on cpu at step 1 .*asked "
                                               r"for .* GiB; .* free of"):
        _fit(data, None)


# -- failed writes ------------------------------------------------------------------------------
def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous(data, tmp_path,
                                                                         monkeypatch):
    orig, calls = ext.save_checkpoint, [0]

    def save(path, *a):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(path, *a)
    monkeypatch.setattr(ext, "save_checkpoint", save)
    with pytest.raises(RunWriteError) as info:
        _fit(data, tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"could not write {tmp_path / 'checkpoint.npz'}: no space left on the "
                          f"device; the previous checkpoint")
    assert "(step 4, epoch 0.40), is intact" in msg and info.value.errno == errno.ENOSPC
    assert load_checkpoint(tmp_path / "checkpoint.npz")["state"]["step"] == 4


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only file system"),
                                         (errno.EIO, "Input/output error")])
def test_write_errors_say_why_in_words(code, words):
    e = ext.write_error(OSError(code, os.strerror(code)), "/r/x.npz", "nothing was lost")
    assert str(e) == f"could not write /r/x.npz: {words}; nothing was lost"


def test_checkpoints_and_weights_get_the_usual_permissions(data, tmp_path):
    old = os.umask(0o022)
    try:
        m, _ = _fit(data, tmp_path, epochs=1, save_best=True)
        m.save(tmp_path / "weights.npz")
    finally:
        os.umask(old)
    for f in ("checkpoint.npz", "best.npz", "weights.npz"):
        assert oct((tmp_path / f).stat().st_mode & 0o777) == oct(0o644), f


# -- the run lock -------------------------------------------------------------------------------
HOLD = ("import sys, time; from gpunn.train import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_first(data, tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"being written by another gpunn process "
                                                 f"\\(pid {p.pid} on "):
            _fit(data, tmp_path, epochs=1)
        assert not (tmp_path / "checkpoint.npz").exists()
    finally:
        p.kill()
        p.wait()


def test_a_stale_lock_from_a_killed_run_is_taken_over(data, tmp_path):
    p = _holder(tmp_path)
    p.kill()                                   # SIGKILL: the lock file stays, naming p
    p.wait()
    assert (tmp_path / LOCK).exists()
    said = []
    _fit(data, tmp_path, epochs=1, log=said.append)
    assert any(f"stale lock on {tmp_path} left by pid {p.pid}" in s for s in said), said
    assert not (tmp_path / LOCK).exists()


def test_the_lock_nests_for_its_holder(tmp_path):
    lock = RunLock(tmp_path)
    with lock:
        with lock:
            assert lock.held
        assert lock.held and (tmp_path / LOCK).exists()
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()         # another holder, even in this process
    assert not lock.held and not (tmp_path / LOCK).exists()


# -- schedules on resume, validation choosing, feedback -----------------------------------------
def test_resume_with_more_epochs_stretches_the_schedule(data, tmp_path):
    _fit(data, tmp_path, epochs=2, sched_T=2)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    said = []
    m, res = _fit(data, tmp_path, epochs=3, sched_T=3, resume=True, log=said.append)
    lrs = res.history["lr"]
    assert lrs[-1] == pytest.approx(0.05 * (1 + np.cos(np.pi * 3 / 3)) / 2)   # epoch 3's end
    third = [lr for lr, e in zip(lrs, res.history["epoch"]) if 2 < e < 3]
    assert third and all(lr == pytest.approx(0.0125) for lr in third)         # not 0
    assert any("re-planned for 3 epochs: CosineAnnealingLR T_max 2 -> 3; epoch 3 trains at "
               "lr 0.0125 (the old plan had 0)" in s for s in said), said
    moved = [not np.array_equal(v, ck["model"][k]) for k, v in m.state_dict().items()]
    assert any(moved)                            # the added epoch really trained


def test_the_test_split_never_chooses(data):
    with pytest.raises(ValueError, match="test split is for reporting"):
        _fit(data, None, monitor="test_acc")
    no_val = SimpleNamespace(x_train=data.x_train, y_train=data.y_train, x_val=None, y_val=None,
                             x_test=data.x_test, y_test=data.y_test)
    said = []
    _, res = _fit(no_val, None, epochs=1, log=said.append)
    assert res.best["metric"] == "train_acc"
    assert any("judged on train_acc" in s for s in said)


def test_best_weights_are_the_best_validation_evaluation(data, tmp_path):
    m, res = _fit(data, tmp_path, epochs=3, lr=0.5, save_best=True)
    h = res.history
    best = int(np.argmax(h["val_acc"]))
    assert res.best["value"] == h["val_acc"][best] and res.best["samples"] == h["samples"][best]
    from gpunn.train import evaluate
    b = _model().load(tmp_path / "best.npz")
    assert evaluate(b, CrossEntropyLoss(), data.x_val, data.y_val)[1] == h["val_acc"][best]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_has_an_eta_and_eval_lines_start_on_their_own_line(data):
    out = FakeTTY()
    m = _model()
    opt = SGD(m, lr=0.05)
    bar = ext.ProgressBar(stream=out, every=1, interval=0)
    conf = TrainConfig(epochs=2, batch_size=50, eval_every=150, progress=False)
    fit(m, CrossEntropyLoss(), opt, data, conf, log=lambda s: print(s, file=out),
        extensions=[bar])
    text = out.getvalue()
    assert "ETA 0:" in text and "(run 0:" in text
    for line in text.split("\n"):
        if "[eval]" in line:
            assert line.startswith("[eval]"), repr(line)     # never glued onto the bar


# -- on a GPU (skipped without one; run with -m gpu) --------------------------------------------
@pytest.fixture
def pool_limit():
    """Set CuPy's memory pool limit for a test (a real out-of-memory without filling the GPU)."""
    cupy = pytest.importorskip("cupy")
    pool = cupy.get_default_memory_pool()
    yield pool
    pool.set_limit(size=0)
    pool.free_all_blocks()


class LimitAfterResume(ext.Extension):
    """Once the resumed state is on the GPU, leave the pool only 1 MiB more than it uses."""

    def __init__(self, pool):
        self.pool = pool

    def on_resume(self, trainer):
        self.pool.set_limit(size=self.pool.used_bytes() + 2**20)


@pytest.mark.gpu
def test_gpu_out_of_memory_is_one_line_and_the_checkpoint_stays_intact(tmp_path, pool_limit):
    x, y = make_synthetic(4000, seed=1, size=28)
    x = x.astype(np.float32) / 255
    data = SimpleNamespace(x_train=x[:3000], y_train=y[:3000], x_val=x[3000:3500],
                           y_val=y[3000:3500], x_test=x[3500:], y_test=y[3500:])

    def run(resume, extensions=()):
        m = build_model("model4", (1, 28, 28), 10, seed=0).to("cuda")
        opt = SGD(m, lr=0.05, momentum=0.9)
        conf = TrainConfig(epochs=1, batch_size=500, eval_every=1000, progress=False,
                           max_steps=None if resume else 2)
        return fit(m, CrossEntropyLoss(), opt, data, conf, out_dir=str(tmp_path), device="cuda",
                   resume=resume, log=lambda s: None, extensions=extensions)
    run(False)                                       # a checkpoint at step 2
    good = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(OutOfMemoryError) as info:
        run(True, [LimitAfterResume(pool_limit)])
    msg = str(info.value)
    assert msg.startswith("out of GPU memory on cuda:0 at step 3 (epoch 1, batch size 500); "
                          "asked for ")
    assert " free of " in msg and "its limit is" in msg and "--batch-size (e.g. 250)" in msg
    assert "(step 2, epoch 0.33), is intact and loadable" in msg and "\n" not in msg
    pool_limit.set_limit(size=0)
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    assert load_checkpoint(tmp_path / "checkpoint.npz")["state"]["step"] == 2


@pytest.mark.gpu
def test_gpu_out_of_memory_through_the_cli(tmp_path, pool_limit):
    from click.testing import CliRunner
    from gpunn.cli import main
    pool_limit.set_limit(size=48 * 2**20)
    out = tmp_path / "oom"
    r = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--model", "model4",
                                  "--device", "cuda", "--batch-size", "5400", "--max-steps", "2",
                                  "--val-size", "0.1", "--no-progress", "--out", str(out)])
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: out of GPU memory on cuda:0 at step 1 (epoch 1, batch size "
                           "5400); asked for "), line
    assert "smaller --batch-size (e.g. 2700)" in line and "Traceback" not in r.output
    assert not out.exists()                           # nothing was written before step 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_last_nonfinite_finds_the_last_nan_or_inf_and_nothing_in_finite_values(dtype):
    """The check behind the guard and the ranks' reduction: a dot product of the array with
    itself, then the exact search. Huge finite values whose squares overflow are not
    reported; NaN, inf and -inf are, at the last position holding one."""
    from gpunn.finite import last_nonfinite
    rng = np.random.default_rng(0)
    a = rng.standard_normal(100_003).astype(dtype)
    assert last_nonfinite(a) == -1 and last_nonfinite(a[:0]) == -1
    big = np.full(1000, np.finfo(dtype).max / 2, dtype=dtype)       # squares overflow
    with np.errstate(over="ignore"):                                 # (the caller's choice)
        assert last_nonfinite(big) == -1
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 1, 31_337, a.size - 1):
            b = a.copy()
            b[where] = bad
            assert last_nonfinite(b) == where
            assert last_nonfinite(b, offset=7) == where + 7
        b = a.copy()
        b[[5, 70_000]] = bad
        assert last_nonfinite(b) == 70_000

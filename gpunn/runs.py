"""Run directories: one training run (config -> model, data, optimizer -> fit -> report) and
sweeps of models x settings. The CLI is a thin layer over these functions.

A run directory holds config.json, history.json, metrics.csv (one row per evaluation, written
as it trains), weights.npz, checkpoint.npz, the PNG plots and report.md (and tensorboard/ with
``tensorboard=True``).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import __version__
from .backend import resolve_device
from .losses import SoftmaxCrossEntropy
from .train import TrainConfig, evaluate, fit

DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3}


@dataclass
class RunConfig:
    model: str = "model4"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 5
    lr: float | None = None
    batch_size: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    dropout: float | None = None
    schedule: str = "none"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 20000
    val_size: float = 5000
    standardize: bool = False
    patience: int | None = None
    save_best: bool = False          # also keep the best weights (by validation) in best.npz
    max_steps: int | None = None
    progress: bool = True
    graph: bool = False              # CUDA: replay each step from a CUDA graph (docs/GRAPHS.md)
    augment_crop: int = 0            # images: random crop after zero padding by this many pixels
    augment_flip: bool = False       # images: random horizontal flip
    # Recorded by the run, never set (no train option): where a file-defined model came from
    # (gpunn/specs.py) and the data's input shape, classes and scaling, so eval, predict,
    # export and load_model rebuild the model without the data set.
    model_source: dict | None = field(default=None, metadata={"recorded": True})
    data_info: dict | None = field(default=None, metadata={"recorded": True})
    tensorboard: bool = False        # also write TensorBoard event files (tensorboardX extra)
    sync_bn: bool = False            # data-parallel: batch-norm over all ranks (SyncBatchNorm)
    bucket_mb: float = 25.0          # data-parallel: gradient all-reduce buckets (MiB; 0: one)
    # recorded: the ranks the run started with (mpiexec -n N); batch_size is per rank, so the
    # run's global batch is batch_size x ranks, kept by every resume (gpunn/distributed/run.py)
    ranks: int = field(default=1, metadata={"recorded": True})

    def __post_init__(self):
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.optimizer, 0.05)
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: "
                             f"{', '.join(DEFAULT_LR)}")

    @classmethod
    def from_cli(cls, kw: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        kw = dict(kw)
        kw["model"] = kw.pop("model_name", kw.get("model", "model4"))
        return cls(**{k: v for k, v in kw.items() if k in names})

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown settings {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(names))}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "RunConfig":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no run config at {path}: is this a gpunn run directory?")
        with open(path) as f:
            d = json.load(f)
        d.pop("gpunn_version", None)
        d.pop("resumes", None)                      # the resume history (gpunn/rundir.py)
        return cls.from_dict(d, where=str(path))

    def save(self, path) -> None:
        _write_json(path, {**asdict(self), "gpunn_version": __version__})


def _write_json(path, obj) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if e.errno is not None:
            e.filename = path                       # name the file meant, not the temporary
        raise


# A data set loaded ahead of a fork (preload_data): (the load's arguments, Dataset), or None
_preloaded = None


def _data_args(cfg: RunConfig) -> tuple:
    """What load_dataset is called with for ``cfg`` (the data set's path made absolute)."""
    from .data.registry import absolute_dataset
    return (absolute_dataset(cfg.dataset), cfg.data_dir, cfg.val_size, cfg.seed,
            np.dtype(cfg.dtype).str, bool(cfg.standardize))


def _load_data(args: tuple):
    from .data import load_dataset
    name, data_dir, val_size, seed, dtype, standardize = args
    return load_dataset(name, data_dir=data_dir, val_size=val_size, seed=seed,
                        dtype=np.dtype(dtype), standardize=standardize)


def preload_data(cfg: RunConfig) -> None:
    """Load ``cfg``'s data set now, for the run that follows in this process *or in the
    processes forked from it*: the first :func:`data_and_model` with the same data settings
    takes it instead of reading the files again (once; a later call loads anew).

    ``gpunn train --procs N`` calls it before forking the ranks, so every rank trains from
    the same pages of memory (copy-on-write: nothing writes the arrays) instead of each
    holding its own copy: N ranks need the data set's memory once, not N times."""
    global _preloaded
    args = _data_args(cfg)
    _preloaded = (args, _load_data(args))


def data_and_model(cfg: RunConfig):
    """The data set and the (host) model a config names (a zoo name, a .py or a .toml file:
    gpunn/specs.py); the model is checked against the data's input shape before anything
    trains. A new config records here the model's source and the data's shape, classes and
    scaling (``model_source``, ``data_info``); a saved one is rebuilt from those records."""
    from .data.registry import absolute_dataset
    from .specs import build_from_source, model_source

    global _preloaded
    cfg.dataset = absolute_dataset(cfg.dataset)     # own data: config.json works from anywhere
    if cfg.model_source is None:
        cfg.model_source = model_source(cfg.model, cfg.dropout)  # None: zoo
    args, (ahead, _preloaded) = _data_args(cfg), (_preloaded, None)
    data = ahead[1] if ahead is not None and ahead[0] == args else _load_data(args)
    model = build_from_source(cfg.model, cfg.model_source, data.input_shape, data.num_classes,
                              seed=cfg.seed, dtype=np.dtype(cfg.dtype), dropout=cfg.dropout)
    if cfg.data_info is None:
        cfg.data_info = {"input_shape": list(data.input_shape),
                         "class_names": list(data.class_names), "mean": data.mean,
                         "std": data.std, "pixel_scale": data.pixel_scale}
    return data, model


def build_all(cfg: RunConfig, device=None):
    """(dataset, model on device, optimizer, scheduler, loss) for a config (``device``: the
    config's, resolved once the model is built)."""
    from .optim import SGD, Adam, CosineAnnealingLR, ExponentialLR, StepLR

    data, model = data_and_model(cfg)
    if cfg.sync_bn:
        from .layers.norm import SyncBatchNorm
        SyncBatchNorm.convert_sync_batchnorm(model)    # the world's ranks (alone: batch-norm)
    dev = resolve_device(cfg.device if device is None else device)
    model.to(dev)
    # Conv2d+ReLU, Linear+ReLU, Residual+ReLU, ReLU+MaxPool2d, BatchNorm+ReLU as one step
    # each (the same numbers): one pass in cache per chunk of samples (or in place) on the
    # CPU; one kernel each on a GPU (gpunn/fuse.py)
    from .fuse import fuse
    fuse(model)
    if cfg.optimizer == "sgd":
        opt = SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                  weight_decay=cfg.weight_decay)
    else:
        opt = Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = {"none": None,
             "step": lambda: StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1),
             "exp": lambda: ExponentialLR(opt, gamma=0.9),
             "cosine": lambda: CosineAnnealingLR(opt, T_max=cfg.epochs)}[cfg.schedule]
    return data, model, opt, (sched() if sched else None), SoftmaxCrossEntropy()


def run_training(cfg: RunConfig, out: str, *, resume: bool = False, overwrite: bool = False,
                 log=None) -> dict:
    """Train per ``cfg`` into run directory ``out``; returns a summary dict.

    Under several MPI ranks (gpunn.distributed.init()), rank 0 does everything below and the
    other ranks train with it (gpunn/distributed/run.py).

    A new run refuses a directory that holds files unless ``overwrite`` (which removes the old
    run's files once the new run's settings have been checked). A resumed run (``cfg`` from
    :func:`gpunn.rundir.resume_config`) raises :class:`gpunn.rundir.RunFinished` when it has
    nothing left to do, refuses fewer epochs than it has done, records the resume in
    config.json and re-plans the LR schedule for a new total. The directory is locked while
    the run writes it; a run that fails before its first checkpoint leaves no folder. Faults
    raise :class:`gpunn.errors.RunError` subclasses saying what on disk is intact.
    """
    from .distributed import several
    comm = several()
    if comm is not None:
        from .distributed.run import run_on_ranks
        return run_on_ranks(comm, _run_training, _train, cfg, out, resume=resume,
                            overwrite=overwrite, log=log)
    return _run_training(cfg, out, resume=resume, overwrite=overwrite, log=log)


def _run_training(cfg, out, *, resume, overwrite, log, device=None, before_train=None) -> dict:
    from .rundir import (RunFinished, check_new_run_dir, clear_run, remove_if_unstarted,
                         resume_position, save_config, writes)
    from .train import RunLock
    from .train.logs import run_logs

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    logs = run_logs(out, tensorboard=cfg.tensorboard)     # a missing extra fails here, first
    if resume:
        old = RunConfig.load(os.path.join(out, "config.json"))
        try:
            pos = resume_position(out, cfg)
        except RunFinished:
            if os.path.exists(os.path.join(out, "metrics.json")):
                raise
            pos = None                      # trained, but killed before its report: write it
            say(f"{out} finished training but not its report; writing the report")
    else:
        check_new_run_dir(out, overwrite)
    built = build_all(cfg, device)          # bad settings and data fail here, before any write
    dev = device or resolve_device(cfg.device)
    created, lock = not os.path.isdir(out), RunLock(out)
    try:
        with writes(lambda: _intact(out)), lock:
            if lock.stale:
                say(f"note: took over a stale lock on {out} left by "
                    f"{lock._describe(lock.stale)}, which is no longer running")
            if not resume:
                if overwrite and clear_run(out):
                    say(f"--overwrite: removed the earlier run's files from {out}")
                save_config(cfg, os.path.join(out, "config.json"))
            else:
                save_config(cfg, os.path.join(out, "config.json"), resumed_from=pos, old=old)
                if cfg.epochs != old.epochs:
                    say(f"resume: the run's total goes from {old.epochs} to {cfg.epochs} epochs "
                        f"(recorded in config.json)")
            if before_train is not None:
                before_train()              # data-parallel: the other ranks start training
            return _train(cfg, out, built, dev, resume, log, lock, logs)
    except BaseException:
        remove_if_unstarted(out, created)
        raise


def _intact(out) -> str:
    """What a failed write leaves: the last checkpoint (intact: written atomically), or none."""
    from .serialization import load_checkpoint

    path = os.path.join(out, "checkpoint.npz")
    try:
        step = load_checkpoint(path)["state"]["step"]
    except (OSError, ValueError, KeyError):
        return "no checkpoint had been written yet"
    return f"the last checkpoint, {path} (step {step}), is intact and loadable"


def _train(cfg, out, built, dev, resume, log, lock, logs) -> dict:
    from .distributed import is_main, world_size
    data, model, opt, sched, loss = built
    if resume and cfg.ranks != world_size() and is_main():
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
            f"resume: the run started on {cfg.ranks} rank(s) x batch {cfg.batch_size}; on "
            f"{world_size()} it keeps the global batch of {cfg.batch_size * cfg.ranks}")
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                       seed=cfg.seed, patience=cfg.patience, progress=cfg.progress,
                       save_best=cfg.save_best,
                       max_steps=cfg.max_steps, augment=_augment(cfg),
                       global_batch=cfg.batch_size * cfg.ranks, graph=cfg.graph,
                       bucket_mb=cfg.bucket_mb)
    result = fit(model, loss, opt, data, tcfg, out_dir=out, device=dev, scheduler=sched,
                 resume=resume, log=log, extensions=[lock, *logs])
    if is_main():                           # data-parallel: rank 0 writes the run's files
        model.save(os.path.join(out, "weights.npz"))
        _write_json(os.path.join(out, "history.json"), result.history)
    ev = _evaluate_and_report(out, cfg, model, data, loss, dev, result)
    return {"test_acc": ev["accuracy"], "test_loss": ev["loss"], "val_acc": ev["val_acc"],
            "val_loss": ev["val_loss"], "best": result.best, "seconds": result.seconds,
            "device": str(dev), "steps": result.steps, "history": result.history}


def evaluate_run(run_dir, *, device="auto", data_dir=None, plots=True) -> dict:
    """Re-evaluate a run's weights on the test set; returns {"json": ..., "text": ...}."""
    cfg = RunConfig.load(os.path.join(run_dir, "config.json"))
    if data_dir:
        cfg.data_dir = data_dir
    dev = resolve_device(device)
    data, model = data_and_model(cfg)
    model.load(os.path.join(run_dir, "weights.npz")).to(dev)
    ev = _test_metrics(model, data, SoftmaxCrossEntropy(), dev)
    if plots:
        _test_plots(run_dir, model, data, ev)
    return {"json": ev["json"], "text": ev["text"]}


def _augment(cfg):
    from .data.augment import RandomAugment
    return RandomAugment(cfg.augment_crop, cfg.augment_flip) or None


def run_config(run_dir) -> RunConfig:
    """A run's config with its ``data_info`` record (input shape, class names, scaling); for
    runs older than that record it is learned by loading the run's data set once."""
    cfg = RunConfig.load(os.path.join(run_dir, "config.json"))
    if cfg.data_info is None:
        data_and_model(cfg)
    return cfg


def load_model(run_dir, *, device="cpu", weights: str = "weights.npz"):
    """A run's trained model with its weights loaded, in evaluation mode on ``device``: a zoo
    model, or one defined by a .py file (re-imported after checking its recorded SHA-256) or a
    TOML spec (rebuilt from the text in config.json). Ready for ``model(x)`` /
    ``forward(x, train=False)`` on inputs prepared as the run's were (see gpunn.predict).

    The model also carries ``class_names`` and ``input_shape`` (per sample, C, H, W). Runs
    older than these records load their data set once to learn them.
    """
    from .specs import build_from_source

    wpath = os.path.join(run_dir, weights)
    if not os.path.exists(wpath):
        raise FileNotFoundError(f"{wpath} not found: the run has not finished (resume it with "
                                f"gpunn train --resume {run_dir})")
    cfg = run_config(run_dir)
    info = cfg.data_info
    model = build_from_source(cfg.model, cfg.model_source, info["input_shape"],
                              len(info["class_names"]), seed=cfg.seed, dtype=np.dtype(cfg.dtype),
                              dropout=cfg.dropout, where=os.path.join(run_dir, "config.json"))
    model.load(wpath)
    model.class_names = tuple(cfg.data_info["class_names"])
    model.input_shape = tuple(cfg.data_info["input_shape"])
    return model.to(resolve_device(device)).eval()


def _evaluate(model, loss, x, y):
    """:func:`gpunn.train.evaluate`, sharded over the ranks of a data-parallel run."""
    from .distributed import evaluate as sharded, several
    return evaluate(model, loss, x, y) if several() is None else sharded(model, loss, x, y)


def _test_metrics(model, data, loss, dev):
    from .backend import to_device
    from .metrics import confusion_matrix, most_confused_pairs, per_class_metrics

    x, y = to_device(data.x_test, dev), to_device(data.y_test, dev)
    test_loss, test_acc, pred = _evaluate(model, loss, x, y)
    y_true = np.asarray(data.y_test)
    cm = confusion_matrix(y_true, pred, data.num_classes)
    per = per_class_metrics(y_true, pred, data.num_classes)
    names = list(data.class_names)
    per_rows = [{"class": names[k], "precision": float(per["precision"][k]),
                 "recall": float(per["recall"][k]), "f1": float(per["f1"][k]),
                 "support": int(per["support"][k])} for k in range(data.num_classes)]
    lines = [f"test accuracy {test_acc:.4f}  loss {test_loss:.4f}  ({len(y_true)} images)", "",
             "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
              f"{r['support']} |" for r in per_rows]
    pairs = most_confused_pairs(cm, k=5, class_names=names)
    if pairs:
        lines += ["", "Most confused (true -> predicted: count):"]
        lines += [f"- {t} -> {p}: {c}" for t, p, c in pairs]
    return {"accuracy": test_acc, "loss": test_loss, "pred": pred, "cm": cm,
            "json": {"accuracy": test_acc, "loss": test_loss, "per_class": per_rows,
                     "confusion": cm.tolist()},
            "text": "\n".join(lines)}


def _test_plots(out, model, data, ev) -> dict:
    from . import plots
    from .backend import to_numpy

    files = {"confusion": plots.plot_confusion_matrix(
        ev["cm"], data.class_names, os.path.join(out, "confusion.png"))}
    wrong = np.flatnonzero(ev["pred"] != np.asarray(data.y_test))
    if len(wrong):
        files["misclassified"] = plots.plot_misclassified(
            data.x_test[wrong[:25]], np.asarray(data.y_test)[wrong[:25]], ev["pred"][wrong[:25]],
            data.class_names, os.path.join(out, "misclassified.png"))
    from .layers import Conv2d
    first_conv = next((l for l in model.walk() if isinstance(l, Conv2d)), None)
    if first_conv is not None:
        files["filters"] = plots.plot_filters(to_numpy(first_conv.params["W"]),
                                              os.path.join(out, "filters.png"))
    return files


def _evaluate_and_report(out, cfg, model, data, loss, dev, result) -> dict:
    from . import plots

    from .backend import to_device
    from .rundir import plain

    ev = _test_metrics(model, data, loss, dev)
    ev["val_loss"] = ev["val_acc"] = None
    if data.x_val is not None and len(data.x_val):
        ev["val_loss"], ev["val_acc"], _ = _evaluate(model, loss, to_device(data.x_val, dev),
                                                     to_device(data.y_val, dev))
    ev["json"].update(val_accuracy=ev["val_acc"], val_loss=ev["val_loss"])
    from .distributed import is_main, world_size
    if not is_main():                       # data-parallel: rank 0 writes the report
        return ev
    files = {"curves": plots.plot_learning_curves(result.history, os.path.join(out, "curves.png"),
                                                  title=f"{cfg.model} on {cfg.dataset}")}
    files.update(_test_plots(out, model, data, ev))
    _write_json(os.path.join(out, "metrics.json"), ev["json"])
    settings = "\n".join(f"| {k} | {plain(v)} |" for k, v in asdict(cfg).items())
    h = result.history
    rows = [f"| {s} | {e} | {_f(tl)} | {_f(ta)} | {_f(vl)} | {_f(va)} | {_f(sl)} | {_f(sa)} |"
            for s, e, tl, ta, vl, va, sl, sa in zip(h["samples"], h["epoch"], h["train_loss"],
                                                    h["train_acc"], h["val_loss"], h["val_acc"],
                                                    h["test_loss"], h["test_acc"])]
    pics = "\n\n".join(f"![{k}]({os.path.basename(v)})" for k, v in files.items())
    report = f"""# gpunn run: {cfg.model} on {cfg.dataset}

- date: {time.strftime('%Y-%m-%d %H:%M:%S')}
- device: {dev} ({platform.processor() or platform.machine()}){_ranks(world_size())}, gpunn {__version__}, numpy {np.__version__}{_cpu_blas(dev)}
- data: {data.name} from {getattr(data, 'source', '?')}; train {len(data.y_train)}, validation {len(data.y_val) if data.y_val is not None else 0}, test {len(data.y_test)}
- parameters: {model.num_parameters():,}
- time taken: {result.seconds:.1f} s for {result.steps} steps ({result.steps * cfg.batch_size * cfg.ranks / max(result.seconds, 1e-9):,.0f} samples/s including evaluation)
- stopped early: {plain(result.stopped_early)}; best {result.best.get('metric')}: {_f(result.best.get('value'))}{_at_epoch(result.best, len(data.y_train))}

## Weights

{_weights_note(cfg, result, len(data.y_train), ev)}

## Final test metrics

{ev['text']}

## Learning curve

| samples | epoch | train loss | train acc | val loss | val acc | test loss | test acc |
|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

## Plots

{pics}

## Settings

| setting | value |
|---|---|
{settings}

## Model

```
{model.summary(data.input_shape)}
```
"""
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    return ev


def _cpu_blas(dev) -> str:
    """On the CPU, which BLAS computed the products (gpunn/ops/mkl.py): it decides the last
    bits of a float32 run."""
    if dev.is_cuda:
        return ""
    from .ops.mkl import describe
    return f"; CPU GEMMs: {describe()}"


def _ranks(n) -> str:
    return f" x {n} ranks (data-parallel; the device is rank 0's)" if n > 1 else ""


def _f(v):
    return "-" if v is None else f"{v:.4f}"


def _at_epoch(best, n_train) -> str:
    return f" at epoch {best['samples'] / n_train:.2f}" if best.get("samples") is not None else ""


def _weights_note(cfg, result, n_train, ev) -> str:
    """Which file holds which weights; the test metrics below are weights.npz's."""
    best = result.best
    judged = f"best {best.get('metric')} ({_f(best.get('value'))}{_at_epoch(best, n_train)})"
    restored = cfg.patience is not None and best.get("samples") is not None
    last = (f"the weights with the {judged}, restored by early stopping" if restored else
            f"the weights at the end of training (step {result.steps})")
    lines = [f"- weights.npz: {last}; validation accuracy {_f(ev['val_acc'])}. The test metrics "
             f"below are these weights'."]
    if cfg.save_best:
        lines.append(f"- best.npz: the weights with the {judged}.")
    lines.append("- checkpoint.npz: the whole training state at the last evaluation (for "
                 "--resume).")
    lines.append("- The validation split picks the best weights; the test split is never used "
                 "to choose.")
    return "\n".join(lines)


# -- sweeps -------------------------------------------------------------------------------------
def load_sweep(path) -> dict:
    """Parse a sweep TOML: top-level run settings, ``models = [...]`` and ``[[settings]]``
    tables (each with a ``name`` and any RunConfig fields)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    models = doc.pop("models", None)
    settings = doc.pop("settings", None)
    name = doc.pop("name", os.path.splitext(os.path.basename(path))[0])
    if not models or not isinstance(models, list):
        raise ValueError(f"{path}: needs a list `models = [\"model1\", ...]`")
    if not settings or not isinstance(settings, list):
        raise ValueError(f"{path}: needs at least one [[settings]] table")
    from .zoo import MODELS
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(f"{path}: unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    for i, s in enumerate(settings):
        s = dict(s)
        s.setdefault("name", f"setting{i + 1}")
        RunConfig.from_dict({**doc, **{k: v for k, v in s.items() if k != "name"}},
                            where=f"{path} [[settings]] #{i + 1}")
    return {"name": name, "base": doc, "models": models, "settings": settings}


def run_sweep(path, *, out=None, device=None, epochs=None, max_steps=None, progress=True,
              resume=False, overwrite=False, log=None) -> dict:
    """Train every model x setting of a sweep file into ``out/MODEL__SETTING``, one after the
    other, saying "run k/n" before each and its result as it ends (through ``log``).

    Each row's winner and the sweep's best cell are chosen on validation accuracy (of the
    weights each run kept); test accuracy is reported, never used to choose. With ``resume``,
    runs that finished are skipped, a run that stopped part way is resumed, the rest are
    trained; without it a sweep directory that holds runs is refused unless ``overwrite``.
    """
    from . import plots
    from .rundir import RunExistsError, resume_config

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sw = load_sweep(path)
    out = out or os.path.join("runs", f"sweep-{sw['name']}")
    cells = []
    for model_name in sw["models"]:
        for i, s in enumerate(sw["settings"]):
            sname = s.get("name", f"setting{i + 1}")
            d = {**sw["base"], **{k: v for k, v in s.items() if k != "name"}, "model": model_name,
                 "progress": progress}
            d.update({k: v for k, v in (("device", device), ("epochs", epochs),
                                        ("max_steps", max_steps)) if v})
            cells.append((model_name, sname, d, os.path.join(out, f"{model_name}__{sname}")))
    held = [c[3] for c in cells if os.path.isdir(c[3]) and os.listdir(c[3])]
    if held and not (resume or overwrite):
        raise RunExistsError(f"{out} holds an earlier sweep ({len(held)} of {len(cells)} runs); "
                             f"finish it with --resume, start again with --overwrite, or "
                             f"choose another --out")
    os.makedirs(out, exist_ok=True)
    test, val, histories, n = {}, {}, {}, len(cells)
    for k, (model_name, sname, d, run_dir) in enumerate(cells, 1):
        tag, key = f"run {k}/{n}: {model_name} / {sname}", (model_name, sname)
        done = _finished(run_dir) if resume else None
        if done is not None:
            say(f"{tag}: already done (val acc {_f(done['val_acc'])}, test acc "
                f"{_f(done['test_acc'])}); skipped")
            summary = done
        elif resume and os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
            say(f"{tag}: resuming {run_dir}")
            summary = run_training(resume_config(run_dir, d), run_dir, resume=True, log=log)
        else:
            say(f"{tag} -> {run_dir}")
            summary = run_training(RunConfig.from_dict(d), run_dir, overwrite=overwrite or resume,
                                   log=log)
        if done is None:
            say(f"{tag} done: val acc {_f(summary['val_acc'])}, test acc "
                f"{_f(summary['test_acc'])} ({summary['seconds']:.1f} s)")
        test[key], val[key], histories[key] = (summary["test_acc"], summary["val_acc"],
                                               summary["history"])
    snames = [s.get("name", f"setting{i + 1}") for i, s in enumerate(sw["settings"])]
    table = plots.sweep_table_markdown(test, sw["models"], snames, choose_by=val)
    val_table = plots.sweep_table_markdown(val, sw["models"], snames)
    chosen = [c for c in val if val[c] is not None]
    best = max(chosen, key=lambda c: val[c]) if chosen else None
    verdict = (f"Best cell, chosen on validation accuracy: {best[0]} / {best[1]} (validation "
               f"{val[best]:.4f}, test {test[best]:.4f})." if best else
               "No run has a validation split, so no cell is chosen (the test split never "
               "chooses).")
    plots.plot_sweep_curves(histories, sw["models"], snames, os.path.join(out, "sweep_curves.png"))
    plots.plot_sweep_table(test, sw["models"], snames, os.path.join(out, "sweep_table.png"))
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write(f"# gpunn sweep: {sw['name']}\n\nFinal test accuracy (model x setting). In "
                f"bold: each model's setting with the best validation accuracy; the test split "
                f"is reported, never used to choose.\n\n{table}\n\n{verdict}\n\n"
                f"Validation accuracy of the same weights:\n\n{val_table}\n\n"
                "![learning curves](sweep_curves.png)\n\n![table](sweep_table.png)\n")
    return {"table": table, "report": report, "results": test, "val": val, "best": best,
            "verdict": verdict}


def _finished(run_dir):
    """A finished run's summary (from metrics.json and history.json), or None."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            m = json.load(f)
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return {"test_acc": m["accuracy"], "test_loss": m["loss"], "val_acc": m.get("val_accuracy"),
            "val_loss": m.get("val_loss"), "history": history}

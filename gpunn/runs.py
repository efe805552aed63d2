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
    max_steps: int | None = None
    progress: bool = True
    augment_crop: int = 0            # images: random crop after zero padding by this many pixels
    augment_flip: bool = False       # images: random horizontal flip
    # Recorded by the run, never set (no train option): where a file-defined model came from
    # (gpunn/specs.py) and the data's input shape, classes and scaling, so eval, predict,
    # export and load_model rebuild the model without the data set.
    model_source: dict | None = field(default=None, metadata={"recorded": True})
    data_info: dict | None = field(default=None, metadata={"recorded": True})
    tensorboard: bool = False        # also write TensorBoard event files (tensorboardX extra)

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
        return cls.from_dict(d, where=str(path))

    def save(self, path) -> None:
        _write_json(path, {**asdict(self), "gpunn_version": __version__})


def _write_json(path, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def data_and_model(cfg: RunConfig):
    """The data set and the (host) model a config names (a zoo name, a .py or a .toml file:
    gpunn/specs.py); the model is checked against the data's input shape before anything
    trains. A new config records here the model's source and the data's shape, classes and
    scaling (``model_source``, ``data_info``); a saved one is rebuilt from those records."""
    from .data import load_dataset
    from .data.registry import absolute_dataset
    from .specs import build_from_source, model_source

    cfg.dataset = absolute_dataset(cfg.dataset)     # own data: config.json works from anywhere
    if cfg.model_source is None:
        cfg.model_source = model_source(cfg.model, cfg.dropout)  # None: zoo
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed,
                        dtype=np.dtype(cfg.dtype), standardize=cfg.standardize)
    model = build_from_source(cfg.model, cfg.model_source, data.input_shape, data.num_classes,
                              seed=cfg.seed, dtype=np.dtype(cfg.dtype), dropout=cfg.dropout)
    if cfg.data_info is None:
        cfg.data_info = {"input_shape": list(data.input_shape),
                         "class_names": list(data.class_names), "mean": data.mean,
                         "std": data.std, "pixel_scale": data.pixel_scale}
    return data, model


def build_all(cfg: RunConfig, device):
    """(dataset, model on device, optimizer, scheduler, loss) for a config."""
    from .optim import SGD, Adam, CosineAnnealingLR, ExponentialLR, StepLR

    data, model = data_and_model(cfg)
    model.to(device)
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


def run_training(cfg: RunConfig, out: str, *, resume: bool = False, log=None) -> dict:
    """Train per ``cfg`` into run directory ``out``; returns a summary dict."""
    from .train.logs import run_logs

    logs = run_logs(out, tensorboard=cfg.tensorboard)     # a missing extra fails here, first
    dev = resolve_device(cfg.device)
    os.makedirs(out, exist_ok=True)
    data, model, opt, sched, loss = build_all(cfg, dev)
    if not resume:
        cfg.save(os.path.join(out, "config.json"))
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                       seed=cfg.seed, patience=cfg.patience, progress=cfg.progress,
                       max_steps=cfg.max_steps, augment=_augment(cfg))
    result = fit(model, loss, opt, data, tcfg, out_dir=out, device=dev, scheduler=sched,
                 resume=resume, log=log, extensions=logs)
    model.save(os.path.join(out, "weights.npz"))
    _write_json(os.path.join(out, "history.json"), result.history)
    ev = _evaluate_and_report(out, cfg, model, data, loss, dev, result)
    return {"test_acc": ev["accuracy"], "test_loss": ev["loss"], "seconds": result.seconds,
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


def _test_metrics(model, data, loss, dev):
    from .backend import to_device
    from .metrics import confusion_matrix, most_confused_pairs, per_class_metrics

    x, y = to_device(data.x_test, dev), to_device(data.y_test, dev)
    test_loss, test_acc, pred = evaluate(model, loss, x, y)
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

    ev = _test_metrics(model, data, loss, dev)
    files = {"curves": plots.plot_learning_curves(result.history, os.path.join(out, "curves.png"),
                                                  title=f"{cfg.model} on {cfg.dataset}")}
    files.update(_test_plots(out, model, data, ev))
    _write_json(os.path.join(out, "metrics.json"), ev["json"])
    settings = "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items())
    h = result.history
    rows = [f"| {s} | {e} | {_f(tl)} | {_f(ta)} | {_f(vl)} | {_f(va)} | {_f(sl)} | {_f(sa)} |"
            for s, e, tl, ta, vl, va, sl, sa in zip(h["samples"], h["epoch"], h["train_loss"],
                                                    h["train_acc"], h["val_loss"], h["val_acc"],
                                                    h["test_loss"], h["test_acc"])]
    pics = "\n\n".join(f"![{k}]({os.path.basename(v)})" for k, v in files.items())
    report = f"""# gpunn run: {cfg.model} on {cfg.dataset}

- date: {time.strftime('%Y-%m-%d %H:%M:%S')}
- device: {dev} ({platform.processor() or platform.machine()}), gpunn {__version__}, numpy {np.__version__}
- data: {data.name} from {getattr(data, 'source', '?')}; train {len(data.y_train)}, validation {len(data.y_val) if data.y_val is not None else 0}, test {len(data.y_test)}
- parameters: {model.num_parameters():,}
- time taken: {result.seconds:.1f} s for {result.steps} steps ({result.steps * cfg.batch_size / max(result.seconds, 1e-9):,.0f} samples/s including evaluation)
- stopped early: {result.stopped_early}; best {result.best.get('metric')}: {_f(result.best.get('value'))}

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


def _f(v):
    return "-" if v is None else f"{v:.4f}"


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


def run_sweep(path, *, out=None, device=None, epochs=None, max_steps=None, progress=True) -> dict:
    from . import plots

    sw = load_sweep(path)
    out = out or os.path.join("runs", f"sweep-{sw['name']}")
    os.makedirs(out, exist_ok=True)
    results = {}
    histories = {}
    for model_name in sw["models"]:
        for i, s in enumerate(sw["settings"]):
            sname = s.get("name", f"setting{i + 1}")
            d = {**sw["base"], **{k: v for k, v in s.items() if k != "name"}, "model": model_name,
                 "progress": progress}
            if device:
                d["device"] = device
            if epochs:
                d["epochs"] = epochs
            if max_steps:
                d["max_steps"] = max_steps
            cfg = RunConfig.from_dict(d)
            run_dir = os.path.join(out, f"{model_name}__{sname}")
            summary = run_training(cfg, run_dir)
            results[(model_name, sname)] = summary["test_acc"]
            histories[(model_name, sname)] = summary["history"]
    snames = [s.get("name", f"setting{i + 1}") for i, s in enumerate(sw["settings"])]
    table = plots.sweep_table_markdown(results, sw["models"], snames)
    plots.plot_sweep_curves(histories, sw["models"], snames, os.path.join(out, "sweep_curves.png"))
    plots.plot_sweep_table(results, sw["models"], snames, os.path.join(out, "sweep_table.png"))
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write(f"# gpunn sweep: {sw['name']}\n\nFinal test accuracy (model x setting):\n\n{table}\n\n"
                "![learning curves](sweep_curves.png)\n\n![table](sweep_table.png)\n")
    return {"table": table, "report": report, "results": results}

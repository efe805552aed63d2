"""Compare run directories: the settings that differ, the final metrics, one figure of curves.

A run's settings come from its ``config.json``; its curves from ``metrics.csv`` (written as
it trains, so a run still in progress can be compared) or, for runs older than that file,
``history.json``. The final metrics are those of the last evaluation row; "best" is the row
with the best validation accuracy (test accuracy when the run had no validation split).
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, fields

__all__ = ["load_run", "compare_runs", "format_comparison", "plot_comparison"]

# settings that never change what a run computes
_IGNORED = {"progress"}
_METRICS = ("val_acc", "val_loss", "test_acc", "test_loss")


def load_run(run_dir) -> dict:
    """``{"dir", "name", "config", "history", "status"}`` for one run directory; errors name
    the directory and the missing file."""
    from .train.logs import METRICS_CSV, read_metrics_csv

    run_dir = os.fspath(run_dir)
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{run_dir}: no config.json (is it a gpunn run directory?)")
    with open(cfg_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    csv_path, hist_path = os.path.join(run_dir, METRICS_CSV), os.path.join(run_dir, "history.json")
    if os.path.exists(csv_path):
        history = read_metrics_csv(csv_path)
    elif os.path.exists(hist_path):
        with open(hist_path) as f:
            history = json.load(f)
    else:
        raise FileNotFoundError(f"{run_dir}: neither {METRICS_CSV} nor history.json: the run "
                                "has not evaluated yet")
    status = "done" if os.path.exists(os.path.join(run_dir, "weights.npz")) else "unfinished"
    return {"dir": run_dir, "name": os.path.basename(os.path.normpath(run_dir)),
            "config": config, "history": history, "status": status}


def _defaults() -> dict:
    """Settings a config.json written before a setting existed lacks: the default then."""
    from .runs import RunConfig
    return {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}


def _final(history: dict) -> dict:
    n = len(history.get("samples", []))
    last = {k: (history[k][-1] if n and k in history else None)
            for k in (*_METRICS, "epoch", "samples", "seconds")}
    key = "val_acc" if any(v is not None for v in history.get("val_acc", [])) else "test_acc"
    vals = [(v, i) for i, v in enumerate(history.get(key, [])) if v is not None]
    best = max(vals, key=lambda t: (t[0], -t[1])) if vals else None      # first of equals
    return {**last, "evaluations": n, "best_metric": key,
            "best_value": best[0] if best else None,
            "best_epoch": history["epoch"][best[1]] if best else None}


def compare_runs(run_dirs) -> dict:
    """``{"runs": [...], "differ": [setting, ...], "rows": [{"run", settings..., metrics...}]}``
    for run directories (at least one)."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("compare: give at least one run directory")
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):                 # same basename twice: use the paths
        for r in runs:
            r["name"] = r["dir"]
    defaults = _defaults()
    keys = sorted({k for r in runs for k in r["config"]} - _IGNORED)

    def value(r, k):
        return r["config"].get(k, defaults.get(k))
    differ = [k for k in keys
              if len({json.dumps(value(r, k), sort_keys=True) for r in runs}) > 1]
    rows = []
    for r in runs:
        row = {"run": r["name"], **{k: value(r, k) for k in differ}, **_final(r["history"]),
               "status": r["status"]}
        rows.append(row)
    return {"runs": runs, "differ": differ, "rows": rows}


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v, sort_keys=True)
        return s if len(s) <= 32 else s[:29] + "..."
    return str(v)


def format_comparison(cmp: dict) -> str:
    """A plain-text table: one line per run, the settings that differ, then the metrics."""
    cols = ["run", *cmp["differ"], "val_acc", "val_loss", "test_acc", "test_loss",
            "best_epoch", "epoch", "seconds", "status"]
    head = {"val_acc": "val acc", "val_loss": "val loss", "test_acc": "test acc",
            "test_loss": "test loss", "best_epoch": "best epoch", "epoch": "epochs",
            "seconds": "time (s)"}
    table = [[head.get(c, c) for c in cols]]
    for row in cmp["rows"]:
        cells = []
        for c in cols:
            v = row[c]
            if c in cmp["differ"] and isinstance(v, float):
                cells.append(f"{v:g}")                   # a setting: as written, 1e-05 too
            elif c == "seconds" and v is not None:
                cells.append(f"{v:.1f}")
            elif c in ("best_epoch", "epoch") and v is not None:
                cells.append(f"{v:g}")
            else:
                cells.append(_cell(v))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not cmp["differ"]:
        lines.append("(the runs' settings are the same)" if len(cmp["rows"]) > 1 else "")
    best = {r["best_metric"] for r in cmp["rows"]}
    lines.append(f"final: the last evaluation; best epoch: highest {' / '.join(sorted(best))}")
    return "\n".join(l for l in lines if l)


def plot_comparison(cmp: dict, path) -> str:
    """Accuracy and loss against epochs for every run: one colour per run, solid for the
    validation split (test when there is none), dashed for the training subset."""
    from .plots import plt

    from matplotlib.lines import Line2D

    fig, (a_acc, a_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, (r, row) in enumerate(zip(cmp["runs"], cmp["rows"])):
        h, colour = r["history"], colours[i % len(colours)]
        held_out = "val" if row["best_metric"] == "val_acc" else "test"
        for split, style in ((held_out, "-"), ("train", "--")):
            for ax, metric in ((a_acc, "acc"), (a_loss, "loss")):
                pts = [(e, v) for e, v in zip(h.get("epoch", []), h.get(f"{split}_{metric}", []))
                       if v is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, marker="o", ms=2.5, color=colour)
        handles.append(Line2D([], [], color=colour, label=f"{row['run']} ({held_out})"))
    handles += [Line2D([], [], color="0.3", ls="-", label="held-out split"),
                Line2D([], [], color="0.3", ls="--", label="training subset")]
    a_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    a_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for ax in (a_acc, a_loss):
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, len(handles)), fontsize="small", frameon=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return os.fspath(path)

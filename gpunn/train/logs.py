"""Logs other tools can follow while a run trains: ``metrics.csv`` and TensorBoard event files.

Both are extensions (gpunn/train/extensions.py) that write one record per ``evaluate(row)``
event. They must come after the checkpoint extension (``fit(extensions=[...])`` puts them
there): at the start of a resumed run they read the evaluation history the checkpoint
restored, and a row is logged only after the checkpoint that holds it is on disk. So a run
killed anywhere resumes with a log that has each row once, and, since resume is exact, the
rows written after the resume are the rows an uninterrupted run writes.
"""
from __future__ import annotations

import math
import os

from ..extras import require
from .extensions import Extension

__all__ = ["MetricsCSV", "TensorBoardLog", "run_logs", "METRICS_CSV", "TENSORBOARD_DIR",
           "format_value", "read_metrics_csv"]

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def format_value(v) -> str:
    """One CSV cell: empty for a missing value, ``repr`` for floats (it round-trips exactly)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)       # nan, inf, -inf: float() reads them
    return str(v)


def read_metrics_csv(path) -> dict:
    """``metrics.csv`` -> ``{column: [values]}`` in the shape of ``history.json`` (ints where
    the column is whole, None for empty cells)."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a header line")
    cols = lines[0].split(",")
    out = {c: [] for c in cols}
    for i, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(cols):
            raise ValueError(f"{path}, line {i}: {len(cells)} cells, the header has {len(cols)}")
        for c, cell in zip(cols, cells):
            out[c].append(_parse(cell))
    return out


def _parse(cell: str):
    if cell == "":
        return None
    try:
        return int(cell)
    except ValueError:
        return float(cell)


class MetricsCSV(Extension):
    """``path`` (``metrics.csv``): a header, then one row per evaluation, each appended and
    flushed (the file closed) as soon as the evaluation is done.

    Columns are those of the evaluation history (samples, epoch, step, seconds, lr, then
    loss and accuracy on train/val/test); a split that is not evaluated leaves its cells empty.
    """
    name = "metrics_csv"       # no state: the rows live in the evaluation's history

    def __init__(self, path):
        self.path = os.fspath(path)
        self.columns = None

    def _line(self, row: dict) -> str:
        return ",".join(format_value(row.get(c)) for c in self.columns) + "\n"

    def on_start(self, trainer):
        evaluation = trainer.extension("evaluation")
        if evaluation is None:
            raise RuntimeError("MetricsCSV needs the evaluation extension (gpunn.train.fit adds it)")
        history = evaluation.history
        self.columns = list(history)
        n = len(history[self.columns[0]])
        want = [",".join(self.columns) + "\n"] + [
            self._line({c: history[c][i] for c in self.columns}) for i in range(n)]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        have = []
        if os.path.exists(self.path):
            with open(self.path, newline="") as f:
                have = f.readlines()
        if have == want[:len(have)]:
            # a prefix of what the checkpoint holds (a kill between checkpoint and log, or a
            # fresh file): append the missing rows and keep every byte already written
            with open(self.path, "a", newline="") as f:
                f.writelines(want[len(have):])
        else:
            # rows the checkpoint does not hold (logged after it, or another run's file):
            # rewrite from the checkpoint's history; training will log the rest again
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", newline="") as f:
                f.writelines(want)
            os.replace(tmp, self.path)

    def on_evaluate(self, trainer, row):
        with open(self.path, "a", newline="") as f:
            f.write(self._line(row))


class TensorBoardLog(Extension):
    """TensorBoard event files in ``log_dir`` through ``tensorboardX`` (the ``tensorboard``
    extra): scalars ``loss/<split>``, ``accuracy/<split>``, ``lr`` and ``epoch`` at global step
    = optimizer steps, flushed after each evaluation.

    Each process writes its own event file, starting with a purge marker just after the step
    it starts from, so TensorBoard hides whatever an interrupted process logged beyond its
    last checkpoint (step 0 for a fresh run: an earlier run's events in the folder are hidden).
    """
    name = "tensorboard"

    def __init__(self, log_dir):
        self.tbx = require("tensorboardX", "tensorboard", "TensorBoard logging (--tensorboard)")
        self.log_dir = os.fspath(log_dir)
        self.writer = None

    def on_start(self, trainer):
        step = trainer.state.step
        # events at the resume step itself are in the checkpoint's history: keep them
        self.writer = self.tbx.SummaryWriter(
            self.log_dir, purge_step=step + 1 if step else 0, flush_secs=10,
            # zero-padded: files started within the same second still sort in step order
            filename_suffix=f".gpunn.step{step:010d}.pid{os.getpid()}")

    def on_evaluate(self, trainer, row):
        step = int(row["step"])
        for split in ("train", "val", "test"):
            for metric, tag in (("loss", "loss"), ("acc", "accuracy")):
                v = row.get(f"{split}_{metric}")
                if v is not None:
                    self.writer.add_scalar(f"{tag}/{split}", v, step)
        self.writer.add_scalar("lr", row["lr"], step)
        self.writer.add_scalar("epoch", row["epoch"], step)
        self.writer.flush()

    def _close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_interrupt(self, trainer):
        self._close()

    def on_finish(self, trainer):
        self._close()


def run_logs(out_dir, *, tensorboard: bool = False) -> list:
    """The log extensions a run directory gets: ``metrics.csv`` always, TensorBoard events in
    ``tensorboard/`` when asked (raises :class:`gpunn.extras.MissingExtra` before training
    when tensorboardX is not installed)."""
    exts = [MetricsCSV(os.path.join(out_dir, METRICS_CSV))]
    if tensorboard:
        exts.append(TensorBoardLog(os.path.join(out_dir, TENSORBOARD_DIR)))
    return exts

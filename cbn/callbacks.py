"""Callbacks of ``cbn.fit(..., callbacks=[...])``: code run at the end of each epoch (and,
for those that ask, of each step) without breaking the step loop, which stays one compiled
call per step.

The protocol (subclass ``Callback``, or any object with these methods):

- ``on_train_begin(run)``: before the first step (also of a resumed run);
- ``on_epoch_end(run, logs)``: after each epoch's history point; ``logs`` holds ``epoch``
  (epochs done), ``epochs`` (planned), ``step``, ``total``, ``loss`` (the mean training
  loss of the epoch's mini-batches), ``lr``, ``seconds`` (since training started) and, where
  recorded, ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
  ``train_cost``, ``val_cost``;
- ``on_step_end(run, step, loss)``: after every step, only for callbacks whose
  ``per_step`` is True (opt-in: a Python call per step costs a few percent on small
  networks);
- ``on_train_end(run)``: after the last step, or after a callback stopped the run (not when
  an exception ends it).

``run`` has ``net``, ``history``, ``step``, ``total``, ``recorded`` (the keys its ``logs``
will hold) and ``stop_training``: setting that to
True ends the run at the end of the current step (with its checkpoint, if ``fit`` writes
one). Callbacks that only watch leave the run bit for bit the same.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Dict, List, Optional

from . import _validate as check
from ._files import PathLike, json_ready, user_path, write_text

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "EpochLogger", "EpochLines"]


class Callback:
    """A callback that does nothing; override what you need."""

    per_step = False

    def on_train_begin(self, run) -> None:
        pass

    def on_epoch_end(self, run, logs: Dict[str, float]) -> None:
        pass

    def on_step_end(self, run, step: int, loss: float) -> None:
        pass

    def on_train_end(self, run) -> None:
        pass


def _mode(monitor: str) -> str:
    """"max" for accuracies, "min" for losses and costs."""
    return "max" if monitor.endswith("accuracy") else "min"


MONITORED = ("val_accuracy", "val_loss", "val_cost", "train_accuracy", "train_loss",
             "train_cost", "loss")


class _Monitor(Callback):
    def __init__(self, monitor: str, min_delta: float = 0.0) -> None:
        self.monitor = check.choice("monitor", monitor, MONITORED)
        self.min_delta = check.real("min_delta", min_delta, low=0.0)
        self.best: Optional[float] = None

    def _check(self, run) -> None:
        if self.monitor not in run.recorded:
            raise ValueError(f"{type(self).__name__} monitors {self.monitor}, which this run "
                             "does not record (val_*: give X_val and y_val; train_*: "
                             "eval_train=True)")

    def _value(self, logs: Dict[str, float]) -> float:
        if self.monitor not in logs:
            raise ValueError(f"{type(self).__name__} monitors {self.monitor}, which this run "
                             "does not record (val_*: give X_val and y_val; train_*: "
                             "eval_train=True)")
        return logs[self.monitor]

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if _mode(self.monitor) == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best`` the network ends with the parameters and running
    statistics of its best epoch. ``stopped_epoch`` and ``best_epoch`` say what happened."""

    def __init__(self, monitor: str = "val_accuracy", patience: int = 5,
                 min_delta: float = 0.0, restore_best: bool = True) -> None:
        super().__init__(monitor, min_delta)
        self.patience = check.integer("patience", patience, low=1)
        self.restore_best = bool(restore_best)
        self.wait = 0
        self.best_epoch: Optional[int] = None
        self.stopped_epoch: Optional[int] = None
        self._best_state = None

    def on_train_begin(self, run) -> None:
        self._check(run)
        self.best, self.wait, self.best_epoch, self.stopped_epoch = None, 0, None, None
        self._best_state = None

    def on_epoch_end(self, run, logs: Dict[str, float]) -> None:
        value = self._value(logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, logs["epoch"], 0
            if self.restore_best:
                self._best_state = {k: v.copy() for k, v in run.net.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            run.stop_training = True

    def on_train_end(self, run) -> None:
        if self.restore_best and self._best_state is not None:
            run.net.load_state_dict(self._best_state)


class ModelCheckpoint(_Monitor):
    """Save the network (``Network.save``, atomic) to ``path`` at every epoch's end, or with
    ``save_best_only`` only when ``monitor`` improved (by more than ``min_delta``)."""

    def __init__(self, path: PathLike, monitor: str = "val_accuracy",
                 save_best_only: bool = False, min_delta: float = 0.0) -> None:
        super().__init__(monitor, min_delta)
        self.path = user_path(path)
        self.save_best_only = bool(save_best_only)

    def on_train_begin(self, run) -> None:
        if self.save_best_only:
            self._check(run)
        self.best = None

    def on_epoch_end(self, run, logs: Dict[str, float]) -> None:
        if self.save_best_only:
            value = self._value(logs)
            if not self._improved(value):
                return
            self.best = value
        run.net.save(self.path)


LOG_COLUMNS = ("epoch", "step", "loss", "lr", "train_loss", "train_accuracy", "val_loss",
               "val_accuracy", "seconds")


class EpochLogger(Callback):
    """One row per epoch in ``path``: CSV (``.csv``) or JSON lines (any other name, e.g.
    ``.jsonl``). The file is rewritten whole and atomically at each epoch, so a reader never
    sees half a row; a resumed run starts it again from its first epoch's end."""

    def __init__(self, path: PathLike) -> None:
        self.path = user_path(path)
        self.rows: List[Dict[str, float]] = []

    def on_train_begin(self, run) -> None:
        self.rows = []

    def on_epoch_end(self, run, logs: Dict[str, float]) -> None:
        self.rows.append(dict(logs))
        if self.path.endswith(".csv"):
            columns = [c for c in LOG_COLUMNS if any(c in r for r in self.rows)]
            out = io.StringIO()
            writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            text = out.getvalue()
        else:
            text = "".join(json.dumps(json_ready(r)) + "\n" for r in self.rows)
        write_text(self.path, text)


class EpochLines(Callback):
    """``fit(verbose=1)``: one line per epoch on ``file`` (stderr by default), flushed, the
    same on a terminal and in a log file: epoch, step, loss, train and validation accuracy
    where recorded, learning rate and seconds, after ``prefix`` if given."""

    def __init__(self, prefix: str = "", file=None) -> None:
        self.prefix = prefix
        self.file = file

    def on_epoch_end(self, run, logs: Dict[str, float]) -> None:
        parts = [f"epoch {logs['epoch']}/{logs['epochs']:g}", f"step {logs['step']}",
                 f"loss {logs['loss']:.4f}"]
        for key, label in (("train_accuracy", "train"), ("val_accuracy", "val")):
            if key in logs:
                parts.append(f"{label} {100 * logs[key]:.2f} %")
        parts += [f"lr {logs['lr']:.3g}", f"{logs['seconds']:.1f} s"]
        line = (self.prefix + ": " if self.prefix else "") + "  ".join(parts)
        file = self.file or sys.stderr
        from tqdm.auto import tqdm
        tqdm.write(line, file=file)  # above a progress bar, if one is shown
        file.flush()

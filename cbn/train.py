"""Training: mini-batch SGD with a learning-rate schedule, L2 regularisation and a history.

Each step runs in one compiled call (gather + forward + backward + update, GIL released);
this module only shuffles, schedules, records and reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from . import _validate as check
from .network import Network
from .schedule import ConstantLR, CyclicLR

SNAPSHOT_EVERY = 50  # steps between copies of the parameters kept for divergence recovery


class DivergenceError(FloatingPointError):
    """Training produced NaN or inf. The network holds the last good parameters
    (a snapshot at most ``SNAPSHOT_EVERY`` steps old) when this is raised."""

    def __init__(self, step: int, lr: float, loss: float, restored_step: int) -> None:
        self.step, self.lr, self.loss, self.restored_step = step, lr, loss, restored_step
        super().__init__(
            f"training diverged at step {step} (learning rate {lr:.3g}, batch loss {loss}); "
            f"parameters restored to those after step {restored_step}. "
            f"Lower the learning rate (eta_max) or check the input scaling.")


@dataclass
class History:
    """What training recorded, one entry per evaluation point.

    ``step`` counts updates made, ``epoch`` is fractional (steps / steps per epoch), ``lr``
    is the learning rate of the last update. ``train_*`` are measured on the whole training
    set and ``val_*`` on the validation set, both in evaluation mode; ``batch_loss`` is the
    mean training-mode loss of the mini-batches since the previous point. Costs include
    ``lam * sum W^2``; losses do not. Accuracies are fractions in [0, 1]."""

    step: List[int] = field(default_factory=list)
    epoch: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    batch_loss: List[float] = field(default_factory=list)
    train_loss: List[float] = field(default_factory=list)
    train_cost: List[float] = field(default_factory=list)
    train_accuracy: List[float] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    val_cost: List[float] = field(default_factory=list)
    val_accuracy: List[float] = field(default_factory=list)
    wall_time: List[float] = field(default_factory=list)

    def as_dict(self) -> Dict[str, list]:
        """Plain dict of lists (JSON-ready)."""
        return asdict(self)

    to_dict = as_dict

    def __len__(self) -> int:
        return len(self.step)

    def last(self) -> Dict[str, float]:
        """The most recent entry of every series that has one."""
        return {k: v[-1] for k, v in self.as_dict().items() if v}


def _copy_state(net: Network, into: Dict[str, np.ndarray]) -> None:
    """Copy the network's parameters and running statistics into preallocated arrays."""
    for name, value in list(net.params.items()) + list(net.running_stats.items()):
        np.copyto(into[name], value)
    into["stats_seen"][...] = net._stats_seen


def steps_per_epoch(n: int, batch_size: int, batch_norm: bool) -> int:
    """Mini-batches per epoch: the full batches plus the remainder, except a remainder of
    one sample with batch norm (its batch statistics are undefined), which is dropped."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= (2 if batch_norm else 1) else 0)


def fit(net: Network, X: np.ndarray, y: np.ndarray, *, X_val: Optional[np.ndarray] = None,
        y_val: Optional[np.ndarray] = None, lam: float, batch_size: int,
        schedule: Union[CyclicLR, ConstantLR, float], cycles: Optional[float] = None,
        epochs: Optional[int] = None, seed: Optional[int] = None, progress: bool = True,
        normalization=None, momentum: float = 0.0, eval_every: Optional[int] = None,
        eval_train: bool = True) -> History:
    """Train ``net`` in place with mini-batch SGD; return the history.

    Parameters
    ----------
    X, y : training rows (n, d) and int labels (n,). X is float32/float64, or uint8 images
        with ``normalization`` (an object with per-feature ``mean`` and ``std``, e.g.
        ``cbn.data.Normalization``), standardised batch by batch so the set stays uint8.
    X_val, y_val : optional validation set, same form as X, y.
    lam : L2 strength; the cost is mean cross-entropy + lam * sum of squared weights.
    batch_size : rows per mini-batch; each epoch visits a fresh random permutation.
    schedule : ``CyclicLR``, ``ConstantLR`` or a float (constant learning rate).
    cycles : run ``cycles * schedule.cycle_length`` steps (CyclicLR only), or
    epochs : run ``epochs`` passes over the data. Give exactly one.
    seed : seeds the shuffling; with the network's seed it fixes the run.
    progress : show a tqdm progress bar.
    momentum : heavy-ball momentum (0 = plain SGD as in the course).
    eval_every : also record the history every this many steps (default: once per epoch,
        and at the end).
    eval_train : measure loss/cost/accuracy on the whole training set at each point.

    Raises ``DivergenceError`` if the loss or the parameters become NaN or inf.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net must be a cbn.Network, got {type(net).__name__}")
    lam = check.real("lam", lam, low=0.0)
    batch_size = check.integer("batch_size", batch_size, low=1)
    momentum = check.real("momentum", momentum, low=0.0, high=1.0, high_open=True)
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        schedule = ConstantLR(schedule)
    if not isinstance(schedule, (CyclicLR, ConstantLR)):
        raise TypeError(f"schedule must be a CyclicLR, ConstantLR or a number, got {schedule!r}")
    src, shift, scale = net._source(X, normalization)
    n = src.shape[0]
    y = check.labels("y", y, n, net.num_classes)
    if net.batch_norm and min(n, batch_size) < 2:
        raise ValueError("batch norm needs mini-batches of at least 2 samples; got "
                         f"batch_size={batch_size} with {n} training rows")
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    if X_val is not None:
        val_src, _, _ = net._source(X_val, normalization)
        y_val = check.labels("y_val", y_val, val_src.shape[0], net.num_classes)
    if eval_every is not None:
        eval_every = check.integer("eval_every", eval_every, low=1)
    if seed is not None:
        check.integer("seed", seed, low=0)

    per_epoch = steps_per_epoch(n, batch_size, net.batch_norm)
    if (cycles is None) == (epochs is None):
        raise ValueError("give exactly one of cycles= and epochs=")
    if cycles is not None:
        if not isinstance(schedule, CyclicLR):
            raise ValueError("cycles= needs a CyclicLR schedule; use epochs= otherwise")
        cycles = check.real("cycles", cycles, low=0.0, low_open=True)
        total = int(round(cycles * schedule.cycle_length))
    else:
        total = check.integer("epochs", epochs, low=1) * per_epoch
    if total < 1:
        raise ValueError("the run has no steps; raise cycles or epochs")

    rng = np.random.default_rng(seed)
    order = np.empty(n, dtype=np.int64)
    plan = net._plan(batch_size)
    velocity = np.zeros_like(net.flat_params) if momentum > 0 else None
    plan.set_velocity(velocity)
    # Preallocated copies of the state, refreshed every SNAPSHOT_EVERY steps without allocating.
    snapshot = net.state_dict()
    snapshot_step = 0
    history = History()
    started = time.perf_counter()
    batch_loss_sum, batch_count = 0.0, 0
    first_stats = net.batch_norm and net.bn_init == "first_batch"

    def record(step: int) -> None:
        nonlocal batch_loss_sum, batch_count
        history.step.append(step)
        history.epoch.append(step / per_epoch)
        history.lr.append(schedule.lr(step - 1) if step else schedule.lr(0))
        history.batch_loss.append(batch_loss_sum / batch_count if batch_count else math.nan)
        batch_loss_sum, batch_count = 0.0, 0
        penalty = lam * net.l2_penalty()
        for prefix, data in (("train", (src, y) if eval_train else None),
                             ("val", None if X_val is None else (val_src, y_val))):
            if data is None:
                continue
            loss, correct = net._evaluate(data[0], data[1], shift, scale)
            m = data[0].shape[0]
            getattr(history, f"{prefix}_loss").append(loss / m)
            getattr(history, f"{prefix}_cost").append(loss / m + penalty)
            getattr(history, f"{prefix}_accuracy").append(correct / m)
        history.wall_time.append(time.perf_counter() - started)

    step = 0
    bar = tqdm(total=total, disable=not progress, unit="step", desc="training",
               dynamic_ncols=True, leave=False)
    try:
        while step < total:
            order[:] = rng.permutation(n)
            plan.set_data(src, y, order, shift, scale)
            for b in range(per_epoch):
                start = b * batch_size
                rows = min(batch_size, n - start)
                lr = schedule.lr(step)
                first = first_stats and not net._stats_seen
                loss, _, finite = plan.train_step(start, rows, lr, lam, momentum, first)
                net._stats_seen = net._stats_seen or net.batch_norm
                loss /= rows
                if not (finite and math.isfinite(loss)):
                    net.load_state_dict(snapshot)
                    raise DivergenceError(step, lr, loss, snapshot_step)
                batch_loss_sum += loss
                batch_count += 1
                step += 1
                if step % SNAPSHOT_EVERY == 0:
                    _copy_state(net, snapshot)
                    snapshot_step = step
                if step % 50 == 0:
                    bar.update(50)
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                at_epoch_end = b == per_epoch - 1
                if step == total or at_epoch_end or (eval_every and step % eval_every == 0):
                    record(step)
                    plan.set_data(src, y, order, shift, scale)
                if step == total:
                    break
    finally:
        bar.update(step - bar.n)
        bar.close()
    return history

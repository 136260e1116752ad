"""Training: mini-batch SGD with a learning-rate schedule, L2 regularisation and a history;
divergence caught and rolled back; checkpoints that resume bit for bit.

Each step runs in one compiled call (gather + forward + backward + update, GIL released);
this module only shuffles, schedules, records, checks and saves.

Reproducibility (details in docs/reliability.md): with the same network seed, ``seed``,
data, arguments and dtype, and the same BLAS library and BLAS thread count, two runs give
bit-identical parameters and histories (``wall_time`` aside), whether or not they were
interrupted and resumed from a checkpoint, and whether or not other networks train in other
threads at the same time. A different BLAS thread count, BLAS build or CPU can change the
rounding of matrix products and so the last bits of every result.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from . import _ops
from . import _validate as check
from . import inputs
from .checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, save_checkpoint
from .network import Network
from .schedule import ConstantLR, CyclicLR

SNAPSHOT_EVERY = 50  # steps between copies of the parameters kept for divergence recovery

PathLike = Union[str, os.PathLike]


class DivergenceError(FloatingPointError):
    """Training produced NaN or inf. When this is raised the network holds the last good state:
    a snapshot of parameters and running statistics at most ``SNAPSHOT_EVERY`` steps old, taken
    only after checking that every value in it was finite.

    Attributes: ``step`` (0-based index of the update at which it was detected), ``lr`` (its
    learning rate), ``loss`` (its batch loss), ``restored_step`` (updates contained in the
    restored state), ``reason`` (what went non-finite) and ``history`` (the ``History`` up to
    that point)."""

    def __init__(self, step: int, lr: float, loss: float, restored_step: int,
                 reason: str = "the batch loss or the updated parameters") -> None:
        self.step, self.lr, self.loss, self.restored_step = step, lr, loss, restored_step
        self.reason = reason
        self.history: Optional[History] = None
        super().__init__(
            f"training diverged (detected at step {step}, learning rate {lr:.3g}): {reason} "
            f"became NaN or infinite (batch loss {loss}); parameters restored to those after "
            f"step {restored_step}. Lower the learning rate (eta_max) or check the input scaling.")


@dataclass
class History:
    """What training recorded, one entry per evaluation point.

    ``step`` counts updates made, ``epoch`` is fractional (steps / steps per epoch), ``lr``
    is the learning rate of the last update. ``train_*`` are measured on the whole training
    set and ``val_*`` on the validation set, both in evaluation mode; ``batch_loss`` is the
    mean training-mode loss of the mini-batches since the previous point. Costs include
    ``lam * sum W^2``; losses do not. Accuracies are fractions in [0, 1]. ``wall_time`` is
    seconds since training started (continued across a resume)."""

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
        """Plain dict of lists (JSON-ready); the lists are copies."""
        # Not dataclasses.asdict, which deep-copies element by element (60 ms for a long run).
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    to_dict = as_dict

    @classmethod
    def from_dict(cls, d: Dict[str, list]) -> "History":
        """The inverse of ``as_dict``; unknown or missing series raise ValueError."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"history series must be exactly {sorted(names)}; missing "
                             f"{sorted(names - set(d))}, unexpected {sorted(set(d) - names)}")
        return cls(**{k: list(v) for k, v in d.items()})

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
        epochs: Optional[int] = None, seed: Optional[int] = None,
        progress: Optional[bool] = None,
        normalization=None, momentum: float = 0.0, eval_every: Optional[int] = None,
        eval_train: bool = False, checkpoint: Optional[PathLike] = None,
        checkpoint_every: Optional[int] = None,
        resume: Union[None, bool, PathLike] = None) -> History:
    """Train ``net`` in place with mini-batch SGD; return the history.

    Parameters
    ----------
    X, y : training rows (n, d) and int labels (n,). X is float32/float64, or uint8 images
        with ``normalization`` (an object with per-feature ``mean`` and ``std``, e.g.
        ``cbn.data.Normalization``), standardised batch by batch so the set stays uint8.
        The network keeps ``normalization`` (``net.normalization``) and applies it when it
        predicts; None uses the one it has already, False feeds X as it is (cbn.inputs).
        X must be C-contiguous (pass ``np.ascontiguousarray(X)``; no silent copy of a data
        set); read-only arrays are fine, nothing is written to X or y.
    X_val, y_val : optional validation set, same form as X, y.
    lam : L2 strength; the cost is mean cross-entropy + lam * sum of squared weights.
    batch_size : rows per mini-batch; each epoch visits a fresh random permutation.
    schedule : ``CyclicLR``, ``ConstantLR`` or a float (constant learning rate).
    cycles : run ``cycles * schedule.cycle_length`` steps (CyclicLR only), or
    epochs : run ``epochs`` passes over the data. Give exactly one.
    seed : seeds the shuffling; with the network's seed it fixes the run.
    progress : show a tqdm progress bar; None (default) shows it only when stderr is a
        terminal, so redirected logs get no control characters.
    momentum : heavy-ball momentum (0 = plain SGD as in the course).
    eval_every : also record the history every this many steps (default: once per epoch,
        and at the end).
    eval_train : also measure loss/cost/accuracy on the whole training set at each point,
        as the course's curves do (``cbn.experiment`` turns it on). Off by default: it is a
        forward pass over all training rows, about a third of an epoch's time; ``batch_loss``
        (the mean loss of the mini-batches since the last point) is recorded either way.
    checkpoint : path of a checkpoint file (``.npz``, no pickle) to write every
        ``checkpoint_every`` steps (default: at the end of every epoch), at the end of the run,
        and when Ctrl-C stops it. Each write is atomic: a crash mid-write leaves the
        previous checkpoint intact.
    checkpoint_every : steps between checkpoints (needs ``checkpoint``).
    resume : a checkpoint path to continue from, or True to continue from ``checkpoint`` if
        that file exists (and start afresh if not). The run must be the same one: same
        network configuration, data, and arguments, else ``CheckpointError`` (a ValueError)
        says what differs. Training continues exactly as if never interrupted, and the
        returned history includes the entries recorded before the interruption.

    Ctrl-C (in the main thread) lets the current step finish, writes a checkpoint if
    ``checkpoint`` is set, then raises ``KeyboardInterrupt``; the network keeps the progress
    made. A second Ctrl-C stops at once (the last checkpoint written stays valid).

    Raises ``DivergenceError`` if the loss, the parameters, the batch-norm running statistics
    or an evaluation loss become NaN or inf; the network then holds the last good state.

    Holds ``net``'s lock for the whole run: other threads' calls on the same network (a
    ``predict_proba``, another ``fit``) wait until it ends.

    Determinism: the same network seed, ``seed``, data, arguments, dtype, BLAS library and
    BLAS thread count give bit-identical parameters and history (``wall_time`` aside),
    interrupted and resumed or not. The BLAS thread count, the BLAS build, the CPU, the dtype
    and the numpy version can change the last bits; see docs/reliability.md.
    """
    if isinstance(net, Network):  # the network's own normalization when none is passed
        normalization = inputs.resolve(X, normalization, net.normalization, net.input_dim)
    # Held for the whole run: the network's plans are re-pointed at every step.
    with net._lock if isinstance(net, Network) else contextlib.nullcontext():
        run = _Run(net, X, y, X_val, y_val, lam, batch_size, schedule, cycles, epochs, seed,
                   normalization, momentum, eval_every, eval_train)
        if normalization is not None:
            net.normalization = normalization  # kept, so predictions take raw images too
        if checkpoint is not None:
            checkpoint = _path("checkpoint", checkpoint)
        if checkpoint_every is not None:
            if checkpoint is None:
                raise ValueError("checkpoint_every needs checkpoint= (the file to write)")
            checkpoint_every = check.integer("checkpoint_every", checkpoint_every, low=1)
        source = None
        if resume is True:
            if checkpoint is None:
                raise ValueError("resume=True continues from checkpoint=, which is not set")
            source = checkpoint if os.path.exists(checkpoint) else None
        elif resume is not None and resume is not False:
            source = _path("resume", resume)
        if source is not None:
            run.restore(load_checkpoint(source), source)
        return run.train(progress, checkpoint, checkpoint_every)


def _path(name: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path, got {value!r}")
    path = os.fspath(value)
    if not path or os.path.isdir(path):
        raise ValueError(f"{name} must be a file path, got {value!r}")
    return path


def _checksum(*arrays: Optional[np.ndarray]) -> str:
    """CRC-32 of the arrays' shapes, dtypes and bytes (about 0.1 s for CIFAR-10's 138 MB)."""
    crc = 0
    for a in arrays:
        if a is None:
            crc = zlib.crc32(b"None", crc)
            continue
        crc = zlib.crc32(f"{a.shape}{a.dtype.str}".encode(), crc)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return f"{crc:08x}"


@contextlib.contextmanager
def _deferred_interrupt(run: "_Run") -> Iterator[None]:
    """Turn the first Ctrl-C into ``run.interrupted = True`` so the loop stops at a step
    boundary (the state is then consistent and can be saved); a second one raises at once.
    Only in the main thread and only over Python's default handler, never over a custom one."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum, frame):
        if run.interrupted:
            raise KeyboardInterrupt
        run.interrupted = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Run:
    """One call of ``fit``: the validated arguments, and the loop's position (step, epoch
    permutation, random state, history, accumulators), which is what a checkpoint holds."""

    def __init__(self, net, X, y, X_val, y_val, lam, batch_size, schedule, cycles, epochs,
                 seed, normalization, momentum, eval_every, eval_train) -> None:
        if not isinstance(net, Network):
            raise TypeError(f"net must be a cbn.Network, got {type(net).__name__}")
        if not all(np.isfinite(v).all() for v in (net.flat_params, *net.running_stats.values())):
            # Divergence recovery restores a snapshot of the starting state: it must be good.
            raise ValueError("net holds NaN or inf in its parameters or running statistics")
        self.net = net
        self.lam = check.real("lam", lam, low=0.0)
        self.batch_size = check.integer("batch_size", batch_size, low=1)
        self.momentum = check.real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if isinstance(schedule, numbers.Real) and not isinstance(schedule, (bool, np.bool_)):
            schedule = ConstantLR(schedule)  # any real number, numpy's float32 included
        if not isinstance(schedule, (CyclicLR, ConstantLR)):
            raise TypeError("schedule must be a CyclicLR, ConstantLR or a number, "
                            f"got {schedule!r}")
        self.schedule = schedule
        self.src, self.shift, self.scale = net._source(X, normalization)
        self.n = n = self.src.shape[0]
        self.y = check.labels("y", y, n, net.num_classes)
        if net.batch_norm and min(n, self.batch_size) < 2:
            raise ValueError("batch norm needs mini-batches of at least 2 samples; got "
                             f"batch_size={batch_size} with {n} training rows")
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        self.val_src = self.y_val = None
        if X_val is not None:
            self.val_src, _, _ = net._source(X_val, normalization)
            self.y_val = check.labels("y_val", y_val, self.val_src.shape[0], net.num_classes)
        self.eval_every = (None if eval_every is None
                           else check.integer("eval_every", eval_every, low=1))
        self.eval_train = bool(eval_train)
        self.seed = None if seed is None else check.integer("seed", seed, low=0)

        self.per_epoch = steps_per_epoch(n, self.batch_size, net.batch_norm)
        if (cycles is None) == (epochs is None):
            raise ValueError("give exactly one of cycles= and epochs=")
        if cycles is not None:
            if not isinstance(schedule, CyclicLR):
                raise ValueError("cycles= needs a CyclicLR schedule; use epochs= otherwise")
            cycles = check.real("cycles", cycles, low=0.0, low_open=True)
            steps = cycles * schedule.cycle_length
            if not math.isfinite(steps):
                raise ValueError(f"cycles={cycles} makes more steps than a float can count")
            self.total = int(round(steps))
        else:
            self.total = check.integer("epochs", epochs, low=1) * self.per_epoch
        if self.total < 1:
            raise ValueError("the run has no steps; raise cycles or epochs")

        # The loop's position: all a checkpoint needs besides the network and velocity.
        self.rng = np.random.default_rng(seed)
        self.order = np.empty(n, dtype=np.int64)
        self.epoch_start: Optional[int] = None  # no permutation drawn yet
        self.step = 0
        self.history = History()
        self.batch_loss_sum, self.batch_count = 0.0, 0
        self.elapsed_before = 0.0

        # A plan no larger than the data: batch_size may exceed n.
        self.plan = net._plan(min(self.batch_size, n))
        self.velocity = np.zeros_like(net.flat_params) if self.momentum > 0 else None
        # Preallocated copy of the state, refreshed every SNAPSHOT_EVERY steps without allocating.
        self.snapshot = net.state_dict()
        self.snapshot_step = 0
        self.interrupted = False
        self.started = time.perf_counter()
        self._signature: Optional[dict] = None

    # -- identity of the run ----------------------------------------------------------------

    def signature(self) -> dict:
        """What must match for a checkpoint to continue this run (JSON-ready)."""
        if self._signature is None:
            schedule = [type(self.schedule).__name__, self.schedule.state_dict()]
            self._signature = json.loads(json.dumps(dict(
                n=self.n, batch_size=self.batch_size, lam=self.lam, momentum=self.momentum,
                schedule=schedule, total=self.total, seed=self.seed,
                eval_every=self.eval_every, eval_train=self.eval_train,
                data=_checksum(self.src, self.y, self.val_src, self.y_val, self.shift,
                               self.scale))))
        return self._signature

    # -- checks and recovery ----------------------------------------------------------------

    def diverge(self, step: int, lr: float, loss: float, reason: str) -> None:
        """Restore the last good snapshot and raise DivergenceError."""
        self.net.load_state_dict(self.snapshot)
        error = DivergenceError(step, lr, loss, self.snapshot_step, reason)
        error.history = self.history
        raise error

    def diverge_in_step(self, lr: float, loss: float) -> None:
        """Diverge at the first step that made something non-finite. A non-finite forward
        pass (NaN loss) updates nothing, so weights found non-finite then were made by the
        step before, whose fused update does not scan them: the step reported is the same
        whether or not ``check_state`` ran after that step (checkpoint_every cannot move it)."""
        step = self.step
        reason = "the batch loss, a batch-norm statistic or the updated parameters"
        if math.isnan(loss) and step > 0 and not _ops.all_finite(self.net.flat_params):
            step, reason = step - 1, "the updated parameters"
        self.diverge(step, self.schedule.lr(step), loss, reason)

    def check_state(self, lr: float, loss: float) -> None:
        """Diverge if a weight or a running statistic is not finite. Called before anything
        keeps the state. Every step checks its loss and the small parameters; a weight that
        is not finite makes the next loss NaN, and this catches the rest before a snapshot."""
        if not _ops.all_finite(self.net.flat_params):
            self.diverge(self.step - 1, lr, loss, "the updated parameters")
        for value in self.net.running_stats.values():
            if not _ops.all_finite(value):
                self.diverge(self.step - 1, lr, loss, "the batch-norm running statistics")

    def take_snapshot(self, lr: float, loss: float) -> None:
        self.check_state(lr, loss)
        _copy_state(self.net, self.snapshot)
        self.snapshot_step = self.step

    # -- history ----------------------------------------------------------------------------

    def record(self, lr: float, loss: float) -> None:
        """Append one history entry at the current step."""
        self.check_state(lr, loss)
        net, history, step = self.net, self.history, self.step
        history.step.append(step)
        history.epoch.append(step / self.per_epoch)
        history.lr.append(self.schedule.lr(step - 1) if step else self.schedule.lr(0))
        history.batch_loss.append(self.batch_loss_sum / self.batch_count
                                  if self.batch_count else math.nan)
        self.batch_loss_sum, self.batch_count = 0.0, 0
        with np.errstate(over="ignore"):  # an overflow is caught below as divergence
            penalty = self.lam * net.l2_penalty()
        for prefix, data in (("train", (self.src, self.y) if self.eval_train else None),
                             ("val", None if self.val_src is None else (self.val_src, self.y_val))):
            if data is None:
                continue
            total_loss, correct = net._evaluate(data[0], data[1], self.shift, self.scale)
            m = data[0].shape[0]
            if not math.isfinite(total_loss / m + penalty):
                self.diverge(step - 1, lr, loss, f"the {prefix} evaluation loss")
            getattr(history, f"{prefix}_loss").append(total_loss / m)
            getattr(history, f"{prefix}_cost").append(total_loss / m + penalty)
            getattr(history, f"{prefix}_accuracy").append(correct / m)
        history.wall_time.append(time.perf_counter() - self.started)

    # -- checkpoints ------------------------------------------------------------------------

    def to_checkpoint(self) -> TrainingCheckpoint:
        return TrainingCheckpoint(
            network=self.net.to_arrays(),
            velocity=None if self.velocity is None else self.velocity.copy(),
            step=self.step, epoch_start=self.epoch_start, order=self.order,
            rng_state=self.rng.bit_generator.state, history=self.history.as_dict(),
            batch_loss_sum=self.batch_loss_sum, batch_count=self.batch_count,
            elapsed=time.perf_counter() - self.started, run=self.signature())

    def save(self, path: str, lr: float, loss: float) -> None:
        self.check_state(lr, loss)
        save_checkpoint(path, self.to_checkpoint())

    def restore(self, ckpt: TrainingCheckpoint, source: str) -> None:
        """Continue from ``ckpt`` after checking it belongs to this run and network."""
        def fail(message: str) -> CheckpointError:
            return CheckpointError(f"{source}: {message}")

        try:  # checks the stored sizes, shapes and finiteness
            saved = Network.from_arrays(ckpt.network, source)
        except (TypeError, ValueError) as exc:
            raise fail(f"holds no valid network: {exc}") from exc
        ignore = ("seed", "init")  # only shape the initial values, which the checkpoint replaces
        a = {k: v for k, v in saved.config().items() if k not in ignore}
        b = {k: v for k, v in self.net.config().items() if k not in ignore}
        if a != b:
            raise fail(f"holds a network configured {a}, not {b}")
        stored, current = ckpt.run, self.signature()
        differ = [f"{k} (checkpoint {stored.get(k)!r}, this call {current.get(k)!r})"
                  for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
        if differ:
            raise fail("belongs to a different run; differs in " + "; ".join(differ))

        per_epoch, step, start = self.per_epoch, ckpt.step, ckpt.epoch_start
        if step > self.total or start % per_epoch or not 0 <= step - start <= per_epoch:
            raise fail(f"step {step} / epoch start {start} do not fit a run of {self.total} "
                       f"steps with {per_epoch} per epoch")
        order = ckpt.order
        if (order.shape != (self.n,) or order.min() < 0 or order.max() >= self.n
                or not (np.bincount(order, minlength=self.n) == 1).all()):
            raise fail(f"order is not a permutation of the {self.n} training rows")
        if (ckpt.velocity is None) != (self.velocity is None):
            raise fail("velocity present without momentum, or missing with it")
        if ckpt.velocity is not None:
            v = ckpt.velocity
            if v.shape != self.velocity.shape or not np.isfinite(v).all():
                raise fail(f"velocity must be finite with shape {self.velocity.shape}")
        try:
            history = History.from_dict(ckpt.history)
        except ValueError as exc:
            raise fail(str(exc)) from None
        points = len(history.step)
        for name, series in history.as_dict().items():
            expected = points
            if (name.startswith("train_") and not self.eval_train) or \
                    (name.startswith("val_") and self.val_src is None):
                expected = 0
            if len(series) != expected:
                raise fail(f"history {name} has {len(series)} entries, expected {expected}")
        if history.step and (history.step[0] < 1 or history.step[-1] > step
                             or any(b <= a for a, b in zip(history.step, history.step[1:]))):
            raise fail(f"history steps must increase from 1 to at most {step}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = ckpt.rng_state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise fail(f"rng_state is not a PCG64 state: {exc!r}") from None

        self.net.load_state_dict(saved.state_dict())
        if self.velocity is not None:
            np.copyto(self.velocity, ckpt.velocity)
        self.order[:] = order
        self.step, self.epoch_start, self.rng, self.history = step, start, rng, history
        self.batch_loss_sum, self.batch_count = ckpt.batch_loss_sum, ckpt.batch_count
        self.elapsed_before = ckpt.elapsed
        _copy_state(self.net, self.snapshot)
        self.snapshot_step = step

    # -- the loop ---------------------------------------------------------------------------

    def train(self, progress: Optional[bool], path: Optional[str],
              every: Optional[int]) -> History:
        net, plan, schedule = self.net, self.plan, self.schedule
        n, batch_size, per_epoch, total = self.n, self.batch_size, self.per_epoch, self.total
        lam, momentum, eval_every = self.lam, self.momentum, self.eval_every
        first_stats = net.batch_norm and net.bn_init == "first_batch"
        self.plan.set_velocity(self.velocity)
        self.started = time.perf_counter() - self.elapsed_before
        bar = tqdm(total=total, initial=self.step,
                   disable=None if progress is None else not progress, unit="step",
                   desc="training", dynamic_ncols=True, leave=False)
        try:
            with _deferred_interrupt(self):
                while self.step < total:
                    if self.epoch_start is None or self.step - self.epoch_start == per_epoch:
                        self.order[:] = self.rng.permutation(n)
                        self.epoch_start = self.step
                    plan.set_data(self.src, self.y, self.order, self.shift, self.scale)
                    for b in range(self.step - self.epoch_start, per_epoch):
                        start = b * batch_size
                        rows = min(batch_size, n - start)
                        lr = schedule.lr(self.step)
                        first = first_stats and not net._stats_seen
                        loss, _, finite = plan.train_step(start, rows, lr, lam, momentum, first)
                        net._stats_seen = net._stats_seen or net.batch_norm
                        loss /= rows
                        if not (finite and math.isfinite(loss)):
                            self.diverge_in_step(lr, loss)
                        self.batch_loss_sum += loss
                        self.batch_count += 1
                        self.step += 1
                        step = self.step
                        if step % SNAPSHOT_EVERY == 0:
                            self.take_snapshot(lr, loss)
                        if step % 50 == 0:
                            bar.update(50)
                            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                        at_epoch_end = b == per_epoch - 1
                        if step == total or at_epoch_end or (eval_every and step % eval_every == 0):
                            self.record(lr, loss)
                            plan.set_data(self.src, self.y, self.order, self.shift, self.scale)
                        if path is not None and (
                                step == total or self.interrupted
                                or (step % every == 0 if every else at_epoch_end)):
                            self.save(path, lr, loss)
                        if self.interrupted:
                            where = f"; checkpoint written to {path}" if path else ""
                            raise KeyboardInterrupt(f"training stopped at step {step}{where}")
                        if step == total:
                            break
        finally:
            bar.update(self.step - bar.n)
            bar.close()
        return self.history

"""Training: mini-batch steps with a learning-rate schedule, L2 regularisation, an optional
optimizer and a history; divergence caught and rolled back; checkpoints that resume bit for bit.

Each step runs in one compiled call with the GIL released: gather + forward + backward +
update for fit's built-in SGD (plain or momentum), or gather + forward + backward into the
gradient buffer for an optimizer from ``cbn.optim``, whose ``step`` then updates the flat
parameter vector. This module validates the run (``RunSpec``), shuffles, schedules, records,
guards against divergence (``DivergenceGuard``) and saves (``cbn.checkpoint``).

Reproducibility (details in docs/reliability.md): with the same network seed, ``seed``,
data, arguments and dtype, and the same BLAS library and BLAS thread count at the start, two
runs give bit-identical parameters and histories (``wall_time`` aside), whether or not they
were interrupted and resumed from a checkpoint, whatever threads the governor chose
(``cbn.threads``), and whether or not other networks train in other threads at the same
time. A different BLAS thread count, BLAS build or CPU can change the rounding of matrix
products and so the last bits of every result.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from typing import Iterator, Optional, Union

import numpy as np

from . import _validate as check
from . import tune
from ._files import PathLike, user_path
from .checkpoint import (CheckpointError, TrainingCheckpoint, check_resume, load_checkpoint,
                         save_checkpoint)
from .augment import Augment
from .divergence import SNAPSHOT_EVERY, DivergenceError, DivergenceGuard
from .history import History
from .network import Network
from .runspec import RunSpec, steps_per_epoch
from .schedule import ConstantLR, CyclicLR
from .threads import TeamGovernor, computing

__all__ = ["fit", "History", "DivergenceError", "RunSpec", "DivergenceGuard", "steps_per_epoch",
           "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``fit`` when Ctrl-C (or SIGTERM, where the program routes it to
    ``signal.default_int_handler``) stopped a run at a step boundary.

    A ``KeyboardInterrupt``, so code that catches that still does. It carries what a program
    needs to keep the work: ``net`` (the network, holding the progress made), ``step`` and
    ``total`` (steps made and planned), ``history`` (recorded so far), ``checkpoint`` (the path
    ``fit`` wrote, or None) and ``state``, the run's ``TrainingCheckpoint`` at that step, which
    ``cbn.checkpoint.save_checkpoint(path, state)`` writes where ``checkpoint=`` was not set."""

    def __init__(self, message: str, *, net: Network, step: int, total: int,
                 history: History, checkpoint: Optional[str],
                 state: TrainingCheckpoint) -> None:
        super().__init__(message)
        self.net, self.step, self.total, self.history = net, step, total, history
        self.checkpoint, self.state = checkpoint, state


def fit(net: Network, X: np.ndarray, y: np.ndarray, *, X_val: Optional[np.ndarray] = None,
        y_val: Optional[np.ndarray] = None, lam: float, batch_size: int,
        schedule: Union[CyclicLR, ConstantLR, float], cycles: Optional[float] = None,
        epochs: Optional[int] = None, seed: Optional[int] = None,
        progress: Optional[bool] = None,
        normalization=None, momentum: float = 0.0, eval_every: Optional[int] = None,
        eval_train: bool = False, checkpoint: Optional[PathLike] = None,
        checkpoint_every: Optional[int] = None,
        resume: Union[None, bool, PathLike] = None, optimizer=None,
        augment: Optional[Augment] = None, mixup=None, ema=None, loss: str = "cross_entropy",
        label_smoothing: float = 0.0, sample_weight=None, callbacks=None,
        verbose: int = 0) -> History:
    """Train ``net`` in place with mini-batch SGD (or ``optimizer``); return the history.

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
    lam : L2 strength; the cost is the mean loss + lam * sum of squared weights.
    batch_size : rows per mini-batch; each epoch visits a fresh random permutation.
    schedule : ``CyclicLR``, ``ConstantLR``, a float (constant learning rate), or any schedule
        of ``cbn.schedule`` (an object with ``lr(step)`` and ``state_dict()``).
    cycles : run ``cycles * schedule.cycle_length`` steps (CyclicLR only), or
    epochs : run ``epochs`` passes over the data. Give exactly one.
    seed : seeds the shuffling; with the network's seed it fixes the run.
    progress : show a tqdm progress bar; None (default) shows it only when stderr is a
        terminal, so redirected logs get no control characters.
    momentum : heavy-ball momentum of the built-in SGD (0 = plain SGD as in the course):
        v = momentum v - lr g, theta += v.
    optimizer : None (the built-in SGD with ``momentum``), or an optimizer of ``cbn.optim``
        (``SGD``, ``Adam``, ``AdamW``; any object with ``bind``, ``step``, ``state_dict``,
        ``load_state_dict`` and ``fused_momentum``). It gets the schedule's rate every step
        and the gradient with the L2 term ``2 lam W`` included; SGD without Nesterov runs the
        built-in fused update, the others a gradient step then ``optimizer.step``.
    eval_every : also record the history every this many steps (default: once per epoch,
        and at the end).
    eval_train : also measure loss/cost/accuracy on the whole training set at each point,
        as the course's curves do (``cbn.lab.experiment`` turns it on). Off by default: it is a
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

    augment : a ``cbn.Augment`` (random flips, translations, jitter of each training image,
        drawn inside the compiled gather), or None. Rows are images of
        ``augment.image_shape``, (3, 32, 32) by default for 3,072 features. Validation and
        evaluation never augment.
    mixup : a ``cbn.Mixup`` (or its alpha, a number > 0; None or 0: none): each training
        batch mixed with itself reversed, lam x_i + (1 - lam) x_{n-1-i}, and trained against
        the targets mixed alike, lam drawn from Beta(alpha, alpha) per step (timm's batch
        mode; see ``cbn.Mixup``). Cross-entropy only; evaluations never mix.
    ema : a ``cbn.EMA`` (or its decay, in (0, 1); None or 0: none): a moving average of the
        parameters and running statistics over the steps (timm's ModelEmaV2), which the
        network takes when the run ends, its batch-norm statistics then optionally
        recomputed (PreciseBN, ``EMA.precise_bn``); the history's last point scores it.
    loss : "cross_entropy" (y: integer labels) or "mse" (y, y_val: float targets (n, K));
        see cbn.losses.
    label_smoothing : cross-entropy against (1 - eps) onehot + eps / K, as PyTorch's.
    sample_weight : (n,) weights >= 0 of the training rows: each mini-batch's loss is its
        weighted mean (batch-norm statistics stay unweighted). The recorded evaluation
        losses (train and val) are unweighted means; ``batch_loss`` is the weighted one.

    callbacks : objects of ``cbn.callbacks`` (``EarlyStopping``, ``ModelCheckpoint``,
        ``EpochLogger``, or any ``Callback``), called at each epoch's end (and each step's,
        for those with ``per_step``); see cbn.callbacks for the protocol.
    verbose : 1 prints one line per epoch on stderr (epoch, step, loss, train and validation
        accuracy where recorded, learning rate, seconds), on a terminal and in a log file
        alike; 0 (default) prints nothing. The progress bar, where shown, carries the last
        validation accuracy.

    Rows of X are examples; the features of an image are in channel-first order (all red
    values, then green, then blue, each row by row: CIFAR-10's own layout). Images
    flattened channel-last (height x width x channel, as PIL gives them) must be converted
    first (``cbn.inputs.to_channel_first``).

    Ctrl-C (in the main thread) lets the current step finish, writes a checkpoint if
    ``checkpoint`` is set, then raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``
    carrying the network, the step and the checkpoint state); the network keeps the progress
    made. SIGTERM does the same where its handler is ``signal.default_int_handler`` (as
    ``cbn train`` and the examples set it). A second signal stops at once (the last
    checkpoint written stays valid).

    Dropout layers of ``net`` draw their masks from (``seed``, step, layer), and ``augment``
    its draws from (``seed``, step, sample), or from a random key kept in the checkpoint when
    ``seed`` is None.

    Raises ``DivergenceError`` if the loss, the parameters, the batch-norm running statistics
    or an evaluation loss become NaN or inf; the network then holds the last good state.

    Holds ``net``'s lock for the whole run: other threads' calls on the same network (a
    ``predict_proba``, another ``fit``) wait until it ends.

    Determinism: the same network seed, ``seed``, data, arguments, dtype, BLAS library and
    BLAS thread count give bit-identical parameters and history (``wall_time`` aside),
    interrupted and resumed or not. The BLAS thread count, the BLAS build, the CPU, the dtype
    and the numpy version can change the last bits; see docs/reliability.md.
    """
    # Held for the whole run: the network's plans are re-pointed at every step. A computation
    # too (``threads.computing``): it starts on the process's own thread count.
    with net.exclusive() if isinstance(net, Network) else contextlib.nullcontext(), computing():
        spec = RunSpec(net, X, y, X_val, y_val, lam, batch_size, schedule, cycles, epochs, seed,
                       normalization, momentum, eval_every, eval_train, optimizer,
                       augment, loss, label_smoothing, sample_weight, mixup, ema)
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
        run = _Run(spec, _callbacks(callbacks, verbose))
        if spec.normalization is not None:
            net.normalization = spec.normalization  # kept, so predictions take raw images too
        if source is not None:
            run.restore(load_checkpoint(source), source)
        with tune.held():  # thresholds measured after the plan was built wait for the next run
            return run.train(progress, checkpoint, checkpoint_every)


def _callbacks(callbacks, verbose) -> list:
    """The run's callbacks, checked, with ``EpochLines`` for ``verbose=1``."""
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1, got {verbose!r}")
    out = list(callbacks) if callbacks is not None else []
    for c in out:
        if not all(callable(getattr(c, m, None)) for m in ("on_train_begin", "on_epoch_end",
                                                            "on_step_end", "on_train_end")):
            raise TypeError(f"callbacks must be cbn.callbacks.Callback objects, got {c!r}")
    if verbose:
        from .callbacks import EpochLines
        out.append(EpochLines())
    return out


def _path(name: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path, got {value!r}")
    path = user_path(value)
    if not path or os.path.isdir(path):
        raise ValueError(f"{name} must be a file path, got {value!r}")
    return path


# The signals a run defers to its next step boundary: those routed to Python's
# KeyboardInterrupt (SIGINT by default; SIGTERM where a program asks for it).
DEFERRED_SIGNALS = (signal.SIGINT,) + ((signal.SIGTERM,) if hasattr(signal, "SIGTERM") else ())


@contextlib.contextmanager
def _deferred_interrupt(run: "_Run") -> Iterator[None]:
    """Turn the first Ctrl-C (or SIGTERM routed to ``default_int_handler``) into
    ``run.interrupted = True`` so the loop stops at a step boundary (the state is then
    consistent and can be saved); a second one raises at once. Only in the main thread and
    only over Python's default handler, never over a custom one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if run.interrupted:
            raise KeyboardInterrupt
        run.interrupted = True

    previous = {}
    for signum in DEFERRED_SIGNALS:
        if signal.getsignal(signum) is signal.default_int_handler:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class _Run:
    """One call of ``fit``: the loop's position (step, epoch permutation, random state,
    history, accumulators, optimizer state), which is what a checkpoint holds, and the loop."""

    def __init__(self, spec: RunSpec, callbacks: Optional[list] = None) -> None:
        self.spec = spec
        self.callbacks = callbacks or []
        self.stop_training = False
        self.epoch_loss_sum, self.epoch_count = 0.0, 0
        net = self.net = spec.net
        self.rng = np.random.default_rng(spec.seed)
        self.order = np.empty(spec.n, dtype=np.int64)
        self.epoch_start: Optional[int] = None  # no permutation drawn yet
        self.step = 0
        self.history = History()
        self.batch_loss_sum, self.batch_count = 0.0, 0
        self.elapsed_before = 0.0
        # Dropout masks and augmentation: keyed by the run's seed, else by a random key the
        # checkpoint keeps.
        self.dropout_key = 0
        if self.keyed:
            self.dropout_key = (spec.seed if spec.seed is not None
                                else np.random.SeedSequence().entropy % 2**64)

        # A plan no larger than the data: batch_size may exceed n.
        self.plan = net.plan(min(spec.batch_size, spec.n))
        self.velocity = np.zeros_like(net.flat_params) if spec.fused_momentum else None
        self.average = None if spec.ema is None else spec.ema.averager(net)
        self.guard = DivergenceGuard(net)
        self.interrupted = False
        self.started = time.perf_counter()

    @property
    def total(self) -> int:
        """The steps the run plans."""
        return self.spec.total

    @property
    def recorded(self) -> tuple:
        """The keys of the logs each epoch's end gives the callbacks."""
        keys = ("epoch", "epochs", "step", "total", "loss", "lr", "seconds")
        if self.spec.eval_train:
            keys += ("train_loss", "train_cost", "train_accuracy")
        if self.spec.val_src is not None:
            keys += ("val_loss", "val_cost", "val_accuracy")
        return keys

    def epoch_logs(self, lr: float) -> dict:
        """What ``on_epoch_end`` gets: see cbn.callbacks."""
        h = self.history
        logs = dict(epoch=int(round(self.step / self.spec.per_epoch)),
                    epochs=self.spec.total / self.spec.per_epoch, step=self.step,
                    total=self.spec.total,
                    loss=self.epoch_loss_sum / self.epoch_count if self.epoch_count else math.nan,
                    lr=lr, seconds=h.wall_time[-1])
        for key in self.recorded[7:]:
            logs[key] = getattr(h, key)[-1]
        self.epoch_loss_sum, self.epoch_count = 0.0, 0
        return logs

    @property
    def keyed(self) -> bool:
        """True if the run draws random masks or augmentations from its key."""
        return (self.net.has_dropout or self.spec.augment is not None
                or self.spec.mixup is not None)

    # -- history ----------------------------------------------------------------------------

    def record(self, lr: float, loss: float) -> None:
        """Append one history entry at the current step."""
        spec, net, history, step = self.spec, self.net, self.history, self.step
        self.guard.check(step, lr, loss, history)
        history.step.append(step)
        history.epoch.append(step / spec.per_epoch)
        history.lr.append(spec.schedule.lr(step - 1) if step else spec.schedule.lr(0))
        history.batch_loss.append(self.batch_loss_sum / self.batch_count
                                  if self.batch_count else math.nan)
        self.batch_loss_sum, self.batch_count = 0.0, 0
        with np.errstate(over="ignore"):  # an overflow is caught below as divergence
            penalty = spec.lam * net.l2_penalty()
        for prefix, data in (("train", (spec.src, spec.eval_targets) if spec.eval_train
                                  else None),
                             ("val", None if spec.val_src is None
                              else (spec.val_src, spec.y_val))):
            if data is None:
                continue
            total_loss, correct = net.evaluate_prepared(
                data[0], data[1], spec.shift, spec.scale, name="X" if prefix == "train" else "X_val")
            m = data[0].shape[0]
            if not math.isfinite(total_loss / m + penalty):
                self.guard.diverge(step - 1, lr, loss, f"the {prefix} evaluation loss", history)
            getattr(history, f"{prefix}_loss").append(total_loss / m)
            getattr(history, f"{prefix}_cost").append(total_loss / m + penalty)
            getattr(history, f"{prefix}_accuracy").append(correct / m)
        history.wall_time.append(time.perf_counter() - self.started)

    # -- checkpoints ------------------------------------------------------------------------

    def to_checkpoint(self) -> TrainingCheckpoint:
        optimizer = self.spec.optimizer
        return TrainingCheckpoint(
            network=self.net.to_arrays(),
            velocity=None if self.velocity is None else self.velocity.copy(),
            step=self.step, epoch_start=self.epoch_start, order=self.order,
            rng_state=self.rng.bit_generator.state, history=self.history.as_dict(),
            batch_loss_sum=self.batch_loss_sum, batch_count=self.batch_count,
            elapsed=time.perf_counter() - self.started, run=self.spec.signature(),
            optimizer=None if optimizer is None else optimizer.state_dict(),
            dropout_key=self.dropout_key,
            ema=None if self.average is None else self.average.state.copy())

    def save(self, path: str, lr: float, loss: float) -> None:
        self.guard.check(self.step, lr, loss, self.history)
        save_checkpoint(path, self.to_checkpoint())

    def restore(self, ckpt: TrainingCheckpoint, source: str) -> None:
        """Continue from ``ckpt`` after checking it belongs to this run and network."""
        saved, history = check_resume(ckpt, self.spec, source)
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = ckpt.rng_state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise CheckpointError(f"{source}: rng_state is not a PCG64 state: {exc!r}") from None
        if self.spec.optimizer is not None:
            try:
                self.spec.optimizer.load_state_dict(ckpt.optimizer)
            except (TypeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{source}: optimizer state does not fit: {exc}") from None

        self.net.load_state_dict(saved.state_dict())
        if self.velocity is not None:
            np.copyto(self.velocity, ckpt.velocity)
        if self.average is not None:
            self.average.load(ckpt.ema, lambda message: CheckpointError(f"{source}: {message}"))
        self.order[:] = ckpt.order
        self.step, self.epoch_start, self.rng, self.history = (ckpt.step, ckpt.epoch_start,
                                                               rng, history)
        self.batch_loss_sum, self.batch_count = ckpt.batch_loss_sum, ckpt.batch_count
        self.elapsed_before = ckpt.elapsed
        if self.keyed:
            self.dropout_key = ckpt.dropout_key
        self.guard.keep_unchecked(self.step)

    def take_average(self) -> None:
        """The network takes the moving average (``cbn.EMA``), its batch-norm statistics
        recomputed over the first batches of the epoch's order with ``precise_bn``."""
        spec = self.spec
        self.average.apply()
        batches = spec.ema.precise_bn
        if batches:
            rows = min(spec.batch_size, spec.n)
            self.net.precise_bn_prepared(spec.src, spec.shift, spec.scale, self.order, rows,
                                         min(batches, spec.n // rows))

    # -- the loop ---------------------------------------------------------------------------

    def train(self, progress: Optional[bool], path: Optional[str],
              every: Optional[int]) -> History:
        from tqdm.auto import tqdm  # here: importing cbn loads no progress-bar machinery

        spec, net, plan, guard = self.spec, self.net, self.plan, self.guard
        schedule, optimizer, fused, mixup = spec.schedule, spec.optimizer, spec.fused, spec.mixup
        average = self.average
        n, batch_size, per_epoch, total = spec.n, spec.batch_size, spec.per_epoch, spec.total
        lam, momentum, eval_every = spec.lam, spec.fused_momentum, spec.eval_every
        theta, grad, dropout = net.flat_params, net.flat_grad, net.has_dropout
        plan.set_velocity(self.velocity)
        plan.set_dropout(self.dropout_key, 0)
        plan.set_augment(None if spec.augment is None else
                         spec.augment.compiled(net.input_dim, self.dropout_key))
        self.started = time.perf_counter() - self.elapsed_before
        # Switching threads must not change the run: the governor first checks that its
        # products at the full and the last batch size give the same bits on one thread.
        governor = TeamGovernor(probe=net.probe(
            plan, spec.src, spec.y, spec.shift, spec.scale,
            (min(batch_size, n), n % batch_size if batch_size < n else 0), True, lam, dropout))
        bar = tqdm(total=total, initial=self.step,
                   disable=None if progress is None else not progress, unit="step",
                   desc="training", dynamic_ncols=True, leave=False)
        callbacks = self.callbacks
        per_step = [c for c in callbacks if getattr(c, "per_step", False)]
        postfix = {}
        for c in callbacks:
            c.on_train_begin(self)
        try:
            with _deferred_interrupt(self):
                while self.step < total:
                    if self.epoch_start is None or self.step - self.epoch_start == per_epoch:
                        self.order[:] = self.rng.permutation(n)
                        self.epoch_start = self.step
                    plan.set_data(spec.src, spec.y, self.order, spec.shift, spec.scale)
                    spec.targets.apply(plan)
                    for b in range(self.step - self.epoch_start, per_epoch):
                        start = b * batch_size
                        rows = min(batch_size, n - start)
                        lr = schedule.lr(self.step)
                        first = net.copies_batch_stats
                        if mixup is not None:
                            plan.set_mix(mixup.share(self.dropout_key, self.step))
                        governor.begin()
                        if fused:
                            loss, _, finite = plan.train_step(start, rows, lr, lam, momentum,
                                                              first, dropout, self.step)
                        else:
                            loss, _, finite = plan.grad_step(start, rows, lam, first, dropout,
                                                             self.step)
                            if finite:
                                optimizer.step(theta, grad, lr)
                        governor.end(rows == batch_size)
                        if not plan.input_finite:  # this step changed nothing
                            raise check.non_finite_input(
                                "X", spec.src, self.order[start:start + rows],
                                f"; training stopped at step {self.step}, the network keeps "
                                "the steps before")
                        net.batch_stats_updated()
                        loss /= rows
                        if not (finite and math.isfinite(loss)):
                            guard.diverge_in_step(self.step, schedule, loss,
                                                  plan.batch_stats_finite, self.history)
                        if average is not None:
                            average.update(self.step + 1)
                        self.batch_loss_sum += loss
                        self.batch_count += 1
                        self.epoch_loss_sum += loss
                        self.epoch_count += 1
                        self.step += 1
                        step = self.step
                        if step % SNAPSHOT_EVERY == 0:
                            guard.keep(step, lr, loss, self.history)
                        if step % 50 == 0:
                            bar.update(50)
                            postfix["loss"] = f"{loss:.3f}"
                            bar.set_postfix(postfix, refresh=False)
                        at_epoch_end = b == per_epoch - 1
                        if step == total and average is not None:
                            self.take_average()
                        if step == total or at_epoch_end or (eval_every and step % eval_every == 0):
                            governor.rest()  # the history's evaluations on the run's count
                            self.record(lr, loss)
                            plan.set_data(spec.src, spec.y, self.order, spec.shift, spec.scale)
                            spec.targets.apply(plan)
                            if self.history.val_accuracy:
                                postfix["val"] = f"{100 * self.history.val_accuracy[-1]:.1f}%"
                                bar.set_postfix(postfix, refresh=False)
                        if at_epoch_end and callbacks:
                            logs = self.epoch_logs(lr)
                            for c in callbacks:
                                c.on_epoch_end(self, logs)
                        for c in per_step:
                            c.on_step_end(self, step, loss)
                        if self.stop_training and step < total:
                            if not self.history.step or self.history.step[-1] != step:
                                self.record(lr, loss)  # the history ends where the run does
                        if path is not None and (
                                step == total or self.interrupted or self.stop_training
                                or (step % every == 0 if every else at_epoch_end)):
                            self.save(path, lr, loss)
                        if self.interrupted:
                            where = f"; checkpoint written to {path}" if path else ""
                            raise TrainingInterrupted(
                                f"training stopped at step {step}{where}", net=net, step=step,
                                total=total, history=self.history, checkpoint=path,
                                state=self.to_checkpoint())
                        if step == total or self.stop_training:
                            break
                    if self.stop_training:
                        break
            for c in callbacks:
                c.on_train_end(self)
        finally:
            governor.close()
            plan.set_augment(None)  # the cached plan serves later calls too
            plan.set_mix(None)
            bar.update(self.step - bar.n)
            bar.close()
        return self.history

"""The content of a training checkpoint: everything ``fit`` needs to continue a run bit for
bit, and the checks that it continues this run. Its file is read and written by
:mod:`cbn.serialization` (the one module that reads and writes cbn's network files and
checkpoints), through the guarded reader of :mod:`cbn.npz` and the atomic writer of
:mod:`cbn._files`.

No pickle anywhere: every value is a numeric array or a JSON string in a 0-d unicode array.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from . import _validate as check
from ._files import PathLike
from .npz import (CheckpointError, member_array, member_float, member_int, member_json,
                  member_text, member_version, verified, with_checksum)
from .serialization import (CHECKPOINT_FORMAT, CHECKPOINT_MEMBERS, CHECKPOINT_VERSION,
                            HISTORY_PREFIX, OPTIMIZER_PREFIX, read_network_file, write_arrays)

if TYPE_CHECKING:
    from .history import History
    from .network import Network

HISTORY_INT_FIELDS = ("step",)


@dataclass
class TrainingCheckpoint:
    """Everything ``cbn.fit`` needs to continue a run exactly where it stopped.

    network : the arrays of ``Network.to_arrays()`` (``network_config`` JSON, parameters,
        running statistics, ``stats_seen``), so ``Network.load(checkpoint_path)`` also works.
    velocity : momentum buffer shaped like ``Network.flat_params``; None without momentum.
    step : updates made so far.
    epoch_start : the step at which the current epoch began. The epoch's permutation is
        ``order``; the next mini-batch is batch number ``step - epoch_start`` of it.
    order : int64 (n,), the current epoch's permutation of the training rows.
    rng_state : ``numpy.random.Generator.bit_generator.state`` right after ``order`` was drawn.
    history : ``History.as_dict()`` so far.
    batch_loss_sum, batch_count : batch losses accumulated since the last history entry.
    elapsed : seconds of training before this checkpoint (``wall_time`` continues from it).
    run : what defines the run (fit's arguments and a data checksum); resuming with anything
        else is refused.
    optimizer : the optimizer's ``state_dict()`` (None for fit's built-in SGD): its arrays
        are stored as ``optimizer_<key>``, everything else as one JSON string.
    dropout_key : the seed of the run's dropout masks and augmentation (0 without either).
    ema : the moving average of ``cbn.EMA`` (the flat parameters, then each running
        statistic), or None without one (stored only with one).

    On disk (``to_arrays``) a SHA-256 of everything is added as ``checksum``, so a file
    changed other than by ``save_checkpoint`` is refused when read.
    """

    network: Dict[str, np.ndarray]
    velocity: Optional[np.ndarray]
    step: int
    epoch_start: int
    order: np.ndarray
    rng_state: dict
    history: Dict[str, list]
    batch_loss_sum: float
    batch_count: int
    elapsed: float
    run: dict = field(default_factory=dict)
    optimizer: Optional[dict] = None
    dropout_key: int = 0
    ema: Optional[np.ndarray] = None

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """The checkpoint as named arrays (what ``save_checkpoint`` writes)."""
        arrays = dict(self.network)
        arrays.update(
            checkpoint_format=np.array(CHECKPOINT_FORMAT),
            checkpoint_version=np.array(CHECKPOINT_VERSION, dtype=np.int64),
            velocity=(np.zeros(0) if self.velocity is None else self.velocity),
            step=np.array(self.step, dtype=np.int64),
            epoch_start=np.array(self.epoch_start, dtype=np.int64),
            order=self.order,
            rng_state=np.array(json.dumps(self.rng_state)),
            batch_loss_sum=np.array(self.batch_loss_sum, dtype=np.float64),
            batch_count=np.array(self.batch_count, dtype=np.int64),
            elapsed=np.array(self.elapsed, dtype=np.float64),
            run=np.array(json.dumps(self.run)),
            dropout_key=np.array(self.dropout_key, dtype=np.uint64),
        )
        if self.ema is not None:
            arrays["ema"] = self.ema
        optimizer = self.optimizer or {}
        arrays["optimizer"] = np.array(json.dumps(
            None if self.optimizer is None else
            {k: v for k, v in optimizer.items() if not isinstance(v, np.ndarray)},
            default=lambda value: value.item()))  # numpy scalars
        for key, value in optimizer.items():
            if isinstance(value, np.ndarray):
                arrays[OPTIMIZER_PREFIX + key] = value
        for name, values in self.history.items():
            dtype = np.int64 if name in HISTORY_INT_FIELDS else np.float64
            arrays[HISTORY_PREFIX + name] = np.array(values, dtype=dtype).reshape(-1)
        return with_checksum(arrays)

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], source: str = "arrays") -> "TrainingCheckpoint":
        """Parse and check the layout of ``to_arrays``' output; raise ``CheckpointError``
        naming ``source`` for anything missing or malformed. (Whether the checkpoint fits a
        given run and network is checked by ``fit``.)"""
        def fail(message: str) -> CheckpointError:
            return CheckpointError(f"{source}: {message}")

        fmt = member_text(arrays, "checkpoint_format", fail)
        if fmt != CHECKPOINT_FORMAT:
            raise fail(f"not a cbn training checkpoint (checkpoint_format={fmt!r})")
        version = member_version(arrays, "checkpoint_version", CHECKPOINT_VERSION, fail)
        arrays = verified(arrays, fail)
        if "network_config" not in arrays:
            raise fail("holds no network (no 'network_config')")
        reserved = set(CHECKPOINT_MEMBERS)
        network = {k: v for k, v in arrays.items() if k not in reserved
                   and not k.startswith((HISTORY_PREFIX, OPTIMIZER_PREFIX))}
        optimizer, dropout_key = None, 0
        if version >= 2:
            optimizer = member_json(arrays, "optimizer", fail)
            if optimizer is not None and not isinstance(optimizer, dict):
                raise fail("optimizer must be a JSON object or null")
            if optimizer is not None:
                optimizer.update({k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items()
                                  if k.startswith(OPTIMIZER_PREFIX)})
                _check_optimizer_state(optimizer, fail)
            dropout_key = member_int(arrays, "dropout_key", fail)
            if not 0 <= dropout_key < 1 << 64:
                raise fail(f"dropout_key must be in [0, 2**64), got {dropout_key}")
        velocity = member_array(arrays, "velocity", fail)
        if velocity.ndim != 1 or velocity.dtype.kind != "f":
            raise fail(f"velocity must be a 1-D float array, got {velocity.dtype} {velocity.shape}")
        ema = member_array(arrays, "ema", fail) if "ema" in arrays else None
        if ema is not None and (ema.ndim != 1 or ema.dtype.kind != "f"):
            raise fail(f"ema must be a 1-D float array, got {ema.dtype} {ema.shape}")
        order = member_array(arrays, "order", fail)
        if order.ndim != 1 or order.dtype != np.int64:
            raise fail(f"order must be a 1-D int64 array, got {order.dtype} {order.shape}")
        step = member_int(arrays, "step", fail)
        epoch_start = member_int(arrays, "epoch_start", fail)
        if not 0 <= epoch_start <= step:
            raise fail(f"need 0 <= epoch_start <= step, got epoch_start={epoch_start}, step={step}")
        batch_count = member_int(arrays, "batch_count", fail)
        if batch_count < 0:
            raise fail(f"batch_count must be >= 0, got {batch_count}")
        rng_state = member_json(arrays, "rng_state", fail)
        run = member_json(arrays, "run", fail)
        if not isinstance(rng_state, dict) or not isinstance(run, dict):
            raise fail("rng_state and run must be JSON objects")
        if not _is_pcg64_state(rng_state):
            raise fail(f"rng_state is not a PCG64 state as numpy gives it: "
                       f"{check.short_repr(rng_state)}")
        history: Dict[str, List] = {}
        for key in sorted(k for k in arrays if k.startswith(HISTORY_PREFIX)):
            values, name = arrays[key], key[len(HISTORY_PREFIX):]
            kinds = "i" if name in HISTORY_INT_FIELDS else "f"
            if values.ndim != 1 or values.dtype.kind not in kinds or not np.isfinite(values).all():
                raise fail(f"{key} must be 1-D and finite, of kind {kinds!r}, got "
                           f"{values.dtype} {values.shape}")
            # accuracies are fractions; losses, costs, rates, epochs and times are >= 0
            high = 1.0 if name.endswith("_accuracy") else math.inf
            if values.size and not (values.min() >= 0 and values.max() <= high):
                raise fail(f"{key} must be in [0, {high}], got values in "
                           f"[{values.min():g}, {values.max():g}]")
            history[name] = values.tolist()
        scalars = {name: member_float(arrays, name, fail) for name in ("batch_loss_sum", "elapsed")}
        for name, value in scalars.items():  # a sum of losses, seconds
            if value < 0:
                raise fail(f"{name} must be >= 0, got {value:g}")
        return cls(network=network, velocity=None if velocity.size == 0 else velocity,
                   step=step, epoch_start=epoch_start, order=order, rng_state=rng_state,
                   history=history, batch_loss_sum=scalars["batch_loss_sum"],
                   batch_count=batch_count, elapsed=scalars["elapsed"], run=run,
                   optimizer=optimizer, dropout_key=dropout_key, ema=ema)


def _is_pcg64_state(state: dict) -> bool:
    """Whether ``state`` is ``numpy.random.PCG64().state`` as it gives it: a 128-bit state,
    an odd 128-bit increment, a flag and a 32-bit buffered value (numpy's setter accepts an
    even increment, another stream than any run drew)."""
    def uint(value, bits: int) -> bool:
        return type(value) is int and 0 <= value < 1 << bits

    inner = state.get("state")
    return (set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
            and state["bit_generator"] == "PCG64" and isinstance(inner, dict)
            and set(inner) == {"state", "inc"} and uint(inner["state"], 128)
            and uint(inner["inc"], 128) and inner["inc"] % 2 == 1
            and uint(state["has_uint32"], 1) and uint(state["uinteger"], 32))


def _check_optimizer_state(state: dict, fail) -> None:
    """The state of an optimizer of ``cbn.optim`` checked as its ``load_state_dict`` would
    (another optimizer's state is left to that optimizer when the run resumes)."""
    from .optim import OPTIMIZERS, check_state
    if state.get("name") not in {cls.__name__ for cls in OPTIMIZERS.values()}:
        return
    try:
        check_state(state, lambda key: OPTIMIZER_PREFIX + key)
    except ValueError as exc:
        raise fail(f"optimizer state: {exc}") from None


def check_resume(ckpt: TrainingCheckpoint, run, source: str) -> Tuple["Network", "History"]:
    """Check that ``ckpt`` continues ``run`` (a ``cbn.train.RunSpec``): same network
    configuration, same arguments and data, a position inside the run, a permutation of the
    training rows, a history of the right series, a momentum buffer exactly when the run uses
    one. Returns the stored network and history; raises ``CheckpointError`` naming ``source``."""
    from .history import History
    from .network import Network

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{source}: {message}")

    try:  # checks the stored sizes, shapes and finiteness
        saved = Network.from_arrays(ckpt.network, source)
    except (TypeError, ValueError) as exc:
        raise fail(f"holds no valid network: {exc}") from exc
    ignore = ("seed", "init")  # only shape the initial values, which the checkpoint replaces
    a = {k: v for k, v in saved.config().items() if k not in ignore}
    b = {k: v for k, v in run.net.config().items() if k not in ignore}
    if a != b:
        raise fail(f"holds a network configured {a}, not {b}")
    stored, current = ckpt.run, run.signature()
    differ = [f"{k} (checkpoint {stored.get(k)!r}, this call {current.get(k)!r})"
              for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if differ:
        raise fail("belongs to a different run; differs in " + "; ".join(differ))

    per_epoch, step, start = run.per_epoch, ckpt.step, ckpt.epoch_start
    if step > run.total or start % per_epoch or not 0 <= step - start <= per_epoch:
        raise fail(f"step {step} / epoch start {start} do not fit a run of {run.total} "
                   f"steps with {per_epoch} per epoch")
    order = ckpt.order
    if (order.shape != (run.n,) or order.min() < 0 or order.max() >= run.n
            or not (np.bincount(order, minlength=run.n) == 1).all()):
        raise fail(f"order is not a permutation of the {run.n} training rows")
    if (ckpt.velocity is None) != (not run.fused_momentum):
        raise fail("velocity present without momentum, or missing with it")
    if ckpt.velocity is not None:
        v, shape = ckpt.velocity, run.net.flat_params.shape
        if v.shape != shape or not np.isfinite(v).all():
            raise fail(f"velocity must be finite with shape {shape}")
    if (ckpt.ema is None) != (run.ema is None):
        raise fail("a moving average (ema) present without cbn.EMA, or missing with it")
    if (ckpt.optimizer is None) != (run.optimizer is None):
        raise fail("optimizer state present without an optimizer, or missing with one")
    try:
        history = History.from_dict(ckpt.history)
    except ValueError as exc:
        raise fail(str(exc)) from None
    points = len(history.step)
    for name, series in history.as_dict().items():
        expected = points
        if (name.startswith("train_") and not run.eval_train) or \
                (name.startswith("val_") and run.val_src is None):
            expected = 0
        if len(series) != expected:
            raise fail(f"history {name} has {len(series)} entries, expected {expected}")
    if history.step and (history.step[0] < 1 or history.step[-1] > step
                         or any(b <= a for a, b in zip(history.step, history.step[1:]))):
        raise fail(f"history steps must increase from 1 to at most {step}")
    since = step - (history.step[-1] if history.step else 0)  # batches since the last entry
    if ckpt.batch_count != since:
        raise fail(f"batch_count {ckpt.batch_count} does not fit step {step} and the history "
                   f"(expected {since})")
    return saved, history


def save_checkpoint(path: PathLike, checkpoint: TrainingCheckpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (``cbn.serialization.write_arrays``)."""
    write_arrays(path, checkpoint.to_arrays())


def load_checkpoint(path: PathLike) -> TrainingCheckpoint:
    """Read a checkpoint written by ``fit(..., checkpoint=path)``; ``CheckpointError`` if the
    file is not a complete, well-formed one. Every member's size is checked against the
    stored network before any array is read (``cbn.serialization.read_network_file``)."""
    from .network import Network
    path = os.fspath(path)
    _, arrays = read_network_file(path, Network)
    return TrainingCheckpoint.from_arrays(arrays, source=path)



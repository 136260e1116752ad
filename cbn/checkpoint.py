"""Files that must survive crashes and hostile edits: atomic ``.npz`` writes, guarded reads, and
the layout of a training checkpoint (everything ``fit`` needs to continue a run bit for bit).

No pickle anywhere: every value is a numeric array or a JSON string in a 0-d unicode array.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from .history import History
    from .network import Network

PathLike = Union[str, os.PathLike]

CHECKPOINT_FORMAT = "cbn.fit checkpoint"
CHECKPOINT_VERSION = 2   # 2 added the optimizer state and the dropout key; 1 is still read
HISTORY_PREFIX = "history_"
OPTIMIZER_PREFIX = "optimizer_"
HISTORY_INT_FIELDS = ("step",)


class CheckpointError(ValueError):
    """A saved network or checkpoint is truncated, corrupt, incomplete, or belongs to another
    run or network. The message starts with the file's path."""


def atomic_savez(path: PathLike, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` (exactly that name, no suffix
    added), atomically: the data goes to a temporary file in the same folder, is flushed to
    disk, and replaces ``path`` in one ``os.replace``. A crash at any moment leaves either the
    previous file or the new one, never a mix. (A crash mid-write can leave a stray
    ``.<name>.*.tmp`` file beside it, which is safe to delete.)"""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle.

    Raises FileNotFoundError / PermissionError / IsADirectoryError as the OS reports them, and
    ``CheckpointError`` for anything else wrong with the file (truncated, not a zip, a plain
    ``.npy``, object arrays, corrupt entries)."""
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: expected an .npz archive, got a single array")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (FileNotFoundError, PermissionError, IsADirectoryError, CheckpointError):
        raise
    except Exception as exc:  # untrusted bytes: whatever the zip/npy readers raise means corrupt
        raise CheckpointError(f"{path}: not a readable .npz file (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc


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

        fmt = _text(arrays, "checkpoint_format", fail)
        if fmt != CHECKPOINT_FORMAT:
            raise fail(f"not a cbn training checkpoint (checkpoint_format={fmt!r})")
        arrays = verified(arrays, fail)
        version = _whole(arrays, "checkpoint_version", fail)
        if version not in (1, CHECKPOINT_VERSION):
            raise fail(f"checkpoint version {version} is not supported (this cbn reads "
                       f"versions 1 to {CHECKPOINT_VERSION})")
        if "network_config" not in arrays:
            raise fail("holds no network (no 'network_config')")
        reserved = {"checkpoint_format", "checkpoint_version", "velocity", "step", "epoch_start",
                    "order", "rng_state", "batch_loss_sum", "batch_count", "elapsed", "run",
                    "optimizer", "dropout_key"}
        network = {k: v for k, v in arrays.items() if k not in reserved
                   and not k.startswith((HISTORY_PREFIX, OPTIMIZER_PREFIX))}
        optimizer, dropout_key = None, 0
        if version >= 2:
            optimizer = _json(arrays, "optimizer", fail)
            if optimizer is not None and not isinstance(optimizer, dict):
                raise fail("optimizer must be a JSON object or null")
            if optimizer is not None:
                optimizer.update({k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items()
                                  if k.startswith(OPTIMIZER_PREFIX)})
            dropout_key = _whole(arrays, "dropout_key", fail)
        velocity = _array(arrays, "velocity", fail)
        if velocity.ndim != 1 or velocity.dtype.kind != "f":
            raise fail(f"velocity must be a 1-D float array, got {velocity.dtype} {velocity.shape}")
        order = _array(arrays, "order", fail)
        if order.ndim != 1 or order.dtype != np.int64:
            raise fail(f"order must be a 1-D int64 array, got {order.dtype} {order.shape}")
        step = _whole(arrays, "step", fail)
        epoch_start = _whole(arrays, "epoch_start", fail)
        if not 0 <= epoch_start <= step:
            raise fail(f"need 0 <= epoch_start <= step, got epoch_start={epoch_start}, step={step}")
        batch_count = _whole(arrays, "batch_count", fail)
        if batch_count < 0:
            raise fail(f"batch_count must be >= 0, got {batch_count}")
        rng_state = _json(arrays, "rng_state", fail)
        run = _json(arrays, "run", fail)
        if not isinstance(rng_state, dict) or not isinstance(run, dict):
            raise fail("rng_state and run must be JSON objects")
        history: Dict[str, List] = {}
        for key in sorted(k for k in arrays if k.startswith(HISTORY_PREFIX)):
            values = arrays[key]
            kinds = "i" if key[len(HISTORY_PREFIX):] in HISTORY_INT_FIELDS else "f"
            if values.ndim != 1 or values.dtype.kind not in kinds or not np.isfinite(values).all():
                raise fail(f"{key} must be 1-D and finite, of kind {kinds!r}, got "
                           f"{values.dtype} {values.shape}")
            history[key[len(HISTORY_PREFIX):]] = values.tolist()
        return cls(network=network, velocity=None if velocity.size == 0 else velocity,
                   step=step, epoch_start=epoch_start, order=order, rng_state=rng_state,
                   history=history, batch_loss_sum=_real(arrays, "batch_loss_sum", fail),
                   batch_count=batch_count, elapsed=_real(arrays, "elapsed", fail), run=run,
                   optimizer=optimizer, dropout_key=dropout_key)


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
    return saved, history


def save_checkpoint(path: PathLike, checkpoint: TrainingCheckpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (see ``atomic_savez``)."""
    atomic_savez(path, **checkpoint.to_arrays())


def load_checkpoint(path: PathLike) -> TrainingCheckpoint:
    """Read a checkpoint written by ``fit(..., checkpoint=path)``; ``CheckpointError`` if the
    file is not a complete, well-formed one."""
    return TrainingCheckpoint.from_arrays(read_npz(path), source=os.fspath(path))


def with_checksum(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``arrays`` plus their ``checksum`` (what ``verified`` checks on reading)."""
    return dict(arrays, checksum=np.array(_digest(arrays)))


def verified(arrays: Dict[str, np.ndarray], fail, required: bool = True) -> Dict[str, np.ndarray]:
    """``arrays`` without their ``checksum``, after checking it; ``fail(message)`` makes the
    error. Without ``required``, a file that has no checksum (saved before cbn wrote one) passes."""
    if "checksum" not in arrays and not required:
        return dict(arrays)
    checksum = _text(arrays, "checksum", fail)
    arrays = {k: v for k, v in arrays.items() if k != "checksum"}
    if checksum != _digest(arrays):
        raise fail("content does not match its checksum: the file was modified or corrupted")
    return arrays


def _digest(arrays: Dict[str, np.ndarray]) -> str:
    """SHA-256 of every array's name, dtype, shape and bytes: a checkpoint changed by
    anything but ``save_checkpoint`` (a bit flip inside the zip's own CRC, an edit) is refused."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- typed access to untrusted arrays -------------------------------------------------------

def _array(arrays, key, fail) -> np.ndarray:
    if key not in arrays:
        raise fail(f"missing '{key}'")
    return np.asarray(arrays[key])


def _text(arrays, key, fail) -> str:
    value = _array(arrays, key, fail)
    if value.shape != () or value.dtype.kind != "U":
        raise fail(f"'{key}' must be a 0-d string array, got {value.dtype} {value.shape}")
    return str(value)


def _json(arrays, key, fail):
    try:
        return json.loads(_text(arrays, key, fail))
    except json.JSONDecodeError as exc:
        raise fail(f"'{key}' is not valid JSON: {exc}") from None


def _whole(arrays, key, fail) -> int:
    value = _array(arrays, key, fail)
    if value.shape != () or value.dtype.kind not in "iu":
        raise fail(f"'{key}' must be a 0-d integer array, got {value.dtype} {value.shape}")
    return int(value)


def _real(arrays, key, fail) -> float:
    value = _array(arrays, key, fail)
    if value.shape != () or value.dtype.kind not in "fiu" or not math.isfinite(float(value)):
        raise fail(f"'{key}' must be a finite 0-d number, got {value.dtype} {value!r:.80}")
    return float(value)

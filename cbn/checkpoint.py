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
from typing import Dict, List, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

CHECKPOINT_FORMAT = "cbn.fit checkpoint"
CHECKPOINT_VERSION = 1
HISTORY_PREFIX = "history_"
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
        )
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
        if version != CHECKPOINT_VERSION:
            raise fail(f"checkpoint version {version} is not supported (this cbn reads "
                       f"version {CHECKPOINT_VERSION})")
        if "network_config" not in arrays:
            raise fail("holds no network (no 'network_config')")
        reserved = {"checkpoint_format", "checkpoint_version", "velocity", "step", "epoch_start",
                    "order", "rng_state", "batch_loss_sum", "batch_count", "elapsed", "run"}
        network = {k: v for k, v in arrays.items()
                   if k not in reserved and not k.startswith(HISTORY_PREFIX)}
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
                   batch_count=batch_count, elapsed=_real(arrays, "elapsed", fail), run=run)


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

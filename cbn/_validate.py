"""Argument checks shared by the public API.

The compiled kernels run with bounds checks off, so everything that reaches them passes
through here first. Each check raises ``TypeError`` (wrong kind of thing) or
``ValueError`` (right kind, wrong value) with a message naming the argument.
"""
from __future__ import annotations

import collections.abc
import math
import numbers
import os
import reprlib
from typing import Callable, Optional, Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
SOURCE_DTYPES = (np.dtype(np.uint8),) + FLOAT_DTYPES


def float_dtype(dtype) -> np.dtype:
    """Return ``dtype`` as float32 or float64, or raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _plain(name: str, a) -> None:
    """Refuse non-arrays, and masked arrays, whose mask the kernels would ignore."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; drop the masked rows or fill them first")


def matrix(name: str, a, *, cols: Optional[int] = None, dtypes=FLOAT_DTYPES,
           min_rows: int = 1, finite: bool = True) -> np.ndarray:
    """Check a 2-D, C-contiguous array of one of ``dtypes`` with ``cols`` columns."""
    _plain(name, a)
    if a.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {a.dtype}")
    if a.ndim != 2:
        hint = ""
        if a.ndim == 1:  # one example (or one feature) given flat
            hint = (f"; for one example of {a.shape[0]} features pass "
                    f"{name}.reshape(1, -1)" if cols is None or a.shape[0] == cols else
                    f"; for {a.shape[0]} examples of one feature pass {name}.reshape(-1, 1)"
                    if cols == 1 else "")
        elif a.ndim == 4:  # images as (n, C, H, W) or (n, H, W, C)
            hint = (f"; flatten images channel-first: {name}.reshape(len({name}), -1) for "
                    "(n, C, H, W), cbn.inputs.to_channel_first for (n, H, W, C)")
        raise ValueError(f"{name} must be 2-D (samples as rows), got shape {a.shape}{hint}")
    if cols is not None and a.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass numpy.ascontiguousarray({name})")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def vector(name: str, a, *, size: Optional[int] = None, dtypes=FLOAT_DTYPES,
           finite: bool = True, writeable: bool = False) -> np.ndarray:
    """Check a 1-D, C-contiguous array of one of ``dtypes`` and length ``size``."""
    _plain(name, a)
    if a.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if size is not None and a.shape[0] != size:
        raise ValueError(f"{name} must have length {size}, got {a.shape[0]}")
    if a.shape[0] < 1:
        raise ValueError(f"{name} must not be empty")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def labels(name: str, y, n: int, num_classes: int) -> np.ndarray:
    """Check integer class labels of length ``n`` in [0, num_classes); return them as int64."""
    _plain(name, y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but the data has {n} rows")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}), got values in "
                         f"[{y.min()}, {y.max()}]")
    return np.ascontiguousarray(y, dtype=np.int64)


def integer(name: str, v, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """Check a whole number (not bool) within [low, high]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def real(name: str, v, *, low: Optional[float] = None, high: Optional[float] = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """Check a finite real number (not bool) within the given bounds."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        v = float(v)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name} must be finite, got {v}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def widths(name: str, hidden: Sequence[int]) -> tuple:
    """Check a sequence of positive layer widths."""
    # Mappings and sets iterate, but not as an ordered list of widths.
    if (isinstance(hidden, (str, bytes, collections.abc.Mapping, collections.abc.Set))
            or not hasattr(hidden, "__iter__")):
        raise TypeError(f"{name} must be a sequence of positive integers, got {hidden!r}")
    out = tuple(integer(f"{name}[{i}]", h, low=1) for i, h in enumerate(hidden))
    return out


def choice(name: str, v, options: Sequence[str]) -> str:
    """Check that ``v`` is one of ``options``."""
    if v not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {v!r}")
    return v


def real_array(name: str, a, *, keep_dtype: bool = False) -> np.ndarray:
    """``a`` as a float64 array (in its own integer or float dtype with ``keep_dtype``),
    refusing None, non-numeric, boolean and complex values (``np.asarray(a, float)`` would
    silently drop imaginary parts) and what numpy cannot make one array of."""
    if a is None:
        raise TypeError(f"{name} is missing")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; fill it first")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError, OverflowError) as exc:  # ragged nesting, odd objects
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr if keep_dtype else arr.astype(np.float64)


def running_stat(name: str, value: np.ndarray) -> None:
    """Refuse a negative running variance: evaluation would take the square root of
    ``var + eps``. (Non-finite values are refused with every other parameter.)"""
    if name.startswith("running_var") and (np.asarray(value) < 0).any():
        raise ValueError(f"{name} is a variance and must be >= 0, got a minimum of "
                         f"{np.min(value):g}")


def file_version(value, newest: int, fail: Callable[[str], Exception], *,
                 field: str = "format_version", oldest: int = 1) -> int:
    """The format version a file declares (``value``, its field ``field``), checked against
    the versions this cbn reads, ``oldest`` to ``newest``: the one check of every file kind
    cbn reads. ``fail(message)`` makes the error, naming the file."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{field} must be an integer, got {short_repr(value, 60)}")
    if value > newest:
        error = fail(f"written by a newer cbn ({field} {short_repr(value, 40)}; this cbn reads "
                     f"up to {newest}); update cbn to read it")
        error.from_newer_cbn = True  # a caller that would redo such a file must keep it instead
        raise error
    if value < oldest:
        raise fail(f"{field} {short_repr(value, 40)} is not one cbn writes (this cbn reads "
                   f"{oldest} to {newest})")
    return value


def from_newer_cbn(error: BaseException) -> bool:
    """Whether ``error`` is :func:`file_version`'s refusal of a file a newer cbn wrote."""
    return getattr(error, "from_newer_cbn", False) is True


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 40, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


def short_repr(value, limit: int = 120) -> str:
    """A repr of bounded size and cost, for error messages about untrusted values (a file's
    content may be deeply nested, share structure or hold huge numbers)."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # e.g. an int with more digits than Python will print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def non_finite_input(name: str, src: np.ndarray, rows: np.ndarray, where: str = "") -> ValueError:
    """The error for a gathered batch (``rows`` of ``src``) that held a NaN or infinite value:
    float inputs are checked as the kernels read them, not by a pass before (see
    ``_gather.pxi``). Names the first such row, or says the value overflowed once
    standardised."""
    for r in rows:
        if not np.isfinite(src[r]).all():
            return ValueError(f"{name} contains NaN or infinite values (row {int(r)}){where}")
    return ValueError(f"{name} overflows once standardised (a row of {name}[{int(rows[0])}:]"
                      f"){where}: a value lies too many standard deviations from the mean "
                      "for the network's dtype")


def finite_result(what: str, values: np.ndarray) -> None:
    """Refuse to return NaN or inf: finite inputs can still overflow (values too large for
    the dtype), and parameters written by hand may hold NaN. The kernels also turn a
    non-finite batch-norm statistic or evaluation map, which batch norm would otherwise
    hide behind finite outputs, into a NaN result that this refuses."""
    if not np.isfinite(values).all():
        raise ValueError(f"{what} came out NaN or infinite: a value overflowed (inputs, "
                         "normalization or parameters too large for the network's dtype, "
                         "e.g. a batch-norm variance) or a parameter is not finite")


def env_switch(name: str) -> bool:
    """An on/off environment variable that is on unless set to 0, "off", "false" or "no"."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "off", "false", "no")


def dropout_seed(seed) -> Optional[int]:
    """A dropout mask key (0 <= seed < 2**64), or None (no dropout)."""
    return None if seed is None else integer("dropout_seed", seed, low=0, high=2**64 - 1)

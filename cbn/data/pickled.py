"""The CIFAR "python version" files as data: each one a pickled dict with bytes keys, read
through :mod:`cbn._unpickle` and never the unrestricted loader.

Unpickling runs whatever code a pickle names, so the restricted reader admits plain
containers and numeric arrays only, checks every array's state before numpy sees it, and
bounds memory and work by the file's size; everything else is refused with a
:class:`DataError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import _unpickle as restricted
from .._validate import short_repr
from .errors import DataError, UnsafePickleError


def read_dict(path: Path) -> dict:
    """The dict a CIFAR pickle file holds, with every str key as bytes (files written by
    Python 3 may have str keys; the official ones have bytes keys).

    Raises
    ------
    DataError
        The file is missing, unsafe (:class:`UnsafePickleError`), corrupt or not a dict.
    """
    try:
        with open(path, "rb") as f:
            content = restricted.read_plain_data(f, os.fstat(f.fileno()).st_size)
    except restricted.UnsafeGlobal as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except restricted.RefusedPickle as exc:
        raise DataError(f"{path}: refused: {exc}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except MemoryError:
        raise DataError(f"{path}: too large to load into memory") from None
    except Exception as exc:  # untrusted input: any failure inside the unpickler means corrupt
        raise DataError(
            f"{path}: not a readable CIFAR pickle (truncated or corrupt?): "
            f"{type(exc).__name__}: {short_repr(str(exc))}"
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a dict, got {type(content).__name__}")
    return {k.encode("latin-1", "backslashreplace") if isinstance(k, str) else k: v
            for k, v in content.items()}


def require(content: dict, keys: tuple[bytes, ...], path: Path) -> None:
    """Refuse ``content`` unless it has every one of ``keys``."""
    missing = [key.decode() for key in keys if key not in content]
    if missing:
        found = sorted(short_repr(key) for key in list(content)[:10])
        raise DataError(f"{path}: missing key(s) {missing}; found {found}")


def images(content: dict, n_features: int, path: Path) -> np.ndarray:
    """``content[b"data"]`` checked as uint8 rows of ``n_features`` values, C-contiguous."""
    value = content[b"data"]
    if not isinstance(value, np.ndarray):
        raise DataError(f"{path}: b'data' must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise DataError(f"{path}: b'data' must have dtype uint8, got {value.dtype}")
    if value.ndim != 2 or value.shape[0] < 1 or value.shape[1] != n_features:
        raise DataError(
            f"{path}: b'data' must have shape (n, {n_features}) with n >= 1, got {value.shape}"
        )
    return np.ascontiguousarray(value)


def labels(content: dict, key: bytes, n: int, n_classes: int, path: Path) -> np.ndarray:
    """``content[key]`` checked as ``n`` class indices in 0..n_classes-1, int64 (n,).

    A flat list (or tuple) of Python ints or a 1-D integer array, checked before numpy
    converts it, so nested or shared structures never expand."""
    value = content[key]
    if isinstance(value, np.ndarray):
        found = value
    elif type(value) in (list, tuple) and all(type(v) is int for v in value):
        try:
            found = np.array(value, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{path}: {key!r} holds integers beyond int64") from None
    else:
        kinds = sorted({type(v).__name__ for v in value}) if type(value) in (list, tuple) else []
        raise DataError(f"{path}: {key!r} must be a flat list of integers, got a "
                        f"{type(value).__name__}" + (f" of {', '.join(kinds)}" if kinds else ""))
    if found.ndim != 1 or found.dtype == np.bool_ or not np.issubdtype(found.dtype, np.integer):
        raise DataError(
            f"{path}: {key!r} must be a flat list of integers, got {found.ndim}-D {found.dtype}"
        )
    if found.shape[0] != n:
        raise DataError(f"{path}: {found.shape[0]} labels for {n} images")
    bad = (found < 0) | (found >= n_classes)
    if bad.any():
        raise DataError(
            f"{path}: labels must be in 0..{n_classes - 1}, "
            f"found {found[bad][0]} at row {int(np.argmax(bad))}"
        )
    return found.astype(np.int64)


def names(content: dict, key: bytes, count: int, path: Path) -> tuple[str, ...]:
    """``content[key]`` checked as a list of ``count`` class names (bytes or str)."""
    value = content.get(key)
    if not isinstance(value, list) or len(value) != count:
        raise DataError(
            f"{path}: {key!r} must be a list of {count} names, got {short_repr(value)}"
        )
    if not all(isinstance(name, (bytes, str)) for name in value):
        raise DataError(f"{path}: {key!r} must hold strings, got {short_repr(value)}")
    return tuple(
        name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in value
    )

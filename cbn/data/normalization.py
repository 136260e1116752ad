"""Per-feature standardisation fitted on a training split, in bounded memory."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _validate as check

# Rows per chunk when a float64 temporary is needed: ~8 MiB of float64 at 3072 features.
_CHUNK_ELEMENTS = 1 << 20
# A feature whose std (raw pixel units) is below this is treated as constant. Pixel data with
# any variation over n <= 10**6 rows has std >= ~1e-3, so this only catches true constants
# (and their float rounding residue).
_ZERO_STD = 1e-8
_EXACT_UINT8_ROWS = 256  # 256 * 255^2 < 2^24: float32 sums of these rows stay exact


def _chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _uint8_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std of uint8 ``images`` (n, d), both float64 (d,).

    Exact, and cheaper than float64 passes: sums of 256 rows of x and x^2 (at most
    256 * 255^2 < 2^24) are exact in float32, so the float64 totals are exact integers.
    """
    n, d = images.shape
    total, squares = np.zeros(d), np.zeros(d)
    block = np.empty((min(n, _EXACT_UINT8_ROWS), d), dtype=np.float32)
    for start in range(0, n, _EXACT_UINT8_ROWS):
        rows = images[start:start + _EXACT_UINT8_ROWS]
        part = block[:len(rows)]
        np.copyto(part, rows)
        total += part.sum(axis=0)
        np.multiply(part, part, out=part)
        squares += part.sum(axis=0)
    # n * squares - total^2 is an exact integer in float64 while n < 370,000 rows.
    spread = np.maximum(n * squares - total * total, 0.0)
    return total / n, np.sqrt(spread) / n


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view, so shared data is not changed by accident (``array`` is untouched)."""
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Normalization:
    """Per-feature standardisation ``(x - mean) / std`` fitted on the training split.

    Attributes
    ----------
    mean : ndarray of float64, shape (d,)
        Per-feature mean in raw pixel units (0..255).
    std : ndarray of float64, shape (d,)
        Per-feature population standard deviation (ddof=0) in raw pixel units, all > 0.
        Features that are constant in the fitted data (std < 1e-8) get ``std = 1``, so they
        map to 0 instead of dividing by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean, std = check.real_array("mean", self.mean), check.real_array("std", self.std)
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(
                f"mean and std must be 1-D of equal shape, got {mean.shape} and {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("mean must be finite and std finite and > 0")
        object.__setattr__(self, "mean", readonly(np.ascontiguousarray(mean)))
        object.__setattr__(self, "std", readonly(np.ascontiguousarray(std)))

    @classmethod
    def fit(cls, images: np.ndarray) -> Normalization:
        """Fit mean and std per feature of ``images``.

        Parameters
        ----------
        images : ndarray, shape (n, d), n >= 1
            Raw values of any integer or float dtype.

        Returns
        -------
        Normalization

        Two passes over row chunks in float64 (mean, then squared deviations), so no float
        copy of the whole array is ever made: fitting 45,000 x 3072 needs ~8 MiB of scratch.
        """
        images = check.real_array("images", images, keep_dtype=True)
        if images.ndim != 2 or images.shape[0] < 1:
            raise ValueError(f"images must be 2-D (n, d) with n >= 1, got shape {images.shape}")
        n, d = images.shape
        if images.dtype == np.uint8:
            mean, std = _uint8_moments(images)
            std[std < _ZERO_STD] = 1.0
            return cls(mean=mean, std=std)
        total = np.zeros(d, dtype=np.float64)
        for rows in _chunks(n, d):
            total += images[rows].sum(axis=0, dtype=np.float64)
        mean = total / n
        squares = np.zeros(d, dtype=np.float64)
        for rows in _chunks(n, d):
            deviation = images[rows].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", deviation, deviation)
        std = np.sqrt(squares / n)
        std[std < _ZERO_STD] = 1.0
        return cls(mean=mean, std=std)

    def apply(self, images: np.ndarray, dtype=np.float32, *,
              out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``(images - mean) / std``, computed in float64 chunk by chunk, then rounded
        once to ``dtype``.

        Parameters
        ----------
        images : ndarray, shape (n, d)
            Raw pixel values (uint8 or any real dtype), d = len(mean).
        dtype : float32 (default) or float64
        out : ndarray, optional
            A preallocated C-contiguous (n, d) array of ``dtype`` to write into (e.g. one
            mini-batch buffer reused every step).

        Returns
        -------
        ndarray of ``dtype``, shape (n, d), C-contiguous (``out`` when given)
        """
        dtype = check.float_dtype(dtype)
        images = check.real_array("images", images, keep_dtype=True)
        if images.ndim != 2 or images.shape[1] != self.mean.shape[0]:
            raise ValueError(f"images must be (n, {self.mean.shape[0]}), got shape {images.shape}")
        if out is None:
            out = np.empty(images.shape, dtype=dtype)
        elif out.shape != images.shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {images.shape} {dtype} array, "
                f"got {out.shape} {out.dtype} (C-contiguous={out.flags.c_contiguous})"
            )
        n, d = images.shape
        for rows in _chunks(n, d):
            out[rows] = (images[rows] - self.mean) / self.std
            if not np.isfinite(out[rows]).all():
                raise ValueError(f"images hold NaN or inf, or values too large for {dtype}")
        return out

    def __repr__(self) -> str:
        return f"Normalization(d={self.mean.shape[0]})"

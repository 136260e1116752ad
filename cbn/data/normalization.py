"""Per-feature standardisation fitted on a training split, in bounded memory."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _validate as check

# Rows per chunk when a float64 temporary is needed: ~8 MiB of float64 at 3072 features.
_CHUNK_ELEMENTS = 1 << 20
# A feature is constant when its std is at most CONSTANT_EPS * eps * |mean| (eps of
# float64). The two passes of ``fit`` give an exactly constant feature std 0 and its value
# as mean; for any other, rounding the mean (|error| <= eps/2 |mean|) adds in quadrature to
# the std it finds: std_found^2 = std^2 + error^2. Above CONSTANT_EPS eps |mean| that is
# at most 1/(8 CONSTANT_EPS^2) of it (under 1 %); below, the std may be rounding alone.
CONSTANT_EPS = 4
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


def _float_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std of real ``images`` (n, d), both float64 (d,).

    Two passes over row chunks in float64, so no float copy of the whole array is ever
    made. The first sums x - x[0] (an exactly constant feature sums to 0: its mean is its
    value, its std 0) and finds each feature's largest |x - x[0]|; the second sums squared
    deviations from the mean scaled by a power of two near 1 / that largest, so that they
    neither overflow nor underflow at any scale of the data, and scales the std back."""
    n, d = images.shape
    first = images[0].astype(np.float64)
    total, reach = np.zeros(d), np.zeros(d)
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite total is refused below
        for rows in _chunks(n, d):
            deviation = images[rows].astype(np.float64)
            deviation -= first
            total += deviation.sum(axis=0)
            np.maximum(reach, deviation.max(axis=0), out=reach)
            np.maximum(reach, -deviation.min(axis=0), out=reach)
    if not (np.isfinite(total).all() and np.isfinite(reach).all()):
        if not all(np.isfinite(images[rows]).all() for rows in _chunks(n, d)):
            raise ValueError("images hold NaN or inf")
        raise ValueError("a feature's values lie too far apart to standardise: their "
                         "spread overflows float64")
    mean = first + total / n
    # |x - mean| <= 2 reach; 2^-e with reach = f 2^e, 0.5 <= f < 1, scales that to below 4.
    # Powers of two scale exactly; the clip keeps the factor a normal float64.
    factor = np.ldexp(1.0, -np.clip(np.frexp(reach)[1], -1000, 1000))
    squares = np.zeros(d)
    for rows in _chunks(n, d):
        deviation = images[rows].astype(np.float64)
        deviation -= mean
        deviation *= factor
        squares += np.einsum("ij,ij->j", deviation, deviation)
    return mean, np.sqrt(squares / n) / factor


def _constant(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Which features are constant as far as float64 can tell (see CONSTANT_EPS)."""
    return std <= CONSTANT_EPS * np.finfo(np.float64).eps * np.maximum(
        np.abs(mean), np.finfo(np.float64).tiny)


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
        Features that are constant in the fitted data get ``std = 1``, so they map to 0
        instead of dividing by zero: "constant" is judged relative to the feature's own
        scale, std <= CONSTANT_EPS * eps(float64) * |mean| (any scale of data, 1e-9 or
        1e9, keeps its real spread). An exactly constant feature maps to exactly 0.
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

        Two passes over row chunks in float64 (``_float_moments``), so no float copy of the
        whole array is ever made: fitting 45,000 x 3072 needs ~8 MiB of scratch. uint8
        moments are exact.
        """
        images = check.real_array("images", images, keep_dtype=True)
        if images.ndim != 2 or images.shape[0] < 1:
            raise ValueError(f"images must be 2-D (n, d) with n >= 1, got shape {images.shape}")
        if images.dtype == np.uint8:
            mean, std = _uint8_moments(images)
        else:
            mean, std = _float_moments(images)
        std[_constant(mean, std)] = 1.0
        return cls(mean=mean, std=std)

    def scale(self, dtype) -> np.ndarray:
        """``1 / std`` in ``dtype`` (what the compiled gather multiplies by), a new array.
        ValueError, naming the feature, if a std is too small (1/std overflows ``dtype``)
        or too large (1/std falls below ``dtype``'s normal numbers, losing its precision)."""
        dtype = check.float_dtype(dtype)
        with np.errstate(over="ignore", under="ignore"):  # both refused below
            scale = (1.0 / self.std).astype(dtype)
        info = np.finfo(dtype)
        for bad, problem in ((~np.isfinite(scale), "too small for {}: 1/std overflows it"),
                             (scale < info.tiny, "too large for {}: 1/std underflows it")):
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(f"std {self.std[j]:.3g} of feature {j} is "
                                 + problem.format(dtype.name))
        return scale

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
        with np.errstate(over="ignore", invalid="ignore"):  # refused below
            for rows in _chunks(n, d):
                out[rows] = (images[rows] - self.mean) / self.std
                if not np.isfinite(out[rows]).all():
                    if not np.isfinite(images[rows]).all():
                        raise ValueError("images hold NaN or inf")
                    raise ValueError(f"images overflow {dtype} once standardised: values too "
                                     "far from the mean for the std")
        return out

    def __repr__(self) -> str:
        return f"Normalization(d={self.mean.shape[0]})"

"""The input transform a network owns, and the checks that catch images in the wrong units.

A network trained with ``fit(..., normalization=...)`` keeps that per-feature standardisation
``(x - mean) / std`` and applies it to raw images (uint8, or floats in pixel units) whenever
it predicts or evaluates, so a caller never has to pass it again. Without such checks, raw
pixels fed to a network trained on standardised features, or features standardised twice,
give a silent chance-level answer; :func:`resolve` stops both.

What is judged: images only. uint8 input is raw images by definition and is never sampled.
Float input is judged when the network takes images, ``IMAGE_FEATURES`` (3 x 32 x 32)
values per row, and the standardisation in question is in pixel units (every mean in
0..255, every std in (0, 255]). Elsewhere nothing tells raw features from standardised ones
(raw rows from one region of tabular data can have per-feature mean ~0 and std ~1, as
standardised ones do), so float X is used as given. A standardisation passed
as :class:`Fitted` (fitted by the caller on the very rows it standardises, as
``cbn.sklearn``'s estimator does) is applied without judging.

The rule (cheap: at most SAMPLE_ROWS rows, strided over X, statistics in float64). With at
least MIN_ROWS rows, a batch *fits* a standardisation when, after applying it, the median over
features of |batch mean| is below MEAN_TOL and the median batch standard deviation lies in
STD_RANGE; the standardisation of features already standardised is the identity (mean 0,
std 1). When a transform is about to be applied to floats that hold negative values (no
pixel does) and fit the identity but not the transform, they were standardised already:
``ValueError``. Floats that fit neither get an :class:`InputWarning`. Floats that look like
raw pixels (whole numbers in 0..255) fed to an image network that has no transform get an
:class:`InputWarning` too.

Row order: an image's 3,072 features are channel-first (CIFAR-10's own layout: 1,024 red
values, then green, then blue, each plane row by row). Images flattened channel-last (height
x width x channel, as PIL and most image loaders give them) score near chance; they are
caught by a cheap statistic on raw images (uint8, or floats judged as images, at least
LAYOUT_MIN_ROWS rows): the mean |x[j] - x[j + 1024]| over the sample (the same pixel in two
channels, when channel-first) divided by the mean |x[j] - x[j + 1]| (neighbours). Measured
on all 60,000 CIFAR-10 images in blocks of 32 rows: 0.81..1.79 channel-first (median 1.28),
1.94..3.78 channel-last (median 2.70); over 256 rows 1.12..1.44 against 2.40..3.01. Above
LAYOUT_LIMIT an :class:`InputWarning` names :func:`to_channel_first`, which converts.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import numpy as np

from . import _validate as check
from .augment import CIFAR_SHAPE
from .data import Normalization

SAMPLE_ROWS = 256    # rows looked at; the statistics of 256 images vary by ~0.1 std
MIN_ROWS = 10        # fewer rows say too little about per-feature means and spreads
MEAN_TOL = 1.0       # a class subset of CIFAR-10 moves feature means by well under 1 std
STD_RANGE = (0.3, 3.0)
IMAGE_FEATURES = CIFAR_SHAPE[0] * CIFAR_SHAPE[1] * CIFAR_SHAPE[2]  # rows judged as images
PIXEL_MAX = 255.0
LAYOUT_MIN_ROWS = 32  # fewer: the two layouts' statistics overlap on real CIFAR-10
LAYOUT_LIMIT = 1.86   # between 1.79 (channel-first) and 1.94 (channel-last) at 32 rows

# What a caller passes as ``normalization=``: None (the network's own, if any), False (X is
# already standardised: apply nothing), or an object with per-feature ``mean`` and ``std``.
NormalizationArg = Union[None, bool, Normalization, object]


class InputWarning(UserWarning):
    """Input that does not look like what the network was trained on."""


class Fitted(Normalization):
    """A standardisation its caller fitted on the rows it is applied to (``cbn.sklearn``'s
    estimator): :func:`resolve` applies it as given, without judging X's units."""


class Checked(Normalization):
    """A normalization checked for a network's inputs by :func:`as_normalization` (float64,
    read-only, one mean and std per input, std > 0), with the gather's ``1 / std`` cached per
    dtype: a network keeps one, so it is checked and converted once, not at every call."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_gather", {})

    def gather(self, dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray, float]:
        """``(mean, scale, largest |mean|)`` for the plan's gather in ``dtype``: the float64
        mean, ``1 / std`` in ``dtype`` (``Normalization.scale``, computed once per dtype)."""
        cached = self._gather.get(dtype)
        if cached is None:
            try:
                scale = self.scale(dtype)
            except ValueError as exc:
                raise ValueError(f"normalization: {exc}") from None
            scale.flags.writeable = False
            cached = self._gather[dtype] = (self.mean, scale, float(np.abs(self.mean).max()))
        return cached


def as_normalization(value, input_dim: int, name: str = "normalization") -> Checked:
    """``value`` (any object with per-feature ``mean`` and ``std`` of length ``input_dim``)
    checked, as a :class:`Checked` normalization (float64, read-only copies, std > 0); one
    this function made already is returned as it is."""
    if type(value) is Checked and value.mean.shape == (input_dim,):
        return value
    if not (hasattr(value, "mean") and hasattr(value, "std")) or isinstance(value, np.ndarray):
        raise TypeError(f"{name} must have per-feature mean and std (e.g. data.normalization), "
                        f"got {type(value).__name__}")
    arrays = []
    for part in ("mean", "std"):
        array = check.real_array(f"{name}.{part}", getattr(value, part))
        if array.ndim == 1 and array.size != input_dim:
            raise ValueError(f"{name}.{part} has {array.size} values, one per feature of the "
                             f"data it was fitted on, but the network takes {input_dim} inputs")
        arrays.append(check.vector(f"{name}.{part}", array, size=input_dim))
    if (arrays[1] <= 0).any():
        raise ValueError(f"{name}.std must be positive")
    return Checked(mean=np.array(arrays[0], np.float64), std=np.array(arrays[1], np.float64))


def gather_arguments(X, normalization, input_dim: int, dtype: np.dtype, name: str = "X"
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``X`` (uint8 or float, shape (n, input_dim)) checked, and the ``(shift, scale)``
    (``mean`` in float64 and ``1 / std`` in ``dtype``, shape (input_dim,)) with which the
    plan's gather standardises them by ``normalization``; the gather keeps x - mean to
    ``dtype``'s precision however large the mean (``_split_shift`` in ``_gather.pxi``).
    NaN and inf are left to the gather, which refuses them as it reads the rows
    (``check.non_finite_input``)."""
    X = check.matrix(name, X, cols=input_dim, dtypes=check.SOURCE_DTYPES, finite=False)
    mean, scale, largest = as_normalization(normalization, input_dim).gather(np.dtype(dtype))
    # float64 rows subtract the float64 mean; the others read it rounded to dtype.
    if X.dtype != np.float64 and largest > np.finfo(dtype).max:
        raise ValueError(f"normalization.mean is too large for {np.dtype(dtype).name}")
    return X, mean, scale


def _sample(X: np.ndarray) -> Optional[np.ndarray]:
    """Up to SAMPLE_ROWS rows spread over X, copied in X's dtype (the statistics of ``_fit``
    promote to float64); None if any is not finite (the caller's checks then report it)."""
    step = max(1, X.shape[0] // SAMPLE_ROWS)
    sample = np.ascontiguousarray(X[::step][:SAMPLE_ROWS])
    return sample if np.isfinite(sample).all() else None


def _fit(sample: np.ndarray, mean, std) -> Tuple[bool, float, float]:
    """Whether ``sample`` fits the standardisation (mean, std); with the median |mean| and
    median std of the standardised sample."""
    z = (sample - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    centre = float(np.median(np.abs(z.mean(axis=0))))
    spread = float(np.median(z.std(axis=0)))
    return centre < MEAN_TOL and STD_RANGE[0] < spread < STD_RANGE[1], centre, spread


def resolve(X: np.ndarray, normalization: NormalizationArg, stored: Optional[Normalization],
            input_dim: int) -> Optional[Normalization]:
    """The standardisation to apply to ``X`` (None: none), after checking that X is in the
    units it expects.

    ``normalization``: None uses ``stored`` (the network's own, or none); False means X is
    already standardised; an object with ``mean``/``std`` is used as given (a
    :class:`Fitted` one without any check). Raises TypeError for uint8 X with no transform to
    apply, ValueError for images already standardised that are about to be standardised
    again (or raw images declared standardised with False); warns with
    :class:`InputWarning` when images fit neither. See the module docstring for what is
    judged as images."""
    if isinstance(normalization, Fitted):
        return as_normalization(normalization, input_dim)
    if normalization is False:
        if stored is not None and isinstance(X, np.ndarray) and X.dtype == np.uint8:
            raise TypeError("X is uint8 (raw images), but normalization=False says it is "
                            "standardised already; pass it without normalization= so the "
                            "network applies its own")
        if (stored is not None and _is_float_matrix(X, input_dim) and _images(input_dim, stored)
                and X.shape[0] >= MIN_ROWS):
            sample = _sample(X)
            if sample is not None and _fit(sample, stored.mean, stored.std)[0] \
                    and not _fit(sample, 0.0, 1.0)[0]:
                raise ValueError("X looks like raw inputs (it fits the network's input "
                                 "normalization), but normalization=False says it is "
                                 "standardised already; drop normalization=False")
        return None
    if normalization is True:
        raise TypeError("normalization must be None, False or an object with mean and std, "
                        "got True")
    transform = stored if normalization is None else as_normalization(normalization, input_dim)
    if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim == 2 \
            and X.shape[1] == input_dim == IMAGE_FEATURES:
        _check_layout(X)
    if not _is_float_matrix(X, input_dim):
        if transform is None and isinstance(X, np.ndarray) and X.dtype == np.uint8:
            raise TypeError("X is uint8 (raw images), but this network has no input "
                            "normalization; pass normalization= with the statistics it was "
                            "trained with (e.g. data.normalization), or train it with "
                            "fit(..., normalization=...) so it keeps them")
        return transform  # uint8 is raw by definition; other problems are the shape checks'
    if not _images(input_dim, transform):
        return transform
    _check_layout(X, pixels_only=transform is None)
    if transform is None:
        sample = _sample(X)
        if sample is not None and sample.max() > 1 and sample.min() >= 0 \
                and sample.max() <= PIXEL_MAX and np.array_equal(sample, np.round(sample)):
            warnings.warn("X holds whole numbers in 0..255, like raw pixels, but this network "
                          "has no input normalization; pass normalization= with the "
                          "statistics it was trained with, or standardise X first",
                          InputWarning, stacklevel=3)
        return None
    if X.shape[0] < MIN_ROWS:
        return transform
    sample = _sample(X)
    if sample is None:
        return transform
    fits, centre, spread = _fit(sample, transform.mean, transform.std)
    if fits:
        return transform
    if sample.min() < 0 and _fit(sample, 0.0, 1.0)[0]:
        raise ValueError("X looks standardised already (negative values, per-feature mean "
                         "~0, std ~1), and standardising it again would give chance-level "
                         "answers; pass the raw images (uint8, or floats in pixel units), or "
                         "normalization=False to use X as it is")
    warnings.warn(f"X does not look like the raw inputs the normalization was fitted on: "
                  f"standardised, its features have median |mean| {centre:.2g} and median std "
                  f"{spread:.2g} (expected ~0 and ~1); check its units", InputWarning,
                  stacklevel=3)
    return transform


def layout_statistic(X: np.ndarray, sample: Optional[np.ndarray] = None) -> float:
    """Mean |x[j] - x[j + 1024]| over mean |x[j] - x[j + 1]| of up to SAMPLE_ROWS rows of
    3,072-feature images: ~1.3 for channel-first rows, ~2.7 channel-last (module docstring)."""
    sample = _sample(X) if sample is None else sample
    if sample is None:
        return float("nan")
    # uint8 differences fit int16: a quarter of float64's memory traffic, on every fit call
    sample = sample.astype(np.int16 if sample.dtype == np.uint8 else np.float64)
    plane = IMAGE_FEATURES // CIFAR_SHAPE[0]
    across = np.abs(sample[:, :-plane] - sample[:, plane:]).mean(dtype=np.float64)
    along = np.abs(sample[:, :-1] - sample[:, 1:]).mean(dtype=np.float64)
    return float(across / along) if along > 0 else float("nan")


def _check_layout(X: np.ndarray, pixels_only: bool = False) -> None:
    """Warn when image rows look flattened channel-last (``pixels_only``: only rows in pixel
    units are images to judge)."""
    if X.shape[0] < LAYOUT_MIN_ROWS:
        return
    sample = _sample(X)
    if sample is None or (pixels_only and not (sample.min() >= 0
                                               and sample.max() <= PIXEL_MAX)):
        return
    ratio = layout_statistic(X, sample)
    if ratio > LAYOUT_LIMIT:
        warnings.warn(f"X looks like images flattened channel-last (height x width x "
                      f"channel; layout statistic {ratio:.2f}, channel-first CIFAR-10 gives "
                      f"~1.3): cbn takes channel-first rows (all red, then green, then blue); "
                      "convert with cbn.inputs.to_channel_first(X)", InputWarning,
                      stacklevel=4)


def to_channel_first(X: np.ndarray, image_shape: Tuple[int, int, int] = CIFAR_SHAPE
                     ) -> np.ndarray:
    """Images flattened channel-last (rows of H x W x C values, or an array (n, H, W, C))
    as cbn's channel-first rows (n, C*H*W): a new C-contiguous array of X's dtype.
    ``image_shape`` is (C, H, W), CIFAR-10's (3, 32, 32) by default."""
    C, H, W = (check.integer("image_shape", v, low=1) for v in image_shape)
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X must be a numpy array, got {type(X).__name__}")
    if X.ndim == 4 and X.shape[1:] == (H, W, C):
        images = X
    elif X.ndim == 2 and X.shape[1] == C * H * W:
        images = X.reshape(-1, H, W, C)
    else:
        raise ValueError(f"X must have shape (n, {H * W * C}) or (n, {H}, {W}, {C}) for "
                         f"images of shape {(C, H, W)}, got {X.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(X), C * H * W)


def _images(input_dim: int, normalization: Optional[Normalization]) -> bool:
    """Whether float rows of ``input_dim`` values under ``normalization`` (None: none) are
    judged as images: IMAGE_FEATURES values, and statistics in pixel units."""
    if input_dim != IMAGE_FEATURES:
        return False
    return normalization is None or bool(
        (normalization.mean >= 0).all() and (normalization.mean <= PIXEL_MAX).all()
        and (normalization.std <= PIXEL_MAX).all())


def _is_float_matrix(X, input_dim: int) -> bool:
    """A well-formed float matrix (anything else is left to the caller's own checks)."""
    return (isinstance(X, np.ndarray) and X.dtype in check.FLOAT_DTYPES and X.ndim == 2
            and X.shape[1] == input_dim and X.shape[0] >= 1)

"""Data augmentation of training mini-batches: random horizontal flips, translations and
Gaussian jitter, applied by the compiled gather as it reads each batch row.

The transform of one sample, on its standardised image (channel-major: feature index =
c H W + row W + col): mirror left-right with probability 1/2 (if ``hflip``), then translate
by (dy, dx), each uniform in [-shift, shift] (pixels that come in from outside are 0, the
training mean), then add N(0, noise^2) to every value. The draws are a hash of (run seed,
step, position in the batch), so a run and its resume from a checkpoint see the same images.
Validation, test and evaluation batches are never augmented.

``Mixup`` mixes each training batch with itself reversed, rows and cross-entropy targets
alike, after the transform above; see its docstring for the exact draws.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import _ops
from . import _validate as check

__all__ = ["Augment", "Mixup", "CIFAR_SHAPE", "mirror"]

CIFAR_SHAPE = (3, 32, 32)  # CIFAR-10's rows: 1024 red, 1024 green, 1024 blue, row-major
# The largest standard normal draw of the jitter: Box-Muller's radius sqrt(-2 ln u) with u at
# least 2**-32 (the gather's hashes), about 6.66.
MAX_DRAW = math.sqrt(-2.0 * math.log(2.0 ** -32))


@dataclass(frozen=True)
class Augment:
    """Augmentation of the training batches of ``fit``.

    Parameters
    ----------
    hflip : mirror each image left-right with probability 1/2.
    shift : translate by up to this many pixels in each direction (0: no translation).
    noise : std of the Gaussian jitter added to each standardised value (0: none).
    image_shape : (channels, height, width) of a row; None: (3, 32, 32) for 3,072 features
        (CIFAR-10), else required.
    """

    hflip: bool = True
    shift: int = 4
    noise: float = 0.0
    image_shape: Optional[Tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.hflip, bool):
            raise TypeError(f"hflip must be True or False, got {self.hflip!r}")
        object.__setattr__(self, "shift", check.integer("shift", self.shift, low=0,
                                                        high=0xFFFF))
        object.__setattr__(self, "noise", check.real("noise", self.noise, low=0.0))
        if self.image_shape is not None:
            shape = self.image_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) != 3):
                raise ValueError(f"image_shape must be (channels, height, width), got {shape!r}")
            shape = tuple(check.integer("image_shape", v, low=1) for v in shape)
            object.__setattr__(self, "image_shape", shape)
            if self.shift >= min(shape[1:]):
                raise ValueError(f"shift={self.shift} moves a {shape[1]}x{shape[2]} image "
                                 "out of view; it must be smaller than its height and width")

    def shape_for(self, features: int, dtype=None) -> Tuple[int, int, int]:
        """The image shape of rows of ``features`` values; ValueError if they do not match,
        or if ``noise`` does not fit ``dtype`` (the network's, when given): its jitter must
        neither overflow nor round to 0 there."""
        if dtype is not None and self.noise > 0:
            dtype = check.float_dtype(dtype)
            info = np.finfo(dtype)
            if self.noise * MAX_DRAW > float(info.max):
                raise ValueError(f"noise={self.noise:g} overflows {dtype}: its jitter reaches "
                                 f"{MAX_DRAW:.2f} x noise, and {dtype} holds at most "
                                 f"{float(info.max):.4g}")
            if self.noise < float(info.tiny):
                raise ValueError(f"noise={self.noise:g} is below the smallest normal {dtype} "
                                 f"number, {float(info.tiny)!r}: its jitter rounds to 0")
        shape = self.image_shape
        if shape is None:
            if features != 3 * 32 * 32:
                raise ValueError(f"augment needs image_shape=(channels, height, width) for "
                                 f"{features} input features (the default (3, 32, 32) is "
                                 "CIFAR-10's 3072)")
            shape = CIFAR_SHAPE
        if shape[0] * shape[1] * shape[2] != features:
            raise ValueError(f"image_shape {shape} holds {shape[0] * shape[1] * shape[2]} "
                             f"values, but the rows have {features} features")
        if self.shift >= min(shape[1:]):
            raise ValueError(f"shift={self.shift} moves a {shape[1]}x{shape[2]} image out of "
                             "view; it must be smaller than its height and width")
        return shape

    @property
    def active(self) -> bool:
        """False if it changes nothing (no flip, no shift, no noise)."""
        return self.hflip or self.shift > 0 or self.noise > 0

    def config(self) -> dict:
        """JSON-ready arguments (part of a run's checkpoint signature)."""
        return dict(hflip=self.hflip, shift=self.shift, noise=self.noise,
                    image_shape=None if self.image_shape is None else list(self.image_shape))

    def compiled(self, features: int, seed: int) -> "_ops.Augmentation":
        """This augmentation as the compiled gather takes it (``Plan.set_augment``,
        ``gather_rows``), for rows of ``features`` values, its draws keyed by ``seed``."""
        C, H, W = self.shape_for(features)
        return _ops.Augmentation(self.hflip, self.shift, self.noise, C, H, W, seed)


@dataclass(frozen=True)
class Mixup:
    """Mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization") of the
    training batches of ``fit``, as timm's ``Mixup`` mixes a batch in its default mode
    (``mode="batch"``, ``prob=1``, no CutMix): one share per batch (timm's and the paper's
    lambda; named ``share`` here, since ``lam`` is cbn's L2 strength), each row's partner the
    row at the mirrored position.

    At training step s of a run whose random key is k (``fit``'s ``seed``, else the random
    key its checkpoint keeps), for a batch of n rows x_0..x_{n-1} with labels t_i::

        share = numpy.random.default_rng([k, s]).beta(alpha, alpha)     (``share(k, s)``)
        x_i  := share x_i + (1 - share) x_{n-1-i}   (timm: x.mul(lam).add(x.flip(0).mul(1 - lam)))
        q_i  := share q(t_i) + (1 - share) q(t_{n-1-i}),  q(t) = (1 - eps) onehot(t) + eps / K

    with eps the label smoothing (timm's ``mixup_target``). The rows are mixed after the
    gather standardised and augmented them (``Augment``), in the network's dtype with share
    and 1 - share rounded to it; the middle row of an odd batch, its own partner, stays as it
    is. The loss is the cross-entropy against q_i (its sample weight, if any, that of its
    own row x_i); the accuracy a step counts compares with t_i. Validation, evaluation and
    ``predict`` never mix. The draws depend only on (k, s), so a resumed run mixes as the
    uninterrupted one.

    Parameters
    ----------
    alpha : the Beta(alpha, alpha) parameter, > 0 (timm's ``mixup_alpha``; 0.2 to 1 are
        usual; small values keep the share near 0 or 1, 1 draws it uniformly).
    """

    alpha: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check.real("alpha", self.alpha, low=0.0,
                                                     low_open=True))

    def share(self, key: int, step: int) -> float:
        """The share of step ``step`` of a run keyed ``key`` (both integers in [0, 2^64))."""
        key = check.integer("key", key, low=0, high=2**64 - 1)
        step = check.integer("step", step, low=0, high=2**64 - 1)
        return float(np.random.default_rng([key, step]).beta(self.alpha, self.alpha))

    @staticmethod
    def partner(n: int) -> np.ndarray:
        """The partner of each row of a batch of ``n``: n - 1 - i (the batch reversed)."""
        return np.arange(check.integer("n", n, low=1))[::-1].copy()

    def config(self) -> dict:
        """JSON-ready arguments (part of a run's checkpoint signature)."""
        return dict(alpha=self.alpha)


def mixup(value) -> Optional[Mixup]:
    """``value`` as a ``Mixup``: a Mixup, a positive alpha (a number), or None/0 (none)."""
    if value is None or isinstance(value, Mixup):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"mixup must be a cbn.Mixup, a positive alpha or None, got {value!r}")
    alpha = check.real("mixup", value, low=0.0)
    return None if alpha == 0 else Mixup(alpha)


def mirror(X: np.ndarray, image_shape: Optional[Tuple[int, int, int]] = None) -> np.ndarray:
    """The images of the rows of ``X`` mirrored left-right, as a new array of X's dtype (for
    test-time flips: average a network's probabilities for X and for ``mirror(X)``).
    ``image_shape`` as in ``Augment`` (default (3, 32, 32) for 3,072 features)."""
    X = check.matrix("X", X, dtypes=check.SOURCE_DTYPES, finite=False)
    C, H, W = Augment(hflip=True, shift=0, image_shape=image_shape).shape_for(X.shape[1])
    return np.ascontiguousarray(X.reshape(-1, C, H, W)[..., ::-1]).reshape(X.shape)

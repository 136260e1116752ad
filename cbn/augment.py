"""Data augmentation of training mini-batches: random horizontal flips, translations and
Gaussian jitter, applied by the compiled gather as it reads each batch row.

The transform of one sample, on its standardised image (channel-major: feature index =
c H W + row W + col): mirror left-right with probability 1/2 (if ``hflip``), then translate
by (dy, dx), each uniform in [-shift, shift] (pixels that come in from outside are 0, the
training mean), then add N(0, noise^2) to every value. The draws are a hash of (run seed,
step, position in the batch), so a run and its resume from a checkpoint see the same images.
Validation, test and evaluation batches are never augmented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import _ops
from . import _validate as check

__all__ = ["Augment", "CIFAR_SHAPE", "mirror"]

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


def mirror(X: np.ndarray, image_shape: Optional[Tuple[int, int, int]] = None) -> np.ndarray:
    """The images of the rows of ``X`` mirrored left-right, as a new array of X's dtype (for
    test-time flips: average a network's probabilities for X and for ``mirror(X)``).
    ``image_shape`` as in ``Augment`` (default (3, 32, 32) for 3,072 features)."""
    X = check.matrix("X", X, dtypes=check.SOURCE_DTYPES, finite=False)
    C, H, W = Augment(hflip=True, shift=0, image_shape=image_shape).shape_for(X.shape[1])
    return np.ascontiguousarray(X.reshape(-1, C, H, W)[..., ::-1]).reshape(X.shape)

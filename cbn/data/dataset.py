"""The in-memory data set: three splits of raw images, the training normalisation, the label
names and where it came from. Loaders (:mod:`cbn.data.cifar10`, :mod:`cbn.data.cifar100`,
:mod:`cbn.data.sample`) fill it; experiments read its feature and class counts from it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .normalization import Normalization, readonly

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """One split of the data: raw images and their labels.

    Attributes
    ----------
    images : ndarray of uint8, shape (n, d)
        C-contiguous, read-only; for CIFAR d = 3072 (R plane, G plane, B plane, each 32x32
        row-major), values in raw pixel units 0..255.
    labels : ndarray of int64, shape (n,)
        Read-only class indices (see ``Dataset.label_names``).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ma.MaskedArray) or isinstance(self.labels, np.ma.MaskedArray):
            raise ValueError("images and labels must be plain arrays, not masked arrays")
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 2:
            raise ValueError(
                f"images must be a 2-D uint8 array, got {images.ndim}-D {images.dtype}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be 1-D with {images.shape[0]} entries, got shape {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        object.__setattr__(self, "images", readonly(np.ascontiguousarray(images)))
        object.__setattr__(self, "labels", readonly(np.ascontiguousarray(labels, dtype=np.int64)))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"Split(n={self.images.shape[0]}, d={self.images.shape[1]})"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set in memory: three splits of raw uint8 images and the
    training normalisation.

    Attributes
    ----------
    train, val, test : Split
    normalization : Normalization
        Per-feature mean/std fitted on ``train`` only, applied unchanged to every split by
        :meth:`features`.
    label_names : tuple of str
        The class names, index = label.
    source : str
        The folder read, or ``"sample"`` for the sample shipped with cbn.
    protocol : str
        How the splits were made: ``"full"``, ``"seed"`` or ``"sample"``.
    """

    train: Split
    val: Split
    test: Split
    normalization: Normalization
    label_names: tuple[str, ...]
    source: str
    protocol: str

    @property
    def n_features(self) -> int:
        """Values per image (the network's input width)."""
        return self.train.images.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes (the network's output width)."""
        return len(self.label_names)

    def split(self, name: str) -> Split:
        """The split called ``name``: "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    def features(self, split: str, dtype=np.float32) -> np.ndarray:
        """Normalised float copy of one split's images.

        Parameters
        ----------
        split : "train", "val" or "test"
        dtype : float32 (default) or float64

        Returns
        -------
        ndarray of ``dtype``, shape (n, d), C-contiguous

        This allocates n x d x itemsize bytes (553 MB for 45,000 CIFAR images in float32);
        for bounded memory normalise mini-batches with
        ``normalization.apply(images[idx], out=...)``.
        """
        return self.normalization.apply(self.split(split).images, dtype)


CIFAR10 = Dataset  # the name CIFAR-10's loaders give it (cbn.data.CIFAR10)

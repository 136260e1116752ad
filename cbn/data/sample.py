"""The class-balanced sample of real CIFAR-10 images shipped with cbn, and the loader that
falls back to it when the full data set is nowhere to be found."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .._files import PathLike
from ..npz import read_npz
from .cifar10 import N_CLASSES, N_FEATURES, check_options, load_cifar10
from .dataset import SPLITS, Dataset, Split
from .errors import DataError, SampleDataWarning
from .fetch import DataVariableError
from .normalization import Normalization

SAMPLE_PATH = Path(__file__).parent.parent / "sample_data" / "cifar10_sample.npz"
_SAMPLE_KEYS = ("label_names",) + tuple(
    f"{split}_{what}" for split in SPLITS for what in ("images", "labels", "indices")
)


def load_sample(path: Optional[PathLike] = None) -> Dataset:
    """Load the class-balanced sample of real CIFAR-10 images shipped with cbn.

    The split is fixed (see ``cbn/sample_data/README.md``): train and val are disjoint draws
    from the official training batches, test from test_batch; the official indices are kept in
    the file. ``protocol`` and ``source`` of the result are ``"sample"``.

    Parameters
    ----------
    path : path, optional
        Another npz in the same format (for tests); the shipped one by default.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        The file is missing, unreadable or not a sample (the message names it).
    """
    path = SAMPLE_PATH if path is None else Path(path)

    def expect(members, read) -> None:  # the names, before any array is read
        missing = [key for key in _SAMPLE_KEYS if key not in members]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}")
        extra = sorted(set(members) - set(_SAMPLE_KEYS))
        if extra:
            raise DataError(f"{path}: holds arrays a sample does not have: {extra[:5]}")

    try:
        arrays = read_npz(path, expect, error=DataError)
    except FileNotFoundError:
        raise DataError(
            f"{path}: the shipped sample is missing (was cbn installed without its package data?)"
        ) from None
    except OSError as exc:  # a folder, no permission
        raise DataError(f"{path}: not a readable sample npz: {exc}") from None
    splits = {}
    for name in SPLITS:
        images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 2
            or images.shape[1] != N_FEATURES
            or images.shape[0] < 1
        ):
            raise DataError(
                f"{path}: {name}_images must be uint8 (n, {N_FEATURES}), "
                f"got {images.dtype} {images.shape}"
            )
        if (
            labels.ndim != 1
            or labels.shape[0] != images.shape[0]
            or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() >= N_CLASSES
        ):
            raise DataError(
                f"{path}: {name}_labels must be {images.shape[0]} integers in 0..{N_CLASSES - 1}"
            )
        splits[name] = Split(images, labels)
    names = arrays["label_names"]
    if names.shape != (N_CLASSES,) or names.dtype.kind not in "US":
        raise DataError(f"{path}: label_names must hold {N_CLASSES} names, "
                        f"got {names.dtype} {names.shape}")
    return Dataset(
        **splits,
        normalization=Normalization.fit(splits["train"].images),
        label_names=tuple(str(name) for name in names),
        source="sample",
        protocol="sample",
    )


def load_or_sample(
    data: Optional[PathLike] = None,
    *,
    protocol: str = "full",
    val_size: int = 5000,
    download: bool = False,
) -> Dataset:
    """Load the real CIFAR-10 if it can be found, otherwise the shipped sample, with a warning.

    Parameters
    ----------
    data, protocol, val_size, download
        Those of :func:`cbn.data.load_cifar10` (``data`` is its ``root``).

    Returns
    -------
    Dataset
        ``source`` is ``"sample"`` when the sample was used.

    Only a failed search (``data`` None, nothing in :func:`cbn.data.search_paths`, no
    download asked) falls back to :func:`load_sample`, warning with
    :class:`SampleDataWarning` (printed to stderr by default). A ``data`` folder that does
    not exist, corrupt files and failed downloads raise as in :func:`cbn.data.load_cifar10`,
    so a typo never silently swaps in the sample.
    """
    check_options(protocol, val_size)
    if data is not None or download:
        return load_cifar10(data, protocol=protocol, val_size=val_size, download=download)
    try:
        return load_cifar10(protocol=protocol, val_size=val_size)
    except DataVariableError:
        raise  # a wrong $CBN_DATA is a mistake to fix, as a wrong ``data`` is
    except FileNotFoundError as exc:
        warnings.warn(
            "Using the small CIFAR-10 sample shipped with cbn, because the full data set was "
            f"not found (the sample's fixed train/val/test split replaces protocol={protocol!r}; "
            f"results are not comparable with the full data set).\n{exc}",
            SampleDataWarning,
            stacklevel=2,
        )
        return load_sample()

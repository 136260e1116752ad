"""CIFAR-100 in the official "python version" layout: ``train`` and ``test`` files holding
``data`` and ``fine_labels``/``coarse_labels``, and ``meta`` holding ``fine_label_names`` and
``coarse_label_names``. Images are laid out as CIFAR-10's (3072 uint8 values per image)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .. import _validate as check
from .._files import PathLike
from . import fetch, pickled
from .cifar10 import N_FEATURES, holdout
from .dataset import Dataset, Split
from .errors import DataError
from .normalization import Normalization

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER_NAME = "cifar-100-python"
FILES = ("train", "test", "meta")
N_CLASSES = {"fine": 100, "coarse": 20}


def load_cifar100(
    root: Optional[PathLike] = None,
    *,
    labels: str = "fine",
    val_size: int = 5000,
    download: bool = False,
    url: str = CIFAR100_URL,
    md5: str = CIFAR100_MD5,
) -> Dataset:
    """Load CIFAR-100 (python version) into memory, split it and fit the normalisation.

    Parameters
    ----------
    root : path, optional
        The ``cifar-100-python`` folder or its parent; searched for as CIFAR-10's when None
        (see :func:`cbn.data.search_paths`).
    labels : "fine" or "coarse"
        The 100 classes or the 20 superclasses.
    val_size : int
        The last ``val_size`` images of ``train`` validate (>= 1); the rest train.
    download : bool
        When no data is found, fetch ``url``, check its md5 and extract it safely.
    url, md5 : str
        The archive and its checksum; the official ones by default.

    Returns
    -------
    Dataset
        uint8 (n, 3072) images, the chosen labels and names, the normalisation fitted on
        ``train``; ``protocol`` is ``"full"``.

    Raises
    ------
    FileNotFoundError
        No data found (the message lists every place tried).
    DataError
        A file is missing, unsafe, corrupt or wrong; the message names the file.
    TypeError, ValueError
        Bad ``labels`` or ``val_size``.
    """
    check.choice("labels", labels, tuple(N_CLASSES))
    val_size = check.integer("val_size", val_size, low=1)
    folder = fetch.resolve_folder(root, download, url, md5, what="CIFAR-100",
                                  archive="cifar-100-python.tar.gz", folder_name=FOLDER_NAME,
                                  markers=FILES)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: not a complete CIFAR-100 folder, missing {', '.join(missing)}")
    key, count = f"{labels}_labels".encode(), N_CLASSES[labels]
    meta_path = folder / "meta"
    meta = pickled.read_dict(meta_path)
    label_names = pickled.names(meta, f"{labels}_label_names".encode(), count, meta_path)
    train, val = holdout(*read_file(folder / "train", key, count), val_size, folder)
    test = Split(*read_file(folder / "test", key, count))
    return Dataset(train=train, val=val, test=test,
                   normalization=Normalization.fit(train.images), label_names=label_names,
                   source=str(folder), protocol="full")


def read_file(path: Path, key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and the ``key`` labels (``b"fine_labels"`` or ``b"coarse_labels"``) of one
    CIFAR-100 file: uint8 (n, 3072) and int64 (n,) in 0..n_classes-1.

    Raises
    ------
    DataError
        The file is missing, unsafe, corrupt or malformed (the message names it).
    """
    content = pickled.read_dict(path)
    pickled.require(content, (b"data", key), path)
    images = pickled.images(content, N_FEATURES, path)
    return images, pickled.labels(content, key, images.shape[0], n_classes, path)

"""CIFAR-10 in the official "python version" layout: its batch files, its label names, and
the loader that splits them (protocol ``"full"`` or ``"seed"``) into a :class:`Dataset`.

Images are kept as raw ``uint8`` rows of 3072 values (1024 red, 1024 green, 1024 blue, each
channel a row-major 32x32 plane), exactly as stored in the files. Float copies are made only
on demand (:meth:`Dataset.features`, :meth:`Normalization.apply`), so the full training split
costs 138 MB rather than 1.1 GB in float64.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .. import _validate as check
from .._files import PathLike
from . import fetch, pickled
from .dataset import Dataset, Split
from .errors import DataError
from .normalization import Normalization

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
LABEL_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
N_FEATURES = 3072  # 3 channels x 32 x 32
N_CLASSES = 10
PROTOCOLS = ("full", "seed")
TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"


def search_paths() -> list[tuple[str, Optional[Path]]]:
    """Where :func:`load_cifar10` looks when ``root`` is None, in order.

    Returns
    -------
    list of (description, path)
        path is None for ``$CBN_DATA`` when it is unset. Each path may be the
        ``cifar-10-batches-py`` folder or its parent. Computed at call time from the
        environment, the home folder and the working directory.
    """
    return fetch.search_paths(FOLDER_NAME)


def read_batch(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one official batch file (``data_batch_k`` or ``test_batch``).

    Returns
    -------
    images : ndarray of uint8, shape (n, 3072)
        C-contiguous, n >= 1 (10,000 in the official files).
    labels : ndarray of int64, shape (n,)
        Values 0..9.

    Raises
    ------
    DataError
        The file is missing, not a safe and well-formed pickle, lacks ``b"data"`` or
        ``b"labels"``, or has the wrong shape, dtype or label range. The message names the file.
    """
    path = Path(path)
    batch = pickled.read_dict(path)
    pickled.require(batch, (b"data", b"labels"), path)
    images = pickled.images(batch, N_FEATURES, path)
    labels = pickled.labels(batch, b"labels", images.shape[0], N_CLASSES, path)
    return images, labels


def _read_label_names(path: Path) -> tuple[str, ...]:
    """The ten class names of ``batches.meta``, checked with its ``num_vis`` (3072)."""
    meta = pickled.read_dict(path)
    names = pickled.names(meta, b"label_names", N_CLASSES, path)
    num_vis = meta.get(b"num_vis", N_FEATURES)
    if type(num_vis) is not int or num_vis != N_FEATURES:
        raise DataError(f"{path}: b'num_vis' is {check.short_repr(num_vis)}, "
                        f"expected {N_FEATURES}")
    return names


def check_options(protocol: str, val_size: int) -> int:
    """Check a protocol name and a validation size >= 1; return the size as an int."""
    check.choice("protocol", protocol, PROTOCOLS)
    return check.integer("val_size", val_size, low=1)


def resolve_folder(root: Optional[PathLike], download: bool, url: str = CIFAR10_URL,
                   md5: str = CIFAR10_MD5) -> Path:
    """The ``cifar-10-batches-py`` folder (see :func:`cbn.data.fetch.resolve_folder`)."""
    return fetch.resolve_folder(root, download, url, md5, what="CIFAR-10",
                                archive=ARCHIVE_NAME, folder_name=FOLDER_NAME,
                                markers=(META_FILE, TEST_FILE, *TRAIN_FILES))


def _read_train_batches(folder: Path, names: tuple[str, ...], val_size: int) -> tuple[Split, Split]:
    """Concatenate training batches in order; split off the last ``val_size`` rows as validation.

    Each batch is copied into one buffer as soon as it is read and then released, so only one
    batch's unpickling temporaries exist at a time. The buffer is sized from the file sizes (a
    row needs 3072 bytes of file), an upper bound whose unused tail is never touched and so
    costs no memory.
    """
    sizes = {name: (folder / name).stat().st_size for name in names}
    capacity = sum(size // N_FEATURES for size in sizes.values())
    try:
        images = np.empty((capacity, N_FEATURES), dtype=np.uint8)
        labels = np.empty(capacity, dtype=np.int64)
    except MemoryError:
        largest = max(sizes, key=sizes.get)
        raise DataError(f"{folder / largest}: {sizes[largest]} bytes, too large to be a CIFAR-10 "
                        "batch (no memory for the rows its size allows)") from None
    n_total = 0
    for name in names:
        batch_images, batch_labels = read_batch(folder / name)
        stop = n_total + batch_images.shape[0]
        if stop > capacity:  # cannot happen for a pickle holding its raw pixels; guards the buffer
            raise DataError(f"{folder / name}: more rows than the file size allows")
        images[n_total:stop] = batch_images
        labels[n_total:stop] = batch_labels
        n_total = stop
        del batch_images, batch_labels
    return holdout(images[:n_total], labels[:n_total], val_size, folder)


def holdout(images: np.ndarray, labels: np.ndarray, val_size: int,
            folder: Path) -> tuple[Split, Split]:
    """The training rows split in order: all but the last ``val_size`` for training, those
    for validation. ValueError naming ``folder`` when no training row would be left."""
    n_total = images.shape[0]
    if val_size >= n_total:
        raise ValueError(
            f"val_size={val_size} leaves no training images: {folder} has {n_total} training images"
        )
    n_train = n_total - val_size
    return Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])


def load_cifar10(
    root: Optional[PathLike] = None,
    *,
    protocol: str = "full",
    val_size: int = 5000,
    download: bool = False,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> Dataset:
    """Load CIFAR-10 (python version) into memory, split it and fit the normalisation.

    Parameters
    ----------
    root : path, optional
        The ``cifar-10-batches-py`` folder or its parent. When None, the places listed by
        :func:`search_paths` are tried in order ($CBN_DATA, ./data, ./, ~/data, ~/datasets,
        ~/.cache/cbn, ~/.keras/datasets).
    protocol : "full" or "seed"
        ``"full"``: train on the first 50,000 - val_size images of data_batch_1..5
        concatenated in order, validate on the last ``val_size``; ``"seed"``: train on
        data_batch_1, validate on data_batch_2. Both test on test_batch.
    val_size : int
        Validation images for ``"full"`` (ignored by ``"seed"``), >= 1.
    download : bool
        When no data is found, fetch ``url`` into ``root`` (or $CBN_DATA, else
        ~/.cache/cbn), check its md5, extract it safely and delete the archive.
    url, md5 : str
        The archive and its checksum; the official ones by default.

    Returns
    -------
    Dataset
        uint8 images and the normalisation fitted on ``train``.

    Raises
    ------
    FileNotFoundError
        No data found (the message lists every place tried).
    DataError
        A file is missing, unsafe, corrupt or wrong, or a download fails its checksum or
        contains unsafe paths; the message names the file.
    TypeError, ValueError
        Bad ``protocol`` or ``val_size``.
    """
    val_size = check_options(protocol, val_size)
    folder = resolve_folder(root, download, url, md5)
    train_files = TRAIN_FILES if protocol == "full" else TRAIN_FILES[:2]
    missing = [
        name for name in (META_FILE, *train_files, TEST_FILE) if not (folder / name).is_file()
    ]
    if missing:
        raise DataError(f"{folder}: not a complete CIFAR-10 folder, missing {', '.join(missing)}")
    label_names = _read_label_names(folder / META_FILE)
    if protocol == "full":
        train, val = _read_train_batches(folder, train_files, val_size)
    else:
        train = Split(*read_batch(folder / train_files[0]))
        val = Split(*read_batch(folder / train_files[1]))
    test = Split(*read_batch(folder / TEST_FILE))
    return Dataset(
        train=train,
        val=val,
        test=test,
        normalization=Normalization.fit(train.images),
        label_names=label_names,
        source=str(folder),
        protocol=protocol,
    )

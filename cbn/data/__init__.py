"""Getting labelled images into memory safely: find, download, unpickle, validate, split,
normalise.

One module per job:

* :mod:`cbn.data.dataset` -- :class:`Dataset` (alias :class:`CIFAR10`), three :class:`Split`
  objects with the training :class:`Normalization`, label names and source; a network's
  input and output widths are its ``n_features`` and ``n_classes``;
* :mod:`cbn.data.normalization` -- per-feature standardisation in bounded memory;
* :mod:`cbn.data.cifar10` -- the official CIFAR-10 python files and :func:`load_cifar10`;
* :mod:`cbn.data.cifar100` -- the official CIFAR-100 python files and :func:`load_cifar100`;
* :mod:`cbn.data.sample` -- the sample shipped with cbn (:func:`load_sample`) and
  :func:`load_or_sample`, the real data when found, otherwise the sample with a warning;
* :mod:`cbn.data.fetch` -- where the data is searched for, and its download and safe
  extraction;
* :mod:`cbn.data.pickled` -- the restricted reading of the python-format pickles (never
  pickle's own loader: see :mod:`cbn._unpickle`).
"""
from .._files import PathLike
from .cifar10 import (CIFAR10_MD5, CIFAR10_URL, FOLDER_NAME, LABEL_NAMES, META_FILE,
                      N_CLASSES, N_FEATURES, PROTOCOLS, TEST_FILE, TRAIN_FILES, load_cifar10,
                      read_batch, search_paths)
from .cifar100 import load_cifar100
from .dataset import CIFAR10, Dataset, Split
from .errors import DataError, SampleDataWarning, UnsafePickleError
from .normalization import Normalization
from .sample import SAMPLE_PATH, load_or_sample, load_sample

__all__ = [
    "CIFAR10",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DataError",
    "Dataset",
    "FOLDER_NAME",
    "LABEL_NAMES",
    "Normalization",
    "SampleDataWarning",
    "Split",
    "UnsafePickleError",
    "load_cifar10",
    "load_cifar100",
    "load_or_sample",
    "load_sample",
    "read_batch",
    "search_paths",
]

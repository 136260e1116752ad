"""Getting CIFAR-10 into memory safely: find, download, unpickle, validate, split, normalise.

The official "CIFAR-10 python version" files are pickles. Unpickling runs whatever code a
pickle names, so this module never uses the unrestricted loader: :mod:`cbn._unpickle` admits
plain containers and numeric arrays only, checks every array's state before numpy sees it,
and bounds memory and work by the file's size; everything else is refused.

Images are kept as raw ``uint8`` rows of 3072 values (1024 red, 1024 green, 1024 blue, each
channel a row-major 32x32 plane), exactly as stored in the files. Float copies are made only
on demand (:meth:`CIFAR10.features`, :meth:`Normalization.apply`), so the full training split
costs 138 MB rather than 1.1 GB in float64.

Public entry points:

* :func:`load_cifar10` -- the real data set from a folder (searched for when not given),
  optionally downloaded from the official URL;
* :func:`load_sample` -- a class-balanced sample of the real images shipped with the package;
* :func:`load_or_sample` -- the real data when found, otherwise the sample with a warning.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Union

import numpy as np

from . import _unpickle as restricted
from .checkpoint import read_npz
from ._validate import short_repr

__all__ = [
    "CIFAR10",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DataError",
    "FOLDER_NAME",
    "LABEL_NAMES",
    "Normalization",
    "SampleDataWarning",
    "Split",
    "UnsafePickleError",
    "load_cifar10",
    "load_or_sample",
    "load_sample",
    "read_batch",
    "search_paths",
]

PathLike = Union[str, os.PathLike]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
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
SAMPLE_PATH = Path(__file__).with_name("sample_data") / "cifar10_sample.npz"

# Rows per chunk when a float64 temporary is needed: ~8 MiB of float64 at 3072 features.
_CHUNK_ELEMENTS = 1 << 20
# A feature whose std (raw pixel units) is below this is treated as constant. Pixel data with
# any variation over n <= 10**6 rows has std >= ~1e-3, so this only catches true constants
# (and their float rounding residue).
_ZERO_STD = 1e-8
_EXACT_UINT8_ROWS = 256  # 256 * 255^2 < 2^24: float32 sums of these rows stay exact


class DataError(ValueError):
    """A data file is missing, truncated, corrupt, unsafe or has the wrong content.

    The message starts with the offending file's path.
    """


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allowlist; nothing it names was run."""


class SampleDataWarning(UserWarning):
    """:func:`load_or_sample` fell back to the shipped sample because no CIFAR-10 was found."""


# --------------------------------------------------------------------------------------------
# Normalisation and containers
# --------------------------------------------------------------------------------------------


def _chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _uint8_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std of uint8 ``images`` (n, d), both float64 (d,).

    About 7x faster than the float64 passes and as exact: sums of 256 rows of x and x^2 (at
    most 256 * 255^2 < 2^24) are exact in float32, so the float64 totals are exact integers.
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


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view, so shared data is not changed by accident (``array`` is untouched)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _real_array(name: str, value, keep_dtype: bool = False) -> np.ndarray:
    """``value`` as an array of real numbers (float64 unless ``keep_dtype``). Refuses masked
    arrays, bool, complex (numpy would drop the imaginary part), object and text, and
    ints beyond float range, with a ValueError naming ``name``."""
    if isinstance(value, np.ma.MaskedArray):
        raise ValueError(f"{name} must be a plain array, not a masked array")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must have a real numeric dtype, got {array.dtype}")
    return array if keep_dtype else array.astype(np.float64)


def _check_float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


@dataclass(frozen=True, eq=False)
class Normalization:
    """Per-feature standardisation ``(x - mean) / std`` fitted on the training split.

    Attributes:
        mean: float64 (d,), per-feature mean in raw pixel units (0..255).
        std: float64 (d,), per-feature population standard deviation (ddof=0) in raw pixel
            units, all > 0. Features that are constant in the fitted data (std < 1e-8) get
            ``std = 1``, so they map to 0 instead of dividing by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean, std = _real_array("mean", self.mean), _real_array("std", self.std)
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(
                f"mean and std must be 1-D of equal shape, got {mean.shape} and {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("mean must be finite and std finite and > 0")
        object.__setattr__(self, "mean", _readonly(np.ascontiguousarray(mean)))
        object.__setattr__(self, "std", _readonly(np.ascontiguousarray(std)))

    @classmethod
    def fit(cls, images: np.ndarray) -> Normalization:
        """Fit mean and std per feature of ``images`` (n, d), any real dtype, n >= 1.

        Two passes over row chunks in float64 (mean, then squared deviations), so no float
        copy of the whole array is ever made: fitting 45,000 x 3072 needs ~8 MiB of scratch.
        """
        images = _real_array("images", images, keep_dtype=True)
        if images.ndim != 2 or images.shape[0] < 1:
            raise ValueError(f"images must be 2-D (n, d) with n >= 1, got shape {images.shape}")
        if not (
            np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
        ):
            raise ValueError(f"images must have a real numeric dtype, got {images.dtype}")
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

    def apply(
        self, images: np.ndarray, dtype=np.float32, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Return ``(images - mean) / std`` as a new C-contiguous (n, d) array of ``dtype``.

        Args:
            images: (n, d) array of raw pixel values (uint8 or any real dtype), d = len(mean).
            dtype: float32 (default) or float64.
            out: optional preallocated C-contiguous (n, d) array of ``dtype`` to write into
                (e.g. one mini-batch buffer reused every step).

        Computed in float64 chunk by chunk, then rounded once to ``dtype``.
        """
        dtype = _check_float_dtype(dtype)
        images = _real_array("images", images, keep_dtype=True)
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


@dataclass(frozen=True, eq=False)
class Split:
    """One split of the data: raw images and their labels.

    Attributes:
        images: uint8 (n, d), C-contiguous, read-only; for CIFAR-10 d = 3072 (R plane, G plane,
            B plane, each 32x32 row-major), values in raw pixel units 0..255.
        labels: int64 (n,), read-only, class indices 0..9 (see ``CIFAR10.label_names``).
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
        object.__setattr__(self, "images", _readonly(np.ascontiguousarray(images)))
        object.__setattr__(self, "labels", _readonly(np.ascontiguousarray(labels, dtype=np.int64)))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"Split(n={self.images.shape[0]}, d={self.images.shape[1]})"


@dataclass(frozen=True, eq=False)
class CIFAR10:
    """CIFAR-10 in memory: three splits of raw uint8 images and the training normalisation.

    Attributes:
        train, val, test: the splits (see :class:`Split`).
        normalization: per-feature mean/std fitted on ``train`` only, applied unchanged to
            every split by :meth:`features`.
        label_names: the 10 class names, index = label.
        source: the ``cifar-10-batches-py`` folder read, or ``"sample"`` for the shipped sample.
        protocol: ``"full"``, ``"seed"`` or ``"sample"``.
    """

    train: Split
    val: Split
    test: Split
    normalization: Normalization
    label_names: tuple[str, ...]
    source: str
    protocol: str

    def split(self, name: str) -> Split:
        """The split called ``name``: "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    def features(self, split: str, dtype=np.float32) -> np.ndarray:
        """Normalised float copy (n, 3072) of one split's images, C-contiguous, ``dtype``.

        This allocates n x 3072 x itemsize bytes (553 MB for 45,000 images in float32); for
        bounded memory normalise mini-batches with ``normalization.apply(images[idx], out=...)``.
        """
        return self.normalization.apply(self.split(split).images, dtype)

    def channel_mean(self, split: str = "train") -> np.ndarray:
        """Per-channel (R, G, B) mean of one split's pixels, float64 (3,), scaled to [0, 1]."""
        images = self.split(split).images
        n = images.shape[0]
        planes = images.reshape(n, 3, -1)
        # Integer sums are exact and need no float copy of the images.
        sums = planes.sum(axis=(0, 2), dtype=np.int64)
        return sums / (n * planes.shape[2] * 255.0)


# --------------------------------------------------------------------------------------------
# Reading pickles safely
# --------------------------------------------------------------------------------------------

def _unpickle(path: Path) -> object:
    """The content of a pickle file through :mod:`cbn._unpickle` (plain data and numeric
    arrays only, bounded by the file's size); every failure is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            return restricted.read_plain_data(f, os.fstat(f.fileno()).st_size)
    except restricted.UnsafeGlobal as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except restricted.RefusedPickle as exc:
        raise DataError(f"{path}: refused: {exc}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except MemoryError:
        raise DataError(f"{path}: too large to load into memory") from None
    except Exception as exc:  # untrusted input: any failure inside the unpickler means corrupt
        raise DataError(
            f"{path}: not a readable CIFAR-10 pickle (truncated or corrupt?): "
            f"{type(exc).__name__}: {short_repr(str(exc))}"
        ) from None


def _bytes_keys(obj: object, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    # py3-written files may have str keys; the official ones have bytes keys.
    return {k.encode("latin-1", "backslashreplace") if isinstance(k, str) else k: v
            for k, v in obj.items()}


def read_batch(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one official batch file (``data_batch_k`` or ``test_batch``).

    Returns:
        images: uint8 (n, 3072), C-contiguous, n >= 1 (10,000 in the official files).
        labels: int64 (n,), values 0..9.

    Raises:
        DataError: the file is missing, not a safe and well-formed pickle, lacks ``b"data"`` or
            ``b"labels"``, or has the wrong shape, dtype or label range. The message names the file.
    """
    path = Path(path)
    batch = _bytes_keys(_unpickle(path), path)
    missing = [key.decode() for key in (b"data", b"labels") if key not in batch]
    if missing:
        found = sorted(short_repr(key) for key in list(batch)[:10])
        raise DataError(f"{path}: missing key(s) {missing}; found {found}")
    images = batch[b"data"]
    if not isinstance(images, np.ndarray):
        raise DataError(f"{path}: b'data' must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(f"{path}: b'data' must have dtype uint8, got {images.dtype}")
    if images.ndim != 2 or images.shape[0] < 1 or images.shape[1] != N_FEATURES:
        raise DataError(
            f"{path}: b'data' must have shape (n, {N_FEATURES}) with n >= 1, got {images.shape}"
        )
    labels = _labels(batch[b"labels"], path)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    bad = (labels < 0) | (labels >= N_CLASSES)
    if bad.any():
        raise DataError(
            f"{path}: labels must be in 0..{N_CLASSES - 1}, "
            f"found {labels[bad][0]} at row {int(np.argmax(bad))}"
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _labels(value, path: Path) -> np.ndarray:
    """Labels as a flat list (or tuple) of Python ints or a 1-D integer array, checked before
    numpy converts them, so nested or shared structures never expand."""
    if isinstance(value, np.ndarray):
        labels = value
    elif type(value) in (list, tuple) and all(type(v) is int for v in value):
        try:
            labels = np.array(value, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{path}: b'labels' holds integers beyond int64") from None
    else:
        kinds = sorted({type(v).__name__ for v in value}) if type(value) in (list, tuple) else []
        raise DataError(f"{path}: b'labels' must be a flat list of integers, got a "
                        f"{type(value).__name__}" + (f" of {', '.join(kinds)}" if kinds else ""))
    if labels.ndim != 1 or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: b'labels' must be a flat list of integers, got {labels.ndim}-D {labels.dtype}"
        )
    return labels


def _read_label_names(path: Path) -> tuple[str, ...]:
    meta = _bytes_keys(_unpickle(path), path)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != N_CLASSES:
        raise DataError(
            f"{path}: b'label_names' must be a list of {N_CLASSES} names, got {short_repr(names)}"
        )
    if not all(isinstance(name, (bytes, str)) for name in names):
        raise DataError(f"{path}: b'label_names' must hold strings, got {short_repr(names)}")
    num_vis = meta.get(b"num_vis", N_FEATURES)
    if type(num_vis) is not int or num_vis != N_FEATURES:
        raise DataError(f"{path}: b'num_vis' is {short_repr(num_vis)}, expected {N_FEATURES}")
    return tuple(
        name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in names
    )


# --------------------------------------------------------------------------------------------
# Finding and downloading the data
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cbn"


def search_paths() -> list[tuple[str, Path | None]]:
    """Where :func:`load_cifar10` looks when ``root`` is None, in order.

    Returns (description, path) pairs; path is None for ``$CBN_DATA`` when it is unset. Each
    path may be the ``cifar-10-batches-py`` folder or its parent. Computed at call time from
    the environment, the home folder and the working directory.
    """
    env = os.environ.get("CBN_DATA")
    home, cwd = Path.home(), Path.cwd()
    return [
        ("$CBN_DATA", Path(env).expanduser() if env else None),
        ("working directory", cwd / "data" / FOLDER_NAME),
        ("working directory", cwd / FOLDER_NAME),
        ("home", home / "data" / FOLDER_NAME),
        ("home", home / "datasets" / FOLDER_NAME),
        ("cbn download cache", _cache_dir() / FOLDER_NAME),
        ("keras cache", home / ".keras" / "datasets" / FOLDER_NAME),
    ]


def _as_batches_dir(root: Path) -> Path | None:
    """The batches folder for ``root`` (its parent, or the folder itself), or None if absent.

    ``root`` counts as the folder itself when it has the official name or holds a batch file;
    any other folder (say an empty ``./data``) is a parent, so download=True fills it.
    """
    if (root / FOLDER_NAME).is_dir():
        return root / FOLDER_NAME
    if root.is_dir() and (
        root.name == FOLDER_NAME
        or any((root / name).exists() for name in (META_FILE, TEST_FILE, *TRAIN_FILES))
    ):
        return root
    return None


def _find_batches_dir() -> Path:
    looked = []
    for label, path in search_paths():
        if path is None:
            looked.append(f"  {label}: not set")
            continue
        found = _as_batches_dir(path)
        if found is not None:
            return found
        looked.append(f"  {path}  ({label})")
    raise FileNotFoundError(
        f"CIFAR-10 ('{FOLDER_NAME}' folder, python version) not found. Looked in:\n"
        + "\n".join(looked)
        + "\nPass root=... (command line: --data DIR), set $CBN_DATA to the folder, or use "
        "download=True (command line: --download)."
    )


def _default_download_dir() -> Path:
    env = os.environ.get("CBN_DATA")
    return Path(env).expanduser() if env else _cache_dir()


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Download ``url`` to ``archive`` with a progress bar; delete it unless its md5 matches."""
    from tqdm.auto import tqdm  # only needed for downloads

    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"url must be http(s), got {url!r}")
    part = archive.with_name(archive.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {archive.name}",
            ) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != md5.lower():
        part.unlink(missing_ok=True)
        raise DataError(
            f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}; "
            "the downloaded file was deleted"
        )
    os.replace(part, archive)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything the official archive does not contain: links, devices, escaping paths."""
    name = PurePosixPath(member.name)
    parts = [p for p in name.parts if p != "."]
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in parts or not parts:
        raise DataError(f"{archive}: refused unsafe path {member.name!r} in archive")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refused {member.name!r}: only regular files and folders are "
            "allowed, not links or devices"
        )
    if parts[0] != FOLDER_NAME:
        raise DataError(f"{archive}: refused {member.name!r}: outside {FOLDER_NAME}/")


def _extract(archive: Path, dest_dir: Path) -> Path:
    """Extract the ``cifar-10-batches-py`` folder of ``archive`` into ``dest_dir`` atomically."""
    target = dest_dir / FOLDER_NAME
    scratch = Path(tempfile.mkdtemp(prefix=".cbn-extract-", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):  # second line of defence where available
                    tar.extractall(scratch, members=members, filter="data")
                else:
                    tar.extractall(scratch, members=members)
        except DataError:
            raise
        except Exception as exc:  # tarfile.ReadError, EOFError, zlib.error, filter errors
            raise DataError(
                f"{archive}: not a valid tar.gz archive: {type(exc).__name__}: {exc}"
            ) from exc
        extracted = scratch / FOLDER_NAME
        if not extracted.is_dir():
            raise DataError(f"{archive}: the archive has no {FOLDER_NAME}/ folder")
        os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _download(dest_dir: Path, url: str, md5: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / "cifar-10-python.tar.gz"
    _fetch(url, archive, md5)
    try:
        return _extract(archive, dest_dir)
    finally:
        archive.unlink(missing_ok=True)  # 163 MiB that the extracted folder makes redundant


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _check_options(protocol: str, val_size: int) -> int:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)):
        raise ValueError(f"val_size must be an int, got {val_size!r}")
    if val_size < 1:
        raise ValueError(f"val_size must be >= 1, got {val_size}")
    return int(val_size)


def _resolve_root(root: PathLike | None, download: bool, url: str, md5: str) -> Path:
    if root is not None:
        root = Path(root).expanduser()
        if root.is_file():
            raise FileNotFoundError(
                f"{root} is a file, not a folder: give the {FOLDER_NAME} folder or the folder "
                "holding it (extract a downloaded archive first)"
            )
        found = _as_batches_dir(root)
        if found is not None:
            return found
        if not download:
            raise FileNotFoundError(
                f"no CIFAR-10 at {root}: expected {root / FOLDER_NAME} or the batch "
                "files in that folder itself; to fetch it there, use download=True "
                "(command line: --download)"
            )
        return _download(root.parent if root.name == FOLDER_NAME else root, url, md5)
    try:
        return _find_batches_dir()
    except FileNotFoundError:
        if not download:
            raise
        return _download(_default_download_dir(), url, md5)


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
    if val_size >= n_total:
        raise ValueError(
            f"val_size={val_size} leaves no training images: {folder} has {n_total} training images"
        )
    n_train = n_total - val_size
    train = Split(images[:n_train], labels[:n_train])
    val = Split(images[n_train:n_total], labels[n_train:n_total])
    return train, val


def load_cifar10(
    root: PathLike | None = None,
    *,
    protocol: str = "full",
    val_size: int = 5000,
    download: bool = False,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> CIFAR10:
    """Load CIFAR-10 (python version) into memory, split it and fit the normalisation.

    Args:
        root: the ``cifar-10-batches-py`` folder or its parent. When None, the places listed
            by :func:`search_paths` are tried in order ($CBN_DATA, ./data, ./, ~/data,
            ~/datasets, ~/.cache/cbn, ~/.keras/datasets).
        protocol: ``"full"``: train on the first 50,000 - val_size images of data_batch_1..5
            concatenated in order, validate on the last ``val_size``; ``"seed"``: train on
            data_batch_1, validate on data_batch_2. Both test on test_batch.
        val_size: validation images for ``"full"`` (ignored by ``"seed"``), >= 1.
        download: when no data is found, fetch ``url`` into ``root`` (or $CBN_DATA, else
            ~/.cache/cbn), check its md5, extract it safely and delete the archive.
        url, md5: the archive and its checksum; the official ones by default.

    Returns:
        A :class:`CIFAR10` with uint8 images and the normalisation fitted on ``train``.

    Raises:
        FileNotFoundError: no data found (the message lists every place tried).
        DataError: a file is missing, unsafe, corrupt or wrong, or a download fails its
            checksum or contains unsafe paths; the message names the file.
        ValueError: bad ``protocol`` or ``val_size``.
    """
    val_size = _check_options(protocol, val_size)
    folder = _resolve_root(root, download, url, md5)
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
    return CIFAR10(
        train=train,
        val=val,
        test=test,
        normalization=Normalization.fit(train.images),
        label_names=label_names,
        source=str(folder),
        protocol=protocol,
    )


_SAMPLE_KEYS = ("label_names",) + tuple(
    f"{split}_{what}"
    for split in ("train", "val", "test")
    for what in ("images", "labels", "indices")
)


def load_sample(path: PathLike | None = None) -> CIFAR10:
    """Load the class-balanced sample of real CIFAR-10 images shipped with cbn.

    The split is fixed (see ``cbn/sample_data/README.md``): train and val are disjoint draws
    from the official training batches, test from test_batch; the official indices are kept in
    the file. ``protocol`` and ``source`` of the result are ``"sample"``.

    Args:
        path: another npz in the same format (for tests); the shipped one by default.
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
    for name in ("train", "val", "test"):
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
    label_names = tuple(str(name) for name in names)
    return CIFAR10(
        **splits,
        normalization=Normalization.fit(splits["train"].images),
        label_names=label_names,
        source="sample",
        protocol="sample",
    )


def load_or_sample(
    data: PathLike | None = None,
    *,
    protocol: str = "full",
    val_size: int = 5000,
    download: bool = False,
) -> CIFAR10:
    """Load the real CIFAR-10 if it can be found, otherwise the shipped sample, with a warning.

    ``data`` and the other arguments are those of :func:`load_cifar10`. Only a failed search
    (``data`` None, nothing in :func:`search_paths`, no download asked) falls back to
    :func:`load_sample`, warning with :class:`SampleDataWarning` (printed to stderr by default)
    and returning an object whose ``source`` is ``"sample"``. A ``data`` folder that does not
    exist, corrupt files and failed downloads raise as in :func:`load_cifar10`, so a typo never
    silently swaps in the sample.
    """
    _check_options(protocol, val_size)
    if data is not None or download:
        return load_cifar10(data, protocol=protocol, val_size=val_size, download=download)
    try:
        return load_cifar10(protocol=protocol, val_size=val_size)
    except FileNotFoundError as exc:
        warnings.warn(
            "Using the small CIFAR-10 sample shipped with cbn, because the full data set was "
            f"not found (the sample's fixed train/val/test split replaces protocol={protocol!r}; "
            f"results are not comparable with the full data set).\n{exc}",
            SampleDataWarning,
            stacklevel=2,
        )
        return load_sample()

"""Writing files that a crash or a concurrent reader must never see half-written, and values
made ready for strict JSON: the one atomic writer and the one JSON helper of cbn, used by
checkpoints, saved networks, example records, searches and reports."""
from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]
"""A file-system path: a ``str`` or any ``os.PathLike`` (``pathlib.Path``)."""


def cache_dir() -> Path:
    """cbn's cache folder (downloads, tuned thresholds): ``$XDG_CACHE_HOME/cbn``, else
    ``~/.cache/cbn``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cbn"


def user_path(path: PathLike) -> str:
    """``path`` as the file system sees it, with a leading ``~`` or ``~user`` expanded to that
    home folder as a shell would: every file cbn reads or writes by a name the user gave goes
    through here, so that a file saved as ``~/net.npz`` is found by the same name."""
    return os.path.expanduser(os.fspath(path))


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(f)`` (``f`` a binary file object), atomically.

    The data goes to a temporary file in the same folder (created if missing), is flushed
    to disk, and replaces ``path`` in one ``os.replace``: a crash at any moment leaves
    either the previous file or the new one, never a mix. (A crash mid-write can leave a
    stray ``.<name>.*.tmp`` file beside it, which is safe to delete.) The file gets the mode
    a plain ``open`` gives a new file (0666 less the umask). An OSError that names no file
    (a flush to a full disk) is given ``path`` as its ``filename``.

    Parameters
    ----------
    path : str or os.PathLike
        Exactly the name written (no suffix added; a leading ``~`` expanded, see
        :func:`user_path`).
    write : callable
        Called once with the open temporary file.
    """
    path = user_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_beside(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
            exc.filename = path  # a failed flush (disk full) names no file by itself
        raise
    _fsync_folder(folder)


def atomic_savez(path: PathLike, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` (exactly that name, no
    suffix added), atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_ready(value, *, strict: bool = True):
    """``value`` as JSON gives it back: tuples as lists, numpy scalars as Python ones, keys
    as strings; with ``strict``, non-finite floats (a diverged loss) as None, so the text is
    strict JSON (else they stay, written as NaN/Infinity)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if not strict or math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, strict=strict) for v in value]
    return value


def _create_beside(folder: str, name: str) -> Tuple[int, str]:
    """A new ``.<name>.<random>.tmp`` in ``folder``, created as ``open`` would (mode 0666, the
    kernel applying the umask); mkstemp's 0600 would make saved files private."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {os.path.join(folder, name)}")


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

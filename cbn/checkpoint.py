"""Writing arrays to disk safely: atomic ``.npz`` files (no pickle)."""
from __future__ import annotations

import os
import tempfile
from typing import Union

import numpy as np


def atomic_savez(path: Union[str, os.PathLike], **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` via a temporary file in the
    same folder and ``os.replace``, so readers see either the old file or the new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

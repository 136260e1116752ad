"""Dict-like views of a network's named arrays that copy on assignment."""
from __future__ import annotations

from typing import Dict, Iterator, MutableMapping

import numpy as np

from . import _validate as check


class LiveArrays(MutableMapping):
    """A dict-like view of named arrays owned by a network: reading gives the live array,
    assigning copies the value into it (same shape, finite), so the network always computes
    with what the mapping shows. Names cannot be added or removed."""

    def __init__(self, arrays: Dict[str, np.ndarray], what: str) -> None:
        self._arrays = arrays
        self._what = what

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __setitem__(self, name: str, value) -> None:
        if name not in self._arrays:
            raise KeyError(f"no {self._what} named {name!r}; names: {list(self._arrays)}")
        target = self._arrays[name]
        value = check.real_array(name, value)
        if value.shape != target.shape:
            raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        check.running_stat(name, value)
        target[...] = value

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{self._what}s of a network cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array{v.shape}" for k, v in self._arrays.items()) + "}"

"""What cbn's tests and benchmarks look at inside a network, in one documented place.

Not part of the stable API: these views follow the implementation (how plans are cached,
how gradients are laid out, what the tuner remembers) and change with it. Code that uses
cbn needs none of them.
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from . import tune
from .architecture import CachedPlan
from .network import Network


def cached_plans(net: Network) -> Dict[int, CachedPlan]:
    """The network's cached plans by capacity, least recently used first (a copy of the
    cache's index; the plans are the live ones)."""
    return dict(net._workspace.plans)


def gradients(net: Network) -> Mapping[str, np.ndarray]:
    """The gradient of the last backward pass by parameter name (``W1, b1, ...``): live views
    into ``net.flat_grad``, which the next backward pass overwrites."""
    return dict(net._grads)


def forget_tuning() -> None:
    """Make this process look new to ``cbn.tune``: no thresholds applied yet, no cache file
    warned about (the next plan reads or measures them again)."""
    with tune._lock:
        tune._done.clear()
        tune._warned.clear()

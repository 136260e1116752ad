"""An exponential moving average of a network's parameters over the steps of ``fit``
(``fit(..., ema=cbn.EMA(decay))``), as timm's ``ModelEmaV2`` keeps one: after every step,
for every parameter p and every batch-norm running statistic (timm's "buffers")::

    avg = avg + (1 - decay) (p - avg)          (torch's lerp: decay avg + (1 - decay) p)

starting from the network as the run begins. When the run has made all its steps, the
network takes the averages; with ``precise_bn`` > 0 its running statistics are then
recomputed over that many training batches for the averaged weights (``Network.precise_bn``)
instead of taking the averaged statistics, which no set of weights produced.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from . import _ops
from . import _validate as check

__all__ = ["EMA"]


@dataclass(frozen=True)
class EMA:
    """The moving average of the weights of a run of ``fit``.

    Parameters
    ----------
    decay : in (0, 1): the share of the average kept at each step (timm: 0.9998; about
        1 / (1 - decay) steps are averaged, so 0.999 suits runs of thousands of steps).
    precise_bn : batches of the run's batch size over which the averaged network's
        batch-norm statistics are recomputed at the end (0: the running statistics are
        averaged like the weights, as timm does).
    every : update the average after every this many steps only (the decay applies per
        update: ``decay ** every`` keeps the horizon of ``decay`` at every step), for large
        networks on which a pass over the parameters each step costs too much.

    The history's last point scores the averaged network, earlier points the live one. The
    average is part of the run's checkpoints, so a resumed run averages as the uninterrupted
    one. A run that a callback stops early keeps its live weights.
    """

    decay: float = 0.999
    precise_bn: int = 0
    every: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay", check.real("decay", self.decay, low=0.0, high=1.0,
                                                     low_open=True, high_open=True))
        object.__setattr__(self, "precise_bn", check.integer("precise_bn", self.precise_bn,
                                                             low=0))
        object.__setattr__(self, "every", check.integer("every", self.every, low=1))

    def config(self) -> dict:
        """JSON-ready arguments (part of a run's checkpoint signature)."""
        config = dict(decay=self.decay, precise_bn=self.precise_bn)
        if self.every != 1:
            config["every"] = self.every
        return config

    def averager(self, net) -> "Averager":
        """The average of ``net``'s parameters and running statistics, started at their
        current values."""
        return Averager(self, net)


def ema(value):
    """``value`` as an ``EMA``: an EMA, a decay in (0, 1) (a number), or None/0 (none)."""
    if value is None or isinstance(value, EMA):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"ema must be a cbn.EMA, a decay in (0, 1) or None, got {value!r}")
    decay = check.real("ema", value, low=0.0, high=1.0, high_open=True)
    return None if decay == 0 else EMA(decay)


class Averager:
    """The running average of one network: ``state`` (the flat parameters, then each running
    statistic, in the network's dtype: what a checkpoint keeps), updated in place without
    allocating."""

    def __init__(self, spec: EMA, net) -> None:
        live: List[np.ndarray] = [net.flat_params, *net.running_stats.values()]
        self.spec, self.net = spec, net
        self.state = np.concatenate([a.reshape(-1) for a in live]).astype(net.dtype)
        self._share = 1.0 - spec.decay
        self._every = spec.every
        start, pairs = 0, []
        for a in live:
            pairs.append((self.state[start:start + a.size], a.reshape(-1)))
            start += a.size
        self._pairs: Tuple[Tuple[np.ndarray, np.ndarray], ...] = tuple(pairs)

    def update(self, step: int) -> None:
        """After step ``step`` (1-based): avg += (1 - decay) (live - avg) for every
        parameter and running statistic, when ``step`` is a multiple of ``every``."""
        if step % self._every:
            return
        for avg, live in self._pairs:
            _ops.lerp(avg, live, self._share)

    def load(self, state: np.ndarray, fail) -> None:
        """Continue from a checkpoint's ``state``; ``fail(message)`` makes the error."""
        if state is None or state.shape != self.state.shape or not np.isfinite(state).all():
            raise fail(f"ema must be finite with shape {self.state.shape}")
        np.copyto(self.state, state)

    def apply(self) -> None:
        """Give the network the averages (its running statistics too, unless ``precise_bn``
        recomputes them afterwards)."""
        for avg, live in self._pairs:
            np.copyto(live, avg)

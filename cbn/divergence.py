"""Divergence: the error training raises when values go NaN or infinite, and the guard that
keeps the last good state to roll back to."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np

from . import _ops
from .history import History

if TYPE_CHECKING:
    from .network import Network

SNAPSHOT_EVERY = 50  # steps between copies of the parameters kept for divergence recovery


class DivergenceError(FloatingPointError):
    """Training produced NaN or inf. When this is raised the network holds the last good state:
    a snapshot of parameters and running statistics at most ``SNAPSHOT_EVERY`` steps old, taken
    only after checking that every value in it was finite.

    Attributes: ``step`` (0-based index of the update at which it was detected), ``lr`` (its
    learning rate), ``loss`` (its batch loss), ``restored_step`` (updates contained in the
    restored state), ``reason`` (what went non-finite) and ``history`` (the ``History`` up to
    that point)."""

    def __init__(self, step: int, lr: float, loss: float, restored_step: int,
                 reason: str = "the batch loss or the updated parameters") -> None:
        self.step, self.lr, self.loss, self.restored_step = step, lr, loss, restored_step
        self.reason = reason
        self.history: Optional[History] = None
        super().__init__(
            f"training diverged (detected at step {step}, learning rate {lr:.3g}): {reason} "
            f"became NaN or infinite (batch loss {loss}); parameters restored to those after "
            f"step {restored_step}. Lower the learning rate (eta_max) or check the input scaling.")


def _copy_state(net: "Network", into: Dict[str, np.ndarray]) -> None:
    """Copy the network's parameters and running statistics into preallocated arrays."""
    for name, value in list(net.params.items()) + list(net.running_stats.items()):
        np.copyto(into[name], value)
    into["stats_seen"][...] = net.stats_seen


class DivergenceGuard:
    """The last good state of a network: a preallocated copy refreshed (without allocating)
    every ``SNAPSHOT_EVERY`` steps, only after checking every value in it is finite."""

    def __init__(self, net: "Network") -> None:
        self.net = net
        self.snapshot = net.state_dict()
        self.step = 0

    def diverge(self, step: int, lr: float, loss: float, reason: str,
                history: History) -> None:
        """Restore the last good snapshot and raise DivergenceError."""
        self.net.load_state_dict(self.snapshot)
        error = DivergenceError(step, lr, loss, self.step, reason)
        error.history = history
        raise error

    def diverge_in_step(self, step: int, lr, loss: float, forward_finite: bool,
                        history: History) -> None:
        """Diverge at the first step that made something non-finite, ``step`` being the one
        just run (``lr``: the schedule, for the rate of the step reported). A non-finite
        forward pass (NaN loss) updates nothing, so weights found non-finite then were made by
        the step before, whose fused update does not scan them: the step reported is the same
        whether or not ``check`` ran after that step (checkpoint_every cannot move it)."""
        if math.isnan(loss) and step > 0 and not _ops.all_finite(self.net.flat_params):
            step, reason = step - 1, "the updated parameters"
        elif not forward_finite:
            reason = "a batch-norm statistic or a hidden activation"
        else:
            reason = "the batch loss or the updated parameters"
        self.diverge(step, lr.lr(step), loss, reason, history)

    def check(self, step: int, lr: float, loss: float, history: History) -> None:
        """Diverge if a weight or a running statistic is not finite (``step`` updates made).
        Called before anything keeps the state. Every step checks its loss and the small
        parameters; a weight that is not finite makes the next loss NaN, and this catches
        the rest before a snapshot."""
        if not _ops.all_finite(self.net.flat_params):
            self.diverge(step - 1, lr, loss, "the updated parameters", history)
        for value in self.net.running_stats.values():
            if not _ops.all_finite(value):
                self.diverge(step - 1, lr, loss, "the batch-norm running statistics", history)

    def keep(self, step: int, lr: float, loss: float, history: History) -> None:
        """Check the state after ``step`` updates, then make it the snapshot."""
        self.check(step, lr, loss, history)
        self.keep_unchecked(step)

    def keep_unchecked(self, step: int) -> None:
        _copy_state(self.net, self.snapshot)
        self.step = step

"""Cyclical learning rates (Smith, 2017) with the formulas of PyTorch's ``CyclicLR``.

The learning rate is a pure function of the step ``t`` (the number of updates already
made), so a run can resume anywhere and the whole curve can be drawn in advance.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _validate as check

MODES = ("triangular", "triangular2", "exp_range")
MAX_STEP = 2 ** 53  # steps are counted exactly in float arithmetic up to here


class CyclicLR:
    """Cyclical learning rate between ``eta_min`` and ``eta_max``.

    Parameters
    ----------
    eta_min, eta_max : float
        Lower and upper learning rates (PyTorch's ``base_lr`` and ``max_lr``), 0 <= eta_min <= eta_max.
    step_size : int
        Steps from eta_min up to eta_max (the course's n_s; PyTorch's ``step_size_up``).
    mode : "triangular", "triangular2" or "exp_range"
        ``triangular``: the course's schedule, the same triangle every cycle.
        ``triangular2``: the amplitude halves each cycle.
        ``exp_range``: the amplitude is scaled by ``gamma ** t``.
    gamma : float
        Decay of ``exp_range`` per step, 0 < gamma <= 1.
    step_size_down : int or None
        Steps from eta_max back down (defaults to ``step_size``).

    With ``mode="triangular"`` and equal steps up and down this is exactly the course's
    eta_t = eta_min + (t - 2 l n_s) / n_s (eta_max - eta_min) on the way up, and
    eta_max - (t - (2 l + 1) n_s) / n_s (eta_max - eta_min) on the way down.
    """

    def __init__(self, eta_min: float, eta_max: float, step_size: int, mode: str = "triangular",
                 *, gamma: float = 1.0, step_size_down: Optional[int] = None) -> None:
        self.eta_min = check.real("eta_min", eta_min, low=0.0)
        self.eta_max = check.real("eta_max", eta_max, low=0.0)
        if self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({eta_min}) must not exceed eta_max ({eta_max})")
        self.step_size = check.integer("step_size", step_size, low=1)
        self.step_size_down = (self.step_size if step_size_down is None
                               else check.integer("step_size_down", step_size_down, low=1))
        self.mode = check.choice("mode", mode, MODES)
        self.gamma = check.real("gamma", gamma, low=0.0, high=1.0, low_open=True)

    @property
    def cycle_length(self) -> int:
        """Steps in one full cycle (up and down): 2 n_s for the course's schedule."""
        return self.step_size + self.step_size_down

    def lr(self, step: int) -> float:
        """The learning rate used for update number ``step`` (0-based)."""
        t = check.integer("step", step, low=0, high=MAX_STEP)
        total = self.cycle_length
        ratio = self.step_size / total
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        if x <= ratio:
            factor = x / ratio
        else:
            factor = (x - 1) / (ratio - 1)
        height = (self.eta_max - self.eta_min) * factor
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 0.5 ** (cycle - 1)  # underflows to 0 (2.0 ** 1024 would overflow)
        else:
            scale = self.gamma ** t
        return self.eta_min + height * scale

    __call__ = lr

    def curve(self, steps: int) -> np.ndarray:
        """Learning rates of updates 0 .. steps-1, float64 of shape (steps,)."""
        steps = check.integer("steps", steps, low=0)
        return np.array([self.lr(t) for t in range(steps)], dtype=np.float64)

    def state_dict(self) -> dict:
        """The constructor arguments (the schedule has no other state)."""
        return dict(eta_min=self.eta_min, eta_max=self.eta_max, step_size=self.step_size,
                    mode=self.mode, gamma=self.gamma, step_size_down=self.step_size_down)

    def __repr__(self) -> str:
        return (f"CyclicLR(eta_min={self.eta_min:g}, eta_max={self.eta_max:g}, "
                f"step_size={self.step_size}, mode={self.mode!r})")


class ConstantLR:
    """A fixed learning rate, for runs counted in epochs."""

    def __init__(self, lr: float) -> None:
        self.value = check.real("lr", lr, low=0.0)

    def lr(self, step: int) -> float:
        """The learning rate of update ``step`` (always the same)."""
        check.integer("step", step, low=0)
        return self.value

    __call__ = lr

    def curve(self, steps: int) -> np.ndarray:
        """Learning rates of updates 0 .. steps-1."""
        return np.full(check.integer("steps", steps, low=0), self.value)

    def state_dict(self) -> dict:
        return dict(lr=self.value)

    def __repr__(self) -> str:
        return f"ConstantLR({self.value:g})"

"""Learning-rate schedules with the formulas of PyTorch's ``torch.optim.lr_scheduler``:
cyclical (Smith, 2017), constant, cosine annealing and one-cycle.

Every schedule is a pure function ``lr(t)`` of the step ``t`` (the number of updates already
made), so a run can resume anywhere and the whole curve can be drawn in advance. ``lr(t)``
equals PyTorch's learning rate after ``t`` calls of its scheduler's ``step()``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from . import _validate as check

MODES = ("triangular", "triangular2", "exp_range")
ANNEAL_STRATEGIES = ("cos", "linear")
MAX_STEP = 2 ** 53  # steps are counted exactly in float arithmetic up to here


class Schedule:
    """Base class: ``lr(step)``, the curve, and the state (the constructor arguments)."""

    def lr(self, step: int) -> float:
        """The learning rate used for update number ``step`` (0-based)."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.lr(step)

    def curve(self, steps: int) -> np.ndarray:
        """Learning rates of updates 0 .. steps-1, float64 of shape (steps,)."""
        steps = check.integer("steps", steps, low=0)
        return np.array([self.lr(t) for t in range(steps)], dtype=np.float64)

    def state_dict(self) -> dict:
        """The constructor arguments (a schedule has no other state)."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping) -> None:
        """Take the arguments of ``state`` (as made by ``state_dict``), validated as the
        constructor does; nothing changes if they are wrong."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{type(self).__name__} state: missing keys {missing}, "
                             f"unexpected keys {extra}")
        self.__dict__.update(type(self)(**state).__dict__)


class CyclicLR(Schedule):
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

    def state_dict(self) -> dict:
        """The constructor arguments (the schedule has no other state)."""
        return dict(eta_min=self.eta_min, eta_max=self.eta_max, step_size=self.step_size,
                    mode=self.mode, gamma=self.gamma, step_size_down=self.step_size_down)

    def __repr__(self) -> str:
        return (f"CyclicLR(eta_min={self.eta_min:g}, eta_max={self.eta_max:g}, "
                f"step_size={self.step_size}, mode={self.mode!r})")


class ConstantLR(Schedule):
    """A fixed learning rate, for runs counted in epochs."""

    def __init__(self, lr: float) -> None:
        self.value = check.real("lr", lr, low=0.0)

    def lr(self, step: int) -> float:
        """The learning rate of update ``step`` (always the same)."""
        check.integer("step", step, low=0)
        return self.value

    def curve(self, steps: int) -> np.ndarray:
        """Learning rates of updates 0 .. steps-1."""
        return np.full(check.integer("steps", steps, low=0), self.value)

    def state_dict(self) -> dict:
        """The constructor argument."""
        return dict(lr=self.value)

    def __repr__(self) -> str:
        return f"ConstantLR({self.value:g})"


class CosineAnnealingLR(Schedule):
    """Cosine annealing from ``eta_max`` down to ``eta_min`` over ``T_max`` steps
    (Loshchilov and Hutter, 2017, without restarts), as PyTorch's ``CosineAnnealingLR``::

        lr(t) = eta_min + (eta_max - eta_min) (1 + cos(pi t / T_max)) / 2

    Past ``T_max`` the cosine goes on, back up to eta_max at 2 T_max, as in PyTorch (whose
    recursive form agrees with this closed form up to rounding).

    Parameters
    ----------
    eta_max : float
        Rate at step 0 (PyTorch's ``lr`` of the optimizer), >= eta_min.
    eta_min : float
        Rate at step T_max, >= 0.
    T_max : int
        Steps of the half period, >= 1.
    """

    def __init__(self, eta_max: float, eta_min: float, T_max: int) -> None:
        self.eta_max = check.real("eta_max", eta_max, low=0.0)
        self.eta_min = check.real("eta_min", eta_min, low=0.0)
        if self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({eta_min}) must not exceed eta_max ({eta_max})")
        self.T_max = check.integer("T_max", T_max, low=1)

    def lr(self, step: int) -> float:
        """The learning rate used for update number ``step`` (0-based)."""
        t = check.integer("step", step, low=0, high=MAX_STEP)
        return (self.eta_min
                + (self.eta_max - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2)

    def state_dict(self) -> dict:
        """The constructor arguments."""
        return dict(eta_max=self.eta_max, eta_min=self.eta_min, T_max=self.T_max)

    def __repr__(self) -> str:
        return (f"CosineAnnealingLR(eta_max={self.eta_max:g}, eta_min={self.eta_min:g}, "
                f"T_max={self.T_max})")


class OneCycleLR(Schedule):
    """The one-cycle policy (Smith and Topin, 2019) with PyTorch's ``OneCycleLR`` formulas.

    The rate warms up from ``initial = max_lr / div_factor`` to ``max_lr`` until step
    ``pct_start * total_steps - 1``, then anneals down to ``initial / final_div_factor`` at
    step ``total_steps - 1``. With ``three_phase=True`` it first comes back down to
    ``initial`` at step ``2 pct_start total_steps - 2`` and anneals to the minimum after.
    Within a phase from rate a to rate b, at fraction p of the phase::

        "cos":    b + (a - b) (1 + cos(pi p)) / 2
        "linear": a + (b - a) p

    Steps 0 .. total_steps are defined, as in PyTorch (its scheduler steps once more after
    the last update); later ones raise ValueError. PyTorch's momentum cycling
    (``cycle_momentum``) is not part of a schedule here: optimizers keep fixed momenta.

    Parameters
    ----------
    max_lr : float
        Peak rate, > 0.
    total_steps : int
        Updates in the run, >= 1.
    pct_start : float
        Fraction of the steps spent warming up, in [0, 1].
    anneal_strategy : "cos" or "linear"
    div_factor : float
        ``max_lr / initial``, > 0.
    final_div_factor : float
        ``initial / final rate``, > 0.
    three_phase : bool
        Warm up, come back down symmetrically, then anneal (fast.ai's variant).
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> None:
        self.max_lr = check.real("max_lr", max_lr, low=0.0, low_open=True)
        self.total_steps = check.integer("total_steps", total_steps, low=1, high=MAX_STEP)
        self.pct_start = check.real("pct_start", pct_start, low=0.0, high=1.0)
        self.anneal_strategy = check.choice("anneal_strategy", anneal_strategy,
                                            ANNEAL_STRATEGIES)
        self.div_factor = check.real("div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = check.real("final_div_factor", final_div_factor, low=0.0,
                                           low_open=True)
        if not isinstance(three_phase, (bool, np.bool_)):
            raise TypeError(f"three_phase must be True or False, got {three_phase!r}")
        self.three_phase = bool(three_phase)
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        warm_end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            down_end = float(2 * self.pct_start * self.total_steps) - 2
            self._phases = ((warm_end, initial, self.max_lr),
                            (down_end, self.max_lr, initial),
                            (self.total_steps - 1, initial, final))
        else:
            self._phases = ((warm_end, initial, self.max_lr),
                            (self.total_steps - 1, self.max_lr, final))
        start = 0.0
        for i, (end, _, _) in enumerate(self._phases):
            if end == start:  # PyTorch divides by zero on such a phase
                raise ValueError(
                    f"pct_start={pct_start} with total_steps={total_steps} leaves phase {i + 1} "
                    "of the one-cycle schedule without steps; change either")
            start = end

    def lr(self, step: int) -> float:
        """The learning rate used for update number ``step`` (0-based, <= total_steps)."""
        t = check.integer("step", step, low=0, high=self.total_steps)
        start = 0.0
        for i, (end, a, b) in enumerate(self._phases):
            if t <= end or i == len(self._phases) - 1:
                pct = (t - start) / (end - start)
                if self.anneal_strategy == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (b - a) * pct + a
            start = end
        raise AssertionError("unreachable: the last phase always answers")

    def state_dict(self) -> dict:
        """The constructor arguments."""
        return dict(max_lr=self.max_lr, total_steps=self.total_steps, pct_start=self.pct_start,
                    anneal_strategy=self.anneal_strategy, div_factor=self.div_factor,
                    final_div_factor=self.final_div_factor, three_phase=self.three_phase)

    def __repr__(self) -> str:
        return (f"OneCycleLR(max_lr={self.max_lr:g}, total_steps={self.total_steps}, "
                f"pct_start={self.pct_start:g}, anneal_strategy={self.anneal_strategy!r})")

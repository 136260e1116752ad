"""Small optimizers that follow fit's optimizer protocol (``bind``, ``step``, ``state_dict``,
``load_state_dict``, ``fused_momentum``), written here so fit's wiring is tested on its own."""
from __future__ import annotations

import math

import numpy as np


class TinyAdam:
    """Adam with PyTorch's update (bias-corrected, eps after the square root), allocation-free
    per step: every operation writes into preallocated buffers."""

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = self.v = self.scratch = None
        self.t = 0

    @property
    def fused_momentum(self):
        return None

    def bind(self, n_params: int, n_weights: int, dtype) -> None:
        if self.m is not None and self.m.size == n_params and self.m.dtype == dtype:
            return
        self.m, self.v, self.scratch = (np.zeros(n_params, dtype) for _ in range(3))
        self.t = 0

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.t += 1
        m, v, s = self.m, self.v, self.scratch
        m *= self.beta1
        np.multiply(grad, 1 - self.beta1, out=s)
        m += s
        v *= self.beta2
        np.multiply(grad, grad, out=s)
        s *= 1 - self.beta2
        v += s
        np.sqrt(v, out=s)
        s /= math.sqrt(1 - self.beta2 ** self.t)
        s += self.eps
        np.divide(m, s, out=s)
        s *= lr / (1 - self.beta1 ** self.t)
        theta -= s

    def state_dict(self) -> dict:
        return {"name": "TinyAdam", "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "step": self.t, "m": self.m.copy(), "v": self.v.copy()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != "TinyAdam":
            raise ValueError(f"not a TinyAdam state: {state.get('name')!r}")
        for key in ("m", "v"):
            value = np.asarray(state[key])
            if value.shape != self.m.shape or value.dtype != self.m.dtype \
                    or not np.isfinite(value).all():
                raise ValueError(f"{key} must be finite {self.m.dtype} of shape {self.m.shape}")
        np.copyto(self.m, state["m"])
        np.copyto(self.v, state["v"])
        self.t = int(state["step"])


class TinySGD:
    """Heavy-ball SGD that asks for fit's fused update: ``step`` must never run."""

    def __init__(self, momentum: float = 0.0) -> None:
        self.momentum = momentum

    @property
    def fused_momentum(self):
        return self.momentum

    def bind(self, n_params: int, n_weights: int, dtype) -> None:
        pass

    def step(self, theta, grad, lr) -> None:
        raise AssertionError("a fused optimizer's step must not be called")

    def state_dict(self) -> dict:
        return {"name": "TinySGD", "momentum": self.momentum, "step": 0}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != "TinySGD":
            raise ValueError(f"not a TinySGD state: {state.get('name')!r}")

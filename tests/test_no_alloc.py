"""A warmed-up training step allocates nothing: neither Plan.train_step nor the steady state of
an epoch of fit.

tracemalloc sees every Python object and every NumPy buffer (NumPy reports its data
allocations to it). A step that allocated even one small array would raise the traced peak
by the array's size plus its ~110-byte header. The loop itself creates a few transient Python
objects (the tuple a step returns, a float): the peak rises by ~100 bytes over steps of
Plan.train_step and ~200 over fit's loop (CPython 3.11). The bound sits between: a step that
made one per-feature vector of 50 float64 values (~510 bytes) would exceed it, as the last
test checks; anything a real step could need (a batch buffer, its labels) is larger.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cbn import ConstantLR, Network, fit

SLACK = 320  # bytes above the starting level the traced peak may reach during the steps


def data(n=2000, d=300, k=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    y = rng.integers(0, k, n).astype(np.int64)

    class Norm:
        mean = X.mean(axis=0)
        std = X.std(axis=0) + 1

    return X, y, Norm


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_warm_plan_train_step_allocates_nothing(batch_norm, dtype, momentum):
    X, y, norm = data()
    net = Network(300, [50, 30], 10, batch_norm=batch_norm, dtype=dtype, seed=0)
    src, shift, scale = net._source(X, norm)
    plan = net._plan(100)
    plan.set_data(src, y, np.arange(2000, dtype=np.int64), shift, scale)
    plan.set_velocity(np.zeros_like(net.flat_params) if momentum else None)
    for b in range(3):
        plan.train_step(b * 100, 100, 0.01, 0.005, momentum, b == 0)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for b in range(3, 20):
            plan.train_step(b * 100, 100, 0.01, 0.005, momentum, False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - start <= SLACK, f"the steps allocated up to {peak - start} bytes"


class WatchedLR(ConstantLR):
    """A constant schedule that, asked for the rate of steps ``first`` and ``last``, notes the
    traced memory there: fit asks once per step, so the window covers whole steps of fit's
    loop. The marks go into a preallocated array so that taking them allocates nothing."""

    def __init__(self, lr: float, first: int, last: int) -> None:
        super().__init__(lr)
        self.first, self.last = first, last
        self.marks = np.full(2, -1, np.int64)  # traced bytes at ``first``, peak at ``last``

    def lr(self, step: int) -> float:
        if step == self.first:
            self.marks[0] = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        elif step == self.last:
            self.marks[1] = tracemalloc.get_traced_memory()[1]
        return super().lr(step)

    @property
    def growth(self) -> int:
        assert (self.marks >= 0).all(), "the watched steps were not reached"
        return int(self.marks[1] - self.marks[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_epoch_steady_state_allocates_nothing(dtype):
    X, y, norm = data()
    net = Network(300, [50, 50], 10, dtype=dtype, seed=0)
    # 20 steps per epoch; watch steps 25..38 of the second epoch, clear of its start and end.
    schedule = WatchedLR(0.01, first=25, last=38)
    tracemalloc.start()
    try:
        fit(net, X, y, X_val=X[:300], y_val=y[:300], lam=0.005, batch_size=100,
            schedule=schedule, epochs=2, seed=0, normalization=norm, progress=False)
    finally:
        tracemalloc.stop()
    assert schedule.growth <= SLACK, f"fit's steps allocated up to {schedule.growth} bytes"


def test_the_watch_sees_one_small_vector_per_step():
    """The bound is tight enough to catch one small vector per step."""
    X, y, norm = data()
    net = Network(300, [50, 50], 10, dtype=np.float32, seed=0)

    class Leaky(WatchedLR):
        def lr(self, step):
            self.scratch = np.zeros(50)  # what an allocating step would do
            return super().lr(step)

    schedule = Leaky(0.01, first=25, last=38)
    tracemalloc.start()
    try:
        fit(net, X, y, lam=0.005, batch_size=100, schedule=schedule, epochs=2, seed=0,
            normalization=norm, progress=False)
    finally:
        tracemalloc.stop()
    assert schedule.growth > SLACK

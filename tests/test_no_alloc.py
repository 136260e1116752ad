"""A warmed-up training step allocates nothing: neither Plan.train_step nor the steady state of
an epoch of fit.

tracemalloc sees every Python object and every NumPy buffer (NumPy reports its data
allocations to it). A step that allocated even one small array would raise the traced peak
by the array's size plus its ~110-byte header. The loop itself creates a few transient Python
objects (the tuple a step returns, a float): the peak rises by ~100 bytes over steps of
Plan.train_step and ~200 over fit's loop (CPython 3.11). The bound sits between: a step that
made one per-feature vector of 50 float64 values (~510 bytes) would exceed it, as the last
test checks; anything a real step could need (a batch buffer, its labels) is larger.

tracemalloc counts every thread's allocations, so the measurements run in a fresh
interpreter with the garbage collector paused: threads and garbage left by other tests
would otherwise allocate inside the measured window.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from typing import Dict

import numpy as np
import pytest

from cbn import ConstantLR, Network, fit
from tiny_optim import TinyAdam

SLACK = 320  # bytes above the starting level the traced peak may reach during the steps
DTYPES = ("float32", "float64")


def data(n=2000, d=300, k=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, d), dtype=np.uint8)
    y = rng.integers(0, k, n).astype(np.int64)

    class Norm:
        mean = X.mean(axis=0)
        std = X.std(axis=0) + 1

    return X, y, Norm


ARCHITECTURES = {  # name: Network options, each op kind in at least one
    "bn": dict(batch_norm=True), "no_bn": dict(batch_norm=False),
    "bn_after_dropout": dict(bn_placement="after", dropout=0.3),
    "no_bn_dropout": dict(batch_norm=False, dropout=[0.5, 0.2]),
    "layer_gelu_residual": dict(norm="layer", activation="gelu", residual=True, dropout=0.2),
}


def plan_step_growth(arch: str, dtype: str, momentum: float, grads_only: bool = False) -> int:
    """Traced-peak growth in bytes over 17 warmed-up Plan.train_step (or grad_step) calls."""
    X, y, norm = data()
    net = Network(300, [50, 50], 10, dtype=np.dtype(dtype), seed=0, **ARCHITECTURES[arch])
    src, shift, scale = net.prepare_input(X, norm)
    plan = net.plan(100)
    plan.set_data(src, y, np.arange(2000, dtype=np.int64), shift, scale)
    plan.set_velocity(np.zeros_like(net.flat_params) if momentum else None)
    plan.set_dropout(5, 0)
    dropout = net.has_dropout

    def step(b):
        if grads_only:
            plan.grad_step(b * 100, 100, 0.005, b == 0, dropout, b)
        else:
            plan.train_step(b * 100, 100, 0.01, 0.005, momentum, b == 0, dropout, b)
    for b in range(3):
        step(b)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for b in range(3, 20):
            step(b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - start


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


class LeakyLR(WatchedLR):
    """What a step allocating one small vector would look like to the watch."""

    def lr(self, step: int) -> float:
        self.scratch = np.zeros(50)
        return super().lr(step)


def fit_steady_state_growth(dtype: str, schedule_class=WatchedLR, arch: str = "bn",
                            optimizer=None) -> int:
    """Traced-peak growth in bytes over steps 25..38 of a 2-epoch fit (20 steps per epoch,
    so the window is clear of the epoch's start, end and evaluation)."""
    X, y, norm = data()
    net = Network(300, [50, 50], 10, dtype=np.dtype(dtype), seed=0, **ARCHITECTURES[arch])
    schedule = schedule_class(0.01, first=25, last=38)
    tracemalloc.start()
    try:
        fit(net, X, y, X_val=X[:300], y_val=y[:300], lam=0.005, batch_size=100,
            schedule=schedule, epochs=2, seed=0, normalization=norm, progress=False,
            optimizer=optimizer)
    finally:
        tracemalloc.stop()
    return schedule.growth


def measure_all() -> Dict[str, int]:
    """Every measurement of this file, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    results = {}
    for arch in ARCHITECTURES:
        for dtype in DTYPES:
            for momentum in (0.0, 0.9):
                results[f"plan {arch} {dtype} {momentum}"] = plan_step_growth(arch, dtype,
                                                                              momentum)
            results[f"grads {arch} {dtype}"] = plan_step_growth(arch, dtype, 0.0, True)
    for dtype in DTYPES:
        results[f"fit {dtype}"] = fit_steady_state_growth(dtype)
        results[f"fit adam dropout {dtype}"] = fit_steady_state_growth(
            dtype, arch="bn_after_dropout", optimizer=TinyAdam())
    results["leaky fit"] = fit_steady_state_growth("float32", LeakyLR)
    return results


@pytest.fixture(scope="module")
def growth() -> Dict[str, int]:
    # The child imports what this process imports (same path, made absolute), from the tests
    # folder: run from a checkout's root, "-c" would put the uncompiled source cbn/ first.
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    code = "import json, test_no_alloc as t; print(json.dumps(t.measure_all()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_warm_plan_train_step_allocates_nothing(growth, arch, dtype, momentum):
    bytes_ = growth[f"plan {arch} {dtype} {momentum}"]
    assert bytes_ <= SLACK, f"the steps allocated up to {bytes_} bytes"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_warm_grads_only_step_allocates_nothing(growth, arch, dtype):
    bytes_ = growth[f"grads {arch} {dtype}"]
    assert bytes_ <= SLACK, f"the steps allocated up to {bytes_} bytes"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_with_an_optimizer_and_dropout_allocates_nothing(growth, dtype):
    bytes_ = growth[f"fit adam dropout {dtype}"]
    assert bytes_ <= SLACK, f"fit's steps allocated up to {bytes_} bytes"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_epoch_steady_state_allocates_nothing(growth, dtype):
    bytes_ = growth[f"fit {dtype}"]
    assert bytes_ <= SLACK, f"fit's steps allocated up to {bytes_} bytes"


def test_the_watch_sees_one_small_vector_per_step(growth):
    """The bound is tight enough to catch one small vector per step."""
    assert growth["leaky fit"] > SLACK

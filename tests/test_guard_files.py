"""The files cbn reads, damaged or from another version, and hyper-parameters that do not fit
a dtype: every version field is checked, the tuned-threshold cache is optional whatever it
holds, and each error names its real cause."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import cbn
from cbn import Augment, CyclicLR, Network, _ops, fit, tune
from cbn.checkpoint import CheckpointError, load_checkpoint, read_npz, with_checksum
from cbn.optim import SGD, Adam, AdamW, check_state
from cbn.search_log import ResultsFile

CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 6))
Y = np.arange(20) % 3
RUN = dict(lam=0.0, batch_size=5, schedule=CyclicLR(1e-3, 0.1, 4), cycles=1, seed=0,
           progress=False)


def _rewrite(path: Path, arrays: dict, **changes) -> Path:
    """``arrays`` with ``changes``, checksum recomputed (a deliberate edit), saved at ``path``."""
    np.savez(path, **with_checksum({k: v for k, v in {**arrays, **changes}.items()
                                    if k != "checksum"}))
    return path


# -- values that do not fit the dtype they are used in -----------------------------------------

def test_augment_noise_that_overflows_the_dtype_is_refused_naming_noise():
    X32 = RNG.standard_normal((20, 3072)).astype(np.float32)
    y = np.arange(20) % 10
    for noise, message in [(1e39, "noise=1e\\+39 overflows float32"),
                           (1e38, "noise=1e\\+38 overflows float32"),
                           (1e-50, "noise=1e-50 is below the smallest normal float32")]:
        with pytest.raises(ValueError, match=message):
            fit(Network(3072, [5], 10, seed=0, dtype=np.float32), X32, y, lam=0.0,
                batch_size=10, schedule=0.01, epochs=1, augment=Augment(noise=noise),
                progress=False)
    assert Augment(noise=1e39).shape_for(3072, np.float64) == (3, 32, 32)
    assert Augment(noise=0.1).shape_for(3072, np.float32) == (3, 32, 32)


@pytest.mark.parametrize("optimizer, message", [
    (lambda: Adam(eps=1e-50), "eps=1e-50 is below the smallest normal float32"),
    (lambda: AdamW(eps=1e-40), "eps=1e-40 is below the smallest normal float32"),
    (lambda: Adam(beta2=0.99999999), "beta2=0.99999999 rounds to 1 in float32"),
    (lambda: Adam(beta1=0.999999999), "beta1=0.999999999 rounds to 1 in float32"),
    (lambda: SGD(momentum=0.999999999), "momentum=0.999999999 rounds to 1 in float32"),
    (lambda: SGD(momentum=1e-50), "momentum=1e-50 rounds to 0 in float32"),
])
def test_optimizer_hyper_parameters_that_do_not_fit_float32_are_refused_before_training(
        optimizer, message):
    net = Network(6, [5], 3, seed=0, dtype=np.float32)
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match=message):
        fit(net, X, Y, lam=0.0, batch_size=5, schedule=0.01, epochs=1,
            optimizer=optimizer(), progress=False)
    np.testing.assert_array_equal(net.flat_params, before)
    fit(Network(6, [5], 3, seed=0, dtype=np.float64), X, Y, lam=0.0, batch_size=5,
        schedule=0.01, epochs=1, optimizer=optimizer(), progress=False)


def test_a_rate_that_overflows_the_dtype_is_refused_naming_lr():
    opt = SGD(momentum=0.5)
    opt.bind(3, 0, np.float32)
    with pytest.raises(ValueError, match="lr=1e\\+39 overflows float32"):
        opt.step(np.zeros(3, np.float32), np.ones(3, np.float32), 1e39)
    assert opt.steps == 0


def _adam_state():
    opt = Adam()
    opt.bind(4, 2, np.float64)
    opt.step(np.zeros(4), np.arange(4.0), 0.1)
    return opt.state_dict()


@pytest.mark.parametrize("change, message", [
    ({"exp_avg_sq": -np.ones(4)}, "exp_avg_sq is a second moment and must be >= 0"),
    ({"exp_avg": np.full(4, np.nan)}, "exp_avg contains NaN"),
    ({"exp_avg_sq": np.zeros(3)}, "exp_avg_sq must have length 4"),
    ({"step": -1}, "step must be >= 0"),
])
def test_an_optimizer_state_out_of_range_is_refused(change, message):
    state = {**_adam_state(), **change}
    with pytest.raises(ValueError, match=message):
        Adam().load_state_dict(state)
    with pytest.raises(ValueError, match=message):
        check_state(state)


def test_check_state_names_buffers_as_told_and_knows_only_cbn_optimizers():
    with pytest.raises(ValueError, match="file_exp_avg_sq is a second moment"):
        check_state({**_adam_state(), "exp_avg_sq": -np.ones(4)}, lambda k: "file_" + k)
    with pytest.raises(ValueError, match="names no optimizer of cbn.optim"):
        check_state({"name": "Lion"})
    check_state(_adam_state())

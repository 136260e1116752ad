"""The CPU-dependent thresholds: measured once, cached per machine, off on request, and the
weight product's form never changes a result."""
import json

import numpy as np
import pytest

import cbn
from cbn import _ops, tune


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Tuning on, a fresh process-wide state, the built-in thresholds restored after."""
    monkeypatch.setenv("CBN_AUTOTUNE", "1")
    monkeypatch.setattr(tune, "_done", {})
    monkeypatch.setattr(tune, "_busy", lambda: False)
    monkeypatch.setattr(tune, "_wait", [0.0])
    yield tmp_path / "tune.json"
    _ops.set_transposed_from(tune.DEFAULTS["transposed_from"])
    _ops.set_sliced_from(tune.DEFAULTS["sliced_from"])


def test_thresholds_are_measured_once_then_read_from_the_cache(tuning, monkeypatch):
    found = tune.ensure(tuning)
    assert found["transposed_from"] in tune.ROWS + (tune.NEVER,)
    assert found["sliced_from"] in tune.INPUTS + (tune.NEVER, tune.DEFAULTS["sliced_from"])
    assert (_ops.transposed_from(), _ops.sliced_from()) == (found["transposed_from"],
                                                            found["sliced_from"])
    assert json.loads(tuning.read_text())[tune.machine_key()] == found

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr(tune, "measure_transposed_from", no_measuring)
    monkeypatch.setattr(tune, "_done", {})  # a new process: the file answers
    assert tune.ensure(tuning) == found


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": {"transposed_from": 0}}',
                                     '{"KEY": {"transposed_from": true, "sliced_from": 2}}'])
def test_a_damaged_cache_gives_the_built_ins_then_is_measured_again(tuning, monkeypatch,
                                                                    content):
    tuning.write_text(content.replace("KEY", tune.machine_key()))
    monkeypatch.setattr(tune, "measure_transposed_from", lambda: 200)
    monkeypatch.setattr(tune, "measure_sliced_from", lambda: 512)
    monkeypatch.setattr(tune, "_warned", set())
    with pytest.warns(tune.TuneCacheWarning, match=f"{tuning}: .*using the built-in"):
        assert tune.ensure(tuning) == tune.DEFAULTS
    assert (_ops.transposed_from(), _ops.sliced_from()) == tuple(tune.DEFAULTS.values())
    assert tune.machine_key() not in json.loads(tuning.read_text())
    monkeypatch.setattr(tune, "_done", {})  # the next process measures and keeps the result
    assert tune.ensure(tuning) == {"transposed_from": 200, "sliced_from": 512}
    assert json.loads(tuning.read_text())[tune.machine_key()]["sliced_from"] == 512


def test_a_busy_machine_is_not_measured_and_nothing_is_cached(tuning, monkeypatch):
    monkeypatch.setattr(tune, "_busy", lambda: True)
    monkeypatch.setattr(tune, "measure_transposed_from", lambda: 1 / 0)
    assert tune.ensure(tuning) == tune.DEFAULTS
    assert not tuning.exists()


def test_switched_off_it_keeps_the_built_in_thresholds(tuning, monkeypatch):
    monkeypatch.setenv("CBN_AUTOTUNE", "0")
    monkeypatch.setattr(tune, "measure_transposed_from", lambda: 1 / 0)
    assert tune.ensure(tuning) == tune.DEFAULTS
    assert not tuning.exists()


def test_the_machine_key_names_the_cpu_threads_and_blas_kernels():
    key = tune.machine_key()
    assert tune.cpu_name() in key and f"threads={_ops.threads()}" in key
    assert "OpenBLAS" in _ops.blas_config() and _ops.blas_config() in key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_forms_of_the_weight_product_agree(dtype):
    """Direct or transposed, the weight product and a whole training run agree to rounding
    (the forms sum in other orders at the edges of OpenBLAS's blocks)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1200, 300)).astype(dtype)
    y = rng.integers(0, 10, 1200)
    A, dS = X[:500], rng.standard_normal((500, 64)).astype(dtype)
    C, T = np.empty((300, 64), dtype), np.empty((300, 64), dtype)
    _ops.weight_product(A, dS, C)
    _ops.weight_product(A, dS, T, np.empty(300 * 64, dtype))
    exact = A.T.astype(np.float64) @ dS
    for got in (C, T):
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-3)
    runs = []
    try:
        for rows in (1, 10 ** 9):
            _ops.set_transposed_from(rows)
            net = cbn.Network(300, [64, 32], 10, seed=0, dtype=dtype)
            cbn.fit(net, X, y, lam=1e-3, batch_size=600, epochs=3, seed=0, progress=False,
                    schedule=cbn.CyclicLR(1e-3, 0.1, 3))
            runs.append(net.flat_params.copy())
    finally:
        _ops.set_transposed_from(tune.DEFAULTS["transposed_from"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-3 if dtype == np.float32 else 1e-9,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_thresholds_must_be_positive():
    for setter in (_ops.set_transposed_from, _ops.set_sliced_from):
        with pytest.raises(ValueError):
            setter(0)

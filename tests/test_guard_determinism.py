"""A seed fixes a run whatever the thread governor does: it switches threads only where the
run's own products give the same bits on one thread as on all of them."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cbn
from cbn import _ops, threads, tune
from test_reliability import run_python
from test_threads import flip_at_every_step

pytestmark = pytest.mark.skipif(not _ops.OPENMP, reason="built without OpenMP")


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """No earlier run to carry on from, no answer of an earlier probe."""
    monkeypatch.setattr(threads, "_last", {})
    monkeypatch.setattr(threads, "_neutral", {})


def data(n=400, d=300, dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, 10, n)


def train(X, y, dtype=np.float32, hidden=(128, 64), batch_size=100, **kwargs):
    """Products large enough for OpenBLAS to use its threads (a remainder batch too);
    returns the parameters and the history without its wall times."""
    net = cbn.Network(X.shape[1], list(hidden), 10, seed=1, dtype=dtype)
    history = cbn.fit(net, X, y, lam=1e-3, batch_size=batch_size,
                      schedule=cbn.CyclicLR(1e-3, 0.1, 8), cycles=1, seed=0, momentum=0.5,
                      progress=False, **kwargs)
    return net, {k: v for k, v in history.as_dict().items() if k != "wall_time"}


def without_governor(monkeypatch, run):
    monkeypatch.setenv("CBN_ADAPTIVE_THREADS", "0")
    try:
        return run()
    finally:
        monkeypatch.delenv("CBN_ADAPTIVE_THREADS")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_run_whose_products_round_otherwise_on_one_thread_never_switches(monkeypatch, dtype):
    X, y = data(n=450, dtype=dtype)
    args = dict(X_val=X[:100], y_val=y[:100], eval_every=2)
    with threadpool_limits(2, user_api="blas"):
        steady, steady_history = without_governor(monkeypatch, lambda: train(X, y, dtype, **args))
        seen = flip_at_every_step(monkeypatch)
        monkeypatch.setattr(threads.TeamGovernor, "_neutral", lambda self, key, dry_pass: False)
        net, history = train(X, y, dtype, **args)
        assert _ops.threads() == 2 and _ops.slice_threads() == 2
    assert seen == []
    np.testing.assert_array_equal(net.flat_params, steady.flat_params)
    assert history == steady_history


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_governed_run_matches_an_ungoverned_one_bit_for_bit(monkeypatch, dtype):
    """With the machine's own kernels: where they round by thread count (OpenBLAS's Haswell
    kernels), the probe keeps the run on two threads; elsewhere it switches, harmlessly."""
    X, y = data(n=450, dtype=dtype)
    with threadpool_limits(2, user_api="blas"):
        steady = without_governor(monkeypatch, lambda: train(X, y, dtype, X_val=X[:100],
                                                               y_val=y[:100], eval_every=2))
        seen = flip_at_every_step(monkeypatch)
        governed = train(X, y, dtype, X_val=X[:100], y_val=y[:100], eval_every=2)
    np.testing.assert_array_equal(governed[0].flat_params, steady[0].flat_params)
    np.testing.assert_array_equal(governed[0].running_stats["running_var1"],
                                  steady[0].running_stats["running_var1"])
    assert governed[1] == steady[1]
    [neutral] = threads._neutral.values()
    # The probe's one switch, then the run's where they are harmless.
    assert seen.count(1) > 3 if neutral else seen.count(1) == 1


def test_a_governed_evaluation_matches_an_ungoverned_one_bit_for_bit(monkeypatch):
    X, y = data(n=threads.GOVERNED_FROM * 256 + 100)  # 16 blocks of 256 rows and a remainder
    net = cbn.Network(300, [128, 64], 10, seed=1, dtype=np.float32)
    with threadpool_limits(2, user_api="blas"):
        steady = without_governor(monkeypatch, lambda: net.predict_proba(X))
        seen = flip_at_every_step(monkeypatch)
        governed = net.predict_proba(X)
    np.testing.assert_array_equal(governed, steady)
    [(key, ceiling)] = threads._neutral
    assert ceiling == 2 and 1 in seen


def test_the_probe_changes_no_state_of_the_network():
    X, y = data(n=250)
    net = cbn.Network(300, [64], 10, seed=1, dropout=0.2, dtype=np.float32)
    net.cost_and_grads(X[:50], y[:50])
    before = net.state_dict(), net.flat_grad.copy()
    plan = net.plan(100)
    key, dry_pass = net.probe(plan, X, y, np.zeros(300, np.float32),
                             np.ones(300, np.float32), (100, 50), True, 1e-3, True)
    first = dry_pass()
    assert dry_pass() == first and len(first) == 2 * net.flat_grad.nbytes
    for name, value in before[0].items():
        np.testing.assert_array_equal(net.state_dict()[name], value)
    np.testing.assert_array_equal(net.flat_grad, before[1])
    # The key tells the run's shapes apart.
    assert key != net.probe(plan, X, y, np.zeros(300, np.float32),
                           np.ones(300, np.float32), (100,), True, 1e-3, True)[0]


def test_bytes_that_differ_on_one_thread_keep_the_governor_off_and_free(monkeypatch):
    monkeypatch.setattr(threads._ops, "set_threads", lambda n: counts.append(n))
    counts = [2]
    governor = threads.TeamGovernor(ceiling=2, probe=("k", lambda: bytes(counts[-1:])))
    assert not governor.active and counts == [2, 1, 2]
    assert threads._neutral == {("k", 2): False} and _ops.slice_threads() == _ops.threads()
    governor.begin()
    governor.end()
    governor.close()
    assert counts == [2, 1, 2]
    # Measured once: the next run of those shapes does not probe again; others are free to.
    again = threads.TeamGovernor(ceiling=2, probe=("k", lambda: pytest.fail("probed again")))
    assert not again.active
    same = threads.TeamGovernor(ceiling=2, probe=("other", lambda: b"same"))
    assert same.active
    same.close()


def test_the_history_evaluations_run_on_the_starting_thread_count(monkeypatch):
    X, y = data(n=400)
    at_evaluation = []
    evaluate = cbn.Network.evaluate_prepared

    def recorded(*args, **kwargs):
        at_evaluation.append(_ops.threads())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(cbn.Network, "evaluate_prepared", recorded)
    with threadpool_limits(2, user_api="blas"):
        seen = flip_at_every_step(monkeypatch)
        monkeypatch.setattr(threads.TeamGovernor, "_neutral", lambda self, key, dry_pass: True)
        train(X, y, hidden=(16,), batch_size=20, X_val=X[:50], y_val=y[:50], eval_every=1)
    assert 1 in seen and len(at_evaluation) >= 8 and set(at_evaluation) == {2}


def test_an_interrupted_probe_leaves_the_governor_free(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(threads._ops, "set_threads", lambda n: None)
    with pytest.raises(KeyboardInterrupt):
        threads.TeamGovernor(ceiling=2, probe=("k", interrupted))
    assert _ops.slice_threads() == _ops.threads()
    after = threads.TeamGovernor(ceiling=2)
    assert after.active
    after.close()


def test_thresholds_measured_during_a_run_wait_for_the_next_one(monkeypatch, tmp_path):
    """The machine is busy when the run's plan is built, idle when its first evaluation
    builds another: the measurement then would change the weight product's form under the
    run's later steps."""
    monkeypatch.setenv("CBN_AUTOTUNE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tune, "_done", {})
    monkeypatch.setattr(tune, "_wait", [0.0])
    monkeypatch.setattr(tune, "BUSY_WAIT", 0.0)
    busy = iter([True])
    monkeypatch.setattr(tune, "_busy", lambda: next(busy, False))
    monkeypatch.setattr(tune, "measure_transposed_from", lambda: 7)
    monkeypatch.setattr(tune, "measure_sliced_from", lambda: tune.DEFAULTS["sliced_from"])
    X, y = data(n=200)
    try:
        train(X, y, hidden=(16,), batch_size=50, X_val=X[:64], y_val=y[:64], eval_every=1)
        assert _ops.transposed_from() == tune.DEFAULTS["transposed_from"]
        cbn.Network(300, [8], 10, seed=0).predict_proba(X[:10])  # a plan after the run
        assert _ops.transposed_from() == 7
    finally:
        _ops.set_transposed_from(tune.DEFAULTS["transposed_from"])


BESIDE_A_GOVERNED_RUN = """
import threading, time
import numpy as np
from threadpoolctl import threadpool_limits
import cbn
from cbn import _ops, threads

rng = np.random.default_rng(0)
X, y = rng.standard_normal((2000, 300)).astype(np.float32), rng.integers(0, 10, 2000)
other = cbn.Network(300, [128, 64], 10, seed=2, dtype=np.float32)
with threadpool_limits(2, user_api="blas"):
    expected = other.predict_proba(X[:600])
    # The run switches at every comparison, its products taken to be neutral.
    threads.FIRST_STRETCH = threads.LONGEST_STRETCH = threads.PROBE_STEPS = 1
    threads.MARGIN = float("inf")
    threads.TeamGovernor._neutral = lambda self, key, dry_pass: True
    switched, done, results, seen = threading.Event(), threading.Event(), [], []
    set_threads = _ops.set_threads
    def recorded(n):
        set_threads(n)
        seen.append(n)
        if n == 1:
            switched.set()
    _ops.set_threads = recorded

    def predict():  # from the run's first step on one thread to its end
        switched.wait(timeout=60)
        while True:
            results.append(other.predict_proba(X[:600]))
            if done.is_set():
                break
            time.sleep(0.002)

    def fit():  # 800 short steps
        try:
            cbn.fit(cbn.Network(300, [16], 10, seed=1, dtype=np.float32), X, y, lam=1e-3,
                    batch_size=20, schedule=cbn.CyclicLR(1e-3, 0.1, 400), cycles=1, seed=0,
                    progress=False)
        finally:
            done.set()

    workers = [threading.Thread(target=f) for f in (predict, fit)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(_ops.threads(), 1 in seen, len(results),
          sum(np.array_equal(got, expected) for got in results))
"""


def test_a_computation_beside_a_governed_run_keeps_the_process_thread_count(tmp_path):
    """The thread count is the process's: while one thread's run switches at every step,
    another thread's predictions (products that round otherwise on one thread, on some
    kernels) still run on the count they found, and the run switches only between them.
    In a fresh interpreter, bounded: a wait that never ends fails the test."""
    count, switched, made, equal = run_python(BESIDE_A_GOVERNED_RUN, tmp_path).split()
    assert count == "2" and switched == "True" and int(made) > 0
    assert equal == made

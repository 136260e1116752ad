"""Reliability of training: divergence is caught and rolled back to the last good state, runs
are deterministic, memory stays flat over long runs, and networks trained in parallel threads
give exactly the results of training them one after the other."""
from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import cbn
from cbn import ConstantLR, CyclicLR, DivergenceError, Network, _ops, fit, threads

MiB = 1 << 20


def blobs(n=100, d=10, k=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.standard_normal((n, d)) + rng.standard_normal((k, d))[y]
    return X.astype(dtype), y


def state(net):
    return net.flat_params.copy(), [v.copy() for v in net.running_stats.values()]


def assert_same_state(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for x, z in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, z)


# -- divergence ------------------------------------------------------------------------------

def test_a_diverging_learning_rate_stops_with_the_step_and_rate_and_keeps_the_last_good_state():
    X, y = blobs()
    schedule = CyclicLR(0.01, 1e4, 200)  # the rate keeps growing until training blows up
    args = dict(lam=0.0, batch_size=10, schedule=schedule, seed=0, progress=False)
    net = Network(10, [8, 8], 3, seed=0, dtype=np.float64)
    with pytest.raises(DivergenceError) as info:
        fit(net, X, y, cycles=1, **args)
    error = info.value
    assert f"step {error.step}" in str(error) and f"learning rate {error.lr:.3g}" in str(error)
    assert error.lr == schedule.lr(error.step)
    assert 0 < error.restored_step <= error.step and error.restored_step % 50 == 0
    assert error.history.step and error.history.step[-1] <= error.step
    # The restored state is exactly the state after restored_step steps of the same run.
    reference = Network(10, [8, 8], 3, seed=0, dtype=np.float64)
    fit(reference, X, y, cycles=error.restored_step / schedule.cycle_length, **args)
    assert_same_state(state(net), state(reference))


def test_a_non_finite_loss_restores_the_starting_parameters_when_no_snapshot_is_newer():
    X, y = blobs(dtype=np.float32)
    net = Network(10, [8, 8], 3, seed=0, batch_norm=False, dtype=np.float32)
    start = state(net)
    with pytest.raises(DivergenceError, match="batch loss") as info:
        fit(net, X, y, lam=0.0, batch_size=10, schedule=CyclicLR(0.01, 1e8, 2000), cycles=1,
            seed=0, progress=False)
    assert info.value.restored_step == 0
    assert_same_state(state(net), start)


class PoisonAt(ConstantLR):
    """A constant rate that, asked for step ``at``, sets one weight of ``net`` to NaN: a
    fault no learning rate would produce at that step, to show it cannot be kept."""

    def __init__(self, net, at):
        super().__init__(0.01)
        self.net, self.at = net, at

    def lr(self, step):
        if step == self.at:
            self.net.params["W2"][3, 1] = np.nan
        return super().lr(step)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_a_weight_that_turns_nan_is_caught_and_never_kept(batch_norm):
    X, y = blobs()
    net = Network(10, [8, 8], 3, seed=0, batch_norm=batch_norm)
    with pytest.raises(DivergenceError) as info:
        fit(net, X, y, lam=0.001, batch_size=10, schedule=PoisonAt(net, 60), epochs=20,
            seed=0, progress=False)
    assert info.value.step <= 61 and info.value.restored_step == 50
    assert np.isfinite(net.flat_params).all()


def test_running_statistics_that_overflow_are_divergence_not_silently_kept():
    """float32 inputs near 1e20: batch variances overflow to inf while the loss and the
    parameters stay finite (BN maps everything to beta). The first step must stop."""
    X, y = blobs(dtype=np.float32)
    net = Network(10, [8], 3, seed=1, dtype=np.float32)
    with pytest.raises(DivergenceError, match="batch-norm statistic") as info:
        fit(net, X * np.float32(1e20), y, lam=0.0, batch_size=10, schedule=0.1, epochs=3,
            seed=0, progress=False)
    assert info.value.step == 0
    assert all(np.isfinite(v).all() for v in state(net)[1])
    net.copy()  # a finite state can be copied, saved and loaded


def test_fit_refuses_a_network_that_already_holds_nan():
    X, y = blobs()
    net = Network(10, [8], 3, seed=1)
    net.params["W1"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        fit(net, X, y, lam=0.0, batch_size=10, schedule=0.1, epochs=1, progress=False)


def _diverging_run(batch_norm, momentum, dtype, eta_max, **kwargs):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 5
    X = (rng.standard_normal((200, 20)) + 2 * rng.standard_normal((5, 20))[y]).astype(dtype)
    net = Network(20, [16, 16], 5, seed=0, dtype=dtype, batch_norm=batch_norm)
    schedule = CyclicLR(1e-2, eta_max, 400)
    try:
        fit(net, X, y, lam=0.0, batch_size=20, schedule=schedule, seed=0, progress=False,
            momentum=momentum, **{"cycles": 1, **kwargs})
    except DivergenceError as error:
        return error
    return None


@pytest.mark.parametrize("run", [
    (True, 0.0, np.float32, 1e8), (True, 0.9, np.float64, 1e30), (False, 0.0, np.float32, 1e3),
    (False, 0.9, np.float64, 1e30)], ids=["bn-f32", "bn-momentum-f64", "f32", "momentum-f64"])
def test_the_step_divergence_is_reported_at_does_not_depend_on_checkpoint_every(tmp_path, run):
    steps = set()
    for every in (None, 1, 3, 10):
        checkpoint = {} if every is None else dict(checkpoint=tmp_path / f"{every}.npz",
                                                   checkpoint_every=every)
        error = _diverging_run(*run, **checkpoint)
        assert error is not None
        steps.add(error.step)
    assert len(steps) == 1, sorted(steps)
    # ... and it is the first step whose state is not finite: one step fewer runs through
    step = steps.pop()
    assert step > 1
    assert _diverging_run(*run, cycles=step / 800) is None
    assert _diverging_run(*run, cycles=(step + 1) / 800).step == step


# -- non-finite state never gives a finite answer --------------------------------------------

def _bn_net(dtype=np.float64, **kwargs):
    return Network(10, [8, 6], 3, seed=0, dtype=dtype, **kwargs)


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float64, 1e300)])
def test_a_batch_variance_that_overflows_is_an_error_not_log_k(dtype, scale):
    X, y = blobs(dtype=dtype)
    net = _bn_net(dtype)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.cost_and_grads(X * dtype(scale), y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.cost(X * dtype(scale), y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.predict_proba(X * dtype(scale), mode="train")


def test_weights_so_large_that_the_batch_variance_overflows_are_an_error():
    X, y = blobs(dtype=np.float32)
    net = _bn_net(np.float32, init=1e19)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.cost_and_grads(X, y)
    with pytest.raises(DivergenceError) as info:
        fit(net, X, y, lam=0.0, batch_size=10, schedule=0.01, epochs=1, progress=False)
    assert info.value.step == 0


def _overflowing_affine_map(net, how):
    if how == "infinite-mean":  # written into the live array, past the assignment checks
        net.running_stats["running_mean1"][0] = np.inf
    elif how == "huge-mean":  # shift = beta - mean * scale overflows
        net.running_stats["running_mean1"] = np.full(8, 1e308)
        net.params["gamma1"] = np.full(8, 1e300)
    else:  # scale = gamma / sqrt(var + eps) overflows
        net.running_stats["running_var1"] = np.zeros(8)
        net.params["gamma1"] = np.full(8, 1e300)


@pytest.mark.parametrize("how", ["infinite-mean", "huge-mean", "huge-scale"])
def test_an_evaluation_affine_map_that_is_not_finite_is_an_error(how):
    X, y = blobs()
    net = _bn_net(bn_eps=1e-300)
    _overflowing_affine_map(net, how)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.evaluate(X, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.predict_proba(X)


def test_the_evaluation_kernel_refuses_an_affine_map_that_overflows():
    from cbn import ops as kernels
    S = np.ones((4, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        kernels.bn_relu_forward_eval(S, np.full(3, 1e300), np.zeros(3), np.full(3, 1e308),
                                     np.ones(3))


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("where", ["b1", "W2", "b3"])
def test_a_nan_parameter_never_gives_finite_probabilities(batch_norm, where):
    X, y = blobs()
    net = _bn_net(batch_norm=batch_norm)
    net.params[where].flat[0] = np.nan  # as a bug or a bit flip would, past the checks
    for call in (lambda: net.predict_proba(X), lambda: net.evaluate(X, y),
                 lambda: net.cost(X, y), lambda: net.cost_and_grads(X, y)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call()


def test_an_infinite_weight_hidden_by_relu_is_still_an_error():
    X, y = blobs()
    net = _bn_net(batch_norm=False)
    net.params["W1"][:, 0] = -np.inf  # ReLU maps -inf to 0: only the check can tell
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.predict_proba(np.abs(X) + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_relu_kernel_keeps_nan(dtype):
    S = np.array([[np.nan, -1, 2, -0.0, np.inf, -np.inf]], dtype)
    expected = np.array([[np.nan, 0, 2, 0, np.inf, 0]], dtype)
    H = np.empty_like(S)
    _ops.relu_forward(S, H)
    np.testing.assert_array_equal(H, expected)
    ones, zeros = np.ones(6, dtype), np.zeros(6, dtype)
    _ops.bn_forward_eval(S, ones, zeros, zeros, ones - dtype(1e-5), 1e-5,
                         np.empty(6, dtype), np.empty(6, dtype), H, relu=True)
    np.testing.assert_array_equal(H, expected)
    beta = np.array([np.nan, -1, 2, -1, 3, -2], dtype)
    stats = [np.empty(6, dtype) for _ in range(3)]
    H2 = np.empty((2, 6), dtype)
    _ops.bn_forward_train(np.zeros((2, 6), dtype), ones, beta, 1e-5, *stats,
                          np.empty((2, 6), dtype), H2, relu=True)
    np.testing.assert_array_equal(H2, [[np.nan, 0, 2, 0, 3, 0]] * 2)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_a_normalization_mean_beyond_float32_is_refused_by_name(batch_norm):
    from types import SimpleNamespace
    X = np.random.default_rng(0).integers(0, 256, (20, 10), dtype=np.uint8)
    net = _bn_net(np.float32, batch_norm=batch_norm)
    norm = SimpleNamespace(mean=np.full(10, 1e39), std=np.ones(10))
    with pytest.raises(ValueError, match="normalization.mean is too large for float32"):
        net.predict_proba(X, normalization=norm)


@pytest.mark.parametrize("value", [-1.0, -1e-300])
def test_a_negative_running_variance_is_refused(value):
    net = _bn_net()
    bad = np.full(8, value)
    with pytest.raises(ValueError, match="running_var1 .*>= 0"):
        net.running_stats["running_var1"] = bad
    state = net.state_dict()
    state["running_var1"] = bad
    with pytest.raises(ValueError, match="running_var1 .*>= 0"):
        net.load_state_dict(state)
    assert (net.running_stats["running_var1"] == 1).all()


# -- determinism -----------------------------------------------------------------------------

def run(seed=0, dtype=np.float32, threads=None, net_seed=1):
    """A run big enough for BLAS to use its threads and for the first layer to run in
    column slices: (state, history without wall_time)."""
    X, y = blobs(n=400, d=300, k=10, seed=seed, dtype=dtype)
    net = Network(300, [128, 64], 10, seed=net_seed, dtype=dtype)
    with threadpool_limits(threads):
        history = fit(net, X, y, X_val=X[:100], y_val=y[:100], lam=0.001, batch_size=100,
                      schedule=CyclicLR(1e-3, 0.1, 6), cycles=1, seed=seed, momentum=0.5,
                      progress=False)
    return state(net), {k: v for k, v in history.as_dict().items() if k != "wall_time"}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_seed_and_thread_count_give_bit_identical_runs(threads, dtype):
    a, b = run(dtype=dtype, threads=threads), run(dtype=dtype, threads=threads)
    assert_same_state(a[0], b[0])
    assert a[1] == b[1]


def test_two_networks_trained_in_two_threads_match_training_them_one_after_the_other():
    """The kernels release the GIL, so the two runs really overlap; they share nothing
    (their first layers run in column slices, each product on one thread)."""
    jobs = [dict(seed=0, dtype=np.float32, net_seed=1), dict(seed=1, dtype=np.float64, net_seed=2)]
    sequential = [run(**job) for job in jobs]
    results = [None, None]
    start = threading.Barrier(2)

    def train(i):
        start.wait()
        results[i] = run(**jobs[i])

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, sequential):
        assert_same_state(got[0], expected[0])
        assert got[1] == expected[1]


# -- threads ---------------------------------------------------------------------------------

def _shared_run():
    X, y = blobs(n=400, d=300, k=10, dtype=np.float32)
    args = dict(lam=0.001, batch_size=50, schedule=CyclicLR(1e-3, 0.1, 16), cycles=1, seed=0,
                momentum=0.5, progress=False)
    return X, y, args


def test_one_network_predicts_in_one_thread_while_it_trains_in_another():
    X, y, args = _shared_run()
    net = Network(300, [64, 32], 10, seed=1, dtype=np.float32)
    before = net.predict_proba(X[:120])
    after_net = net.copy()
    fit(after_net, X, y, **args)
    after = after_net.predict_proba(X[:120])
    seen, errors = [], []
    started = threading.Event()

    def predict():
        started.set()
        try:
            for _ in range(40):
                seen.append(net.predict_proba(X[:120]))
        except Exception as exc:  # reported below, with the thread's own error
            errors.append(exc)

    reader = threading.Thread(target=predict)
    reader.start()
    started.wait()
    fit(net, X, y, **args)
    reader.join()
    assert not errors
    # Each call ran wholly before or wholly after training: never on a state in between.
    for probs in seen:
        assert np.array_equal(probs, before) or np.array_equal(probs, after)
    np.testing.assert_array_equal(net.predict_proba(X[:120]), after)


def test_two_fits_of_one_network_in_two_threads_run_one_after_the_other():
    X, y, args = _shared_run()
    net = Network(300, [64, 32], 10, seed=1, dtype=np.float32)
    reference = net.copy()
    fit(reference, X, y, **args)
    fit(reference, X, y, **args)
    errors = []

    def train():
        try:
            fit(net, X, y, **args)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_same_state(state(net), state(reference))


def test_threadpool_limits_set_the_threads_of_the_gather_too():
    """One knob for every thread cbn starts: the BLAS limit (threadpoolctl) also sizes the
    OpenMP loops that run beside OpenBLAS's jobs."""
    for limit in sorted({1, min(2, os.cpu_count() or 1)}):
        with threadpool_limits(limit, user_api="blas"):
            assert _ops.threads() == (limit if _ops.OPENMP else 1)


def test_training_leaves_the_blas_thread_count_as_it_was():
    """The sliced first layer gets its one-thread products without touching OpenBLAS's
    process-wide thread count, which other threads and threadpoolctl read."""
    for limit in sorted({1, 2}):
        with threadpool_limits(limit, user_api="blas"):
            X, y = blobs(n=200, d=300, k=10)
            fit(Network(300, [20], 10, seed=0), X, y, lam=0.0, batch_size=50, schedule=0.01,
                epochs=1, seed=0, progress=False)
            assert _ops.threads() == (limit if _ops.OPENMP else 1)
            assert [p["num_threads"] for p in threadpool_info()
                    if "scipy_openblas32" in p["filepath"]] == [limit]


def final_sum(seed):
    X, y = blobs(n=400, d=300, k=10, seed=seed, dtype=np.float32)
    net = Network(300, [128, 64], 10, seed=1, dtype=np.float32)
    fit(net, X, y, lam=0.001, batch_size=100, schedule=0.01, epochs=2, seed=0, progress=False)
    return float(net.flat_params.astype(np.float64).sum())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_training_trains_too():
    """GNU OpenMP's pool does not survive a fork (a child's next parallel region would wait
    forever): the child falls back to OpenBLAS's threads and gets the same numbers."""
    expected = final_sum(0)  # the parent's pool is now running
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(final_sum, [0, 0]).get(timeout=120)
    assert got == pytest.approx([expected] * 2, rel=1e-5)


# A NumPy product and a short training run with two BLAS threads, after ``{before}`` (run
# right after ``import cbn``; threads it adds to ``others`` are joined at the end). Prints
# whether cbn's loops still run on the OpenMP pool (the gather runs on two threads only
# there), a digest of the product's bytes and the sum of the trained parameters.
PRODUCT_AND_TRAINING = """
import hashlib
import numpy as np
import cbn
from cbn import Network, _ops, fit
others = []
{before}
a = np.random.default_rng(0).standard_normal((500, 500))
product = hashlib.sha256((a @ a).tobytes()).hexdigest()
rng = np.random.default_rng(0)
X, y = rng.standard_normal((600, 300)).astype(np.float32), rng.integers(0, 10, 600)
net = Network(300, [200, 100], 10, seed=1, dtype=np.float32)
fit(net, X, y, lam=0.001, batch_size=200, schedule=0.01, epochs=2, seed=0, progress=False)
for other in others:
    other.join()
print(_ops.threads() > 1, product, float(net.flat_params.astype(np.float64).sum()))
"""

# The OpenMP library cbn's loops run on, as another library would call it at run time.
OPENMP = """
import ctypes, threading, threadpoolctl
openmp = ctypes.CDLL([lib["filepath"] for lib in threadpoolctl.threadpool_info()
                      if lib["user_api"] == "openmp"][0])
"""

# OpenMP's settings are per thread: only this other thread's products get short teams, one
# of them cbn's, while the main thread trains.
ANOTHER_THREAD = OPENMP + """
def other():
    openmp.omp_set_max_active_levels(0)
    b = np.ones((400, 400))
    for _ in range(10):
        b @ b
    Network(300, [50], 10, seed=2).predict_proba(np.ones((300, 300)))
others.append(threading.Thread(target=other))
others[0].start()
"""


def run_python(code: str, cwd, **environment: str) -> str:
    """What ``code`` prints, run by a fresh interpreter that imports this cbn, with
    ``environment`` added to this one's; fails the test if it fails."""
    parent = str(Path(cbn.__file__).resolve().parent.parent)
    env = {**os.environ, **environment,
           "PYTHONPATH": os.pathsep.join(p for p in (parent, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def product_and_training(cwd, before: str = "", **setting: str) -> list:
    """PRODUCT_AND_TRAINING's output, with two BLAS threads throughout (no governor, which
    would change the thread count between steps)."""
    return run_python(PRODUCT_AND_TRAINING.format(before=before), cwd, OPENBLAS_NUM_THREADS="2",
                      CBN_ADAPTIVE_THREADS="0", **setting).split()


@pytest.fixture(scope="module")
def unconstrained(tmp_path_factory):
    """PRODUCT_AND_TRAINING's output where OpenMP gives every team in full."""
    out = product_and_training(tmp_path_factory.mktemp("unconstrained"))
    assert out[0] == "True"
    return out


# Settings under which OpenMP may give a team fewer threads than it asks for, however made:
# in the environment, or at run time through the OpenMP API.
SHRINKING = {"dynamic": {"OMP_DYNAMIC": "true"}, "thread_limit_1": {"OMP_THREAD_LIMIT": "1"},
             "max_active_levels_0": {"OMP_MAX_ACTIVE_LEVELS": "0"},
             "set_max_active_levels_0": OPENMP + "openmp.omp_set_max_active_levels(0)",
             "in_another_thread": ANOTHER_THREAD}


@pytest.mark.skipif(not _ops.OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("setting", SHRINKING.values(), ids=SHRINKING.keys())
def test_openmp_settings_that_could_shrink_a_team_hang_nothing_and_change_no_result(
        tmp_path, unconstrained, setting):
    """OpenBLAS's jobs wait for each other: run one per thread or never finish. Where OpenMP
    may give fewer threads than asked, NumPy's jobs run on threads started for them or on
    NumPy's own, and cbn leaves the pool for OpenBLAS's threads, with the same first-layer
    slices: the same product, bit for bit, and the same trained parameters."""
    if isinstance(setting, str):
        out = product_and_training(tmp_path, before=setting)
    else:
        out = product_and_training(tmp_path, **setting)
    assert out == ["False"] + unconstrained[1:]


C_FORK = """
import ctypes, os, time
import numpy as np
from cbn import Network
a = np.random.default_rng(0).standard_normal((500, 500))
X = np.random.default_rng(1).standard_normal((300, 400))
net = Network(400, [200], 10, seed=1)
product, probs = a @ a, net.predict_proba(X)  # the pool has run
pid = ctypes.PyDLL(None).fork()  # C's fork(): none of Python's at-fork hooks run
if pid == 0:
    os._exit(0 if np.array_equal(a @ a, product) and np.array_equal(net.predict_proba(X), probs)
             else 1)
for _ in range(600):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    print("hung")
"""


@pytest.mark.skipif(not (_ops.OPENMP and hasattr(os, "fork")), reason="no OpenMP pool or fork")
def test_a_child_forked_by_c_code_computes_the_same_products(tmp_path):
    """A child forked by C code, where none of Python's at-fork hooks run, leaves the pool
    too: its first parallel region would wait forever for the parent's threads."""
    assert run_python(C_FORK, tmp_path, OPENBLAS_NUM_THREADS="2").split() == ["0"]


# -- memory ----------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", [False, True])
def test_resident_memory_stays_flat_over_10000_training_steps(tmp_path, checkpoint):
    """RSS after 10,000 more steps of a tiny network (after a warm-up run that builds the
    plans and touches every buffer) grows by less than 1 MiB, with or without checkpoints
    every 500 steps. The history grows by 100 entries, a few kB."""
    X, y = blobs(n=2000, d=10)
    net = Network(10, [8, 8], 3, seed=0)
    args = dict(lam=0.001, batch_size=20, schedule=0.01, seed=0, progress=False, momentum=0.5)
    if checkpoint:
        args.update(checkpoint=tmp_path / "run.npz", checkpoint_every=500)
    fit(net, X, y, epochs=10, **args)  # warm-up: 1,000 steps
    gc.collect()
    before = psutil.Process().memory_info().rss
    history = fit(net, X, y, epochs=100, **args)  # 10,000 steps, 100 steps per epoch
    gc.collect()
    growth = psutil.Process().memory_info().rss - before
    assert history.step[-1] == 10_000
    assert growth < MiB, f"resident memory grew by {growth / MiB:.2f} MiB"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [10, 300])  # 300 inputs: the first layer in column slices
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_input_row_stops_training_by_name_before_it_changes_anything(dtype, d, bad):
    """Float inputs are checked as the step gathers them: the step that reads the bad row
    raises, naming it, before it changes a parameter or a running statistic."""
    X, y = blobs(n=40, d=d, dtype=dtype)
    X[17, d // 2] = bad
    net = Network(d, [8], 3, seed=0, dtype=dtype)
    start = net.state_dict()
    with threadpool_limits(2, user_api="blas"):
        # One batch of all 40 rows: the first step reads row 17.
        with pytest.raises(ValueError, match=r"X contains NaN or infinite values \(row 17\); "
                                             "training stopped at step 0"):
            fit(net, X, y, lam=0.0, batch_size=40, epochs=3, seed=3, progress=False,
                schedule=ConstantLR(0.1))
        for name, value in net.state_dict().items():
            np.testing.assert_array_equal(value, start[name], err_msg=name)
        # Later in a run: the steps before it are kept, and every value is finite.
        X, y = blobs(n=200, d=d, dtype=dtype)
        X[150, 0] = bad  # not in the first batches of seed 3
        with pytest.raises(ValueError, match="contains NaN or infinite values"):
            fit(net, X, y, lam=0.0, batch_size=20, epochs=1, seed=3, progress=False,
                schedule=ConstantLR(0.1))
    assert not all(np.array_equal(value, start[name]) for name, value in net.params.items())
    assert _ops.all_finite(net.flat_params)
    for value in net.running_stats.values():
        assert _ops.all_finite(value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [10, 300])
def test_predictions_and_evaluation_name_a_non_finite_row(dtype, d):
    X, y = blobs(n=600, d=d, dtype=dtype)
    net = Network(d, [8], 3, seed=0, dtype=dtype)
    fit(net, X, y, lam=0.0, batch_size=20, epochs=1, seed=0, progress=False,
        schedule=ConstantLR(0.01))
    X[450, 3] = -np.inf
    for call in (lambda: net.predict_proba(X), lambda: net.evaluate(X, y),
                 lambda: net.cost_and_grads(X[440:460], y[440:460])):
        with pytest.raises(ValueError, match=r"contains NaN or infinite values \(row 10|450\)"):
            call()


def test_a_non_finite_validation_row_is_refused_before_training():
    X, y = blobs(n=100, d=10)
    X_val = X[:30].copy()
    X_val[12, 0] = np.nan
    net = Network(10, [8], 3, seed=0)
    start = net.flat_params.copy()
    with pytest.raises(ValueError, match=r"X_val contains NaN or infinite values \(row 12\)"):
        fit(net, X, y, X_val=X_val, y_val=y[:30], lam=0.0, batch_size=20, epochs=1,
            schedule=ConstantLR(0.1), progress=False)
    np.testing.assert_array_equal(net.flat_params, start)


# -- other OpenBLAS libraries on cbn's pool (cbn.threads.share_pool) -------------------------

numpy_shares = pytest.mark.skipif(not (_ops.OPENMP and threads.share_pool()),
                                  reason="no other pthreads OpenBLAS with a threads callback")


@numpy_shares
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_products_on_the_shared_pool_equal_those_on_its_own_threads(dtype):
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype))
             for m, k, n in [(700, 500, 600), (100, 3072, 50), (3072, 100, 50), (2, 5, 3)]]
    shared = [a @ b for a, b in pairs]
    threads.unshare_pool()
    try:
        own = [a @ b for a, b in pairs]
    finally:
        threads.share_pool()
    for s, o in zip(shared, own):
        assert np.array_equal(s, o)


@numpy_shares
def test_numpy_products_in_many_threads_while_cbn_trains_are_right():
    """Several batches of jobs come to the pool at once from NumPy's calls and cbn's steps."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 300)), rng.standard_normal((300, 500))
    expected = a @ b
    bad = []

    def products():
        for _ in range(30):
            if not np.array_equal(a @ b, expected):
                bad.append(1)

    workers = [threading.Thread(target=products) for _ in range(3)]
    for w in workers:
        w.start()
    total = final_sum(0)
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers) and not bad
    assert total == final_sum(0)


def numpy_product_sum(seed):
    rng = np.random.default_rng(seed)
    return float((rng.standard_normal((600, 400)) @ rng.standard_normal((400, 500))).sum())


def shared_and_product_sum(seed):
    return threads.share_pool(), numpy_product_sum(seed)


@numpy_shares
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_numpy_products_in_a_forked_child_run_on_numpys_own_threads():
    """The child cannot use the parent's OpenMP pool: NumPy gets its threads back."""
    expected = numpy_product_sum(0)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(shared_and_product_sum, [0, 0]).get(timeout=120)
    assert got == [([], expected)] * 2


NUMPY_PRODUCT = """
import numpy as np
from cbn import _ops, threads
rng = np.random.default_rng(0)
a, b = rng.standard_normal((600, 400)), rng.standard_normal((400, 500))
shared = _ops.shared_pool_count()
c = a @ b  # on the pool, or on threads started for the jobs where OpenMP may run short
threads.unshare_pool()
print(shared, np.array_equal(c, a @ b))
"""


@numpy_shares
@pytest.mark.parametrize("setting", [{}, {"OMP_DYNAMIC": "true"}, {"OMP_THREAD_LIMIT": "1"},
                                     {"OMP_MAX_ACTIVE_LEVELS": "0"}, {"CBN_SHARE_POOL": "0"}])
def test_numpy_products_never_hang_whatever_openmp_may_do(tmp_path, setting):
    """``import cbn`` shares the pool unless CBN_SHARE_POOL=0 or OpenMP's settings may shrink
    a team, and NumPy's product is right on it, on threads started for it, or on NumPy's
    own."""
    shared, equal = run_python(NUMPY_PRODUCT, tmp_path, OPENBLAS_NUM_THREADS="2",
                               **setting).split()
    assert shared == ("1" if not setting else "0")
    assert equal == "True"


SCIPY_PRODUCTS_IN_THREADS = """
import threading
import numpy as np
import cbn
import scipy.linalg.blas as blas
a = np.random.default_rng(0).standard_normal((400, 400))
expected = a @ a
bad = []
def work():
    for _ in range(300):
        bad.append(not np.allclose(blas.dgemm(1.0, a, a), expected))
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(bad), any(bad))
"""


@pytest.mark.skipif(not _ops.OPENMP, reason="built without OpenMP")
def test_blas_calls_that_hold_the_gil_from_several_threads_do_not_deadlock(tmp_path):
    """SciPy's BLAS wrappers keep the GIL through a product, and OpenBLAS holds a lock of its
    own through a threaded one: the jobs callback must never wait for the GIL."""
    assert run_python(SCIPY_PRODUCTS_IN_THREADS, tmp_path, OPENBLAS_NUM_THREADS="2").split() \
        == ["900", "False"]

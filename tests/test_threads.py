"""The thread governor of training runs: its choices on given step times, and that the
threads it picks never change a result."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cbn
from cbn import _ops, threads

pytestmark = pytest.mark.skipif(not _ops.OPENMP, reason="built without OpenMP")


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with no earlier run to carry on from, and no earlier probe's answer."""
    monkeypatch.setattr(threads, "_last", {})
    monkeypatch.setattr(threads, "_neutral", {})


class FakeRun:
    """Step times by thread count, as a clock the governor reads; records what it sets."""

    def __init__(self, monkeypatch, seconds):
        self.seconds = dict(seconds)  # threads -> seconds per step
        self.now = 0.0
        self.threads = 2
        self.history = []
        monkeypatch.setattr(threads.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(threads._ops, "set_threads", self.set_threads)

    def set_threads(self, n):
        self.threads = n

    def steps(self, governor, n):
        for _ in range(n):
            governor.begin()
            self.history.append(self.threads)
            self.now += self.seconds[self.threads]
            governor.end(True)


def test_keeps_every_thread_when_they_are_faster(monkeypatch):
    run = FakeRun(monkeypatch, {1: 1.0, 2: 0.6})
    governor = threads.TeamGovernor(ceiling=2)
    try:
        run.steps(governor, 2000)
        assert governor.choice == 2 and governor.switches == 0
        # Comparisons get rarer while the choice holds: few steps ran on one thread.
        assert run.history.count(1) < 0.03 * len(run.history)
    finally:
        governor.close()
    assert run.threads == 2


def test_moves_to_one_thread_under_load_and_back_when_it_lifts(monkeypatch):
    run = FakeRun(monkeypatch, {1: 1.0, 2: 0.6})
    governor = threads.TeamGovernor(ceiling=2)
    try:
        run.steps(governor, 300)
        run.seconds[2] = 6.0  # a busy process starts: the team waits for a parked thread
        run.steps(governor, 40)
        assert governor.choice == 1
        at = len(run.history)
        run.steps(governor, 1000)
        assert run.history[at:].count(2) < 0.05 * 1000  # rare probes of the slow side
        run.seconds[2] = 0.6  # the load lifts
        run.steps(governor, 3000)
        assert governor.choice == 2 and governor.switches == 2
    finally:
        governor.close()
    assert run.threads == 2


def test_short_runs_back_to_back_are_governed_as_one_long_run(monkeypatch):
    """fit called once per short epoch (20 steps here): each call carries on from the last
    one's state, so the choice, once made, holds and comparisons stay rare."""
    run = FakeRun(monkeypatch, {1: 1.0, 2: 6.0})  # under load from the start
    for _ in range(100):
        governor = threads.TeamGovernor(ceiling=2)
        run.steps(governor, 20)
        governor.close()
    late = run.history[-1000:]
    assert late.count(2) < 0.03 * len(late)
    # Another kind of run (an evaluation) keeps its own state.
    evaluation = threads.TeamGovernor(ceiling=2, kind="evaluate")
    assert evaluation.choice == 2 and evaluation.until_probe == 0
    evaluation.close()


def test_off_with_one_thread_or_the_environment_variable(monkeypatch):
    run = FakeRun(monkeypatch, {1: 1.0, 2: 9.0})
    for governor in (threads.TeamGovernor(ceiling=1), ):
        run.steps(governor, 50)
        assert not governor.active
    monkeypatch.setenv("CBN_ADAPTIVE_THREADS", "0")
    governor = threads.TeamGovernor(ceiling=2)
    run.steps(governor, 50)
    assert not governor.active and set(run.history) == {2}


def test_one_governor_at_a_time(monkeypatch):
    FakeRun(monkeypatch, {1: 1.0, 2: 1.0})
    first = threads.TeamGovernor(ceiling=2)
    second = threads.TeamGovernor(ceiling=2)
    assert first.active and not second.active
    first.close()
    third = threads.TeamGovernor(ceiling=2)
    assert third.active
    third.close()


def flip_at_every_step(monkeypatch) -> list:
    """Every comparison picks the other side; returns the list of thread counts set."""
    monkeypatch.setattr(threads, "FIRST_STRETCH", 1)
    monkeypatch.setattr(threads, "LONGEST_STRETCH", 1)
    monkeypatch.setattr(threads, "PROBE_STEPS", 1)
    monkeypatch.setattr(threads, "MARGIN", float("inf"))
    seen = []
    monkeypatch.setattr(threads._ops, "set_threads",
                        lambda n, set_=_ops.set_threads: (seen.append(n), set_(n)))
    return seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_switching_threads_mid_run_changes_no_result(monkeypatch, dtype):
    """The first layer (3,072 inputs, sliced per thread) keeps its slices when the governor
    changes the thread count, so a run that switches at every comparison gives the same
    parameters, bit for bit, as one that never switches. (The other products are too small
    for OpenBLAS to split, so the probe lets the governor switch on any kernels.)"""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (600, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 600)
    norm = cbn.data.Normalization.fit(X)

    def train():
        net = cbn.Network(3072, [40, 30], 10, seed=0, dtype=dtype)
        cbn.fit(net, X, y, normalization=norm, lam=1e-3, batch_size=50, epochs=2, seed=0,
                schedule=cbn.CyclicLR(1e-3, 0.1, 12), X_val=X[:100], y_val=y[:100],
                eval_every=5, augment=cbn.Augment(hflip=True, shift=2), progress=False)
        return net.flat_params.copy()

    with threadpool_limits(2, user_api="blas"):
        monkeypatch.setenv("CBN_ADAPTIVE_THREADS", "0")
        steady = train()
        monkeypatch.delenv("CBN_ADAPTIVE_THREADS")
        seen = flip_at_every_step(monkeypatch)  # the thread count flips all run long
        switching = train()
        assert _ops.threads() == 2
    assert list(threads._neutral.values()) == [True]
    assert seen.count(1) > 3  # beyond the probe's one: the run switched all along
    np.testing.assert_array_equal(switching, steady)

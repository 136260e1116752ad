"""Benchmarks: cbn against the GEMM-only bound, NumPy and PyTorch eager, interleaved in one process.

    pytest tests/test_benchmarks.py --benchmark-only [--benchmark-json=bench.json]
    python scripts/bench_ratios.py bench.json [--markdown]

Each case is one benchmark. After a warm-up round, each timed round times every contender of
the case once, back to back with no pause between them, in an order that rotates from round
to round (5 to 15 rounds, as many as fit in ``CASE_SECONDS`` by the warm-up round's time):
``cbn``, ``gemm`` (only the products the step does, ``numpy.matmul`` with ``out=`` on a fixed
batch: the bound), ``gemm+rows`` (the same products after reading the batch's rows from the
data set as stored, uint8 or float32: the bound with the one read a step cannot avoid),
``numpy`` (the same training in preallocated NumPy) and ``torch`` (PyTorch eager; left out
without torch); see tests/contender_*.py. pytest-benchmark times cbn's block
and its setup and teardown time the others, so its own table shows cbn and the ratios compare
rounds measured together. The run ends with one table of per-round ratios and a noise
verdict (tests/bench_table.py), also written beside ``--benchmark-json`` as
``<name>.ratios.md`` and ``<name>.ratios.json``.

Cases (network float32, synthetic images of CIFAR-10's shape):
- one training epoch over ``EPOCH_ROWS`` images (cbn through ``fit(..., epochs=1)``) of each
  network of ``STEP_CASES``, with float32 input (standardised already) and with uint8 input
  and ``normalization=``; once more for the 3-layer BN network at batch 100, with a burst of
  ``numpy.matmul`` on large float32 matrices just before every contender's block (as when a
  notebook has just used NumPy's own BLAS);
- ``WIDE_STEPS`` training steps of the wide [1024, 1024] BN network at batch 100 and 256;
- evaluation (loss and accuracy) of ``EVAL_ROWS`` images by the 3-layer BN network.
Every benchmark stores its rounds, the BLAS libraries and thread counts (``threadpoolctl``)
and torch's thread count in its ``extra_info``.

A plain ``pytest`` deselects the benchmarks (tests/conftest.py) and runs the checks here:
the contenders compute what cbn computes, every case's contenders run, and the rounds
interleave as described.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from bench_table import CaseResult
from cbn import ConstantLR, Network, fit
from contender_gemm import GemmBound
from contender_numpy import NumpyNet
from reference import ReferenceNet

HAS_TORCH = importlib.util.find_spec("torch") is not None
D, K = 3072, 10
LR, LAM = 1e-3, 0.005
STEP_CASES = {  # name: (hidden widths, batch norm, batch size)
    "3-layer BN b20": ((50, 50), True, 20),
    "3-layer BN b100": ((50, 50), True, 100),
    "3-layer BN b500": ((50, 50), True, 500),
    "9-layer BN b100": ((50, 30, 20, 20, 10, 10, 10, 10), True, 100),
    "3-layer b100": ((50, 50), False, 100),
}
CONTENDERS = ("cbn", "numpy", "torch", "gemm", "gemm+rows")
DTYPE = "float32"
ROUNDS = (5, 15)      # fewest and most timed rounds per case (after one warm-up round)
CASE_SECONDS = 10.0   # timed rounds per case: as many as fit in this, by the warm-up round
STEP_ROWS = 5000      # rows the step cases cycle through
EPOCH_ROWS = 3000     # rows of an epoch
EVAL_ROWS = 10000     # rows of the evaluation
WIDE_STEPS = {100: 4, 256: 2}   # steps per round of the wide network, by batch size
BURST = (3, 1024)     # numpy.matmul calls of (n x n) float32 matrices before each block


@dataclass(frozen=True)
class Case:
    """What one benchmark times. ``kind``: "epoch", "step" or "evaluate"; ``source``:
    "float32" (standardised rows) or "uint8" (images, with ``normalization=``)."""

    kind: str
    hidden: Tuple[int, ...]
    batch_norm: bool
    batch: int
    source: str
    burst: bool = False


def _cases() -> Dict[str, Case]:
    cases = {}
    for name, (hidden, batch_norm, batch) in STEP_CASES.items():
        for source in ("float32", "uint8"):
            label = "float32" if source == "float32" else "uint8+norm"
            cases[f"epoch {name} {label}"] = Case("epoch", hidden, batch_norm, batch, source)
    cases["epoch 3-layer BN b100 uint8+norm after numpy matmul"] = Case(
        "epoch", (50, 50), True, 100, "uint8", burst=True)
    for batch in WIDE_STEPS:
        cases[f"{WIDE_STEPS[batch]} steps [1024, 1024] BN b{batch} uint8+norm"] = Case(
            "step", (1024, 1024), True, batch, "uint8")
    cases[f"evaluate {EVAL_ROWS} images 3-layer BN uint8+norm"] = Case(
        "evaluate", (50, 50), True, 1000, "uint8")
    return cases


CASES = _cases()


class Standardize:
    """Per-feature mean and std, the ``normalization`` object cbn.fit accepts."""

    def __init__(self, images: np.ndarray) -> None:
        self.mean = images.mean(axis=0)
        self.std = images.std(axis=0) + 1.0


def images(n: int, seed: int = 0):
    """n synthetic uint8 images (n, 3072), int64 labels and their Standardize."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, D), dtype=np.uint8)
    y = rng.integers(0, K, n).astype(np.int64)
    return X, y, Standardize(X[:1000])


@functools.lru_cache(maxsize=4)
def dataset(n: int, source: str, seed: int = 0):
    """(X, y, normalization) of n rows: uint8 images with their Standardize, or the same
    images standardised into float32 with None."""
    X, y, norm = images(n, seed)
    if source == "uint8":
        return X, y, norm
    return ((X - norm.mean) / norm.std).astype(np.float32), y, None


def net_for(hidden, batch_norm: bool, dtype: str, **options) -> Network:
    return Network(D, hidden, K, batch_norm=batch_norm, dtype=np.dtype(dtype), seed=0,
                   **options)


def stepper(contender: str, net: Network, X, y, norm, batch: int) -> Callable[[], None]:
    """One training step per call, on the next batch of a fixed shuffled order of X's rows
    (uint8 standardised by ``norm``, or floats as they are when ``norm`` is None)."""
    n_rows = X.shape[0]
    order = np.random.default_rng(1).permutation(n_rows).astype(np.int64)
    starts = list(range(0, n_rows - batch + 1, batch))
    shift = None if norm is None else norm.mean.astype(net.dtype)
    scale = None if norm is None else (1 / norm.std).astype(net.dtype)
    counter = iter(range(10**12))

    if contender == "cbn":
        src, pshift, pscale = net.prepare_input(X, norm)
        plan = net.plan(batch)
        plan.set_data(src, y, order, pshift, pscale)
        plan.set_velocity(None)
        plan.set_dropout(0, 0)
        plan.set_augment(None)

        def step():
            b = next(counter)
            plan.train_step(starts[b % len(starts)], batch, LR, LAM, 0.0, False, False, b)
        return step
    if contender == "numpy":
        model = NumpyNet(dict(net.params), net.batch_norm, batch)
        return lambda: model.train_step(X, y, order[(s := starts[next(counter) % len(starts)]):
                                                    s + batch], shift, scale, LR, LAM)
    if contender == "torch":
        import torch
        from contender_torch import TorchNet
        model = TorchNet(dict(net.params), net.batch_norm, batch)
        Xt, yt, ot = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(order)
        st = None if shift is None else torch.from_numpy(shift)
        sc = None if scale is None else torch.from_numpy(scale)
        return lambda: model.train_step(Xt, yt, ot[(s := starts[next(counter) % len(starts)]):
                                                   s + batch], st, sc, LR, LAM)
    if contender == "gemm+rows":
        return GemmBound(net.dims, batch, net.dtype, source=X, order=order).step
    return GemmBound(net.dims, batch, net.dtype).step


def repeat(step: Callable[[], None], times: int) -> Callable[[], None]:
    def run():
        for _ in range(times):
            step()
    return run


def evaluator(contender: str, net: Network, X, y, norm, block: int) -> Callable[[], None]:
    """Loss and accuracy of every row in evaluation mode (``block`` rows at a time for NumPy
    and PyTorch; cbn uses its own blocks)."""
    shift, scale = norm.mean.astype(net.dtype), (1 / norm.std).astype(net.dtype)
    if contender == "cbn":
        return lambda: net.evaluate(X, y, normalization=norm)
    if contender == "numpy":
        model = NumpyNet(dict(net.params), net.batch_norm, block)
        model.running.update({k.replace("running_", ""): v for k, v in net.running_stats.items()})
        return lambda: model.evaluate(X, y, shift, scale)
    if contender == "torch":
        import torch
        from contender_torch import TorchNet
        model = TorchNet(dict(net.params), net.batch_norm, block)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        st, sc = torch.from_numpy(shift), torch.from_numpy(scale)
        return lambda: model.evaluate(Xt, yt, st, sc)
    if contender == "gemm+rows":
        return GemmBound(net.dims, X.shape[0], net.dtype, source=X,
                         order=np.arange(X.shape[0])).evaluate
    return GemmBound(net.dims, X.shape[0], net.dtype).forward


def blocks(case: Case, rows: int) -> Dict[str, Callable[[], None]]:
    """What each contender runs once per round of ``case``, on ``rows`` rows of data; cbn
    first. Each contender trains its own copy of the same initial network."""
    X, y, norm = dataset(rows, case.source)
    out = {}
    for contender in (c for c in CONTENDERS if c != "torch" or HAS_TORCH):
        net = net_for(case.hidden, case.batch_norm, DTYPE)
        if case.kind == "evaluate":
            out[contender] = evaluator(contender, net, X, y, norm, case.batch)
        elif case.kind == "step":
            out[contender] = repeat(stepper(contender, net, X, y, norm, case.batch),
                                    WIDE_STEPS[case.batch])
        elif contender == "cbn":
            out[contender] = functools.partial(
                fit, net, X, y, lam=LAM, batch_size=case.batch, schedule=ConstantLR(LR),
                epochs=1, seed=0, normalization=norm, progress=False)
        else:  # the same number of steps as fit's epoch (the data are whole batches)
            out[contender] = repeat(stepper(contender, net, X, y, norm, case.batch),
                                    rows // case.batch)
    return out


def burst() -> Callable[[], None]:
    """NumPy's own BLAS at work on large float32 products (preallocated, no result kept)."""
    calls, n = BURST
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    C = np.empty((n, n), np.float32)
    return repeat(lambda: np.matmul(A, B, out=C), calls)


def interleave(benchmark, runs: Dict[str, Callable[[], None]], rounds: Tuple[int, int],
               before: Optional[Callable[[], None]] = None,
               seconds: float = CASE_SECONDS) -> Dict[str, List[float]]:
    """Seconds per round of each of ``runs`` (which includes "cbn"): one warm-up round, then
    timed rounds in which every contender runs once, back to back, in an order rotated by one
    each round. ``benchmark.pedantic`` times cbn; its setup runs the contenders before cbn in
    the round, its teardown those after. ``before`` runs untimed before every block. There
    are as many timed rounds as the warm-up round says fit in ``seconds``, within ``rounds``
    (fewest, most), so a loaded machine still ends the run in reasonable time."""
    names = list(runs)
    times: Dict[str, List[float]] = {c: [] for c in names}
    after: List[str] = []
    counter = itertools.count()

    def run(contender: str) -> None:
        if before is not None:
            before()
        start = time.perf_counter()
        runs[contender]()
        times[contender].append(time.perf_counter() - start)

    def setup() -> None:
        r = next(counter) % len(names)
        order = names[r:] + names[:r]
        at = order.index("cbn")
        after[:] = order[at + 1:]
        for contender in order[:at]:
            run(contender)
        if before is not None:
            before()

    def cbn() -> None:
        start = time.perf_counter()
        runs["cbn"]()
        times["cbn"].append(time.perf_counter() - start)

    def teardown() -> None:
        for contender in after:
            run(contender)

    start = time.perf_counter()
    for contender in names:  # warm-up: plans, BLAS buffers, thread pools, caches
        run(contender)
    warm_up = time.perf_counter() - start
    for t in times.values():
        t.clear()
    fewest, most = rounds
    count = int(min(max(seconds // max(warm_up, 1e-9), fewest), most))
    benchmark.pedantic(cbn, setup=setup, teardown=teardown, rounds=count)
    return times


@pytest.fixture(scope="module", autouse=True)
def same_thread_count():
    """PyTorch with as many threads as the BLAS cbn and NumPy use, so all compete alike."""
    if HAS_TORCH:
        import torch
        threads = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        yield
        torch.set_num_threads(before)
    else:
        yield


# -- the contenders compute the same thing -------------------------------------------------

def inputs(X, norm, source: str):
    """(rows, shift, scale, normalization) as the contenders take them: the uint8 images with
    their standardisation, or the rows standardised already into float64 with none."""
    if source == "uint8":
        return X, norm.mean, 1 / norm.std, norm
    return (X - norm.mean) / norm.std, None, None, None


@pytest.mark.parametrize("source", ["uint8", "float64"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_numpy_contender_step_equals_reference_and_cbn(batch_norm, source):
    X, y, norm = images(300, seed=3)
    data, shift, scale, given = inputs(X, norm, source)
    net = net_for((20, 10), batch_norm, "float64")
    reference = ReferenceNet(dict(net.params), batch_norm)
    model = NumpyNet(dict(net.params), batch_norm, 100)
    plan = net.plan(100)
    src, pshift, pscale = net.prepare_input(data, given)
    order = np.arange(300, dtype=np.int64)
    plan.set_data(src, y, order, pshift, pscale)
    for b in range(3):
        rows = order[b * 100:(b + 1) * 100]
        ref_loss = reference.sgd_step((X[rows] - norm.mean) / norm.std, y[rows], LAM, 0.05,
                                      first=(b == 0))
        loss = model.train_step(data, y, rows, shift, scale, 0.05, LAM, first=(b == 0))
        cbn_loss, _, _ = plan.train_step(b * 100, 100, 0.05, LAM, 0.0, b == 0)
        penalty = LAM * sum((w ** 2).sum() for k, w in reference.params.items() if k[0] == "W")
        assert abs(cbn_loss / 100 - loss) < 1e-10
        assert ref_loss == pytest.approx(loss + penalty, rel=1e-2)  # penalty after update
    for name, value in reference.params.items():
        np.testing.assert_allclose(model.p[name], value, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(net.params[name], value, rtol=1e-9, atol=1e-12)


def test_numpy_contender_evaluation_equals_cbn():
    X, y, norm = images(700, seed=4)
    net = net_for((20, 10), True, "float64")
    fit(net, X, y, lam=LAM, batch_size=50, schedule=ConstantLR(0.01), epochs=1, seed=0,
        normalization=norm, progress=False)
    model = NumpyNet(dict(net.params), True, 256)
    for l in range(1, 3):
        model.running[f"mean{l}"][...] = net.running_stats[f"running_mean{l}"]
        model.running[f"var{l}"][...] = net.running_stats[f"running_var{l}"]
    loss, correct = model.evaluate(X, y, norm.mean, 1 / norm.std)
    result = net.evaluate(X, y, normalization=norm)
    assert result["loss"] == pytest.approx(loss / 700, rel=1e-10)
    assert result["accuracy"] == correct / 700


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("source", ["uint8", "float64"])
def test_torch_contender_step_equals_numpy_contender(source):
    import torch
    from contender_torch import TorchNet
    X, y, norm = images(200, seed=5)
    data, shift, scale, _ = inputs(X, norm, source)
    net = net_for((20, 10), True, "float64")
    numpy_model = NumpyNet(dict(net.params), True, 100)
    torch_model = TorchNet(dict(net.params), True, 100)
    tensor = lambda a: None if a is None else torch.from_numpy(a)
    for b in range(2):
        rows = np.arange(b * 100, (b + 1) * 100)
        a = numpy_model.train_step(data, y, rows, shift, scale, 0.05, LAM)
        t = torch_model.train_step(tensor(data), tensor(y), tensor(rows), tensor(shift),
                                   tensor(scale), 0.05, LAM)
        assert t == pytest.approx(a, rel=1e-10)
    W1 = torch_model.model[0].weight.detach().numpy().T
    np.testing.assert_allclose(W1, numpy_model.p["W1"], rtol=1e-9, atol=1e-12)


# -- the rounds interleave ------------------------------------------------------------------

class Rounds:
    """A stand-in for pytest-benchmark's ``pedantic``: setup, target, teardown per round."""

    def pedantic(self, target, setup, teardown, rounds):
        for _ in range(rounds):
            setup()
            target()
            teardown()


def test_rounds_rotate_the_contenders_back_to_back_with_the_burst_before_each_block():
    log = []
    runs = {c: functools.partial(log.append, c) for c in ("cbn", "gemm", "numpy")}
    times = interleave(Rounds(), runs, rounds=(4, 4), before=functools.partial(log.append, "+"))
    blocks_run = [c for c in log if c != "+"]
    assert blocks_run == ["cbn", "gemm", "numpy",            # warm-up
                          "cbn", "gemm", "numpy", "gemm", "numpy", "cbn",
                          "numpy", "cbn", "gemm", "cbn", "gemm", "numpy"]
    assert log == [x for c in blocks_run for x in ("+", c)]
    assert {c: len(t) for c, t in times.items()} == {"cbn": 4, "gemm": 4, "numpy": 4}
    assert all(s >= 0 for t in times.values() for s in t)


@pytest.mark.parametrize("seconds, count", [(0.0, 2), (1e9, 6)])
def test_the_round_count_fits_the_time_budget_within_its_bounds(seconds, count):
    runs = {"cbn": lambda: None, "gemm": lambda: None}
    times = interleave(Rounds(), runs, rounds=(2, 6), seconds=seconds)
    assert CaseResult("c", times).n_rounds == count


@pytest.mark.parametrize("source", ["float32", "uint8"])
def test_the_bound_with_rows_reads_each_batch_of_the_order_as_stored(source):
    X, _, _ = dataset(50, source)
    order = np.random.default_rng(3).permutation(50)
    bound = GemmBound([D, 8, K], 20, np.float32, source=X, order=order)
    for start in (0, 20, 0):  # two whole batches fit in 50 rows, then the order starts again
        bound.step()
        assert bound.rows.dtype == X.dtype
        assert np.array_equal(bound.rows, X[order[start:start + 20]])


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_runs_each_contender_once_per_round(name):
    case = CASES[name]
    rows = 600 if case.kind != "evaluate" else 300
    runs = blocks(case, rows)
    expected = {"cbn", "numpy", "gemm", "gemm+rows"} | ({"torch"} if HAS_TORCH else set())
    assert set(runs) == expected and next(iter(runs)) == "cbn"
    times = interleave(Rounds(), runs, rounds=(1, 1), before=burst() if case.burst else None)
    assert CaseResult(name, times).n_rounds == 1


# -- benchmarks (only with --benchmark-only; tests/conftest.py deselects them otherwise) -----

def blas_info() -> dict:
    """The BLAS libraries and thread counts in use (and torch's thread count)."""
    info = {"blas": [{k: pool.get(k) for k in ("internal_api", "version", "num_threads",
                                                 "architecture", "filepath")}
                     for pool in threadpool_info()]}
    if HAS_TORCH:
        import torch
        info["torch_threads"] = torch.get_num_threads()
    return info


@pytest.mark.parametrize("name", list(CASES))
def test_case(benchmark, case_results, name):
    """Interleaved rounds of a case (``ROUNDS``, ``CASE_SECONDS``); they go to the table."""
    case = CASES[name]
    rows = {"epoch": EPOCH_ROWS, "step": STEP_ROWS, "evaluate": EVAL_ROWS}[case.kind]
    benchmark.group = name
    benchmark.extra_info.update(blas_info())
    times = interleave(benchmark, blocks(case, rows), ROUNDS,
                       before=burst() if case.burst else None)
    benchmark.extra_info.update(case=name, rounds=times)
    case_results.append(CaseResult(name, times))

"""Benchmarks: cbn against the GEMM-only bound, NumPy, PyTorch (eager and compiled) and JAX,
interleaved in one process, with cbn's rate against the machine's measured peak.

    pytest tests/test_benchmarks.py --benchmark-only [--benchmark-json=bench.json]
    python scripts/bench_ratios.py bench.json [--markdown]

Each case is one benchmark. After a warm-up round, each timed round times every contender of
the case once, back to back with no pause between them, in an order that rotates from round
to round (5 to 15 rounds, as many as fit in ``CASE_SECONDS`` by the warm-up round's time):
``cbn``, ``gemm`` (only the products the step does, ``numpy.matmul`` with ``out=`` on a fixed
batch: the bound), ``gemm+rows`` (the same products after reading the batch's rows from the
data set as stored, uint8 or float32: the bound with the one read a step cannot avoid),
``numpy`` (the same training in preallocated NumPy), ``torch`` (PyTorch eager), ``compile``
(the same under ``torch.compile``) and ``jax`` (one ``jax.jit`` step); the last three are left
out where torch or jax is not installed; see tests/contender_*.py. In a bf16 case cbn's network
has ``precision="bf16-mixed"``, PyTorch runs under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (eager and compiled), JAX multiplies bfloat16 operands into float32,
and NumPy and the bounds stay float32 (NumPy has no bfloat16 products); bf16 cases skip, with
the reason, where cbn has no bf16 products to run. pytest-benchmark times cbn's block
and its setup and teardown time the others, so its own table shows cbn and the ratios compare
rounds measured together.

Before the timing, every contender that trains (or evaluates) runs ``CHECK_STEPS`` steps at
``CHECK_LR`` on one batch, from the same initial network, and its losses must follow cbn's
within ``TOLERANCE`` of the case's precision; a contender that does not is left out of the
case, with the reason in the summary, so none is timed doing less than cbn. That check and the
warm-up round (compilation included) are untimed; their time is reported once per case.

The run ends with one table of per-round ratios, cbn's GFLOP/s on the case's products and its
share of the peak of the case's precision (measured in the same run: tests/bench_peak.py), a
noise verdict and the goals met or not (tests/bench_table.py), also written beside
``--benchmark-json`` as ``<name>.ratios.md`` and ``<name>.ratios.json``.

Cases (synthetic images of CIFAR-10's shape; float32 networks unless "bf16"):
- one training epoch over ``EPOCH_ROWS`` images (cbn through ``fit(..., epochs=1)``) of each
  network of ``STEP_CASES``, with float32 input (standardised already) and with uint8 input
  and ``normalization=``; once more for the 3-layer BN network at batch 100, with a burst of
  ``numpy.matmul`` on large float32 matrices just before every contender's block (as when a
  notebook has just used NumPy's own BLAS);
- ``WIDE_STEPS`` training steps of the wide [1024, 1024] BN network at batch 100 and 256;
- evaluation (loss and accuracy) of ``EVAL_ROWS`` images by the 3-layer BN network;
- in bf16: the 3-layer BN epoch at batch 100 from uint8, and the wide network's steps.
Every benchmark stores its rounds, FLOPs, precision, warm-up times, the peaks, the BLAS
libraries and thread counts (``threadpoolctl``) and torch's thread count in its ``extra_info``.

A plain ``pytest`` deselects the benchmarks (tests/conftest.py) and runs the checks here:
the contenders compute what cbn computes, every case's contenders run, and the rounds
interleave as described.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from bench_peak import blas_threads, remeasure
from bench_table import CaseResult
from cbn import ConstantLR, Network, fit
from contender_gemm import GemmBound, forward_flops, step_flops
from contender_numpy import NumpyNet
from reference import ReferenceNet

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
D, K = 3072, 10
LR, LAM = 1e-3, 0.005
STEP_CASES = {  # name: (hidden widths, batch norm, batch size)
    "3-layer BN b20": ((50, 50), True, 20),
    "3-layer BN b100": ((50, 50), True, 100),
    "3-layer BN b500": ((50, 50), True, 500),
    "9-layer BN b100": ((50, 30, 20, 20, 10, 10, 10, 10), True, 100),
    "3-layer b100": ((50, 50), False, 100),
}
CONTENDERS = ("cbn", "numpy", "torch", "compile", "jax", "gemm", "gemm+rows")
INSTALLED = {"torch": HAS_TORCH, "compile": HAS_TORCH, "jax": HAS_JAX}
BOUNDS = ("gemm", "gemm+rows")  # products only: nothing to check against cbn's losses
DTYPE = "float32"
CHECK_STEPS = 4       # steps of the check before the timing, all on the case's first batch
CHECK_LR = 0.1        # large enough that a missing update shows in the losses
# largest relative loss difference from cbn's: float32 libraries agree to ~1e-6, bfloat16
# products move these losses by ~1e-3 (so an fp32 case catches a contender in bf16)
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}
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
    precision: str = "fp32"


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
    cases["epoch 3-layer BN b100 uint8+norm bf16"] = Case(
        "epoch", (50, 50), True, 100, "uint8", precision="bf16")
    for batch in WIDE_STEPS:
        cases[f"{WIDE_STEPS[batch]} steps [1024, 1024] BN b{batch} uint8+norm bf16"] = Case(
            "step", (1024, 1024), True, batch, "uint8", precision="bf16")
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


PRECISION = {"fp32": {}, "bf16": {"precision": "bf16-mixed"}}  # Network options per precision


def net_for(hidden, batch_norm: bool, dtype: str, precision: str = "fp32",
            **options) -> Network:
    return Network(D, hidden, K, batch_norm=batch_norm, dtype=np.dtype(dtype), seed=0,
                   **PRECISION[precision], **options)


@functools.lru_cache(maxsize=1)
def bf16_unavailable() -> Optional[str]:
    """Why cbn cannot train in bf16 here (no ``precision=`` option, its extra missing, or a
    CPU without bf16 instructions or with them hidden: the warning it falls back to fp32
    with), or None. Asked once per process: the fallback warns only once."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = net_for((4,), True, "float32", "bf16")
    except TypeError as e:
        return f"this cbn has no bf16 products (Network(..., precision=...): {e})"
    except Exception as e:  # the backend's own one-line error, e.g. its extra not installed
        return f"{type(e).__name__}: {e}"
    if caught:
        return f"bf16 falls back to fp32 here: {caught[0].message}"
    if getattr(net, "bf16", True) is False:  # the fallback warned earlier in the process
        return "bf16 falls back to fp32 here (the network's products run in float32)"
    return None


class Block:
    """One contender's work in a case: calling it runs one round's block; ``check`` (None for
    the bounds) runs the check's work once and returns the mean loss: one training step on
    batch ``b`` at ``lr`` (``check(b, lr)``), or an evaluation (``check()``)."""

    def __init__(self, run: Callable[[], object],
                 check: Optional[Callable[..., float]] = None) -> None:
        self.run, self.check = run, check

    def __call__(self) -> None:
        self.run()


def stepper(contender: str, net: Network, X, y, norm, batch: int,
            precision: str = "fp32") -> Callable[..., Optional[float]]:
    """``step(b=None, lr=LR)``: one training step per call, on batch ``b`` (by default the
    next) of a fixed shuffled order of X's rows (uint8 standardised by ``norm``, or floats as
    they are when ``norm`` is None); the mean loss before the update (None for the bounds)."""
    n_rows = X.shape[0]
    order = np.random.default_rng(1).permutation(n_rows).astype(np.int64)
    starts = list(range(0, n_rows - batch + 1, batch))
    shift = None if norm is None else norm.mean.astype(net.dtype)
    scale = None if norm is None else (1 / norm.std).astype(net.dtype)
    counter = itertools.count()
    bf16 = precision == "bf16"

    def rows(b: Optional[int]) -> np.ndarray:
        start = starts[(next(counter) if b is None else b) % len(starts)]
        return order[start:start + batch]

    if contender == "cbn":
        src, pshift, pscale = net.prepare_input(X, norm)
        plan = net.plan(batch)
        plan.set_data(src, y, order, pshift, pscale)
        plan.set_velocity(None)
        plan.set_dropout(0, 0)
        plan.set_augment(None)

        def step(b=None, lr=LR):
            b = next(counter) if b is None else b
            loss = plan.train_step(starts[b % len(starts)], batch, lr, LAM, 0.0, False, False, b)
            return loss[0] / batch
        return step
    if contender == "numpy":
        model = NumpyNet(dict(net.params), net.batch_norm, batch)
        return lambda b=None, lr=LR: model.train_step(X, y, rows(b), shift, scale, lr, LAM)
    if contender in ("torch", "compile"):
        import torch
        from contender_torch import TorchNet
        model = TorchNet(dict(net.params), net.batch_norm, batch,
                         compiled=contender == "compile", bf16=bf16)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        st = None if shift is None else torch.from_numpy(shift)
        sc = None if scale is None else torch.from_numpy(scale)
        return lambda b=None, lr=LR: model.train_step(Xt, yt, torch.from_numpy(rows(b)),
                                                      st, sc, lr, LAM)
    if contender == "jax":
        from contender_jax import JaxNet
        model = JaxNet(dict(net.params), net.batch_norm, bf16=bf16)
        data = JaxNet.data(X, y, shift, scale)
        return lambda b=None, lr=LR: model.train_step(data, rows(b), lr, LAM)
    bound = (GemmBound(net.dims, batch, net.dtype, source=X, order=order)
             if contender == "gemm+rows" else GemmBound(net.dims, batch, net.dtype))
    return lambda b=None, lr=LR: bound.step()


def repeat(step: Callable[[], object], times: int) -> Callable[[], None]:
    def run():
        for _ in range(times):
            step()
    return run


def evaluator(contender: str, net: Network, X, y, norm, block: int,
              precision: str = "fp32") -> Callable[[], Optional[float]]:
    """Loss and accuracy of every row in evaluation mode (``block`` rows at a time for NumPy,
    PyTorch and JAX; cbn uses its own blocks); returns the mean loss (None for the bounds)."""
    shift, scale = norm.mean.astype(net.dtype), (1 / norm.std).astype(net.dtype)
    n, bf16 = X.shape[0], precision == "bf16"
    if contender == "cbn":
        return lambda: net.evaluate(X, y, normalization=norm)["loss"]
    if contender == "numpy":
        model = NumpyNet(dict(net.params), net.batch_norm, block)
        model.running.update({k.replace("running_", ""): v for k, v in net.running_stats.items()})
        return lambda: model.evaluate(X, y, shift, scale)[0] / n
    if contender in ("torch", "compile"):
        import torch
        from contender_torch import TorchNet
        model = TorchNet(dict(net.params), net.batch_norm, block,
                         compiled=contender == "compile", bf16=bf16)
        model.load_running(net.running_stats)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        st, sc = torch.from_numpy(shift), torch.from_numpy(scale)
        return lambda: model.evaluate(Xt, yt, st, sc)[0] / n
    if contender == "jax":
        from contender_jax import JaxNet
        model = JaxNet(dict(net.params), net.batch_norm, bf16=bf16)
        model.load_running(net.running_stats)
        data = JaxNet.data(X, y, shift, scale)
        return lambda: model.evaluate(data, block)[0] / n
    if contender == "gemm+rows":
        return GemmBound(net.dims, n, net.dtype, source=X, order=np.arange(n)).evaluate
    return GemmBound(net.dims, n, net.dtype).forward


def available(contenders=CONTENDERS) -> Tuple[str, ...]:
    """The contenders of ``contenders`` whose library is installed."""
    return tuple(c for c in contenders if INSTALLED.get(c, True))


def blocks(case: Case, rows: int, contenders=CONTENDERS) -> Dict[str, Block]:
    """What each contender runs once per round of ``case``, on ``rows`` rows of data; cbn
    first; contenders whose library is not installed are left out. Each contender trains its
    own copy of the same initial network."""
    X, y, norm = dataset(rows, case.source)
    out = {}
    for contender in available(contenders):
        net = net_for(case.hidden, case.batch_norm, DTYPE,
                      case.precision if contender == "cbn" else "fp32")
        check = None
        if case.kind == "evaluate":
            run = evaluator(contender, net, X, y, norm, case.batch, case.precision)
            check = run
        else:
            step = stepper(contender, net, X, y, norm, case.batch, case.precision)
            check = step
            if case.kind == "step":
                run = repeat(step, WIDE_STEPS[case.batch])
            elif contender == "cbn":
                run = functools.partial(
                    fit, net, X, y, lam=LAM, batch_size=case.batch, schedule=ConstantLR(LR),
                    epochs=1, seed=0, normalization=norm, progress=False)
            else:  # the same number of steps as fit's epoch (the data are whole batches)
                run = repeat(step, rows // case.batch)
        out[contender] = Block(run, None if contender in BOUNDS else check)
    return out


def check_same_work(case: Case, runs: Dict[str, Block],
                    seconds: Optional[Dict[str, float]] = None) -> Dict[str, str]:
    """Runs every contender's check (``CHECK_STEPS`` training steps at ``CHECK_LR`` on one
    batch, or one evaluation) and compares its losses with cbn's: the contenders whose
    losses differ by more than ``TOLERANCE`` (relative), or whose check failed, and why.
    ``seconds`` receives each check's time (a compiled contender compiles here)."""
    losses: Dict[str, List[float]] = {}
    left_out: Dict[str, str] = {}
    for contender, block in runs.items():
        if block.check is None:
            continue
        start = time.perf_counter()
        try:
            if case.kind == "evaluate":
                losses[contender] = [float(block.check())]
            else:
                losses[contender] = [float(block.check(0, CHECK_LR)) for _ in range(CHECK_STEPS)]
        except Exception as e:  # e.g. torch.compile without a C++ compiler
            left_out[contender] = f"its check failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if seconds is not None:
            seconds[contender] = time.perf_counter() - start
    reference, tolerance = losses.get("cbn"), TOLERANCE[case.precision]
    if reference is None:
        raise RuntimeError(f"cbn's own check failed: {left_out.get('cbn')}")
    for contender, trajectory in losses.items():
        difference = max(abs(a - b) / abs(b) for a, b in zip(trajectory, reference))
        if not difference <= tolerance:  # NaN fails too
            left_out[contender] = (
                f"its losses {', '.join(f'{v:.4f}' for v in trajectory)} differ from cbn's "
                f"{', '.join(f'{v:.4f}' for v in reference)} by {difference:.1e} (relative), "
                f"more than {tolerance:g}")
    return left_out


def case_flops(case: Case, rows: int) -> int:
    """The floating-point operations of the matrix products of cbn's block in ``case``."""
    dims = [D, *case.hidden, K]
    if case.kind == "evaluate":
        return forward_flops(dims, rows)
    steps = WIDE_STEPS[case.batch] if case.kind == "step" else rows // case.batch
    return steps * step_flops(dims, case.batch)


def burst() -> Callable[[], None]:
    """NumPy's own BLAS at work on large float32 products (preallocated, no result kept)."""
    calls, n = BURST
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    C = np.empty((n, n), np.float32)
    return repeat(lambda: np.matmul(A, B, out=C), calls)


def interleave(benchmark, runs: Dict[str, Callable[[], None]], rounds: Tuple[int, int],
               before: Optional[Callable[[], None]] = None,
               seconds: float = CASE_SECONDS,
               warm_up: Optional[Dict[str, float]] = None) -> Dict[str, List[float]]:
    """Seconds per round of each of ``runs`` (which includes "cbn"): one warm-up round, then
    timed rounds in which every contender runs once, back to back, in an order rotated by one
    each round. ``benchmark.pedantic`` times cbn; its setup runs the contenders before cbn in
    the round, its teardown those after. ``before`` runs untimed before every block. There
    are as many timed rounds as the warm-up round says fit in ``seconds``, within ``rounds``
    (fewest, most), so a loaded machine still ends the run in reasonable time. ``warm_up``
    receives each contender's warm-up time."""
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
    warm_up_seconds = time.perf_counter() - start
    if warm_up is not None:
        warm_up.update({c: t[0] for c, t in times.items()})
    for t in times.values():
        t.clear()
    fewest, most = rounds
    count = int(min(max(seconds // max(warm_up_seconds, 1e-9), fewest), most))
    benchmark.pedantic(cbn, setup=setup, teardown=teardown, rounds=count)
    return times


@pytest.fixture(scope="module", autouse=True)
def same_thread_count():
    """PyTorch with as many threads as the BLAS cbn and NumPy use, so all compete alike."""
    if HAS_TORCH:
        import torch
        threads = blas_threads()
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


def skip_without_bf16(case: Case) -> None:
    """A bf16 case skips, with the reason, where cbn cannot train in bf16."""
    if case.precision == "bf16" and (why := bf16_unavailable()) is not None:
        pytest.skip(why)


QUICK = ("cbn", "numpy", "torch", "gemm", "gemm+rows")  # no compilation in a plain run


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_runs_each_contender_once_per_round(name):
    case = CASES[name]
    skip_without_bf16(case)
    rows = 600 if case.kind != "evaluate" else 300
    runs = blocks(case, rows, QUICK)
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
def test_case(benchmark, case_results, peaks, name):
    """The check of equal work, then interleaved rounds of a case (``ROUNDS``,
    ``CASE_SECONDS``); they go to the table."""
    case = CASES[name]
    skip_without_bf16(case)
    remeasure(peaks)  # the highest of the run's measurements (tests/bench_peak.py)
    rows = {"epoch": EPOCH_ROWS, "step": STEP_ROWS, "evaluate": EVAL_ROWS}[case.kind]
    benchmark.group = name
    benchmark.extra_info.update(blas_info())
    runs = blocks(case, rows)
    checked: Dict[str, float] = {}
    left_out = check_same_work(case, runs, checked)
    for contender in left_out:
        del runs[contender]
    warm: Dict[str, float] = {}
    times = interleave(benchmark, runs, ROUNDS, before=burst() if case.burst else None,
                       warm_up=warm)
    warm_up = {c: checked.get(c, 0.0) + warm[c] for c in runs}
    result = CaseResult(name, times, flops=case_flops(case, rows), precision=case.precision,
                        kind=case.kind, batch=case.batch, warm_up=warm_up, left_out=left_out)
    benchmark.extra_info.update(
        case=name, rounds=times, flops=result.flops, precision=case.precision, kind=case.kind,
        batch=case.batch, warm_up=warm_up, left_out=left_out,
        peaks={p: v.to_json() for p, v in peaks.items()})
    case_results.append(result)

"""Benchmarks: cbn against NumPy, PyTorch eager and the GEMM-only bound, in one run.

    pytest tests/test_benchmarks.py --benchmark-only --benchmark-json=bench.json
    python scripts/bench_ratios.py bench.json

Each case is one pytest-benchmark group whose rows are the contenders (tests/contender_*.py):
``cbn``, ``numpy`` (the same step in preallocated NumPy), ``torch`` (PyTorch eager; skipped
without torch) and ``gemm`` (only the step's matrix products, numpy.matmul with ``out=``).
Cases: one training step of the 3-layer BN network at batch 20, 100 and 500, the 9-layer BN
network and the 3-layer network without BN at batch 100; the 3-layer network with BN after
ReLU, with dropout and with flips and shifts at batch 100, and the wide [1024, 1024] BN network
at batch 100 and 256 (cbn and the GEMM bound only: the other contenders build the course's
architecture); one epoch over 45,000 images; an
evaluation of 10,000 images; each in float32 and float64. Data are synthetic uint8 images
of CIFAR-10's shape. Every benchmark records the BLAS libraries and thread counts
(``threadpoolctl``) and torch's thread count in its ``extra_info``.

Without ``--benchmark-only`` nothing is timed: each body runs once, on smaller data, as a
quick check that every contender runs. The first tests check that the contenders compute
what cbn computes, so the benchmarks compare like with like.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Callable, Dict

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cbn import Augment, ConstantLR, Network, fit
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
# Architectures beyond the course's: name -> (hidden widths, batch size, Network options;
# "augment" goes to the training step instead).
ARCH_CASES = {
    "3-layer BN after ReLU b100": ((50, 50), 100, dict(bn_placement="after")),
    "3-layer BN dropout 0.2 b100": ((50, 50), 100, dict(dropout=0.2)),
    "3-layer BN flip+shift b100": ((50, 50), 100, dict(augment=Augment(hflip=True, shift=4))),
    "[1024, 1024] BN b100": ((1024, 1024), 100, {}),
    "[1024, 1024] BN b256": ((1024, 1024), 256, {}),
    "[1024, 1024] BN flip+shift b100": ((1024, 1024), 100,
                                        dict(augment=Augment(hflip=True, shift=4))),
}
DTYPES = ("float32", "float64")
CONTENDERS = ("cbn", "numpy", "torch", "gemm")
STEP_ROWS = 5000      # rows the step benchmarks cycle through (10 batches of 500)
EPOCH_ROWS = 45000    # rows of the epoch benchmark (500 without --benchmark-only)
EVAL_ROWS = 10000     # rows of the evaluation benchmark (1,000 without --benchmark-only)
IDLE_PAUSE = 0.5      # seconds between contenders for the last one's threads to park


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


def timing(request) -> bool:
    return bool(request.config.getoption("benchmark_only"))


@pytest.fixture
def bench(benchmark, request):
    """``benchmark`` that times only under ``--benchmark-only`` (else it runs the body once),
    with the BLAS libraries and thread counts in its extra_info.

    Before timing, it waits until the previous contender's thread pool is idle: OpenBLAS's
    and OpenMP's workers spin for a while after their last job (up to ~0.1 s), and a
    spinning pool on a 2-core machine halves the next contender's cores."""
    if not timing(request):
        benchmark.disabled = True
    else:
        time.sleep(IDLE_PAUSE)
    benchmark.extra_info["blas"] = [
        {k: pool.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                  "filepath")} for pool in threadpool_info()]
    if HAS_TORCH:
        import torch
        benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    return benchmark


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


@pytest.fixture(scope="module")
def step_data():
    return images(STEP_ROWS)


def need(contender: str) -> None:
    if contender == "torch" and not HAS_TORCH:
        pytest.skip("torch is not installed (pip install torch==2.13.0)")


def net_for(hidden, batch_norm: bool, dtype: str, **options) -> Network:
    return Network(D, hidden, K, batch_norm=batch_norm, dtype=np.dtype(dtype), seed=0,
                   **options)


def stepper(contender: str, net: Network, X, y, norm, batch: int,
            augment=None) -> Callable[[], None]:
    """One training step per call, on the next batch of a fixed shuffled order (augmented
    with ``augment`` for cbn; the GEMM bound has no gather to augment)."""
    n_rows = X.shape[0]
    order = np.random.default_rng(1).permutation(n_rows).astype(np.int64)
    starts = list(range(0, n_rows - batch + 1, batch))
    shift = norm.mean.astype(net.dtype)
    scale = (1 / norm.std).astype(net.dtype)
    counter = iter(range(10**12))

    if contender == "cbn":
        src, shift, scale = net.prepare_input(X, norm)
        plan = net.plan(batch)
        plan.set_data(src, y, order, shift, scale)
        plan.set_velocity(None)
        plan.set_dropout(0, 0)
        plan.set_augment(None if augment is None else augment.plan_args(D, 0))
        dropout = net.has_dropout

        def step():
            b = next(counter)
            plan.train_step(starts[b % len(starts)], batch, LR, LAM, 0.0, False, dropout, b)
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
        st, sc = torch.from_numpy(shift), torch.from_numpy(scale)
        return lambda: model.train_step(Xt, yt, ot[(s := starts[next(counter) % len(starts)]):
                                                   s + batch], st, sc, LR, LAM)
    bound = GemmBound(net.dims, batch, net.dtype)
    return bound.step


# -- the contenders compute the same thing -------------------------------------------------

@pytest.mark.parametrize("batch_norm", [True, False])
def test_numpy_contender_step_equals_reference_and_cbn(batch_norm):
    X, y, norm = images(300, seed=3)
    net = net_for((20, 10), batch_norm, "float64")
    reference = ReferenceNet(dict(net.params), batch_norm)
    model = NumpyNet(dict(net.params), batch_norm, 100)
    shift, scale = norm.mean, 1 / norm.std
    plan = net.plan(100)
    src, pshift, pscale = net.prepare_input(X, norm)
    order = np.arange(300, dtype=np.int64)
    plan.set_data(src, y, order, pshift, pscale)
    for b in range(3):
        rows = order[b * 100:(b + 1) * 100]
        ref_loss = reference.sgd_step((X[rows] - shift) * scale, y[rows], LAM, 0.05,
                                      first=(b == 0))
        loss = model.train_step(X, y, rows, shift, scale, 0.05, LAM, first=(b == 0))
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
def test_torch_contender_step_equals_numpy_contender():
    import torch
    from contender_torch import TorchNet
    X, y, norm = images(200, seed=5)
    net = net_for((20, 10), True, "float64")
    numpy_model = NumpyNet(dict(net.params), True, 100)
    torch_model = TorchNet(dict(net.params), True, 100)
    shift, scale = norm.mean, 1 / norm.std
    for b in range(2):
        rows = np.arange(b * 100, (b + 1) * 100)
        a = numpy_model.train_step(X, y, rows, shift, scale, 0.05, LAM)
        t = torch_model.train_step(torch.from_numpy(X), torch.from_numpy(y),
                                   torch.from_numpy(rows), torch.from_numpy(shift),
                                   torch.from_numpy(scale), 0.05, LAM)
        assert t == pytest.approx(a, rel=1e-10)
    W1 = torch_model.model[0].weight.detach().numpy().T
    np.testing.assert_allclose(W1, numpy_model.p["W1"], rtol=1e-9, atol=1e-12)


# -- benchmarks ----------------------------------------------------------------------------

@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step(bench, request, step_data, case, dtype, contender):
    """One training step (gather, forward, loss, backward, update)."""
    need(contender)
    hidden, batch_norm, batch = STEP_CASES[case]
    bench.group = f"step {case} {dtype}"
    step = stepper(contender, net_for(hidden, batch_norm, dtype), *step_data, batch)
    if timing(request):
        for _ in range(3):  # warm up: plans, BLAS buffers and thread pools
            step()
    bench(step)


@pytest.mark.parametrize("contender", ("cbn", "gemm"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(ARCH_CASES))
def test_step_architecture(bench, request, step_data, case, dtype, contender):
    """One training step of an architecture beyond the course's, against the GEMM bound."""
    bench.group = f"step {case} {dtype}"
    hidden, batch, options = ARCH_CASES[case]
    options = dict(options)
    augment = options.pop("augment", None)
    step = stepper(contender, net_for(hidden, True, dtype, **options), *step_data, batch,
                   augment)
    if timing(request):
        for _ in range(3):
            step()
    bench(step)


@pytest.fixture(scope="module")
def epoch_data(request):
    return images(EPOCH_ROWS if timing(request) else 500, seed=1)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_epoch(bench, epoch_data, dtype, contender):
    """One epoch of the 3-layer BN network at batch 100 over the whole set: cbn through
    ``fit`` (shuffling and the Python loop included), the others through their step."""
    need(contender)
    X, y, norm = epoch_data
    batch = 100
    bench.group = f"epoch {X.shape[0]} images 3-layer BN b100 {dtype}"
    net = net_for((50, 50), True, dtype)
    if contender == "cbn":
        def run():
            fit(net, X, y, lam=LAM, batch_size=batch, schedule=ConstantLR(LR), epochs=1,
                seed=0, normalization=norm, progress=False, eval_train=False)
    else:
        step = stepper(contender, net, X, y, norm, batch)
        steps = X.shape[0] // batch

        def run():
            for _ in range(steps):
                step()
    bench.pedantic(run, rounds=3, warmup_rounds=1)


@pytest.fixture(scope="module")
def eval_data(request):
    return images(EVAL_ROWS if timing(request) else 1000, seed=2)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluation(bench, eval_data, dtype, contender):
    """Loss and accuracy of the 3-layer BN network (evaluation mode) on every image."""
    need(contender)
    X, y, norm = eval_data
    bench.group = f"evaluate {X.shape[0]} images 3-layer BN {dtype}"
    net = net_for((50, 50), True, dtype)
    shift, scale = norm.mean.astype(net.dtype), (1 / norm.std).astype(net.dtype)
    if contender == "cbn":
        def run():
            net.evaluate(X, y, normalization=norm)
    elif contender == "numpy":
        model = NumpyNet(dict(net.params), True, 1000)
        model.running.update({k.replace("running_", ""): v for k, v in net.running_stats.items()})

        def run():
            model.evaluate(X, y, shift, scale)
    elif contender == "torch":
        import torch
        from contender_torch import TorchNet
        model = TorchNet(dict(net.params), True, 1000)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        st, sc = torch.from_numpy(shift), torch.from_numpy(scale)

        def run():
            model.evaluate(Xt, yt, st, sc)
    else:
        run = GemmBound(net.dims, X.shape[0], net.dtype).forward
    bench.pedantic(run, rounds=5, warmup_rounds=1)

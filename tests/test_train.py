"""fit: learning, schedule and batching, history, reproducibility, optimizers, dropout,
resuming, argument checks."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from reference import ReferenceNet
from tiny_optim import TinyAdam, TinySGD
from cbn import ConstantLR, CyclicLR, Network, _ops, fit
from cbn import checkpoint as cbn_checkpoint
from cbn.checkpoint import CheckpointError
from cbn.train import steps_per_epoch


def blobs(n=100, d=20, k=5, seed=0, dt=np.float64):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.standard_normal((n, d)) + 0.3 * rng.standard_normal((k, d))[y]
    return X.astype(dt), y


@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_network_overfits_100_samples(bn, dt):
    X, y = blobs(dt=dt)
    net = Network(20, [50, 50], 5, batch_norm=bn, dtype=dt, seed=0)
    fit(net, X, y, lam=0.0, batch_size=10, schedule=CyclicLR(1e-3, 0.1, 100), cycles=2,
        seed=0, progress=False)
    assert net.accuracy(X, y) >= 0.95


def test_one_step_equals_numpy_reference_sgd_step():
    X, y = blobs(n=8)
    net = Network(20, [6, 5], 5, seed=4, dtype=np.float64)
    reference = ReferenceNet(dict(net.params), True)
    order = np.random.default_rng(9).permutation(8)  # fit's shuffle for seed 9
    reference.sgd_step(X[order], y[order], lam=0.01, lr=0.05, first=True)
    fit(net, X, y, lam=0.01, batch_size=8, schedule=0.05, epochs=1, seed=9, progress=False)
    for name, p in net.params.items():
        np.testing.assert_allclose(p, reference.params[name], rtol=1e-10, atol=1e-12)
    for name, v in net.running_stats.items():
        np.testing.assert_allclose(v, reference.running[name], rtol=1e-10, atol=1e-12)


def test_first_batch_initialises_running_statistics_then_ema_follows():
    X, y = blobs(n=40)
    net = Network(20, [6], 5, seed=0, dtype=np.float64)
    reference = ReferenceNet(dict(net.params), True)
    order = np.random.default_rng(1).permutation(40)
    for b in range(4):
        rows = order[b * 10:(b + 1) * 10]
        reference.sgd_step(X[rows], y[rows], lam=0.0, lr=0.0, first=(b == 0))
    fit(net, X, y, lam=0.0, batch_size=10, schedule=0.0, epochs=1, seed=1, progress=False)
    np.testing.assert_allclose(net.running_stats["running_mean1"], reference.running["running_mean1"])
    np.testing.assert_allclose(net.running_stats["running_var1"], reference.running["running_var1"])


def test_same_seed_gives_identical_history_and_parameters():
    X, y = blobs()
    runs = []
    for _ in range(2):
        net = Network(20, [10], 5, seed=3, dtype=np.float32)
        h = fit(net, X, y, X_val=X[:30], y_val=y[:30], lam=0.01, batch_size=16,
                schedule=CyclicLR(1e-3, 0.1, 10), cycles=2, seed=5, progress=False)
        runs.append((net.flat_params.copy(), h.as_dict()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert {k: v for k, v in runs[0][1].items() if k != "wall_time"} == \
           {k: v for k, v in runs[1][1].items() if k != "wall_time"}


def test_different_shuffle_seed_changes_the_result():
    X, y = blobs()
    params = []
    for seed in (1, 2):
        net = Network(20, [10], 5, seed=3)
        fit(net, X, y, lam=0.0, batch_size=16, schedule=0.05, epochs=1, seed=seed, progress=False)
        params.append(net.flat_params.copy())
    assert not np.array_equal(*params)


def test_cycles_set_the_number_of_steps_and_history_points():
    X, y = blobs(n=100)
    net = Network(20, [10], 5, seed=0)
    h = fit(net, X, y, X_val=X, y_val=y, lam=0.0, batch_size=20,
            schedule=CyclicLR(1e-4, 0.05, 7), cycles=2, seed=0, progress=False,
            eval_train=True)
    assert h.step[-1] == 28                      # 2 cycles of 2 * 7 steps
    assert h.step == [5, 10, 15, 20, 25, 28]     # every epoch (5 steps) and the end
    assert h.lr[-1] == pytest.approx(CyclicLR(1e-4, 0.05, 7).lr(27))
    assert all(0 <= a <= 1 for a in h.val_accuracy + h.train_accuracy)
    assert all(c >= l for c, l in zip(h.train_cost, h.train_loss))


def test_eval_every_adds_history_points():
    X, y = blobs(n=100)
    net = Network(20, [10], 5, seed=0)
    h = fit(net, X, y, lam=0.0, batch_size=20, schedule=0.01, epochs=2, eval_every=3,
            seed=0, progress=False, eval_train=True)
    assert h.step == [3, 5, 6, 9, 10]
    assert h.val_accuracy == [] and len(h.train_accuracy) == len(h.batch_loss) == 5


def test_training_set_is_scored_only_on_request():
    X, y = blobs(n=100)
    runs = {}
    for eval_train in (False, True):
        net = Network(20, [10], 5, seed=0)
        runs[eval_train] = fit(net, X, y, X_val=X[:40], y_val=y[:40], lam=0.01, batch_size=20,
                               schedule=0.01, epochs=2, seed=0, progress=False,
                               eval_train=eval_train), net
    default = fit(Network(20, [10], 5, seed=0), X, y, lam=0.01, batch_size=20, schedule=0.01,
                  epochs=1, seed=0, progress=False)
    assert default.train_loss == []              # off by default: training alone
    (off, _), (on, net) = runs[False], runs[True]
    assert off.train_loss == off.train_cost == off.train_accuracy == []
    assert off.step == on.step == [5, 10] and off.val_loss == on.val_loss  # same training
    assert off.batch_loss == on.batch_loss
    scores = net.evaluate(X, y, lam=0.01)
    assert on.train_loss[-1] == pytest.approx(scores["loss"], rel=1e-12)
    assert on.train_cost[-1] == pytest.approx(scores["cost"], rel=1e-12)
    assert on.train_accuracy[-1] == scores["accuracy"]


def test_uint8_images_with_normalization_match_prenormalised_floats():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 12), dtype=np.uint8)
    y = rng.integers(0, 3, 60)

    class Norm:
        mean = images.mean(axis=0)
        std = images.std(axis=0)

    floats = (images - Norm.mean) / Norm.std
    a, b = (Network(12, [8], 3, seed=1, dtype=np.float64),
            Network(12, [8], 3, seed=1, dtype=np.float64))
    fit(a, images, y, lam=0.01, batch_size=10, schedule=0.05, epochs=2, seed=2,
        normalization=Norm, progress=False)
    fit(b, floats, y, lam=0.01, batch_size=10, schedule=0.05, epochs=2, seed=2, progress=False)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-9, atol=1e-12)


def test_remainder_batch_of_one_is_dropped_with_batch_norm():
    assert steps_per_epoch(101, 10, batch_norm=True) == 10
    assert steps_per_epoch(101, 10, batch_norm=False) == 11
    assert steps_per_epoch(102, 10, batch_norm=True) == 11
    X, y = blobs(n=101)
    net = Network(20, [10], 5, seed=0)
    h = fit(net, X, y, lam=0.0, batch_size=10, schedule=0.01, epochs=1, seed=0, progress=False)
    assert h.step == [10]


def test_progress_bar_is_shown_on_request(capsys):
    X, y = blobs(n=40)
    fit(Network(20, [5], 5, seed=0), X, y, lam=0.0, batch_size=10, schedule=0.01, epochs=1,
        progress=True)
    assert "training" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs", [
    dict(cycles=1, epochs=1), dict(), dict(batch_size=0), dict(batch_size=1), dict(lam=-0.1),
    dict(schedule="fast"), dict(schedule=ConstantLR(0.1), cycles=1, epochs=None),
    dict(X_val=np.ones((3, 20))), dict(momentum=1.0), dict(eval_every=0), dict(seed=-2),
])
def test_bad_fit_arguments_raise(kwargs):
    X, y = blobs(n=20)
    args = dict(lam=0.0, batch_size=5, schedule=CyclicLR(1e-3, 0.1, 5), epochs=1, progress=False)
    args.update(kwargs)
    if "cycles" in kwargs and "epochs" not in kwargs:
        args.pop("epochs")
    if kwargs == {}:
        args.pop("epochs")
    with pytest.raises((ValueError, TypeError)):
        fit(Network(20, [5], 5, seed=0), X, y, **args)


# -- optimizers, dropout, BN after ReLU -------------------------------------------------------

def reference_adam(params, grads, state, lr, t, b1=0.9, b2=0.999, eps=1e-8):
    """PyTorch's Adam, parameter by parameter."""
    for name, g in grads.items():
        m, v = state.setdefault(name, (np.zeros_like(g), np.zeros_like(g)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[name] = (m, v)
        params[name] -= lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)


@pytest.mark.parametrize("placement, dropout", [("before", 0.0), ("after", 0.3), ("before", 0.5)])
def test_adam_steps_with_dropout_equal_the_numpy_reference(placement, dropout):
    """The grads-only compiled step (dropout masks of (seed, step, layer)) followed by the
    optimizer's update, against the reference network and Adam written out per parameter."""
    X, y = blobs(n=8)
    net = Network(20, [6, 5], 5, seed=4, bn_placement=placement, dropout=dropout,
                  dtype=np.float64)
    params = {k: v.copy() for k, v in net.params.items()}
    rng, state = np.random.default_rng(9), {}
    for step in range(3):
        order = rng.permutation(8)  # fit's shuffle for seed 9, one batch per epoch
        reference = ReferenceNet(params, True, placement=placement, dropout=net.dropout,
                                 dropout_key=(9, step))
        _, grads, _ = reference.cost_and_grads(X[order], y[order], 0.01)
        reference_adam(params, grads, state, lr=0.05, t=step + 1)
    fit(net, X, y, lam=0.01, batch_size=8, schedule=0.05, epochs=3, seed=9, progress=False,
        optimizer=TinyAdam())
    for name, p in net.params.items():
        # atol: biases before BN have gradients of pure rounding noise (~1e-17), which Adam's
        # eps turns into steps of ~1e-10 that differ between the two.
        np.testing.assert_allclose(p, params[name], rtol=1e-9, atol=1e-9)


def test_a_fused_optimizer_runs_the_built_in_momentum_update():
    X, y = blobs()
    a, b = (Network(20, [10], 5, seed=3, dropout=0.2) for _ in range(2))
    fit(a, X, y, lam=0.01, batch_size=16, schedule=0.05, epochs=2, seed=1, momentum=0.9,
        progress=False)
    fit(b, X, y, lam=0.01, batch_size=16, schedule=0.05, epochs=2, seed=1, progress=False,
        optimizer=TinySGD(momentum=0.9))
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_same_seed_gives_identical_history_with_an_optimizer(dropout):
    X, y = blobs()
    runs = []
    for _ in range(2):
        net = Network(20, [10, 8], 5, seed=3, dtype=np.float32, bn_placement="after",
                      dropout=dropout)
        h = fit(net, X, y, X_val=X[:30], y_val=y[:30], lam=0.01, batch_size=16,
                schedule=CyclicLR(1e-3, 0.05, 10), cycles=2, seed=5, progress=False,
                optimizer=TinyAdam())
        runs.append((net.flat_params.copy(), h.as_dict()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert {k: v for k, v in runs[0][1].items() if k != "wall_time"} == \
           {k: v for k, v in runs[1][1].items() if k != "wall_time"}


def test_dropout_changes_training_and_its_masks_follow_the_seed():
    X, y = blobs()
    results = {}
    for dropout, seed in ((0.0, 1), (0.5, 1), (0.5, 2)):
        net = Network(20, [10], 5, seed=3, dropout=dropout)
        fit(net, X, y, lam=0.0, batch_size=100, schedule=0.05, epochs=2, seed=seed,
            progress=False)
        results[dropout, seed] = net.flat_params.copy()
    assert not np.array_equal(results[0.0, 1], results[0.5, 1])
    assert not np.array_equal(results[0.5, 1], results[0.5, 2])


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.mark.parametrize("optimizer", [TinyAdam, TinySGD], ids=["adam", "fused_sgd"])
@pytest.mark.parametrize("net_args", [dict(dropout=0.3), dict(dropout=0.3, bn_placement="after"),
                                      dict(dropout=[0.0, 0.5], batch_norm=False), dict()])
@pytest.mark.parametrize("crash_step", [4, 11])  # mid-epoch, after an eval point
def test_resume_with_an_optimizer_and_dropout_is_bit_identical(tmp_path, monkeypatch, optimizer,
                                                               net_args, crash_step):
    from cbn import checkpoint as ckpt_module
    from cbn import train as train_module
    X, y = blobs(n=50, d=8, k=3)
    run = dict(lam=0.01, batch_size=8, schedule=CyclicLR(1e-3, 0.05, 9), cycles=1, seed=4,
               eval_every=5, X_val=X[:20], y_val=y[:20], progress=False)
    new_net = lambda: Network(8, [6, 5], 3, seed=1, **net_args)  # noqa: E731
    expected = new_net()
    expected_history = fit(expected, X, y, optimizer=optimizer(), **run)

    original = ckpt_module.save_checkpoint

    def save_then_crash(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == crash_step:
            raise Crash
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(new_net(), X, y, optimizer=optimizer(), checkpoint=path, checkpoint_every=1, **run)
    monkeypatch.undo()
    saved = cbn_checkpoint.load_checkpoint(path)
    assert saved.step == crash_step and saved.optimizer["name"] == optimizer.__name__
    net = new_net()
    history = fit(net, X, y, optimizer=optimizer(), resume=path, **run)
    np.testing.assert_array_equal(net.flat_params, expected.flat_params)
    for k, v in net.running_stats.items():
        np.testing.assert_array_equal(v, expected.running_stats[k])
    assert {k: v for k, v in history.as_dict().items() if k != "wall_time"} == \
           {k: v for k, v in expected_history.as_dict().items() if k != "wall_time"}


def test_resume_refuses_another_optimizer_or_none(tmp_path):
    X, y = blobs(n=40)
    run = dict(lam=0.0, batch_size=8, schedule=0.01, epochs=2, seed=0, progress=False)
    path = tmp_path / "run.npz"
    fit(Network(20, [6], 5, seed=0), X, y, optimizer=TinyAdam(), checkpoint=path, **run)
    with pytest.raises(CheckpointError, match="different run.*optimizer"):
        fit(Network(20, [6], 5, seed=0), X, y, optimizer=TinyAdam(beta1=0.8), resume=path, **run)
    with pytest.raises(CheckpointError, match="optimizer"):
        fit(Network(20, [6], 5, seed=0), X, y, resume=path, **run)


def test_a_run_without_a_seed_keeps_its_dropout_key_in_the_checkpoint(tmp_path):
    X, y = blobs(n=40)
    path = tmp_path / "run.npz"
    fit(Network(20, [6], 5, seed=0, dropout=0.5), X, y, lam=0.0, batch_size=8, schedule=0.01,
        epochs=1, progress=False, checkpoint=path)
    keys = {cbn_checkpoint.load_checkpoint(path).dropout_key}
    fit(Network(20, [6], 5, seed=0, dropout=0.5), X, y, lam=0.0, batch_size=8, schedule=0.01,
        epochs=1, progress=False, checkpoint=path)
    keys.add(cbn_checkpoint.load_checkpoint(path).dropout_key)
    assert len(keys) == 2  # drawn afresh for each unseeded run


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(optimizer=TinyAdam(), momentum=0.9), ValueError, "momentum"),
    (dict(optimizer="adam"), TypeError, "optimizer"),
    (dict(optimizer=TinySGD(momentum=1.5)), ValueError, "fused_momentum"),
    (dict(schedule=object()), TypeError, "schedule"),
])
def test_bad_optimizer_arguments_raise(kwargs, error, match):
    X, y = blobs(n=20)
    args = dict(lam=0.0, batch_size=5, schedule=0.01, epochs=1, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fit(Network(20, [5], 5, seed=0), X, y, **args)


def default_path_fits():
    """Short fits of the default architecture (BN before ReLU, no dropout, built-in SGD) over
    thread counts, BN, dtypes, momentum and batch sizes on both sides of the transposed weight
    product: sha256[:16] of each final state."""
    rng = np.random.default_rng(7)
    X = rng.integers(0, 256, (1000, 300), dtype=np.uint8)
    y = rng.integers(0, 10, 1000).astype(np.int64)
    norm = type("Norm", (), dict(mean=X.mean(axis=0), std=X.std(axis=0) + 1))
    out = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            for bn in (True, False):
                for dt in ("float32", "float64"):
                    for mom in (0.0, 0.9):
                        for bs in (100, 500):
                            net = Network(300, [20, 15], 10, batch_norm=bn, dtype=dt, seed=3)
                            fit(net, X, y, lam=0.005, batch_size=bs,
                                schedule=CyclicLR(1e-5, 1e-1, 5), epochs=2, seed=4,
                                normalization=norm, momentum=mom, progress=False)
                            h = hashlib.sha256(net.flat_params.tobytes())
                            for v in net.running_stats.values():
                                h.update(v.tobytes())
                            out[f"{threads} {bn} {dt} {mom} {bs}"] = h.hexdigest()[:16]
    return out


def test_default_architecture_trains_bit_identically_to_the_recorded_build():
    recorded = json.loads((Path(__file__).parent / "default_path_hashes.json").read_text())
    arch = {i.get("internal_api"): i.get("architecture") for i in threadpool_info()}
    if arch.get("openblas") != recorded["openblas_architecture"] or not _ops.OPENMP:
        pytest.skip(f"hashes recorded with OpenBLAS {recorded['openblas_architecture']} kernels "
                    f"and OpenMP; this is {arch.get('openblas')}")
    assert default_path_fits() == recorded["hashes"]

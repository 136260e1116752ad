"""fit: learning, schedule and batching, history, reproducibility, argument checks."""
import numpy as np
import pytest

from reference import ReferenceNet
from cbn import ConstantLR, CyclicLR, Network, fit
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
    net = Network(20, [6, 5], 5, seed=4)
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
    net = Network(20, [6], 5, seed=0)
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
    a, b = Network(12, [8], 3, seed=1), Network(12, [8], 3, seed=1)
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

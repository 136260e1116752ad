"""Mixup (rows and targets mixed in the compiled gather and the cross-entropy kernel),
against an independent NumPy implementation of the same transform and, when installed,
torch's; through fit, resume, the options table, the search space and the estimator."""
import json

import numpy as np
import pytest

from reference import ReferenceNet, softmax
from cbn import Augment, Mixup, Network, fit
from cbn import ops as kernels
from cbn.checkpoint import CheckpointError
from cbn.data import Normalization
from cbn.gradcheck import gradcheck


# -- the reference: timm's batch-mode mixup, written again in NumPy ---------------------------

def mixup_reference(X: np.ndarray, y: np.ndarray, lam: float, K: int, eps: float = 0.0):
    """(mixed rows, mixed targets): x_i := lam x_i + (1 - lam) x_{n-1-i} in X's dtype (lam and
    1 - lam rounded to it; an odd batch's middle row kept), target lam q(y_i) + (1 - lam)
    q(y_{n-1-i}) with q(t) = (1 - eps) onehot(t) + eps / K (timm's mixup_target)."""
    n = len(y)
    dt = X.dtype.type
    mixed = dt(lam) * X + dt(1 - lam) * X[::-1]
    if n % 2:
        mixed[n // 2] = X[n // 2]
    Q = np.full((n, K), eps / K)
    Q[np.arange(n), y] += 1 - eps
    return mixed, lam * Q + (1 - lam) * Q[::-1]


def images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return src, Normalization(src.mean(0), src.std(0) + 1.0)


def test_the_share_is_the_documented_beta_draw_and_the_partner_the_reversed_batch():
    mix = Mixup(0.4)
    assert mix.share(7, 3) == np.random.default_rng([7, 3]).beta(0.4, 0.4)
    assert mix.share(2**64 - 1, 2**64 - 1) == \
        np.random.default_rng([2**64 - 1, 2**64 - 1]).beta(0.4, 0.4)
    shares = [Mixup(1.0).share(0, s) for s in range(400)]
    assert 0.4 < np.mean(shares) < 0.6 and min(shares) < 0.05 and max(shares) > 0.95
    np.testing.assert_array_equal(Mixup.partner(5), [4, 3, 2, 1, 0])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 12])
@pytest.mark.parametrize("augment", [None, Augment(hflip=True, shift=3, noise=0.1)])
def test_gathered_batch_matches_numpy_reference(dt, n, augment):
    src, norm = images(n=15)
    idx = np.random.default_rng(n).permutation(15)[:n]
    plain = kernels.gather_rows(src, idx, norm.mean, 1 / norm.std, dtype=dt, augment=augment,
                                seed=5, step=9)
    mix = Mixup(0.5)
    got = kernels.gather_rows(src, idx, norm.mean, 1 / norm.std, dtype=dt, augment=augment,
                              seed=5, step=9, mixup=mix)
    expected, _ = mixup_reference(plain, np.zeros(n, np.int64), mix.share(5, 9), 10)
    np.testing.assert_array_equal(got, expected)


def test_column_slices_mix_as_whole_rows():
    from cbn import _ops
    src, norm = images(n=9)
    idx = np.arange(9, dtype=np.int64)
    shift, scale = norm.mean, (1 / norm.std).astype(np.float32)
    mix = np.full(9, 0.3)
    whole = np.zeros((9, 3072), np.float32)
    _ops.gather_rows(src, idx, shift, scale, whole, None, mix=mix)
    pieces = np.full((9, 3072), np.nan, np.float32)
    for j0, j1 in ((0, 1000), (1000, 1001), (1001, 3072)):
        _ops.gather_rows(src, idx, shift, scale, pieces, None, j0, j1, mix=mix)
    np.testing.assert_array_equal(pieces, whole)
    with pytest.raises(ValueError, match="mix has 3 values for 9 rows"):
        _ops.gather_rows(src, idx, shift, scale, whole, None, mix=mix[:3])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_kernel_matches_the_soft_target_reference(dt, eps, weighted):
    rng = np.random.default_rng(1)
    n, K = 9, 6
    Z = (3 * rng.standard_normal((n, K))).astype(dt)
    y = rng.integers(0, K, n)
    y[2] = y[n - 3]  # a row whose partner has its label
    shares = rng.uniform(size=n)
    w = rng.uniform(0.5, 2, n) if weighted else None
    loss, G, correct = kernels.softmax_cross_entropy(Z, y, label_smoothing=eps,
                                                     sample_weight=w, mix=shares)
    Q = np.full((n, K), eps / K)
    Q[np.arange(n), y] += 1 - eps
    Q = shares[:, None] * Q + (1 - shares[:, None]) * Q[::-1]
    c = np.full(n, 1 / n) if w is None else w / w.sum()
    P = softmax(Z.astype(np.float64))
    tol = dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(float((c * -(Q * np.log(P)).sum(1)).sum()), rel=tol["rtol"])
    np.testing.assert_allclose(G, (P - Q) * c[:, None], **tol)
    assert correct == int((Z.argmax(1) == y).sum())


def test_a_share_of_one_is_the_plain_loss_bit_for_bit():
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    plain = kernels.softmax_cross_entropy(Z, y, label_smoothing=0.1)
    mixed = kernels.softmax_cross_entropy(Z, y, label_smoothing=0.1, mix=1.0)
    assert plain[0] == mixed[0] and plain[2] == mixed[2]
    np.testing.assert_array_equal(plain[1], mixed[1])


@pytest.mark.parametrize("mix, error, match", [
    (1.5, ValueError, r"mix must be in \[0, 1\]"),
    (float("nan"), ValueError, r"mix must be in \[0, 1\]"),
    (np.zeros(3), ValueError, "one value per row"),
    ("half", (TypeError, ValueError), "mix"),
])
def test_loss_kernel_checks_the_shares(mix, error, match):
    Z = np.zeros((4, 3))
    with pytest.raises(error, match=match):
        kernels.softmax_cross_entropy(Z, np.arange(4) % 3, mix=mix)


def test_torch_mixes_and_scores_the_same():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    src, norm = images(n=10)
    idx = rng.permutation(10)
    mix = Mixup(0.7)
    lam = mix.share(1, 4)
    plain = kernels.gather_rows(src, idx, norm.mean, 1 / norm.std, dtype=np.float64, seed=1,
                                step=4)
    got = kernels.gather_rows(src, idx, norm.mean, 1 / norm.std, dtype=np.float64, seed=1,
                              step=4, mixup=mix)
    x = torch.from_numpy(plain)
    expected = x.mul(lam).add(x.flip(0).mul(1 - lam))  # timm's Mixup._mix_batch
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-14, atol=1e-14)
    Z = torch.tensor(rng.standard_normal((10, 10)), requires_grad=True)
    y = torch.from_numpy(rng.integers(0, 10, 10))
    off = 0.1 / 10
    one_hot = torch.nn.functional.one_hot(y, 10).double() * (1 - 0.1) + off
    target = one_hot * lam + one_hot.flip(0) * (1 - lam)  # timm's mixup_target
    loss = torch.sum(-target * torch.nn.functional.log_softmax(Z, dim=-1), dim=-1).mean()
    loss.backward()
    ours, G, _ = kernels.softmax_cross_entropy(Z.detach().numpy(), y.numpy(),
                                               label_smoothing=0.1, mix=lam)
    assert ours == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(G, Z.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1),
                                     dict(sample_weight=np.linspace(0.5, 2, 7))])
def test_mixup_passes_the_gradient_check(options):
    result = gradcheck(hidden=(8, 6), input_dim=5, n=7, mix=0.3, **options)
    assert result.passed, result.table()


def test_one_fit_step_with_mixup_equals_the_numpy_reference_step():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((8, 20))
    y = np.arange(8) % 5
    net = Network(20, [6, 5], 5, seed=4, dtype=np.float64)
    reference = ReferenceNet(dict(net.params), True)
    order = np.random.default_rng(9).permutation(8)  # fit's shuffle for seed 9
    Xm, Q = mixup_reference(X[order], y[order], Mixup(0.3).share(9, 0), 5, eps=0.1)
    reference.sgd_step(Xm, Q, lam=0.01, lr=0.05, first=True)
    fit(net, X, y, lam=0.01, batch_size=8, schedule=0.05, epochs=1, seed=9, progress=False,
        mixup=Mixup(0.3), label_smoothing=0.1, normalization=False)
    for name, p in net.params.items():
        np.testing.assert_allclose(p, reference.params[name], rtol=1e-10, atol=1e-12)
    for name, v in net.running_stats.items():
        np.testing.assert_allclose(v, reference.running[name], rtol=1e-10, atol=1e-12)


def test_fit_mixes_training_only_deterministically_and_leaves_no_mixing_behind():
    src, norm = images(n=60, seed=2)
    y = np.arange(60) % 10
    run = dict(X_val=src[:20], y_val=y[:20], normalization=norm, lam=0.001, batch_size=20,
               schedule=0.05, epochs=2, seed=0, progress=False)
    plain, mixed, again = (Network(3072, [8], 10, seed=0) for _ in range(3))
    fit(plain, src, y, **run)
    history = fit(mixed, src, y, mixup=0.4, **run)
    fit(again, src, y, mixup=Mixup(0.4), **run)
    np.testing.assert_array_equal(mixed.flat_params, again.flat_params)
    assert not np.array_equal(plain.flat_params, mixed.flat_params)
    scores = mixed.evaluate(src[:20], y[:20], normalization=norm)
    assert history.val_loss[-1] == pytest.approx(scores["loss"], rel=1e-12)
    # The plan fit used is cached; a later step through it does not mix.
    twin = mixed.copy()
    fit(mixed, src, y, **run)
    fit(twin, src, y, **run)
    np.testing.assert_array_equal(mixed.flat_params, twin.flat_params)


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_resume_with_mixup_is_bit_identical_and_refuses_another_alpha(tmp_path, monkeypatch):
    from cbn import checkpoint as cbn_checkpoint
    from cbn import train as train_module
    src, norm = images(n=40, seed=4)
    y = np.arange(40) % 10
    run = dict(X_val=src[:10], y_val=y[:10], normalization=norm, lam=0.001, batch_size=8,
               schedule=0.05, epochs=2, seed=4, eval_every=4, progress=False,
               augment=Augment(hflip=True, shift=2), mixup=Mixup(0.3))
    original = cbn_checkpoint.save_checkpoint

    def save_then_crash(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == 6:
            raise Crash
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(Network(3072, [6], 10, seed=1), src, y, checkpoint=path, checkpoint_every=1, **run)
    monkeypatch.undo()
    expected = Network(3072, [6], 10, seed=1)
    expected_history = fit(expected, src, y, **run)
    with pytest.raises(CheckpointError, match="mixup"):
        fit(Network(3072, [6], 10, seed=1), src, y, resume=path, **{**run, "mixup": 0.5})
    net = Network(3072, [6], 10, seed=1)
    history = fit(net, src, y, resume=path, **run)
    np.testing.assert_array_equal(net.flat_params, expected.flat_params)
    assert {k: v for k, v in history.as_dict().items() if k != "wall_time"} == \
           {k: v for k, v in expected_history.as_dict().items() if k != "wall_time"}


@pytest.mark.parametrize("value, error, match", [
    (-0.2, ValueError, "mixup must be >= 0"),
    (float("inf"), ValueError, "mixup must be finite"),
    (True, TypeError, "mixup must be a cbn.Mixup"),
    ("0.2", TypeError, "mixup must be a cbn.Mixup"),
    (Augment(), TypeError, "mixup must be a cbn.Mixup"),
])
def test_fit_checks_mixup(value, error, match):
    X, y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 2
    with pytest.raises(error, match=match):
        fit(Network(4, [3], 2, seed=0), X, y, lam=0.0, batch_size=10, schedule=0.1, epochs=1,
            progress=False, mixup=value)


def test_mixup_needs_the_cross_entropy():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((20, 4)), rng.standard_normal((20, 2))
    net = Network(4, [3], 2, seed=0)
    with pytest.raises(ValueError, match="mixup mixes cross-entropy targets"):
        fit(net, X, Y, loss="mse", lam=0.0, batch_size=10, schedule=0.1, epochs=1,
            progress=False, mixup=0.2)
    with pytest.raises(ValueError, match="needs loss='cross_entropy'"):
        net.cost_and_grads(X, Y, loss="mse", mix=0.5)


@pytest.mark.parametrize("alpha, error", [(0, ValueError), (-1, ValueError),
                                          (float("nan"), ValueError), ("a", TypeError),
                                          (None, TypeError)])
def test_mixup_alpha_is_checked(alpha, error):
    with pytest.raises(error, match="alpha"):
        Mixup(alpha)


def test_mixup_is_an_option_of_the_table_the_space_and_the_estimator(tmp_path):
    from cbn.lab import options, space
    from cbn.lab.experiment import RunConfig
    values = options.run_values({"mixup": 0.2, "epochs": 2, "schedule": "cosine"})
    config = options.config_of(values)
    assert config.mixup == 0.2 and config.fit_options(100)["mixup"] == 0.2
    assert RunConfig().fit_options(100)["mixup"] is None
    assert "mixup" not in RunConfig().as_dict() and RunConfig(mixup=0.2).as_dict()["mixup"] == 0.2
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"mixup": -1}))
    with pytest.raises(options.OptionError, match="mixup: must be >= 0"):
        options.run_values({}, str(run_file))
    trials = space.sample_trials({"mixup": space.Uniform(0.1, 1.0)}, 3, seed=0)
    assert all(0.1 <= t.config.mixup <= 1.0 for t in trials)
    with pytest.raises(ValueError, match="mixup"):
        RunConfig(mixup=-0.5)


def test_the_estimator_trains_with_mixup():
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 5)), np.arange(60) % 3
    plain = MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)
    mixed = MLPClassifier((8,), max_iter=2, random_state=0, mixup=0.4).fit(X, y)
    assert mixed.get_params()["mixup"] == 0.4
    assert not np.array_equal(plain.network_.flat_params, mixed.network_.flat_params)
    with pytest.raises(ValueError, match="mixup"):
        MLPClassifier((8,), mixup=-1).fit(X, y)


# -- LAMB and Lion against NumPy references of their formulas --------------------------------

from cbn import optim  # noqa: E402
from cbn.optim import Lamb, Lion  # noqa: E402

LRS = (0.1, 0.03, 0.0, 0.2, 0.05, 0.07)


def lamb_reference(kw, theta, grads, lrs, tensors):
    """timm's Lamb step by step in float64, weight decay and trust ratio on the weight
    tensors only (the rest in a group without decay)."""
    b1, b2 = kw.get("beta1", 0.9), kw.get("beta2", 0.999)
    eps, wd = kw.get("eps", 1e-6), kw.get("weight_decay", 0.01)
    max_norm = kw.get("max_grad_norm", 1.0)
    theta, m, v = theta.astype(np.float64), 0.0, 0.0
    bounds = np.cumsum((0,) + tuple(tensors))
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        if max_norm is not None:
            g = g / max(np.linalg.norm(g) / max_norm, 1.0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        for a, b in zip(bounds[:-1], bounds[1:]):
            if wd or kw.get("always_adapt"):
                u[a:b] += wd * theta[a:b]
                w_norm, u_norm = np.linalg.norm(theta[a:b]), np.linalg.norm(u[a:b])
                r = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                u[a:b] *= min(r, 1.0) if kw.get("trust_clip") else r
        theta = theta - lr * u
        out.append(theta.copy())
    return out


def lion_reference(kw, theta, grads, lrs, n_weights):
    """lion-pytorch's step in theta's own dtype (a sign near 0 must round as ours does)."""
    b1, b2, wd = kw.get("beta1", 0.9), kw.get("beta2", 0.99), kw.get("weight_decay", 0.0)
    dt = theta.dtype.type
    theta, m = theta.copy(), np.zeros_like(theta)
    out = []
    for g, lr in zip(grads, lrs):
        theta[:n_weights] *= dt(1 - lr * wd)
        theta -= dt(lr) * np.sign(m * dt(b1) + g * dt(1 - b1))
        m = m * dt(b2) + g * dt(1 - b2)
        out.append(theta.copy())
    return out


def steps(opt, theta, grads, lrs, n_weights, tensors=None):
    theta = theta.copy()
    opt.bind(theta.size, n_weights, theta.dtype, tensors)
    out = []
    for g, lr in zip(grads, lrs):
        opt.step(theta, g, lr)
        out.append(theta.copy())
    return out


def problem(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n).astype(dtype)
    grads = [(rng.normal(size=n) * rng.choice([1e-3, 1.0, 30.0], size=n)).astype(dtype)
             for _ in LRS]
    return theta, grads


LAMB_CONFIGS = [dict(), dict(beta1=0.8, beta2=0.99, eps=1e-5, weight_decay=0.1),
                dict(max_grad_norm=None), dict(weight_decay=0.0),
                dict(weight_decay=0.0, always_adapt=True), dict(trust_clip=True)]


@pytest.mark.parametrize("kw", LAMB_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, tensors", [(7, ()), (300, (120,)), (1001, (600, 40, 3)),
                                        (50, (50,))])
def test_lamb_matches_the_reference(kw, dtype, n, tensors):
    theta, grads = problem(n, dtype)
    ours = steps(Lamb(**kw), theta, grads, LRS, sum(tensors), tensors)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for t, (a, e) in enumerate(zip(ours, lamb_reference(kw, theta, grads, LRS, tensors))):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, **tol, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("kw", [dict(), dict(beta1=0.95, beta2=0.98, weight_decay=0.5)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, n_weights", [(1, 1), (7, 0), (1001, 640)])
def test_lion_matches_the_reference(kw, dtype, n, n_weights):
    theta, grads = problem(n, dtype, seed=1)
    ours = steps(Lion(**kw), theta, grads, LRS, n_weights)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    for t, (a, e) in enumerate(zip(ours, lion_reference(kw, theta, grads, LRS, n_weights))):
        np.testing.assert_allclose(a, e, **tol, err_msg=f"step {t + 1}")


def test_lamb_trust_ratio_makes_each_weight_tensor_step_by_its_norm():
    # With beta's moments at their first step, u = sign(g) (+ decay): each weight tensor
    # moves by lr ||W|| whatever its gradient's scale.
    theta = np.concatenate([np.full(4, 3.0), np.full(9, 0.5), np.ones(2)])
    grad = np.concatenate([np.full(4, 1e-3), np.full(9, 50.0), np.ones(2)])
    opt = Lamb(weight_decay=1e-12, max_grad_norm=None)
    before = theta.copy()
    steps_ = steps(opt, theta, [grad], [0.1], 13, (4, 9))
    moved = before - steps_[-1]
    assert np.linalg.norm(moved[:4]) == pytest.approx(0.1 * np.linalg.norm(before[:4]))
    assert np.linalg.norm(moved[4:13]) == pytest.approx(0.1 * np.linalg.norm(before[4:13]))


@pytest.mark.parametrize("cls, kw", [(Lamb, dict(weight_decay=0.05)), (Lion, {})])
def test_new_optimizers_state_round_trips_and_checkpoints_resume(cls, kw, tmp_path):
    theta, grads = problem(301, np.float32, seed=2)
    opt = cls(**kw)
    opt.bind(301, 200, np.float32, (150, 50) if cls is Lamb else None)
    for g, lr in zip(grads[:3], LRS):
        opt.step(theta, g, lr)
    state = opt.state_dict()
    optim.check_state(state)
    resumed = cls()
    resumed.load_state_dict(json.loads(json.dumps(
        {k: v for k, v in state.items() if not isinstance(v, np.ndarray)})) | {
        k: v for k, v in state.items() if isinstance(v, np.ndarray)})
    assert resumed.hyper_parameters() == opt.hyper_parameters()
    assert resumed.tensors == opt.tensors
    twin = theta.copy()
    for g, lr in zip(grads[3:], LRS[3:]):
        opt.step(theta, g, lr)
        resumed.step(twin, g, lr)
    np.testing.assert_array_equal(twin, theta)
    # through fit's checkpoints: interrupted and resumed equals uninterrupted
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), np.arange(40) % 3
    run = dict(lam=1e-3, batch_size=10, schedule=1e-3, epochs=3, seed=0, progress=False)
    whole = Network(6, [5, 4], 3, seed=0)
    fit(whole, X, y, optimizer=cls(**kw), **run)
    path = tmp_path / "run.npz"
    first = Network(6, [5, 4], 3, seed=0)
    fit(first, X, y, optimizer=cls(**kw), checkpoint=path, **{**run, "epochs": 3},
        callbacks=[StopAfter(5)])
    again = Network(6, [5, 4], 3, seed=0)
    fit(again, X, y, optimizer=cls(**kw), resume=path, **run)
    np.testing.assert_array_equal(again.flat_params, whole.flat_params)


class StopAfter:
    """Stops the run after ``steps`` steps (what an interruption does)."""

    per_step = True

    def __init__(self, steps):
        self.steps = steps

    def on_train_begin(self, run):
        pass

    def on_epoch_end(self, run, logs):
        pass

    def on_step_end(self, run, step, loss):
        if step == self.steps:
            run.stop_training = True

    def on_train_end(self, run):
        pass


@pytest.mark.parametrize("make, error, match", [
    (lambda: Lamb(beta1=1.0), ValueError, "beta1"),
    (lambda: Lamb(eps=0.0), ValueError, "eps"),
    (lambda: Lamb(max_grad_norm=0.0), ValueError, "max_grad_norm"),
    (lambda: Lamb(trust_clip="yes"), TypeError, "trust_clip"),
    (lambda: Lamb(weight_decay=-1), ValueError, "weight_decay"),
    (lambda: Lion(beta2=-0.1), ValueError, "beta2"),
    (lambda: Lion(weight_decay=float("nan")), ValueError, "weight_decay"),
    (lambda: Lamb().bind(10, 6, np.float32, (4, 3)), ValueError, "hold 7 weights"),
    (lambda: Lamb().bind(10, 6, np.float32, (6, 0)), ValueError, "tensors must be >= 1"),
    (lambda: Lamb().bind(10, 6, np.float32, "6"), TypeError, "tensors"),
    (lambda: Lion(beta1=1 - 1e-9).bind(3, 1, np.float32), ValueError, "rounds to 1"),
])
def test_new_optimizers_check_their_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_bound_lamb_refuses_another_layout_and_a_state_without_one():
    opt = Lamb()
    opt.bind(10, 6, np.float64, (4, 2))
    with pytest.raises(ValueError, match="tensors"):
        opt.bind(10, 6, np.float64, (3, 3))
    state = opt.state_dict()
    del state["tensors"]
    with pytest.raises(ValueError, match="missing keys"):
        Lamb().load_state_dict(state)


def test_new_optimizers_are_reachable_by_name_everywhere():
    from cbn.lab import options, space
    from cbn.lab.experiment import RunConfig
    assert optim.OPTIMIZERS["lamb"] is Lamb and optim.OPTIMIZERS["lion"] is Lion
    for name, cls in (("lamb", Lamb), ("lion", Lion)):
        values = options.run_values({"optimizer": name, "weight_decay": 0.1})
        opt = options.config_of(values).make_optimizer()
        assert type(opt) is cls and opt.weight_decay == 0.1
    trials = space.sample_trials({"optimizer": space.Choice(["lamb", "lion"])}, 4, seed=0)
    assert {t.config.optimizer for t in trials} <= {"lamb", "lion"}
    with pytest.raises(ValueError, match="optimizer"):
        RunConfig(optimizer="lars")


def test_the_estimator_trains_with_lamb_and_lion():
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 5)), np.arange(60) % 3
    for name, cls in (("lamb", Lamb), ("lion", Lion)):
        clf = MLPClassifier((8, 6), max_iter=2, random_state=0, optimizer=name,
                            eta_min=1e-4, eta_max=1e-3).fit(X, y)
        assert type(clf.optimizer_) is cls and clf.optimizer_.steps > 0
        if cls is Lamb:
            assert clf.optimizer_.tensors == clf.network_.weight_sizes


def test_warm_lamb_and_lion_steps_allocate_nothing():
    # A fresh interpreter, as tests/test_optim.py measures the others.
    import os
    import subprocess
    import sys
    code = ("import json, numpy as np, test_optim as t; from cbn.optim import Lamb, Lion; "
            "print(json.dumps([t.step_growth(c, kw, d) for c, kw in ((Lamb, {}), "
            "(Lamb, dict(weight_decay=0.0, max_grad_norm=None)), (Lion, dict(weight_decay=0.1)))"
            " for d in (np.float32, np.float64)]))")
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)), timeout=300,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout.strip().splitlines()[-1])
    # A compiled call takes a memoryview of each array it is given, a few hundred bytes
    # whatever the size; one vector of the 10,000 parameters would be 40,000 bytes or more.
    assert max(growth) <= 4096, growth


# -- EMA of the weights and PreciseBN ---------------------------------------------------------

from cbn import EMA  # noqa: E402


class Trace:
    """Records the parameters and running statistics after every step."""

    per_step = True

    def __init__(self):
        self.states = []

    def on_train_begin(self, run):
        self.states.append(self.state(run.net))

    def on_epoch_end(self, run, logs):
        pass

    def on_step_end(self, run, step, loss):
        self.states.append(self.state(run.net))

    def on_train_end(self, run):
        pass

    @staticmethod
    def state(net):
        return np.concatenate([net.flat_params.astype(np.float64)]
                              + [v.astype(np.float64) for v in net.running_stats.values()])


def blobs(n=60, d=10, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.standard_normal((n, d)) + rng.standard_normal((k, d))[y], y


RUN = dict(lam=1e-3, batch_size=12, schedule=0.05, epochs=3, seed=2, progress=False)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_the_network_takes_the_moving_average_of_every_step(dt):
    X, y = blobs()
    trace = Trace()
    live = Network(10, [7, 6], 3, seed=0, dtype=dt)
    fit(live, X, y, callbacks=[trace], **RUN)  # the same trajectory, without the average
    averaged = Network(10, [7, 6], 3, seed=0, dtype=dt)
    history = fit(averaged, X, y, X_val=X, y_val=y, ema=EMA(0.8), **RUN)
    expected = trace.states[0]
    for state in trace.states[1:]:  # timm's ModelEmaV2: ema = decay ema + (1 - decay) live
        expected = 0.8 * expected + 0.2 * state
    got = Trace.state(averaged)
    tol = dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got, expected, **tol)
    assert history.val_accuracy[-1] == averaged.evaluate(X, y)["accuracy"]


def test_an_average_updated_every_few_steps_skips_the_others():
    X, y = blobs()
    trace = Trace()
    fit(Network(10, [7, 6], 3, seed=0), X, y, callbacks=[trace], **RUN)
    averaged = Network(10, [7, 6], 3, seed=0)
    fit(averaged, X, y, ema=EMA(0.7, every=3), **RUN)
    expected = trace.states[0]
    for step, state in enumerate(trace.states[1:], start=1):
        if step % 3 == 0:
            expected = 0.7 * expected + 0.3 * state
    np.testing.assert_allclose(Trace.state(averaged), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="every"):
        EMA(every=0)


def test_precise_bn_is_the_average_of_the_batch_statistics():
    X, y = blobs(n=50)
    net = Network(10, [7, 6], 3, seed=0, dtype=np.float64)
    fit(net, X, y, **RUN)
    order = np.random.default_rng(5).permutation(50)
    reference = ReferenceNet(dict(net.params), True)
    stats = []
    for b in range(3):
        _, caches, _ = reference.forward(X[order[b * 16:(b + 1) * 16]], training=True)
        stats.append([c["bn"][key] for _, _, c in caches for key in ("mean", "var")])
    net.precise_bn(X, batch_size=16, batches=3, seed=5, normalization=False)
    expected = [np.mean(s, axis=0) for s in zip(*stats)]
    got = [net.running_stats[f"running_{key}{l}"] for l in (1, 2) for key in ("mean", "var")]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)
    # every full batch by default
    net.precise_bn(X, batch_size=16, seed=5, normalization=False)
    unbiased = Network(10, [7, 6], 3, seed=0, dtype=np.float64, bn_unbiased=True)
    for name, value in net.params.items():
        unbiased.params[name] = value
    unbiased.precise_bn(X, batch_size=16, seed=5, normalization=False)
    np.testing.assert_allclose(unbiased.running_stats["running_var1"],
                               net.running_stats["running_var1"] * 16 / 15, rtol=1e-12)


def test_ema_with_precise_bn_recomputes_the_averaged_networks_statistics():
    X, y = blobs()
    net = Network(10, [7, 6], 3, seed=0, dtype=np.float64)
    fit(net, X, y, ema=EMA(0.8, precise_bn=2), **RUN)
    order = np.random.default_rng(2)  # fit's shuffle: one permutation per epoch
    for _ in range(RUN["epochs"]):
        last = order.permutation(60)
    reference = ReferenceNet(dict(net.params), True)  # the averaged weights
    stats = []
    for b in range(2):  # the first batches of the last epoch's order
        _, caches, _ = reference.forward(X[last[b * 12:(b + 1) * 12]], training=True)
        stats.append([c["bn"][key] for _, _, c in caches for key in ("mean", "var")])
    expected = [np.mean(s, axis=0) for s in zip(*stats)]
    got = [net.running_stats[f"running_{key}{l}"] for l in (1, 2) for key in ("mean", "var")]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def test_precise_bn_leaves_the_statistics_on_an_error_and_checks_its_arguments():
    X, y = blobs()
    net = Network(10, [7], 3, seed=0)
    fit(net, X, y, **RUN)
    before = {k: v.copy() for k, v in net.running_stats.items()}
    bad = X.copy()
    bad[40, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.precise_bn(bad, batch_size=12, normalization=False)
    for k, v in before.items():
        np.testing.assert_array_equal(net.running_stats[k], v)
    with pytest.raises(ValueError, match="batches must be <= 5"):
        net.precise_bn(X, batch_size=12, batches=6, normalization=False)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        net.precise_bn(X, batch_size=1, normalization=False)
    with pytest.raises(ValueError, match="has none"):
        Network(10, [7], 3, batch_norm=False).precise_bn(X, normalization=False)


def test_resume_with_ema_is_bit_identical_and_refuses_another_average(tmp_path, monkeypatch):
    from cbn import checkpoint as cbn_checkpoint
    from cbn import train as train_module
    X, y = blobs()
    run = dict(RUN, X_val=X[:20], y_val=y[:20], ema=EMA(0.9, precise_bn=1))
    whole = Network(10, [7, 6], 3, seed=0)
    expected = fit(whole, X, y, **run)
    path = tmp_path / "run.npz"
    original = cbn_checkpoint.save_checkpoint

    def save_then_crash(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == 7:
            raise Crash
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        fit(Network(10, [7, 6], 3, seed=0), X, y, checkpoint=path, checkpoint_every=1, **run)
    monkeypatch.undo()
    for other in (dict(ema=None), dict(ema=EMA(0.8, precise_bn=1))):
        with pytest.raises(CheckpointError, match="ema"):
            fit(Network(10, [7, 6], 3, seed=0), X, y, resume=path, **{**run, **other})
    net = Network(10, [7, 6], 3, seed=0)
    history = fit(net, X, y, resume=path, **run)
    np.testing.assert_array_equal(net.flat_params, whole.flat_params)
    for name, value in net.running_stats.items():
        np.testing.assert_array_equal(value, whole.running_stats[name])
    assert {k: v for k, v in history.as_dict().items() if k != "wall_time"} == \
           {k: v for k, v in expected.as_dict().items() if k != "wall_time"}


@pytest.mark.parametrize("value, error, match", [
    (1.0, ValueError, "ema must be < 1"),
    (-0.5, ValueError, "ema must be >= 0"),
    ("0.9", TypeError, "ema must be a cbn.EMA"),
    (True, TypeError, "ema must be a cbn.EMA"),
])
def test_fit_checks_ema(value, error, match):
    X, y = blobs()
    with pytest.raises(error, match=match):
        fit(Network(10, [7], 3), X, y, ema=value, **RUN)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(decay=0.0), ValueError, "decay"), (dict(decay=1.0), ValueError, "decay"),
    (dict(decay=float("nan")), ValueError, "decay"), (dict(precise_bn=-1), ValueError,
                                                      "precise_bn"),
    (dict(precise_bn=1.5), TypeError, "precise_bn"),
])
def test_ema_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        EMA(**kwargs)


def test_precise_bn_needs_batch_norm_in_fit_and_ema_in_the_options():
    from cbn.lab import options
    from cbn.lab.experiment import RunConfig
    X, y = blobs()
    with pytest.raises(ValueError, match="has none"):
        fit(Network(10, [7], 3, batch_norm=False), X, y, ema=EMA(0.9, precise_bn=2), **RUN)
    with pytest.raises(options.OptionError, match="--precise-bn .* needs --ema"):
        options.run_values({"precise_bn": 5})
    with pytest.raises(ValueError, match="needs ema"):
        RunConfig(precise_bn=5)
    config = options.config_of(options.run_values({"ema": 0.99, "precise_bn": 5}))
    assert config.fit_options(100)["ema"] == EMA(0.99, 5)
    values = options.run_values({"ema": 0.99, "ema_every": 4})
    assert options.config_of(values).fit_options(100)["ema"] == EMA(0.99, 0, 4)
    assert RunConfig().fit_options(100)["ema"] is None
    assert "ema" not in RunConfig().as_dict()


def test_checkpoint_files_with_a_bad_average_are_refused(tmp_path):
    from cbn import checkpoint as cbn_checkpoint
    X, y = blobs()
    path = tmp_path / "run.npz"
    fit(Network(10, [7], 3, seed=0), X, y, checkpoint=path, ema=0.9, **RUN)
    state = cbn_checkpoint.load_checkpoint(path)
    state.ema = state.ema[:-1]
    cbn_checkpoint.save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="ema must be finite with shape"):
        fit(Network(10, [7], 3, seed=0), X, y, resume=path, ema=0.9, **RUN)
    state.ema = np.zeros((2, 2))
    cbn_checkpoint.save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="ema must be a 1-D float array"):
        cbn_checkpoint.load_checkpoint(path)


# -- pre-norm residual blocks with an expansion factor ----------------------------------------

from reference import bn_forward_train, gelu, layer_norm_forward  # noqa: E402


def prenorm_reference(p, X, blocks, norm, activation):
    """x = X W1 + b1; x := x + act(norm(x) W + b) W' + b' per block; logits norm(x) Wk + bk
    (layer norm, or batch norm with the batch's statistics)."""
    def normed(x, l):
        if norm == "layer":
            return layer_norm_forward(x, p[f"gamma{l}"], p[f"beta{l}"])[0]
        return bn_forward_train(x, p[f"gamma{l}"], p[f"beta{l}"])[0]

    def act(a):
        return gelu(a)[0] if activation == "gelu" else np.maximum(a, 0)

    x = X @ p["W1"] + p["b1"]
    for b in range(blocks):
        l = 2 * b + 2
        x = x + act(normed(x, l - 1) @ p[f"W{l}"] + p[f"b{l}"]) @ p[f"W{l + 1}"] + p[f"b{l + 1}"]
    k = 2 * blocks + 2
    return softmax(normed(x, k - 1) @ p[f"W{k}"] + p[f"b{k}"])


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("hidden, expansion", [((5,), 3), ((6, 6, 6), 2), ((4, 4), 1)])
def test_prenorm_blocks_match_the_numpy_reference(norm, activation, hidden, expansion):
    rng = np.random.default_rng(7)
    net = Network(8, hidden, 3, norm=norm, activation=activation, residual=True,
                  expansion=expansion, seed=1, dtype=np.float64)
    for name, value in net.params.items():  # gamma and beta away from 1 and 0
        net.params[name] = value + 0.1 * rng.standard_normal(value.shape)
    X = rng.standard_normal((9, 8))
    d = hidden[0]
    assert net.dims == (8, d) + (expansion * d, d) * (len(hidden) - 1) + (3,)
    expected = prenorm_reference(dict(net.params), X, len(hidden) - 1, norm, activation)
    np.testing.assert_allclose(net.predict_proba(X, mode="train"), expected, rtol=1e-10,
                               atol=1e-12)
    result = gradcheck(net, X, np.arange(9) % 3, 1e-3)
    assert result.passed, result.table()


def test_prenorm_params_hold_norms_on_the_stream_only():
    net = Network(8, [4, 4], 3, norm="batch", residual=True, expansion=2)
    assert list(net.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "W3", "b3",
                                "gamma3", "beta3", "W4", "b4"]
    assert list(net.running_stats) == ["running_mean1", "running_var1", "running_mean3",
                                       "running_var3"]
    assert "pre-norm blocks x2" in repr(net)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_fused_sgd_step_on_prenorm_blocks_is_the_gradient_step(dt):
    X, y = blobs(n=12)
    net = Network(10, [6, 6, 6], 3, norm="layer", activation="gelu", residual=True,
                  expansion=2, seed=0, dtype=dt)
    _, grads = net.copy().cost_and_grads(X.astype(dt), y, 0.01)
    expected = {name: value - 0.05 * grads[name] for name, value in net.params.items()}
    fit(net, X.astype(dt), y, lam=0.01, batch_size=12, schedule=0.05, epochs=1, seed=0,
        progress=False, normalization=False)
    tol = dict(rtol=2e-5, atol=2e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for name, value in net.params.items():
        np.testing.assert_allclose(value, expected[name], **tol, err_msg=name)


def test_prenorm_networks_save_load_and_resume(tmp_path):
    X, y = blobs()
    make = lambda: Network(10, [6, 6], 3, norm="layer", residual=True,  # noqa: E731
                           expansion=3, seed=0)
    net = make()
    fit(net, X, y, **RUN)
    net.save(tmp_path / "net.npz")
    back = Network.load(tmp_path / "net.npz")
    assert back.expansion == 3 and back.dims == net.dims
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))
    path = tmp_path / "run.npz"
    fit(make(), X, y, checkpoint=path, callbacks=[StopAfter(4)], **RUN)
    again = make()
    fit(again, X, y, resume=path, **RUN)
    np.testing.assert_array_equal(again.flat_params, net.flat_params)
    with pytest.raises(CheckpointError, match="configured"):
        fit(Network(10, [6, 6], 3, norm="layer", residual=True, expansion=2, seed=0), X, y,
            resume=path, **RUN)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(expansion=2), ValueError, "needs residual=True .command line: --residual. and a norm"),
    (dict(expansion=2, residual=True, norm=None), ValueError, "needs residual=True"),
    (dict(expansion=2, residual=True, hidden=[4, 5]), ValueError, "equal hidden widths"),
    (dict(expansion=2, residual=True, dropout=0.1), ValueError, "no dropout"),
    (dict(expansion=2, residual=True, bn_placement="after"), ValueError, "no dropout"),
    (dict(expansion=0, residual=True), ValueError, "expansion must be >= 1"),
    (dict(expansion=1.5, residual=True), TypeError, "expansion"),
])
def test_prenorm_options_are_checked(kwargs, error, match):
    kwargs = {"hidden": [4, 4], **kwargs}
    with pytest.raises(error, match=match):
        Network(8, num_classes=3, **kwargs)


def test_a_network_file_with_a_doctored_expansion_is_refused(tmp_path):
    from cbn.npz import CheckpointError as NpzError
    net = Network(8, [4, 4], 3, norm="layer", residual=True, expansion=2)
    path = tmp_path / "net.npz"
    net.save(path)
    arrays = dict(np.load(path))
    for bad in ("'2'", "[1, 2]", "10000000000000"):
        config = json.loads(str(arrays["network_config"]))
        config["expansion"] = json.loads(bad.replace("'", '"'))
        doctored = {**arrays, "network_config": np.array(json.dumps(config))}
        doctored.pop("checksum", None)
        np.savez(tmp_path / "bad.npz", **doctored)
        with pytest.raises(NpzError):
            Network.load(tmp_path / "bad.npz")


def test_expansion_through_the_options_the_space_and_the_estimator():
    from cbn.lab import options, space
    from cbn.lab.experiment import RunConfig
    values = options.run_values({"hidden": (6, 6), "norm": "layer", "residual": True,
                                 "expansion": 4, "epochs": 1, "schedule": "cosine"})
    config = options.config_of(values)
    assert config.network_options()["expansion"] == 4
    assert "expansion" not in RunConfig().network_options()
    with pytest.raises(ValueError, match="needs residual=True"):
        RunConfig(hidden=(6, 6), expansion=4)
    trials = space.sample_trials({"expansion": space.Choice([2, 4])}, 3, seed=0,
                                 base=RunConfig(hidden=(6, 6), residual=True, norm="layer"))
    assert {t.config.expansion for t in trials} <= {2, 4}
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier
    X, y = blobs()
    clf = MLPClassifier((6, 6), norm="layer", residual=True, expansion=2, max_iter=1,
                        random_state=0).fit(X, y)
    assert clf.network_.expansion == 2 and clf.network_.num_layers == 4
    with pytest.raises(ValueError, match="equal hidden widths"):
        MLPClassifier((6, 5), norm="layer", residual=True, expansion=2).fit(X, y)


def test_the_estimator_takes_the_average_of_its_steps():
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier, MLPRegressor
    X, y = blobs()
    trace = Trace()
    plain = MLPClassifier((7,), max_iter=3, random_state=0, batch_size=12)
    # the same epochs, each step's network traced
    plain._epoch = (lambda epoch: lambda *a, **k: epoch(*a[:4], [trace]))(plain._epoch)
    plain.fit(X, y)
    averaged = MLPClassifier((7,), max_iter=3, random_state=0, batch_size=12, ema=0.6).fit(X, y)
    # the start, then each step (every epoch, 5 steps, also traces its own start)
    expected = trace.states[0]
    for state in (s for i, s in enumerate(trace.states) if i % 6):
        expected = 0.6 * expected + 0.4 * state
    np.testing.assert_allclose(Trace.state(averaged.network_), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="partial_fit trains one epoch"):
        MLPClassifier((7,), ema=0.5).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="use one"):
        MLPClassifier((7,), ema=0.5, early_stopping=True).fit(X, y)
    with pytest.raises(ValueError, match="ema must be < 1"):
        MLPRegressor((7,), ema=1.0).fit(X, y.astype(float))

"""The block's ops beyond the course's (LayerNorm, GELU, residual connections) and the losses
(label smoothing, sample weights, squared error): against PyTorch's autograd, against centred
differences, kernel by kernel against the NumPy reference, through save/load, and refusing bad
values with a clear error."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference as ref
from cbn import Network, fit, gradcheck
from cbn import ops as kernels
from cbn.lab.experiment import RunConfig
from cbn.lab.space import Choice, sample_trials

ARCHS = list(itertools.product(["batch", "layer", None], ["relu", "gelu"], [False, True],
                               ["before", "after"]))
LOSSES = [dict(), dict(label_smoothing=0.15), dict(sample_weight="w"), dict(loss="mse"),
          dict(loss="mse", sample_weight="w"), dict(label_smoothing=0.3, sample_weight="w")]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-11, atol=1e-12)}


def batch(rng, n, d, k, options):
    """Inputs, targets and the loss keywords of ``options`` ("w": random weights)."""
    X = rng.standard_normal((n, d))
    y = rng.standard_normal((n, k)) if options.get("loss") == "mse" else np.arange(n) % k
    kw = dict(options)
    if kw.get("sample_weight") == "w":
        kw["sample_weight"] = rng.random(n) * 2
        kw["sample_weight"][1] = 0.0
    return X, y, kw


def perturbed(rng, **options):
    """A float64 network 6-6-6-5-4 (residual possible on the first two hidden layers, not
    the third), its parameters moved off their initial values."""
    net = Network(6, [6, 6, 5], 4, seed=2, **{"dtype": np.float64, **options})
    for v in net.params.values():
        v[...] += rng.standard_normal(v.shape) * 0.2
    return net


def torch_cost(net, X, y, lam, loss="cross_entropy", label_smoothing=0.0, sample_weight=None):
    """The cost and its gradients by PyTorch's autograd, in float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in net.params.items()}
    h = torch.tensor(X)
    k = net.num_layers
    for l in range(1, k):
        inp, s = h, h @ p[f"W{l}"] + p[f"b{l}"]

        def norm(z):
            if net.norm == "batch":
                return (F.batch_norm(z, None, None, p[f"gamma{l}"], p[f"beta{l}"],
                                     training=True, eps=net.bn_eps))
            return F.layer_norm(z, (z.shape[1],), p[f"gamma{l}"], p[f"beta{l}"], net.bn_eps)

        act = torch.relu if net.activation == "relu" else torch.nn.GELU()
        if net.norm is None:
            z = act(s)
        elif net.bn_placement == "after":
            z = norm(act(s))
        else:
            z = act(norm(s))
        h = inp + z if net.residual and inp.shape[1] == z.shape[1] else z
    out = h @ p[f"W{k}"] + p[f"b{k}"]
    if loss == "mse":
        per = F.mse_loss(out, torch.tensor(y), reduction="none").mean(dim=1)
    else:
        per = F.cross_entropy(out, torch.tensor(y), reduction="none",
                              label_smoothing=label_smoothing)
    if sample_weight is None:
        mean = per.mean()
    else:
        w = torch.tensor(np.asarray(sample_weight, dtype=np.float64))
        mean = (w * per).sum() / w.sum()
    cost = mean + lam * sum((p[f"W{l}"] ** 2).sum() for l in range(1, k + 1))
    cost.backward()
    return cost.item(), {name: v.grad.numpy() for name, v in p.items()}


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a)))
def test_costs_and_gradients_match_torch_autograd(arch):
    """Every combination of norm, activation, residual and placement, each with two of the
    loss options, agrees with autograd within 1e-7 relative."""
    norm, activation, residual, placement = arch
    rng = np.random.default_rng(ARCHS.index(arch))
    net = perturbed(rng, norm=norm, activation=activation, residual=residual,
                    bn_placement=placement)
    for options in (LOSSES[ARCHS.index(arch) % len(LOSSES)], LOSSES[-1 - ARCHS.index(arch) % 3]):
        X, y, kw = batch(rng, 7, 6, 4, options)
        cost, grads = net.cost_and_grads(X, y, 0.01, **kw)
        want_cost, want = torch_cost(net, X, y, 0.01, **kw)
        assert cost == pytest.approx(want_cost, rel=1e-7)
        scale = max(np.abs(g).max() for g in want.values())
        for name, g in grads.items():
            # A bias right before batch norm has a gradient of 0 up to rounding: compare it
            # on the scale of the others.
            floor = max(np.abs(want[name]).max(), 1e-6 * scale)
            assert np.abs(g - want[name]).max() <= 1e-7 * floor, (name, options)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a)))
def test_every_op_passes_the_gradient_check(arch):
    # h 1e-4 keeps the differences' truncation error small where a ReLU bends the cost;
    # their round-off (~1e-16 / h) then sets the floor below which gradients compare in
    # absolute terms.
    norm, activation, residual, placement = arch
    result = gradcheck(hidden=(4, 4), input_dim=4, num_classes=3, n=5, max_entries=3,
                       norm=norm, activation=activation, residual=residual,
                       bn_placement=placement, dropout=0.25, lam=0.01, h=1e-4, floor=1e-5,
                       **[dict(), dict(label_smoothing=0.15),
                          dict(sample_weight=[1, 2, 0, 1, 3])][ARCHS.index(arch) % 3])
    assert result.max_relative_error <= 1e-6, result


@pytest.mark.parametrize("options", [dict(loss="mse"), dict(sample_weight=[1, 2, 0, 1, 3]),
                                     dict(label_smoothing=0.2)])
def test_the_losses_pass_the_gradient_check(options):
    result = gradcheck(hidden=(4, 4), input_dim=4, num_classes=3, n=5, max_entries=4,
                       norm="layer", activation="gelu", residual=True, h=1e-4, floor=1e-5,
                       **options)
    assert result.max_relative_error <= 1e-6, result


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (2, 7), (9, 13), (33, 50)])
def test_layer_norm_and_gelu_kernels_match_the_reference(dt, n, m):
    rng = np.random.default_rng(n * m)
    A = (rng.standard_normal((n, m)) * 3 - 1).astype(dt)
    gamma, beta = (rng.standard_normal(m).astype(dt) for _ in range(2))
    Z, cache = kernels.layer_norm_forward(A, gamma, beta)
    rZ, rcache = ref.layer_norm_forward(A.astype(np.float64), gamma, beta)
    assert Z.dtype == dt
    np.testing.assert_allclose(Z, rZ, **TOL[dt])
    for key in rcache:
        np.testing.assert_allclose(cache[key], rcache[key], **TOL[dt])
    dZ = rng.standard_normal((n, m)).astype(dt)
    got = kernels.layer_norm_backward(dZ, cache["Shat"], gamma, cache["inv_std"])
    want = ref.layer_norm_backward(dZ.astype(np.float64), cache["Shat"].astype(np.float64),
                                   gamma, cache["inv_std"])
    for g, w in zip(got, want):
        assert g.dtype == dt
        np.testing.assert_allclose(g, w, **TOL[dt])
    H, slope = kernels.gelu_forward(A)
    rH, rslope = ref.gelu(A.astype(np.float64))
    np.testing.assert_allclose(H, rH, **TOL[dt])
    np.testing.assert_allclose(slope, rslope, **TOL[dt])
    np.testing.assert_allclose(kernels.gelu_backward(dZ, slope), dZ * rslope, **TOL[dt])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_kernels_match_the_reference(dt, weighted):
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((9, 4)).astype(dt)
    y = rng.integers(0, 4, 9)
    w = rng.random(9) if weighted else None
    loss, G, _ = kernels.softmax_cross_entropy(Z, y, label_smoothing=0.2, sample_weight=w)
    rloss, rG = ref.soft_cross_entropy(Z.astype(np.float64), y, 0.2, w)
    assert loss == pytest.approx(rloss, **{"rel": TOL[dt]["rtol"]})
    np.testing.assert_allclose(G, rG, **TOL[dt])
    Y = rng.standard_normal((9, 4)).astype(dt)
    loss, G = kernels.squared_error(Z, Y, sample_weight=w)
    rloss, rG = ref.squared_error(Z.astype(np.float64), Y.astype(np.float64), w)
    assert loss == pytest.approx(rloss, **{"rel": TOL[dt]["rtol"]})
    np.testing.assert_allclose(G, rG, **TOL[dt])


def test_label_smoothing_0_and_unit_weights_are_plain_cross_entropy():
    rng = np.random.default_rng(0)
    net = perturbed(rng)
    X, y, _ = batch(rng, 8, 6, 4, {})
    plain = net.cost_and_grads(X, y, 0.01)
    for kw in (dict(label_smoothing=0.0), dict(sample_weight=np.full(8, 3.0))):
        cost, grads = net.cost_and_grads(X, y, 0.01, **kw)
        assert cost == pytest.approx(plain[0], rel=1e-14)
        for name in grads:
            np.testing.assert_allclose(grads[name], plain[1][name], rtol=1e-12, atol=1e-15)


def test_a_batch_whose_weights_are_all_zero_scores_zero():
    """Mini-batches of fit that hold only rows of weight 0 score 0 with zero gradients,
    rather than diverging on 0 / 0."""
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((8, 4)), np.arange(8) % 2
    w = np.zeros(8)
    w[3] = 1.0  # three of the four batches of 2 weigh nothing
    net = Network(4, [5], 2, norm="layer", seed=0)
    start = net.flat_params.copy()
    history = fit(net, X, y, lam=0.0, batch_size=2, schedule=0.1, epochs=1, seed=0,
                  progress=False, sample_weight=w)
    assert np.isfinite(history.batch_loss[-1]) and np.isfinite(net.flat_params).all()
    assert not np.array_equal(net.flat_params, start)


def test_raw_outputs_are_the_last_layer_before_softmax():
    rng = np.random.default_rng(1)
    net = perturbed(rng, norm="layer", activation="gelu", residual=True)
    X = rng.standard_normal((300, 6))  # more rows than one evaluation block
    raw = net.raw_outputs(X, normalization=False)
    probs = net.predict_proba(X, normalization=False)
    np.testing.assert_allclose(ref.softmax(raw), probs, rtol=1e-12)
    assert raw.shape == (300, 4) and not np.allclose(raw.sum(axis=1), 1)


def test_layer_norm_networks_train_on_single_rows_and_have_no_running_statistics():
    rng = np.random.default_rng(2)
    net = Network(6, [8, 8], 3, norm="layer", activation="gelu", residual=True, seed=0)
    assert net.running_stats == {} and {"gamma1", "beta2"} <= set(net.params)
    assert not net.batch_norm and "LN" in repr(net) and "residual" in repr(net)
    net.cost_and_grads(rng.standard_normal((1, 6)), np.array([2]))
    X, y = rng.standard_normal((60, 6)), np.arange(60) % 3
    fit(net, X, y, lam=0.0, batch_size=1, schedule=0.01, epochs=1, seed=0, progress=False)
    assert np.isfinite(net.flat_params).all()


def test_the_new_options_survive_save_load_and_copy(tmp_path):
    rng = np.random.default_rng(3)
    net = perturbed(rng, norm="layer", activation="gelu", residual=True, bn_placement="after")
    X = rng.standard_normal((5, 6))
    net.save(tmp_path / "net.npz")
    for other in (Network.load(tmp_path / "net.npz"), net.copy()):
        assert (other.norm, other.activation, other.residual) == ("layer", "gelu", True)
        np.testing.assert_array_equal(other.raw_outputs(X, normalization=False),
                                      net.raw_outputs(X, normalization=False))


def test_fit_trains_on_float_targets_with_mse_and_weighted_rows():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 6))
    Y = X[:, :2] @ rng.standard_normal((2, 3))
    net = Network(6, [16, 16], 3, norm="layer", activation="gelu", residual=True, seed=0,
                  dtype=np.float64)
    before = np.mean((net.raw_outputs(X, normalization=False) - Y) ** 2)
    history = fit(net, X, Y, X_val=X[:50], y_val=Y[:50], loss="mse", lam=0.0, batch_size=20,
                  schedule=0.02, epochs=30, seed=0, progress=False,
                  sample_weight=rng.random(200) + 0.5)
    after = np.mean((net.raw_outputs(X, normalization=False) - Y) ** 2)
    assert after < 0.1 * before
    assert history.val_loss[-1] == pytest.approx(
        np.mean((net.raw_outputs(X[:50], normalization=False) - Y[:50]) ** 2), rel=1e-9)


@pytest.mark.parametrize("call, error, match", [
    (lambda: Network(4, [3], 2, norm="group"), ValueError, "norm must be one of"),
    (lambda: Network(4, [3], 2, activation="tanh"), ValueError, "activation must be one of"),
    (lambda: Network(4, [3], 2, residual="yes"), TypeError, "residual must be True or False"),
    (lambda: Network(4, [3], 2, batch_norm=True, norm=None), ValueError, "contradicts"),
    (lambda: RunConfig(norm="group"), ValueError, "norm must be one of"),
    (lambda: sample_trials({"activation": Choice(["elu"])}, 2), ValueError,
     "activation must be one of"),
])
def test_unknown_options_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("change, error, match", [
    (dict(label_smoothing=1.0), ValueError, "label_smoothing must be < 1"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing must be >= 0"),
    (dict(sample_weight=np.array([1.0, -1, 1, 1])), ValueError, "sample_weight must be >= 0"),
    (dict(sample_weight=np.zeros(4)), ValueError, "sample_weight must not be all zero"),
    (dict(sample_weight=np.ones(3)), ValueError, "one weight per row"),
    (dict(sample_weight=np.array([1.0, np.nan, 1, 1])), ValueError, "NaN or infinite"),
    (dict(y=np.ones((4, 2))), TypeError, "takes integer class labels"),
    (dict(loss="mse"), TypeError, "takes float targets"),
    (dict(loss="mse", y=np.ones((4, 3))), ValueError, "must have 2 columns"),
    (dict(loss="mse", y=np.ones((4, 2)), label_smoothing=0.1), ValueError,
     "applies to loss='cross_entropy' only"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
])
def test_bad_loss_options_are_refused_in_every_entry_point(change, error, match):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4, 3))
    kw = dict(change)
    y = kw.pop("y", np.array([0, 1, 0, 1]))
    net = Network(3, [5], 2, norm="layer", seed=0)
    for call in (lambda: net.cost_and_grads(X, y, **kw), lambda: net.cost(X, y, **kw),
                 lambda: fit(net, X, y, lam=0.0, batch_size=2, schedule=0.1, epochs=1,
                             progress=False, **kw)):
        with pytest.raises(error, match=match):
            call()


def test_the_estimator_and_the_search_space_take_the_new_options():
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((80, 5)), np.arange(80) % 2
    clf = MLPClassifier((8, 8), norm="layer", activation="gelu", residual=True,
                        label_smoothing=0.1, max_iter=2, random_state=0).fit(X, y)
    net = clf.network_
    assert (net.norm, net.activation, net.residual) == ("layer", "gelu", True)
    with pytest.raises(ValueError, match="norm must be one of"):
        MLPClassifier(norm="group").fit(X, y)
    trials = sample_trials({"norm": Choice(["batch", "layer", None]),
                            "activation": Choice(["relu", "gelu"])}, 6, seed=1)
    assert {t.config.network_options()["norm"] for t in trials} <= {"batch", "layer", None}
    assert "norm" not in RunConfig().as_dict()  # records of before read as they were

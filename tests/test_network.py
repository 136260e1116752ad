"""Network: structure, cost and gradients against the NumPy reference, modes, persistence."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from reference import ReferenceNet
from cbn import ConstantLR, Network, _ops, fit
from cbn.data import Normalization
from cbn import testing

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
ARCHS = [([50, 50], True), ([50, 50], False), ([50, 30, 20, 20, 10, 10, 10, 10], True),
         ([7, 1, 5], True), ([1], False), ([], True)]
# Batch sizes on both sides of the switch between the two forms of the weight product.
ROWS = [11, _ops.transposed_from() + 13]
# Inputs on both sides of the switch to the first layer in column slices (two threads).
INPUTS = [13, _ops.sliced_from() + 7]


@pytest.fixture
def two_threads():
    """Two BLAS threads (one core is enough), so wide first layers run in slices."""
    with threadpool_limits(2, user_api="blas"):
        yield


def expect_slices(net, rows):
    """The plan for ``rows`` can slice the first layer exactly when it should."""
    sliced = _ops.OPENMP and net.input_dim >= _ops.sliced_from()
    net.plan(rows)
    assert testing.cached_plans(net)[rows].slices == (2 if sliced else 1)


def data(rng, n, d, k, dt=np.float64):
    return rng.standard_normal((n, d)).astype(dt), rng.integers(0, k, n)


def test_params_are_named_and_shaped_per_layer():
    net = Network(12, [5, 4], 3)
    assert list(net.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2",
                                "W3", "b3"]
    assert net.params["W1"].shape == (12, 5) and net.params["W3"].shape == (4, 3)
    assert list(Network(12, [5], 3, batch_norm=False).params) == ["W1", "b1", "W2", "b2"]


def test_params_are_live_views_and_assignment_copies_into_them():
    net = Network(4, [3], 2, dtype=np.float64)
    net.params["W1"][...] = 0.5
    assert np.all(net.flat_params[:12] == 0.5)
    net.params["W2"] = np.full((3, 2), 0.25)
    assert np.all(net.flat_params[12:18] == 0.25)
    assert dict(net.params)["W2"] is net.params["W2"]


@pytest.mark.parametrize("name,value,error", [
    ("W1", np.zeros((3, 4)), ValueError), ("W1", np.full((4, 3), np.nan), ValueError),
    ("W9", np.zeros((4, 3)), KeyError), ("W1", np.zeros((4, 3), complex), TypeError),
])
def test_bad_parameter_assignment_is_refused(name, value, error):
    net = Network(4, [3], 2)
    with pytest.raises(error):
        net.params[name] = value
    with pytest.raises(TypeError):
        del net.params["W1"]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,bn", ARCHS)
@pytest.mark.parametrize("lam", [0.0, 0.01])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", INPUTS)
def test_cost_and_grads_match_numpy_reference(two_threads, dt, hidden, bn, lam, rows, d):
    rng = np.random.default_rng(len(hidden) + 10 * bn)
    net = Network(d, hidden, 6, batch_norm=bn, dtype=dt, seed=3)
    X, y = data(rng, rows, d, 6, dt)
    cost, grads = net.cost_and_grads(X, y, lam)
    expect_slices(net, rows)
    reference = ReferenceNet({k: v.astype(np.float64) for k, v in net.params.items()}, bn)
    rcost, rgrads, _ = reference.cost_and_grads(X.astype(np.float64), y, lam)
    assert cost == pytest.approx(rcost, rel=TOL[dt]["rtol"])
    assert set(grads) == set(net.params)
    for name, g in grads.items():
        assert g.shape == net.params[name].shape and g.dtype == dt
        np.testing.assert_allclose(g, rgrads[name], **TOL[dt])


@pytest.mark.skipif(not _ops.OPENMP, reason="built without OpenMP: nothing is sliced")
@pytest.mark.parametrize("rows", ROWS)
def test_three_uneven_slices_match_the_reference(rows):
    """Three BLAS threads (fine on fewer cores): 263 inputs in slices of 87, 88 and 88."""
    with threadpool_limits(3, user_api="blas"):
        rng = np.random.default_rng(rows)
        net = Network(263, [16, 8], 6, dtype=np.float64, seed=3)
        X, y = data(rng, rows, 263, 6)
        cost, grads = net.cost_and_grads(X, y, 0.01)
        assert testing.cached_plans(net)[rows].slices == 3
    reference = ReferenceNet(dict(net.params), True)
    rcost, rgrads, _ = reference.cost_and_grads(X, y, 0.01)
    assert cost == pytest.approx(rcost, rel=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(g, rgrads[name], **TOL[np.float64])


def output_layer(d_in=300, d_out=5, cap=4):
    W = np.zeros((d_in, d_out))
    return _ops.LayerSpec(W, np.zeros(d_out), np.zeros_like(W), np.zeros(d_out),
                          np.zeros((cap, d_out)))


def test_a_plan_refuses_a_partials_workspace_it_cannot_use():
    """The sliced first layer keeps one entry per slice on the stack: at most MAX_SLICES."""
    net = Network(300, [5], 3, dtype=np.float64)
    good = net.plan(4)  # builds the workspace the right way
    assert good is not None
    theta = np.zeros(10)
    for shape in [(_ops.MAX_SLICES + 1, 4, 5), (1, 4, 5), (2, 3, 5), (2, 4, 6)]:
        with pytest.raises(ValueError, match="partials"):
            _ops.Plan(4, 300, np.zeros((4, 300)), theta, np.zeros(10), 0, [output_layer()],
                      1e-5, 0.9, False, np.zeros(shape))


@pytest.mark.parametrize("change, error, match", [
    (dict(S=np.zeros((3, 5))), ValueError, "S must be"),              # fewer rows than cap
    (dict(b=np.zeros(5, np.float32)), TypeError, "b must be"),        # another dtype
    (dict(W=np.zeros((5, 300)).T), ValueError, "layer 1 W must be"),  # not contiguous
    (dict(dW=None), ValueError, "dW: missing"),
])
def test_a_plan_refuses_buffers_its_kernels_cannot_use(change, error, match):
    """Kernels run without bounds checks, so a plan checks every buffer it is given."""
    args = dict(W=np.zeros((300, 5)), b=np.zeros(5), dW=np.zeros((300, 5)), db=np.zeros(5),
                S=np.zeros((4, 5)))
    args.update(change)
    with pytest.raises(error, match=match):
        _ops.Plan(4, 300, np.zeros((4, 300)), np.zeros(10), np.zeros(10), 0,
                  [_ops.LayerSpec(**args)], 1e-5, 0.9, False)


def test_a_plan_refuses_a_hidden_block_without_ops_or_output():
    hidden = output_layer(300, 5)
    with pytest.raises(ValueError, match="hidden layers need ops"):
        _ops.Plan(4, 300, np.zeros((4, 300)), np.zeros(10), np.zeros(10), 0,
                  [hidden, output_layer(5, 3)], 1e-5, 0.9, False)
    in_place = _ops.LayerSpec(hidden.W, hidden.b, hidden.dW, hidden.db, hidden.S,
                              ops=[_ops.dropout_op(0.5)])
    with pytest.raises(ValueError, match="must not be S"):
        _ops.Plan(4, 300, np.zeros((4, 300)), np.zeros(10), np.zeros(10), 0,
                  [in_place, output_layer(5, 3)], 1e-5, 0.9, False)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", INPUTS)
@pytest.mark.parametrize("source", ["float", "uint8"])
def test_training_steps_match_numpy_reference_sgd_steps(two_threads, dt, bn, rows, d, source):
    """fit's fused step (the update inside the weight product) against plain SGD; one batch
    per epoch, so every step sees every row. From uint8 images too: the gather standardises
    them on the way (by column slices when the first layer is sliced)."""
    rng = np.random.default_rng(rows)
    net = Network(d, [16, 8], 6, batch_norm=bn, dtype=dt, seed=3)
    images = rng.integers(0, 256, (rows, d), dtype=np.uint8)
    norm = Normalization.fit(images)
    X = ((images - norm.mean) / norm.std).astype(dt)
    y = rng.integers(0, 6, rows)
    reference = ReferenceNet({k: v.astype(np.float64) for k, v in net.params.items()}, bn)
    for step in range(3):
        reference.sgd_step(X.astype(np.float64), y, lam=0.01, lr=0.1, first=step == 0)
    fit(net, *((images, y) if source == "uint8" else (X, y)), lam=0.01, batch_size=rows,
        schedule=ConstantLR(0.1), epochs=3, seed=0, progress=False,
        normalization=norm if source == "uint8" else None)
    expect_slices(net, rows)
    for name, value in reference.params.items():
        np.testing.assert_allclose(net.params[name], value, **TOL[dt])


def test_cost_and_grads_leaves_running_statistics_untouched():
    rng = np.random.default_rng(0)
    net = Network(6, [4], 3, seed=0)
    before = {k: v.copy() for k, v in net.running_stats.items()}
    net.cost_and_grads(*data(rng, 5, 6, 3), 0.1)
    for k, v in net.running_stats.items():
        np.testing.assert_array_equal(v, before[k])


def test_cost_includes_l2_on_weights_only():
    rng = np.random.default_rng(0)
    net = Network(6, [4], 3, seed=0)
    X, y = data(rng, 5, 6, 3)
    c0, _ = net.cost_and_grads(X, y, 0.0)
    c1, _ = net.cost_and_grads(X, y, 0.5)
    w2 = sum((net.params[k] ** 2).sum() for k in ("W1", "W2"))
    assert c1 - c0 == pytest.approx(0.5 * w2)
    assert net.evaluate(X, y, 0.5)["cost"] - net.evaluate(X, y)["loss"] == pytest.approx(0.5 * w2)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_evaluation_mode_uses_running_statistics(dt):
    rng = np.random.default_rng(5)
    net = Network(9, [8, 6], 4, dtype=dt, seed=1)
    for k, v in net.running_stats.items():
        v[...] = rng.random(v.shape) + (0.5 if "var" in k else -0.5)
    X, _ = data(rng, 3000, 9, 4, dt)  # more rows than one evaluation block
    reference = ReferenceNet({k: v.astype(np.float64) for k, v in net.params.items()}, True,
                             running={k: v.astype(np.float64) for k, v in net.running_stats.items()})
    np.testing.assert_allclose(net.predict_proba(X), reference.predict_proba(X.astype(np.float64)),
                               **TOL[dt])


def test_train_mode_prediction_uses_batch_statistics():
    rng = np.random.default_rng(2)
    net = Network(9, [8], 4, seed=1, dtype=np.float64)
    X, _ = data(rng, 20, 9, 4)
    reference = ReferenceNet(dict(net.params), True)
    Z, _, _ = reference.forward(X, training=True)
    P = np.exp(Z - Z.max(1, keepdims=True))
    np.testing.assert_allclose(net.predict_proba(X, mode="train"), P / P.sum(1, keepdims=True),
                               rtol=1e-10)


def test_single_sample_is_evaluated_in_evaluation_mode():
    net = Network(5, [4], 3, seed=0)
    p = net.predict_proba(np.ones((1, 5)))
    assert p.shape == (1, 3) and p.sum() == pytest.approx(1.0)
    assert net.predict(np.ones((1, 5))).shape == (1,)


@pytest.mark.parametrize("init,expected", [("he", np.sqrt(2 / 400)), ("xavier", np.sqrt(1 / 400)),
                                           (1e-3, 1e-3), (0.1, 0.1)])
def test_initialisation_draws_weights_with_the_expected_scale(init, expected):
    net = Network(400, [300], 10, init=init, seed=0)
    assert net.params["W1"].std() == pytest.approx(expected, rel=0.02)
    assert np.all(net.params["b1"] == 0) and np.all(net.params["gamma1"] == 1)


def test_seed_fixes_initialisation():
    a, b, c = (Network(8, [5], 3, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    net = Network(6, [5, 4], 3, dtype=np.float32, seed=2, bn_init="zeros_ones", bn_alpha=0.8)
    for v in net.running_stats.values():
        v[...] = rng.random(v.shape) + 0.5
    net.save(tmp_path / "net.npz")
    loaded = Network.load(tmp_path / "net.npz")
    assert loaded.config() == net.config()
    X, _ = data(rng, 7, 6, 3, np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))


def test_a_saved_network_whose_values_changed_is_refused(tmp_path):
    from cbn.checkpoint import CheckpointError
    net = Network(6, [5], 3, seed=2)
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz") as f:
        arrays = {k: f[k] for k in f.files}
    assert "checksum" in arrays
    arrays["W1"] = arrays["W1"].copy()
    arrays["W1"][0, 0] += 1e-3               # finite, same shape: only the checksum tells
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(CheckpointError, match="edited.npz.*checksum"):
        Network.load(tmp_path / "edited.npz")
    del arrays["checksum"]                    # a file from before checksums: loads as it is
    np.savez(tmp_path / "old.npz", **arrays)
    assert Network.load(tmp_path / "old.npz").params["W1"][0, 0] == arrays["W1"][0, 0]


def test_loading_a_foreign_npz_fails_clearly(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="no cbn network"):
        Network.load(tmp_path / "other.npz")


def test_copy_is_independent():
    net = Network(4, [3], 2, seed=0)
    twin = net.copy()
    twin.params["W1"][...] = 0
    assert not np.all(net.params["W1"] == 0)


@pytest.mark.parametrize("kwargs", [
    dict(input_dim=0), dict(hidden=[5, 0]), dict(hidden=[-3]), dict(hidden=5), dict(num_classes=1),
    dict(init="kaiming"), dict(init=-0.1), dict(dtype=np.float16), dict(dtype=np.int32),
    dict(bn_alpha=1.5), dict(bn_eps=0.0), dict(bn_init="ones"), dict(seed=-1), dict(hidden=[2.5]),
    dict(batch_norm="yes"),
])
def test_bad_construction_arguments_raise(kwargs):
    args = dict(input_dim=5, hidden=[4], num_classes=3)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)):
        Network(**args)


@pytest.mark.parametrize("X,y", [
    (np.ones((4, 6)), np.zeros(4, int)),                      # wrong width
    (np.ones((4, 5), np.float16), np.zeros(4, int)),          # dtype
    (np.ones((5, 4)).T, np.zeros(4, int)),                    # non-contiguous
    (np.full((4, 5), np.nan), np.zeros(4, int)),              # NaN
    (np.ones((0, 5)), np.zeros(0, int)),                      # empty
    (np.ones((1, 5)), np.zeros(1, int)),                      # batch of 1 with BN
    (np.ones((4, 5)), np.array([0, 1, 2, 3])),                # label out of range
    (np.ones((4, 5)), np.array([0.0, 1, 1, 0])),              # float labels
    (np.ones((4, 5)), np.zeros(3, int)),                      # length mismatch
    (np.ones(5), np.zeros(1, int)),                           # rank
    ([[1.0] * 5] * 4, np.zeros(4, int)),                      # not an array
])
def test_bad_batches_raise_clear_errors(X, y):
    net = Network(5, [4], 3, seed=0)
    with pytest.raises((ValueError, TypeError)):
        net.cost_and_grads(X, y, 0.0)


def test_negative_lambda_is_rejected():
    net = Network(5, [4], 3, seed=0)
    with pytest.raises(ValueError, match="lam"):
        net.cost_and_grads(np.ones((3, 5)), np.zeros(3, int), -0.1)



def test_a_one_off_large_batch_does_not_keep_its_workspace(monkeypatch):
    import cbn.architecture as network
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((1000, 20)), rng.integers(0, 4, 1000)
    net = Network(20, [5], 4, seed=0, dtype=np.float64)
    net.cost_and_grads(X[:50], y[:50])
    small = net.plan(50)
    monkeypatch.setattr(network, "PLAN_CACHE_BYTES", 4.1 * testing.cached_plans(net)[50].nbytes)  # ~205 rows
    cost, grads = net.cost_and_grads(X, y)      # 1000 rows: over the budget, not kept
    assert set(testing.cached_plans(net)) == {50}
    fresh = Network(20, [5], 4, seed=0, dtype=np.float64)
    expected_cost, expected = fresh.cost_and_grads(X, y)
    assert cost == expected_cost and all(np.array_equal(grads[k], expected[k]) for k in grads)
    assert net.plan(40) is small               # the smallest cached plan that fits
    net.plan(60), net.plan(70)                # within budget: cached, ...
    assert list(testing.cached_plans(net)) == [50, 60, 70]
    net.plan(50)
    net.plan(80)                               # ... until the least recently used goes
    assert list(testing.cached_plans(net)) == [70, 50, 80]
    assert sum(c.nbytes for c in testing.cached_plans(net).values()) <= network.PLAN_CACHE_BYTES


# -- batch norm after ReLU, dropout ----------------------------------------------------------

VARIANTS = [  # (batch_norm, bn_placement, dropout)
    (True, "after", 0.0), (True, "after", 0.3), (True, "before", [0.5, 0.2]),
    (False, "before", 0.4),
]


def reference_of(net, dropout_seed=0, step=0):
    return ReferenceNet({k: v.astype(np.float64) for k, v in net.params.items()},
                        net.batch_norm, placement=net.bn_placement, dropout=net.dropout,
                        dropout_key=None if dropout_seed is None else (dropout_seed, step),
                        running={k: v.astype(np.float64) for k, v in net.running_stats.items()})


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("bn, placement, dropout", VARIANTS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", INPUTS)
def test_cost_and_grads_of_every_architecture_match_numpy_reference(two_threads, dt, bn,
                                                                    placement, dropout, rows, d):
    rng = np.random.default_rng(rows + d)
    net = Network(d, [20, 9], 6, batch_norm=bn, dtype=dt, seed=3, bn_placement=placement,
                  dropout=dropout)
    X, y = data(rng, rows, d, 6, dt)
    cost, grads = net.cost_and_grads(X, y, 0.01, dropout_seed=11)
    expect_slices(net, rows)
    rcost, rgrads, _ = reference_of(net, 11).cost_and_grads(X.astype(np.float64), y, 0.01)
    assert cost == pytest.approx(rcost, rel=TOL[dt]["rtol"])
    for name, g in grads.items():
        np.testing.assert_allclose(g, rgrads[name], **TOL[dt])
    assert net.cost(X, y, 0.01, dropout_seed=11) == pytest.approx(cost, rel=1e-6)


def test_dropout_seed_none_turns_dropout_off():
    rng = np.random.default_rng(1)
    X, y = data(rng, 12, 7, 3)
    net = Network(7, [10, 10], 3, seed=0, dropout=0.5)
    plain = Network(7, [10, 10], 3, seed=0)
    cost, grads = net.cost_and_grads(X, y, dropout_seed=None)
    pcost, pgrads = plain.cost_and_grads(X, y)
    assert cost == pcost and all(np.array_equal(grads[k], pgrads[k]) for k in grads)
    assert net.cost_and_grads(X, y, dropout_seed=1)[0] != cost
    assert net.cost_and_grads(X, y, dropout_seed=1)[0] == net.cost_and_grads(X, y, dropout_seed=1)[0]


@pytest.mark.parametrize("placement", ["before", "after"])
def test_evaluation_ignores_dropout_and_uses_running_statistics(placement):
    rng = np.random.default_rng(5)
    net = Network(9, [8, 6], 4, seed=1, bn_placement=placement, dropout=0.5,
                  dtype=np.float64)
    for k, v in net.running_stats.items():
        v[...] = rng.random(v.shape) + (0.5 if "var" in k else -0.5)
    X, _ = data(rng, 600, 9, 4)
    np.testing.assert_allclose(net.predict_proba(X), reference_of(net).predict_proba(X),
                               rtol=1e-10, atol=1e-12)


def test_architecture_options_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    net = Network(6, [5, 4], 3, seed=2, bn_placement="after", dropout=[0.1, 0.25])
    net.save(tmp_path / "net.npz")
    loaded = Network.load(tmp_path / "net.npz")
    assert loaded.config() == net.config()
    assert loaded.bn_placement == "after" and loaded.dropout == (0.1, 0.25)
    X, y = data(rng, 7, 6, 3)
    assert loaded.cost(X, y, dropout_seed=4) == net.cost(X, y, dropout_seed=4)
    assert "BN after ReLU" in repr(loaded) and "dropout" in repr(loaded)


@pytest.mark.parametrize("kwargs, error", [
    (dict(dropout=1.0), ValueError), (dict(dropout=-0.1), ValueError),
    (dict(dropout=[0.1]), ValueError), (dict(dropout=[0.1, 0.2, 0.3]), ValueError),
    (dict(dropout=[0.1, 1.5]), ValueError), (dict(dropout="0.5"), TypeError),
    (dict(dropout=[[0.1, 0.2]]), TypeError), (dict(dropout=float("nan")), ValueError),
    (dict(bn_placement="middle"), ValueError), (dict(bn_placement=None), ValueError),
])
def test_bad_architecture_arguments_raise(kwargs, error):
    with pytest.raises(error):
        Network(5, [4, 3], 3, **kwargs)


@pytest.mark.parametrize("seed", [-1, 2**64, 0.5])
def test_bad_dropout_seed_is_refused(seed):
    net = Network(5, [4], 3, seed=0, dropout=0.5)
    with pytest.raises((ValueError, TypeError), match="dropout_seed"):
        net.cost_and_grads(np.ones((3, 5)), np.zeros(3, int), dropout_seed=seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_used_network_pickles_and_deep_copies_with_its_state(dtype):
    import copy
    import pickle
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 8)).astype(dtype), rng.integers(0, 3, 60)
    net = Network(8, [6, 5], 3, seed=0, dtype=dtype, bn_init="zeros_ones")
    fit(net, X, y, lam=0.01, batch_size=20, schedule=0.05, epochs=2, seed=0, progress=False)
    for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert other.config() == net.config()
        for name, value in net.state_dict().items():
            np.testing.assert_array_equal(other.state_dict()[name], value)
        np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))
        other.params["W1"][...] = 0  # independent of the original
        assert net.params["W1"].any()


@pytest.mark.parametrize("change, match", [
    (dict(src=np.zeros((5, 7))), "src must be"),                       # wrong width
    (dict(src=np.zeros((5, 6), np.int32)), "src must be"),             # wrong dtype
    (dict(labels=np.zeros(4, np.int64)), "labels must be"),            # fewer labels than rows
    (dict(idx=np.arange(5, dtype=np.int32)), "idx must be"),           # not int64
    (dict(shift=np.zeros(6, np.float32)), "shift must be"),            # not the plan's dtype
    (dict(scale=np.ones(5)), "scale must be"),                         # too short
])
def test_a_plan_refuses_data_its_gather_cannot_read(change, match):
    net = Network(6, [4], 3, seed=0, dtype=np.float64)
    plan = net.plan(4)
    args = dict(src=np.zeros((5, 6)), labels=np.zeros(5, np.int64),
                idx=np.arange(5, dtype=np.int64), shift=np.zeros(6), scale=np.ones(6))
    plan.set_data(**args)  # the good case
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        plan.set_data(**args)


def test_a_plan_refuses_rows_beyond_its_capacity_or_data():
    net = Network(6, [4], 3, seed=0, dtype=np.float64)
    plan = net.plan(4)
    plan.set_data(np.zeros((5, 6)), np.zeros(5, np.int64), np.arange(5, dtype=np.int64),
                  np.zeros(6), np.ones(6))
    for offset, n in [(0, 5), (3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="do not fit"):
            plan.forward(offset, n, False)

"""Every compiled kernel against the plain NumPy reference, in float32 and float64, on
awkward shapes (sizes that are not multiples of 8, width 1, batch 2, a single sample)."""
import numpy as np
import pytest

import reference as ref
from cbn import ops as kernels

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [np.float32, np.float64]
SHAPES = [(2, 1, 1), (2, 3, 7), (5, 13, 1), (9, 17, 11), (33, 70, 50), (100, 3072, 50)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,d,m", SHAPES + [(1, 5, 3)])
def test_linear_forward_matches_reference(rng, dt, n, d, m):
    X, W, b = rand(rng, (n, d), dt), rand(rng, (d, m), dt), rand(rng, m, dt)
    S = kernels.linear_forward(X, W, b)
    assert S.dtype == dt
    np.testing.assert_allclose(S, ref.linear_forward(X, W, b), **TOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,d,m", SHAPES + [(1, 5, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_linear_backward_matches_reference(rng, dt, n, d, m, lam):
    X, W, dS = rand(rng, (n, d), dt), rand(rng, (d, m), dt), rand(rng, (n, m), dt)
    dW, db, dX = kernels.linear_backward(X, W, dS, lam)
    rdW, rdb, rdX = ref.linear_backward(X, W, dS, lam)
    for got, want in ((dW, rdW), (db, rdb), (dX, rdX)):
        assert got.dtype == dt
        np.testing.assert_allclose(got, want, **TOL[dt])


def test_linear_backward_can_skip_input_gradient(rng):
    X, W, dS = rand(rng, (4, 3), np.float64), rand(rng, (3, 2), np.float64), rand(rng, (4, 2), np.float64)
    assert kernels.linear_backward(X, W, dS, need_dX=False)[2] is None


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 1), (2, 7), (9, 13), (100, 50), (257, 3)])
def test_bn_relu_forward_train_matches_reference(rng, dt, n, m):
    S = (rand(rng, (n, m), dt) * 3 + 1).astype(dt)
    gamma, beta = rand(rng, m, dt), rand(rng, m, dt)
    H, cache = kernels.bn_relu_forward_train(S, gamma, beta, 1e-5)
    rH, rcache = ref.bn_relu_forward_train(S.astype(np.float64), gamma, beta, 1e-5)
    tol = dict(rtol=2e-4, atol=2e-4) if dt == np.float32 else TOL[dt]
    np.testing.assert_allclose(H, rH, **tol)
    for key in ("mean", "var", "inv_std", "Shat"):
        np.testing.assert_allclose(cache[key], rcache[key], **tol)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (9, 13), (100, 50)])
def test_bn_relu_forward_eval_matches_reference(rng, dt, n, m):
    S = rand(rng, (n, m), dt)
    gamma, beta, mu = rand(rng, m, dt), rand(rng, m, dt), rand(rng, m, dt)
    var = (rng.random(m) + 0.1).astype(dt)
    H = kernels.bn_relu_forward_eval(S, gamma, beta, mu, var, 1e-5)
    np.testing.assert_allclose(H, ref.bn_relu_forward_eval(S, gamma, beta, mu, var, 1e-5), **TOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 1), (2, 7), (9, 13), (100, 50)])
def test_bn_relu_backward_matches_reference(rng, dt, n, m):
    S = rand(rng, (n, m), dt)
    gamma, beta = rand(rng, m, dt), rand(rng, m, dt)
    H, cache = kernels.bn_relu_forward_train(S, gamma, beta)
    dH = rand(rng, (n, m), dt)
    dS, dgamma, dbeta = kernels.bn_relu_backward(dH, H, cache["Shat"], gamma, cache["inv_std"])
    rdS, rdgamma, rdbeta = ref.bn_relu_backward(dH, H, cache["Shat"], gamma, cache["inv_std"])
    tol = dict(rtol=1e-4, atol=1e-4) if dt == np.float32 else TOL[dt]
    for got, want in ((dS, rdS), (dgamma, rdgamma), (dbeta, rdbeta)):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
def test_running_stats_update_follows_ema_rule(rng, dt, first, unbiased):
    mean, var = rand(rng, 5, dt), rng.random(5).astype(dt)
    rm, rv = rand(rng, 5, dt), rng.random(5).astype(dt)
    want_m, want_v = rm.astype(np.float64), rv.astype(np.float64)
    factor = 10 / 9 if unbiased else 1.0
    if first:
        want_m, want_v = mean.astype(np.float64), var * factor
    else:
        want_m = 0.9 * want_m + 0.1 * mean
        want_v = 0.9 * want_v + 0.1 * var * factor
    kernels.running_stats_update(mean, var, rm, rv, alpha=0.9, batch_size=10,
                                 unbiased=unbiased, first=first)
    np.testing.assert_allclose(rm, want_m, rtol=1e-6)
    np.testing.assert_allclose(rv, want_v, rtol=1e-6)


@pytest.mark.parametrize("dt", DTYPES)
def test_relu_forward_and_backward_match_reference(rng, dt):
    S, dH = rand(rng, (7, 9), dt), rand(rng, (7, 9), dt)
    H = kernels.relu_forward(S)
    np.testing.assert_array_equal(H, np.maximum(0, S))
    np.testing.assert_array_equal(kernels.relu_backward(dH, H), dH * (H > 0))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,K", [(1, 2), (2, 10), (37, 10), (5, 1000)])
def test_softmax_cross_entropy_matches_reference(rng, dt, n, K):
    Z = (rand(rng, (n, K), dt) * 5).astype(dt)
    y = rng.integers(0, K, n)
    loss, G, correct = kernels.softmax_cross_entropy(Z, y)
    rloss, rG = ref.softmax_cross_entropy(Z.astype(np.float64), y)
    tol = dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else TOL[dt]
    np.testing.assert_allclose(loss, rloss, **tol)
    np.testing.assert_allclose(G, rG, **tol)
    assert correct == int((Z.argmax(axis=1) == y).sum())
    np.testing.assert_allclose(kernels.softmax(Z), ref.softmax(Z.astype(np.float64)), **tol)


def test_softmax_is_stable_for_huge_logits():
    Z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4 + 1, -1e4]], dtype=np.float64)
    loss, G, _ = kernels.softmax_cross_entropy(Z, np.array([0, 1]))
    assert np.isfinite(loss) and np.isfinite(G).all()
    np.testing.assert_allclose(kernels.softmax(Z).sum(axis=1), 1.0)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_matches_formula(rng, dt, momentum):
    theta, grad = rand(rng, 1001, dt), rand(rng, 1001, dt)
    vel = rand(rng, 1001, dt) if momentum else None
    t64, g64 = theta.astype(np.float64), grad.astype(np.float64)
    if momentum:
        v64 = momentum * vel.astype(np.float64) - 0.1 * (g64 + 0.01 * t64)
        want = t64 + v64
    else:
        want = t64 - 0.1 * (g64 + 0.01 * t64)
    assert kernels.sgd_update(theta, grad, 0.1, lam=0.005, momentum=momentum, velocity=vel)
    np.testing.assert_allclose(theta, want, rtol=1e-6, atol=1e-6)


def test_sgd_update_reports_overflow_to_inf():
    theta = np.ones(33, np.float32)
    grad = np.zeros(33, np.float32)
    theta[17], grad[17] = 3e38, -3e38
    assert kernels.sgd_update(theta, grad, 1.0) is False
    assert np.isinf(theta[17])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("src_dt", [np.uint8, np.float32, np.float64])
def test_gather_rows_standardises_selected_rows(rng, dt, src_dt):
    src = rng.integers(0, 256, (50, 19)).astype(src_dt)
    idx = rng.permutation(50)[:11]
    shift, scale = rng.random(19) * 100, rng.random(19) + 0.5
    out = kernels.gather_rows(src, idx, shift, scale, dtype=dt)
    want = (src[idx].astype(np.float64) - shift.astype(dt)) * scale.astype(dt)
    np.testing.assert_allclose(out, want, **(TOL[dt] if dt == np.float64 else dict(rtol=1e-5, atol=1e-4)))


@pytest.mark.parametrize("call", [
    lambda: kernels.linear_forward(np.ones((2, 3)), np.ones((4, 2)), np.ones(2)),
    lambda: kernels.linear_forward(np.ones((2, 3), np.float32), np.ones((3, 2)), np.ones(2)),
    lambda: kernels.linear_forward(np.ones((3, 2)).T, np.ones((3, 2)), np.ones(2)),
    lambda: kernels.linear_forward(np.full((2, 3), np.nan), np.ones((3, 2)), np.ones(2)),
    lambda: kernels.linear_forward(np.ones((0, 3)), np.ones((3, 2)), np.ones(2)),
    lambda: kernels.linear_forward(np.ones((2, 3), np.int64), np.ones((3, 2)), np.ones(2)),
    lambda: kernels.bn_relu_forward_train(np.ones((1, 3)), np.ones(3), np.ones(3)),
    lambda: kernels.bn_relu_forward_train(np.ones((4, 3)), np.ones(2), np.ones(3)),
    lambda: kernels.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])),
    lambda: kernels.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])),
    lambda: kernels.sgd_update(np.ones(3), np.ones(4), 0.1),
    lambda: kernels.sgd_update(np.ones(3), np.ones(3), -0.1),
    lambda: kernels.gather_rows(np.ones((4, 3), np.uint8), np.array([4]), np.zeros(3), np.ones(3)),
    lambda: kernels.gather_rows(np.ones((4, 3), np.int16), np.array([0]), np.zeros(3), np.ones(3)),
])
def test_bad_kernel_input_raises_clear_error(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert str(info.value)


def test_read_only_inputs_are_accepted(rng):
    X, W, b = rand(rng, (4, 3), np.float64), rand(rng, (3, 2), np.float64), rand(rng, 2, np.float64)
    for a in (X, W, b):
        a.setflags(write=False)
    np.testing.assert_allclose(kernels.linear_forward(X, W, b), X @ W + b)


def test_in_place_update_refuses_read_only_target():
    theta = np.ones(3)
    theta.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        kernels.sgd_update(theta, np.ones(3), 0.1)

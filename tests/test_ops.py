"""The element-wise ops of a hidden block (batch norm alone, ReLU, dropout) against the plain
NumPy reference, forward and backward, in float32 and float64, on awkward shapes; and the
dropout mask's own properties."""
import numpy as np
import pytest

import reference as ref
from cbn import _ops
from cbn import ops as kernels

TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-11, atol=1e-12)}
DTYPES = [np.float32, np.float64]
SHAPES = [(2, 1), (2, 7), (3, 1), (9, 13), (33, 50), (100, 50)]


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", SHAPES)
def test_bn_forward_train_matches_reference(rng, dt, n, m):
    S = (rand(rng, (n, m), dt) * 3 - 1).astype(dt)
    gamma, beta = rand(rng, m, dt), rand(rng, m, dt)
    Z, cache = kernels.bn_forward_train(S, gamma, beta, 1e-5)
    rZ, rcache = ref.bn_forward_train(S.astype(np.float64), gamma, beta, 1e-5)
    assert Z.dtype == dt
    np.testing.assert_allclose(Z, rZ, **TOL[dt])
    for key in ("mean", "var", "inv_std", "Shat"):
        np.testing.assert_allclose(cache[key], rcache[key], **TOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (1, 7)] + SHAPES)
def test_bn_forward_eval_matches_reference(rng, dt, n, m):
    S = rand(rng, (n, m), dt)
    gamma, beta, mu = rand(rng, m, dt), rand(rng, m, dt), rand(rng, m, dt)
    var = (rng.random(m) + 0.1).astype(dt)
    Z = kernels.bn_forward_eval(S, gamma, beta, mu, var, 1e-5)
    np.testing.assert_allclose(Z, ref.bn_forward_eval(S, gamma, beta, mu, var, 1e-5), **TOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", SHAPES)
def test_bn_backward_matches_reference(rng, dt, n, m):
    S = rand(rng, (n, m), dt)
    gamma, beta = rand(rng, m, dt), rand(rng, m, dt)
    _, cache = kernels.bn_forward_train(S, gamma, beta)
    dZ = rand(rng, (n, m), dt)
    got = kernels.bn_backward(dZ, cache["Shat"], gamma, cache["inv_std"])
    want = ref.bn_backward(dZ.astype(np.float64), cache["Shat"], gamma, cache["inv_std"])
    for g, w in zip(got, want):
        assert g.dtype == dt
        np.testing.assert_allclose(g, w, **TOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1)] + SHAPES)
def test_relu_forward_and_backward_match_reference(rng, dt, n, m):
    S, dH = rand(rng, (n, m), dt), rand(rng, (n, m), dt)
    H = kernels.relu_forward(S)
    np.testing.assert_array_equal(H, np.maximum(0, S))
    np.testing.assert_array_equal(kernels.relu_backward(dH, H), dH * (np.maximum(0, S) > 0))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (2, 1), (2, 7), (9, 13), (100, 50)])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
def test_dropout_forward_and_backward_match_reference(rng, dt, n, m, p):
    A, dB = rand(rng, (n, m), dt), rand(rng, (n, m), dt)
    mask = ref.dropout_mask((n, m), p, seed=7, step=3, layer=1)
    B = kernels.dropout(A, p, seed=7, step=3, layer=1)
    np.testing.assert_allclose(B, A * mask.astype(dt), rtol=1e-6 if dt == np.float32 else 1e-15)
    # The backward pass is the same map: dA = dB * mask.
    dA = kernels.dropout(dB, p, seed=7, step=3, layer=1)
    np.testing.assert_allclose(dA, dB * mask.astype(dt), rtol=1e-6 if dt == np.float32 else 1e-15)


def test_dropout_keeps_about_one_minus_p_and_preserves_the_mean(rng):
    A = np.ones((400, 250))
    for p in (0.1, 0.5, 0.8):
        B = kernels.dropout(A, p, seed=1)
        assert abs((B > 0).mean() - (1 - p)) < 0.01
        assert abs(B.mean() - 1) < 0.02
        np.testing.assert_allclose(np.unique(B[B > 0]), [1 / (1 - p)])


def test_dropout_masks_differ_by_seed_step_and_layer_and_repeat_exactly():
    A = np.ones((50, 40))
    base = kernels.dropout(A, 0.5, seed=1, step=2, layer=0)
    np.testing.assert_array_equal(base, kernels.dropout(A, 0.5, seed=1, step=2, layer=0))
    for other in (dict(seed=2, step=2, layer=0), dict(seed=1, step=3, layer=0),
                  dict(seed=1, step=2, layer=1)):
        agree = (kernels.dropout(A, 0.5, **other) > 0) == (base > 0)
        assert 0.4 < agree.mean() < 0.6  # independent masks agree about half the time


def test_dropout_kernel_propagates_nan_and_zero_probability_is_identity(rng):
    """The kernel (which the plan runs on activations that may have overflowed) keeps NaN
    NaN whether its unit is kept or dropped, so divergence is not hidden."""
    A = rand(rng, (4, 5), np.float64)
    A[:, 2] = np.nan
    B = np.empty_like(A)
    _ops.dropout(A, B, 0.5, 3, 0, 0)
    assert np.isnan(B[:, 2]).all()
    _ops.dropout(A, B, 0.0, 3, 0, 0)
    np.testing.assert_array_equal(B, A)


@pytest.mark.parametrize("kwargs, error", [
    (dict(p=1.0), ValueError), (dict(p=-0.1), ValueError), (dict(p="0.5"), TypeError),
    (dict(p=0.5, seed=-1), ValueError), (dict(p=0.5, step=2**64), ValueError),
    (dict(p=0.5, layer=1.5), TypeError),
])
def test_bad_dropout_arguments_raise(kwargs, error):
    with pytest.raises(error):
        kernels.dropout(np.ones((2, 3)), **kwargs)


@pytest.mark.parametrize("fn, args", [
    (kernels.bn_forward_train, lambda: (np.ones((1, 3)), np.ones(3), np.zeros(3))),   # n = 1
    (kernels.bn_forward_train, lambda: (np.ones((4, 3)), np.ones(2), np.zeros(3))),   # gamma size
    (kernels.bn_backward, lambda: (np.ones((4, 3)), np.ones((4, 2)), np.ones(3), np.ones(3))),
    (kernels.bn_forward_eval, lambda: (np.ones((4, 3)), np.ones(3), np.zeros(3), np.zeros(3),
                                       -np.ones(3))),                                  # var < 0
])
def test_bad_batch_norm_inputs_raise(fn, args):
    with pytest.raises(ValueError):
        fn(*args())

"""Standardisation keeps its precision at any offset and scale of the data, "constant" is
judged relative to a feature's scale, and only images have their units judged: the
scikit-learn estimator takes any finite X and speaks of its own parameters."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cbn
from cbn import ops as kernels
from cbn.augment import Augment
from cbn.data import Normalization
from cbn.inputs import InputWarning

try:  # scikit-learn is an extra: its estimator's cases skip without it, the rest run
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    from cbn.sklearn import MLPClassifier
except ImportError:
    MLPClassifier = None
needs_sklearn = pytest.mark.skipif(MLPClassifier is None, reason="scikit-learn not installed")


@pytest.fixture(scope="module")
def separable():
    if MLPClassifier is None:
        pytest.skip("scikit-learn not installed (its make_classification)")
    return make_classification(n_samples=1000, n_features=20, random_state=0)


def two_blobs(d=5, far=10.0, n=100, seed=0):
    """Two well separated blobs of n rows each, the first around the origin."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.0, 1.0, (n, d)), rng.normal(far, 1.0, (n, d))])
    return X, np.repeat([0, 1], n)


# -- the mean subtracted at full precision --------------------------------------------------

@needs_sklearn
@pytest.mark.parametrize("offset", [1e8, -3e12])
def test_the_estimator_learns_features_far_from_zero(separable, offset):
    X, y = separable
    est = MLPClassifier(max_iter=10, random_state=0).fit(X + offset, y)
    assert est.score(X + offset, y) > 0.9
    assert est.score(X + offset, y) == pytest.approx(
        MLPClassifier(max_iter=10, random_state=0).fit(X, y).score(X, y), abs=0.01)


def test_fit_with_a_normalization_learns_features_far_from_zero(separable):
    X, y = separable
    X = X + 1e8
    net = cbn.Network(20, [50], 2, dtype=np.float32, seed=0)
    cbn.fit(net, X, y, lam=0.0, batch_size=100, epochs=10, seed=0, progress=False,
            schedule=cbn.CyclicLR(1e-5, 0.1, 50), normalization=Normalization.fit(X))
    assert net.accuracy(X, y) > 0.9


@pytest.mark.parametrize("augment", [None, Augment(hflip=True, shift=0)])
def test_the_gather_subtracts_a_large_mean_from_float64_rows_in_float64(augment):
    rng = np.random.default_rng(0)
    src = rng.normal(1e8, 1.0, (6, 3072))
    norm = Normalization.fit(src)
    idx = np.array([3, 0, 5, 1])
    got = kernels.gather_rows(src, idx, norm.mean, 1 / norm.std, dtype=np.float32,
                              augment=augment)
    want = (src[idx] - norm.mean) / norm.std
    # A flip only moves values within a row: compare each row's sorted values.
    np.testing.assert_allclose(np.sort(got, axis=1), np.sort(want, axis=1), atol=1e-5)


@pytest.mark.parametrize("augment", [None, Augment(hflip=True, shift=0)])
def test_the_gather_keeps_float32_rows_exact_next_to_a_large_mean(augment):
    """float32 values 2^24 + 2k (ulp 2) around a mean of 2^24 + 9 1/3, which float32 rounds
    by 2/3: x - float32(mean) would be off by 0.12 std for every value."""
    rng = np.random.default_rng(1)
    src = (2.0 ** 24 + 2 * rng.integers(0, 10, (6, 3072))).astype(np.float32)
    mean = np.full(3072, 2.0 ** 24 + 28 / 3)
    std = np.full(3072, 5.7)
    idx = np.array([2, 4, 0])
    got = kernels.gather_rows(src, idx, mean, 1 / std, dtype=np.float32, augment=augment)
    want = (src[idx].astype(np.float64) - mean) / std
    np.testing.assert_allclose(np.sort(got, axis=1), np.sort(want, axis=1), atol=1e-6)


# -- "constant" relative to the feature's scale ---------------------------------------------

@pytest.mark.parametrize("scale", [1e-200, 1e-9, 1e200])
def test_normalization_keeps_the_spread_of_features_at_any_scale(separable, scale):
    X = separable[0]
    norm = Normalization.fit(X * scale)
    np.testing.assert_allclose(norm.mean, X.mean(axis=0) * scale, rtol=1e-12,
                               atol=1e-12 * scale)
    np.testing.assert_allclose(norm.std, X.std(axis=0) * scale, rtol=1e-12)


@pytest.mark.parametrize("value", [0.1, 1e12 + 0.1, -7.3e-30])
def test_exactly_constant_features_get_unit_std_and_map_to_zero(value):
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 1.0, (3000, 3))
    X[:, 1] = value
    norm = Normalization.fit(X)
    assert norm.std[1] == 1.0
    assert (norm.apply(X)[:, 1] == 0).all()
    assert (kernels.gather_rows(X, np.arange(3000), norm.mean, 1 / norm.std)[:, 1] == 0).all()


@needs_sklearn
def test_the_estimator_learns_tiny_features(separable):
    X, y = separable
    assert MLPClassifier(max_iter=10, random_state=0).fit(X * 1e-9, y).score(X * 1e-9, y) > 0.9
    est = MLPClassifier(max_iter=10, random_state=0, dtype="float64").fit(X * 1e-200, y)
    assert est.score(X * 1e-200, y) > 0.9


@needs_sklearn
@pytest.mark.parametrize("scale, cause", [(1e-200, "too small"), (1e200, "too large")])
def test_features_float32_cannot_standardise_are_refused_naming_the_cause(separable, scale,
                                                                           cause):
    X, y = separable
    with pytest.raises(ValueError, match=f"{cause} for float32.*dtype='float64'") as caught:
        MLPClassifier(max_iter=1).fit(X * scale, y)
    assert "normalization" not in str(caught.value)


def test_a_std_whose_inverse_underflows_the_dtype_is_refused():
    net = cbn.Network(4, [3], 2, dtype=np.float32, seed=0)
    norm = Normalization(mean=np.zeros(4), std=np.full(4, 1e39))
    with pytest.raises(ValueError, match=r"normalization: std 1e\+39 of feature 0 is too large"):
        net.predict(np.ones((3, 4)), normalization=norm)


def test_normalization_apply_names_an_overflow_as_such():
    norm = Normalization(mean=np.zeros(2), std=np.full(2, 1e-300))
    with pytest.raises(ValueError, match="overflow float32 once standardised"):
        norm.apply(np.ones((2, 2)), np.float32)


# -- only images have their units judged ----------------------------------------------------

@needs_sklearn
def test_the_estimator_predicts_any_subset_of_its_rows():
    X, y = two_blobs()
    est = MLPClassifier(random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        for rows in (slice(0, 50), slice(100, 150), slice(40, 160)):
            assert (est.predict(X[rows]) == y[rows]).all()
            assert est.predict_proba(X[rows]).shape == (len(y[rows]), 2)
            assert est.score(X[rows], y[rows]) == 1.0


@pytest.mark.parametrize("d, far", [(5, 10.0), (3072, 2000.0)])
def test_a_network_predicts_a_subset_of_non_image_rows(d, far):
    """Rows of one region, standardised by the statistics of the whole, are not taken for
    features standardised already: only images (3072 values in pixel units) are judged."""
    X, y = two_blobs(d=d, far=far)
    norm = Normalization.fit(X)
    net = cbn.Network(d, [10], 2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        net.predict(X[:50], normalization=norm)
        net.normalization = norm
        net.predict(X[:50])
        net.evaluate(X[:50], y[:50])


@needs_sklearn
def test_errors_of_the_estimator_name_its_own_parameters(separable):
    X, y = separable
    huge = X.copy()
    huge[0, 0] = 1e39
    with pytest.raises(ValueError, match="dtype='float64' or standardize=True") as caught:
        MLPClassifier(max_iter=1, standardize=False).fit(huge, y)
    est = MLPClassifier(max_iter=1, random_state=0).fit(X, y)
    far = X[:20].copy()
    far[3, 2] = 1e39
    with pytest.raises(ValueError, match="standard deviations") as predicted:
        est.predict(far)
    for error in (caught, predicted):
        assert "normalization" not in str(error.value)


@needs_sklearn
def test_a_held_out_row_too_far_out_is_refused_in_the_estimators_words(separable):
    X, y = separable
    X = X.copy()
    # The rows early stopping holds out, drawn as the estimator draws them.
    held = train_test_split(np.arange(len(y)), y, test_size=0.1, stratify=y,
                            random_state=np.random.RandomState(0))[1]
    X[:, 0] = 0.0
    X[held[0], 0] = 1e39
    with pytest.raises(ValueError, match="held out for early stopping") as caught:
        MLPClassifier(max_iter=1, early_stopping=True, random_state=0).fit(X, y)
    assert "X_val" not in str(caught.value) and "normalization" not in str(caught.value)

"""Standardisation keeps its precision at any offset and scale of the data, "constant" is
judged relative to a feature's scale, and only images have their units judged: the
scikit-learn estimator takes any finite X and speaks of its own parameters."""
from __future__ import annotations

import numpy as np
import pytest

from cbn import kernels
from cbn.data import Normalization

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402

from cbn.sklearn import MLPClassifier  # noqa: E402


@pytest.fixture(scope="module")
def separable():
    return make_classification(n_samples=1000, n_features=20, random_state=0)


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


def test_the_estimator_learns_tiny_features(separable):
    X, y = separable
    assert MLPClassifier(max_iter=10, random_state=0).fit(X * 1e-9, y).score(X * 1e-9, y) > 0.9
    est = MLPClassifier(max_iter=10, random_state=0, dtype="float64").fit(X * 1e-200, y)
    assert est.score(X * 1e-200, y) > 0.9


def test_normalization_apply_names_an_overflow_as_such():
    norm = Normalization(mean=np.zeros(2), std=np.full(2, 1e-300))
    with pytest.raises(ValueError, match="overflow float32 once standardised"):
        norm.apply(np.ones((2, 2)), np.float32)

"""The network owns its input transform: fit keeps the normalization, predictions apply it to
raw images, it survives save/load and copies, and inputs in the wrong units raise or warn
instead of giving a silent chance-level answer."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cbn
from cbn.data import Normalization, load_sample
from cbn.inputs import MIN_ROWS, InputWarning, resolve


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def trained(sample):
    """A small BN network trained on the sample's uint8 images with its normalization."""
    net = cbn.Network(3072, [20], 10, batch_norm=True, dtype=np.float32, seed=0)
    cbn.fit(net, sample.train.images, sample.train.labels, lam=0.005, batch_size=100,
            cycles=1, seed=0, schedule=cbn.CyclicLR(1e-5, 1e-1, 40), progress=False,
            normalization=sample.normalization)
    return net




def test_fit_keeps_the_normalization_it_was_given(sample, trained):
    assert trained.normalization is not None
    np.testing.assert_array_equal(trained.normalization.mean, sample.normalization.mean)
    np.testing.assert_array_equal(trained.normalization.std, sample.normalization.std)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_raw_images_are_standardised_by_the_network(sample, trained, dtype):
    X, y = sample.test.images, sample.test.labels
    expected = trained.predict_proba(X, normalization=sample.normalization)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        # Float rows subtract the mean more exactly than uint8 rows need: the same values
        # to float32 rounding.
        np.testing.assert_allclose(trained.predict_proba(X.astype(dtype)), expected,
                                   rtol=1e-5, atol=1e-6)
        assert trained.accuracy(X.astype(dtype), y) == trained.accuracy(
            X, y, normalization=sample.normalization)
        assert trained.accuracy(X, y) > 0.2  # well above chance, not the 10 % of a mix-up


def test_standardised_features_are_refused_rather_than_standardised_twice(sample, trained):
    Z = sample.features("test", np.float32)
    with pytest.raises(ValueError, match="standardised already"):
        trained.predict(Z)
    with pytest.raises(ValueError, match="standardised already"):
        trained.evaluate(Z, sample.test.labels, normalization=sample.normalization)


def test_normalization_false_feeds_standardised_features_as_they_are(sample, trained):
    Z = sample.features("test", np.float32)
    np.testing.assert_allclose(trained.predict_proba(Z, normalization=False),
                               trained.predict_proba(sample.test.images), rtol=1e-5,
                               atol=1e-6)


def test_raw_images_declared_standardised_are_refused(sample, trained):
    with pytest.raises(TypeError, match="normalization=False"):
        trained.predict(sample.test.images, normalization=False)
    with pytest.raises(ValueError, match="looks like raw inputs"):
        trained.predict(sample.test.images.astype(np.float32), normalization=False)


def test_inputs_in_other_units_get_a_warning(sample, trained):
    scaled = sample.test.images / 255.0
    with pytest.warns(InputWarning, match="does not look like the raw inputs"):
        trained.predict(scaled)


def test_every_class_alone_passes_the_check(sample, trained):
    """A batch of one class has other feature means than the whole set; still no warning."""
    X = sample.test.images.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        for label in range(10):
            trained.predict(np.ascontiguousarray(X[sample.test.labels == label]))


def test_a_few_rows_are_not_judged(sample, trained):
    Z = sample.features("test", np.float32)[:MIN_ROWS - 1]
    assert trained.predict(Z).shape == (MIN_ROWS - 1,)  # too few rows to tell; no error


def test_uint8_without_any_normalization_says_what_to_pass(sample):
    net = cbn.Network(3072, [10], 10, seed=0)
    with pytest.raises(TypeError, match=r"pass normalization= .*data\.normalization"):
        net.predict(sample.test.images)


def test_raw_pixels_to_a_network_without_normalization_get_a_warning(sample):
    net = cbn.Network(3072, [10], 10, seed=0)
    with pytest.warns(InputWarning, match="like raw pixels"):
        net.predict(sample.test.images.astype(np.float64))


def test_standardised_features_to_a_network_without_normalization_pass_quietly(sample):
    net = cbn.Network(3072, [10], 10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        net.predict(sample.features("test", np.float64))


def test_save_and_load_keep_the_normalization(sample, trained, tmp_path):
    trained.save(tmp_path / "net.npz")
    loaded = cbn.Network.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.normalization.mean, sample.normalization.mean)
    np.testing.assert_array_equal(loaded.predict_proba(sample.test.images),
                                  trained.predict_proba(sample.test.images))
    assert trained.copy().normalization is not None


def test_files_without_a_normalization_still_load(sample, tmp_path):
    net = cbn.Network(3072, [10], 10, seed=0)
    net.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as arrays:
        assert "input_mean" not in arrays.files
    assert cbn.Network.load(tmp_path / "plain.npz").normalization is None


def test_state_dict_round_trips_the_normalization(sample, trained):
    state = trained.state_dict()
    assert {"input_mean", "input_std"} <= set(state)
    other = cbn.Network(**trained.config())
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.normalization.std, sample.normalization.std)
    del state["input_std"]
    with pytest.raises(ValueError, match="only one of"):
        other.load_state_dict(state)


def test_fit_without_normalization_uses_the_networks_own(sample, trained):
    net = trained.copy()
    cbn.fit(net, sample.train.images, sample.train.labels, lam=0.005, batch_size=100,
            epochs=1, seed=1, schedule=0.01, progress=False)
    assert net.accuracy(sample.test.images, sample.test.labels) > 0.2


@pytest.mark.parametrize("bad", [np.zeros(3072), "mean", 3.0, True])
def test_a_normalization_without_mean_and_std_is_refused(sample, trained, bad):
    with pytest.raises(TypeError, match="normalization"):
        trained.predict(sample.test.images, normalization=bad)


def test_the_normalization_attribute_checks_its_value(trained):
    net = trained.copy()
    with pytest.raises(ValueError, match="3072"):
        net.normalization = Normalization(mean=np.zeros(5), std=np.ones(5))
    net.normalization = None
    assert net.normalization is None


def test_resolve_leaves_the_shape_errors_to_the_network(sample):
    X = np.zeros((4, 7))
    assert resolve(X, None, sample.normalization, 3072) is sample.normalization

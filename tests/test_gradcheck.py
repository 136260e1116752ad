"""Analytic gradients agree with centered differences in float64, at every depth."""
import numpy as np
import pytest

from cbn import Network, gradcheck

NINE_LAYER = [50, 30, 20, 20, 10, 10, 10, 10]


@pytest.mark.parametrize("hidden", [[50, 50], NINE_LAYER], ids=["3-layer", "9-layer"])
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no_bn"])
def test_gradients_match_finite_differences(hidden, bn):
    result = gradcheck(hidden=hidden, batch_norm=bn, lam=0.005, seed=1)
    assert result.passed, result.table()
    assert result.max_relative_error <= 1e-6
    expected = {f"W{l}" for l in range(1, len(hidden) + 2)}
    assert expected <= {row["name"] for row in result.rows}


@pytest.mark.parametrize("hidden", [[50, 50], NINE_LAYER], ids=["3-layer", "9-layer"])
@pytest.mark.parametrize("bn, placement, dropout", [
    (True, "after", 0.0), (True, "after", 0.3), (True, "before", 0.3), (False, "before", 0.3),
], ids=["bn_after", "bn_after_dropout", "bn_before_dropout", "no_bn_dropout"])
def test_gradients_of_bn_after_relu_and_dropout_match_finite_differences(hidden, bn, placement,
                                                                         dropout):
    # 16 rows: with 8, BN after ReLU meets units active in one or two rows, whose variance
    # near 0 amplifies rounding in the finite differences past 1e-6.
    result = gradcheck(hidden=hidden, batch_norm=bn, bn_placement=placement, dropout=dropout,
                       lam=0.005, seed=2, dropout_seed=5, n=16, max_entries=40)
    assert result.passed, result.table()
    assert result.max_relative_error <= 1e-6
    names = {row["name"] for row in result.rows}
    assert {f"W{l}" for l in range(1, len(hidden) + 2)} <= names
    assert bn == ("gamma1" in names)


def test_dropout_masks_are_held_fixed_during_the_check(monkeypatch):
    """With the finite differences taken under other masks than the analytic gradient, the
    check fails: it passes only because every evaluation uses ``dropout_seed``'s masks."""
    honest = Network.cost

    def other_masks(self, X, y, lam=0.0, *, dropout_seed=0, **loss_options):
        return honest(self, X, y, lam, dropout_seed=dropout_seed + 1, **loss_options)

    assert gradcheck(hidden=[8], dropout=0.5, n=6, seed=3).passed
    monkeypatch.setattr(Network, "cost", other_masks)
    assert not gradcheck(hidden=[8], dropout=0.5, n=6, seed=3).passed


def test_float32_network_is_checked_through_a_float64_copy():
    rng = np.random.default_rng(0)
    net = Network(6, [5], 3, dtype=np.float32, seed=0)
    result = gradcheck(net, rng.standard_normal((4, 6)), np.array([0, 1, 2, 0]), 0.01)
    assert result.passed
    assert net.dtype == np.float32


def test_a_wrong_gradient_is_caught(monkeypatch):
    rng = np.random.default_rng(0)
    net = Network(6, [5], 3, seed=0)
    honest = Network.cost_and_grads

    def off_by_a_bit(self, X, y, lam=0.0, **kwargs):
        cost, grads = honest(self, X, y, lam, **kwargs)
        grads["W1"][2, 3] *= 1.001
        return cost, grads

    monkeypatch.setattr(Network, "cost_and_grads", off_by_a_bit)
    result = gradcheck(net, rng.standard_normal((4, 6)), np.array([0, 1, 2, 0]), 0.0)
    assert not result.passed
    assert max(result.rows, key=lambda r: r["max_relative_error"])["name"] == "W1"


def test_table_lists_every_parameter():
    result = gradcheck(hidden=[4], input_dim=3, num_classes=2, n=4)
    assert result.table().count("\n") == 1 + len(result.rows)
    assert result.as_dict()["table"][0]["name"] == "W1"


@pytest.mark.parametrize("kwargs", [dict(h=0.0), dict(lam=-1.0), dict(n=1), dict(max_entries=0),
                                    dict(X=np.ones((3, 10))), dict(dropout=1.0),
                                    dict(bn_placement="inside"), dict(dropout_seed=-1)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises((ValueError, TypeError)):
        gradcheck(**kwargs)

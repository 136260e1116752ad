"""The cyclical learning rate against the course's formula and PyTorch's CyclicLR."""
import math

import numpy as np
import pytest

from cbn import CyclicLR, ConstantLR


def course_eta(t, eta_min, eta_max, n_s):
    """The assignment's piecewise definition, written out independently."""
    l = t // (2 * n_s)
    if 2 * l * n_s <= t <= (2 * l + 1) * n_s:
        return eta_min + (t - 2 * l * n_s) / n_s * (eta_max - eta_min)
    return eta_max - (t - (2 * l + 1) * n_s) / n_s * (eta_max - eta_min)


@pytest.mark.parametrize("t", [0, 1, 17, 1124, 2249, 2250, 2251, 3333, 4499, 4500, 6750, 8999, 9000])
def test_triangular_matches_course_formula(t):
    s = CyclicLR(1e-5, 1e-1, 2250)
    assert s.lr(t) == pytest.approx(course_eta(t, 1e-5, 1e-1, 2250), rel=1e-12, abs=1e-15)


def test_triangular_hits_bounds_at_cycle_points():
    s = CyclicLR(0.01, 0.5, 10)
    assert s.lr(0) == pytest.approx(0.01)
    assert s.lr(10) == pytest.approx(0.5)
    assert s.lr(20) == pytest.approx(0.01)
    assert s.cycle_length == 20


def test_triangular2_halves_amplitude_each_cycle():
    s = CyclicLR(0.0, 1.0, 5, mode="triangular2")
    assert [s.lr(t) for t in (5, 15, 25)] == pytest.approx([1.0, 0.5, 0.25])


def test_exp_range_scales_by_gamma_power_step():
    s = CyclicLR(0.1, 1.1, 4, mode="exp_range", gamma=0.9)
    assert s.lr(4) == pytest.approx(0.1 + 1.0 * 0.9 ** 4)
    assert s.lr(6) == pytest.approx(0.1 + 0.5 * 0.9 ** 6)


def test_asymmetric_cycle_follows_step_size_down():
    s = CyclicLR(0.0, 1.0, 2, step_size_down=6)
    assert [s.lr(t) for t in range(9)] == pytest.approx([0, .5, 1, 5 / 6, 4 / 6, .5, 2 / 6, 1 / 6, 0])


def test_curve_equals_pointwise_learning_rates():
    s = CyclicLR(1e-5, 1e-1, 7, mode="triangular2")
    np.testing.assert_array_equal(s.curve(50), [s.lr(t) for t in range(50)])


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_matches_pytorch_cyclic_lr(mode):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-3, max_lr=0.2, step_size_up=7,
                                              step_size_down=5, mode=mode, gamma=0.97,
                                              cycle_momentum=False)
    ours = CyclicLR(1e-3, 0.2, 7, mode=mode, gamma=0.97, step_size_down=5)
    for t in range(60):
        assert ours.lr(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


@pytest.mark.parametrize("args,kwargs", [
    ((0.1, 0.01, 10), {}),
    ((-1e-3, 0.1, 10), {}),
    ((1e-5, 0.1, 0), {}),
    ((1e-5, 0.1, -5), {}),
    ((1e-5, 0.1, 2.5), {}),
    ((1e-5, math.nan, 10), {}),
    ((1e-5, 0.1, 10), {"mode": "cosine"}),
    ((1e-5, 0.1, 10), {"mode": "exp_range", "gamma": 0.0}),
    ((1e-5, 0.1, 10), {"step_size_down": 0}),
])
def test_bad_schedule_arguments_raise(args, kwargs):
    with pytest.raises((ValueError, TypeError)):
        CyclicLR(*args, **kwargs)


def test_negative_step_is_rejected():
    with pytest.raises(ValueError):
        CyclicLR(1e-5, 0.1, 10).lr(-1)


def test_constant_rate_is_constant():
    assert ConstantLR(0.05).curve(3).tolist() == [0.05] * 3
    with pytest.raises(ValueError):
        ConstantLR(-1.0)

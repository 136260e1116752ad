"""The learning-rate schedules against their formulas (the course's, for the cyclical one) and
PyTorch's schedulers (optional)."""
import json
import math

import numpy as np
import pytest

from cbn import ConstantLR, CosineAnnealingLR, CyclicLR, OneCycleLR


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


# -- cosine annealing and one-cycle ---------------------------------------------------------

def torch_rates(make_scheduler, steps):
    """PyTorch's learning rate after 0 .. steps-1 scheduler steps."""
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = make_scheduler(torch, opt)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(steps - 1):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("t", [0, 1, 7, 25, 49, 50, 51, 99, 100, 137])
def test_cosine_matches_formula(t):
    s = CosineAnnealingLR(0.2, 1e-4, 50)
    expected = 1e-4 + 0.5 * (0.2 - 1e-4) * (1 + math.cos(math.pi * t / 50))
    assert s.lr(t) == pytest.approx(expected, rel=1e-14)


def test_cosine_hits_its_ends_exactly():
    s = CosineAnnealingLR(0.3, 0.01, 40)
    assert s.lr(0) == 0.3 and s.lr(40) == 0.01 and s.lr(80) == pytest.approx(0.3, rel=1e-15)


@pytest.mark.parametrize("T_max", [1, 13, 50])
def test_cosine_matches_pytorch(T_max):
    steps = 6 * T_max + 5  # three periods and beyond
    expected = torch_rates(lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=T_max, eta_min=2e-3), steps)
    ours = CosineAnnealingLR(0.1, 2e-3, T_max).curve(steps)
    # PyTorch's rate is recursive: it matches the closed form up to accumulated rounding.
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-13)


ONE_CYCLE_CASES = [
    dict(total_steps=100),
    dict(total_steps=100, anneal_strategy="linear"),
    dict(total_steps=97, pct_start=0.25, three_phase=True),
    dict(total_steps=97, pct_start=0.4, anneal_strategy="linear", three_phase=True),
    dict(total_steps=250, pct_start=0.05, div_factor=10.0, final_div_factor=100.0),
    dict(total_steps=33, pct_start=0.0),
    dict(total_steps=1),
    dict(total_steps=7, pct_start=1.0, three_phase=True),
]


@pytest.mark.parametrize("kwargs", ONE_CYCLE_CASES)
def test_one_cycle_matches_pytorch(kwargs):
    steps = kwargs["total_steps"] + 1  # PyTorch's scheduler steps once after the last update
    expected = torch_rates(lambda torch, opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.4, cycle_momentum=False, **kwargs), steps)
    ours = OneCycleLR(0.4, **kwargs).curve(steps)
    np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=0)


def test_one_cycle_follows_its_phases():
    """Warm-up from max_lr/25 to max_lr at step 29, cosine down to max_lr/25/1e4 at step 99."""
    s = OneCycleLR(1.0, 100)
    assert s.lr(0) == pytest.approx(1 / 25, rel=1e-15)
    assert s.lr(29) == pytest.approx(1.0, rel=1e-15)
    assert s.lr(99) == pytest.approx(1 / 25 / 1e4, rel=1e-12)
    up, down = s.curve(30), s.curve(100)[29:]
    assert (np.diff(up) > 0).all() and (np.diff(down) < 0).all()
    mid = 29 + 35  # half-way through the cosine phase
    assert s.lr(mid) == pytest.approx((1.0 + 1 / 25 / 1e4) / 2, rel=1e-12)


def test_one_cycle_linear_warm_up_is_linear():
    s = OneCycleLR(0.5, 50, pct_start=0.2, anneal_strategy="linear", div_factor=5.0)
    np.testing.assert_allclose(s.curve(10), np.linspace(0.1, 0.5, 10), rtol=1e-14)


def test_one_cycle_refuses_steps_past_its_end():
    s = OneCycleLR(0.1, 20)
    s.lr(20)
    with pytest.raises(ValueError, match="step"):
        s.lr(21)


@pytest.mark.parametrize("total_steps,pct_start,three_phase", [(10, 0.1, False), (10, 0.1, True),
                                                               (4, 0.25, True), (3, 2 / 3, True),
                                                               (10, 1.0, False)])
def test_one_cycle_refuses_a_phase_without_steps(total_steps, pct_start, three_phase):
    """PyTorch divides by zero on these."""
    with pytest.raises(ValueError, match="without steps"):
        OneCycleLR(0.1, total_steps, pct_start=pct_start, three_phase=three_phase)


@pytest.mark.parametrize("make", [
    lambda: CosineAnnealingLR(0.1, 0.2, 10),
    lambda: CosineAnnealingLR(0.1, -0.01, 10),
    lambda: CosineAnnealingLR(math.inf, 0.0, 10),
    lambda: CosineAnnealingLR(0.1, 0.0, 0),
    lambda: OneCycleLR(0.0, 10),
    lambda: OneCycleLR(-0.1, 10),
    lambda: OneCycleLR(0.1, 0),
    lambda: OneCycleLR(0.1, 10, pct_start=1.5),
    lambda: OneCycleLR(0.1, 10, pct_start=-0.1),
    lambda: OneCycleLR(0.1, 10, anneal_strategy="exp"),
    lambda: OneCycleLR(0.1, 10, div_factor=0.0),
    lambda: OneCycleLR(0.1, 10, final_div_factor=-1.0),
])
def test_bad_new_schedule_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [
    lambda: CosineAnnealingLR(0.1, 0.0, 10.0),
    lambda: CosineAnnealingLR("0.1", 0.0, 10),
    lambda: OneCycleLR(0.1, 10, three_phase="yes"),
    lambda: OneCycleLR(0.1, 10.5),
])
def test_new_schedule_arguments_of_the_wrong_type_raise_type_error(make):
    with pytest.raises(TypeError):
        make()


# -- every schedule: the protocol and its state ---------------------------------------------

SCHEDULES = [
    (lambda: CyclicLR(1e-4, 0.1, 9, mode="exp_range", gamma=0.99, step_size_down=4),
     lambda: CyclicLR(0.0, 1.0, 2)),
    (lambda: ConstantLR(0.03), lambda: ConstantLR(1.0)),
    (lambda: CosineAnnealingLR(0.2, 0.001, 30), lambda: CosineAnnealingLR(1.0, 0.0, 1)),
    (lambda: OneCycleLR(0.3, 60, pct_start=0.2, anneal_strategy="linear", three_phase=True),
     lambda: OneCycleLR(1.0, 200)),
]


@pytest.mark.parametrize("make,make_other", SCHEDULES)
def test_state_round_trip_gives_the_same_curve(make, make_other):
    s, other = make(), make_other()
    other.load_state_dict(json.loads(json.dumps(s.state_dict())))  # JSON-ready, as checkpoints
    assert other.state_dict() == s.state_dict()
    np.testing.assert_array_equal(other.curve(61), s.curve(61))


@pytest.mark.parametrize("make,make_other", SCHEDULES)
def test_curve_and_call_equal_pointwise_rates(make, make_other):
    s = make()
    np.testing.assert_array_equal(s.curve(40), [s.lr(t) for t in range(40)])
    assert s(7) == s.lr(7)


@pytest.mark.parametrize("make,make_other", SCHEDULES)
def test_bad_state_is_refused_and_changes_nothing(make, make_other):
    s = make()
    before = s.state_dict()
    first = next(iter(before))
    bad_states = [{**before, "surplus": 1}, {k: v for k, v in before.items() if k != first},
                  {**before, first: -1.0}]
    for bad in bad_states:
        with pytest.raises(ValueError):
            s.load_state_dict(bad)
        assert s.state_dict() == before
    with pytest.raises(TypeError, match="mapping"):
        s.load_state_dict(list(before.items()))

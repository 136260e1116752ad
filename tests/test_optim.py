"""The optimizers against a plain NumPy reference and PyTorch's (optional), their state round
trips, their validation, and a warmed-up step that allocates nothing."""
from __future__ import annotations

import copy
import gc
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from cbn import optim
from cbn.optim import SGD, Adam, AdamW

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
LRS = (0.1, 0.03, 0.0, 0.2, 0.05, 0.07, 0.011)  # varying, one zero
# (parameters, of which weights): a single value, no weights, only weights, odd splits
SIZES = ((1, 1), (7, 0), (7, 7), (1001, 640), (4099, 3))
CONFIGS = {
    "sgd": (SGD, {}),
    "momentum": (SGD, dict(momentum=0.9)),
    "nesterov": (SGD, dict(momentum=0.8, nesterov=True)),
    "adam": (Adam, dict(beta1=0.85, beta2=0.99, eps=1e-6)),
    "adamw": (AdamW, dict(beta1=0.9, beta2=0.995, eps=1e-7, weight_decay=0.05)),
}


def problem(n, steps, dtype, seed=0):
    """A starting theta and one gradient per step, of varied scales and signs."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n).astype(dtype)
    grads = [(rng.normal(size=n) * rng.choice([1e-3, 1.0, 30.0], size=n)).astype(dtype)
             for _ in range(steps)]
    return theta, grads


def run(opt, theta, grads, lrs, n_weights):
    """theta after one step per gradient, and after each step."""
    theta = theta.copy()
    opt.bind(theta.size, n_weights, theta.dtype)
    out = []
    for g, lr in zip(grads, lrs):
        opt.step(theta, g, lr)
        out.append(theta.copy())
    return out


# -- the independent NumPy reference: the textbook formulas, in float64 ----------------------

def reference(kind, kw, theta, grads, lrs, n_weights):
    theta = theta.astype(np.float64)
    m = v = b = None
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        if kind in ("sgd", "momentum", "nesterov"):
            mu = kw.get("momentum", 0.0)
            if mu:
                b = g.copy() if b is None else mu * b + g
                d = g + mu * b if kw.get("nesterov") else b
            else:
                d = g
            theta = theta - lr * d
        else:
            b1, b2, eps = kw["beta1"], kw["beta2"], kw["eps"]
            if kind == "adamw":
                theta[:n_weights] = theta[:n_weights] * (1 - lr * kw["weight_decay"])
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta.copy())
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,n_weights", SIZES)
def test_steps_match_numpy_reference(kind, dtype, n, n_weights):
    cls, kw = CONFIGS[kind]
    theta, grads = problem(n, len(LRS), dtype)
    ours = run(cls(**kw), theta, grads, LRS, n_weights)
    expected = reference(kind, kw, theta, grads, LRS, n_weights)
    for t, (a, e) in enumerate(zip(ours, expected)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, e, **TOL[dtype], err_msg=f"step {t + 1}")


def torch_steps(kind, kw, theta, grads, lrs, n_weights):
    """The same steps with torch.optim; AdamW's decay on the weights only via two groups."""
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.from_numpy(theta[:n_weights].copy()))
    rest = torch.nn.Parameter(torch.from_numpy(theta[n_weights:].copy()))
    if kind in ("sgd", "momentum", "nesterov"):
        opt = torch.optim.SGD([w, rest], lr=0.1, **kw)
    elif kind == "adam":
        opt = torch.optim.Adam([w, rest], lr=0.1, betas=(kw["beta1"], kw["beta2"]),
                               eps=kw["eps"], weight_decay=0.0)
    else:
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": kw["weight_decay"]},
                                 {"params": [rest], "weight_decay": 0.0}], lr=0.1,
                                betas=(kw["beta1"], kw["beta2"]), eps=kw["eps"])
    out = []
    for g, lr in zip(grads, lrs):
        w.grad = torch.from_numpy(g[:n_weights].copy())
        rest.grad = torch.from_numpy(g[n_weights:].copy())
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        out.append(np.concatenate([w.detach().numpy(), rest.detach().numpy()]))
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,n_weights", SIZES)
def test_steps_match_pytorch(kind, dtype, n, n_weights):
    cls, kw = CONFIGS[kind]
    theta, grads = problem(n, len(LRS), dtype, seed=1)
    expected = torch_steps(kind, kw, theta, grads, LRS, n_weights)
    ours = run(cls(**kw), theta, grads, LRS, n_weights)
    for t, (a, e) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, e, **TOL[dtype], err_msg=f"step {t + 1}")


def test_adamw_decays_weights_only():
    opt = AdamW(weight_decay=0.5)
    theta = np.arange(1.0, 7.0)
    opt.bind(6, 4, np.float64)
    opt.step(theta, np.zeros(6), 0.1)  # a zero gradient: Adam's part moves nothing
    np.testing.assert_array_equal(theta, np.r_[np.arange(1.0, 5.0) * 0.95, 5.0, 6.0])


def test_plain_sgd_matches_a_hand_computed_step():
    opt = SGD()
    theta = np.array([1.0, -2.0, 0.5], np.float32)
    opt.bind(3, 2, np.float32)
    opt.step(theta, np.array([0.5, 1.0, -4.0], np.float32), 0.25)
    np.testing.assert_array_equal(theta, np.array([0.875, -2.25, 1.5], np.float32))


def test_only_plain_sgd_takes_the_fused_update():
    assert SGD().fused_momentum == 0.0
    assert SGD(momentum=0.9).fused_momentum is None   # PyTorch's buffer, kept by the optimizer
    assert SGD(momentum=0.9, nesterov=True).fused_momentum is None
    assert Adam().fused_momentum is None
    assert AdamW().fused_momentum is None


def test_optimizers_by_name():
    assert optim.OPTIMIZERS == {"sgd": SGD, "adam": Adam, "adamw": AdamW,
                                "lamb": optim.Lamb, "lion": optim.Lion}


# -- state ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_state_round_trip_continues_bit_identically(kind, dtype):
    cls, kw = CONFIGS[kind]
    theta, grads = problem(301, 8, dtype, seed=2)
    opt = cls(**kw)
    opt.bind(301, 200, dtype)
    for g, lr in zip(grads[:4], LRS):
        opt.step(theta, g, lr)
    state = opt.state_dict()
    resumed = cls()  # default hyper-parameters, unbound: the state brings everything
    resumed.load_state_dict(copy.deepcopy(state))
    assert resumed.hyper_parameters() == opt.hyper_parameters()
    assert resumed.steps == opt.steps == 4
    theta2 = theta.copy()
    for g, lr in zip(grads[4:], LRS[4:]):
        opt.step(theta, g, lr)
        resumed.step(theta2, g, lr)
    np.testing.assert_array_equal(theta2, theta)


def test_state_dict_holds_copies_and_names():
    opt = Adam()
    opt.bind(5, 3, np.float32)
    theta = np.zeros(5, np.float32)
    opt.step(theta, np.ones(5, np.float32), 0.1)
    state = opt.state_dict()
    assert state["name"] == "Adam" and state["step"] == 1
    assert (state["n_params"], state["n_weights"], state["dtype"]) == (5, 3, "float32")
    before = state["exp_avg"].copy()
    opt.step(theta, np.ones(5, np.float32), 0.1)
    np.testing.assert_array_equal(state["exp_avg"], before)


def test_state_dict_is_json_ready_besides_buffers():
    state = SGD(momentum=0.5).state_dict()  # unbound: no buffers yet
    assert json.loads(json.dumps(state)) == state


def good_state():
    opt = SGD(momentum=0.9)
    opt.bind(4, 2, np.float64)
    opt.step(np.zeros(4), np.ones(4), 0.1)
    return opt.state_dict()


@pytest.mark.parametrize("change,match", [
    (dict(name="Adam"), "Adam"),
    (dict(momentum_buffer=np.zeros(5)), "length 4"),
    (dict(momentum_buffer=np.zeros(4, np.float32)), "float64"),
    (dict(momentum_buffer=np.array([0.0, np.nan, 0.0, 0.0])), "NaN"),
    (dict(step=-1), "step"),
    (dict(momentum=1.5), "momentum"),
    (dict(extra=1), "extra"),
    (dict(n_weights=9), "n_weights"),
    (dict(dtype="int32"), "dtype"),
    (dict(momentum="0.9"), "momentum"),
    (dict(momentum_buffer=[0.0] * 4), "momentum_buffer"),
])
def test_bad_state_is_refused_and_changes_nothing(change, match):
    opt = SGD(momentum=0.9)
    opt.bind(4, 2, np.float64)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict({**good_state(), **change})
    after = opt.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_state_missing_a_buffer_is_refused():
    state = good_state()
    del state["momentum_buffer"]
    with pytest.raises(ValueError, match="momentum_buffer"):
        SGD(momentum=0.9).load_state_dict(state)


def test_state_for_other_sizes_is_refused_by_a_bound_optimizer():
    opt = SGD(momentum=0.9)
    opt.bind(6, 2, np.float64)
    with pytest.raises(ValueError, match="bound to 6"):
        opt.load_state_dict(good_state())


def test_state_must_be_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        Adam().load_state_dict([("name", "Adam")])


# -- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: SGD(momentum=-0.1), "momentum"),
    (lambda: SGD(momentum=1.0), "momentum"),
    (lambda: SGD(momentum=float("nan")), "momentum"),
    (lambda: SGD(nesterov=True), "Nesterov"),
    (lambda: SGD(momentum=0.0, nesterov=True), "Nesterov"),
    (lambda: Adam(beta1=-0.1), "beta1"),
    (lambda: Adam(beta1=1.0), "beta1"),
    (lambda: Adam(beta2=1.0), "beta2"),
    (lambda: Adam(beta2=-1e-3), "beta2"),
    (lambda: Adam(eps=0.0), "eps"),
    (lambda: Adam(eps=-1e-8), "eps"),
    (lambda: Adam(eps=float("inf")), "eps"),
    (lambda: AdamW(weight_decay=-1e-2), "weight_decay"),
    (lambda: AdamW(beta1=2.0), "beta1"),
])
def test_bad_hyper_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda: SGD(momentum="0.9"),
    lambda: SGD(momentum=0.9, nesterov="yes"),
    lambda: Adam(beta1=None),
    lambda: AdamW(weight_decay=True),
])
def test_hyper_parameters_of_the_wrong_type_raise_type_error(make):
    with pytest.raises(TypeError):
        make()


def bound_adam(n=6, dtype=np.float64):
    opt = Adam()
    opt.bind(n, 3, dtype)
    return opt


def test_step_before_bind_raises():
    with pytest.raises(ValueError, match="bind"):
        Adam().step(np.zeros(3), np.zeros(3), 0.1)


@pytest.mark.parametrize("theta,grad,error,match", [
    (np.zeros(5), np.zeros(6), ValueError, "theta must have length 6"),
    (np.zeros(6), np.zeros(7), ValueError, "grad must have length 6"),
    (np.zeros(6, np.float32), np.zeros(6), TypeError, "theta must have dtype float64"),
    (np.zeros(6), np.zeros(6, np.float32), TypeError, "grad must have dtype float64"),
    (np.zeros(6, np.int64), np.zeros(6), TypeError, "theta"),
    (np.zeros((2, 3)), np.zeros(6), ValueError, "1-D"),
    (np.zeros(12)[::2], np.zeros(6), ValueError, "contiguous"),
    ([0.0] * 6, np.zeros(6), TypeError, "numpy.ndarray"),
])
def test_step_refuses_wrong_arrays(theta, grad, error, match):
    opt = bound_adam()
    with pytest.raises(error, match=match):
        opt.step(theta, grad, 0.1)
    assert opt.steps == 0


def test_step_refuses_read_only_theta():
    theta = np.zeros(6)
    theta.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        bound_adam().step(theta, np.zeros(6), 0.1)


def test_step_refuses_overlapping_theta_and_grad():
    theta = np.zeros(6)
    with pytest.raises(ValueError, match="share memory"):
        bound_adam().step(theta, theta, 0.1)


@pytest.mark.parametrize("lr,error", [(-0.1, ValueError), (float("nan"), ValueError),
                                      ("0.1", TypeError), (None, TypeError)])
def test_step_refuses_bad_learning_rate(lr, error):
    with pytest.raises(error, match="lr"):
        bound_adam().step(np.zeros(6), np.zeros(6), lr)


def test_bind_again_keeps_state_and_refuses_other_sizes():
    opt = bound_adam()
    opt.step(np.zeros(6), np.ones(6), 0.1)
    opt.bind(6, 3, np.float64)
    assert opt.steps == 1 and opt.state_dict()["exp_avg"].any()
    with pytest.raises(ValueError, match="fresh optimizer"):
        opt.bind(6, 3, np.float32)
    with pytest.raises(ValueError, match="fresh optimizer"):
        opt.bind(7, 3, np.float64)


@pytest.mark.parametrize("args,error", [((0, 0, np.float64), ValueError),
                                        ((4, 5, np.float64), ValueError),
                                        ((4, -1, np.float64), ValueError),
                                        ((4, 2, np.int32), TypeError),
                                        ((4.0, 2, np.float64), TypeError)])
def test_bind_refuses_bad_sizes_and_dtypes(args, error):
    with pytest.raises(error):
        SGD().bind(*args)


# -- no allocation per step ----------------------------------------------------------------

SLACK = 320  # bytes, as tests/test_no_alloc.py: one extra vector of 50 float64 exceeds it


class LeakySGD(SGD):
    """What a step allocating one small vector would look like to the watch."""

    def _update(self, theta, grad, lr):
        self.scratch_copy = np.zeros(50)
        super()._update(theta, grad, lr)


def step_growth(cls, kw, dtype) -> int:
    """Traced-peak growth in bytes over 17 warmed-up steps on 10,000 parameters."""
    theta, grads = problem(10_000, 2, dtype)
    opt = cls(**kw)
    opt.bind(10_000, 6_000, dtype)
    for t in range(3):
        opt.step(theta, grads[t % 2], 1e-3)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for t in range(17):
            opt.step(theta, grads[t % 2], 1e-3 * (t + 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - start


def measure_all() -> dict:
    gc.collect()
    gc.disable()
    results = {f"{kind} {np.dtype(dt).name}": step_growth(*CONFIGS[kind], dt)
               for kind in CONFIGS for dt in DTYPES}
    results["leaky"] = step_growth(LeakySGD, {}, np.float64)
    return results


@pytest.fixture(scope="module")
def growth() -> dict:
    # A fresh interpreter: other tests' threads and garbage would allocate in the window.
    path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    code = "import json, test_optim as t; print(json.dumps(t.measure_all()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_warm_step_allocates_nothing(growth, kind, dtype):
    bytes_ = growth[f"{kind} {dtype}"]
    assert bytes_ <= SLACK, f"the steps allocated up to {bytes_} bytes"


def test_the_watch_sees_one_small_vector_per_step(growth):
    assert growth["leaky"] > SLACK

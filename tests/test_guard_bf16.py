"""precision="bf16-mixed": the rounding, the products, the network against a NumPy reference
that rounds the same operands, the fallback (tested everywhere through CBN_BF16=0), the
missing extra, and the option through Network, the estimators, the command line and saved
files. Tests that run bf16 skip where the CPU lacks AVX512_BF16 or oneDNN is missing."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cbn
from cbn import _ops, bf16
from cbn.network import Network

from reference import ReferenceNet, round_bf16

HAVE_BF16 = bf16.available()
needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason="no AVX512_BF16 CPU, or oneDNN "
                                "(cbn[bf16]) not installed")


def data(rng, n, d, k):
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n)


@pytest.fixture
def hidden_bf16(monkeypatch):
    """CBN_BF16=0, with the once-per-process warning armed again."""
    monkeypatch.setenv("CBN_BF16", "0")
    monkeypatch.setattr(bf16, "_warned", False)


# -- rounding ---------------------------------------------------------------------------------

def test_rounding_is_to_nearest_even_and_keeps_nan():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties, either side
                        0x7F7FFFFF, 0xFF7FFFFF,  # the largest floats round to infinity
                        0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00000, 0x7FFFFFFF,
                        0x00000001, 0x80000000, 0], np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    out = np.zeros(x.size, np.uint16)
    _ops.round_bf16(x, out)
    got = (out.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    want = round_bf16(x)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], want[~nan])
    assert got[-10] == np.inf and got[-9] == -np.inf  # 0x7F7FFFFF, 0xFF7FFFFF
    assert np.array_equal(out[-14:-10], [0x3F80, 0x3F82, 0x3F80, 0x3F81])


# -- products and the network, where bf16 runs -------------------------------------------------

@needs_bf16
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_product_is_the_exact_product_of_the_rounded_operands(ta, tb):
    rng = np.random.default_rng(1)
    M, K, N = 37, 300, 29
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    a16, b16 = np.zeros(a.shape, np.uint16), np.zeros(b.shape, np.uint16)
    _ops.round_bf16(a.ravel(), a16.ravel())
    _ops.round_bf16(b.ravel(), b16.ravel())
    C = np.full((M, N), 1.0, np.float32)
    _ops.bf16_product(a16, b16, C, ta=ta, tb=tb, accumulate=True)
    ra, rb = round_bf16(a), round_bf16(b)
    want = 1.0 + (ra.T if ta else ra) @ (rb.T if tb else rb)
    np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-4)  # fp32 accumulation


@needs_bf16
@pytest.mark.parametrize("hidden,bn", [([20, 15], True), ([16], False), ([12, 12, 10], True)])
def test_cost_and_gradients_match_the_reference_rounding_the_same_operands(hidden, bn):
    rng = np.random.default_rng(2)
    net = Network(40, hidden, 5, batch_norm=bn, seed=4, precision="bf16-mixed")
    assert net.bf16
    X, y = data(rng, 64, 40, 5)
    cost, grads = net.cost_and_grads(X, y, 0.01)
    params = {k: v.astype(np.float64) for k, v in net.params.items()}
    rcost, rgrads, _ = ReferenceNet(params, bn, bf16=True).cost_and_grads(
        X.astype(np.float64), y, 0.01)
    assert cost == pytest.approx(rcost, rel=1e-4)
    for name, g in grads.items():  # the biases before batch norm: 0 up to rounding
        error = np.linalg.norm(g - rgrads[name])
        assert error <= 5e-3 * np.linalg.norm(rgrads[name]) + 1e-6, (name, error)


@needs_bf16
def test_gradients_are_the_fp32_ones_at_bf16_rounding():
    """bf16 keeps 8 significant bits: 2^-9 per operand, grown by the sums of the backward
    pass to a few percent at the first layer (docs/benchmarks.md, "bf16-mixed"). The hidden
    biases, followed by batch norm, have gradient 0 but for rounding: not compared."""
    rng = np.random.default_rng(3)
    X, y = data(rng, 100, 300, 10)
    g32 = Network(300, [64, 64], 10, seed=5).cost_and_grads(X, y, 0.005)[1]
    g16 = Network(300, [64, 64], 10, seed=5, precision="bf16-mixed").cost_and_grads(
        X, y, 0.005)[1]
    for name in ("W3", "b3", "gamma2"):
        rel = np.linalg.norm(g16[name] - g32[name]) / np.linalg.norm(g32[name])
        assert 0 < rel < 1e-2, (name, rel)
    for name in ("W1", "gamma1", "beta1", "W2", "beta2"):
        rel = np.linalg.norm(g16[name] - g32[name]) / np.linalg.norm(g32[name])
        assert 0 < rel < 0.15, (name, rel)


@needs_bf16
def test_evaluation_matches_the_reference_and_follows_loaded_weights():
    rng = np.random.default_rng(4)
    X, y = data(rng, 300, 50, 4)
    a = Network(50, [30, 20], 4, seed=1, precision="bf16-mixed")
    b = Network(50, [30, 20], 4, seed=2, precision="bf16-mixed")
    for net in (a, b):
        cbn.fit(net, X, y, lam=0.001, schedule=0.05, epochs=1, batch_size=50, progress=False)
    probs = a.predict_proba(X)
    params = {k: v.astype(np.float64) for k, v in a.params.items()}
    running = {k: v.astype(np.float64) for k, v in a.running_stats.items()}
    Z, _, _ = ReferenceNet(params, True, running=running, bf16=True).forward(
        X.astype(np.float64), training=False)
    Z -= Z.max(axis=1, keepdims=True)
    want = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, want, atol=2e-3)
    # Weights loaded after training reach the bf16 copies the plans multiply by.
    a.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@needs_bf16
@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9), dict(optimizer="adam"),
                                     dict(dropout=0.2, momentum=0.5), dict(mixup=0.2)])
def test_training_in_bf16_learns_like_fp32(options):
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((4, 60)) * 2
    y = rng.integers(0, 4, 800)
    X = (centers[y] + rng.standard_normal((800, 60))).astype(np.float32)
    dropout = options.pop("dropout", 0.0)
    if options.get("optimizer") == "adam":
        options["optimizer"] = cbn.optim.Adam()
    scores = {}
    for precision in ("fp32", "bf16-mixed"):
        net = Network(60, [32, 32], 4, seed=0, dropout=dropout, precision=precision)
        cbn.fit(net, X, y, lam=0.001, schedule=0.02, epochs=3, batch_size=50, seed=0,
                progress=False, **options)
        scores[precision] = net.accuracy(X, y)
    assert scores["bf16-mixed"] > 0.9 and abs(scores["bf16-mixed"] - scores["fp32"]) < 0.05


# -- where bf16 is missing: everywhere --------------------------------------------------------

def test_hidden_bf16_warns_once_and_computes_exactly_as_fp32(hidden_bf16):
    rng = np.random.default_rng(6)
    X, y = data(rng, 50, 30, 3)
    with pytest.warns(bf16.BF16Warning, match="CBN_BF16=0"):
        net = Network(30, [8], 3, seed=1, precision="bf16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Network(30, [8], 3, seed=1, precision="bf16-mixed")  # no second warning
    assert not net.bf16 and not again.bf16 and net.precision == "bf16-mixed"
    assert "bf16-mixed (as float32 here)" in repr(net)
    cost, grads = net.cost_and_grads(X, y, 0.01)
    cost32, grads32 = Network(30, [8], 3, seed=1).cost_and_grads(X, y, 0.01)
    assert cost == cost32
    for name in grads:
        assert np.array_equal(grads[name], grads32[name])


def test_precision_is_checked():
    with pytest.raises(ValueError, match="float32 networks; got dtype=float64"):
        Network(4, [3], 2, dtype=np.float64, precision="bf16-mixed")
    with pytest.raises(ValueError, match="precision must be one of"):
        Network(4, [3], 2, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Network(4, [3], 2, precision=None)


def test_a_missing_extra_is_one_error_naming_it():
    """As on a bf16 CPU without oneDNN installed (in a fresh interpreter: the library is
    opened once per process)."""
    code = ("import cbn, cbn.bf16 as b\n"
            "b.cpu_has_bf16 = lambda: True\n"
            "b.library_path = lambda: None\n"
            "try:\n"
            "    cbn.Network(4, [3], 2, precision='bf16-mixed')\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cbn[bf16]'" in lines[0]


def test_saved_networks_and_checkpoints_record_the_precision(tmp_path, hidden_bf16):
    with pytest.warns(bf16.BF16Warning):
        net = Network(6, [4], 3, seed=0, precision="bf16-mixed")
    net.save(tmp_path / "net.npz")
    assert Network.load(tmp_path / "net.npz").precision == "bf16-mixed"
    assert Network.from_arrays(net.to_arrays()).precision == "bf16-mixed"
    # Files from before the option read as fp32.
    arrays = net.to_arrays()
    config = json.loads(str(arrays["network_config"]))
    del config["precision"]
    arrays["network_config"] = np.array(json.dumps(config))
    assert Network.from_arrays(arrays).precision == "fp32"
    X = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    y = np.arange(40) % 3
    cbn.fit(net, X, y, lam=0.0, schedule=0.01, epochs=1, batch_size=20, progress=False,
            checkpoint=str(tmp_path / "run.npz"))
    assert Network.load(tmp_path / "run.npz").precision == "bf16-mixed"


def test_the_option_reaches_the_estimators_and_the_command_line(hidden_bf16):
    pytest.importorskip("sklearn")
    from cbn.lab.cli import parse
    from cbn.sklearn import MLPClassifier

    X = np.random.default_rng(0).standard_normal((60, 5))
    y = np.arange(60) % 2
    with pytest.raises(ValueError, match="float32 networks"):
        MLPClassifier(precision="bf16-mixed", dtype="float64").fit(X, y)
    model = MLPClassifier(hidden_layer_sizes=[4], precision="bf16-mixed", max_iter=1)
    assert model.get_params()["precision"] == "bf16-mixed"
    with pytest.warns(bf16.BF16Warning):
        model.fit(X, y)
    assert model.network_.precision == "bf16-mixed"
    assert parse(["train", "--precision", "bf16-mixed"]).run_config.precision == "bf16-mixed"
    assert parse(["train"]).run_config.precision == "fp32"


@needs_bf16
def test_bf16_runs_repeat_bit_for_bit():
    rng = np.random.default_rng(7)
    X, y = data(rng, 200, 40, 3)
    nets = [Network(40, [16, 16], 3, seed=0, precision="bf16-mixed") for _ in range(2)]
    for net in nets:
        cbn.fit(net, X, y, lam=0.001, schedule=0.05, epochs=2, batch_size=32, seed=1,
                progress=False)
    assert np.array_equal(nets[0].flat_params, nets[1].flat_params)

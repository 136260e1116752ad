"""Checkpoints: what they hold, atomic writes, resuming bit for bit (mid-epoch, after a crash,
after Ctrl-C, after SIGKILL), and refusing to resume a different run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import CyclicLR, DivergenceError, Network, fit
from cbn import checkpoint as ckpt_module
from cbn import train as train_module
from cbn._files import atomic_savez
from cbn.checkpoint import CheckpointError, load_checkpoint
from cbn.npz import read_npz

ROOT = Path(__file__).resolve().parent.parent


def blobs(n=50, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.standard_normal((n, d)) + rng.standard_normal((k, d))[y]
    return X, y


X, Y = blobs()
# 50 rows in batches of 8: 6 full batches and a remainder of 2, so 7 steps per epoch.
RUN = dict(lam=0.01, batch_size=8, schedule=CyclicLR(1e-3, 0.2, 9), cycles=2, seed=4,
           momentum=0.9, eval_every=5, X_val=X[:20], y_val=Y[:20], progress=False)
TOTAL = 36


def new_net(**kwargs):
    return Network(8, [6, 5], 3, seed=1, **{"dtype": np.float64, **kwargs})


def outcome(net, history):
    """Everything that must match between an interrupted and an uninterrupted run."""
    return (net.flat_params.copy(), {k: v.copy() for k, v in net.running_stats.items()},
            {k: v for k, v in history.as_dict().items() if k != "wall_time"})


def assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])
    assert a[2] == b[2]


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.fixture
def crash_after(monkeypatch):
    """``crash_after(step)``: fit raises Crash right after writing its checkpoint at ``step``."""
    def arm(step):
        original = ckpt_module.save_checkpoint

        def save_then_crash(path, checkpoint):
            original(path, checkpoint)
            if checkpoint.step == step:
                raise Crash
        monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    return arm


def uninterrupted(**kwargs):
    net = new_net(**kwargs.pop("net", {}))
    history = fit(net, X, kwargs.pop("y", Y), **{**RUN, **kwargs})
    return outcome(net, history)


def test_checkpoint_holds_network_momentum_position_random_state_and_history(tmp_path):
    path = tmp_path / "run.ckpt"
    net = new_net()
    history = fit(net, X, Y, checkpoint=path, checkpoint_every=10, **RUN)
    with np.load(path, allow_pickle=False) as f:  # plain arrays: no pickle anywhere
        assert f["rng_state"].dtype.kind == "U" and f["rng_state"].shape == ()
        assert json.loads(str(f["rng_state"]))["bit_generator"] == "PCG64"
    c = load_checkpoint(path)
    assert c.step == TOTAL and c.velocity.shape == net.flat_params.shape
    assert np.array_equal(np.sort(c.order), np.arange(50))
    assert c.history == history.as_dict()
    assert c.run["lam"] == 0.01 and c.run["total"] == TOTAL
    loaded = Network.load(path)  # a checkpoint is also a saved network
    np.testing.assert_array_equal(loaded.flat_params, net.flat_params)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


@pytest.mark.parametrize("crash_step", [3, 7, 10, 29])  # mid-epoch, epoch end, eval point
@pytest.mark.parametrize("variant", [
    dict(), dict(momentum=0.0), dict(net=dict(batch_norm=False)),
    dict(net=dict(dtype=np.float32)), dict(net=dict(bn_init="zeros_ones"), eval_every=None),
    dict(net=dict(norm="layer", activation="gelu", residual=True, dropout=0.2),
         label_smoothing=0.1, sample_weight=np.linspace(0.0, 2.0, 50)),
    dict(net=dict(activation="gelu", bn_placement="after"), y=np.eye(3)[Y] * 2 - 0.5,
         y_val=np.eye(3)[Y[:20]], loss="mse"),
])
def test_resume_after_a_crash_is_bit_identical(tmp_path, crash_after, crash_step, variant):
    expected = uninterrupted(**dict(variant))
    path = tmp_path / "run.npz"
    crash_after(crash_step)
    args = {**RUN, **{k: v for k, v in variant.items() if k not in ("net", "y")}}
    y = variant.get("y", Y)
    with pytest.raises(Crash):
        fit(new_net(**variant.get("net", {})), X, y, checkpoint=path, checkpoint_every=1,
            **args)
    assert load_checkpoint(path).step == crash_step
    net = new_net(**variant.get("net", {}))
    history = fit(net, X, y, resume=path, **args)
    assert_same(outcome(net, history), expected)


def test_resume_with_uint8_images_and_normalization(tmp_path, crash_after):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (50, 8), dtype=np.uint8)

    class Norm:
        mean = images.mean(axis=0)
        std = images.std(axis=0) + 1

    args = {**RUN, "X_val": images[:20], "normalization": Norm}
    net = new_net()
    expected = outcome(net, fit(net, images, Y, **args))
    crash_after(12)
    with pytest.raises(Crash):
        fit(new_net(), images, Y, checkpoint=tmp_path / "c.npz", checkpoint_every=4, **args)
    net = new_net()
    assert_same(outcome(net, fit(net, images, Y, resume=tmp_path / "c.npz", **args)), expected)


def test_resume_twice_in_a_row(tmp_path, monkeypatch):
    expected = uninterrupted()
    path = tmp_path / "run.npz"
    for crash_step in (5, 20):
        original = ckpt_module.save_checkpoint

        def save_then_crash(p, c, step=crash_step):
            original(p, c)
            if c.step == step:
                raise Crash
        monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            fit(new_net(), X, Y, checkpoint=path, checkpoint_every=5, resume=True, **RUN)
    monkeypatch.undo()
    net = new_net()
    assert_same(outcome(net, fit(net, X, Y, checkpoint=path, resume=True, **RUN)), expected)


def test_resuming_a_finished_run_returns_its_history_without_training(tmp_path):
    path = tmp_path / "run.npz"
    expected = outcome(*((lambda n: (n, fit(n, X, Y, checkpoint=path, **RUN)))(new_net())))
    net = new_net()
    assert_same(outcome(net, fit(net, X, Y, resume=path, **RUN)), expected)


def test_resume_true_starts_afresh_without_a_checkpoint_file(tmp_path):
    net = new_net()
    history = fit(net, X, Y, checkpoint=tmp_path / "new.npz", resume=True, **RUN)
    assert_same(outcome(net, history), uninterrupted())
    assert load_checkpoint(tmp_path / "new.npz").step == TOTAL


def test_default_checkpoints_are_written_at_epoch_ends(tmp_path, monkeypatch):
    steps = []
    original = ckpt_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda p, c: (steps.append(c.step), original(p, c)))
    fit(new_net(), X, Y, checkpoint=tmp_path / "c.npz", **RUN)
    assert steps == [7, 14, 21, 28, 35, 36]


def deliver_ctrl_c_after(monkeypatch, step):
    """Press Ctrl-C (a real SIGINT to this process) right after the checkpoint of ``step``."""
    original = ckpt_module.save_checkpoint

    def save_then_interrupt(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == step:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a shell that starts the suite in the
    background (as CI may) leaves SIGINT ignored, and then Ctrl-C would never arrive."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_reraises(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    deliver_ctrl_c_after(monkeypatch, 9)
    net = new_net()
    with pytest.raises(KeyboardInterrupt, match="stopped at step 9; checkpoint written"):
        fit(net, X, Y, checkpoint=path, checkpoint_every=3, **RUN)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    saved = load_checkpoint(path)
    assert saved.step == 9
    np.testing.assert_array_equal(Network.load(path).flat_params, net.flat_params)
    monkeypatch.undo()
    resumed = new_net()
    assert_same(outcome(resumed, fit(resumed, X, Y, resume=path, **RUN)), uninterrupted())


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_without_a_checkpoint_keeps_the_progress_made():
    """Stopped by a real SIGINT at an unknown step, the network holds exactly the state after
    the step the message names: a run of that many steps gives the same parameters."""
    schedule = CyclicLR(1e-3, 0.05, 10)
    args = dict(lam=0.01, batch_size=8, schedule=schedule, seed=4, progress=False)
    net = new_net()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            fit(net, X, Y, cycles=10**5, **args)  # minutes of training: stopped long before
    finally:
        timer.cancel()
    step = int(re.search(r"stopped at step (\d+)", str(info.value)).group(1))
    assert step > 0
    fresh = new_net()
    fit(fresh, X, Y, cycles=step / schedule.cycle_length, **args)
    np.testing.assert_array_equal(net.flat_params, fresh.flat_params)


@pytest.mark.parametrize("change, field", [
    (dict(lam=0.02), "lam"), (dict(batch_size=10), "batch_size"), (dict(seed=5), "seed"),
    (dict(momentum=0.5), "momentum"), (dict(schedule=CyclicLR(1e-3, 0.3, 9)), "schedule"),
    (dict(X=X + 1e-9), "data"), (dict(y_val=Y[20:40]), "data"),
    (dict(eval_every=None), "eval_every"),
    (dict(label_smoothing=0.1), "loss"), (dict(sample_weight=np.ones(50)), "loss"),
])
def test_resume_refuses_a_different_run(tmp_path, crash_after, change, field):
    path = tmp_path / "run.npz"
    crash_after(10)
    with pytest.raises(Crash):
        fit(new_net(), X, Y, checkpoint=path, checkpoint_every=5, **RUN)
    args = {**RUN, "X": X, "y": Y, **change}
    data = (args.pop("X"), args.pop("y"))
    with pytest.raises(CheckpointError, match=f"different run.*{field}"):
        fit(new_net(), *data, resume=path, **args)


def test_resume_refuses_a_different_network(tmp_path):
    path = tmp_path / "run.npz"
    fit(new_net(), X, Y, checkpoint=path, **RUN)
    with pytest.raises(CheckpointError, match="configured"):
        fit(new_net(dtype=np.float32), X, Y, resume=path, **RUN)
    with pytest.raises(CheckpointError, match="configured"):
        fit(Network(8, [6, 4], 3, seed=1), X, Y, resume=path, **RUN)


def test_a_checkpoint_edited_outside_cbn_is_refused(tmp_path):
    path = tmp_path / "run.npz"
    fit(new_net(), X, Y, checkpoint=path, **RUN)
    arrays = read_npz(path)
    arrays["W1"] = arrays["W1"] * 1.01  # still finite, same shape: only the checksum tells
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(CheckpointError, match="checksum"):
        fit(new_net(), X, Y, resume=tmp_path / "edited.npz", **RUN)


@pytest.mark.parametrize("kwargs, error", [
    (dict(checkpoint_every=5), ValueError), (dict(resume=True), ValueError),
    (dict(checkpoint=123), TypeError), (dict(checkpoint="c.npz", checkpoint_every=0), ValueError),
    (dict(checkpoint="c.npz", checkpoint_every=2.5), TypeError), (dict(resume=7), TypeError),
    (dict(checkpoint=""), ValueError), (dict(checkpoint="."), ValueError),
])
def test_bad_checkpoint_arguments_raise(tmp_path, monkeypatch, kwargs, error):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        fit(new_net(), X, Y, **RUN, **kwargs)


def test_resume_from_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fit(new_net(), X, Y, resume=tmp_path / "nope.npz", **RUN)


def test_a_diverging_run_never_checkpoints_non_finite_values(tmp_path):
    path = tmp_path / "run.npz"
    schedule = CyclicLR(1e-3, 1e200, 50)  # the rate explodes within a few dozen steps
    with pytest.raises(DivergenceError):
        fit(new_net(), X, Y, lam=0.0, batch_size=8, schedule=schedule, cycles=1, seed=0,
            checkpoint=path, checkpoint_every=1, progress=False)
    saved = load_checkpoint(path)
    assert 0 < saved.step < 100
    assert np.isfinite(Network.load(path).flat_params).all()


# -- atomic writes ---------------------------------------------------------------------------

def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    atomic_savez(path, a=np.arange(10))

    def savez_then_die(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(ckpt_module.np, "savez", savez_then_die)
    with pytest.raises(OSError, match="disk full"):
        atomic_savez(path, a=np.zeros(10))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_npz(path)["a"], np.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


WRITER = """
import sys, time
import numpy as np
from cbn._files import atomic_savez
path = sys.argv[1]
k = 0
while True:
    k += 1
    atomic_savez(path, k=np.array(k), block=np.full(1 << 20, k, dtype=np.int64))
    if k == 2:
        print("ready", flush=True)
"""


def test_sigkill_mid_write_never_leaves_a_torn_file(tmp_path):
    """A process writing 8 MB checkpoints in a loop is SIGKILLed at random moments; every
    time, the file left behind is a complete checkpoint."""
    path = tmp_path / "state.npz"
    rng = np.random.default_rng(0)
    # The writer imports the cbn under test (installed, or this source tree), not the cwd's.
    package_parent = str(Path(cbn.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        assert writer.stdout.readline().strip() == b"ready"
        threading.Event().wait(rng.uniform(0.0, 0.2))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        arrays = read_npz(path)
        assert (arrays["block"] == arrays["k"]).all() and int(arrays["k"]) >= 2
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None
    for stray in tmp_path.glob(".state.npz.*.tmp"):  # what a kill mid-write may leave: harmless
        stray.unlink()


def test_killed_training_resumes_identically(tmp_path):
    """scripts/kill_resume_demo.py on a small synthetic run: SIGKILL twice, resume, compare."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import kill_resume_demo
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    config = dict(data="synthetic", steps=800, hidden=[50, 50], batch_size=100,
                  checkpoint_every=20, blas_threads=1)  # one thread: quick on a busy machine
    report = kill_resume_demo.run_demo(config, kills=2, folder=tmp_path)
    assert report["same_code"] and report["kills"] == 2, report
    assert all(0 < s < report["total_steps"] for s in report["checkpoint_steps_at_kills"])
    assert report["unreadable_checkpoints"] == 0
    assert report["params_equal"] and report["history_equal"], report

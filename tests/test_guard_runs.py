"""Runs a user can stop and resume: Ctrl-C and SIGTERM in fit, ``cbn train`` and the
examples keep the work, and the resumed run is the uninterrupted one bit for bit."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import cli, experiment, record
from cbn.checkpoint import save_checkpoint
from cbn.data import load_sample
from cbn.experiment import RunConfig, repeat
from cbn.schedule import CyclicLR

STOP_AT = 7


@pytest.fixture
def signal_at_step(monkeypatch):
    """``arm(sig)``: the process sends itself ``sig`` once, while step STOP_AT runs (from the
    schedule's call for that step's rate, so always at the same point of the run)."""
    def arm(sig=signal.SIGINT, at=STOP_AT):
        lr, sent = CyclicLR.lr, []

        def lr_then_signal(self, step):
            if step == at and not sent:
                sent.append(step)
                os.kill(os.getpid(), sig)
            return lr(self, step)
        monkeypatch.setattr(CyclicLR, "lr", lr_then_signal)
        return sent
    return arm


@pytest.fixture
def sigterm_as_ctrl_c():
    """SIGTERM routed to KeyboardInterrupt, as cbn train and the examples route it."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def small_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 8)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    return X, y


def train(**kwargs):
    X, y = small_problem()
    net = cbn.Network(8, [6], 3, seed=1, dtype=np.float32)
    history = cbn.fit(net, X, y, X_val=X[:20], y_val=y[:20], lam=1e-3, batch_size=10,
                      schedule=CyclicLR(1e-3, 1e-1, 12), cycles=1, seed=2, progress=False,
                      normalization=False, **kwargs)
    return net, history


def same_state(a: cbn.Network, b: cbn.Network) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_fit_at_a_step_with_what_resumes_it(signal_at_step, sigterm_as_ctrl_c,
                                                           tmp_path, sig):
    expected, expected_history = train()
    signal_at_step(getattr(signal, sig))
    with pytest.raises(cbn.TrainingInterrupted) as info:
        train()
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt)
    assert (stop.step, stop.total, stop.checkpoint) == (STOP_AT + 1, 24, None)
    assert stop.state.step == stop.step
    path = tmp_path / "later.npz"
    save_checkpoint(path, stop.state)  # written by the caller, where fit had no checkpoint=
    resumed, history = train(resume=path)
    assert same_state(resumed, expected)
    assert history.val_accuracy == expected_history.val_accuracy


# -- cbn train --------------------------------------------------------------------------------


@pytest.fixture
def on_the_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CBN_DATA", str(tmp_path / "no-cifar-here"))
    monkeypatch.chdir(tmp_path)
    # SIGTERM is rerouted by cbn train; put it back after each test.
    previous = signal.getsignal(signal.SIGTERM)
    yield tmp_path
    signal.signal(signal.SIGTERM, previous)


RUN = ["train", "--cycles", "0.25", "--step-size", "40", "--blas-threads", "1", "--no-progress"]


def test_cbn_train_interrupted_keeps_its_work_and_resumes_bit_for_bit(on_the_sample, capsys,
                                                                      signal_at_step,
                                                                      monkeypatch):
    assert cli.main(RUN + ["--save", "whole.npz"]) == 0
    capsys.readouterr()
    sent = signal_at_step(signal.SIGTERM)
    assert cli.main(RUN + ["--save", "part.npz"]) == 130
    assert sent
    out, err = capsys.readouterr()
    assert f"interrupted at step {STOP_AT + 1} of 20; scores so far:" in out
    assert [line.split()[0] for line in out.splitlines()[1:5]] == ["split", "train", "val",
                                                                   "test"]
    assert "Traceback" not in err
    hint = [line for line in err.splitlines() if "resume with:" in line]
    assert hint == ["cbn: resume with: cbn train --cycles 0.25 --step-size 40 --blas-threads 1 "
                    "--no-progress --save part.npz --checkpoint part.checkpoint.npz --resume"]
    assert Path("part.npz").is_file() and Path("part.checkpoint.npz").is_file()
    assert cbn.Network.load("part.npz").stats_seen

    monkeypatch.undo()  # no more signals
    monkeypatch.chdir(on_the_sample)
    monkeypatch.setenv("HOME", str(on_the_sample))
    monkeypatch.setenv("CBN_DATA", str(on_the_sample / "no-cifar-here"))
    assert cli.main(hint[0].split()[4:]) == 0
    assert same_state(cbn.Network.load("part.npz"), cbn.Network.load("whole.npz"))


def test_an_interrupted_run_never_overwrites_a_file_for_its_checkpoint(on_the_sample, capsys,
                                                                       signal_at_step):
    Path("cbn-train.checkpoint.npz").write_text("mine")
    signal_at_step()
    assert cli.main(RUN) == 130
    assert Path("cbn-train.checkpoint.npz").read_text() == "mine"
    assert Path("cbn-train-2.checkpoint.npz").is_file()
    assert "--checkpoint cbn-train-2.checkpoint.npz --resume" in capsys.readouterr().err


def test_resume_needs_a_checkpoint_file(on_the_sample, capsys):
    assert cli.main(RUN + ["--resume"]) == 2
    assert "--resume continues from --checkpoint FILE" in capsys.readouterr().err


# -- the examples -----------------------------------------------------------------------------


def test_an_example_run_continues_from_its_checkpoint(tmp_path, signal_at_step, monkeypatch):
    data = load_sample()
    config = RunConfig(hidden=(8,), step_size=10, cycles=0.5, eval_every=5)
    whole = repeat(data, config, [0], progress=False)[0]
    sent = signal_at_step()
    with pytest.raises(KeyboardInterrupt) as info:
        repeat(data, config, [0], saved=tmp_path, progress=False)
    assert sent and info.value.step == STOP_AT + 1
    assert (tmp_path / "seed0.checkpoint.npz").is_file()
    monkeypatch.undo()
    calls = []
    run = experiment.run
    monkeypatch.setattr(experiment, "run", lambda *a, **k: calls.append(k) or run(*a, **k))
    resumed = repeat(data, config, [0], saved=tmp_path, progress=False)[0]
    assert calls[0]["resume"] is True
    assert same_state(resumed.net, whole.net)
    assert resumed.history.val_accuracy == whole.history.val_accuracy
    assert not (tmp_path / "seed0.checkpoint.npz").exists()  # the kept run replaces it
    assert (tmp_path / "seed0.npz").is_file()


def test_an_example_checkpoint_of_other_options_is_replaced(tmp_path):
    data = load_sample()
    config = RunConfig(hidden=(8,), step_size=10, cycles=0.5)
    (tmp_path / "seed0.checkpoint.npz").write_bytes(b"cut off")
    repeat(data, config, [0], saved=tmp_path, progress=False)
    assert not (tmp_path / "seed0.checkpoint.npz").exists()


def test_an_interrupted_example_ends_in_one_line_with_the_command_that_resumes_it(capsys):
    def main():
        raise KeyboardInterrupt
    assert record.run_example(main, "three_layer") == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("three_layer: interrupted; resume with: ")

"""Runs a user can stop and resume: Ctrl-C and SIGTERM in fit, ``cbn train`` and the
examples keep the work, and the resumed run is the uninterrupted one bit for bit."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn.lab import cli, experiment, record
from cbn.checkpoint import save_checkpoint
from cbn.data import load_sample
from cbn.lab.experiment import RunConfig, repeat
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
    kwargs = dict(dict(cycles=1), **kwargs)
    history = cbn.fit(net, X, y, X_val=X[:20], y_val=y[:20], lam=1e-3, batch_size=10,
                      schedule=CyclicLR(1e-3, 1e-1, 12), seed=2, progress=False,
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
    monkeypatch.delenv("CBN_DATA", raising=False)
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
    monkeypatch.delenv("CBN_DATA", raising=False)
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


def test_an_interrupted_example_line_gives_the_scores_last_recorded(capsys):
    from cbn.history import History
    from cbn.train import TrainingInterrupted
    history = History()
    history.epoch.append(1.5)
    history.val_accuracy.append(0.4125)

    def main():
        raise TrainingInterrupted("stop", net=None, step=120, total=900, history=history,
                                  checkpoint="runs/seed0.checkpoint.npz", state=None)
    assert record.run_example(main, "three_layer") == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("three_layer: interrupted at training step 120 of 900, checkpoint "
                          "kept (last recorded: epoch 1.5, val accuracy 0.4125); resume with: ")


# -- one run description ----------------------------------------------------------------------


def test_every_fit_option_of_a_run_is_reachable_from_the_command_line(on_the_sample, capsys):
    status = cli.main(["train", "--hidden", "12", "--epochs", "2", "--schedule", "onecycle",
                       "--optimizer", "adamw", "--weight-decay", "0.1", "--eta-max", "0.01",
                       "--hflip", "--shift", "2", "--noise", "0.05", "--dropout", "0.1",
                       "--bn-placement", "after", "--tta", "--json", "--no-progress",
                       "--blas-threads", "1"])
    document = __import__("json").loads(capsys.readouterr().out)
    assert status == 0
    config = document["config"]
    assert (config["epochs"], config["schedule"], config["optimizer"], config["hflip"],
            config["shift"], config["dropout"], config["tta"]) == (2, "onecycle", "adamw", True,
                                                                  2, 0.1, True)


def test_a_run_file_is_the_command_line_with_its_options_overriding(on_the_sample, capsys):
    Path("run.toml").write_text('hidden = [12]\nlam = 0.01\nseed = 3\noptimizer = "adam"\n'
                                'eta_min = 1e-6\neta_max = 1e-3\ncycles = 0.25\n'
                                'step_size = 40\n')
    assert cli.main(["train", "--config", "run.toml", "--lam", "0.02", "--json",
                     "--no-progress"]) == 0
    document = __import__("json").loads(capsys.readouterr().out)
    assert document["config"]["hidden"] == [12] and document["config"]["lam"] == 0.02
    assert document["config"]["optimizer"] == "adam" and document["seed"] == 3


@pytest.mark.parametrize("text, message", [
    ('hiden = [20]', "run.toml: unknown option 'hiden'; did you mean 'hidden'?"),
    ('lam = -1', "run.toml: lam: must be >= 0"),
    ('hidden = 20', "run.toml: hidden must be a list"),
    ('epochs = 1.5', "run.toml: epochs: expected an integer"),
    ('hflip = 1', "run.toml: hflip must be true or false"),
    ('eta_min = 0.5', "run.toml: eta_min (0.5) must be below --eta-max (0.1)"),
    ('schedule = "cosine"', "run.toml: schedule cosine needs --epochs"),
    ('lam = ', "run.toml: not valid TOML"),
])
def test_a_bad_run_file_is_one_line_naming_the_file_and_the_option(on_the_sample, capsys,
                                                                  text, message):
    Path("run.toml").write_text(text + "\n")
    assert cli.main(["train", "--config", "run.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bonus_configurations_are_run_configs_trained_by_the_shared_loop():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bonus", Path(__file__).resolve().parents[1] / "examples" / "bonus.py")
    bonus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bonus)
    assert all(isinstance(c, RunConfig) for c in bonus.ABLATION.values())
    assert not hasattr(bonus, "train") and not hasattr(bonus, "run_all")
    best = bonus.BEST
    options = best.fit_options(45000)
    assert options["epochs"] == 70 and options["schedule"].step_size == 450 * 70 // 2
    assert options["augment"].hflip and options["eval_every"] == 450 * 70 // 7


def test_the_estimator_parameters_map_onto_a_run_description():
    from cbn.lab.options import estimator_config
    config = estimator_config(hidden_layer_sizes=(30,), alpha=0.01, max_iter=5, cycles=1,
                              optimizer="adam", eta_min=1e-6, eta_max=1e-3,
                              random_state=0, verbose=True)
    assert (config.hidden, config.lam, config.epochs, config.optimizer) == ((30,), 0.01, 5,
                                                                           "adam")


# -- logs and callbacks ----------------------------------------------------------------------


def test_verbose_prints_one_line_per_epoch_on_stderr(capsys):
    train(verbose=1, epochs=None)  # cycles=1 of 24 steps: 4 epochs of 6 steps
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert err[0].startswith("epoch 1/4  step 6  loss ") and " val " in err[0]
    assert err[-1].startswith("epoch 4/4  step 24") and err[-1].endswith(" s")


def test_watching_callbacks_leave_the_run_bit_for_bit_the_same(tmp_path):
    from cbn.callbacks import Callback, EpochLogger, ModelCheckpoint
    expected, expected_history = train()

    class Steps(Callback):
        per_step = True
        seen: list = []

        def on_step_end(self, run, step, loss):
            self.seen.append(step)

    steps = Steps()
    net, history = train(callbacks=[steps, EpochLogger(tmp_path / "log.csv"),
                                    EpochLogger(tmp_path / "log.jsonl"),
                                    ModelCheckpoint(tmp_path / "best.npz",
                                                    save_best_only=True)])
    assert same_state(net, expected) and history.val_loss == expected_history.val_loss
    assert steps.seen == list(range(1, 25))
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "step", "loss", "lr"] and len(rows) == 5
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [__import__("json").loads(line)["step"] for line in lines] == [6, 12, 18, 24]
    best = cbn.Network.load(tmp_path / "best.npz")
    assert best.num_classes == 3


def test_early_stopping_stops_and_restores_the_best_epoch():
    from cbn.callbacks import EarlyStopping
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)  # never improves
    net, history = train(callbacks=[stop])
    assert stop.best_epoch == 1 and stop.stopped_epoch == 2
    assert history.step[-1] == 12  # stopped at the second epoch's end
    first, _ = train(epochs=None, cycles=0.25)  # the run's first epoch alone (6 steps)
    assert same_state(net, first)


def test_a_callback_monitoring_what_the_run_does_not_record_is_refused_before_training():
    from cbn.callbacks import EarlyStopping
    X, y = small_problem()
    net = cbn.Network(8, [6], 3, seed=1, dtype=np.float32)
    with pytest.raises(ValueError, match="monitors val_accuracy, which this run does not"):
        cbn.fit(net, X, y, lam=0, batch_size=10, schedule=0.01, epochs=1, progress=False,
                normalization=False, callbacks=[EarlyStopping()])
    assert not net.stats_seen


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(verbose=2), ValueError, "verbose must be 0 or 1"),
    (dict(callbacks=[object()]), TypeError, "callbacks must be cbn.callbacks.Callback"),
])
def test_bad_callbacks_and_verbosity_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        train(**kwargs)


def test_cbn_train_prints_a_line_per_epoch_unless_quiet(on_the_sample, capsys):
    assert cli.main(RUN) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1  step 20  loss ")
    assert " train " in lines[0] and " val " in lines[0] and " lr " in lines[0]
    assert cli.main(RUN + ["--quiet"]) == 0
    assert "epoch 1/1" not in capsys.readouterr().err


def test_an_example_run_logs_a_line_per_epoch_where_no_bar_shows(capsys):
    config = RunConfig(hidden=(8,), step_size=10, cycles=1)
    repeat(load_sample(), config, [4], desc="bn", progress=None)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines if "epoch" in line] == ["bn, seed 4: epoch 1/1"]


# -- load-proof gradient checks ---------------------------------------------------------------


GRADCHECK_THREADS = """
import cbn
from cbn import _ops, threads
_ops.set_threads(2)
seen, cost = [], cbn.Network.cost
def counted(self, *args, **kwargs):
    seen.append(_ops.threads())
    return cost(self, *args, **kwargs)
cbn.Network.cost = counted
small = dict(hidden=(6,), input_dim=5, num_classes=3, n=4)
print(cbn.gradcheck(**small).passed, sorted(set(seen)), _ops.threads(), threads._away[0])
with threads.computing():  # inside its own thread's computation: no waiting for itself
    print(cbn.gradcheck(**small).passed)
"""


def test_a_gradient_check_runs_on_one_thread_and_gives_the_count_back(tmp_path):
    import subprocess
    import sys
    from cbn import _ops
    if not _ops.OPENMP:
        pytest.skip("no OpenMP pool: OpenBLAS's own threads")
    # cwd outside the source tree: `python -c` puts the cwd first on sys.path
    proc = subprocess.run([sys.executable, "-c", GRADCHECK_THREADS], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.split("\n")[:2] == ["True [1] 2 None", "True"], proc.stderr


# -- traps ------------------------------------------------------------------------------------


def test_images_flattened_channel_last_are_warned_about_and_converted():
    import warnings
    from cbn.inputs import InputWarning, layout_statistic, to_channel_first
    data = load_sample()
    X = data.train.images[:200]
    hwc = np.ascontiguousarray(X.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)).reshape(200, -1)
    assert layout_statistic(X) < 1.5 < 2.2 < layout_statistic(hwc)
    net = cbn.Network(3072, [8], 10)
    with pytest.warns(InputWarning, match="channel-last.*to_channel_first"):
        cbn.fit(net, hwc, data.train.labels[:200], lam=0, batch_size=100, schedule=0.01,
                epochs=1, normalization=data.normalization, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        net.predict(to_channel_first(hwc))
        net.predict(hwc[:31])  # too few rows to judge
    assert np.array_equal(to_channel_first(hwc), X)
    assert np.array_equal(to_channel_first(hwc.reshape(-1, 32, 32, 3)), X)
    with pytest.raises(ValueError, match=r"must have shape \(n, 3072\) or \(n, 32, 32, 3\)"):
        to_channel_first(X[:, :100])


@pytest.mark.parametrize("shape, hint", [
    ((3072,), r"for one example of 3072 features pass X.reshape\(1, -1\)"),
    ((2, 3, 32, 32), "flatten images channel-first"),
])
def test_input_of_the_wrong_rank_gets_a_hint(shape, hint):
    net = cbn.Network(3072, [8], 10)
    with pytest.raises(ValueError, match=hint):
        net.predict(np.zeros(shape, np.float32), normalization=False)


def test_a_network_is_float32_unless_asked():
    assert cbn.Network(4, [3], 2).dtype == np.float32


def test_a_wrong_cbn_data_is_an_error_naming_the_variable(on_the_sample, capsys, monkeypatch):
    monkeypatch.setenv("CBN_DATA", str(on_the_sample / "nowhere"))
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbn: error: $CBN_DATA is ") and "fix or unset CBN_DATA" in err
    assert "download=True" not in err and "--download" in err  # the command line's words
    with pytest.raises(FileNotFoundError, match=r"\$CBN_DATA is"):
        cbn.data.load_or_sample()


@pytest.mark.parametrize("argv, message", [
    (["evalute", "--model", "x"], "invalid choice: 'evalute' (choose from train, evaluate, "
                                  "gradcheck, report); did you mean 'evaluate'?"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_a_mistyped_command_is_an_invalid_choice(on_the_sample, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_the_data_line_is_printed_once_on_a_terminal(on_the_sample, capsys, monkeypatch):
    import sys
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(RUN) == 0
    out, err = capsys.readouterr()
    assert (out + err).count("data: CIFAR-10 shipped sample") == 1


def test_a_sigma_given_as_text_and_a_width_mismatch_are_said_plainly():
    with pytest.raises(TypeError, match=r"got the string '1e-3' \(pass 1e-3 without quotes\)"):
        cbn.Network(4, [3], 2, init="1e-3")
    data = load_sample()
    net = cbn.Network(100, [3], 10)
    with pytest.raises(ValueError, match="normalization.mean has 3072 values, one per "
                                         "feature of the data it was fitted on, but the "
                                         "network takes 100 inputs"):
        cbn.fit(net, data.train.images, data.train.labels, lam=0, batch_size=10,
                schedule=0.1, epochs=1, normalization=data.normalization)
    with pytest.raises(ValueError, match="normalization.mean has 3072 values, one per feature"):
        net.predict(data.train.images[:5, :100].copy(), normalization=data.normalization)


def test_ctrl_c_from_outside_ends_cbn_train_with_its_work_kept(tmp_path):
    """A real SIGINT, sent once the first epoch's line is out: no traceback, exit 130."""
    import subprocess
    import sys
    env = dict(__import__("os").environ, HOME=str(tmp_path))
    env.pop("CBN_DATA", None)
    proc = subprocess.Popen([sys.executable, "-m", "cbn", "train", "--step-size", "100000",
                             "--save", "net.npz", "--blas-threads", "1"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stderr:
            if line.startswith("epoch 1/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "scores so far" in out
    assert "--checkpoint net.checkpoint.npz --resume" in err
    assert (tmp_path / "net.npz").is_file() and (tmp_path / "net.checkpoint.npz").is_file()


def test_an_example_keeps_a_run_that_a_newer_cbn_saved(tmp_path):
    data = load_sample()
    config = RunConfig(hidden=(8,), step_size=10, cycles=0.5)
    repeat(data, config, [0], saved=tmp_path, progress=False)
    saved = dict(np.load(tmp_path / "seed0.npz"))
    saved["format_version"] = np.array(99)
    np.savez(tmp_path / "seed0.npz", **saved)
    before = (tmp_path / "seed0.npz").read_bytes()
    with pytest.raises(ValueError, match="newer cbn"):
        repeat(data, config, [0], saved=tmp_path, progress=False)
    assert (tmp_path / "seed0.npz").read_bytes() == before

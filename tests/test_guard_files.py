"""The files cbn reads, damaged or from another version, and hyper-parameters that do not fit
a dtype: every version field is checked, the tuned-threshold cache is optional whatever it
holds, and each error names its real cause."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import cbn
from cbn import Augment, CyclicLR, Network, _ops, fit, tune
from cbn.checkpoint import CheckpointError, load_checkpoint, read_npz, with_checksum
from cbn.optim import SGD, Adam, AdamW, check_state
from cbn.search_log import ResultsFile

CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 6))
Y = np.arange(20) % 3
RUN = dict(lam=0.0, batch_size=5, schedule=CyclicLR(1e-3, 0.1, 4), cycles=1, seed=0,
           progress=False)


def _rewrite(path: Path, arrays: dict, **changes) -> Path:
    """``arrays`` with ``changes``, checksum recomputed (a deliberate edit), saved at ``path``."""
    np.savez(path, **with_checksum({k: v for k, v in {**arrays, **changes}.items()
                                    if k != "checksum"}))
    return path


# -- format versions ---------------------------------------------------------------------------

@pytest.fixture
def saved_net(tmp_path):
    path = tmp_path / "net.npz"
    Network(6, [5], 3, seed=0).save(path)
    return path


@pytest.mark.parametrize("version, message", [
    (99, r"written by a newer cbn \(format_version 99; this cbn reads up to 1\)"),
    (2, r"written by a newer cbn \(format_version 2; this cbn reads up to 1\)"),
    ("banana", "format_version must be an integer, got 'banana'"),
    (1.0, "format_version must be an integer, got 1.0"),
    (True, "format_version must be an integer, got True"),
    (0, "format_version 0 is not one cbn writes"),
    (-3, "format_version -3 is not one cbn writes"),
])
def test_a_saved_network_of_another_version_names_the_file_and_the_version(
        saved_net, version, message):
    path = _rewrite(saved_net, read_npz(saved_net), format_version=np.array(version))
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        Network.load(path)


def test_a_newer_file_is_called_newer_before_its_other_members_are_judged(saved_net):
    """A newer cbn may store members this one does not know: the version speaks first."""
    arrays = read_npz(saved_net)
    path = _rewrite(saved_net, arrays, format_version=np.array(7),
                    network_config=np.array('{"layers": "a future layout"}'),
                    new_member=np.zeros(3))
    with pytest.raises(CheckpointError, match="written by a newer cbn"):
        Network.load(path)


def test_a_version_that_is_an_array_is_refused(saved_net):
    path = _rewrite(saved_net, read_npz(saved_net), format_version=np.array([1, 1]))
    with pytest.raises(CheckpointError, match=f"{path}: 'format_version' must be one version"):
        Network.load(path)


def test_arrays_and_pickles_of_a_newer_network_are_refused(saved_net):
    arrays = {**read_npz(saved_net), "format_version": np.array(5)}
    with pytest.raises(ValueError, match="^here: written by a newer cbn"):
        Network.from_arrays(arrays, source="here")
    net = Network(6, [5], 3, seed=0)
    assert Network.from_arrays(net.to_arrays()).config() == net.config()


@pytest.fixture
def checkpoint_file(tmp_path):
    path = tmp_path / "run.npz"
    fit(Network(6, [5], 3, seed=0, dropout=0.2), X, Y, checkpoint=path, checkpoint_every=3,
        optimizer=Adam(), **RUN)
    return path


def _resume(path):
    fit(Network(6, [5], 3, seed=0, dropout=0.2), X, Y, resume=path, optimizer=Adam(), **RUN)


@pytest.mark.parametrize("member, version, message", [
    ("checkpoint_version", 3, r"written by a newer cbn \(checkpoint_version 3; this cbn reads "
                              r"up to 2\)"),
    ("checkpoint_version", "2", "checkpoint_version must be an integer, got '2'"),
    ("format_version", 99, r"written by a newer cbn \(format_version 99"),
])
def test_a_checkpoint_of_another_version_names_the_file_and_the_version(
        checkpoint_file, member, version, message):
    path = _rewrite(checkpoint_file.with_name("doctored.npz"), read_npz(checkpoint_file),
                    **{member: np.array(version)})
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        _resume(path)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        Network.load(path)


@pytest.mark.parametrize("version, message", [
    (2, r"written by a newer cbn \(cbn_search 2; this cbn reads up to 1\)"),
    ("1", "cbn_search must be an integer, got '1'"),
    (None, "cbn_search must be an integer, got None"),
])
def test_a_search_results_file_of_another_version_names_the_file(tmp_path, version, message):
    path = tmp_path / "search.jsonl"
    path.write_text(json.dumps({"cbn_search": version, "seed": 0}) + "\n")
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        ResultsFile(path, {"cbn_search": 1, "seed": 0}).resume([])


# -- values that do not fit the dtype they are used in -----------------------------------------

def test_augment_noise_that_overflows_the_dtype_is_refused_naming_noise():
    X32 = RNG.standard_normal((20, 3072)).astype(np.float32)
    y = np.arange(20) % 10
    for noise, message in [(1e39, "noise=1e\\+39 overflows float32"),
                           (1e38, "noise=1e\\+38 overflows float32"),
                           (1e-50, "noise=1e-50 is below the smallest normal float32")]:
        with pytest.raises(ValueError, match=message):
            fit(Network(3072, [5], 10, seed=0, dtype=np.float32), X32, y, lam=0.0,
                batch_size=10, schedule=0.01, epochs=1, augment=Augment(noise=noise),
                progress=False)
    assert Augment(noise=1e39).shape_for(3072, np.float64) == (3, 32, 32)
    assert Augment(noise=0.1).shape_for(3072, np.float32) == (3, 32, 32)


@pytest.mark.parametrize("optimizer, message", [
    (lambda: Adam(eps=1e-50), "eps=1e-50 is below the smallest normal float32"),
    (lambda: AdamW(eps=1e-40), "eps=1e-40 is below the smallest normal float32"),
    (lambda: Adam(beta2=0.99999999), "beta2=0.99999999 rounds to 1 in float32"),
    (lambda: Adam(beta1=0.999999999), "beta1=0.999999999 rounds to 1 in float32"),
    (lambda: SGD(momentum=0.999999999), "momentum=0.999999999 rounds to 1 in float32"),
    (lambda: SGD(momentum=1e-50), "momentum=1e-50 rounds to 0 in float32"),
])
def test_optimizer_hyper_parameters_that_do_not_fit_float32_are_refused_before_training(
        optimizer, message):
    net = Network(6, [5], 3, seed=0, dtype=np.float32)
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match=message):
        fit(net, X, Y, lam=0.0, batch_size=5, schedule=0.01, epochs=1,
            optimizer=optimizer(), progress=False)
    np.testing.assert_array_equal(net.flat_params, before)
    fit(Network(6, [5], 3, seed=0, dtype=np.float64), X, Y, lam=0.0, batch_size=5,
        schedule=0.01, epochs=1, optimizer=optimizer(), progress=False)


def test_a_rate_that_overflows_the_dtype_is_refused_naming_lr():
    opt = SGD(momentum=0.5)
    opt.bind(3, 0, np.float32)
    with pytest.raises(ValueError, match="lr=1e\\+39 overflows float32"):
        opt.step(np.zeros(3, np.float32), np.ones(3, np.float32), 1e39)
    assert opt.steps == 0


def _adam_state():
    opt = Adam()
    opt.bind(4, 2, np.float64)
    opt.step(np.zeros(4), np.arange(4.0), 0.1)
    return opt.state_dict()


@pytest.mark.parametrize("change, message", [
    ({"exp_avg_sq": -np.ones(4)}, "exp_avg_sq is a second moment and must be >= 0"),
    ({"exp_avg": np.full(4, np.nan)}, "exp_avg contains NaN"),
    ({"exp_avg_sq": np.zeros(3)}, "exp_avg_sq must have length 4"),
    ({"step": -1}, "step must be >= 0"),
])
def test_an_optimizer_state_out_of_range_is_refused(change, message):
    state = {**_adam_state(), **change}
    with pytest.raises(ValueError, match=message):
        Adam().load_state_dict(state)
    with pytest.raises(ValueError, match=message):
        check_state(state)


def test_check_state_names_buffers_as_told_and_knows_only_cbn_optimizers():
    with pytest.raises(ValueError, match="file_exp_avg_sq is a second moment"):
        check_state({**_adam_state(), "exp_avg_sq": -np.ones(4)}, lambda k: "file_" + k)
    with pytest.raises(ValueError, match="names no optimizer of cbn.optim"):
        check_state({"name": "Lion"})
    check_state(_adam_state())


# -- checkpoint members out of range -------------------------------------------------------------

def _rng_state(arrays, **changes):
    state = json.loads(str(arrays["rng_state"]))
    inner = dict(state["state"], **changes.pop("inner", {}))
    return np.array(json.dumps(dict(state, state=inner, **changes)))


@pytest.mark.parametrize("edit, message", [
    (lambda a: {"optimizer_exp_avg_sq": -np.abs(a["optimizer_exp_avg_sq"]) - 1},
     "optimizer state: optimizer_exp_avg_sq is a second moment and must be >= 0"),
    (lambda a: {"optimizer_exp_avg": np.full_like(a["optimizer_exp_avg"], np.inf)},
     "optimizer state: optimizer_exp_avg contains NaN or infinite"),
    (lambda a: {"optimizer_exp_avg": a["optimizer_exp_avg"][:-1]},
     "optimizer state: optimizer_exp_avg must have length"),
    (lambda a: {"optimizer": np.array(json.dumps(
        dict(json.loads(str(a["optimizer"])), step=-4)))},
     "optimizer state: step must be >= 0"),
    (lambda a: {"optimizer": np.array(json.dumps(
        dict(json.loads(str(a["optimizer"])), eps=1e-50, dtype="float32")))},
     "optimizer state: eps=1e-50 is below"),
    (lambda a: {"rng_state": _rng_state(a, inner={"inc": 4})}, "rng_state is not a PCG64"),
    (lambda a: {"rng_state": _rng_state(a, has_uint32=7)}, "rng_state is not a PCG64"),
    (lambda a: {"rng_state": _rng_state(a, inner={"state": 2 ** 130})},
     "rng_state is not a PCG64"),
    (lambda a: {"dropout_key": np.array(-5)}, r"dropout_key must be in \[0, 2\*\*64\)"),
    (lambda a: {"elapsed": np.array(-1.0)}, "elapsed must be >= 0"),
    (lambda a: {"batch_loss_sum": np.array(-1.0)}, "batch_loss_sum must be >= 0"),
    (lambda a: {"history_val_accuracy": np.full(len(a["history_step"]), 2.0)},
     "history_val_accuracy must be in"),
    (lambda a: {"history_lr": -a["history_lr"] - 1}, "history_lr must be in"),
    (lambda a: {"history_wall_time": -a["history_wall_time"] - 1},
     "history_wall_time must be in"),
])
def test_a_checkpoint_member_out_of_range_is_a_checkpoint_error_naming_file_and_member(
        checkpoint_file, edit, message):
    arrays = read_npz(checkpoint_file)
    path = _rewrite(checkpoint_file.with_name("doctored.npz"), arrays, **edit(arrays))
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        _resume(path)


@pytest.mark.parametrize("edit, message", [
    (lambda a: {"batch_count": a["batch_count"] + 1000}, r"batch_count \d+ does not fit"),
    (lambda a: {"stats_seen": np.array("False")}, "stats_seen must be a 0-d bool"),
])
def test_a_checkpoint_inconsistent_with_itself_is_refused_on_resume(checkpoint_file, edit,
                                                                     message):
    arrays = read_npz(checkpoint_file)
    path = _rewrite(checkpoint_file.with_name("doctored.npz"), arrays, **edit(arrays))
    with pytest.raises(CheckpointError, match=f"^{path}: .*{message}"):
        _resume(path)
    _resume(checkpoint_file)  # the file as written resumes


@pytest.mark.parametrize("member, value", [("input_std", np.zeros(6)),
                                           ("input_mean", np.full(6, np.nan))])
def test_a_saved_normalization_out_of_range_names_its_members_and_changes_nothing(
        tmp_path, member, value):
    from cbn.inputs import Normalization
    source = Network(6, [5], 3, seed=1)
    source.normalization = Normalization(np.zeros(6), np.ones(6))
    state = {**source.state_dict(), member: value}
    path = tmp_path / "net.npz"
    np.savez(path, **with_checksum({**source.to_arrays(), member: value}))
    with pytest.raises(CheckpointError, match=f"^{path}: input_mean, input_std: "):
        Network.load(path)
    net = Network(6, [5], 3, seed=0)
    before = net.state_dict()
    with pytest.raises(ValueError, match="input_mean, input_std: "):
        net.load_state_dict(state)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[name])

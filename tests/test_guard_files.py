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
from cbn import Augment, CyclicLR, Network, _ops, fit, testing, tune
from cbn.checkpoint import CheckpointError, load_checkpoint
from cbn.npz import read_npz, with_checksum
from cbn.optim import SGD, Adam, AdamW, check_state
from cbn.lab.search_log import ResultsFile

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


# -- the tuned-threshold cache -----------------------------------------------------------------

@pytest.fixture
def cache(monkeypatch, tmp_path):
    """Tuning on, with cbn's cache folder in tmp_path, a fresh process-wide state, measuring
    replaced by fixed answers (counted), and the built-in thresholds restored after."""
    monkeypatch.setenv("CBN_AUTOTUNE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tune, "_done", {})
    monkeypatch.setattr(tune, "_warned", set())
    monkeypatch.setattr(tune, "_busy", lambda: False)
    monkeypatch.setattr(tune, "_wait", [0.0])
    measured = []
    monkeypatch.setattr(tune, "measure_transposed_from", lambda: measured.append(1) or 200)
    monkeypatch.setattr(tune, "measure_sliced_from", lambda: 512)
    path = tmp_path / "cbn" / "tune.json"
    path.parent.mkdir()
    yield path, measured
    _ops.set_transposed_from(tune.DEFAULTS["transposed_from"])
    _ops.set_sliced_from(tune.DEFAULTS["sliced_from"])


def _works(path: Path):
    """A fit and a prediction of a new network (whose plans read the cache); the cache
    warnings they gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = Network(6, [5], 3, seed=0)
        fit(net, X, Y, lam=0.0, batch_size=5, schedule=0.01, epochs=1, progress=False)
        assert np.isfinite(net.predict_proba(X)).all()
    found = [w for w in caught if issubclass(w.category, tune.TuneCacheWarning)]
    assert len(found) <= 1
    assert all(str(w.message).startswith(f"{path}: ") for w in found)
    thresholds = tune.current()
    assert all(1 <= v <= tune.NEVER for v in thresholds.values())
    return found


def _entry(value) -> str:
    return json.dumps({tune.machine_key(): value})


DAMAGED = {
    "deep-nesting": lambda: "[" * 100_000 + "]" * 100_000,
    "deep-entry": lambda: '{"%s": %s}' % (tune.machine_key(), "[" * 100_000 + "]" * 100_000),
    "2**40": lambda: _entry({"transposed_from": 2 ** 40, "sliced_from": 512}),
    "beyond-never": lambda: _entry({"transposed_from": 200, "sliced_from": tune.NEVER + 1}),
    "negative": lambda: _entry({"transposed_from": -200, "sliced_from": 512}),
    "zero": lambda: _entry({"transposed_from": 0, "sliced_from": 512}),
    "bool": lambda: _entry({"transposed_from": True, "sliced_from": 512}),
    "float": lambda: _entry({"transposed_from": 200.0, "sliced_from": 512}),
    "nan": lambda: _entry({"transposed_from": math.nan, "sliced_from": 512}),
    "infinity": lambda: '{"%s": {"transposed_from": 1e400, "sliced_from": 512}}'
                        % tune.machine_key(),
    "huge-int": lambda: '{"%s": {"transposed_from": %s, "sliced_from": 512}}'
                        % (tune.machine_key(), "9" * 5000),
    "string": lambda: _entry({"transposed_from": "200", "sliced_from": 512}),
    "missing-key": lambda: _entry({"transposed_from": 200}),
    "extra-key": lambda: _entry({"transposed_from": 200, "sliced_from": 512, "x": 1}),
    "list-entry": lambda: _entry([200, 512]),
    "list": lambda: "[1, 2]",
    "not-json": lambda: "{not json",
    "empty": lambda: "",
    "version-text": lambda: json.dumps({"format_version": "1"}),
    "version-zero": lambda: json.dumps({"format_version": 0}),
    "too-large": lambda: json.dumps({"x": "y" * (tune.MAX_CACHE_BYTES + 10)}),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_cache_warns_once_gives_the_built_ins_and_is_measured_next_time(cache, name):
    path, measured = cache
    path.write_text(DAMAGED[name]())
    found = _works(path)
    assert len(found) == 1 and "using the built-in thresholds" in str(found[0].message)
    assert tune.current() == tune.DEFAULTS and not measured
    written = json.loads(path.read_text())
    assert written["format_version"] == tune.FORMAT_VERSION
    assert tune.machine_key() not in written
    testing.forget_tuning()  # a new process: the mended file is measured into, without a warning
    assert not _works(path) and len(measured) == 1
    assert json.loads(path.read_text())[tune.machine_key()] == {"transposed_from": 200,
                                                               "sliced_from": 512}


def test_a_cache_that_is_not_utf8_warns_and_is_rewritten(cache):
    path, measured = cache
    path.write_bytes(b'{"\xff\xfe": 1}')
    assert "not UTF-8" in str(_works(path)[0].message)
    assert json.loads(path.read_text()) == {"format_version": tune.FORMAT_VERSION}


def test_damaged_entries_of_other_machines_are_dropped_and_good_ones_kept(cache):
    path, _ = cache
    path.write_text(json.dumps({"other|cpu": {"transposed_from": 400, "sliced_from": 64},
                                "broken|cpu": {"transposed_from": 2 ** 40}}))
    assert not _works(path)  # nothing wrong with this machine's part: measured, no warning
    written = json.loads(path.read_text())
    assert written["other|cpu"] == {"transposed_from": 400, "sliced_from": 64}
    assert "broken|cpu" not in written


def test_a_cache_from_a_newer_cbn_is_left_alone_and_the_built_in_values_used(cache):
    path, measured = cache
    content = json.dumps({"format_version": 2, tune.machine_key(): {"anything": 1}})
    path.write_text(content)
    message = str(_works(path)[0].message)
    assert "written by a newer cbn (format_version 2; this cbn reads up to 1)" in message
    assert "built-in" in message
    assert tune.current() == tune.DEFAULTS and not measured
    assert path.read_text() == content


def test_a_folder_where_the_cache_should_be_warns_once_and_is_kept(cache):
    path, measured = cache
    path.mkdir()
    (path / "keep").write_text("mine")
    assert "cannot be read" in str(_works(path)[0].message)
    assert tune.current() == tune.DEFAULTS and not measured
    assert (path / "keep").read_text() == "mine"
    tune._done.clear()
    assert not _works(path)  # one warning per process


def test_an_unreadable_cache_warns_once_and_is_kept(cache, monkeypatch):
    path, measured = cache
    path.write_text(_entry({"transposed_from": 400, "sliced_from": 64}))
    real_open = os.open

    def refuse(name, *args, **kwargs):
        if os.fspath(name) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(name))
        return real_open(name, *args, **kwargs)
    monkeypatch.setattr(tune.os, "open", refuse)
    assert "Permission denied" in str(_works(path)[0].message)
    assert tune.current() == tune.DEFAULTS and not measured
    monkeypatch.setattr(tune.os, "open", real_open)
    assert json.loads(path.read_text())[tune.machine_key()]["transposed_from"] == 400


def test_a_fifo_where_the_cache_should_be_does_not_hang(tmp_path):
    (tmp_path / "cbn").mkdir()
    os.mkfifo(tmp_path / "cbn" / "tune.json")
    code = textwrap.dedent("""
        import warnings, numpy as np
        from cbn import Network, tune
        tune._busy = lambda: False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = Network(6, [5], 3, seed=0).predict_proba(np.ones((4, 6)))
        assert np.isfinite(p).all() and tune.current() == tune.DEFAULTS
        print([str(w.message) for w in caught if w.category is tune.TuneCacheWarning])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path,
                         env={**CHILD_ENV, "CBN_AUTOTUNE": "1", "XDG_CACHE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "is not a regular file" in out.stdout


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)


_threshold = st.integers(min_value=-2 ** 70, max_value=2 ** 70) | _json


def _usable(entry, version) -> bool:
    """What the cache may hold to be used as it is."""
    return (version is None or type(version) is int and version == 1) and (
        isinstance(entry, dict) and set(entry) == set(tune.DEFAULTS)
        and all(type(v) is int and 1 <= v <= tune.NEVER for v in entry.values()))


# The fixture's state is reset by hand for each example (file, _done, _warned).
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=_json | st.fixed_dictionaries({"transposed_from": _threshold,
                                            "sliced_from": _threshold}),
       version=st.none() | _json)
def test_whatever_the_cache_holds_thresholds_stay_in_range(cache, entry, version):
    path, _ = cache
    document = {tune.machine_key(): entry}
    if version is not None:
        document["format_version"] = version
    path.write_text(json.dumps(document))
    testing.forget_tuning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = tune.ensure()
    assert len(caught) == (0 if _usable(entry, version) else 1)
    assert set(found) == set(tune.DEFAULTS)
    assert all(type(v) is int and 1 <= v <= tune.NEVER for v in found.values())
    assert tune.current() == found


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
        check_state({"name": "Lars"})
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

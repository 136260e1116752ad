"""Hyper-parameter search: same table serially, on processes and on Dask; resume after a kill;
failures recorded; arguments checked. Trials use the shipped sample and a tiny budget."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cbn

from cbn.lab import search as search_module
from cbn.data import load_sample
from cbn.lab.experiment import RunConfig
from cbn.lab.plots import plot_search
from cbn.lab.search import (Choice, DataSpec, LogUniform, Uniform, best, coarse_to_fine,
                            default_workers, refine, sample_trials, search, write_csv, write_json)

BASE = RunConfig(hidden=(10,), cycles=0.5)  # 100 updates on the sample's 2,000 images
SPACE = {"lam": LogUniform(1e-4, 1e-1), "eta_max": LogUniform(1e-2, 1e-1),
         "hidden": Choice([(10,), (8, 8)])}
N = 4


def without_time(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def trial_lines(path: Path):
    """The trial records of a results file (skipping the header and a cut-off last line)."""
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()[1:]]


@pytest.fixture(scope="module")
def serial_records():
    return search("sample", SPACE, N, base=BASE, seed=3, executor="serial", progress=False)


# --- reproducibility across execution modes ------------------------------------------------

def test_serial_search_records_every_trial(serial_records):
    assert [r["trial"] for r in serial_records] == list(range(N))
    for record, trial in zip(serial_records, sample_trials(SPACE, N, base=BASE, seed=3)):
        assert record["status"] == "ok" and record["error"] is None
        assert record["seed"] == trial.seed and record["lam"] == trial.params["lam"]
        assert record["hidden"] in ([10], [8, 8]) and record["cycles"] == 0.5
        assert record["data_source"] == "sample" and record["resolved_step_size"] == 100
        for split in ("train", "val", "test"):
            assert 0.0 <= record[f"{split}_accuracy"] <= 1.0
        assert record["wall_time"] > 0
    assert len({r["lam"] for r in serial_records}) == N  # the trials really differ


def test_local_processes_give_the_serial_table(serial_records):
    records = search(DataSpec("sample"), SPACE, N, base=BASE, seed=3, executor="processes",
                     max_workers=2, progress=False)
    assert without_time(records) == without_time(serial_records)


def test_thread_pool_with_loaded_data_gives_the_serial_table(serial_records):
    with ThreadPoolExecutor(2) as pool:
        records = search(load_sample(), SPACE, N, base=BASE, seed=3, executor=pool,
                         progress=False)
    assert without_time(records) == without_time(serial_records)


def test_dask_cluster_gives_the_serial_table(serial_records):
    distributed = pytest.importorskip("dask.distributed")
    # In-process workers keep the test fast; worker processes are covered by the test above.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        records = search("sample", SPACE, N, base=BASE, seed=3,
                         executor=client.get_executor(), progress=False)
    assert without_time(records) == without_time(serial_records)


def test_another_seed_gives_other_trials(serial_records):
    other = sample_trials(SPACE, N, base=BASE, seed=4)
    assert [t.params["lam"] for t in other] != [r["lam"] for r in serial_records]


def test_trials_depend_only_on_seed_and_index():
    short = sample_trials(SPACE, 3, base=BASE, seed=9)
    long = sample_trials(SPACE, 50, base=BASE, seed=9)
    assert short == long[:3]
    lams = [t.params["lam"] for t in long]
    assert all(1e-4 <= v <= 1e-1 for v in lams)
    # log-uniform: about half the draws below the geometric midpoint 10**-2.5
    assert 10 <= sum(v < 10 ** -2.5 for v in lams) <= 40


def test_integer_fields_get_whole_numbers():
    trials = sample_trials({"step_size": LogUniform(50, 500)}, 10, seed=0)
    assert all(isinstance(t.config.step_size, int) and 50 <= t.config.step_size <= 500
               for t in trials)


# --- saving and resuming ---------------------------------------------------------------------

# The search of ``serial_records``, with its results saved to sys.argv[1].
KILLED_SEARCH = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_search import BASE, N, SPACE
    from cbn.lab.search import search
    search("sample", SPACE, N, base=BASE, seed=3, executor="serial", results=sys.argv[1],
           progress=False)
""")


def test_killed_search_resumes_and_runs_every_trial_once(tmp_path, monkeypatch,
                                                         serial_records):
    path = tmp_path / "search.jsonl"
    # Run from tmp_path with the tested cbn's folder on the path: from the repository root,
    # "-c" would import the source tree, which has no compiled extension in a clean clone.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
        if p)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SEARCH, str(path),
                              str(Path(__file__).parent)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline and \
                not (path.exists() and trial_lines(path)):
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)  # no cleanup: as if the machine went down
    finally:
        child.wait()
    finished = trial_lines(path)
    assert 1 <= len(finished) < N, "the kill should land between the first and last trial"

    calls = []
    real_run = search_module.run
    monkeypatch.setattr(search_module, "run",
                        lambda *args, **kw: calls.append(args[2]) or real_run(*args, **kw))
    records = search("sample", SPACE, N, base=BASE, seed=3, executor="serial",
                     results=path, progress=False)
    assert len(calls) == N - len(finished)  # only the unfinished trials ran
    lines = trial_lines(path)
    assert sorted(r["trial"] for r in lines) == list(range(N))  # each exactly once
    assert lines[:len(finished)] == finished  # saved trials untouched
    assert without_time(records) == without_time(serial_records)


def test_finished_search_reruns_nothing(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    first = search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
                   progress=False)
    monkeypatch.setattr(search_module, "run", lambda *a, **k: pytest.fail("trial rerun"))
    again = search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
                   progress=False)
    assert again == first


def test_cut_off_last_line_is_dropped_and_its_trial_rerun(tmp_path):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    text = path.read_text()
    path.write_text(text[:-25])  # a kill in the middle of writing trial 1
    records = search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
                     progress=False)
    assert [r["trial"] for r in trial_lines(path)] == [0, 1]
    assert [r["trial"] for r in records] == [0, 1]


def test_longer_search_extends_a_finished_one(tmp_path):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    records = search("sample", SPACE, 3, base=BASE, seed=3, executor="serial", results=path,
                     progress=False)
    assert [r["trial"] for r in trial_lines(path)] == [0, 1, 2]
    assert len(records) == 3


@pytest.mark.parametrize("change", [{"seed": 4}, {"base": BASE.with_(cycles=1)},
                                    {"space": {"lam": LogUniform(1e-3, 1e-1)}},
                                    {"data": DataSpec("sample", val_size=7)}])
def test_results_of_another_search_are_refused(tmp_path, change):
    path = tmp_path / "s.jsonl"
    path.write_text("")  # an empty file is a new search
    kwargs = dict(data="sample", space=SPACE, n_trials=1, base=BASE, seed=3,
                  executor="serial", results=path, progress=False)
    search(**kwargs)
    with pytest.raises(ValueError, match="different search"):
        search(**{**kwargs, **change})


def test_trial_line_from_other_settings_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    header, line = path.read_text().splitlines()
    record = json.loads(line)
    record["lam"] *= 2
    path.write_text(f"{header}\n{json.dumps(record)}\n")
    with pytest.raises(ValueError, match="trial 0 was run with other settings.*lam"):
        search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
               progress=False)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a cbn search results file"):
        search("sample", SPACE, 1, base=BASE, executor="serial", results=path, progress=False)
    path.write_text("plain text\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        search("sample", SPACE, 1, base=BASE, executor="serial", results=path, progress=False)


def test_a_results_file_with_crlf_line_ends_resumes_exactly(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    first = search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
                   progress=False)
    raw = path.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(raw[:-25])  # edited on Windows, then cut off in the last record
    again = search("sample", SPACE, 3, base=BASE, seed=3, executor="serial", results=path,
                   progress=False)
    assert without_time(again[:2]) == without_time(first)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["trial"] for line in lines[1:-1]] == [0, 1, 2]
    monkeypatch.setattr(search_module, "run", lambda *a, **k: pytest.fail("trial rerun"))
    assert without_time(search("sample", SPACE, 3, base=BASE, seed=3, executor="serial",
                               results=path, progress=False)) == without_time(again)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("val_accuracy"), "line 2: trial 0 is 'ok' but lacks finite val_accuracy"),
    (lambda r: r.update(test_loss=float("nan")), "line 2: trial 0 is 'ok' but lacks finite"),
    (lambda r: r.update(status="maybe"), "line 2: trial 0 has status 'maybe'"),
    (lambda r: r.update(trial=True), "line 2: a line without a trial index"),
], ids=["missing-metric", "nan-metric", "unknown-status", "bool-index"])
def test_every_saved_record_is_checked_before_any_trial_runs(tmp_path, monkeypatch, edit,
                                                             message):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    header, line = path.read_text().splitlines()
    record = json.loads(line)
    edit(record)
    path.write_text(f"{header}\n{json.dumps(record)}\n")
    monkeypatch.setattr(search_module, "run", lambda *a, **k: pytest.fail("a trial ran"))
    with pytest.raises(ValueError, match=f"{path}, {message}"):
        search("sample", SPACE, 2, base=BASE, seed=3, executor="serial", results=path,
               progress=False)


def test_a_results_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    header, line = path.read_bytes().splitlines()
    path.write_bytes(header + b"\n" + line[:10] + b"\xff" + line[10:] + b"\n")
    with pytest.raises(ValueError, match=f"{path}, line 2: not UTF-8 .*0xff at column 11"):
        search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
               progress=False)


# --- failures --------------------------------------------------------------------------------

def test_failing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    path = tmp_path / "s.jsonl"
    space = {"momentum": Choice([0.0, 2.0])}  # fit() rejects momentum >= 1
    records = search("sample", space, 4, base=BASE, seed=2, executor="serial",
                     results=path, progress=False)
    failed = [r for r in records if r["status"] == "failed"]
    ok = [r for r in records if r["status"] == "ok"]
    assert failed and ok, "seed 2 should draw both momenta"
    assert all(r["momentum"] == 2.0 and r["error"].startswith("ValueError: momentum")
               and "val_accuracy" not in r for r in failed)
    assert all(r["momentum"] == 0.0 and r["error"] is None for r in ok)
    assert sorted(r["trial"] for r in trial_lines(path)) == list(range(4))
    assert best(records)["status"] == "ok"


def test_missing_data_stops_the_search_without_recording(tmp_path):
    path = tmp_path / "s.jsonl"
    with pytest.raises(FileNotFoundError):
        search(DataSpec(tmp_path / "nowhere"), SPACE, 2, base=BASE, executor="serial",
               results=path, progress=False)
    assert trial_lines(path) == []


# --- best, refine, coarse-to-fine, tables, plot ----------------------------------------------

def fake(trial, lam, acc, status="ok", hidden=(10,)):
    return {"trial": trial, "status": status, "lam": lam, "hidden": list(hidden),
            "val_accuracy": acc}


def test_best_picks_highest_validation_accuracy_among_successes():
    records = [fake(0, 1e-3, 0.3), fake(1, 1e-2, 0.5), fake(2, 1e-1, 0.9, status="failed"),
               fake(3, 1e-4, 0.5)]
    assert best(records)["trial"] == 1
    with pytest.raises(ValueError, match="no successful trial"):
        best([fake(0, 1e-3, 0.3, status="failed")])


def test_refine_narrows_ranges_around_the_top_trials():
    space = {"lam": LogUniform(1e-5, 1e-1), "hidden": Choice([(10,), (20,), (30,)])}
    records = [fake(0, 1e-5, 0.1, hidden=(30,)), fake(1, 1e-3, 0.6, hidden=(10,)),
               fake(2, 1e-2, 0.5, hidden=(20,)), fake(3, 1e-1, 0.2, hidden=(30,))]
    narrowed = refine(space, records, top=2, pad=0.1)
    # log10 width 4, pad 0.4 decades on each side of [1e-3, 1e-2]
    assert narrowed["lam"].low == pytest.approx(10 ** -3.4)
    assert narrowed["lam"].high == pytest.approx(10 ** -1.6)
    assert narrowed["hidden"] == Choice([(10,), (20,)])
    edge = refine(space, [fake(0, 1e-5, 0.9)], top=1)["lam"]
    assert edge.low == 1e-5 and edge.high == pytest.approx(10 ** -4.6)  # clipped to the range


def test_refine_uniform_range():
    narrowed = refine({"momentum": Uniform(0.0, 0.9)},
                      [{"status": "ok", "momentum": 0.5, "val_accuracy": 0.4}], top=1, pad=0.1)
    assert narrowed["momentum"].low == pytest.approx(0.41)
    assert narrowed["momentum"].high == pytest.approx(0.59)


def test_coarse_to_fine_searches_inside_the_refined_range(tmp_path):
    records = coarse_to_fine("sample", {"lam": LogUniform(1e-5, 1e-1)}, 2, rounds=2, top=1,
                             base=BASE, executor="serial", results=tmp_path / "c.jsonl",
                             progress=False)
    assert [r["round"] for r in records] == [0, 0, 1, 1]
    fine = refine({"lam": LogUniform(1e-5, 1e-1)}, records[:2], top=1)["lam"]
    assert fine.high / fine.low < 1e4 / 2  # narrower than the coarse range
    assert all(fine.low <= r["lam"] <= fine.high for r in records[2:])
    assert (tmp_path / "c.round0.jsonl").exists() and (tmp_path / "c.round1.jsonl").exists()


def test_tables_hold_every_trial(tmp_path, serial_records):
    records = serial_records + [fake(N, 1e-3, None, status="failed")]
    write_csv(records, tmp_path / "t.csv")
    write_json(records, tmp_path / "t.json")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N + 1
    assert {"trial", "seed", "lam", "eta_max", "hidden", "val_accuracy", "wall_time",
            "error"} <= set(rows[0])
    assert float(rows[0]["lam"]) == serial_records[0]["lam"]  # written exactly
    assert json.loads(rows[0]["hidden"]) == serial_records[0]["hidden"]
    assert json.loads((tmp_path / "t.json").read_text()) == records


def test_plot_search_draws_accuracy_against_log_lambda(tmp_path, serial_records):
    out = plot_search(serial_records, tmp_path / "lam.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="positive number"):
        plot_search(serial_records, tmp_path / "h.png", param="hidden")


def test_default_workers_fit_the_cores():
    cores = len(os.sched_getaffinity(0))
    for threads in (1, 2, 3):
        assert 1 <= default_workers(threads) and \
            (default_workers(threads) * threads <= cores or default_workers(threads) == 1)


# --- bad arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("low, high", [(1.0, 0.1), (0.0, 1.0), (-1.0, 1.0), (1.0, 1.0),
                                       (1.0, math.inf)])
def test_log_uniform_needs_positive_increasing_bounds(low, high):
    with pytest.raises(ValueError, match="LogUniform"):
        LogUniform(low, high)


def test_bad_uniform_and_choice():
    with pytest.raises(ValueError, match="low < high"):
        Uniform(0.5, 0.5)
    with pytest.raises(ValueError, match="at least one option"):
        Choice([])
    with pytest.raises(TypeError, match="list of values"):
        Choice("abc")


@pytest.mark.parametrize("n_trials", [0, -1])
def test_n_trials_must_be_positive(n_trials):
    with pytest.raises(ValueError, match="n_trials"):
        search("sample", SPACE, n_trials, executor="serial", progress=False)


def test_unknown_hyper_parameter_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lambda'\].*'lam'"):
        search("sample", {"lambda": LogUniform(1e-3, 1e-1)}, 1, executor="serial")


@pytest.mark.parametrize("space, message", [
    ({"lam": 0.01}, "must be LogUniform, Uniform or Choice"),
    ({"hidden": LogUniform(10, 100)}, "not numeric"),
    ([("lam", LogUniform(1e-3, 1e-1))], "space must be a dict"),
])
def test_malformed_space_is_rejected(space, message):
    with pytest.raises(TypeError, match=message):
        sample_trials(space, 1)


def test_bad_search_arguments():
    with pytest.raises(TypeError, match="base"):
        search("sample", SPACE, 1, base={"lam": 0.1}, executor="serial")
    with pytest.raises(ValueError, match="seed"):
        search("sample", SPACE, 1, seed=-1, executor="serial")
    with pytest.raises(ValueError, match="executor"):
        search("sample", SPACE, 1, executor="threads", progress=False)
    with pytest.raises(TypeError, match="data must be"):
        search(42, SPACE, 1, executor="serial")
    with pytest.raises(ValueError, match="protocol"):
        DataSpec("sample", protocol="half")
    with pytest.raises(ValueError, match="blas_threads"):
        search("sample", SPACE, 1, blas_threads=0, executor="serial")


def test_loaded_data_is_refused_for_worker_processes():
    with pytest.raises(TypeError, match="DataSpec"):
        search(load_sample(), SPACE, 1, executor="processes", progress=False)


def test_a_process_loads_each_data_spec_once():
    from cbn.lab.search import _cached
    assert _cached(DataSpec("sample")) is _cached(DataSpec("sample"))


def test_a_results_line_with_an_integer_of_too_many_digits_names_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
           progress=False)
    header = path.read_text().splitlines()[0]
    path.write_text(header + '\n{"trial": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=f"{path}: line 2 is not JSON"):
        search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=path,
               progress=False)

"""Files and folders the user names: an example writes only into a folder that is new, empty
or its own; every write of a user-named file is atomic and a failed one is a one-line error;
``~`` means the home folder for every reader and writer; sizes that cannot fit and damaged
results files are one-line errors naming the option, file and field."""
from __future__ import annotations

import argparse
import copy
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import Network, fit
from cbn.lab import cli, plots
from cbn._files import write_text
from cbn.checkpoint import CheckpointError, load_checkpoint
from cbn.data import load_sample
from cbn.lab.record import MARKER, ExampleRecord, example_parser, parse_example_args, run_example
from cbn.lab.report import check_results, main as report_main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(Path(cbn.__file__).resolve().parents[1])
QUICK = ("--cycles", "0.5", "--step-size", "10", "--blas-threads", "1", "--no-progress")


@pytest.fixture(autouse=True)
def at_home(tmp_path, monkeypatch):
    """``~`` is ``tmp_path/home``, the working folder ``tmp_path/work``; no CIFAR-10 to be
    found (the shipped sample is used)."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CBN_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "work")


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    """The one ``cbn: error:`` line of ``err``, which must hold no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


def disk_full(monkeypatch):
    """Every flush to disk fails as on a full disk."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# -- an example's output folder --------------------------------------------------------------


def parse(out, name="demo"):
    return parse_example_args(example_parser(name, "a demo"), ["--out", str(out)])


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("months of work")
    (path / "figures").mkdir()
    (path / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return path


@pytest.mark.parametrize("which", ["", ".partial", ".old"])
def test_an_example_refuses_a_folder_it_did_not_make_and_leaves_it_whole(tmp_path, capsys,
                                                                          which):
    out = tmp_path / "mydocs"
    folder = user_folder(out.with_name(out.name + which))
    before = tree(folder)
    with pytest.raises(SystemExit) as stopped:
        parse(out)
    message = str(stopped.value.code)
    assert message.startswith("demo: error: --out ") and "\n" not in message
    assert f"refusing to replace folder {folder}," in message
    with pytest.raises(ValueError, match="refusing to replace folder"):
        ExampleRecord("demo", argparse.Namespace(out=str(out)), load_sample())
    assert tree(folder) == before
    assert not out.with_name("mydocs.partial").exists() or which == ".partial"


def test_an_example_refuses_another_examples_results_and_a_file(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER).write_text("three_layer\n")
    with pytest.raises(SystemExit, match="holds the results of 'three_layer', not of 'demo'"):
        parse(other)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(SystemExit, match="notes is a file, not a folder"):
        parse(tmp_path / "notes")
    (tmp_path / "link").symlink_to(user_folder(tmp_path / "documents"))
    with pytest.raises(SystemExit, match="link is a symbolic link"):
        parse(tmp_path / "link")


def test_the_gradient_check_example_refuses_a_folder_before_reading_any_data(tmp_path):
    docs = user_folder(tmp_path / "mydocs")
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "gradient_check.py"),
                           "--quick", "--out", str(docs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"gradient_check: error: --out {docs}: refusing")
    assert len(proc.stderr.strip().splitlines()) == 1 and "data:" not in proc.stderr
    assert (docs / "thesis.tex").read_text() == "months of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mydocs", "work"]


def _record(out: Path, name="demo") -> ExampleRecord:
    record = ExampleRecord(name, argparse.Namespace(out=str(out), quick=False, seed=0),
                           load_sample())
    record.add("config", {"value": 1.0})
    return record


def test_an_examples_own_folder_is_replaced_and_its_leftovers_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    _record(out).write("# Demo\n\nfirst")
    assert (out / MARKER).read_text() == "demo\n"
    (out / "old.png").write_bytes(b"from the first run")
    aside = tmp_path / "out.old"  # left by a run that stopped while replacing
    aside.mkdir()
    (aside / MARKER).write_text("demo\n")
    (aside / "results.json").write_text("{}")
    _record(out).write("# Demo\n\nsecond")
    assert not aside.exists() and not (out / "old.png").exists()
    assert "second" in (out / "summary.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    _record(empty).write("# Demo\n\nin an empty folder")
    assert (empty / "results.json").is_file()


def test_a_folder_that_became_someone_elses_during_the_run_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    record = _record(out)
    user_folder(out)  # made while the example ran
    with pytest.raises(ValueError, match="refusing to replace folder"):
        record.write("# Demo\n\nbody")
    assert run_example(lambda: record.write("# Demo\n\nbody"), "demo") == 1
    err = capsys.readouterr().err
    assert err == (f"demo: error: refusing to replace folder {out}, which is not empty and is "
                   f"not a results folder of demo (no {MARKER} file); give another --out, or "
                   "empty or delete that folder yourself\n")
    assert (out / "thesis.tex").read_text() == "months of work"
    assert (tmp_path / "out.partial" / "results.json").is_file()  # the run is kept


def test_an_example_whose_results_cannot_be_written_ends_in_one_line(tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "out"
    record = _record(out)
    disk_full(monkeypatch)
    assert run_example(lambda: record.write("# Demo\n\nbody"), "demo") == 1
    assert capsys.readouterr().err == (f"demo: error: {tmp_path / 'out.partial' / 'results.json'}"
                                       ": No space left on device\n")
    assert not out.exists()


# -- writes of user-named files --------------------------------------------------------------


def test_a_failed_write_of_train_out_keeps_the_old_file_and_is_one_line(capsys, monkeypatch,
                                                                         tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text('{"old": true}\n')
    disk_full(monkeypatch)
    status, _, err = run_cli(capsys, "train", *QUICK, "--out", str(scores))
    assert status == 2
    assert error_line(err) == (f"cbn: error: --out {scores}: could not write the file: "
                               "No space left on device")
    assert scores.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_of_train_save_keeps_the_old_network(capsys, monkeypatch, tmp_path):
    saved = tmp_path / "net.npz"
    saved.write_bytes(b"the previous network")
    disk_full(monkeypatch)
    status, _, err = run_cli(capsys, "train", *QUICK, "--save", str(saved))
    assert status == 2
    assert error_line(err).startswith(f"cbn: error: --save {saved}: could not write the file")
    assert saved.read_bytes() == b"the previous network"


def test_a_failed_write_of_the_report_is_one_line_for_both_commands(capsys, monkeypatch,
                                                                     tmp_path):
    results = _results(tmp_path, _document())
    report = tmp_path / "REPORT.md"
    report.write_text("the old report")
    disk_full(monkeypatch)
    status, _, err = run_cli(capsys, "report", "--results", str(results), "--out", str(report))
    assert status == 2 and "could not write the file: No space left on device" in error_line(err)
    assert report_main(["--results", str(results), "--out", str(report)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"cbn-report: {report}: could not write the report: No space left "
                           "on device")
    assert report.read_text() == "the old report"


def test_out_inside_a_file_is_named_as_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    status, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "afile" / "s.json"))
    assert status == 2 and error_line(err).endswith("folder " + str(tmp_path / "afile")
                                                    + " is a file")


def test_a_figure_that_fails_half_way_leaves_the_previous_one(tmp_path, monkeypatch):
    import matplotlib.figure
    (tmp_path / "figures").mkdir()
    path = tmp_path / "figures" / "loss.png"
    path.write_bytes(b"the previous figure")

    def half_then_fail(self, target, **kwargs):
        target.write(b"\x89PNG half") if hasattr(target, "write") else \
            Path(target).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_fail)
    history = cbn.History(step=[1, 2], val_loss=[2.3, 2.0])
    with pytest.raises(OSError):
        plots.plot_curves(path, {"run": [history]}, "loss")
    assert path.read_bytes() == b"the previous figure"
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]


def test_no_file_is_written_around_the_atomic_writer():
    """cbn and the examples write files only through cbn._files (the search log appends to
    its own file; downloads are renamed into place when whole)."""
    import re
    allowed = {"cbn/_files.py", "cbn/lab/search_log.py", "cbn/data/fetch.py"}
    pattern = re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]|\.write_(text|bytes)\(|"
                         r"savefig\((?!f,)|np\.save|json\.dump\(|to_csv\(|imsave\(")
    found = []
    for path in sorted([*(ROOT / "cbn").rglob("*.py"), *(ROOT / "examples").glob("*.py")]):
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if name not in allowed and pattern.search(line.split("#")[0]):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# -- sizes that do not fit -------------------------------------------------------------------


@pytest.mark.parametrize("width", ["99999999999", "1" + "0" * 40])
def test_a_network_too_large_for_memory_is_one_line_before_any_data(capsys, monkeypatch,
                                                                     width):
    monkeypatch.setattr(cli, "open_data", lambda *a, **k: pytest.fail("data was read"))
    status, _, err = run_cli(capsys, "train", "--hidden", "50", width)
    assert status == 2
    assert error_line(err).startswith(f"cbn: error: --hidden 50 {width}: the network does not "
                                      "fit in memory (it needs at least ")


def test_memory_running_out_names_the_option_of_each_command(capsys, monkeypatch, tmp_path):
    error = None
    try:
        np.empty(2 ** 50, dtype=np.float64)
    except MemoryError as exc:  # numpy's, with the shape and dtype it asked for
        error = exc

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(cli, "run", fail)
    status, _, err = run_cli(capsys, "train", "--hidden", "30", *QUICK)
    assert status == 2
    assert error_line(err) == ("cbn: error: --hidden 30: does not fit in memory "
                               "(8 PiB could not be allocated)")
    Network(3072, [5], 10).save(tmp_path / "net.npz")
    monkeypatch.setattr(Network, "load", fail)
    status, _, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "net.npz"))
    assert status == 2
    assert error_line(err).startswith(f"cbn: error: --model {tmp_path / 'net.npz'}: does not "
                                      "fit in memory")


def test_a_thread_count_beyond_a_c_int_is_refused(capsys):
    status, _, err = run_cli(capsys, "train", "--blas-threads", "1" + "0" * 30)
    assert status == 2 and "argument --blas-threads: must be at most 2147483647" in err


# -- ~ in paths ------------------------------------------------------------------------------


def test_tilde_is_the_home_folder_for_save_load_checkpoints_and_files(tmp_path):
    home = tmp_path / "home"
    net = Network(4, [3], 2, seed=0)
    net.save("~/net.npz")
    assert (home / "net.npz").is_file()
    assert np.array_equal(Network.load("~/net.npz").flat_params, net.flat_params)
    X = np.random.default_rng(0).standard_normal((20, 4))
    y = np.arange(20) % 2
    fit(net, X, y, lam=0.0, batch_size=10, epochs=1, schedule=0.01, seed=0, progress=False,
        checkpoint="~/run.npz")
    assert load_checkpoint("~/run.npz").step == 2
    with pytest.raises(CheckpointError, match="belongs to a different run"):  # found it
        fit(net, X, y, lam=0.0, batch_size=10, epochs=2, schedule=0.01, seed=0,
            progress=False, checkpoint="~/run.npz", resume=True)
    write_text("~/notes.txt", "x")
    assert (home / "notes.txt").read_text() == "x"
    assert not (tmp_path / "work" / "~").exists()


def test_tilde_in_the_command_line_and_the_examples(capsys, tmp_path):
    home = tmp_path / "home"
    status, _, err = run_cli(capsys, "train", *QUICK, "--save", "~/net.npz", "--out",
                             "~/scores.json")
    assert status == 0, err
    assert (home / "net.npz").is_file() and (home / "scores.json").is_file()
    status, out, err = run_cli(capsys, "evaluate", "--model", "~/net.npz")
    assert status == 0, err
    assert parse("~/results/demo").out == str(home / "results" / "demo")
    assert not (tmp_path / "work" / "~").exists()


# -- damaged results files -------------------------------------------------------------------


def _document() -> dict:
    return {
        "bn": {"test_accuracy": {"mean": 0.5, "std": 0.01, "values": [0.49, 0.51]},
               "val_accuracy": 0.5},
        "meta": {"example": "three_layer", "quick": False, "options": {"quick": False},
                 "command": "python three_layer.py", "started": "2026-01-01T00:00:00+00:00",
                 "finished": "2026-01-01T00:01:00+00:00",
                 "data": {"source": "sample", "protocol": "full", "train": 2000, "val": 500,
                          "test": 1000},
                 "machine": {"platform": "Linux", "cpu": "x", "cores": 2, "usable_cores": 2,
                             "blas": [{"internal_api": "openblas", "version": "0.3",
                                       "num_threads": 2, "threading_layer": "pthreads"}]},
                 "seeds": [0, 1], "wall_time": 60.0, "training_time": 50.0,
                 "load_average_start": [0.1, 0.2, 0.3], "load_average_end": [0.1, 0.2, 0.3],
                 "reused_runs": {"bn": [0]},
                 "run_wall_times": {"bn": [{"seed": 0, "wall_time": 25.0},
                                           {"seed": 1, "wall_time": 25.0}]}}}


def _results(tmp_path: Path, document, text: str = None) -> Path:
    folder = tmp_path / "results" / "three_layer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(text if text is not None else json.dumps(document))
    return tmp_path / "results"


def _damaged(field: str, value):
    document = _document()
    *parents, last = field.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


DAMAGED = [
    ("meta", [], "meta must be an object, got a list"),
    ("meta.data", [], "meta.data must be an object, got a list"),
    ("meta.data", "sample", "meta.data must be an object, got text"),
    ("meta.data.source", ["sample"], "meta.data.source must be text or a number, got a list"),
    ("meta.training_time", "50 s", "meta.training_time must be a number, got text"),
    ("meta.wall_time", None, "meta.wall_time must be a number, got null"),
    ("meta.options", [], "meta.options must be an object, got a list"),
    ("meta.machine", "x", "meta.machine must be an object, got text"),
    ("meta.machine.blas", [1], "meta.machine.blas[0] must be an object, got a number"),
    ("meta.seeds", {"0": 0}, "meta.seeds must be a list, got an object"),
    ("meta.reused_runs", {"bn": 0}, "meta.reused_runs.bn must be a list, got a number"),
    ("meta.run_wall_times", {"bn": [{"seed": 0}]},
     "meta.run_wall_times.bn[0].wall_time must be a number, got null"),
    ("meta.run_wall_times", {"bn": ["25"]},
     "meta.run_wall_times.bn[0] must be an object, got text"),
    ("bn.test_accuracy", "high", "bn.test_accuracy must be a number or null, got text"),
    ("bn.test_accuracy", {"std": 0.0}, "bn.test_accuracy has no 'mean'"),
    ("bn.test_accuracy", {"mean": 0.5, "values": [0.4, 0.6]}, "bn.test_accuracy has no 'std'"),
    ("bn.test_accuracy", {"mean": 0.5, "values": 0.5},
     "bn.test_accuracy.values must be a list, got a number"),
    ("bn.test_accuracy", {"mean": 0.5, "std": "0", "values": [0.4, 0.6]},
     "bn.test_accuracy.std must be a number or null, got text"),
    ("bn.test_accuracy", {"mean": 0.5, "std": 0.1, "values": [0.4, [0.6]]},
     "bn.test_accuracy.values[1] must be a number or null, got a list"),
]


@pytest.mark.parametrize("field, value, message", DAMAGED)
def test_a_damaged_results_file_is_one_line_naming_the_file_and_field(capsys, tmp_path, field,
                                                                       value, message):
    results = _results(tmp_path, _damaged(field, value))
    path = results / "three_layer" / "results.json"
    status, _, err = run_cli(capsys, "report", "--results", str(results))
    assert status == 2
    assert error_line(err) == f"cbn: error: {path}: {message}"
    assert report_main(["--results", str(results)]) == 1
    assert capsys.readouterr().err.strip() == f"cbn-report: {path}: {message}"
    assert not (results / "REPORT.md").exists()


@pytest.mark.parametrize("text, message", [
    ('[{"meta": {}}]', "not a cbn results file: it holds a list, not an object"),
    ('{"meta": {}, "bn": {"val_accuracy": 1' + "0" * 400 + "}}",
     "bn.val_accuracy is too large a number"),
    ('{"meta": {"wall_time": 1' + "0" * 400 + "}}", "meta.wall_time is too large a number"),
    ('{"meta": ' + "[" * 100000 + "]" * 100000 + "}", "not a readable results file"),
])
def test_results_files_that_no_report_can_read_are_refused(capsys, tmp_path, text, message):
    results = _results(tmp_path, None, text)
    status, _, err = run_cli(capsys, "report", "--results", str(results))
    assert status == 2
    assert error_line(err).startswith(f"cbn: error: {results / 'three_layer' / 'results.json'}"
                                      f": {message}")


def test_missing_fields_nan_and_null_metrics_still_make_a_report(capsys, tmp_path):
    document = {"bn": {"test_accuracy": {"mean": None, "std": None, "values": [None, 0.5]}},
                "final": {"test_accuracy": float("nan")}, "meta": {}}
    results = _results(tmp_path, document)
    status, _, err = run_cli(capsys, "report", "--results", str(results))
    assert status == 0, err
    assert "## Targets" in (results / "REPORT.md").read_text(encoding="utf-8")
    check_results(Path("x.json"), copy.deepcopy(_document()))  # the writer's own form passes

"""Search results files are only ever appended to (any other file is refused and left as it
was), read with every line end, and written by one search at a time; worker processes end
with their search however it ends."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import cbn
from cbn.lab import search as search_module
from cbn.lab.search import search

from test_examples import EXAMPLES, environment
from test_search import BASE, SPACE, trial_lines, without_time

HERE = Path(__file__).parent
# Subprocesses import the cbn under test, whatever folder they run in.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
    if p)}


def run_search(path, n_trials=2, **kwargs):
    options = dict(base=BASE, seed=3, executor="serial", results=path, progress=False)
    return search("sample", SPACE, n_trials, **{**options, **kwargs})


def no_trial_may_run(monkeypatch):
    monkeypatch.setattr(search_module, "run", lambda *a, **k: pytest.fail("a trial ran"))


def counting_runs(monkeypatch) -> list:
    """The seeds of the trials run from now on."""
    calls = []
    real_run = search_module.run
    monkeypatch.setattr(search_module, "run",
                        lambda *args, **kw: calls.append(args[2]) or real_run(*args, **kw))
    return calls


def split_lines(raw: bytes) -> list:
    return [line for line in re.split(rb"\r\n|\r|\n", raw) if line]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished two-trial search: (its file's bytes, its header line, its records)."""
    path = tmp_path_factory.mktemp("saved") / "s.jsonl"
    records = run_search(path)
    raw = path.read_bytes()
    return raw, raw.split(b"\n")[0], records


def other_header(header: bytes) -> bytes:
    """The header line of the same search with another seed."""
    return json.dumps({**json.loads(header), "seed": 4}).encode()


# --- a results file is only appended to ------------------------------------------------------

NOT_RESULTS = {
    "json-dump": (b'{"lr": 0.1, "hidden": [50, 50]}', "is not a cbn search results file"),
    "note": (b"lambda 1e-3 looked best", "line 1 is not JSON"),
    "white-space": (b" \n\t\r\n  ", "holds only white space"),
    "binary": (b"\x00\x01\xfe\xff\x00", "line 1: not UTF-8"),
    "other-header": (None, "holds a different search"),
    "other-header-cut-off": (None, "line 1 is not JSON"),
}


@pytest.mark.parametrize("kind", NOT_RESULTS)
def test_a_file_that_is_not_a_results_file_of_this_search_is_refused_and_kept(
        tmp_path, monkeypatch, saved, kind):
    content, message = NOT_RESULTS[kind]
    if kind == "other-header":
        content = other_header(saved[1])  # as a kill before its line end would leave it
    elif kind == "other-header-cut-off":
        content = other_header(saved[1])[:60]
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    no_trial_may_run(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        run_search(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize("cut", [40, -1], ids=["mid-header", "before-line-end"])
def test_only_a_cut_off_header_of_this_very_search_is_written_again(tmp_path, monkeypatch,
                                                                    saved, cut):
    raw, header, records = saved
    path = tmp_path / "s.jsonl"
    path.write_bytes(other_header(header)[:cut])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        run_search(path)
    path.write_bytes((header + b"\n")[:cut])
    calls = counting_runs(monkeypatch)
    run_search(path)
    assert len(calls) == 2 and path.read_bytes().split(b"\n")[0] == header


def test_an_unended_last_line_that_is_not_a_record_is_refused_and_kept(tmp_path, monkeypatch,
                                                                       saved):
    path = tmp_path / "s.jsonl"
    content = saved[0] + b"my notes on this search"
    path.write_bytes(content)
    no_trial_may_run(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": line 4 is not JSON"):
        run_search(path)
    assert path.read_bytes() == content


# One trial of the search of ``run_search``, saved to sys.argv[1].
ONE_TRIAL = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_search import BASE, SPACE
    from cbn.lab.search import search
    search("sample", SPACE, 1, base=BASE, seed=3, executor="serial", results=sys.argv[1],
           progress=False)
""")


def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it waits for a writer: in a subprocess, with a timeout
    done = subprocess.run([sys.executable, "-c", ONE_TRIAL, str(fifo), str(HERE)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"ValueError: {fifo} is not a regular file" in done.stderr


# --- line ends -------------------------------------------------------------------------------

@pytest.mark.parametrize("ends", [(b"\r", b"\r", b"\r"), (b"\r\n", b"\r", b"\n")],
                         ids=["cr", "mixed"])
def test_records_are_read_whatever_their_line_ends(tmp_path, monkeypatch, saved, ends):
    raw, header, records = saved
    lines = raw.split(b"\n")[:-1]
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(line + end for line, end in zip(lines, ends)))
    with monkeypatch.context() as patch:
        no_trial_may_run(patch)
        assert run_search(path) == records
    calls = counting_runs(monkeypatch)
    longer = run_search(path, 3)
    assert len(calls) == 1 and longer[:2] == records
    assert [json.loads(line)["trial"] for line in split_lines(path.read_bytes())[1:]] \
        == [0, 1, 2]
    no_trial_may_run(monkeypatch)
    assert run_search(path, 3) == longer


def test_a_last_record_without_a_line_end_is_kept_and_ended(tmp_path, monkeypatch, saved):
    raw, header, records = saved
    path = tmp_path / "s.jsonl"
    path.write_bytes(raw.rstrip(b"\n"))  # e.g. saved by an editor that drops it
    calls = counting_runs(monkeypatch)
    longer = run_search(path, 3)
    assert len(calls) == 1 and longer[:2] == records
    assert [r["trial"] for r in trial_lines(path)] == [0, 1, 2]


# --- one search at a time --------------------------------------------------------------------

# The search of ``run_search`` on sys.argv[1]; its trials wait for the file sys.argv[2].
GATED_SEARCH = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[3])
    import cbn.lab.search
    from test_search import BASE, SPACE
    real_run = cbn.lab.search.run
    def gated_run(*args, **kwargs):
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.01)
        return real_run(*args, **kwargs)
    cbn.lab.search.run = gated_run
    cbn.lab.search.search("sample", SPACE, 2, base=BASE, seed=3, executor="serial",
                      results=sys.argv[1], progress=False)
""")


def start_gated_search(path: Path, gate: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GATED_SEARCH, str(path), str(gate),
                             str(HERE)], cwd=path.parent, env=ENV, stderr=subprocess.PIPE,
                            text=True)


def test_a_second_search_on_a_results_file_in_use_is_refused(tmp_path, monkeypatch, saved):
    path, gate = tmp_path / "r.jsonl", tmp_path / "go"
    first = start_gated_search(path, gate)
    try:
        deadline = time.monotonic() + 120
        while not (path.exists() and path.read_bytes().endswith(b"\n")) \
                and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read()
        header = path.read_bytes()
        second = start_gated_search(path, tmp_path)  # its gate is open
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert f"ValueError: {path} is in use by another search (pid {first.pid})" in err
        assert path.read_bytes() == header
        gate.touch()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        first.kill()
        first.wait()
    no_trial_may_run(monkeypatch)
    assert without_time(run_search(path)) == without_time(saved[2])


# --- worker processes end with the search ----------------------------------------------------

# A long search on two worker processes, saved to sys.argv[1].
POOL_SEARCH = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_search import BASE, SPACE
    from cbn.lab.search import search
    search("sample", SPACE, 500, base=BASE, seed=3, executor="processes", max_workers=2,
           results=sys.argv[1], progress=False)
""")


def stop_when_a_trial_is_saved(child: subprocess.Popen, path: Path, sig: int) -> list:
    """Send ``sig`` to ``child`` once ``path`` holds a trial and wait for it to end; return
    its descendants as they were before the signal."""
    try:
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline and \
                not (path.exists() and trial_lines(path)):
            time.sleep(0.005)
        assert child.poll() is None, "the search ended before it could be stopped"
        assert path.exists() and trial_lines(path), "no trial was saved"
        descendants = psutil.Process(child.pid).children(recursive=True)
        child.send_signal(sig)
        child.wait(timeout=60)
        return descendants
    finally:
        if child.poll() is None:
            for process in psutil.Process(child.pid).children(recursive=True):
                process.kill()
            child.kill()
            child.wait()


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an ended process its new parent has not reaped yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_end(processes: list) -> None:
    deadline = time.monotonic() + 60
    while any(map(running, processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [process for process in processes if running(process)]
    for process in alive:
        process.kill()
    assert not alive, f"{len(alive)} process(es) outlived the search: " \
        f"{[process.cmdline() for process in alive]}"


def start(args: list, cwd: Path, env: dict) -> subprocess.Popen:
    """Start ``args`` with stdout and stderr to files in ``cwd`` (a pipe would stay open as
    long as any child holds it)."""
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["SIGTERM", "SIGKILL"])
def test_workers_end_with_a_stopped_search_and_its_trials_are_kept(tmp_path, monkeypatch,
                                                                   sig, status):
    path = tmp_path / "r.jsonl"
    child = start([sys.executable, "-c", POOL_SEARCH, str(path), str(HERE)], tmp_path, ENV)
    assert_all_end(stop_when_a_trial_is_saved(child, path, sig))
    err = (tmp_path / "stderr.txt").read_text()
    assert child.returncode == status and "Traceback" not in err, err
    finished = {r["trial"] for r in trial_lines(path)}
    calls = counting_runs(monkeypatch)
    records = run_search(path, max(finished) + 1)
    assert len(calls) == max(finished) + 1 - len(finished)  # the saved trials are reused
    assert all(r["status"] == "ok" for r in records)


def test_ctrl_c_stops_the_lambda_search_example_with_one_line(tmp_path):
    out = tmp_path / "out"
    child = start([sys.executable, str(EXAMPLES / "lambda_search.py"), "--blas-threads", "1",
                   "--coarse", "500", "--fine", "1", "--runs", "1", "--workers", "2",
                   "--no-progress", "--out", str(out)], tmp_path, environment(tmp_path))
    assert_all_end(stop_when_a_trial_is_saved(
        child, out.with_name("out.partial") / "coarse.jsonl", signal.SIGINT))
    err = (tmp_path / "stderr.txt").read_text()
    assert child.returncode == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lambda_search: interrupted") and "resume with: " in last, err


def test_a_results_file_named_from_the_home_folder_is_written_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run_search("~/s.jsonl", n_trials=1)
    assert (tmp_path / "s.jsonl").is_file() and not (tmp_path / "~").exists()

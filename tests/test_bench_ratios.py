"""The benchmarks' table of ratios and noise verdict (tests/bench_table.py), its two outlets
(the summary of ``pytest --benchmark-only`` in tests/conftest.py and scripts/bench_ratios.py),
the deselection of timed benchmarks from a plain run, and scripts/bench_fit.py."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench_table
import conftest
from bench_table import CaseResult

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_ratios = script("bench_ratios")
STEADY = [1.0, 1.0, 1.05, 0.95, 1.0]   # a bound whose rounds agree (IQR/median 5 %)


# -- ratios ----------------------------------------------------------------------------------

def test_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    result = CaseResult("c", {"cbn": [1.0, 2.0, 4.0], "gemm": [1.0, 1.0, 8.0]})
    assert result.ratio("gemm") == 1.0       # rounds: 1, 2, 0.5
    assert result.seconds() == 2.0 and result.seconds("gemm") == 1.0


def test_a_machine_slowing_down_for_both_contenders_leaves_the_ratio_unchanged():
    gemm = [1.0, 1.5, 2.0, 3.0, 4.0]
    result = CaseResult("c", {"cbn": [2 * t for t in gemm], "gemm": gemm})
    assert result.ratio("gemm") == pytest.approx(2.0)


def test_a_missing_contender_has_no_ratio_and_a_dash_in_the_table():
    result = CaseResult("c", {"cbn": [1.0], "gemm": [0.5], "numpy": [4.0]})
    assert result.ratio("torch") is None
    assert bench_table.rows([result])[0] == ["c", "1000.00", "-", "-", "2.00", "-", "0.25",
                                             "-", "-", "-", "1", "0%", "ok"]


# -- noise verdict ---------------------------------------------------------------------------

@pytest.mark.parametrize("gemm, noisy", [
    (STEADY, False),
    ([1.0, 1.0, 1.0, 1.0, 3.0], False),    # one slow round: IQR 0, the median holds
    ([1.0, 1.0, 1.0, 1.5, 1.5], True),     # IQR/median 0.5
    ([1.0, 1.0, 1.0, 1.2, 1.2], False),    # IQR/median exactly 0.2: the limit is not passed
    ([1.0, 1.0, 1.0, 1.25, 1.25], True),
])
def test_a_case_is_noisy_when_its_bound_spreads_by_more_than_the_limit(gemm, noisy):
    result = CaseResult("c", {"cbn": [1.0] * len(gemm), "gemm": gemm})
    assert result.noisy() is noisy
    assert bench_table.rows([result])[0][-1] == ("NOISY" if noisy else "ok")


def test_the_spread_is_interquartile_range_over_median():
    result = CaseResult("c", {"cbn": [1.0] * 5, "gemm": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert result.bound_spread() == pytest.approx((4.0 - 2.0) / 3.0)


def test_a_case_without_a_bound_cannot_be_trusted():
    assert CaseResult("c", {"cbn": [1.0], "numpy": [2.0]}).noisy()


def test_the_run_is_too_noisy_to_trust_when_any_case_is():
    steady = CaseResult("steady", {"cbn": STEADY, "gemm": STEADY})
    shaky = CaseResult("shaky", {"cbn": STEADY, "gemm": [1.0, 1.0, 1.0, 2.0, 2.0]})
    assert bench_table.verdict([steady]).startswith("Run trustworthy")
    line = bench_table.verdict([steady, shaky])
    assert "TOO NOISY TO TRUST: 1 of 2 cases noisy" in line
    assert "IQR/median" in line and "20%" in line
    assert bench_table.to_json([steady, shaky])["noisy_cases"] == ["shaky"]


@pytest.mark.parametrize("rounds, message", [
    ({"gemm": [1.0]}, "no cbn timings"),
    ({"cbn": [1.0, 1.0], "gemm": [1.0]}, "same number"),
    ({"cbn": [], "gemm": []}, "same number"),
    ({"cbn": [1.0, 0.0]}, "positive finite"),
    ({"cbn": [1.0], "gemm": [float("nan")]}, "positive finite"),
])
def test_timings_that_cannot_give_ratios_are_refused(rounds, message):
    with pytest.raises(ValueError, match=message):
        CaseResult("c", rounds)


def test_a_thread_pool_line_leaves_out_what_threadpoolctl_does_not_know():
    pool = {"internal_api": "openmp", "version": None, "architecture": None, "num_threads": 2,
            "filepath": "/x/libgomp.so.1"}
    assert bench_table.blas_line(pool) == "openmp, 2 threads: /x/libgomp.so.1"


# -- outlets ---------------------------------------------------------------------------------

def benchmark_json(tmp_path, cases, name="bench.json"):
    """A pytest-benchmark JSON whose entries carry ``case`` and ``rounds`` as the suite
    stores them, plus an entry without them."""
    blas = [{"internal_api": "openblas", "version": "0.3.34", "num_threads": 2,
             "architecture": "SkylakeX", "filepath": "/x/libscipy_openblas.so"}]
    benchmarks = [{"group": case, "extra_info": {"case": case, "rounds": rounds, "blas": blas}}
                  for case, rounds in cases.items()]
    benchmarks.append({"group": "other", "extra_info": {}})
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


CASES = {"epoch": {"cbn": [1.1, 1.2, 1.0], "gemm": [1.0, 1.0, 1.0], "numpy": [2.0, 2.4, 2.0]},
         "evaluate": {"cbn": [3.0, 3.0, 3.0], "gemm": [1.0, 2.0, 1.0]}}


def test_the_script_prints_the_table_the_run_printed(tmp_path, capsys):
    path = benchmark_json(tmp_path, CASES)
    results = bench_table.from_benchmarks(json.loads(path.read_text())["benchmarks"])
    assert [r.case for r in results] == ["epoch", "evaluate"]
    assert bench_ratios.main([str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert bench_table.format_table(results, markdown=True) in out
    assert "| epoch | 1100.00 | - | - | 1.10 | - | 0.50 | - | - | - | 3 | 0% | ok |" in out
    assert "| evaluate | 3000.00 | - | - | 3.00 | - | - | - | - | - | 3 | 50% | NOISY |" in out
    assert "1 of 2 cases noisy" in out
    assert "# openblas 0.3.34 (SkylakeX), 2 threads" in out


@pytest.mark.parametrize("content", ["[]", '{"machine_info": {}}'])
def test_a_file_that_is_not_a_benchmark_json_is_an_error(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert bench_ratios.main([str(path)]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_a_benchmark_json_without_rounds_is_an_error(tmp_path, capsys):
    path = benchmark_json(tmp_path, {})
    assert bench_ratios.main([str(path)]) == 1
    assert "no benchmark with per-round timings" in capsys.readouterr().err


class Reporter:
    def __init__(self):
        self.lines = []

    def write_sep(self, sep, title):
        self.lines.append(title)

    def write_line(self, line):
        self.lines.append(line)


def fake_config(tmp_path, options, results=()):
    config = SimpleNamespace(stash={conftest._RESULTS: list(results),
                                    conftest._LOAD: (1.0, 2.0, 3.0)},
                             getoption=lambda name, default=None: options.get(name, default),
                             deselected=[])
    config.hook = SimpleNamespace(pytest_deselected=lambda items: config.deselected.extend(items))
    return config


def test_the_summary_prints_the_table_and_writes_it_beside_the_benchmark_json(tmp_path):
    results = [CaseResult(case, rounds) for case, rounds in CASES.items()]
    config = fake_config(tmp_path, {"benchmark_json": tmp_path / "run.json"}, results)
    reporter = Reporter()
    conftest.pytest_terminal_summary(reporter, config)
    text = "\n".join(reporter.lines)
    assert bench_table.format_table(results) in text
    assert "load average (1, 5, 15 min): 1.00, 2.00, 3.00 at start" in text
    markdown = (tmp_path / "run.ratios.md").read_text()
    assert markdown.strip() == bench_table.format_table(results, markdown=True)
    data = json.loads((tmp_path / "run.ratios.json").read_text())
    assert data["noisy"] is True and data["noisy_cases"] == ["evaluate"]
    assert data["load_average_start"] == [1.0, 2.0, 3.0]
    assert [(c["case"], c["ratios"]["gemm"], c["noisy"]) for c in data["cases"]] == [
        ("epoch", pytest.approx(1.1), False), ("evaluate", 3.0, True)]


def item(name, fixtures):
    return SimpleNamespace(name=name, fixturenames=fixtures)


@pytest.mark.parametrize("options, kept", [
    ({}, ["check", "plain"]),
    ({"benchmark_only": True}, ["timed"]),
    ({"benchmark_enable": True}, ["check", "timed", "plain"]),
])
def test_a_plain_run_deselects_the_timed_benchmarks_and_a_benchmark_run_the_rest(
        tmp_path, options, kept):
    items = [item("check", ["request"]), item("timed", ["benchmark", "request"]),
             item("plain", [])]
    config = fake_config(tmp_path, options)
    conftest.pytest_collection_modifyitems(config, items)
    assert [i.name for i in items] == kept
    assert {i.name for i in config.deselected} == {"check", "timed", "plain"} - set(kept)


def test_a_system_without_load_averages_gets_an_empty_record(monkeypatch):
    monkeypatch.delattr(conftest.os, "getloadavg")
    assert conftest._load_average() == ()


# -- scripts/bench_fit.py ---------------------------------------------------------------------

def test_the_fit_script_prints_each_contenders_time_and_the_ratios(capsys):
    """A smoke run (one short round, one busy process): the line's cells, not timings."""
    bench_fit = script("bench_fit")
    assert bench_fit.main(["--rows", "200", "--batch", "100", "--rounds", "1",
                           "--busy", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("[50, 50] b100 float32 200 rows, 1 busy:")
    times, ratios = line.split(": ", 1)[1].split("; ")
    assert [t.split()[0] for t in times.split(", ")] == ["cbn", "numpy", "gemm", "gemm+rows"]
    assert all(float(t.split()[1]) > 0 for t in times.split(", "))
    assert [r.split()[0] for r in ratios.split(", ")] == ["cbn/numpy", "cbn/gemm",
                                                         "cbn/gemm+rows"]
    assert all(float(r.split()[1]) > 0 for r in ratios.split(", "))


def test_the_fit_script_refuses_rows_that_are_not_whole_batches():
    with pytest.raises(SystemExit):
        script("bench_fit").main(["--rows", "150", "--batch", "100"])

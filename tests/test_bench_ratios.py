"""scripts/bench_ratios.py (cbn's time over each contender's, per group, from benchmark JSONs)
and scripts/bench_alternate.py (the same ratios with the contenders timed in alternation)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_ratios = script("bench_ratios")


def run_json(tmp_path, name, times, threads=2):
    """A pytest-benchmark JSON with one group "step" and the given median seconds."""
    benchmarks = [{"group": "step", "params": {"contender": c},
                   "stats": {"median": t, "min": t / 2, "mean": t},
                   "extra_info": {"blas": [{"internal_api": "openblas", "version": "0.3.34",
                                            "num_threads": threads, "architecture": "Haswell",
                                            "filepath": "/x/libscipy_openblas.so"}]}}
                  for c, t in times.items()]
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return str(path)


def test_ratios_divide_cbn_by_each_contender(tmp_path, capsys):
    path = run_json(tmp_path, "a.json", {"cbn": 1.0, "numpy": 2.0, "gemm": 0.8})
    assert bench_ratios.main([path]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("step"))
    assert row.split()[1:5] == ["1000.000", "0.50", "-", "1.25"]
    assert "openblas 0.3.34 (Haswell), 2 threads" in out


def test_several_runs_keep_each_contenders_best_time(tmp_path, capsys):
    a = run_json(tmp_path, "a.json", {"cbn": 1.0, "numpy": 2.0})
    b = run_json(tmp_path, "b.json", {"cbn": 3.0, "numpy": 1.5})
    assert bench_ratios.main([a, b, "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| step | 1000.000 | 0.67 | - | - |" in out
    assert "best median of 2 runs" in out


@pytest.mark.parametrize("content", ["[]", '{"machine_info": {}}'])
def test_a_file_that_is_not_a_benchmark_json_is_an_error(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert bench_ratios.main([str(path)]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_alternating_runs_print_one_row_of_within_round_ratios_per_case(capsys):
    """A smoke run (two short rounds): the row and its median [quartile] cells, not timings."""
    bench_alternate = script("bench_alternate")
    assert bench_alternate.main(["--rounds", "2", "--cases", "3-layer BN b20",
                                 "--dtypes", "float32", "--block", "0.01",
                                 "--pause", "0"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("step 3-layer BN b20"))
    cells = [cell.strip() for cell in row.split("|")]
    assert float(cells[1]) > 0 and "cbn/gemm" in out
    for cell in cells[2:]:
        median, spread = cell.split(" ", 1)
        low, high = (float(x) for x in spread.strip("[]").split("-"))
        assert low <= float(median) <= high

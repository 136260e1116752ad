"""scripts/bench_ratios.py: cbn's time over each contender's, per group, from benchmark JSONs."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_ratios.py"
spec = importlib.util.spec_from_file_location("bench_ratios", SCRIPT)
bench_ratios = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_ratios)


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

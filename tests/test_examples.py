"""The examples end to end: each runs with --quick on the shipped sample (in a temporary
folder, as a user would run it) and writes well-formed results.json, PNG figures and a
summary.md with a table; the report gathers them into REPORT.md."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cbn
from cbn.experiment import QUICK_POINTS_PER_CYCLE
from cbn.report import REFERENCE_NUMBERS, main as report_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The examples must import the cbn under test (installed, or this source tree when it is
# what pytest imported), never a source checkout without its compiled extension.
PACKAGE_PARENT = str(Path(cbn.__file__).resolve().parents[1])
# Every example, with extra options that switch on its optional code paths.
RUNS = {
    "gradient_check": [],
    "three_layer": [],
    "deep_network": ["--depths", "9", "6"],
    "lambda_search": [],
    "sensitivity": ["--with-1e-5"],
    "bonus": [],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACCURACY_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")


def environment(home: Path) -> dict:
    """Run from a checkout with no CIFAR-10 to be found, so the examples fall back to the
    shipped sample (never /work/shared or the user's own data)."""
    env = dict(os.environ)
    env.update(PYTHONPATH=PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", ""), HOME=str(home),
               CBN_DATA=str(home / "no-cifar-here"), MPLBACKEND="Agg")
    return env


def run_example(name: str, args, cwd: Path, **kwargs) -> subprocess.Popen:
    """Start an example with one BLAS thread (two run at once on two cores)."""
    return subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), "--blas-threads",
                             "1", *args], cwd=cwd,
                            env=environment(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Run every example with --quick (two at a time, the machine has two cores); return
    the results folder and each example's (return code, stderr)."""
    work = tmp_path_factory.mktemp("examples")
    results = work / "results"
    done = {}
    names = list(RUNS)
    for i in range(0, len(names), 2):
        procs = {name: run_example(name, ["--quick", "--out", str(results / name),
                                          *RUNS[name]], work) for name in names[i:i + 2]}
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=300)
            done[name] = (proc.returncode, stderr)
    return work, results, done


def load(results: Path, name: str) -> dict:
    return json.loads((results / name / "results.json").read_text(encoding="utf-8"))


def assert_accuracy(value) -> None:
    if isinstance(value, dict):
        assert set(value) == {"mean", "std", "values"}
        assert value["values"] and all(0.0 <= v <= 1.0 for v in value["values"])
        assert min(value["values"]) <= value["mean"] <= max(value["values"])
        assert value["std"] >= 0.0
    else:
        assert isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.parametrize("name", list(RUNS))
def test_example_succeeds_on_the_sample_with_a_notice(outputs, name):
    _, _, done = outputs
    returncode, stderr = done[name]
    assert returncode == 0, stderr[-3000:]
    assert "shipped sample" in stderr and "NOTICE" in stderr


@pytest.mark.parametrize("name", list(RUNS))
def test_results_json_records_metrics_and_provenance(outputs, name):
    _, results, _ = outputs
    document = load(results, name)
    meta = document.pop("meta")
    assert document, "no configuration recorded"
    assert meta["example"] == name and name in meta["command"] and "--quick" in meta["command"]
    assert meta["data"]["source"] == "sample" and meta["data"]["train"] == 2000
    machine = meta["machine"]
    for key in ("platform", "cpu", "cores", "python", "numpy", "scipy", "cbn", "blas"):
        assert machine[key] not in (None, "")
    assert meta["wall_time"] > 0 and meta["seeds"] == [0]
    assert meta["started"] <= meta["finished"] and "load_average_start" in meta
    scored = 0
    for key, entry in document.items():
        present = [k for k in ACCURACY_KEYS if k in entry]
        if present:
            assert present == list(ACCURACY_KEYS), key
            for k in present:
                assert_accuracy(entry[k])
            scored += 1
        for run in entry.get("runs", []):
            assert run["wall_time"] > 0
            assert meta["run_wall_times"][key]
    assert scored or name == "gradient_check"


@pytest.mark.parametrize("name", list(RUNS))
def test_figures_are_nonempty_pngs_and_summary_has_a_table(outputs, name):
    _, results, _ = outputs
    figures = load(results, name)["meta"]["figures"]
    assert figures
    for figure in figures:
        data = (results / name / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    summary = (results / name / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# ")
    assert re.search(r"^\|.*\|\n\|(---\|)+$", summary, flags=re.MULTILINE)
    for figure in figures:
        assert f"]({figure})" in summary


def test_gradient_check_records_every_parameter_within_tolerance(outputs):
    _, results, _ = outputs
    document = load(results, "gradient_check")
    assert set(document) == {"3-layer/no_bn", "3-layer/bn", "9-layer/no_bn", "9-layer/bn",
                             "meta"}
    for key, entry in document.items():
        if key == "meta":
            continue
        names = {row["name"] for row in entry["table"]}
        layers = len(entry["hidden"]) + 1
        expected = {f"{p}{l}" for l in range(1, layers + 1) for p in "Wb"}
        if entry["batch_norm"]:
            expected |= {f"{p}{l}" for l in range(1, layers) for p in ("gamma", "beta")}
        assert names == expected
        assert entry["max_relative_error"] == max(r["max_relative_error"]
                                                  for r in entry["table"])
        assert entry["passed"] and entry["max_relative_error"] <= entry["tolerance"]


def test_gradient_check_exits_nonzero_when_an_error_exceeds_the_tolerance(tmp_path):
    proc = run_example("gradient_check", ["--quick", "--tolerance", "1e-30", "--out",
                                          str(tmp_path / "out")], tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-2000:]
    assert "FAILED" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")


def test_three_layer_curves_have_the_planned_points_per_cycle(outputs):
    _, results, _ = outputs
    entry = load(results, "three_layer")["bn"]
    history = entry["histories"][0]
    assert len(history["step"]) == QUICK_POINTS_PER_CYCLE * entry["config"]["cycles"]
    assert len(history["val_loss"]) == len(history["train_cost"]) == len(history["step"])


def test_deep_network_records_both_depths_with_and_without_bn(outputs):
    _, results, _ = outputs
    document = load(results, "deep_network")
    assert {"9-layer/bn", "9-layer/no_bn", "6-layer/bn", "6-layer/no_bn"} <= set(document)
    assert document["9-layer/bn"]["config"]["hidden"] == [50, 30, 20, 20, 10, 10, 10, 10]


def test_lambda_search_narrows_the_range_and_trains_the_best_lambda(outputs):
    _, results, _ = outputs
    document = load(results, "lambda_search")
    search = document["search"]
    low, high = search["fine_range"]
    assert 1e-5 <= low < high <= 1e-1
    assert all(1e-5 <= r["lam"] <= 1e-1 for r in search["coarse"])
    assert all(low <= r["lam"] <= high for r in search["fine"])
    best = max(search["coarse"] + search["fine"], key=lambda r: r["val_accuracy"])
    assert search["best_lam"] == best["lam"] == document["final"]["config"]["lam"]
    assert document["final"]["config"]["cycles"] == 3
    for stage in ("coarse", "fine"):
        assert (results / "lambda_search" / f"{stage}.jsonl").exists()
        assert_accuracy(document[f"{stage}/best"]["val_accuracy"])


def test_sensitivity_covers_every_sigma_and_bn_test_statistics(outputs):
    _, results, _ = outputs
    document = load(results, "sensitivity")
    for sigma in ("1e-1", "1e-3", "1e-4", "1e-5"):
        for variant in ("bn", "no_bn"):
            assert f"sigma={sigma}/{variant}" in document
        by_source = document[f"sigma={sigma}/bn"]["test_accuracy_by_bn_statistics"]
        assert {"running", "never updated", "batch (whole split)", "batch of 2"} <= set(by_source)
        for value in by_source.values():
            assert_accuracy(value)
        assert by_source["running"]["mean"] == document[f"sigma={sigma}/bn"]["test_accuracy"]["mean"]
        assert "test_accuracy_by_bn_statistics" not in document[f"sigma={sigma}/no_bn"]


def test_report_gathers_every_example_with_the_published_numbers(outputs):
    work, results, _ = outputs
    report = work / "REPORT.md"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "report.py"), "--results",
                           str(results), "--out", str(report)], cwd=work, env=environment(work),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text(encoding="utf-8")
    for reference in REFERENCE_NUMBERS:
        assert reference.published in text and reference.source in text
    for heading in ("Gradient check", "3-layer network", "Deep networks", "Searching λ",
                    "Sensitivity"):
        assert re.search(rf"^## {re.escape(heading)}", text, flags=re.MULTILINE), heading
    assert "n/a (protocol sample)" in text  # targets are only judged on the full protocol
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 5 and all((report.parent / link).is_file() for link in links)
    assert "openblas" in text.lower() or "blas" in text.lower()


def test_report_fails_clearly_without_results(tmp_path, capsys):
    assert report_main(["--results", str(tmp_path)]) == 1
    assert "run the examples first" in capsys.readouterr().err
    assert not (tmp_path / "REPORT.md").exists()


def test_examples_reject_bad_options(tmp_path):
    proc = run_example("three_layer", ["--runs", "0", "--out", str(tmp_path / "out")], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--runs must be >= 1" in stderr
    assert not (tmp_path / "out").exists()


def test_examples_refuse_a_data_folder_without_cifar10(tmp_path):
    proc = run_example("three_layer", ["--quick", "--data", str(tmp_path / "missing"), "--out",
                                       str(tmp_path / "out")], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "no CIFAR-10 at" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_rerunning_an_example_reuses_its_finished_runs(outputs):
    work, results, _ = outputs
    out = results / "three_layer"
    before = load(results, "three_layer")
    proc = run_example("three_layer", ["--quick", "--out", str(out)], work)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "reusing the finished run with seed 0" in stderr
    after = load(results, "three_layer")
    assert after["meta"]["reused_runs"] == {"no_bn": [0], "bn": [0]}
    for key in ("no_bn", "bn"):
        assert after[key]["runs"] == before[key]["runs"]
        assert after[key]["histories"] == before[key]["histories"]


def test_bonus_records_the_best_configuration_and_the_ablation(outputs):
    _, results, _ = outputs
    document = load(results, "bonus")
    for key in ("test_accuracy", "val_accuracy"):
        assert_accuracy(document[key])
    assert document["train_seconds"]["mean"] > 0
    assert document["best"]["config"]["hflip"] is True
    assert "baseline [50, 50]" in document and "flips" in document
    assert set(document["meta"]["figures"]) == {"loss.png", "accuracy.png",
                                                "accuracy_vs_time.png", "ablation.png"}

"""The examples end to end: each runs with --quick on the shipped sample (in a temporary
folder, as a user would run it) and writes well-formed results.json, PNG figures and a
summary.md with a table; the report gathers them into REPORT.md. The sensitivity example
also runs with its full budget on the sample, where its findings are robust enough to
assert."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn.data import load_sample
from cbn.lab import plots
from cbn.lab.experiment import QUICK_POINTS_PER_CYCLE
from cbn.lab.plots import runs_disagree
from cbn.lab.record import MARKER, ExampleRecord
from cbn.lab.report import REFERENCE_NUMBERS, main as report_main
from cbn.train import History

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
               MPLBACKEND="Agg")
    env.pop("CBN_DATA", None)
    return env


def run_example(name: str, args, cwd: Path, **kwargs) -> subprocess.Popen:
    """Start an example with one BLAS thread (two run at once on two cores)."""
    return subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), "--blas-threads",
                             "1", *args], cwd=cwd,
                            env=environment(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Run every example with --quick (two at a time, the machine has two cores) and its
    default output folder; return the work folder, the results folder (with one
    ``<name>-quick`` folder per example) and each example's (return code, stderr, stdout)."""
    work = tmp_path_factory.mktemp("examples")
    results = work / "results"
    done = {}
    names = list(RUNS)
    for i in range(0, len(names), 2):
        procs = {name: run_example(name, ["--quick", *RUNS[name]], work)
                 for name in names[i:i + 2]}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            done[name] = (proc.returncode, stderr, stdout)
    return work, results, done


def load(results: Path, name: str) -> dict:
    """The results.json of example ``name``'s quick run."""
    return json.loads((results / f"{name}-quick" / "results.json").read_text(encoding="utf-8"))


def assert_accuracy(value) -> None:
    if isinstance(value, dict):
        assert set(value) == {"mean", "std", "values"}
        assert value["values"] and all(0.0 <= v <= 1.0 for v in value["values"])
        assert min(value["values"]) <= value["mean"] <= max(value["values"])
        assert value["std"] >= 0.0
    else:
        assert isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.parametrize("name", list(RUNS))
def test_example_succeeds_on_the_sample_with_a_one_line_notice(outputs, name):
    _, _, done = outputs
    returncode, stderr, _ = done[name]
    assert returncode == 0, stderr[-3000:]
    notices = [line for line in stderr.splitlines() if "sample shipped with cbn" in line]
    assert len(notices) == 1 and notices[0].startswith(f"{name}: notice: ")
    assert "Warning" not in stderr and "load_or_sample(" not in stderr


@pytest.mark.parametrize("name", list(RUNS))
def test_quick_run_writes_its_own_folder_and_says_quick(outputs, name):
    _, results, done = outputs
    assert not (results / name).exists()
    assert not (results / f"{name}-quick.partial").exists()
    document = load(results, name)
    assert document["meta"]["quick"] is True
    summary = (results / f"{name}-quick" / "summary.md").read_text(encoding="utf-8")
    assert summary.splitlines()[0].endswith("(QUICK run)")
    assert "**Quick run**" in summary


@pytest.mark.parametrize("name", list(RUNS))
def test_summary_is_printed_at_the_end_without_progress_bars_in_logs(outputs, name):
    _, results, done = outputs
    _, stderr, stdout = done[name]
    summary = (results / f"{name}-quick" / "summary.md").read_text(encoding="utf-8")
    assert stdout.strip() == summary.strip()
    assert "\r" not in stderr and "\x1b" not in stderr  # stderr is a pipe, not a terminal


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
        data = (results / f"{name}-quick" / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    summary = (results / f"{name}-quick" / "summary.md").read_text(encoding="utf-8")
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
        assert (results / "lambda_search-quick" / f"{stage}.jsonl").exists()
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
    assert "n/a (quick run)" in text  # targets are only judged on full runs
    assert "QUICK run" in text and "sample" in text
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


def test_rerunning_an_example_reuses_its_finished_runs_and_drops_stale_files(outputs):
    work, results, _ = outputs
    out = results / "three_layer-quick"
    before = load(results, "three_layer")
    stale = [out / "stale.png", out / "runs" / "bn" / "seed7.json",
             out / "runs" / "gone" / "seed0.npz"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left over from another run")
    proc = run_example("three_layer", ["--quick"], work)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "reusing the finished run with seed 0" in stderr
    after = load(results, "three_layer")
    assert after["meta"]["reused_runs"] == {"no_bn": [0], "bn": [0]}
    for key in ("no_bn", "bn"):
        assert after[key]["runs"] == before[key]["runs"]
        assert after[key]["histories"] == before[key]["histories"]
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in (out / "runs" / "bn").iterdir()) == ["seed0.json",
                                                                      "seed0.npz"]
    assert not out.with_name(out.name + ".partial").exists()


def test_a_record_replaces_the_output_folder_only_when_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("demo\n")  # a previous results folder of this example
    (out / "old.png").write_bytes(b"from the previous run")
    args = argparse.Namespace(out=str(out), quick=False, seed=0)
    record = ExampleRecord("demo", args, load_sample())
    record.figure("new.png").write_bytes(PNG_MAGIC)
    record.add("config", {"value": 1.0})
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.png"]  # out untouched
    record.write("# Demo\n\nbody")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.png", "results.json",
                                                     "summary.md"]
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "out.old").exists()


def test_sensitivity_on_the_sample_shows_what_batch_norm_does(tmp_path):
    """With its full budget on the shipped sample (one seed): with BN every σ trains well
    above chance; without BN, σ = 1e-4 stays exactly at chance."""
    proc = run_example("sensitivity", ["--runs", "1", "--out", str(tmp_path / "out")],
                       tmp_path)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    document = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    for sigma in ("1e-1", "1e-3", "1e-4"):
        assert document[f"sigma={sigma}/bn"]["test_accuracy"]["mean"] > 0.25, sigma
    assert document["sigma=1e-1/no_bn"]["test_accuracy"]["mean"] > 0.25
    stuck = document["sigma=1e-4/no_bn"]
    assert abs(stuck["test_accuracy"]["mean"] - 0.10) < 0.01
    assert abs(stuck["test_loss"]["mean"] - np.log(10)) < 1e-3


def _history(values):
    return History(step=list(range(1, len(values) + 1)), val_loss=list(values))


def test_runs_that_end_apart_are_drawn_one_by_one():
    bimodal = [_history([2.3, 1.8, 1.3]), _history([2.3, 2.3026, 2.3026])]
    assert runs_disagree(bimodal, "val_loss")
    seed_noise = [_history([2.3, 1.8, 1.30]), _history([2.3, 1.7, 1.33])]
    assert not runs_disagree(seed_noise, "val_loss")
    stuck = [_history([2.30258, 2.30259, 2.30260]), _history([2.30258, 2.30257, 2.30256])]
    assert not runs_disagree(stuck, "val_loss")


def test_curves_leave_out_a_series_the_runs_did_not_record(tmp_path):
    """Validation only (no training-set scores): the figure has the validation line."""
    runs = [_history([2.3, 1.8, 1.3]), _history([2.3, 1.7, 1.2])]
    path = plots.plot_curves(tmp_path / "loss.png", {"no training scores": runs}, "loss")
    assert path.stat().st_size > 0


def test_bn_statistics_legend_leaves_the_bars_visible(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    accuracies = {f"σ = {s}": {"running": 0.53, "never updated": 0.39, "batch of 2": 0.2}
                  for s in ("1e-1", "1e-3", "1e-4", "1e-5")}
    plots.plot_bn_statistics(tmp_path / "bn.png", accuracies, title="data; 3 seeds")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))
    assert fig._suptitle.get_text() == "data; 3 seeds"


def test_figure_captions_state_data_seeds_and_quick(tmp_path):
    data = load_sample()
    full = ExampleRecord("demo", argparse.Namespace(out=str(tmp_path / "a"), quick=False,
                                                    seed=0), data)
    assert full.caption([0, 1, 2]) == ("CIFAR-10 shipped sample (2000 / 500 / 1000); "
                                       "3 seeds (0, 1, 2)")
    quick = ExampleRecord("demo", argparse.Namespace(out=str(tmp_path / "b"), quick=True,
                                                     seed=4), data)
    assert quick.caption().endswith("1 seed (4)\nQUICK run (tiny budget)")


def test_accuracies_of_runs_that_disagree_are_listed_one_by_one():
    from cbn.lab.tables import percent
    assert percent({"mean": 0.35, "std": 0.179, "values": [0.10, 0.4406, 0.5095]}) == \
        "10.00, 44.06, 50.95 (per run)"
    assert percent({"mean": 0.5343, "std": 0.0013, "values": [0.5331, 0.5338, 0.5361]}) == \
        "53.43 ± 0.13 (n=3)"


def test_published_results_link_only_files_that_exist():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs" / "results").glob("*/summary.md"))]
    for document in documents:
        text = document.read_text(encoding="utf-8")
        for link in re.findall(r"\]\(([^)\s#]+)\)", text):
            if "://" not in link:
                assert (document.parent / link).exists(), f"{document}: {link}"


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

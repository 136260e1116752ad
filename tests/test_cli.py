"""The ``cbn`` command: subcommands, arguments checked before any data is read, one-line
errors with exit status 2, a readable table or JSON on stdout, and an import from a source
tree without the compiled extension that says what to do."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn.lab import cli
from cbn.data import load_sample

from test_data import write_cifar  # a small CIFAR-10 folder in the official format

PACKAGE = Path(cbn.__file__).resolve().parent


@pytest.fixture(autouse=True)
def no_cifar_anywhere(tmp_path, monkeypatch):
    """No CIFAR-10 to be found: every command falls back to the shipped sample."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CBN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def run_cli(capsys, *argv):
    """``cbn argv``: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


QUICK = ("--cycles", "0.5", "--step-size", "10", "--blas-threads", "1")


def test_bare_cbn_trains_the_course_network_on_the_sample(capsys):
    status, out, err = run_cli(capsys, "--cycles", "0.5", "--blas-threads", "1")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("3-layer [50, 50] with BN")
    assert "shipped sample" in out
    assert [line.split()[0] for line in lines[2:6]] == ["split", "train", "val", "test"]
    notices = [line for line in err.splitlines() if "sample shipped with cbn" in line]
    assert len(notices) == 1 and notices[0].startswith("cbn: notice: ")


def test_json_says_the_scores_come_from_the_sample(capsys):
    status, out, _ = run_cli(capsys, "train", "--json", *QUICK)
    assert status == 0
    document = json.loads(out)
    assert document["data"]["source"] == "sample" and document["data"]["sample"] is True
    for split in ("train", "val", "test"):
        assert 0.0 <= document["scores"][split]["accuracy"] <= 1.0
    assert document["config"]["step_size"] == 10


@pytest.mark.parametrize("argv, message", [
    (["--cycles", "-1"], "argument --cycles: must be > 0"),
    (["--lam", "-1"], "argument --lam: must be >= 0"),
    (["--hidden", "0"], "argument --hidden: must be >= 1"),
    (["--hidden"], "argument --hidden: expected at least one argument"),
    (["--hidden", "50", "x"], "argument --hidden: expected an integer"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--batch-size", "1"], "--batch-size must be >= 2 with batch normalization"),
    (["--eta-min", "0.1", "--eta-max", "0.01"], "--eta-min (0.1) must be below --eta-max"),
    (["--eta-max", "nan"], "argument --eta-max: must be finite"),
    (["--momentum", "1"], "--momentum must be below 1"),
    (["--init", "zero"], "must be he, xavier or a positive sigma"),
    (["--blas-threads", "0"], "argument --blas-threads: must be >= 1"),
    (["--seed", "-2"], "argument --seed: must be >= 0"),
    (["--dtype", "float16"], "argument --dtype: invalid choice"),
    (["--save", "missing/net.npz"], "--save missing/net.npz: folder missing does not exist"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["evaluate"], "the following arguments are required: --model"),
    (["evaluate", "--model", "nothing.npz"], "--model nothing.npz: no such file"),
    (["gradcheck", "--n", "1"], "--n must be >= 2"),
    (["--expansion", "2"], "it needs --residual and a norm"),
])
def test_bad_arguments_fail_in_one_line_before_any_data_is_read(capsys, monkeypatch, argv,
                                                                message):
    monkeypatch.setattr(cli, "open_data", lambda *a, **k: pytest.fail("data was read"))
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cbn: error: ") and message in err, err


def test_a_missing_data_folder_is_one_line_naming_the_option(capsys, tmp_path):
    status, _, err = run_cli(capsys, "--data", str(tmp_path / "nowhere"), *QUICK)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("cbn: error: no CIFAR-10 at") and "--download" in err


def test_training_that_diverges_is_a_one_line_error(capsys):
    status, out, err = run_cli(capsys, "--no-bn", "--eta-min", "1e3", "--eta-max", "1e4",
                               *QUICK)
    assert status == 2 and out == "" and err.splitlines()[-1].startswith(
        "cbn: error: training diverged")
    assert "Traceback" not in err


def test_a_file_given_as_data_folder_is_named_as_a_file(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not CIFAR-10", encoding="utf-8")
    status, _, err = run_cli(capsys, "--data", str(text), *QUICK)
    assert status == 2 and "is a file, not a folder" in err and err.count("\n") == 1


def test_download_with_data_already_there_reads_it(capsys, tmp_path):
    write_cifar(tmp_path / "cifar")
    status, out, err = run_cli(capsys, "--data", str(tmp_path / "cifar"), "--download",
                               "--protocol", "seed", "--batch-size", "10", "--json", *QUICK)
    assert status == 0, err
    document = json.loads(out)
    assert document["data"]["sample"] is False and document["data"]["sizes"]["train"] == 30


def test_train_saves_a_network_that_evaluate_scores_the_same(capsys, tmp_path):
    model = tmp_path / "net.npz"
    status, out, _ = run_cli(capsys, "train", "--save", str(model), "--json", *QUICK)
    assert status == 0 and model.is_file()
    trained = json.loads(out)["scores"]
    status, out, err = run_cli(capsys, "evaluate", "--model", str(model), "--split", "all",
                               "--json")
    assert status == 0, err
    scores = json.loads(out)["scores"]
    for split in ("train", "val", "test"):
        assert scores[split]["accuracy"] == trained[split]["accuracy"]
    assert "no input normalization" not in err  # the model brought its own


def test_evaluate_prints_a_table(capsys, tmp_path):
    model = tmp_path / "net.npz"
    run_cli(capsys, "train", "--save", str(model), *QUICK)
    status, out, _ = run_cli(capsys, "evaluate", "--model", str(model))
    assert status == 0
    assert out.splitlines()[0].startswith("Network(3072-50-50-10")
    assert out.splitlines()[-1].split()[0] == "test"


def test_evaluate_standardises_for_a_model_without_normalization(capsys, tmp_path):
    sample = load_sample()
    net = cbn.Network(3072, [10], 10, seed=0)
    net.save(tmp_path / "plain.npz")
    status, out, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "plain.npz"),
                               "--json")
    assert status == 0 and "no input normalization" in err
    expected = net.accuracy(sample.test.images, sample.test.labels,
                            normalization=sample.normalization)
    assert json.loads(out)["scores"]["test"]["accuracy"] == expected


def test_evaluate_refuses_a_model_whose_widths_differ_from_the_data(capsys, tmp_path):
    cbn.Network(3072, [10], 7, seed=0).save(tmp_path / "seven.npz")
    status, out, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "seven.npz"))
    assert status == 2 and out == ""
    assert "takes 3072 inputs and 7 classes, not the data's 3072 and 10" in err


def test_evaluate_refuses_a_file_that_is_not_a_network(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    status, _, err = run_cli(capsys, "evaluate", "--model", str(bad))
    assert status == 2 and err.startswith("cbn: error: ") and err.count("\n") == 1


def test_out_writes_scores_and_history(capsys, tmp_path):
    status, _, _ = run_cli(capsys, "train", "--out", str(tmp_path / "run.json"), *QUICK)
    assert status == 0
    document = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert document["data"]["sample"] is True and document["history"]["step"]


def test_gradcheck_passes_and_fails_by_its_tolerance(capsys):
    status, out, _ = run_cli(capsys, "gradcheck", "--json")
    assert status == 0
    document = json.loads(out)
    assert document["passed"] and set(document["results"]) == {
        "3-layer/no_bn", "3-layer/bn", "9-layer/no_bn", "9-layer/bn"}
    assert all(r["max_relative_error"] < 1e-6 for r in document["results"].values())
    status, out, _ = run_cli(capsys, "gradcheck", "--tolerance", "1e-30", "--dims", "5")
    assert status == 1 and "FAILED" in out


def test_report_without_results_is_a_one_line_error(capsys, tmp_path):
    status, _, err = run_cli(capsys, "report", "--results", str(tmp_path))
    assert status == 2 and "run the examples first" in err and err.count("\n") == 1


def test_help_is_plain_text_and_every_option_explains_itself(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(cli.COMMANDS)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"cbn {name} {action.option_strings} has no help"
        assert "``" not in sub.format_help()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and all(name in out for name in cli.COMMANDS)


def test_progress_bars_stay_out_of_redirected_output(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(PACKAGE.parent))
    env.pop("CBN_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "cbn", *QUICK], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr


def test_importing_a_source_tree_without_the_extension_says_what_to_do(tmp_path):
    tree = tmp_path / "checkout"
    shutil.copytree(PACKAGE, tree / "cbn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    for argv in (["-c", "import cbn"], ["-m", "cbn"]):
        proc = subprocess.run([sys.executable, *argv], cwd=tree, capture_output=True,
                              text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=""))
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: you are importing cbn from its source tree")
        assert "pip install ." in last and "build_ext --inplace" in last
        assert "circular" not in proc.stderr

"""The benchmarks' measurements against the machine: the peak probe (cbn/_peak.pyx) and its
calibration (tests/bench_peak.py), the FLOPs each case counts, the table's GFLOP/s, % of peak
and goals (tests/bench_table.py), the check that every contender does cbn's work, and the
bf16 cases' skip. Timings are never asserted; nothing here needs torch or jax unless marked."""
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import bench_peak
import bench_table
import conftest
import test_benchmarks as tb
from bench_peak import Peak
from bench_table import CaseResult
from contender_gemm import GemmBound, forward_flops, step_flops
from test_bench_ratios import Reporter, benchmark_json, bench_ratios, fake_config

PEAKS = {"fp32": Peak("fp32", 4.0, 4.0, 3.0, "avx512f", "numpy.matmul", 2),
         "bf16": Peak("bf16", None, None, None, None, None, 2, note="no AVX512_BF16")}


# -- FLOPs -------------------------------------------------------------------------------------

def counted_products(monkeypatch, run):
    """The FLOPs of the numpy.matmul calls ``run`` makes, 2 m k n each."""
    flops, matmul = [], np.matmul

    def counting(a, b, out=None):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return matmul(a, b, out=out)
    monkeypatch.setattr(np, "matmul", counting)
    run()
    return sum(flops)


@pytest.mark.parametrize("dims, batch", [([3072, 50, 50, 10], 100), ([30, 7, 5, 4, 3], 9),
                                         ([12, 4], 5)])
def test_a_steps_flops_are_those_of_the_products_the_bound_runs(monkeypatch, dims, batch):
    bound = GemmBound(dims, batch, np.float32)
    assert counted_products(monkeypatch, bound.step) == step_flops(dims, batch)
    assert counted_products(monkeypatch, bound.forward) == forward_flops(dims, batch)


def test_a_training_step_counts_the_forward_and_both_backward_products():
    # [1024, 1024] at batch 100: 3072x1024 forward and weight gradient (no input gradient),
    # 1024x1024 and 1024x10 all three
    per_step = 2 * 100 * (2 * 3072 * 1024 + 3 * 1024 * 1024 + 3 * 1024 * 10)
    assert tb.case_flops(tb.CASES["4 steps [1024, 1024] BN b100 uint8+norm"], 5000) == 4 * per_step
    epoch = tb.CASES["epoch 3-layer BN b20 float32"]
    assert tb.case_flops(epoch, 3000) == 150 * step_flops([3072, 50, 50, 10], 20)
    evaluation = tb.CASES["evaluate 10000 images 3-layer BN uint8+norm"]
    assert tb.case_flops(evaluation, 10000) == 2 * 10000 * (3072 * 50 + 50 * 50 + 50 * 10)


# -- the table: GFLOP/s, % of peak, goals ------------------------------------------------------

def test_the_table_gives_cbns_rate_and_its_share_of_the_peak_of_its_precision():
    fp32 = CaseResult("a", {"cbn": [1.0, 3.0, 2.0], "gemm": [1.0] * 3}, flops=6e9)
    bf16 = CaseResult("b", {"cbn": [1.0], "gemm": [1.0]}, flops=1e9, precision="bf16")
    uncounted = CaseResult("c", {"cbn": [1.0], "gemm": [1.0]})
    assert fp32.gflops() == pytest.approx(3.0) and fp32.share_of_peak(PEAKS) == 0.75
    assert bf16.share_of_peak(PEAKS) is None and uncounted.gflops() is None
    cells = bench_table.rows([fp32, bf16, uncounted], PEAKS)
    assert [row[2:4] for row in cells] == [["3.0", "75%"], ["1.0", "-"], ["-", "-"]]
    text = bench_table.format_table([fp32], peaks=PEAKS)
    assert "fp32 peak 4.0 GFLOP/s on 2 threads (avx512f loop 4.0, numpy.matmul 3.0)" in text
    assert "bf16 peak: absent (no AVX512_BF16)" in text


def case(name, ratios, precision="fp32", kind="epoch", batch=100, share=None):
    """A one-round case whose cbn/contender ratios are ``ratios`` (and whose rate is ``share``
    of the 4 GFLOP/s fp32 peak)."""
    rounds = {"cbn": [1.0], "gemm": [1.0], **{c: [1.0 / r] for c, r in ratios.items()}}
    flops = None if share is None else share * 4e9
    return CaseResult(name, rounds, flops=flops, precision=precision, kind=kind, batch=batch)


def test_each_goal_is_met_not_met_or_not_measured_by_its_worst_case():
    results = [case("wide", {"torch": 0.6, "compile": 0.8, "numpy": 0.9}, kind="step",
                    share=0.8),
               case("small", {"torch": 0.7, "compile": 0.5, "numpy": 0.4}),
               case("b256 bf16", {"compile": 0.9, "numpy": 0.4}, precision="bf16", batch=256)]
    met = {text: (status, detail) for text, status, detail in bench_table.goals(results, PEAKS)}
    texts = [g[0] for g in bench_table.GOALS]
    assert met[texts[0]] == (True, "lowest: wide at 80%")
    assert met[texts[1]][0] is False and "small at 1.43x (cbn/torch 0.70)" in met[texts[1]][1]
    assert met[texts[2]][0] is False and "b256 bf16 at 1.11x" in met[texts[2]][1]
    assert met[texts[3]][0] is False                  # bf16 against compile: 0.9
    assert met[texts[4]][0] is None                   # no bf16 case at batch 100
    lines = bench_table.goal_lines(results[:1], PEAKS)
    assert lines[0].startswith("goal met: the wide [1024, 1024] step")
    assert lines[1].startswith("goal met: cbn 1.5x") and "not measured" in lines[4]


def test_the_peaks_goals_and_warm_ups_go_to_the_json_and_back(tmp_path, capsys):
    result = CaseResult("wide", {"cbn": [1.0], "gemm": [1.0]}, flops=3e9, kind="step",
                        warm_up={"cbn": 0.5, "compile": 12.0}, left_out={"jax": "why"})
    data = bench_table.to_json([result], PEAKS)
    assert data["cases"][0]["share_of_peak"] == 0.75
    assert data["peaks"]["bf16"]["gflops"] is None
    assert data["goals"][0] == {"goal": bench_table.GOALS[0][0], "met": True,
                                "detail": "lowest: wide at 75%"}
    path = benchmark_json(tmp_path, {"wide": {"cbn": [1.0], "gemm": [1.0]}})
    raw = json.loads(path.read_text())
    raw["benchmarks"][0]["extra_info"].update(
        flops=3e9, kind="step", peaks={p: v.to_json() for p, v in PEAKS.items()})
    path.write_text(json.dumps(raw))
    assert bench_table.peaks_from_benchmarks(raw["benchmarks"]) == PEAKS
    assert bench_ratios.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "75%" in out and "fp32 peak 4.0 GFLOP/s" in out and "goal met: the wide" in out
    text = bench_table.format_table([result])
    assert "warm-up rounds, untimed (compilation included), summed over the cases: " \
           "cbn 0.5 s, compile 12.0 s" in text
    assert "left out of 'wide': jax: why" in text


def test_the_summary_shows_the_peaks_the_run_measured(tmp_path):
    result = CaseResult("wide", {"cbn": [1.0], "gemm": [1.0]}, flops=3e9, kind="step")
    config = fake_config(tmp_path, {"benchmark_json": tmp_path / "run.json"}, [result])
    config.stash[conftest._PEAKS] = PEAKS
    reporter = Reporter()
    conftest.pytest_terminal_summary(reporter, config)
    assert bench_table.format_table([result], peaks=PEAKS) in "\n".join(reporter.lines)
    assert json.loads((tmp_path / "run.ratios.json").read_text())["peaks"]["fp32"]["gflops"] == 4.0


# -- the peak: calibration and probe -----------------------------------------------------------

class FakeMachine:
    """``run(size)``: size operations at 1e9 per second, slower on the runs in ``slow``."""

    def __init__(self, slow=()):
        self.sizes, self.slow = [], set(slow)

    def __call__(self, size):
        self.sizes.append(size)
        factor = 2.0 if len(self.sizes) - 1 in self.slow else 1.0
        return factor * size / 1e9, float(size)


def test_calibration_grows_the_run_until_it_lasts_long_enough_then_takes_the_best():
    machine = FakeMachine(slow={0, 1, 2, 3})
    rate = bench_peak.calibrate(machine, seconds=0.01, repeats=3, start=1000)
    assert rate == pytest.approx(1e9)  # the one undisturbed run at the final size
    final = machine.sizes[-1]
    assert final * 2 / 1e9 >= 0.01 and machine.sizes[-3:] == [final] * 3
    assert all(b > a for a, b in zip(machine.sizes[:-3], machine.sizes[1:-2]))


def test_calibration_survives_a_clock_that_reports_nothing_and_refuses_no_work():
    timings = iter([(0.0, 10.0), (0.0, 20.0), (1.0, 40.0), (1.0, 40.0)])
    assert bench_peak.calibrate(lambda size: next(timings), seconds=0.5, repeats=2) == 40.0
    with pytest.raises(ValueError, match="operations"):
        bench_peak.calibrate(lambda size: (1.0, 0.0), seconds=0.5, repeats=1)


def test_the_probe_measures_a_positive_finite_rate_without_being_imported_by_cbn(tmp_path):
    from cbn import _peak
    seconds, flops, ran = _peak.run("fp32", 1000, 1)
    assert seconds > 0 and flops > 0 and math.isfinite(flops / seconds) and ran == 1
    with pytest.raises(ValueError, match="kind"):
        _peak.run("fp16", 1000, 1)
    with pytest.raises(ValueError, match="at least 1"):
        _peak.run("fp32", 0, 1)
    out = subprocess.run([sys.executable, "-c", "import sys, cbn; print('cbn._peak' in "
                          "sys.modules)"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # outside the source tree: the installed cbn
    assert out.stdout.strip() == "False", out.stderr


def test_a_measured_peak_is_the_higher_of_the_loop_and_the_large_product(monkeypatch):
    monkeypatch.setattr(bench_peak, "SECONDS", 0.01)
    monkeypatch.setattr(bench_peak, "REPEATS", 2)
    monkeypatch.setattr(bench_peak, "GEMM_N", 256)
    peak = bench_peak.measure("fp32", 1)
    assert peak.gflops == max(peak.loop_gflops, peak.gemm_gflops) > 0
    assert math.isfinite(peak.gflops) and peak.isa and peak.threads == 1


def test_a_precision_the_cpu_lacks_has_no_peak_and_is_reported_absent(monkeypatch):
    from cbn import _peak
    monkeypatch.setattr(_peak, "isa", lambda kind: None)
    peak = bench_peak.measure("bf16", 2)
    assert peak.gflops is None and peak.gemm_gflops is None
    assert peak.describe().startswith("bf16 peak: absent (this CPU has no bf16")
    with pytest.raises(ValueError, match="precision"):
        bench_peak.measure("fp64", 1)


# -- equal work, and the bf16 cases' skip ------------------------------------------------------

def trainer(scale=1.0, update=True, fail=False):
    """A stand-in contender: loss 2 / (1 + steps taken), times ``scale``."""
    steps = [0]

    def check(b=0, lr=0.1):
        if fail:
            raise RuntimeError("no compiler\nsecond line")
        loss = scale * 2.0 / (1 + steps[0])
        steps[0] += update
        return loss
    return tb.Block(lambda: None, check)


def test_a_contender_that_skips_work_or_fails_its_check_is_left_out_with_the_reason():
    runs = {"cbn": trainer(), "numpy": trainer(1.00005), "torch": trainer(update=False),
            "jax": trainer(fail=True), "compile": trainer(float("nan")),
            "gemm": tb.Block(lambda: None)}
    seconds = {}
    left_out = tb.check_same_work(tb.CASES["epoch 3-layer BN b100 float32"], runs, seconds)
    assert set(left_out) == {"torch", "jax", "compile"}
    assert "torch" in tb.check_same_work(tb.CASES["epoch 3-layer BN b100 float32"],
                                         {"cbn": trainer(), "torch": trainer(1.002)})
    assert "differ from cbn's 2.0000, 1.0000" in left_out["torch"]
    assert left_out["jax"] == "its check failed: RuntimeError: no compiler"
    assert set(seconds) == {"cbn", "numpy", "torch", "jax", "compile"}
    bf16 = tb.Case("epoch", (50, 50), True, 100, "uint8", precision="bf16")
    assert "numpy" not in tb.check_same_work(bf16, {"cbn": trainer(), "numpy": trainer(1.02)})


def test_the_contenders_of_a_case_pass_the_check():
    runs = tb.blocks(tb.CASES["epoch 3-layer BN b100 uint8+norm"], 300, tb.QUICK)
    assert tb.check_same_work(tb.CASES["epoch 3-layer BN b100 uint8+norm"], runs) == {}
    assert runs["gemm"].check is None and runs["cbn"].check is not None


def test_the_warm_up_round_is_reported_per_contender():
    warm = {}
    tb.interleave(tb.Rounds(), {"cbn": lambda: None, "gemm": lambda: None}, rounds=(1, 1),
                  warm_up=warm)
    assert set(warm) == {"cbn", "gemm"} and all(t >= 0 for t in warm.values())


@pytest.mark.parametrize("behaviour, reason", [
    ("no option", "this cbn has no bf16 products"),
    ("extra missing", "ImportError: bf16-mixed needs the extra cbn[bf16]"),
    ("falls back", "bf16 falls back to fp32 here: no avx512_bf16"),
    ("falls back quietly", "bf16 falls back to fp32 here (the network's products"),
    ("runs", None),
])
def test_a_bf16_case_skips_with_the_reason_cbn_gives(monkeypatch, behaviour, reason):
    def network(*args, precision=None, **kwargs):
        if behaviour == "no option":
            raise TypeError("unexpected keyword argument 'precision'")
        if behaviour == "extra missing":
            raise ImportError("bf16-mixed needs the extra cbn[bf16]")
        if behaviour == "falls back":
            warnings.warn("no avx512_bf16", RuntimeWarning)
        return type("Net", (), {"precision": precision,
                                "bf16": behaviour != "falls back quietly"})()
    monkeypatch.setattr(tb, "Network", network)
    why = tb.bf16_unavailable.__wrapped__()
    assert why == reason if reason is None else why.startswith(reason)


# -- the new contenders compute what cbn computes (only where installed) -----------------------

@pytest.mark.skipif(not tb.HAS_JAX, reason="jax is not installed")
@pytest.mark.parametrize("name", ["epoch 3-layer BN b100 uint8+norm",
                                  "epoch 3-layer b100 float32"])
def test_the_jax_contender_trains_as_cbn_does(name):
    case = tb.CASES[name]
    runs = tb.blocks(case, 300, ("cbn", "jax"))
    assert tb.check_same_work(case, runs) == {}


@pytest.mark.skipif(not tb.HAS_JAX, reason="jax is not installed")
def test_the_jax_contender_evaluates_as_cbn_does():
    case = tb.Case("evaluate", (20, 10), True, 100, "uint8")
    assert tb.check_same_work(case, tb.blocks(case, 300, ("cbn", "numpy", "jax"))) == {}


@pytest.mark.skipif(not tb.HAS_TORCH, reason="torch is not installed")
def test_pytorch_with_bf16_autocast_trains_within_bf16_rounding_of_fp32():
    case = tb.Case("epoch", (20, 10), True, 100, "uint8", precision="bf16")
    monkey = pytest.MonkeyPatch()
    monkey.setitem(tb.PRECISION, "bf16", {})  # cbn in fp32: the reference for the check
    try:
        runs = tb.blocks(case, 300, ("cbn", "torch"))
    finally:
        monkey.undo()
    assert tb.check_same_work(case, runs) == {}
    torch_loss, cbn_loss = runs["torch"].check(0, 0.0), runs["cbn"].check(0, 0.0)
    assert abs(torch_loss - cbn_loss) / cbn_loss > 1e-5  # bf16 rounding, not fp32's


def test_the_peak_keeps_the_highest_of_the_runs_measurements(monkeypatch):
    rates = iter([1e9, 5e9])
    monkeypatch.setattr(bench_peak, "loop_rate", lambda precision, threads:
                        (next(rates), "avx512f", threads))
    peaks = dict(PEAKS)
    bench_peak.remeasure(peaks)  # 1 GFLOP/s: below the 4 held, kept at 4
    assert peaks["fp32"] == PEAKS["fp32"]
    bench_peak.remeasure(peaks)  # 5: higher
    assert (peaks["fp32"].gflops, peaks["fp32"].loop_gflops, peaks["fp32"].gemm_gflops) == (
        5.0, 5.0, 3.0)
    assert peaks["bf16"] == PEAKS["bf16"]  # absent stays absent, never measured
    entries = [{"extra_info": {"peaks": {p: v.to_json() for p, v in ps.items()}}}
               for ps in (PEAKS, peaks, PEAKS)]
    assert bench_table.peaks_from_benchmarks(entries)["fp32"].gflops == 5.0

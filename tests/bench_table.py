"""The benchmarks' table of ratios and its noise verdict, from per-round timings.

One code path for every place the table appears: the terminal summary of
``pytest --benchmark-only`` (tests/conftest.py), the files written beside ``--benchmark-json``,
and ``scripts/bench_ratios.py`` reading that JSON back.

A case's contenders are timed once per round, back to back, so a round compares them on the
same machine state. Each ratio is cbn's time over the contender's *in the same round*; the
table gives the median of those per-round ratios. Beside them, cbn's rate on the case's matrix
products (GFLOP/s, from the FLOPs the case's products do) and that rate as a share of the
machine's peak in the case's precision, measured in the same run (tests/bench_peak.py); and
the goals (``GOALS``), each reported met or not met. The GEMM-only bound is the ruler: when its
own rounds disagree (interquartile range over median, IQR/median, above ``NOISE_LIMIT``), the
machine's speed moved during the case and its ratios are marked too noisy to trust. A run is
too noisy to trust when any of its cases is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bench_peak import Peak, higher

NOISE_LIMIT = 0.20   # the bound's IQR/median above which a case's ratios are not trusted
BOUND = "gemm"
OTHERS = ("gemm", "gemm+rows", "numpy", "torch", "compile", "jax")


@dataclass(frozen=True)
class CaseResult:
    """Seconds per round of each contender of one case; ``rounds[c][r]`` was measured in
    round r, back to back with the other contenders' round r. ``flops``: the floating-point
    operations of the matrix products cbn's block does (None: not counted); ``precision``
    ("fp32" or "bf16"), ``kind`` ("epoch", "step", "evaluate") and ``batch`` say what the
    goals need; ``warm_up``: each contender's untimed first round in seconds (compilation
    included); ``left_out``: contenders not timed, and why."""

    case: str
    rounds: Mapping[str, Sequence[float]]
    flops: Optional[float] = None
    precision: str = "fp32"
    kind: Optional[str] = None
    batch: Optional[int] = None
    warm_up: Mapping[str, float] = field(default_factory=dict)
    left_out: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "cbn" not in self.rounds:
            raise ValueError(f"case {self.case!r} has no cbn timings")
        lengths = {c: len(t) for c, t in self.rounds.items()}
        if len(set(lengths.values())) != 1 or lengths["cbn"] == 0:
            raise ValueError(f"case {self.case!r}: every contender needs the same number "
                             f"(at least 1) of rounds, got {lengths}")
        for c, t in self.rounds.items():
            t = np.asarray(t, dtype=np.float64)
            if not (np.isfinite(t).all() and (t > 0).all()):
                raise ValueError(f"case {self.case!r}: {c}'s round times must be positive "
                                 f"finite seconds")

    @property
    def n_rounds(self) -> int:
        return len(self.rounds["cbn"])

    def seconds(self, contender: str = "cbn") -> float:
        """Median seconds per round of ``contender``."""
        return float(np.median(self.rounds[contender]))

    def ratio(self, other: str) -> Optional[float]:
        """Median over rounds of cbn's time / ``other``'s in the same round; None without
        ``other``. Below 1: cbn is faster."""
        if other not in self.rounds:
            return None
        return float(np.median(np.asarray(self.rounds["cbn"]) / np.asarray(self.rounds[other])))

    def gflops(self) -> Optional[float]:
        """cbn's rate on the case's products: FLOPs over its median seconds, in GFLOP/s."""
        return None if self.flops is None else self.flops / self.seconds() / 1e9

    def share_of_peak(self, peaks: Optional[Mapping[str, Peak]]) -> Optional[float]:
        """cbn's rate as a fraction of the peak of the case's precision (None where either
        is unknown, or the peak is absent)."""
        peak = (peaks or {}).get(self.precision)
        rate = self.gflops()
        if rate is None or peak is None or not peak.gflops:
            return None
        return rate / peak.gflops

    def bound_spread(self) -> Optional[float]:
        """IQR/median of the GEMM bound's round times (None without a bound)."""
        if BOUND not in self.rounds:
            return None
        q1, median, q3 = np.percentile(self.rounds[BOUND], [25, 50, 75])
        return float((q3 - q1) / median)

    def noisy(self) -> bool:
        """True when the bound's own rounds spread by more than NOISE_LIMIT (or no bound)."""
        spread = self.bound_spread()
        return spread is None or spread > NOISE_LIMIT


def from_benchmarks(benchmarks: Iterable[Mapping]) -> List[CaseResult]:
    """The cases of pytest-benchmark entries (``--benchmark-json``'s ``benchmarks``) whose
    ``extra_info`` holds ``case`` and ``rounds``; entries without them are left out."""
    results = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if "case" in info and "rounds" in info:
            results.append(CaseResult(
                info["case"], info["rounds"], flops=info.get("flops"),
                precision=info.get("precision", "fp32"), kind=info.get("kind"),
                batch=info.get("batch"), warm_up=info.get("warm_up", {}),
                left_out=info.get("left_out", {})))
    return results


def peaks_from_benchmarks(benchmarks: Iterable[Mapping]) -> Dict[str, Peak]:
    """The peaks the run measured: per precision the highest of the entries'
    ``extra_info["peaks"]`` (each case records the peaks known when it ran)."""
    best: Dict[str, Peak] = {}
    for b in benchmarks:
        for precision, data in ((b.get("extra_info") or {}).get("peaks") or {}).items():
            peak = Peak.from_json(data)
            best[precision] = higher(best[precision], peak) if precision in best else peak
    return best


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(results: Sequence[CaseResult],
         peaks: Optional[Mapping[str, Peak]] = None) -> List[List[str]]:
    """One row of cells per case, in the order of ``HEADER``."""
    out = []
    for r in results:
        spread, rate, share = r.bound_spread(), r.gflops(), r.share_of_peak(peaks)
        out.append([r.case, f"{r.seconds() * 1e3:.2f}",
                    "-" if rate is None else f"{rate:.1f}",
                    "-" if share is None else f"{share:.0%}",
                    *(_cell(r.ratio(o)) for o in OTHERS),
                    str(r.n_rounds), "-" if spread is None else f"{spread:.0%}",
                    "NOISY" if r.noisy() else "ok"])
    return out


HEADER = ["case", "cbn ms", "GFLOP/s", "% peak", "cbn/gemm", "cbn/gemm+rows", "cbn/numpy",
          "cbn/torch", "cbn/compile", "cbn/jax", "rounds", "gemm IQR/med", "verdict"]

# (what is promised, the ratio or share it is read from, the cases it covers, the bound:
# a ratio at most, a share at least)
GOALS = (
    ("the wide [1024, 1024] step at 75 % or more of its precision's peak", "peak",
     lambda r: r.kind == "step", 0.75),
    ("cbn 1.5x or more faster than PyTorch eager on every case, in its own precision", "torch",
     lambda r: True, 1 / 1.5),
    ("cbn 1.2x or more faster than torch.compile on every case, in its own precision",
     "compile", lambda r: True, 1 / 1.2),
    ("bf16 cbn 1.2x or more faster than torch.compile with bf16 autocast", "compile",
     lambda r: r.precision == "bf16", 1 / 1.2),
    ("bf16 cbn 2x or more faster than the NumPy contender at batch 100", "numpy",
     lambda r: r.precision == "bf16" and r.batch == 100, 1 / 2),
)


def goals(results: Sequence[CaseResult],
          peaks: Optional[Mapping[str, Peak]] = None) -> List[Tuple[str, Optional[bool], str]]:
    """Per goal of ``GOALS``: (the goal, True if met / False if not / None if no case
    measures it, the worst case's figure)."""
    out = []
    for text, measure, covers, bound in GOALS:
        figures = []
        for r in results:
            if not covers(r):
                continue
            value = r.share_of_peak(peaks) if measure == "peak" else r.ratio(measure)
            if value is not None:
                figures.append((value, r.case))
        if not figures:
            out.append((text, None, "no case measures it in this run"))
            continue
        if measure == "peak":
            value, case = min(figures)
            out.append((text, value >= bound, f"lowest: {case} at {value:.0%}"))
        else:
            value, case = max(figures)
            out.append((text, value <= bound,
                        f"least: {case} at {1 / value:.2f}x (cbn/{measure} {value:.2f})"))
    return out


def goal_lines(results: Sequence[CaseResult],
               peaks: Optional[Mapping[str, Peak]] = None) -> List[str]:
    status = {True: "met", False: "NOT MET", None: "not measured"}
    return [f"goal {status[met]}: {text} ({detail})" for text, met, detail in goals(results, peaks)]


def verdict(results: Sequence[CaseResult]) -> str:
    """One line: whether the run can be trusted, and which cases cannot."""
    noisy = sum(r.noisy() for r in results)
    rule = (f"a case is NOISY when its GEMM bound's round times spread (IQR/median) by more "
            f"than {NOISE_LIMIT:.0%}")
    if not noisy:
        return f"Run trustworthy: no case noisy ({rule})."
    return f"Run TOO NOISY TO TRUST: {noisy} of {len(results)} cases noisy ({rule})."


def format_table(results: Sequence[CaseResult], markdown: bool = False,
                 peaks: Optional[Mapping[str, Peak]] = None) -> str:
    """The table (plain columns, or Markdown) followed by the verdict line; with ``peaks``
    (precision: ``Peak``) one line per peak, then the goals, met or not."""
    table = [HEADER] + rows(results, peaks)
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "---|" * len(HEADER))
    else:
        widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    note = ("Ratios: median over rounds of cbn's time / the contender's in the same round "
            "(below 1: cbn faster). GFLOP/s: cbn's, on the case's matrix products; % peak: "
            "of its precision's peak.")
    extra = [p.describe() for p in (peaks or {}).values()]
    extra += warm_up_lines(results) + goal_lines(results, peaks)
    return "\n".join(lines + ["", note, verdict(results)] + extra)


def warm_up_lines(results: Sequence[CaseResult]) -> List[str]:
    """The untimed first rounds (compilation included), summed over the cases per
    contender, and the contenders left out of a case and why."""
    total: Dict[str, float] = {}
    for r in results:
        for c, seconds in r.warm_up.items():
            total[c] = total.get(c, 0.0) + seconds
    lines = []
    if total:
        lines.append("warm-up rounds, untimed (compilation included), summed over the cases: "
                     + ", ".join(f"{c} {s:.1f} s" for c, s in total.items()))
    for r in results:
        for c, why in r.left_out.items():
            lines.append(f"left out of {r.case!r}: {c}: {why}")
    return lines


def blas_line(pool: Mapping) -> str:
    """One line for a thread pool of ``threadpoolctl.threadpool_info()``."""
    version = f" {pool['version']}" if pool.get("version") else ""
    kernel = f" ({pool['architecture']})" if pool.get("architecture") else ""
    return (f"{pool.get('internal_api')}{version}{kernel}, {pool.get('num_threads')} threads: "
            f"{pool.get('filepath')}")


def to_json(results: Sequence[CaseResult], peaks: Optional[Mapping[str, Peak]] = None,
            **context) -> Dict:
    """The table as data: per case its ratios, rate, share of peak, bound spread and
    verdict, plus the raw rounds and warm-up times; the peaks and the goals; ``context``
    (e.g. load average, BLAS) is stored as given."""
    cases = []
    for r in results:
        cases.append({"case": r.case, "precision": r.precision, "cbn_seconds": r.seconds(),
                      "flops": r.flops, "gflops": r.gflops(),
                      "share_of_peak": r.share_of_peak(peaks),
                      "ratios": {o: r.ratio(o) for o in OTHERS if o in r.rounds},
                      "bound_spread_iqr_over_median": r.bound_spread(), "noisy": r.noisy(),
                      "rounds": {c: list(t) for c, t in r.rounds.items()},
                      "warm_up_seconds": dict(r.warm_up), "left_out": dict(r.left_out)})
    return {"noise_limit": NOISE_LIMIT, "noisy": any(r.noisy() for r in results),
            "noisy_cases": [r.case for r in results if r.noisy()],
            "verdict": verdict(results), "cases": cases,
            "peaks": {p: v.to_json() for p, v in (peaks or {}).items()},
            "goals": [{"goal": t, "met": m, "detail": d} for t, m, d in goals(results, peaks)],
            **context}


def write(results: Sequence[CaseResult], stem: str,
          peaks: Optional[Mapping[str, Peak]] = None, **context) -> List[str]:
    """``stem.md`` (the Markdown table) and ``stem.json`` (``to_json``); the paths written."""
    paths = [f"{stem}.md", f"{stem}.json"]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(format_table(results, markdown=True, peaks=peaks) + "\n")
    with open(paths[1], "w", encoding="utf-8") as f:
        json.dump(to_json(results, peaks, **context), f, indent=1)
    return paths

"""The benchmarks' table of ratios and its noise verdict, from per-round timings.

One code path for every place the table appears: the terminal summary of
``pytest --benchmark-only`` (tests/conftest.py), the files written beside ``--benchmark-json``,
and ``scripts/bench_ratios.py`` reading that JSON back.

A case's contenders are timed once per round, back to back, so a round compares them on the
same machine state. Each ratio is cbn's time over the contender's *in the same round*; the
table gives the median of those per-round ratios. The GEMM-only bound is the ruler: when its
own rounds disagree (interquartile range over median, IQR/median, above ``NOISE_LIMIT``), the
machine's speed moved during the case and its ratios are marked too noisy to trust. A run is
too noisy to trust when any of its cases is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

NOISE_LIMIT = 0.20   # the bound's IQR/median above which a case's ratios are not trusted
BOUND = "gemm"
OTHERS = ("gemm", "gemm+rows", "numpy", "torch")


@dataclass(frozen=True)
class CaseResult:
    """Seconds per round of each contender of one case; ``rounds[c][r]`` was measured in
    round r, back to back with the other contenders' round r."""

    case: str
    rounds: Mapping[str, Sequence[float]]

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
            results.append(CaseResult(info["case"], info["rounds"]))
    return results


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(results: Sequence[CaseResult]) -> List[List[str]]:
    """One row of cells per case, in the order of ``HEADER``."""
    out = []
    for r in results:
        spread = r.bound_spread()
        out.append([r.case, f"{r.seconds() * 1e3:.2f}", *(_cell(r.ratio(o)) for o in OTHERS),
                    str(r.n_rounds), "-" if spread is None else f"{spread:.0%}",
                    "NOISY" if r.noisy() else "ok"])
    return out


HEADER = ["case", "cbn ms", "cbn/gemm", "cbn/gemm+rows", "cbn/numpy", "cbn/torch", "rounds",
          "gemm IQR/med", "verdict"]


def verdict(results: Sequence[CaseResult]) -> str:
    """One line: whether the run can be trusted, and which cases cannot."""
    noisy = sum(r.noisy() for r in results)
    rule = (f"a case is NOISY when its GEMM bound's round times spread (IQR/median) by more "
            f"than {NOISE_LIMIT:.0%}")
    if not noisy:
        return f"Run trustworthy: no case noisy ({rule})."
    return f"Run TOO NOISY TO TRUST: {noisy} of {len(results)} cases noisy ({rule})."


def format_table(results: Sequence[CaseResult], markdown: bool = False) -> str:
    """The table (plain columns, or Markdown) followed by the verdict line."""
    table = [HEADER] + rows(results)
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "---|" * len(HEADER))
    else:
        widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    note = ("Ratios: median over rounds of cbn's time / the contender's in the same round "
            "(below 1: cbn faster).")
    return "\n".join(lines + ["", note, verdict(results)])


def blas_line(pool: Mapping) -> str:
    """One line for a thread pool of ``threadpoolctl.threadpool_info()``."""
    version = f" {pool['version']}" if pool.get("version") else ""
    kernel = f" ({pool['architecture']})" if pool.get("architecture") else ""
    return (f"{pool.get('internal_api')}{version}{kernel}, {pool.get('num_threads')} threads: "
            f"{pool.get('filepath')}")


def to_json(results: Sequence[CaseResult], **context) -> Dict:
    """The table as data: per case its ratios, bound spread and verdict, plus the raw rounds;
    ``context`` (e.g. load average, BLAS) is stored as given."""
    cases = []
    for r in results:
        cases.append({"case": r.case, "cbn_seconds": r.seconds(),
                      "ratios": {o: r.ratio(o) for o in OTHERS if o in r.rounds},
                      "bound_spread_iqr_over_median": r.bound_spread(), "noisy": r.noisy(),
                      "rounds": {c: list(t) for c, t in r.rounds.items()}})
    return {"noise_limit": NOISE_LIMIT, "noisy": any(r.noisy() for r in results),
            "noisy_cases": [r.case for r in results if r.noisy()],
            "verdict": verdict(results), "cases": cases, **context}


def write(results: Sequence[CaseResult], stem: str, **context) -> List[str]:
    """``stem.md`` (the Markdown table) and ``stem.json`` (``to_json``); the paths written."""
    paths = [f"{stem}.md", f"{stem}.json"]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(format_table(results, markdown=True) + "\n")
    with open(paths[1], "w", encoding="utf-8") as f:
        json.dump(to_json(results, **context), f, indent=1)
    return paths

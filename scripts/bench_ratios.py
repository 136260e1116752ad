"""Print cbn's time relative to each contender, per benchmark group, from a pytest-benchmark JSON.

    pytest tests/test_benchmarks.py --benchmark-only --benchmark-json=bench.json
    python scripts/bench_ratios.py bench.json [more.json ...] [--stat median|min|mean] [--markdown]

A ratio below 1 means cbn is faster: cbn/numpy 0.5 is twice as fast as NumPy; cbn/gemm 1.2
means cbn takes 20 % longer than the step's matrix products alone. The BLAS libraries and
thread counts recorded with the run are printed first. Given several runs (on a shared
machine, where other work slows whichever contender it overlaps), each contender's time is
its best statistic over the runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

OTHERS = ("numpy", "torch", "gemm")


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks')")
    return data


def times_by_group(runs: Sequence[dict], stat: str) -> Dict[str, Dict[str, float]]:
    """group -> contender -> seconds: the chosen statistic, the smallest over the runs."""
    groups: Dict[str, Dict[str, float]] = defaultdict(dict)
    for data in runs:
        for b in data["benchmarks"]:
            contender = (b.get("params") or {}).get("contender")
            if contender is None or not b.get("group"):
                continue
            seconds = b["stats"][stat]
            best = groups[b["group"]].get(contender, seconds)
            groups[b["group"]][contender] = min(best, seconds)
    return dict(groups)


def ratio_rows(groups: Dict[str, Dict[str, float]]) -> List[List[str]]:
    rows = []
    for group in sorted(groups):
        t = groups[group]
        if "cbn" not in t:
            continue
        cells = [group, f"{t['cbn'] * 1e3:.3f}"]
        for other in OTHERS:
            cells.append(f"{t['cbn'] / t[other]:.2f}" if other in t else "-")
        cells += [f"{t[o] * 1e3:.3f}" if o in t else "-" for o in OTHERS]
        rows.append(cells)
    return rows


def blas_summary(runs: Sequence[dict]) -> List[str]:
    seen = []
    for b in (b for data in runs for b in data["benchmarks"]):
        for pool in (b.get("extra_info") or {}).get("blas", []):
            line = (f"{pool.get('internal_api')} {pool.get('version')} "
                    f"({pool.get('architecture')}), {pool.get('num_threads')} threads: "
                    f"{pool.get('filepath')}")
            if line not in seen:
                seen.append(line)
        threads = (b.get("extra_info") or {}).get("torch_threads")
        if threads is not None and f"torch: {threads} threads" not in seen:
            seen.append(f"torch: {threads} threads")
    return seen


def format_table(rows: Sequence[Sequence[str]], stat: str, markdown: bool) -> str:
    header = ["case", f"cbn ms ({stat})", "cbn/numpy", "cbn/torch", "cbn/gemm",
              "numpy ms", "torch ms", "gemm ms"]
    table = [header] + [list(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="files written by pytest --benchmark-json")
    parser.add_argument("--stat", default="median", choices=("median", "min", "mean"),
                        help="which statistic of each benchmark to compare (default median)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    try:
        runs = [load(path) for path in args.json]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = ratio_rows(times_by_group(runs, args.stat))
    if not rows:
        print("error: no benchmark with a 'contender' parameter and a cbn row", file=sys.stderr)
        return 1
    if len(runs) > 1:
        print(f"# best {args.stat} of {len(runs)} runs per contender")
    for line in blas_summary(runs):
        print(f"# {line}")
    print(format_table(rows, args.stat, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the benchmarks' table of ratios and noise verdict from pytest-benchmark JSON files.

    pytest tests/test_benchmarks.py --benchmark-only --benchmark-json=bench.json
    python scripts/bench_ratios.py bench.json [more.json ...] [--markdown]

The table is the one the run printed at its end (tests/bench_table.py builds both): per
case, cbn's GFLOP/s and share of the peak the run measured, the median over rounds of cbn's
time over each contender's in the same round (below 1: cbn is faster), and whether the GEMM
bound's own rounds spread too much to trust the case; then the peaks and the goals.
The BLAS libraries and thread counts recorded with the run are printed first. Several files
give one table each: ratios only mean something within a round, so runs are not mixed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import bench_table  # noqa: E402  (the table's one implementation lives beside the benchmarks)


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks')")
    return data


def blas_summary(data: dict) -> List[str]:
    """One line per BLAS library (and torch's thread count) recorded in the run."""
    seen: List[str] = []
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        for pool in info.get("blas", []):
            line = bench_table.blas_line(pool)
            if line not in seen:
                seen.append(line)
        if "torch_threads" in info and f"torch: {info['torch_threads']} threads" not in seen:
            seen.append(f"torch: {info['torch_threads']} threads")
    return seen


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="files written by pytest --benchmark-json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    try:
        runs = [(path, load(path)) for path in args.json]
        tables = [(path, data, bench_table.from_benchmarks(data["benchmarks"]))
                  for path, data in runs]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for path, data, results in tables:
        if len(tables) > 1:
            print(f"# {path}")
        if not results:
            print(f"error: {path} has no benchmark with per-round timings (extra_info "
                  f"'case' and 'rounds')", file=sys.stderr)
            status = 1
            continue
        for line in blas_summary(data):
            print(f"# {line}")
        peaks = bench_table.peaks_from_benchmarks(data["benchmarks"])
        print(bench_table.format_table(results, markdown=args.markdown, peaks=peaks))
    return status


if __name__ == "__main__":
    sys.exit(main())

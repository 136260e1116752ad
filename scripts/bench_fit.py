"""Training epochs of ``cbn.fit`` against NumPy and the GEMM bounds, in one process, with no
pause between them, optionally beside other busy processes.

    python scripts/bench_fit.py [--hidden 50,50] [--batch 100] [--rows 9000]
                                [--source float32|uint8] [--rounds 7] [--busy 1]

Each round runs one epoch of every contender back to back, in the order cbn, numpy, gemm,
gemm+rows (the contenders of ``tests/test_benchmarks.py``: cbn through ``fit(..., epochs=1)``,
the preallocated NumPy implementation, the products alone, and the products after reading
each batch's rows as stored). Each ratio is taken within a round; the line gives the
medians over the rounds. ``--busy N`` starts N processes that spin for the whole run, as
another user's work on the same cores would.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_benchmarks as tb  # noqa: E402  (the contenders live in the test tree)

CONTENDERS = ("cbn", "numpy", "gemm", "gemm+rows")


def epochs(hidden: List[int], batch: int, rows: int, source: str) -> Dict[str, Callable]:
    """One epoch over ``rows`` images per call, for each contender."""
    case = tb.Case("epoch", tuple(hidden), True, batch, source)
    return tb.blocks(case, rows, CONTENDERS)


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="50,50", help="hidden widths, comma-separated")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rows", type=int, default=9000, help="images per epoch")
    parser.add_argument("--source", choices=("float32", "uint8"), default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--busy", type=int, default=0, help="busy processes beside the run")
    args = parser.parse_args(argv)
    hidden = [int(w) for w in args.hidden.split(",")]
    if args.rows < args.batch or args.rows % args.batch:
        parser.error("--rows must be a multiple of --batch")
    runs = epochs(hidden, args.batch, args.rows, args.source)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        for run in runs.values():  # warm-up round
            run()
        rounds = [{c: timed(run) for c, run in runs.items()} for _ in range(args.rounds)]
    finally:
        for process in busy:
            process.kill()
    median = {c: statistics.median(r[c] for r in rounds) for c in CONTENDERS}
    ratio = {c: statistics.median(r["cbn"] / r[c] for r in rounds) for c in CONTENDERS[1:]}
    print(f"{hidden} b{args.batch} {args.source} {args.rows} rows, {args.busy} busy: "
          + ", ".join(f"{c} {median[c] * 1e3:.0f} ms" for c in CONTENDERS)
          + "; " + ", ".join(f"cbn/{c} {ratio[c]:.2f}" for c in CONTENDERS[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

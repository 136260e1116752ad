"""Step ratios that survive a machine whose speed drifts: contenders timed in alternation.

    python scripts/bench_alternate.py [--rounds 10] [--cases "3-layer BN b100,..."] [--dtypes float32]

Single training steps (``tests/test_benchmarks.py`` times epochs, wide steps and an
evaluation the same way, with no pause). Every round times each contender of a case once (in
rotating order), a block of steps each, and the ratio is taken within the round; the table
gives the median over the rounds and the spread (first and third quartiles). The contenders are those of
``tests/test_benchmarks.py`` (same networks, data and steps). Before each block the script
sleeps ``--pause`` seconds so that the previous contender's thread pool has parked: two
pools spinning at once on two cores would slow both.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_benchmarks as tb  # noqa: E402  (the contenders and cases live in the test tree)


def block_time(step, seconds: float, pause: float) -> float:
    """Median seconds per call over a block of about ``seconds``, after a pause and a warm-up."""
    time.sleep(pause)
    for _ in range(3):
        step()
    start = time.perf_counter()
    step()
    calls = max(10, int(seconds / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cases", default=",".join(tb.STEP_CASES))
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--block", type=float, default=0.2, help="seconds per timed block")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds before each block")
    args = parser.parse_args(argv)
    contenders = [c for c in tb.CONTENDERS
                  if c != "torch" or importlib.util.find_spec("torch") is not None]
    X, y, norm = tb.images(tb.STEP_ROWS)
    others = [c for c in contenders if c != "cbn"]
    print(f"# {args.rounds} rounds; median over rounds of the within-round ratio [quartiles]")
    print("case | cbn ms | " + " | ".join(f"cbn/{c}" for c in others))
    for case in args.cases.split(","):
        hidden, batch_norm, batch = tb.STEP_CASES[case]
        for dtype in args.dtypes.split(","):
            steps = {c: tb.stepper(c, tb.net_for(hidden, batch_norm, dtype), X, y, norm, batch)
                     for c in contenders}
            times: Dict[str, List[float]] = {c: [] for c in contenders}
            for r in range(args.rounds):
                for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
                    times[c].append(block_time(steps[c], args.block, args.pause))
            cbn = np.array(times["cbn"])
            cells = []
            for c in others:
                q1, med, q3 = np.percentile(cbn / np.array(times[c]), [25, 50, 75])
                cells.append(f"{med:.2f} [{q1:.2f}-{q3:.2f}]")
            print(f"step {case} {dtype} | {np.median(cbn) * 1e3:.3f} | " + " | ".join(cells),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

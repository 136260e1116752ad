"""fp32 against bf16-mixed training, interleaved in one process (docs/benchmarks.md,
"bf16-mixed").

For each case, one float32 network and one bf16-mixed network of the same architecture and
seed take epochs of training steps in turn, from uint8 rows standardised in the gather (as
``fit`` does); the best epoch of each is kept, so a burst of load elsewhere on the machine
hurts both alike. Prints one line per case: ms per step of each and the ratio.

    python scripts/bench_bf16.py [--rounds 7] [--rows 5120] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cbn
from cbn import _ops, bf16, inputs

CASES = [([1024, 1024], 100), ([1024, 1024], 256), ([50, 50], 100)]


def epoch_of(hidden, precision: str, batch: int, X: np.ndarray, y: np.ndarray, norm):
    """One epoch of plain SGD steps over X's rows in a fixed shuffled order."""
    net = cbn.Network(X.shape[1], hidden, 10, precision=precision, seed=0)
    plan = net.plan(batch)
    src, shift, scale = net.prepare_input(X, norm)
    order = np.random.default_rng(1).permutation(X.shape[0]).astype(np.int64)
    plan.set_data(src, y, order, shift, scale)
    starts = range(0, X.shape[0] - batch + 1, batch)

    def epoch() -> None:
        for b, start in enumerate(starts):
            plan.train_step(start, batch, 0.01, 1e-4, 0.0, b == 0, False, b)
    return epoch, len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=5120)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of cbn's pool (default: one per core)")
    args = parser.parse_args()
    if args.threads is not None:
        _ops.set_threads(args.threads)
    print(bf16.describe())
    if not bf16.available():
        return
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (args.rows, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, args.rows).astype(np.int64)
    norm = inputs.Normalization(X.mean(axis=0), X.std(axis=0) + 1)
    for hidden, batch in CASES:
        runs = {p: epoch_of(hidden, p, batch, X, y, norm) for p in ("fp32", "bf16-mixed")}
        best = {p: float("inf") for p in runs}
        for _ in range(args.rounds):
            for p, (epoch, _) in runs.items():
                started = time.perf_counter()
                epoch()
                best[p] = min(best[p], time.perf_counter() - started)
        steps = runs["fp32"][1]
        print(f"{hidden} batch {batch}: fp32 {1e3 * best['fp32'] / steps:.2f} ms/step, "
              f"bf16-mixed {1e3 * best['bf16-mixed'] / steps:.2f} ms/step, "
              f"{best['fp32'] / best['bf16-mixed']:.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Exercise 2 of DD2424 assignment 3: analytic gradients against numerical ones.

Checks every parameter (W, b, gamma, beta of every layer) of a 3-layer [50, 50] and a 9-layer
[50, 30, 20, 20, 10, 10, 10, 10] network, with and without batch norm, on a few real training
images reduced to their first --dims features (as the course suggests, to keep the finite
differences cheap). Uses cbn.gradcheck: fourth-order centred differences in float64, entries
whose stencil crosses a ReLU kink redone with a smaller step. Writes a table of the maximum
relative error per layer and parameter and a bar chart; exits with status 1 if any error
exceeds --tolerance.

    python examples/gradient_check.py --data /path/to/cifar-10-batches-py
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional

from cbn.lab.experiment import GRADCHECK_NETWORKS, gradient_checks
from cbn.lab.options import gradcheck_arguments
from cbn.lab.record import (ExampleRecord, example_parser, load_data, parse_example_args,
                            run_example)
from cbn.lab.plots import plot_gradcheck
from cbn.lab.tables import markdown_table

NAME = "gradient_check"
PARAMETERS = ("W", "b", "gamma", "beta")
QUICK_ENTRIES = 5  # entries checked per parameter under --quick


def layer_table(rows: List[Dict[str, float]]) -> str:
    """Maximum relative error per layer (rows) and parameter kind (columns)."""
    by_layer: Dict[int, Dict[str, float]] = {}
    for row in rows:
        kind = row["name"].rstrip("0123456789")
        by_layer.setdefault(row["layer"], {})[kind] = row["max_relative_error"]
    return markdown_table(["layer"] + list(PARAMETERS),
                          [[layer] + [f"{errors[p]:.2e}" if p in errors else "–"
                                      for p in PARAMETERS]
                           for layer, errors in sorted(by_layer.items())])


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0], runs=None, dtype="float64")
    gradcheck_arguments(parser)
    args = parse_example_args(parser, argv)
    data = load_data(args)
    if not 2 <= args.n <= len(data.train) or not 1 <= args.dims <= data.train.images.shape[1]:
        parser.error(f"--n must be in 2..{len(data.train)} and --dims in "
                     f"1..{data.train.images.shape[1]}")
    record = ExampleRecord(NAME, args, data)
    max_entries = QUICK_ENTRIES if args.quick else None
    checks = gradient_checks(data, n=args.n, dims=args.dims, lam=args.lam,
                             tolerance=args.tolerance, seed=args.seed, dtype=args.dtype,
                             max_entries=max_entries)

    tables, figure_rows = [], {}
    for key, result in checks.items():
        name, variant = key.split("/")
        bn = variant == "bn"
        entry = result.as_dict()
        entry.update(hidden=list(GRADCHECK_NETWORKS[name]), batch_norm=bn, n=args.n,
                     input_dim=args.dims, lam=args.lam, seed=args.seed)
        record.add(key, entry)
        label = f"{name} {'with' if bn else 'without'} BN"
        figure_rows[label] = result.rows
        verdict = "passed" if result.passed else "**FAILED**"
        entries = sum(r["entries"] for r in result.rows)
        kinks = sum(r["kinks"] for r in result.rows)
        skipped = sum(r["skipped"] for r in result.rows)
        tables += [f"## {label}: max relative error {result.max_relative_error:.2e} "
                   f"({verdict})", "",
                   f"{entries} entries checked; {kinks} crossed a ReLU kink at h = 1e-3 "
                   f"and were redone with a smaller step, {skipped} still did and were "
                   "skipped.", "", layer_table(result.rows), ""]
        print(f"{key}: max relative error {result.max_relative_error:.2e} ({verdict})",
              file=sys.stderr)
    plot_gradcheck(record.figure("gradcheck.png"), figure_rows, args.tolerance,
                   title=record.caption())

    worst = max(e["max_relative_error"] for e in record.entries.values())
    passed = worst <= args.tolerance
    checked = "every entry" if max_entries is None else f"{max_entries} entries"
    summary = "\n".join([
        "# Gradient check: analytic vs numerical gradients", "",
        f"Largest relative error over all networks and parameters: **{worst:.2e}** "
        f"(tolerance {args.tolerance:g}: {'passed' if passed else 'FAILED'}).", "",
        f"Batch: the first {args.n} training images, first {args.dims} features, "
        f"standardised; λ = {args.lam}; He init (seed {args.seed}); {checked} of each "
        "parameter checked in float64 against fourth-order centred differences (h = 1e-3). "
        "Relative error |a − n| / max(1e-6, |a| + |n|). The biases of layers followed by BN "
        "have zero gradient by construction (BN subtracts the batch mean), so they are "
        "compared with an absolute floor of 1 instead.", ""] + tables)
    record.write(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

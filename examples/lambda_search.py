"""Exercise 4 of DD2424 assignment 3: search the L2 strength lambda of the 3-layer BN network.

A coarse random search with log10(lambda) uniform in [-5, -1] (2 cycles per trial), a fine
random search in the range narrowed around the best coarse trials (cbn.lab.search.refine), then
the best lambda of both trained for 3 cycles with several seeds. Everything else is the course
setting: [50, 50] with BN, He init, eta 1e-5..1e-1, batch 100, n_s = 5 * n_train / 100.
Trials are picked by validation accuracy only; the test set is scored once per final run.

Trials run in worker processes (cbn.lab.search; --workers 0 runs them here) and are saved as
they finish to coarse.jsonl and fine.jsonl in --out, so an interrupted search resumes where
it stopped when run again with the same options.

    python examples/lambda_search.py --data /path/to/cifar-10-batches-py
"""
from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional, Sequence

from cbn.lab.experiment import example_config, summarize
from cbn.lab.record import (ExampleRecord, example_parser, load_data, parse_example_args,
                            run_example, show_progress)
from cbn.lab.plots import plot_accuracy_vs_lambda
from cbn.lab.tables import accuracy_table, markdown_table, number, percent
from cbn.lab.search import DataSpec, LogUniform, best, refine, search, write_csv

NAME = "lambda_search"
HIDDEN = (50, 50)
COARSE_RANGE = (1e-5, 1e-1)  # log10 lambda uniform in [-5, -1]
TOP = 3                      # the fine range spans the best TOP coarse trials (plus a margin)
PAD = 0.1                    # margin on each side, as a fraction of the coarse log-range
QUICK_TRIALS = 3


def trial_table(records: Sequence[Dict[str, object]]) -> str:
    """A search's trials sorted by validation accuracy (best first); failed ones last."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["val_accuracy"])
    rows = [[rank, r["trial"], f"{r['lam']:.3e}", f"{math.log10(r['lam']):.3f}",
             percent(r["train_accuracy"]), percent(r["val_accuracy"]),
             number(r["wall_time"], ".1f")] for rank, r in enumerate(ok, 1)]
    rows += [["–", r["trial"], f"{r['lam']:.3e}", f"{math.log10(r['lam']):.3f}", "failed",
              r["error"], "–"] for r in records if r["status"] != "ok"]
    return markdown_table(["rank", "trial", "λ", "log10 λ", "train acc. (%)", "val acc. (%)",
                           "wall time (s)"], rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--coarse", type=int, default=16,
                        help=f"trials of the coarse search (default 16, {QUICK_TRIALS} with "
                             "--quick)")
    parser.add_argument("--fine", type=int, default=16,
                        help=f"trials of the fine search (default 16, {QUICK_TRIALS} with "
                             "--quick)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes for the trials (default: one per core; "
                             "0 runs them in this process)")
    args = parse_example_args(parser, argv)
    if args.quick:
        args.coarse, args.fine = (min(n, QUICK_TRIALS) for n in (args.coarse, args.fine))
        args.workers = 0 if args.workers is None else args.workers
    if args.coarse < 1 or args.fine < 1 or (args.workers is not None and args.workers < 0):
        parser.error("--coarse and --fine must be >= 1 and --workers >= 0")
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    n_train = len(data.train)
    base = example_config(args, n_train, hidden=HIDDEN, batch_norm=True, cycles=2)
    base = base.with_(eval_every=None)  # trials are scored at the end; curves not needed
    blas = args.blas_threads or 1  # per trial, the same everywhere (see cbn.lab.search)
    if args.workers == 0:
        trial_data, options = data, dict(executor="serial", blas_threads=blas)
    else:  # workers load the data themselves, from the folder this process found
        trial_data = DataSpec("sample" if data.source == "sample" else data.source,
                              protocol=args.protocol)
        options = dict(executor="processes", max_workers=args.workers, blas_threads=blas)
    options["progress"] = show_progress(args)

    space = {"lam": LogUniform(*COARSE_RANGE)}
    coarse = search(trial_data, space, args.coarse, base=base, seed=args.seed,
                    results=record.folder / "coarse.jsonl", **options)
    fine_space = refine(space, coarse, top=TOP, pad=PAD)
    fine = search(trial_data, fine_space, args.fine, base=base, seed=args.seed + 1,
                  results=record.folder / "fine.jsonl", **options)
    for stage, records in (("coarse search", coarse), ("fine search", fine)):
        record.note_run_times(stage, [r for r in records if r["status"] == "ok"])
    write_csv(coarse, record.folder / "coarse.csv")
    write_csv(fine, record.folder / "fine.csv")
    chosen = best(coarse + fine)
    for stage, records in (("coarse", coarse), ("fine", fine)):
        top = best(records)
        record.add(f"{stage}/best", {k: top[k] for k in ("lam", "trial", "seed",
                                                         "train_accuracy", "val_accuracy",
                                                         "test_accuracy", "wall_time")})
    record.add("search", {
        "coarse_range": list(COARSE_RANGE),
        "fine_range": [fine_space["lam"].low, fine_space["lam"].high],
        "top": TOP, "pad": PAD, "best_lam": chosen["lam"],
        "best_val_accuracy": chosen["val_accuracy"],
        "coarse": coarse, "fine": fine})
    plot_accuracy_vs_lambda(
        record.figure("val_accuracy_vs_lambda.png"),
        {stage: [(r["lam"], r["val_accuracy"]) for r in records if r["status"] == "ok"]
         for stage, records in (("coarse search", coarse), ("fine search", fine))},
        chosen["lam"], span=(fine_space["lam"].low, fine_space["lam"].high),
        title=record.caption(runs=f"one run per trial, search seeds {args.seed} (coarse) "
                                  f"and {args.seed + 1} (fine)"))

    final_config = example_config(args, n_train, hidden=HIDDEN, batch_norm=True, cycles=3,
                                  lam=chosen["lam"])
    seeds = [args.seed + i for i in range(args.runs)]
    record.add("final", summarize(record.repeat(data, final_config, seeds, "final")))

    low, high = fine_space["lam"].low, fine_space["lam"].high
    summary = "\n".join([
        "# Searching λ for the 3-layer network with BN", "",
        f"Course setting otherwise ([50, 50] with BN, He init, η ∈ [{base.eta_min:g}, "
        f"{base.eta_max:g}], batch {base.batch_size}, n_s = {base.resolved_step_size(n_train)}"
        f", {base.dtype}). Trials are ranked by validation accuracy.", "",
        f"## Coarse search: {args.coarse} trials, log10 λ uniform in "
        f"[{math.log10(COARSE_RANGE[0]):g}, {math.log10(COARSE_RANGE[1]):g}], 2 cycles", "",
        trial_table(coarse), "",
        f"## Fine search: {args.fine} trials, log10 λ uniform in [{math.log10(low):.3f}, "
        f"{math.log10(high):.3f}], 2 cycles", "",
        f"The range spans the best {TOP} coarse trials, widened by {PAD:g} × the coarse "
        "log-range on each side.", "",
        trial_table(fine), "",
        f"## Best λ = {chosen['lam']:.4e} (validation {percent(chosen['val_accuracy'])} %), "
        f"trained for 3 cycles", "",
        f"{args.runs} run(s), seeds {', '.join(map(str, seeds))}.", "",
        accuracy_table({"final": record.entries["final"]},
                       {"final": f"λ = {chosen['lam']:.3e}, 3 cycles"})])
    record.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

"""Sensitivity to initialisation (DD2424 assignment 3): weights drawn from N(0, sigma^2) with
sigma in {1e-1, 1e-3, 1e-4} (--with-1e-5 adds 1e-5, as in the original report), with and
without batch norm, in the 3-layer [50, 50] network of the course setting (lambda 0.005,
eta 1e-5..1e-1, batch 100, n_s = 5 * n_train / 100, 2 cycles).

Writes the loss curves as a grid (one row per sigma, BN and no BN side by side), an accuracy
table, and, going past the report, the test accuracy of the BN networks with the BN
statistics taken from the running averages (the correct rule), from running averages never
updated, or from batches of test images (what training-mode BN computes): the ways test-time
BN goes wrong, and what each costs.

    python examples/sensitivity.py --data /path/to/cifar-10-batches-py [--with-1e-5]
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional

from cbn.lab.experiment import (bn_statistics_accuracy, example_config, mean_std, run_configs,
                                setting_sentence)
from cbn.lab.record import (ExampleRecord, example_parser, load_data, parse_example_args,
                            run_example)
from cbn.lab.plots import plot_bn_statistics, plot_sensitivity
from cbn.lab.tables import accuracy_table, markdown_table, percent

NAME = "sensitivity"
HIDDEN = (50, 50)
SIGMAS = {"1e-1": 1e-1, "1e-3": 1e-3, "1e-4": 1e-4}
EXTRA_SIGMA = {"1e-5": 1e-5}
TEST_BATCHES = (100, 10, 2)  # batch sizes whose own statistics are used in the BN comparison
AT_CHANCE = 0.11  # a run whose test accuracy ends below this learned nothing (chance is 0.10)


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--with-1e-5", dest="with_1e5", action="store_true",
                        help="also sigma = 1e-5, as in the original report")
    args = parse_example_args(parser, argv)
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    n_train = len(data.train)
    sigmas = dict(SIGMAS, **(EXTRA_SIGMA if args.with_1e5 else {}))
    configs, labels = {}, {}
    for label, sigma in sigmas.items():
        for bn in (False, True):
            key = f"sigma={label}/{'bn' if bn else 'no_bn'}"
            configs[key] = example_config(args, n_train, hidden=HIDDEN, batch_norm=bn,
                                          init=sigma)
            labels[key] = f"σ = {label}, {'with' if bn else 'without'} BN"
    seeds = [args.seed + i for i in range(args.runs)]
    runs = run_configs(data, configs, seeds, record)

    # BN at test time: running statistics vs statistics of batches of test images.
    by_source: Dict[str, Dict[str, float]] = {}
    rows = []
    for key, results in runs.items():
        if not configs[key].batch_norm:
            continue
        per_run = [bn_statistics_accuracy(r.net, data.test.images, data.test.labels,
                                          data.normalization, TEST_BATCHES) for r in results]
        entry = {source: mean_std([acc[source] for acc in per_run]) for source in per_run[0]}
        record.entries[key]["test_accuracy_by_bn_statistics"] = entry
        sigma_label = key.split("/")[0].replace("sigma=", "σ = ")
        by_source[sigma_label] = {source: value["mean"] for source, value in entry.items()}
        rows.append([sigma_label] + [percent(value) for value in entry.values()])
    sources = list(next(iter(by_source.values())))
    bn_table = markdown_table(["with BN"] + [f"{s} (%)" for s in sources], rows)

    grid = {(f"σ = {key.split('/')[0][6:]}", "with BN" if configs[key].batch_norm
             else "without BN"): [r.history for r in results] for key, results in runs.items()}
    caption = record.caption(seeds)
    plot_sensitivity(record.figure("loss_grid.png"), grid, "loss", title=caption)
    plot_sensitivity(record.figure("accuracy_grid.png"), grid, "accuracy", title=caption)
    plot_bn_statistics(record.figure("bn_statistics.png"), by_source, title=caption)

    stuck = [f"{labels[key]}: {n} of {len(runs[key])}" for key in configs
             if (n := sum(r.metrics["test_accuracy"] < AT_CHANCE for r in runs[key]))]
    config = next(iter(configs.values()))
    summary = "\n".join([
        "# Sensitivity to the initial weight scale σ", "",
        f"3-layer {list(HIDDEN)}, every weight drawn from N(0, σ²); "
        f"{setting_sentence(config, n_train, args.runs, seeds)}. "
        "Accuracies in evaluation mode (BN running statistics). Chance is 10 %.", "",
        accuracy_table(record.entries, labels), "",
        f"Runs that ended at chance (test accuracy below {100 * AT_CHANCE:g} %): "
        f"{'; '.join(stuck) if stuck else 'none'}.", "",
        "## BN at test time: where the normalisation statistics come from", "",
        "Test accuracy of the BN networks above with the statistics of BN taken from the "
        "running averages kept in training (the correct rule), from running averages never "
        "updated (mean 0, variance 1), from the whole test set as one batch "
        "(`predict_proba(X, mode=\"train\")`), or from consecutive batches of m test images "
        "(each prediction then depends on the other images in its batch).", "",
        bn_table])
    record.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

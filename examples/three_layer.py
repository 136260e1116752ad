"""Exercise 3 of DD2424 assignment 3: a 3-layer network [50, 50] with and without batch norm.

Course setting: He initialisation, eta 1e-5..1e-1 (cyclical), batch 100, lambda 0.005,
n_s = 5 * n_train / 100 (2250 on the full protocol), 2 cycles. Each configuration is trained
with several seeds; writes the mean +- std of training/validation/test accuracy and the
cost, loss and accuracy curves (training vs validation) to --out.

    python examples/three_layer.py --data /path/to/cifar-10-batches-py
"""
from __future__ import annotations

import sys
from typing import List, Optional

from cbn.lab.experiment import example_config, run_configs, setting_sentence
from cbn.lab.record import (ExampleRecord, example_parser, load_data, parse_example_args,
                            run_example)
from cbn.lab.plots import METRICS, plot_curves
from cbn.lab.tables import accuracy_table

NAME = "three_layer"
HIDDEN = (50, 50)
LABELS = {"no_bn": "3-layer without BN", "bn": "3-layer with BN"}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_example_args(example_parser(NAME, __doc__.split("\n\n")[0]), argv)
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    n_train = len(data.train)
    configs = {key: example_config(args, n_train, hidden=HIDDEN, batch_norm=(key == "bn"))
               for key in LABELS}
    seeds = [args.seed + i for i in range(args.runs)]
    runs = run_configs(data, configs, seeds, record)

    for metric in METRICS:
        plot_curves(record.figure(f"{metric}.png"),
                    {LABELS[k]: [r.history for r in runs[k]] for k in LABELS}, metric,
                    title=record.caption(seeds))
    config = configs["bn"]
    summary = "\n".join([
        "# 3-layer network [50, 50], with and without batch normalisation", "",
        f"He init, {setting_sentence(config, n_train, args.runs, seeds)}; accuracies in "
        "evaluation mode (BN running statistics).", "",
        accuracy_table(record.entries, LABELS)])
    record.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

"""Exercise 3 of DD2424 assignment 3, deeper: a 9-layer network [50, 30, 20, 20, 10, 10, 10,
10] with and without batch norm (and, with --depths 9 6, the original report's 6-layer
variant [50, 30, 20, 20, 10]).

Same setting as the 3-layer exercise: He initialisation, eta 1e-5..1e-1 (cyclical), batch
100, lambda 0.005, n_s = 5 * n_train / 100, 2 cycles, several seeds; writes the mean +- std of
training/validation/test accuracy and the cost, loss and accuracy curves to --out.

    python examples/deep_network.py --data /path/to/cifar-10-batches-py [--depths 9 6]
"""
from __future__ import annotations

import sys
from typing import List, Optional

from cbn.lab.experiment import example_config, run_configs, setting_sentence
from cbn.lab.record import (ExampleRecord, example_parser, load_data, parse_example_args,
                            run_example)
from cbn.lab.plots import METRICS, plot_curves
from cbn.lab.tables import accuracy_table

NAME = "deep_network"
HIDDEN = {9: (50, 30, 20, 20, 10, 10, 10, 10), 6: (50, 30, 20, 20, 10)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", choices=sorted(HIDDEN), default=[9],
                        help="network depths (number of linear layers) to train (default 9)")
    args = parse_example_args(parser, argv)
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    n_train = len(data.train)
    configs, labels = {}, {}
    for depth in dict.fromkeys(args.depths):
        for bn in (False, True):
            key = f"{depth}-layer/{'bn' if bn else 'no_bn'}"
            configs[key] = example_config(args, n_train, hidden=HIDDEN[depth], batch_norm=bn)
            labels[key] = f"{depth}-layer {'with' if bn else 'without'} BN"
    seeds = [args.seed + i for i in range(args.runs)]
    runs = run_configs(data, configs, seeds, record)

    for metric in METRICS:
        plot_curves(record.figure(f"{metric}.png"),
                    {labels[k]: [r.history for r in runs[k]] for k in configs}, metric,
                    title=record.caption(seeds))
    config = next(iter(configs.values()))
    widths = "; ".join(f"{d}-layer: {list(HIDDEN[d])}" for d in dict.fromkeys(args.depths))
    summary = "\n".join([
        "# Deep networks, with and without batch normalisation", "",
        f"Hidden widths {widths}. He init, "
        f"{setting_sentence(config, n_train, args.runs, seeds)}; "
        "accuracies in evaluation mode (BN running statistics).", "",
        accuracy_table(record.entries, labels)])
    record.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

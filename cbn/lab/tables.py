"""Markdown tables of results: the cells (accuracies in percent, means ± std) and the tables
the examples write into their ``summary.md`` and the report gathers."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(c).replace("|", "\\|") for c in row]
        if len(cells) != len(headers):
            raise ValueError(f"row {cells} has {len(cells)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _float(value) -> float:
    """A number of a results file as a float; null (a value that was NaN or infinite when
    written as strict JSON) as NaN."""
    return math.nan if value is None else float(value)


def mean_of(value) -> float:
    """The number in a results value: a float, or the ``"mean"`` of a mean/std dict; null
    as NaN."""
    if isinstance(value, Mapping):
        return _float(value["mean"])
    return _float(value)


# Runs whose accuracies spread wider than this (a std in fractions) are shown one by one:
# some trained and some did not, and a mean would describe none of them.
SPLIT_STD = 0.05


def percent(value, digits: int = 2) -> str:
    """An accuracy (fraction, or mean/std dict of fractions) as ``"53.61 ± 0.21"`` percent,
    with the number of runs when there are several; runs that spread wider than SPLIT_STD
    as each run's value (``"10.00, 44.06, 50.95 (per run)"``)."""
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        n = len(value.get("values", ()))
        if n <= 1:  # a single run has no spread to show
            return f"{100 * _float(value['mean']):.{digits}f}"
        if _float(value["std"]) > SPLIT_STD:
            return ", ".join(f"{100 * _float(v):.{digits}f}" for v in value["values"]) + \
                " (per run)"
        return (f"{100 * _float(value['mean']):.{digits}f} ± "
                f"{100 * _float(value['std']):.{digits}f} (n={n})")
    return f"{100 * float(value):.{digits}f}"


def number(value, fmt: str = ".4f") -> str:
    """A float or mean/std dict formatted as ``mean ± std``."""
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        if len(value.get("values", ())) <= 1:
            return f"{_float(value['mean']):{fmt}}"
        return f"{_float(value['mean']):{fmt}} ± {_float(value['std']):{fmt}}"
    return f"{float(value):{fmt}}"


def accuracy_table(entries: Mapping[str, Mapping[str, object]],
                   labels: Optional[Mapping[str, str]] = None) -> str:
    """Training/validation/test accuracy (%) and test loss of each configuration (mean ±
    std over runs), with the mean wall time of one run."""
    rows = []
    for key, entry in entries.items():
        rows.append([labels.get(key, key) if labels else key,
                     percent(entry["train_accuracy"]), percent(entry["val_accuracy"]),
                     percent(entry["test_accuracy"]), number(entry.get("test_loss")),
                     number(entry.get("wall_time"), ".1f")])
    return markdown_table(["configuration", "train acc. (%)", "val acc. (%)", "test acc. (%)",
                           "test loss", "wall time / run (s)"], rows)

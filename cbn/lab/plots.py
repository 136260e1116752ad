"""The examples' figures, one function per figure, written as PNG files.

Figures are matplotlib ``Figure`` objects drawn without pyplot, so no backend or other global
state of matplotlib is chosen or changed (nothing is shown; PNG needs no display). Curves
over several runs are drawn as their mean, with each run as a thin line behind it, unless
the runs end far apart (some train, some stay at chance): a mean of such runs describes none
of them, so each run is then drawn as its own line. Every function takes a ``title`` (the
examples state the data set, protocol and seeds there).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._files import PathLike, atomic_write, user_path
from ..train import History
METRICS = ("cost", "loss", "accuracy")
DPI = 110
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"


def _series(histories: Sequence[History], name: str) -> Tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Steps, mean and std of one recorded series over runs (truncated to the shortest)."""
    length = min(min(len(h.step), len(getattr(h, name))) for h in histories)  # may be unrecorded
    values = np.array([getattr(h, name)[:length] for h in histories], dtype=np.float64)
    return (np.asarray(histories[0].step[:length]), values.mean(axis=0), values.std(axis=0))


def _subplots(rows: int = 1, cols: int = 1, *, figsize: Tuple[float, float], **kwargs):
    """``pyplot.subplots`` without pyplot: a new ``Figure`` on an Agg canvas, and its axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


# Runs "disagree" when their final values spread over more than this fraction of how far
# the curves move (seed noise of runs that all train is a few percent of it) and over more
# than FLOOR of the values' size (runs stuck at chance move by rounding noise only).
DISAGREE = 0.25
FLOOR = 0.05


def runs_disagree(histories: Sequence[History], name: str) -> bool:
    """Whether the runs' final ``name`` values lie so far apart (more than DISAGREE of the
    curves' own range, and more than FLOOR of their size) that their mean would describe
    none of them."""
    steps, _, _ = _series(histories, name)
    if len(histories) < 2 or not steps.size:
        return False
    values = np.array([getattr(h, name)[:steps.size] for h in histories], dtype=np.float64)
    if not np.isfinite(values).all():
        return True
    final = values[:, -1]
    spread = float(final.max() - final.min())
    return spread > DISAGREE * float(values.max() - values.min()) and \
        spread > FLOOR * float(np.abs(values).max())


def _band(ax, histories: Sequence[History], name: str, label: str, color: str) -> bool:
    """The mean over runs as a line with markers, and each run as a thin faint line (not a
    +- std band, which would hide runs that behave differently); runs that disagree
    (:func:`runs_disagree`) each as their own labelled line instead. Returns whether the
    runs were drawn one by one."""
    steps, mean, _ = _series(histories, name)
    if not steps.size:
        return False
    if runs_disagree(histories, name):
        for k, history in enumerate(histories):
            ax.plot(steps, getattr(history, name)[:steps.size], color=color,
                    linestyle=("-", "--", ":", "-.")[k % 4], linewidth=1.2,
                    label=f"{label}, run {k + 1}")
        return True
    if len(histories) > 1:
        for history in histories:
            values = getattr(history, name)[:steps.size]
            ax.plot(steps, values, color=color, alpha=0.35, linewidth=0.7)
    ax.plot(steps, mean, color=color, label=label, marker="o", markersize=2.5, linewidth=1.3)
    return False


def _how(runs: int, apart: bool) -> str:
    if runs < 2:
        return ""
    return f" ({runs} runs, one line each)" if apart else f" (mean of {runs} runs)"


def _finish(fig, path: PathLike, title: Optional[str]) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` (its format from the suffix, PNG when it has none) through
    the atomic writer, close it and return the path: an interrupted save leaves any
    previous figure whole."""
    path = Path(user_path(path))
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower() or "png",
                                                 dpi=DPI, bbox_inches="tight"))
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a figure the caller made with pyplot: pyplot lets it go
            pyplot.close(fig)
    return path


def _grid(n: int, max_cols: int = 3) -> Tuple[int, int]:
    """Rows and columns for n panels: one row up to max_cols, else a near-square grid
    (2 x 2 for four, so pairs such as without/with BN line up)."""
    cols = n if n <= max_cols else min(max_cols, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def plot_curves(path: PathLike, panels: Mapping[str, Sequence[History]], metric: str, *,
                title: Optional[str] = None) -> Path:
    """Training vs validation ``metric`` ("cost", "loss" or "accuracy") against update
    steps, one panel per configuration (``panels``: title -> histories of its runs), on a
    shared y-axis so the panels compare at a glance. Accuracies are drawn in percent."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not panels or any(not runs for runs in panels.values()):
        raise ValueError("panels must map each title to at least one history")
    rows, cols = _grid(len(panels))
    fig, axes = _subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), sharey=True,
                          squeeze=False)
    scale = 100.0 if metric == "accuracy" else 1.0
    for ax, (name, runs) in zip(axes.flat, panels.items()):
        scaled = [_scaled(h, metric, scale) for h in runs]
        apart = _band(ax, scaled, f"train_{metric}", "training", TRAIN_COLOR)
        apart |= _band(ax, scaled, f"val_{metric}", "validation", VAL_COLOR)
        ax.set_title(name + _how(len(runs), apart), fontsize=10)
        if apart:
            ax.legend(fontsize=7)
        ax.set_xlabel("update step")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _finish(fig, path, title)


def _scaled(history: History, metric: str, scale: float) -> History:
    """A History whose train/val ``metric`` series are multiplied by ``scale``."""
    if scale == 1.0:
        return history
    out = History(step=list(history.step))
    for prefix in ("train", "val"):
        name = f"{prefix}_{metric}"
        setattr(out, name, [v * scale for v in getattr(history, name)])
    return out


def plot_gradcheck(path: PathLike, results: Mapping[str, Sequence[Mapping[str, float]]],
                   tolerance: float, *, title: Optional[str] = None) -> Path:
    """Maximum relative error of every parameter (log scale), one panel per network
    (``results``: title -> gradcheck rows with ``name`` and ``max_relative_error``), with
    the tolerance as a dashed line. Errors of exactly 0 are drawn at 1e-17."""
    if not results:
        raise ValueError("results must hold at least one network")
    rows, cols = _grid(len(results), max_cols=2)
    fig, axes = _subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), sharey=True,
                          squeeze=False)
    kinds = {"W": "tab:blue", "b": "tab:gray", "gamma": "tab:green", "beta": "tab:purple"}
    for ax, (name, table) in zip(axes.flat, results.items()):
        labels = [r["name"] for r in table]
        errors = [max(r["max_relative_error"], 1e-17) for r in table]
        colors = [kinds.get(label.rstrip("0123456789"), "black") for label in labels]
        ax.bar(range(len(labels)), errors, color=colors)
        ax.set_yscale("log")
        ax.axhline(tolerance, color="red", linestyle="--", linewidth=1,
                   label=f"tolerance {tolerance:g}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:, 0]:
        ax.set_ylabel("max relative error")
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _finish(fig, path, title)


def plot_sensitivity(path: PathLike, grid: Mapping[Tuple[str, str], Sequence[History]],
                     metric: str = "loss", *, title: Optional[str] = None) -> Path:
    """A grid of training/validation ``metric`` curves: one row per initial weight scale
    and one column per variant (``grid``: (row label, column label) -> histories). Each
    row shares its y-axis, so BN and no BN at the same sigma compare directly."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not grid or any(not runs for runs in grid.values()):
        raise ValueError("grid must map each cell to at least one history")
    row_labels = list(dict.fromkeys(r for r, _ in grid))
    col_labels = list(dict.fromkeys(c for _, c in grid))
    fig, axes = _subplots(len(row_labels), len(col_labels),
                          figsize=(4.6 * len(col_labels), 2.9 * len(row_labels)),
                          sharey="row", sharex=True, squeeze=False)
    scale = 100.0 if metric == "accuracy" else 1.0
    for i, row in enumerate(row_labels):
        for j, col in enumerate(col_labels):
            ax = axes[i, j]
            runs = grid.get((row, col))
            if not runs:
                ax.axis("off")
                continue
            scaled = [_scaled(h, metric, scale) for h in runs]
            apart = _band(ax, scaled, f"train_{metric}", "training", TRAIN_COLOR)
            apart |= _band(ax, scaled, f"val_{metric}", "validation", VAL_COLOR)
            ax.set_title(f"{row}, {col}" + _how(len(runs), apart), fontsize=9)
            if apart:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
    for ax in axes[-1]:
        ax.set_xlabel("update step")
    axes[0, 0].legend(fontsize=8)
    return _finish(fig, path, title)


def plot_bn_statistics(path: PathLike, accuracies: Mapping[str, Mapping[str, float]], *,
                       title: Optional[str] = None) -> Path:
    """Test accuracy of BN networks by where the BN statistics come from at test time
    (``accuracies``: network -> {source of statistics -> accuracy fraction}), as grouped
    bars in percent with chance (10 %) marked."""
    if not accuracies:
        raise ValueError("accuracies must hold at least one network")
    sources = list(dict.fromkeys(s for acc in accuracies.values() for s in acc))
    width = 0.8 / len(sources)
    fig, ax = _subplots(figsize=(max(6.0, 1.6 * len(accuracies) + 2), 3.6))
    x = np.arange(len(accuracies))
    for k, source in enumerate(sources):
        values = [100 * acc.get(source, np.nan) for acc in accuracies.values()]
        ax.bar(x + (k - (len(sources) - 1) / 2) * width, values, width, label=source)
    ax.axhline(10, color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(list(accuracies), fontsize=9)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("BN at test time: running statistics vs batch statistics", fontsize=10)
    # Right of the axes: inside, it would hide the bars of the last network.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path, title)


def plot_accuracy_vs_lambda(path: PathLike,
                            stages: Mapping[str, Sequence[Tuple[float, float]]],
                            best: Optional[float] = None, *, name: str = "λ",
                            xlabel: str = "λ (L2 strength)",
                            span: Optional[Tuple[float, float]] = None,
                            title: Optional[str] = None) -> Path:
    """Validation accuracy (percent) against lambda on a log axis, one marker style per
    search stage (``stages``: stage name -> (lambda, accuracy fraction) pairs), with the
    chosen lambda marked by a vertical line and, when given, a narrowed range ``span``
    (low, high) shaded. ``name``/``xlabel`` relabel it for another hyper-parameter."""
    if not stages:
        raise ValueError("stages must hold at least one stage")
    fig, ax = _subplots(figsize=(6.4, 3.8))
    if span is not None:
        ax.axvspan(span[0], span[1], color="tab:green", alpha=0.12,
                   label=f"fine range [{span[0]:.2g}, {span[1]:.2g}]")
    markers: Dict[int, str] = {0: "o", 1: "s", 2: "^", 3: "D"}
    for k, (stage, points) in enumerate(stages.items()):
        if not points:
            continue
        lams, accs = zip(*sorted(points))
        ax.semilogx(lams, [100 * a for a in accs], linestyle="none",
                    marker=markers.get(k, "o"), label=stage, alpha=0.85)
    if best is not None:
        ax.axvline(best, color="red", linestyle="--", linewidth=1, label=f"best {name} = {best:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _finish(fig, path, title)


def plot_search(records: Sequence[Mapping], path: PathLike, param: str = "lam") -> Path:
    """Validation accuracy against hyper-parameter ``param`` (log axis) of a search's records
    (from ``cbn.lab.search.search`` or ``coarse_to_fine``, one stage per ``round``), with the best
    trial's value marked. Failed trials are left out."""
    from .search import best  # here, so plotting needs no search machinery otherwise

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise ValueError("records holds no successful trial to plot")
    values = [r.get(param) for r in ok]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
           for v in values):
        raise ValueError(f"param {param!r} must be a positive number in every record for a "
                         f"log axis, got {values[:5]}")
    stages: Dict[str, list] = {}
    for record in ok:
        stage = f"round {record['round']}" if "round" in record else "trials"
        stages.setdefault(stage, []).append((record[param], record["val_accuracy"]))
    label = "λ (L2 strength)" if param == "lam" else param
    return plot_accuracy_vs_lambda(path, stages, best(ok)[param],
                                   name="λ" if param == "lam" else param, xlabel=label)


def plot_ablation(path: PathLike,
                  accuracies: Mapping[str, Mapping[str, Sequence[float]]]) -> Path:
    """Validation and test accuracy (mean with ± std error bars over runs, in percent) of
    each configuration (``accuracies``: name -> {"val": [...], "test": [...]}, fractions),
    as horizontal bars in the given order."""
    if not accuracies:
        raise ValueError("accuracies must hold at least one configuration")
    names = list(accuracies)
    y = np.arange(len(names))
    fig, ax = _subplots(figsize=(7.5, 0.45 * len(names) + 1.2))
    for offset, (split, color) in zip((-0.2, 0.2), (("val", VAL_COLOR), ("test", TRAIN_COLOR))):
        values = [100 * np.asarray(accuracies[n][split], dtype=np.float64) for n in names]
        ax.barh(y + offset, [v.mean() for v in values], height=0.38, color=color,
                xerr=[v.std() for v in values], capsize=2,
                label="validation" if split == "val" else "test")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    low = min(100 * min(min(a["val"]), min(a["test"])) for a in accuracies.values())
    ax.set_xlim(max(0.0, low - 5), None)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_vs_time(path: PathLike, runs: Mapping[str, Sequence[History]]) -> Path:
    """Validation accuracy (%) against wall-clock seconds of training, one line per run,
    one colour per configuration (``runs``: name -> histories)."""
    if not runs or any(not histories for histories in runs.values()):
        raise ValueError("runs must map each name to at least one history")
    fig, ax = _subplots(figsize=(6.4, 4.0))
    for i, (name, histories) in enumerate(runs.items()):
        color = f"C{i}"
        for j, h in enumerate(histories):
            ax.plot(h.wall_time, [100 * a for a in h.val_accuracy], color=color, marker="o",
                    markersize=2.5, linewidth=1.1, label=name if j == 0 else None)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)

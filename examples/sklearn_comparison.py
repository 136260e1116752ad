"""cbn's scikit-learn estimator against scikit-learn's own MLPClassifier: accuracy against
training time on CIFAR-10, and both in a Pipeline with a grid search on scikit-learn's digits.

CIFAR-10: the same hidden layers [50, 50], batch 100 and L2 strength (cbn's alpha 0.005 is
scikit-learn's alpha 1.0 at batch 100). cbn: the course's setting (batch norm, cyclical SGD
with eta 1e-5..1e-1, 2 cycles over --epochs epochs) on the raw uint8 pixels, standardised
inside. scikit-learn: as its users train it, with its defaults otherwise (Adam, learning
rate 1e-3, no batch norm, up to max_iter = 200 epochs, stopping when the training loss has
not improved by tol = 1e-4 for more than n_iter_no_change = 10 epochs) on float32 pixels
standardised by a StandardScaler fitted on the training split. Both train one epoch per call
(partial_fit; for scikit-learn this is its fit loop, given one RandomState for the whole
run, except that each epoch's order is a fresh permutation, not the last one reshuffled),
alternating epoch by epoch so both see the same machine load, and each epoch's
validation and test accuracy are measured against the training time so far (the evaluation
is not counted; the standardisation is, for both).

Digits (1,797 8x8 images, 75 % for the search, 25 % held out): StandardScaler + each
estimator in a Pipeline, GridSearchCV(n_jobs=2) over hidden layers and alpha (the same L2
strengths in each library's units), the best refitted and scored on the held-out images.

Needs scikit-learn (pip install "cbn[sklearn]").

    python examples/sklearn_comparison.py --data /path/to/cifar-10-batches-py --blas-threads 1
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import config_context  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from cbn.plots import save_figure  # noqa: E402
from cbn.record import (ExampleRecord, example_parser, load_data,  # noqa: E402
                        parse_example_args, run_example)
from cbn.tables import markdown_table, number, percent  # noqa: E402
from cbn.sklearn import MLPClassifier  # noqa: E402

NAME = "sklearn_comparison"
HIDDEN = (50, 50)
LAM, BATCH = 0.005, 100          # cbn's L2 strength and the batch size on CIFAR-10
DIGITS_BATCH = 32
DIGITS_LAMS = (1e-4, 1e-3, 5e-3)  # cbn's alpha; scikit-learn's is 2 * batch * lambda
LABELS = {"cbn": "cbn.sklearn.MLPClassifier", "sklearn": "sklearn MLPClassifier"}
# The targets: at cbn's training time at least this much more test accuracy, and
# scikit-learn's final test accuracy reached in at most this share of its training time.
TARGET_GAIN, TARGET_TIME_SHARE = 0.03, 0.2


def sklearn_alpha(lam: float, batch_size: int) -> float:
    """scikit-learn's alpha for cbn's L2 strength ``lam``: it adds alpha / (2 batch) sum W^2
    to each mini-batch's mean loss, cbn adds lam sum W^2."""
    return 2 * batch_size * lam


def sklearn_stops(loss_curve: Sequence[float], tol: float, n_iter_no_change: int) -> bool:
    """Whether scikit-learn's fit (Adam or constant-rate SGD, no early_stopping) would have
    stopped after the epochs of ``loss_curve``: the loss failed to beat the best so far by
    ``tol`` in more than ``n_iter_no_change`` consecutive epochs."""
    best, stale = math.inf, 0
    for loss in loss_curve:
        stale = stale + 1 if loss > best - tol else 0
        best = min(best, loss)
        if stale > n_iter_no_change:
            return True
    return False


class EpochRun:
    """One estimator trained an epoch per ``step()`` call, with its curve.

    ``prepare`` (X -> the rows the estimator reads, and the function mapping other rows
    alike) runs before the first epoch: the standardisation a user of that estimator would
    do, timed on the training rows (``prepare_time``) but not on the evaluation sets.
    ``stops`` says after an epoch whether the estimator's own fit would end there."""

    def __init__(self, estimator, X, y, evals: Dict[str, tuple], classes, max_epochs: int,
                 prepare=None, stops=None) -> None:
        self.estimator, self.X, self.y, self.evals = estimator, X, y, evals
        self.classes, self.max_epochs = classes, max_epochs
        self.prepare, self.stops = prepare, stops
        self.spent, self.prepare_time, self.done = 0.0, 0.0, False
        self.curve: Dict[str, list] = {"epoch": [], "train_time": [], "load_average": []}
        self.curve.update({f"{name}_accuracy": [] for name in evals})

    def step(self) -> None:
        """One more epoch (and the preparation before the first), then the evaluations."""
        started = time.perf_counter()
        if self.prepare is not None:
            self.X, transform = self.prepare(self.X)
            self.prepare_time = time.perf_counter() - started
            self.spent += self.prepare_time
            self.evals = {k: (transform(Xe), ye) for k, (Xe, ye) in self.evals.items()}
            self.prepare, started = None, time.perf_counter()
        # The data are finite: skip the check each call would repeat (fit makes it once).
        with config_context(assume_finite=True):
            self.estimator.partial_fit(self.X, self.y, classes=self.classes)
        self.spent += time.perf_counter() - started
        epoch = len(self.curve["epoch"]) + 1
        self.curve["epoch"].append(epoch)
        self.curve["train_time"].append(self.spent)
        self.curve["load_average"].append(os.getloadavg()[0])
        for name, (Xe, ye) in self.evals.items():
            self.curve[f"{name}_accuracy"].append(float(self.estimator.score(Xe, ye)))
        self.done = epoch >= self.max_epochs or bool(self.stops and self.stops(self.estimator))
        print(f"{type(self.estimator).__module__.split('.')[0]}: epoch {epoch}, "
              f"{self.spent:.1f} s, test accuracy {self.curve['test_accuracy'][-1]:.4f}",
              file=sys.stderr)


def accuracy_at(curve: Dict[str, list], seconds: float) -> Optional[float]:
    """Test accuracy of the last epoch finished within ``seconds`` of training (None if none)."""
    done = [a for t, a in zip(curve["train_time"], curve["test_accuracy"]) if t <= seconds]
    return done[-1] if done else None


def time_to_reach(curve: Dict[str, list], accuracy: float) -> Optional[float]:
    """Training time of the first epoch with test accuracy >= ``accuracy`` (None if none)."""
    return next((t for t, a in zip(curve["train_time"], curve["test_accuracy"])
                 if a >= accuracy), None)


def standardize_for_sklearn(X):
    """What a scikit-learn user does: ``StandardScaler().fit_transform`` of float32 pixels.
    Returns the features and the function that maps other pixels to features."""
    scaler = StandardScaler()
    features = scaler.fit_transform(X.astype(np.float32))
    return features, lambda pixels: scaler.transform(pixels.astype(np.float32))


def cifar10(args, data, record: ExampleRecord) -> Dict[str, dict]:
    """Both estimators on CIFAR-10, alternating epoch by epoch; their entries by key."""
    labels = np.arange(len(data.label_names))
    sets = {split: (data.split(split).images, data.split(split).labels)
            for split in ("train", "val", "test")}
    evals = {s: sets[s] for s in ("val", "test")}
    ours = MLPClassifier(HIDDEN, alpha=LAM, batch_size=BATCH, max_iter=args.epochs, cycles=2,
                         dtype=args.dtype, random_state=args.seed)
    # One RandomState for the run, as fit has: an int would reseed every partial_fit call.
    theirs = SklearnMLP(HIDDEN, alpha=sklearn_alpha(LAM, BATCH), batch_size=BATCH,
                        max_iter=args.sklearn_epochs,
                        random_state=np.random.RandomState(args.seed))
    runs = {"cbn": EpochRun(ours, *sets["train"], evals, labels, args.epochs),
            "sklearn": EpochRun(theirs, *sets["train"], evals, labels, args.sklearn_epochs,
                                prepare=standardize_for_sklearn,
                                stops=lambda e: sklearn_stops(e.loss_curve_, e.tol,
                                                              e.n_iter_no_change))}
    while not all(run.done for run in runs.values()):
        for run in runs.values():
            if not run.done:
                run.step()
    entries = {}
    for key, run in runs.items():
        estimator, curve = run.estimator, run.curve
        params = estimator.get_params()
        if key == "sklearn":
            params["random_state"] = args.seed
        entries[f"cifar10/{key}"] = {
            "estimator": LABELS[key], "epochs": len(curve["epoch"]),
            "train_accuracy": float(estimator.score(run.X, run.y)),
            "val_accuracy": curve["val_accuracy"][-1],
            "test_accuracy": curve["test_accuracy"][-1],
            "wall_time": curve["train_time"][-1], "standardize_time": run.prepare_time,
            "curve": curve,
            "params": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None)))
                       else v for k, v in params.items()}}
        record.note_run_times(f"cifar10/{key}", [{"seed": args.seed,
                                                  "wall_time": curve["train_time"][-1]}])
    return entries


def targets(ours: dict, theirs: dict) -> dict:
    """The two targets measured on the curves of cbn (``ours``) and scikit-learn."""
    cbn_time, their_time = ours["wall_time"], theirs["wall_time"]
    their_at_cbn_time = accuracy_at(theirs["curve"], cbn_time)
    reach = time_to_reach(ours["curve"], theirs["test_accuracy"])
    points = sorted({cbn_time * f for f in (0.25, 0.5, 1.0)} | {their_time})
    return {
        "cbn_time": cbn_time,
        "sklearn_at_cbn_time": their_at_cbn_time,
        "gain_at_cbn_time": (None if their_at_cbn_time is None
                             else ours["test_accuracy"] - their_at_cbn_time),
        # None: scikit-learn had not finished an epoch, so there is nothing to compare.
        "gain_met": (None if their_at_cbn_time is None
                     else ours["test_accuracy"] - their_at_cbn_time >= TARGET_GAIN),
        "sklearn_final_test_accuracy": theirs["test_accuracy"],
        "sklearn_time": their_time,
        "sklearn_first_reached_own_final": time_to_reach(theirs["curve"],
                                                         theirs["test_accuracy"]),
        "cbn_time_to_sklearn_final": reach,
        "time_share": None if reach is None else reach / their_time,
        "time_met": reach is not None and reach <= TARGET_TIME_SHARE * their_time,
        "equal_time": [{"seconds": t, "cbn": accuracy_at(ours["curve"], t),
                        "sklearn": accuracy_at(theirs["curve"], t)} for t in points],
    }


def digits(args, record: ExampleRecord) -> Dict[str, dict]:
    """Both estimators in a StandardScaler pipeline under GridSearchCV on the digits."""
    X, y = load_digits(return_X_y=True)
    X_fit, X_held, y_fit, y_held = train_test_split(X, y, test_size=0.25, stratify=y,
                                                    random_state=args.seed)
    hidden = [(50,), HIDDEN] if not args.quick else [(16,), HIDDEN]
    lams = DIGITS_LAMS if not args.quick else DIGITS_LAMS[-1:]
    ours = MLPClassifier(batch_size=DIGITS_BATCH, max_iter=5 if args.quick else 20,
                         standardize=False, random_state=args.seed)
    theirs = SklearnMLP(batch_size=DIGITS_BATCH, max_iter=20 if args.quick else 200,
                        random_state=args.seed)
    grids = {"cbn": (ours, {"hidden_layer_sizes": hidden, "alpha": list(lams)}),
             "sklearn": (theirs, {"hidden_layer_sizes": hidden,
                                  "alpha": [sklearn_alpha(l, DIGITS_BATCH) for l in lams]})}
    entries = {}
    for key, (estimator, grid) in grids.items():
        step = type(estimator).__name__.lower()
        search = GridSearchCV(make_pipeline(StandardScaler(), estimator),
                              {f"{step}__{k}": v for k, v in grid.items()},
                              cv=2 if args.quick else 3, n_jobs=2)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X_fit, y_fit)
        spent = time.perf_counter() - started
        entries[f"digits/{key}"] = {
            "estimator": LABELS[key], "candidates": len(search.cv_results_["params"]),
            "folds": search.n_splits_,
            "best_params": {k.split("__", 1)[1]: v for k, v in search.best_params_.items()},
            "train_accuracy": float(search.score(X_fit, y_fit)),
            "val_accuracy": float(search.best_score_),  # mean over the folds
            "test_accuracy": float(search.score(X_held, y_held)),
            "wall_time": spent}
        record.note_run_times(f"digits/{key}", [{"seed": args.seed, "wall_time": spent}])
    return entries


def plot_accuracy_vs_time(path, entries: Dict[str, dict]) -> None:
    """Test accuracy after each epoch against the training time so far (log scale), with
    scikit-learn's final test accuracy as a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for entry in entries.values():
        curve = entry["curve"]
        ax.plot(curve["train_time"], curve["test_accuracy"], marker="o", markersize=3,
                label=entry["estimator"])
    final = entries["cifar10/sklearn"]["test_accuracy"]
    ax.axhline(final, color="grey", linestyle=":", linewidth=1,
               label=f"scikit-learn's final ({100 * final:.1f} %)")
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("CIFAR-10, hidden [50, 50]: one point per epoch")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)


def seconds(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.1f} s"


def targets_section(goal: dict, entries: Dict[str, dict]) -> List[str]:
    """The summary's lines on the two targets and the accuracies at equal training time."""
    def verdict(met: Optional[bool]) -> str:
        return "**not measurable**" if met is None else "**met**" if met else "**not met**"
    loads = [x for e in entries.values() for x in e["curve"]["load_average"]]
    gain = goal["gain_at_cbn_time"]
    share = goal["time_share"]
    rows = [[f"{p['seconds']:.3g}", percent(p["cbn"]), percent(p["sklearn"]),
             "–" if p["cbn"] is None or p["sklearn"] is None
             else f"{100 * (p['cbn'] - p['sklearn']):+.2f}"] for p in goal["equal_time"]]
    return [
        "## Targets", "",
        f"- At equal training time ({goal['cbn_time']:.3g} s, cbn's whole run) cbn has at "
        f"least {100 * TARGET_GAIN:.0f} points more test accuracy: {verdict(goal['gain_met'])} "
        f"({percent(entries['cifar10/cbn']['test_accuracy'])} % against "
        f"{percent(goal['sklearn_at_cbn_time'])} %"
        + ("" if gain is None else f", {100 * gain:+.2f} points") + ").",
        f"- cbn reaches scikit-learn's final test accuracy "
        f"({percent(goal['sklearn_final_test_accuracy'])} %, after "
        f"{goal['sklearn_time']:.1f} s) in at most {TARGET_TIME_SHARE:.0%} of that time: "
        f"{verdict(goal['time_met'])} ({seconds(goal['cbn_time_to_sklearn_final'])}"
        + ("" if share is None else f", {share:.1%} of it") + "). scikit-learn itself "
        f"first reached that accuracy after {seconds(goal['sklearn_first_reached_own_final'])}.",
        "",
        "Test accuracy (%) of the last epoch finished within each training time:", "",
        markdown_table(["training time (s)", "cbn", "scikit-learn", "cbn − scikit-learn "
                        "(points)"], rows), "",
        f"Load average (1 min) after the epochs: {min(loads):.1f} to {max(loads):.1f} "
        f"(median {float(np.median(loads)):.1f}) on {os.cpu_count()} cores; the two "
        "estimators alternated epoch by epoch.", ""]


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0], runs=None)
    parser.add_argument("--epochs", type=int, default=20,
                        help="cbn's epochs on CIFAR-10 (default 20, the course's; 2 with --quick)")
    parser.add_argument("--sklearn-epochs", type=int, default=200,
                        help="scikit-learn's max_iter on CIFAR-10: most epochs, fewer when its "
                             "own stopping rule ends the run (default 200, its default; 2 "
                             "with --quick)")
    args = parse_example_args(parser, argv)
    if args.quick:
        args.epochs, args.sklearn_epochs = min(args.epochs, 2), min(args.sklearn_epochs, 2)
    if args.epochs < 1 or args.sklearn_epochs < 1:
        parser.error("--epochs and --sklearn-epochs must be >= 1")
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    for key, entry in {**cifar10(args, data, record), **digits(args, record)}.items():
        record.add(key, entry)
    curves = {k: v for k, v in record.entries.items() if k.startswith("cifar10/")}
    goal = targets(curves["cifar10/cbn"], curves["cifar10/sklearn"])
    record.add("targets", goal)
    plot_accuracy_vs_time(record.figure("accuracy_vs_time.png"), curves)

    cifar_rows = [[e["estimator"], e["epochs"], percent(e["train_accuracy"]),
                   percent(e["val_accuracy"]), percent(e["test_accuracy"]),
                   number(e["wall_time"], ".1f")] for e in curves.values()]
    digit_rows = [[e["estimator"], ", ".join(f"{k}={v}" for k, v in e["best_params"].items()),
                   percent(e["train_accuracy"]), percent(e["val_accuracy"]),
                   percent(e["test_accuracy"]), number(e["wall_time"], ".1f")]
                  for k, e in record.entries.items() if k.startswith("digits/")]
    first = next(k for k in record.entries if k.startswith("digits/"))
    threads = "the BLAS default" if args.blas_threads is None else args.blas_threads
    summary = "\n".join([
        "# cbn's scikit-learn estimator against scikit-learn's MLPClassifier", "",
        f"## CIFAR-10, hidden {list(HIDDEN)}, batch {BATCH}, L2 λ = {LAM} (scikit-learn "
        f"alpha = {sklearn_alpha(LAM, BATCH):g}), {args.dtype} for cbn", "",
        "cbn: batch norm, cyclical SGD η ∈ [1e-05, 0.1] with 2 cycles over its epochs; "
        "scikit-learn: its defaults (Adam, learning rate 1e-3, no batch norm, up to "
        f"max_iter = {args.sklearn_epochs} epochs, stopping when the training loss has not "
        "improved by 1e-4 for more than 10 epochs). Training time includes each one's "
        "standardisation (cbn's fitted inside on the uint8 pixels, scikit-learn's "
        f"StandardScaler: {curves['cifar10/sklearn']['standardize_time']:.1f} s of its "
        "first epoch) and excludes the per-epoch evaluations. BLAS threads: "
        f"{threads}.", "",
        markdown_table(["estimator", "epochs", "train acc. (%)", "val acc. (%)",
                        "test acc. (%)", "training time (s)"], cifar_rows), "",
        *targets_section(goal, curves),
        f"## Digits: StandardScaler + estimator, GridSearchCV ({record.entries[first]['folds']}"
        f" folds, n_jobs=2, {record.entries[first]['candidates']} candidates each), "
        f"batch {DIGITS_BATCH}", "",
        "val acc. is the best candidate's mean cross-validated accuracy; test acc. the "
        "refitted best on the 25 % held out.", "",
        markdown_table(["estimator", "best parameters", "train acc. (%)", "val acc. (%)",
                        "test acc. (%)", "search time (s)"], digit_rows)])
    record.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

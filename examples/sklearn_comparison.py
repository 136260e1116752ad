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

Regression, cbn's MLPRegressor against scikit-learn's (its defaults, on StandardScaler
features; cbn standardises X and y inside):
- diabetes (scikit-learn's bundled 442 rows): R^2 on a held-out 25 % for 5 seeds;
- make_friedman1 (noise 1.0) with --friedman-rows training rows (500,000) and 50,000 test
  rows: both alternate epoch by epoch as on CIFAR-10; the time cbn takes to reach
  scikit-learn's final test R^2 (target: at most a fifth of scikit-learn's time).
Imbalanced classification (make_classification, 3 classes at 90/7/3 %): cbn's
MLPClassifier without and with class_weight="balanced", recall of each class held out.

Needs scikit-learn (pip install "cbn[sklearn]").

    python examples/sklearn_comparison.py --data /path/to/cifar-10-batches-py --blas-threads 1
    python examples/sklearn_comparison.py --parts diabetes friedman1 imbalanced --out DIR
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
from sklearn.datasets import (load_diabetes, load_digits, make_classification,  # noqa: E402
                              make_friedman1)
from sklearn.metrics import recall_score  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.neural_network import MLPRegressor as SklearnRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from cbn.lab.plots import save_figure  # noqa: E402
from cbn.lab.record import (ExampleRecord, example_parser, load_data,  # noqa: E402
                            parse_example_args, run_example)
from cbn.lab.tables import markdown_table, number, percent  # noqa: E402
from cbn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

NAME = "sklearn_comparison"
HIDDEN = (50, 50)
LAM, BATCH = 0.005, 100          # cbn's L2 strength and the batch size on CIFAR-10
DIGITS_BATCH = 32
DIGITS_LAMS = (1e-4, 1e-3, 5e-3)  # cbn's alpha; scikit-learn's is 2 * batch * lambda
LABELS = {"cbn": "cbn.sklearn.MLPClassifier", "sklearn": "sklearn MLPClassifier"}
REGRESSORS = {"cbn": "cbn.sklearn.MLPRegressor", "sklearn": "sklearn MLPRegressor"}
# The targets: at cbn's training time at least this much more test accuracy, and
# scikit-learn's final test accuracy reached in at most this share of its training time.
TARGET_GAIN, TARGET_TIME_SHARE = 0.03, 0.2
PARTS = ("cifar10", "digits", "diabetes", "friedman1", "imbalanced")
DIABETES_SEEDS = 5
FRIEDMAN_TEST_ROWS = 50_000
# cbn's settings on the regression sets and the imbalanced task: one fixed choice each
# (make_friedman1's on its draw of random_state 1, the comparison runs on --seed's).
DIABETES = dict(hidden_layer_sizes=(50,), batch_size=32, alpha=1e-2, eta_max=0.05,
                max_iter=30)
FRIEDMAN = dict(hidden_layer_sizes=(64, 64), activation="gelu", batch_size=1000,
                optimizer="adam", eta_min=1e-4, eta_max=1e-2, alpha=1e-6, cycles=1)
IMBALANCED = dict(hidden_layer_sizes=(50, 50), max_iter=20)


def alternate(runs: Dict[str, "EpochRun"]) -> None:
    """Train ``runs`` epoch by epoch in turn until each is done, so that both estimators
    meet the same load on the machine."""
    while not all(run.done for run in runs.values()):
        for run in runs.values():
            if not run.done:
                run.step()


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
                 prepare=None, stops=None, metric: str = "accuracy") -> None:
        self.estimator, self.X, self.y, self.evals = estimator, X, y, evals
        self.classes, self.max_epochs = classes, max_epochs
        self.prepare, self.stops, self.metric = prepare, stops, metric
        self.spent, self.prepare_time, self.done = 0.0, 0.0, False
        self.curve: Dict[str, list] = {"epoch": [], "train_time": [], "load_average": []}
        self.curve.update({f"{name}_{metric}": [] for name in evals})

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
        extra = {} if self.classes is None else {"classes": self.classes}
        with config_context(assume_finite=True):
            self.estimator.partial_fit(self.X, self.y, **extra)
        self.spent += time.perf_counter() - started
        epoch = len(self.curve["epoch"]) + 1
        self.curve["epoch"].append(epoch)
        self.curve["train_time"].append(self.spent)
        self.curve["load_average"].append(os.getloadavg()[0])
        for name, (Xe, ye) in self.evals.items():
            self.curve[f"{name}_{self.metric}"].append(float(self.estimator.score(Xe, ye)))
        self.done = epoch >= self.max_epochs or bool(self.stops and self.stops(self.estimator))
        print(f"{type(self.estimator).__module__.split('.')[0]}: epoch {epoch}, "
              f"{self.spent:.1f} s, test {self.metric} "
              f"{self.curve[f'test_{self.metric}'][-1]:.4f}", file=sys.stderr)


def accuracy_at(curve: Dict[str, list], seconds: float,
                key: str = "test_accuracy") -> Optional[float]:
    """The ``key`` score (test accuracy) of the last epoch finished within ``seconds`` of
    training (None if none)."""
    done = [a for t, a in zip(curve["train_time"], curve[key]) if t <= seconds]
    return done[-1] if done else None


def time_to_reach(curve: Dict[str, list], accuracy: float,
                  key: str = "test_accuracy") -> Optional[float]:
    """Training time of the first epoch whose ``key`` score (test accuracy) is >=
    ``accuracy`` (None if none)."""
    return next((t for t, a in zip(curve["train_time"], curve[key]) if a >= accuracy), None)


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
    alternate(runs)
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


def params_of(estimator) -> dict:
    """An estimator's parameters as JSON values (objects by their repr)."""
    return {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
            for k, v in estimator.get_params().items()}


def diabetes(args, record: ExampleRecord) -> Dict[str, dict]:
    """Test R^2 of both regressors on scikit-learn's diabetes data, a held-out 25 % per seed:
    scikit-learn's defaults (max_iter raised to 2,000 so that it converges) on StandardScaler
    features, cbn's ``DIABETES`` setting."""
    X, y = load_diabetes(return_X_y=True)
    seeds = [args.seed + i for i in range(1 if args.quick else DIABETES_SEEDS)]
    their_epochs = 100 if args.quick else 2000
    makers = {"cbn": lambda s: MLPRegressor(random_state=s, **DIABETES),
              "sklearn": lambda s: make_pipeline(StandardScaler(), SklearnRegressor(
                  max_iter=their_epochs, random_state=s))}
    entries = {key: {"estimator": REGRESSORS[key], "seeds": seeds, "test_r2": [],
                     "wall_time": []} for key in makers}
    for seed in seeds:
        X_fit, X_held, y_fit, y_held = train_test_split(X, y, test_size=0.25,
                                                        random_state=seed)
        for key, make in makers.items():
            estimator = make(seed)
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                estimator.fit(X_fit, y_fit)
            entries[key]["wall_time"].append(time.perf_counter() - started)
            entries[key]["test_r2"].append(float(estimator.score(X_held, y_held)))
            entries[key]["params"] = params_of(estimator)
    entries["sklearn"]["max_iter"] = their_epochs
    for key, entry in entries.items():
        entry["mean_test_r2"] = float(np.mean(entry["test_r2"]))
        entry["std_test_r2"] = float(np.std(entry["test_r2"]))
        record.note_run_times(f"diabetes/{key}", [{"seed": s, "wall_time": t} for s, t in
                                                  zip(seeds, entry["wall_time"])])
    return {f"diabetes/{key}": entry for key, entry in entries.items()}


def friedman1(args, record: ExampleRecord) -> Dict[str, dict]:
    """Both regressors on make_friedman1, alternating epoch by epoch, test R^2 against the
    training time; scikit-learn with its defaults and its own stopping rule."""
    rows = min(args.friedman_rows, 20_000) if args.quick else args.friedman_rows
    X, y = make_friedman1(n_samples=rows + FRIEDMAN_TEST_ROWS, noise=1.0,
                          random_state=args.seed)
    X = X.astype(np.float32)
    train, test = (X[:rows], y[:rows]), (X[rows:], y[rows:])
    ours = MLPRegressor(max_iter=args.friedman_epochs, random_state=args.seed, **FRIEDMAN)
    theirs = SklearnRegressor(max_iter=args.sklearn_epochs,
                              random_state=np.random.RandomState(args.seed))
    runs = {"cbn": EpochRun(ours, *train, {"test": test}, None, args.friedman_epochs,
                            metric="r2"),
            "sklearn": EpochRun(theirs, *train, {"test": test}, None, args.sklearn_epochs,
                                prepare=standardize_for_sklearn, metric="r2",
                                stops=lambda e: sklearn_stops(e.loss_curve_, e.tol,
                                                              e.n_iter_no_change))}
    alternate(runs)
    entries = {}
    for key, run in runs.items():
        curve = run.curve
        entries[f"friedman1/{key}"] = {
            "estimator": REGRESSORS[key], "train_rows": rows, "epochs": len(curve["epoch"]),
            "test_r2": curve["test_r2"][-1], "wall_time": curve["train_time"][-1],
            "standardize_time": run.prepare_time, "curve": curve,
            "params": params_of(run.estimator)}
        record.note_run_times(f"friedman1/{key}", [{"seed": args.seed,
                                                    "wall_time": curve["train_time"][-1]}])
    ours, theirs = entries["friedman1/cbn"], entries["friedman1/sklearn"]
    reach = time_to_reach(ours["curve"], theirs["test_r2"], key="test_r2")
    entries["friedman1/targets"] = {
        "sklearn_final_test_r2": theirs["test_r2"], "sklearn_time": theirs["wall_time"],
        "sklearn_first_reached_own_final": time_to_reach(theirs["curve"], theirs["test_r2"],
                                                         key="test_r2"),
        "cbn_time_to_sklearn_final": reach,
        "time_share": None if reach is None else reach / theirs["wall_time"],
        "time_met": reach is not None and reach <= TARGET_TIME_SHARE * theirs["wall_time"]}
    return entries


def imbalanced(args, record: ExampleRecord) -> Dict[str, dict]:
    """cbn's MLPClassifier on 3 classes at 90/7/3 %, without and with class_weight=
    "balanced": the recall of each class on a stratified held-out 25 %."""
    X, y = make_classification(n_samples=4_000 if args.quick else 40_000, n_features=20,
                               n_informative=8, n_classes=3, weights=[0.9, 0.07, 0.03],
                               class_sep=0.8, random_state=args.seed)
    X_fit, X_held, y_fit, y_held = train_test_split(X, y, test_size=0.25, stratify=y,
                                                    random_state=args.seed)
    entries = {}
    settings = {**IMBALANCED, "max_iter": 3 if args.quick else IMBALANCED["max_iter"]}
    for weight in (None, "balanced"):
        estimator = MLPClassifier(class_weight=weight, random_state=args.seed, **settings)
        started = time.perf_counter()
        estimator.fit(X_fit, y_fit)
        spent = time.perf_counter() - started
        predicted = estimator.predict(X_held)
        recall = recall_score(y_held, predicted, average=None)
        key = f"imbalanced/{weight or 'none'}"
        entries[key] = {"class_weight": weight, "class_shares": np.bincount(y).tolist(),
                        "recall": recall.tolist(), "balanced_accuracy": float(recall.mean()),
                        "test_accuracy": float(np.mean(predicted == y_held)),
                        "wall_time": spent, "settings": settings,
                        "params": params_of(estimator)}
        record.note_run_times(key, [{"seed": args.seed, "wall_time": spent}])
    return entries


def plot_regression(record: ExampleRecord, entries: Dict[str, dict]) -> None:
    """The regression figures of the parts that ran."""
    if "diabetes/cbn" in entries:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for offset, key in ((-0.1, "diabetes/cbn"), (0.1, "diabetes/sklearn")):
            entry = entries[key]
            ax.plot(np.arange(len(entry["seeds"])) + offset, entry["test_r2"], "o",
                    label=f"{entry['estimator']} (mean {entry['mean_test_r2']:.3f})")
        ax.set_xticks(range(len(entries["diabetes/cbn"]["seeds"])))
        ax.set_xticklabels(entries["diabetes/cbn"]["seeds"])
        ax.set_xlabel("seed (split and initialisation)")
        ax.set_ylabel("held-out R²")
        ax.set_title("diabetes: R² on a held-out 25 % per seed")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, record.figure("diabetes_r2.png"))
    if "friedman1/cbn" in entries:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for key in ("friedman1/cbn", "friedman1/sklearn"):
            curve = entries[key]["curve"]
            ax.plot(curve["train_time"], curve["test_r2"], marker="o", markersize=3,
                    label=entries[key]["estimator"])
        final = entries["friedman1/sklearn"]["test_r2"]
        ax.axhline(final, color="grey", linestyle=":", linewidth=1,
                   label=f"scikit-learn's final ({final:.4f})")
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, final - 0.1), None)
        ax.set_xlabel("training time (s, log scale)")
        ax.set_ylabel("test R²")
        ax.set_title(f"make_friedman1, {entries['friedman1/cbn']['train_rows']:,} rows: "
                     "one point per epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        save_figure(fig, record.figure("friedman1_r2_vs_time.png"))
    if "imbalanced/none" in entries:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for offset, key in ((-0.2, "imbalanced/none"), (0.2, "imbalanced/balanced")):
            recall = entries[key]["recall"]
            ax.bar(np.arange(len(recall)) + offset, recall, width=0.4,
                   label=f"class_weight={entries[key]['class_weight']!r}")
        shares = np.asarray(entries["imbalanced/none"]["class_shares"], float)
        ax.set_xticks(range(len(shares)))
        ax.set_xticklabels([f"class {k} ({100 * s:.0f} %)"
                            for k, s in enumerate(shares / shares.sum())])
        ax.set_ylabel("held-out recall")
        ax.set_title("imbalanced classes: recall of each class")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
        save_figure(fig, record.figure("imbalanced_recall.png"))


def regression_sections(entries: Dict[str, dict]) -> List[str]:
    """The summary's sections of the regression and imbalanced parts that ran."""
    lines: List[str] = []
    if "diabetes/cbn" in entries:
        rows = [[entries[k]["estimator"]] + [f"{r:.3f}" for r in entries[k]["test_r2"]]
                + [f"{entries[k]['mean_test_r2']:.3f} ± {entries[k]['std_test_r2']:.3f}",
                   f"{float(np.mean(entries[k]['wall_time'])):.2f}"]
                for k in ("diabetes/cbn", "diabetes/sklearn")]
        seeds = entries["diabetes/cbn"]["seeds"]
        lines += ["## Diabetes: held-out R² (25 %) per seed", "",
                  f"cbn: {DIABETES}; scikit-learn: StandardScaler + its defaults "
                  "(hidden (100,), Adam 1e-3, alpha 1e-4) with max_iter = "
                  f"{entries['diabetes/sklearn']['max_iter']}.", "",
                  markdown_table(["estimator", *[f"seed {s}" for s in seeds], "mean ± std",
                                  "fit time (s)"], rows), ""]
    if "friedman1/cbn" in entries:
        goal = entries["friedman1/targets"]
        rows = [[entries[k]["estimator"], entries[k]["epochs"], f"{entries[k]['test_r2']:.4f}",
                 number(entries[k]["wall_time"], ".1f")]
                for k in ("friedman1/cbn", "friedman1/sklearn")]
        share = goal["time_share"]
        lines += [f"## make_friedman1 (noise 1.0), {entries['friedman1/cbn']['train_rows']:,} "
                  f"training rows, {FRIEDMAN_TEST_ROWS:,} test rows", "",
                  f"cbn: {FRIEDMAN}; scikit-learn: its defaults on StandardScaler features, "
                  "stopping by its own rule. Alternating epoch by epoch; training time "
                  "excludes the evaluations.", "",
                  markdown_table(["estimator", "epochs", "test R²", "training time (s)"],
                                 rows), "",
                  "- cbn reaches scikit-learn's final test R² "
                  f"({goal['sklearn_final_test_r2']:.4f}, after {goal['sklearn_time']:.1f} s) "
                  f"in at most {TARGET_TIME_SHARE:.0%} of that time: "
                  f"{'**met**' if goal['time_met'] else '**not met**'} "
                  f"({seconds(goal['cbn_time_to_sklearn_final'])}"
                  + ("" if share is None else f", {share:.1%} of it") + "). scikit-learn "
                  f"itself first reached it after "
                  f"{seconds(goal['sklearn_first_reached_own_final'])}.", ""]
    if "imbalanced/none" in entries:
        rows = [[repr(entries[k]["class_weight"])] + [percent(r) for r in entries[k]["recall"]]
                + [percent(entries[k]["balanced_accuracy"]),
                   percent(entries[k]["test_accuracy"])]
                for k in ("imbalanced/none", "imbalanced/balanced")]
        shares = entries["imbalanced/none"]["class_shares"]
        lines += ["## Imbalanced classes: cbn's MLPClassifier with and without class_weight",
                  "", f"make_classification, 3 classes of {shares} rows; "
                  f"{entries['imbalanced/none']['settings']}; "
                  "recall on a stratified held-out 25 %.", "",
                  markdown_table(["class_weight", *[f"recall {k} (%)" for k in
                                                    range(len(shares))],
                                  "balanced acc. (%)", "accuracy (%)"], rows), ""]
    return lines


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


def cifar10_sections(args, entries: Dict[str, dict]) -> List[str]:
    """The summary's CIFAR-10 section."""
    curves = {k: v for k, v in entries.items() if k.startswith("cifar10/")}
    cifar_rows = [[e["estimator"], e["epochs"], percent(e["train_accuracy"]),
                   percent(e["val_accuracy"]), percent(e["test_accuracy"]),
                   number(e["wall_time"], ".1f")] for e in curves.values()]
    threads = "the BLAS default" if args.blas_threads is None else args.blas_threads
    return [
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
        *targets_section(entries["targets"], curves)]


def digits_sections(entries: Dict[str, dict]) -> List[str]:
    """The summary's digits section."""
    digit_rows = [[e["estimator"], ", ".join(f"{k}={v}" for k, v in e["best_params"].items()),
                   percent(e["train_accuracy"]), percent(e["val_accuracy"]),
                   percent(e["test_accuracy"]), number(e["wall_time"], ".1f")]
                  for k, e in entries.items() if k.startswith("digits/")]
    first = entries["digits/cbn"]
    return [
        f"## Digits: StandardScaler + estimator, GridSearchCV ({first['folds']}"
        f" folds, n_jobs=2, {first['candidates']} candidates each), "
        f"batch {DIGITS_BATCH}", "",
        "val acc. is the best candidate's mean cross-validated accuracy; test acc. the "
        "refitted best on the 25 % held out.", "",
        markdown_table(["estimator", "best parameters", "train acc. (%)", "val acc. (%)",
                        "test acc. (%)", "search time (s)"], digit_rows), ""]


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0], runs=None)
    parser.add_argument("--epochs", type=int, default=20,
                        help="cbn's epochs on CIFAR-10 (default 20, the course's; 2 with --quick)")
    parser.add_argument("--sklearn-epochs", type=int, default=200,
                        help="scikit-learn's max_iter on CIFAR-10 and make_friedman1: most "
                             "epochs, fewer when its own stopping rule ends the run (default "
                             "200, its default; 2 with --quick)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        metavar="PART",
                        help=f"the comparisons to run, of {', '.join(PARTS)} (default all)")
    parser.add_argument("--friedman-rows", type=int, default=500_000, metavar="N",
                        help="training rows of make_friedman1 (default 500,000; at most "
                             "20,000 with --quick)")
    parser.add_argument("--friedman-epochs", type=int, default=20, metavar="N",
                        help="cbn's epochs on make_friedman1 (default 20; 2 with --quick)")
    args = parse_example_args(parser, argv)
    if args.quick:
        args.epochs, args.sklearn_epochs = min(args.epochs, 2), min(args.sklearn_epochs, 2)
        args.friedman_epochs = min(args.friedman_epochs, 2)
    if min(args.epochs, args.sklearn_epochs, args.friedman_epochs) < 1:
        parser.error("--epochs, --sklearn-epochs and --friedman-epochs must be >= 1")
    if args.friedman_rows < 10:
        parser.error("--friedman-rows must be >= 10")
    parts = [p for p in PARTS if p in args.parts]
    data = load_data(args)
    record = ExampleRecord(NAME, args, data)
    runs = {"cifar10": lambda: cifar10(args, data, record), "digits": lambda: digits(args, record),
            "diabetes": lambda: diabetes(args, record),
            "friedman1": lambda: friedman1(args, record),
            "imbalanced": lambda: imbalanced(args, record)}
    for part in parts:
        for key, entry in runs[part]().items():
            record.add(key, entry)
    entries = record.entries
    summary = ["# cbn's scikit-learn estimators against scikit-learn's MLPs", ""]
    if "cifar10" in parts:
        curves = {k: v for k, v in entries.items() if k.startswith("cifar10/")}
        record.add("targets", targets(curves["cifar10/cbn"], curves["cifar10/sklearn"]))
        plot_accuracy_vs_time(record.figure("accuracy_vs_time.png"), curves)
        summary += cifar10_sections(args, entries)
    if "digits" in parts:
        summary += digits_sections(entries)
    plot_regression(record, entries)
    summary += regression_sections(entries)
    record.write("\n".join(summary).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main, NAME))

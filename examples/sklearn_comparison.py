"""cbn's scikit-learn estimator against scikit-learn's own MLPClassifier: accuracy against
training time on CIFAR-10, and both in a Pipeline with a grid search on scikit-learn's digits.

CIFAR-10: the same hidden layers [50, 50], batch 100 and L2 strength (cbn's alpha 0.005 is
scikit-learn's alpha 1.0 at batch 100). cbn: the course's setting (batch norm, cyclical SGD
with eta 1e-5..1e-1, 2 cycles over --epochs epochs) on the raw uint8 pixels, standardised
inside; scikit-learn: its defaults otherwise (Adam, learning rate 1e-3, no batch norm) on
float32 features standardised with the training split's mean and std. Both train one epoch
at a time (partial_fit), and each epoch's validation and test accuracy are measured against
the training time so far (evaluation not counted).

Digits (1,797 8x8 images, 75 % for the search, 25 % held out): StandardScaler + each
estimator in a Pipeline, GridSearchCV(n_jobs=2) over hidden layers and alpha (the same L2
strengths in each library's units), the best refitted and scored on the held-out images.

Needs scikit-learn (pip install "cbn[sklearn]").

    python examples/sklearn_comparison.py --data /path/to/cifar-10-batches-py
"""
from __future__ import annotations

import sys
import time
import warnings
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from cbn.experiment import (ExampleRecord, example_parser, load_data,  # noqa: E402
                            parse_example_args)
from cbn.report import markdown_table, number, percent  # noqa: E402
from cbn.sklearn import MLPClassifier  # noqa: E402

NAME = "sklearn_comparison"
HIDDEN = (50, 50)
LAM, BATCH = 0.005, 100          # cbn's L2 strength and the batch size on CIFAR-10
DIGITS_BATCH = 32
DIGITS_LAMS = (1e-4, 1e-3, 5e-3)  # cbn's alpha; scikit-learn's is 2 * batch * lambda
LABELS = {"cbn": "cbn.sklearn.MLPClassifier", "sklearn": "sklearn MLPClassifier"}


def sklearn_alpha(lam: float, batch_size: int) -> float:
    """scikit-learn's alpha for cbn's L2 strength ``lam``: it adds alpha / (2 batch) sum W^2
    to each mini-batch's mean loss, cbn adds lam sum W^2."""
    return 2 * batch_size * lam


def train_by_epoch(estimator, epochs: int, X, y, evals: Dict[str, tuple],
                   classes) -> Dict[str, List[float]]:
    """``epochs`` calls of partial_fit; after each, the training time so far and the accuracy
    on each of ``evals`` (name -> (X, y))."""
    curve: Dict[str, List[float]] = {"epoch": [], "train_time": []}
    curve.update({f"{name}_accuracy": [] for name in evals})
    spent = 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        estimator.partial_fit(X, y, classes=classes)
        spent += time.perf_counter() - started
        curve["epoch"].append(epoch)
        curve["train_time"].append(spent)
        for name, (Xe, ye) in evals.items():
            curve[f"{name}_accuracy"].append(float(estimator.score(Xe, ye)))
        print(f"{type(estimator).__module__.split('.')[0]}: epoch {epoch}, {spent:.1f} s, "
              f"val accuracy {curve['val_accuracy'][-1]:.4f}", file=sys.stderr)
    return curve


def cifar10(args, data, record: ExampleRecord) -> Dict[str, dict]:
    """Both estimators on CIFAR-10 epoch by epoch; their entries by key."""
    labels = np.arange(len(data.label_names))
    raw = {split: (data.split(split).images, data.split(split).labels)
           for split in ("train", "val", "test")}
    ours = MLPClassifier(HIDDEN, alpha=LAM, batch_size=BATCH, max_iter=args.epochs, cycles=2,
                         dtype=args.dtype, random_state=args.seed)
    # scikit-learn gets float features: the same standardisation, done once up front.
    features = {split: (data.features(split, dtype=np.float32), raw[split][1])
                for split in raw}
    theirs = SklearnMLP(HIDDEN, alpha=sklearn_alpha(LAM, BATCH), batch_size=BATCH,
                        random_state=args.seed)
    entries = {}
    for key, estimator, sets, epochs in (("cbn", ours, raw, args.epochs),
                                         ("sklearn", theirs, features, args.sklearn_epochs)):
        X, y = sets["train"]
        curve = train_by_epoch(estimator, epochs, X, y,
                               {s: sets[s] for s in ("val", "test")}, labels)
        entries[f"cifar10/{key}"] = {
            "estimator": LABELS[key], "epochs": epochs,
            "train_accuracy": float(estimator.score(X, y)),
            "val_accuracy": curve["val_accuracy"][-1],
            "test_accuracy": curve["test_accuracy"][-1],
            "wall_time": curve["train_time"][-1], "curve": curve,
            "params": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None)))
                       else v for k, v in estimator.get_params().items()}}
        record.note_run_times(f"cifar10/{key}", [{"seed": args.seed,
                                                  "wall_time": curve["train_time"][-1]}])
    return entries


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
    """Validation accuracy after each epoch against the training time so far."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for entry in entries.values():
        curve = entry["curve"]
        ax.plot(curve["train_time"], curve["val_accuracy"], marker="o", markersize=3,
                label=entry["estimator"])
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("CIFAR-10, hidden [50, 50]: one point per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = example_parser(NAME, __doc__.split("\n\n")[0], runs=None)
    parser.add_argument("--epochs", type=int, default=20,
                        help="cbn's epochs on CIFAR-10 (default 20, the course's; 2 with --quick)")
    parser.add_argument("--sklearn-epochs", type=int, default=20,
                        help="scikit-learn's epochs on CIFAR-10 (default 20; 2 with --quick)")
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
    plot_accuracy_vs_time(record.figure("accuracy_vs_time.png"), curves)

    cifar_rows = [[e["estimator"], e["epochs"], percent(e["train_accuracy"]),
                   percent(e["val_accuracy"]), percent(e["test_accuracy"]),
                   number(e["wall_time"], ".1f")] for e in curves.values()]
    digit_rows = [[e["estimator"], ", ".join(f"{k}={v}" for k, v in e["best_params"].items()),
                   percent(e["train_accuracy"]), percent(e["val_accuracy"]),
                   percent(e["test_accuracy"]), number(e["wall_time"], ".1f")]
                  for k, e in record.entries.items() if k.startswith("digits/")]
    first = next(k for k in record.entries if k.startswith("digits/"))
    summary = "\n".join([
        "# cbn's scikit-learn estimator against scikit-learn's MLPClassifier", "",
        f"## CIFAR-10, hidden {list(HIDDEN)}, batch {BATCH}, L2 λ = {LAM} (scikit-learn "
        f"alpha = {sklearn_alpha(LAM, BATCH):g}), {args.dtype} for cbn", "",
        "cbn: batch norm, cyclical SGD η ∈ [1e-05, 0.1] with 2 cycles over its epochs; "
        "scikit-learn: Adam, learning rate 1e-3, no batch norm. Training time excludes "
        "the per-epoch evaluations.", "",
        markdown_table(["estimator", "epochs", "train acc. (%)", "val acc. (%)",
                        "test acc. (%)", "training time (s)"], cifar_rows), "",
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
    sys.exit(main())

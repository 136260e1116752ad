"""cbn.sklearn's regressor, sample and class weights, early stopping that restores the best
network, warm starts that continue the optimizer, and the errors of bad weights and targets."""
from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_blobs, make_classification, make_regression  # noqa: E402
from sklearn.metrics import r2_score, recall_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from cbn.optim import SGD  # noqa: E402
from cbn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def regression(n=300, d=6, targets=1, seed=0):
    X, y = make_regression(n_samples=n, n_features=d, n_targets=targets, noise=5.0,
                           random_state=seed)
    return X, y * 1000.0 + 5e4  # far from 0 and 1: the scale must come back


def blobs(n=300, seed=0):
    return make_blobs(n_samples=n, centers=3, n_features=5, random_state=seed)


# -- the regressor ----------------------------------------------------------------------------

def test_regressor_learns_one_and_several_targets_in_their_units():
    X, y = regression()
    est = MLPRegressor(random_state=0, max_iter=30, alpha=1e-4).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (300,) and pred.dtype == np.float64
    assert est.score(X, y) == pytest.approx(r2_score(y, pred)) and est.score(X, y) > 0.9
    np.testing.assert_allclose(est.target_mean_, [y.mean()])
    X2, Y2 = regression(targets=3)
    multi = MLPRegressor(random_state=0, max_iter=30, alpha=1e-4).fit(X2, Y2)
    assert multi.predict(X2).shape == (300, 3) and multi.n_outputs_ == 3
    assert multi.network_.num_classes == 3 and multi.score(X2, Y2) > 0.9


def test_regressor_refuses_non_finite_targets_and_other_columns():
    X, y = regression()
    for bad in (np.nan, np.inf):
        y_bad = y.copy()
        y_bad[3] = bad
        with pytest.raises(ValueError, match="y"):
            MLPRegressor().fit(X, y_bad)
    est = MLPRegressor(max_iter=1, random_state=0).partial_fit(X, y)
    with pytest.raises(ValueError, match="target columns"):
        est.partial_fit(X, np.c_[y, y])


# -- weights ----------------------------------------------------------------------------------

def one_full_batch_step(cls, **params):
    """One step over every row, no batch norm and no standardisation of X: a row of weight
    k then counts exactly as k copies of it."""
    return cls(batch_norm=False, standardize=False, batch_size=10_000, max_iter=1,
               dtype="float64", random_state=0, eta_min=0.05, eta_max=0.05, **params)


def test_integer_sample_weights_are_repeated_rows():
    """The compiled weighted loss against an independent oracle: the rows repeated."""
    X, y = blobs(n=60)
    w = np.random.default_rng(0).integers(0, 4, len(y))
    w[0] = 1
    weighted = one_full_batch_step(MLPClassifier).fit(X, y, sample_weight=w)
    repeated = one_full_batch_step(MLPClassifier).fit(np.repeat(X, w, 0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X),
                               rtol=1e-10, atol=1e-12)
    Xr, yr = regression(n=60)
    weighted = one_full_batch_step(MLPRegressor).fit(Xr, yr, sample_weight=w)
    repeated = one_full_batch_step(MLPRegressor).fit(np.repeat(Xr, w, 0), np.repeat(yr, w))
    np.testing.assert_allclose(weighted.predict(Xr), repeated.predict(Xr), rtol=1e-10)
    assert not np.allclose(weighted.predict(Xr),
                           one_full_batch_step(MLPRegressor).fit(Xr, yr).predict(Xr))


def test_class_weight_dict_and_balanced_are_weights_of_the_rows():
    X, y = blobs(n=60)
    classes = np.array(["a", "b", "c"])
    dict_w = one_full_batch_step(MLPClassifier, class_weight={"a": 3, "c": 0.5})
    dict_w.fit(X, classes[y])
    rows = np.array([3.0, 1.0, 0.5])[y]
    by_rows = one_full_batch_step(MLPClassifier).fit(X, classes[y], sample_weight=rows)
    np.testing.assert_allclose(dict_w.predict_proba(X), by_rows.predict_proba(X), rtol=1e-12)
    keep = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y != 0)]
    Xi, yi = X[keep], y[keep]
    balanced = one_full_batch_step(MLPClassifier, class_weight="balanced").fit(Xi, yi)
    counts = np.bincount(yi)
    by_rows = one_full_batch_step(MLPClassifier).fit(
        Xi, yi, sample_weight=len(yi) / (3 * counts[yi]))
    np.testing.assert_allclose(balanced.predict_proba(Xi), by_rows.predict_proba(Xi),
                               rtol=1e-12)


def test_balanced_class_weight_raises_minority_recall():
    X, y = make_classification(n_samples=2000, n_features=10, n_informative=5, n_classes=3,
                               weights=[0.9, 0.07, 0.03], class_sep=0.8, random_state=0)
    Xt, Xs, yt, ys = train_test_split(X, y, stratify=y, random_state=0)
    recall = {cw: recall_score(ys, MLPClassifier(class_weight=cw, random_state=0, max_iter=10)
                               .fit(Xt, yt).predict(Xs), average=None)
              for cw in (None, "balanced")}
    assert recall["balanced"][1:].mean() > recall[None][1:].mean()


def test_score_takes_sample_weight():
    X, y = blobs()
    est = MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    w = np.zeros(len(y))
    right = est.predict(X) == y
    w[right] = 1.0
    assert est.score(X, y, sample_weight=w) == 1.0
    Xr, yr = regression()
    reg = MLPRegressor(max_iter=2, random_state=0).fit(Xr, yr)
    wr = np.linspace(0, 1, len(yr))
    assert reg.score(Xr, yr, sample_weight=wr) == pytest.approx(
        r2_score(yr, reg.predict(Xr), sample_weight=wr))


@pytest.mark.parametrize("weights,match", [
    (lambda n: -np.ones(n), ">= 0"),
    (lambda n: np.r_[np.nan, np.ones(n - 1)], "NaN or infinite"),
    (lambda n: np.r_[np.inf, np.ones(n - 1)], "NaN or infinite"),
    (lambda n: np.ones(n - 1), "one weight per row"),
    (lambda n: np.ones((n, 1)), "one weight per row"),
    (lambda n: np.zeros(n), "all zero"),
])
def test_bad_sample_weights_are_refused_by_name(weights, match):
    X, y = blobs(n=40)
    Xr, yr = regression(n=40)
    fitted = MLPClassifier(max_iter=1, random_state=0).fit(X, y)
    for call in (lambda: MLPClassifier().fit(X, y, sample_weight=weights(40)),
                 lambda: MLPClassifier().partial_fit(X, y, classes=[0, 1, 2],
                                                     sample_weight=weights(40)),
                 lambda: MLPRegressor().fit(Xr, yr, sample_weight=weights(40)),
                 lambda: fitted.score(X, y, sample_weight=weights(40))):
        with pytest.raises(ValueError, match=f"sample_weight.*{match}"):
            call()


def test_bad_class_weights_are_refused():
    X, y = blobs(n=40)
    with pytest.raises(ValueError, match=r"class_weight names classes not in y: \[7\]"):
        MLPClassifier(class_weight={0: 2.0, 7: 1.0}).fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="even").fit(X, y)
    with pytest.raises(ValueError, match=r"class_weight\[0\]"):
        MLPClassifier(class_weight={0: -1.0}).fit(X, y)
    with pytest.raises(ValueError, match="partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="every row"):
        MLPClassifier(class_weight={0: 0, 1: 0, 2: 0}).fit(X, y)


# -- early stopping ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_restores_the_best_network(cls):
    """Rescoring the held-out rows (the split of the same random state) gives the best
    epoch's score, not the last one's."""
    X, y = (make_blobs(n_samples=400, centers=3, cluster_std=5.0, random_state=2)
            if cls is MLPClassifier else regression(n=400))
    est = cls(early_stopping=True, n_iter_no_change=4, max_iter=60, random_state=0,
              eta_max=0.3).fit(X, y)
    rows = np.arange(len(y))
    _, held_out = train_test_split(rows, test_size=0.1, random_state=np.random.RandomState(0),
                                   stratify=y if cls is MLPClassifier else None)
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.score(X[held_out], y[held_out]) == pytest.approx(est.best_validation_score_,
                                                                rel=1e-12)
    best = int(np.argmax(est.validation_scores_))
    assert est.validation_scores_[-1] < est.best_validation_score_
    assert est.best_loss_ == est.loss_curve_[best]


def test_early_stopping_holds_out_rows_that_weigh():
    """The split is stratified by zero or positive weight too: with 10 weighted rows in 100,
    the held-out tenth keeps one of them (at random it would keep none a third of the
    time)."""
    X, y = regression(n=100)
    w = np.zeros(100)
    w[::10] = 1.0
    for seed in range(10):
        est = MLPRegressor(early_stopping=True, max_iter=2, random_state=seed)
        est.fit(X, y, sample_weight=w)
        assert len(est.validation_scores_) == 2


def test_weights_on_one_class_only_are_refused_by_fit():
    X, y = blobs(n=60)
    with pytest.raises(ValueError, match="1 class only .0.; MLPClassifier needs at least 2"):
        MLPClassifier().fit(X, y, sample_weight=(y == 0).astype(float))
    with pytest.raises(ValueError, match="1 class only"):
        MLPClassifier(class_weight={1: 0, 2: 0}).fit(X, y)
    est = MLPClassifier(random_state=0)  # a batch of partial_fit may hold one class
    est.partial_fit(X, y, classes=[0, 1, 2], sample_weight=(y == 0).astype(float))


def test_verbose_prints_one_line_per_epoch_with_the_validation_score(capsys):
    X, y = regression()
    MLPRegressor(max_iter=3, verbose=1, early_stopping=True, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("loss = " in ln and "validation R^2 = " in ln
                                   for ln in lines)


def test_best_loss_without_early_stopping_is_the_smallest_loss():
    X, y = regression()
    est = MLPRegressor(max_iter=5, random_state=0).fit(X, y)
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None


# -- warm starts ------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", SGD(momentum=0.9)])
def test_warm_start_continues_as_one_uninterrupted_run(optimizer):
    """Two warm fits of 2 epochs over 1 learning-rate cycle each train exactly as one fit of
    4 epochs over 2 cycles: same network, optimizer state, schedule and shuffles."""
    X, y = regression()
    params = dict(optimizer=optimizer, eta_min=1e-4, eta_max=3e-3, random_state=4,
                  batch_size=32)
    whole = MLPRegressor(max_iter=4, cycles=2, **params).fit(X, y)
    parts = MLPRegressor(max_iter=2, cycles=1, warm_start=True, **params).fit(X, y).fit(X, y)
    assert parts.n_iter_ == 4 and parts.t_ == whole.t_ == parts.optimizer_.steps
    assert parts.loss_curve_ == whole.loss_curve_
    np.testing.assert_array_equal(parts.predict(X), whole.predict(X))
    cold = MLPRegressor(max_iter=2, cycles=1, **params).fit(X, y).fit(X, y)
    assert cold.n_iter_ == 2 and not np.array_equal(cold.predict(X), whole.predict(X))


def test_partial_fit_continues_the_optimizer_state():
    X, y = blobs()
    whole = MLPClassifier(max_iter=3, random_state=1, optimizer="adam", eta_max=3e-3).fit(X, y)
    parts = MLPClassifier(max_iter=3, random_state=1, optimizer="adam", eta_max=3e-3)
    for _ in range(3):
        parts.partial_fit(X, y, classes=[0, 1, 2])
    assert parts.optimizer_.steps == whole.optimizer_.steps == whole.t_
    np.testing.assert_array_equal(parts.predict_proba(X), whole.predict_proba(X))


def test_a_warm_start_may_turn_early_stopping_on():
    X, y = regression()
    est = MLPRegressor(max_iter=2, warm_start=True, random_state=0).fit(X, y)
    est.set_params(early_stopping=True, max_iter=3).fit(X, y)
    assert est.n_iter_ == 5 and len(est.validation_scores_) == 3
    assert est.best_validation_score_ == max(est.validation_scores_)


def test_warm_start_refuses_new_labels_and_features():
    X, y = blobs()
    est = MLPClassifier(max_iter=1, warm_start=True, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="not in classes_"):
        est.fit(X, y + 5)
    with pytest.raises(ValueError, match="features"):
        est.fit(X[:, :3], y)


# -- exposed options and tools ----------------------------------------------------------------

def test_init_and_dtype_reach_the_network():
    X, y = blobs()
    est = MLPClassifier(init=0.01, max_iter=1, random_state=0).fit(X, y)
    assert est.network_.init == 0.01 and est.network_.dtype == np.float32
    with pytest.raises(ValueError, match="init"):
        MLPClassifier(init="orthogonal").fit(X, y)
    with pytest.raises(ValueError, match="init"):
        MLPRegressor(init=-1.0).fit(*regression())


def test_regressor_grid_search_over_init_in_a_pipeline_with_two_jobs():
    X, y = regression(n=400, seed=3)
    pipe = make_pipeline(StandardScaler(), MLPRegressor(max_iter=15, random_state=0,
                                                        alpha=1e-4))
    search = GridSearchCV(pipe, {"mlpregressor__init": ["he", 1e-3]}, cv=2, n_jobs=2)
    search.fit(X[:300], y[:300])
    assert len(search.cv_results_["mean_test_score"]) == 2
    assert search.score(X[300:], y[300:]) > 0.8


def test_predictions_of_many_rows_are_those_of_their_blocks():
    """Thousands of rows are evaluated in governed blocks, whose thread probe must score
    them with the estimator's loss: raw outputs, not probabilities."""
    X, y = regression(n=300)
    est = MLPRegressor(max_iter=2, random_state=0).fit(X, y)
    many = np.random.default_rng(0).standard_normal((6000, X.shape[1])) * X.std(0)
    whole = est.predict(many)
    parts = np.concatenate([est.predict(many[i:i + 500]) for i in range(0, 6000, 500)])
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-3 * y.std())

"""The scikit-learn estimators: scikit-learn's own estimator checks, and their behaviour (labels,
schedule and state across partial_fit, early stopping, pickling, validation)."""
from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_blobs  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cbn  # noqa: E402
from cbn import _ops  # noqa: E402
from cbn.optim import SGD  # noqa: E402
from cbn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

HAS_LAYER_OPTIONS = "bn_placement" in inspect.signature(cbn.Network).parameters
HAS_OPTIMIZERS = "optimizer" in inspect.signature(cbn.fit).parameters
needs_layer_options = pytest.mark.skipif(
    not HAS_LAYER_OPTIONS, reason="cbn.Network takes no bn_placement/dropout here")
needs_optimizers = pytest.mark.skipif(
    not HAS_OPTIMIZERS, reason="cbn.fit takes no optimizer= here")


def rounds_by_row_position(estimator: MLPClassifier) -> bool:
    """Whether cbn's BLAS rounds a row of the estimator's products by its place in the
    batch (OpenBLAS's Haswell kernels do in float32: the rows at a tile's edge take other
    kernels): its layers' products of the order-invariance check's 20 rows (3 features, 3
    classes), in two orders."""
    hidden = estimator.hidden_layer_sizes
    dims = [3, *([hidden] if isinstance(hidden, int) else hidden), 3]
    dtype = np.dtype(estimator.dtype)
    rng = np.random.default_rng(0)
    order = rng.permutation(20)
    for d, m in zip(dims, dims[1:]):
        X = rng.standard_normal((20, d)).astype(dtype)
        W = rng.standard_normal((d, m)).astype(dtype)
        S, T, b = np.empty((20, m), dtype), np.empty((20, m), dtype), np.zeros(m, dtype)
        _ops.linear_forward(X, W, b, S)
        _ops.linear_forward(np.ascontiguousarray(X[order]), W, b, T)
        if not np.array_equal(S[order], T):
            return True
    return False


def expected_failed_checks(estimator: MLPClassifier) -> dict:
    """Checks a correct estimator fails on this machine. Permuting rows moves them to other
    places in the batch; where the BLAS rounds by place, probabilities change in the last
    bits (about 2e-7 relative in float32), above the check's rtol of 1e-7. Decided per
    estimator by its own products, so the check still runs wherever the BLAS does not."""
    # Weights of 2 are not two copies of a row under mini-batch SGD: the copies land in other
    # batches, shift the batches' boundaries and the standardisation's statistics.
    failing = {"check_sample_weight_equivalence_on_dense_data":
               "a weighted row is not its repeated copies in shuffled mini-batches"}
    if estimator.early_stopping and isinstance(estimator, MLPClassifier):
        # The check sets max_iter=1000, which stretches the cyclical rate's first rise over
        # 250 epochs, and n_iter_no_change=20: the run stops while the rate is still tiny.
        failing["check_class_weight_classifiers"] = (
            "max_iter=1000 with n_iter_no_change=20 stops before the rate has risen")
    if estimator.optimizer in ("adam", "adamw") and isinstance(estimator, MLPClassifier):
        # Once class 0 (weight 1000) is fit, what gradient is left comes from the classes of
        # weight 1e-4, and Adam's per-parameter scaling makes it as large as any other.
        failing["check_class_weight_classifiers"] = (
            "Adam rescales the tiny gradient of the classes weighted 1e-4")
    if rounds_by_row_position(estimator):
        failing["check_methods_sample_order_invariance"] = (
            "the BLAS rounds a row's products by its place in the batch")
    return failing


# Not strict: the check permutes the rows at random, and a permutation can keep every row's
# rounding.
@parametrize_with_checks([
    MLPClassifier(),
    MLPClassifier(early_stopping=True, n_iter_no_change=3, max_iter=30),
    # Without batch norm a narrow network needs more than 20 epochs of 3 steps on the checks'
    # 300 rows to pass their accuracy bar.
    MLPClassifier(batch_norm=False, dtype="float64", hidden_layer_sizes=7, max_iter=100),
    MLPClassifier(optimizer=SGD(momentum=0.9), eta_max=0.05, standardize=False, batch_size=16),
], expected_failed_checks=expected_failed_checks, xfail_strict=False)
def test_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)


@parametrize_with_checks([
    MLPRegressor(),
    MLPRegressor(early_stopping=True, n_iter_no_change=3, max_iter=30),
    MLPRegressor(batch_norm=False, dtype="float64", hidden_layer_sizes=7, max_iter=100,
                 optimizer="adam", eta_max=1e-2, alpha=1e-4, init="xavier"),
    MLPRegressor(norm="layer", activation="gelu", optimizer="adam", eta_max=1e-2, alpha=1e-4,
                 init=0.1),
], expected_failed_checks=expected_failed_checks, xfail_strict=False)
def test_regressor_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)


@needs_layer_options
@needs_optimizers
@parametrize_with_checks([
    MLPClassifier(optimizer="adam", eta_min=1e-4, eta_max=3e-3),
    MLPClassifier(optimizer="adamw", eta_min=1e-4, eta_max=3e-3, alpha=0.0),
    MLPClassifier(bn_placement="after", dropout=0.2, max_iter=40),
], expected_failed_checks=expected_failed_checks, xfail_strict=False)
def test_core_options_pass_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predictions_do_not_depend_on_the_rows_order(dtype):
    """Where the sample-order check is an expected failure, order invariance is still
    checked: to float32 rounding there, bit for bit wherever the BLAS rounds rows alike."""
    X, y = blobs(n=200)
    est = MLPClassifier(random_state=0, max_iter=5, dtype=dtype).fit(X, y)
    order = np.random.default_rng(0).permutation(len(X))
    probs, permuted = est.predict_proba(X)[order], est.predict_proba(X[order])
    if rounds_by_row_position(est):
        np.testing.assert_allclose(permuted, probs, rtol=1e-5, atol=1e-7)
    else:
        np.testing.assert_array_equal(permuted, probs)


def test_passes_the_array_api_check(tmp_path):
    """scikit-learn runs it only with SciPy's array API switch on, which must be set before
    SciPy is imported: a fresh interpreter does it."""
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "from sklearn.utils.estimator_checks import check_estimator\n"
            "from cbn.sklearn import MLPClassifier\n"
            "res = check_estimator(MLPClassifier(), on_fail=None)\n"
            "print([r['status'] for r in res if r['check_name'] == 'check_array_api_input'])")
    # The cwd (first on a `python -c` sys.path) outside the source tree, whose cbn has no
    # compiled extension when cbn is installed.
    env = dict(os.environ, SCIPY_ARRAY_API="1",
               PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['passed']"


def blobs(n=300, k=3, seed=0, d=5):
    X, y = make_blobs(n_samples=n, centers=k, n_features=d, random_state=seed)
    return X, y


def test_any_label_type_round_trips():
    X, y = blobs()
    names = np.array(["cat", "dog", "ship"])[y]
    est = MLPClassifier(random_state=0).fit(X, names)
    assert est.classes_.tolist() == ["cat", "dog", "ship"]
    assert set(est.predict(X)) <= set(names)
    assert est.score(X, names) > 0.9
    floats = MLPClassifier(random_state=0).fit(X, y * 2.0 - 7)
    assert floats.classes_.tolist() == [-7.0, -5.0, -3.0]
    # The same encoded labels and seed train the same network.
    index = np.searchsorted(est.classes_, est.predict(X))
    np.testing.assert_array_equal(floats.predict(X), floats.classes_[index])


def test_fitted_attributes():
    X, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=[20, 10], max_iter=4, random_state=0).fit(X, y)
    assert est.n_features_in_ == 5 and est.n_iter_ == 4 and est.t_ == 4 * 3
    assert len(est.loss_curve_) == 4 and est.validation_scores_ is None
    assert est.network_.hidden == (20, 10) and est.network_.num_classes == 3
    np.testing.assert_allclose(est.normalization_.mean, X.mean(axis=0))
    assert est.schedule_.step_size == 3  # 12 updates, 2 cycles


def test_loss_curve_is_the_epoch_cost():
    """An epoch's entry is its mean batch loss + alpha * sum W^2 at its end. With one batch
    per epoch, that batch's loss is the training-mode loss of every row under the weights
    the epoch started from."""
    X, y = blobs(n=64)
    est = MLPClassifier(alpha=0.01, batch_size=64, max_iter=3, random_state=0,
                        dtype="float64").fit(X, y)
    before = est.network_.copy()
    est.partial_fit(X, y)
    Xs = (X - est.normalization_.mean) / est.normalization_.std
    expected = before.cost(Xs, y) + 0.01 * est.network_.l2_penalty()
    assert len(est.loss_curve_) == 4
    assert est.loss_curve_[-1] == pytest.approx(expected, rel=1e-9)


def test_fit_repeats_exactly_with_an_int_random_state():
    X, y = blobs()
    a = MLPClassifier(max_iter=3, random_state=5).fit(X, y).predict_proba(X)
    b = MLPClassifier(max_iter=3, random_state=5).fit(X, y).predict_proba(X)
    c = MLPClassifier(max_iter=3, random_state=6).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_partial_fit_epochs_equal_one_fit():
    """partial_fit continues the network, the schedule and the random stream of the first
    call, so two calls train exactly as fit(max_iter=2)."""
    X, y = blobs()
    whole = MLPClassifier(max_iter=2, random_state=3).fit(X, y)
    parts = MLPClassifier(max_iter=2, random_state=3)
    parts.partial_fit(X, y, classes=[2, 0, 1]).partial_fit(X, y)
    assert parts.n_iter_ == 2 and parts.t_ == whole.t_
    np.testing.assert_array_equal(parts.predict_proba(X), whole.predict_proba(X))
    assert parts.loss_curve_ == whole.loss_curve_


def test_partial_fit_needs_classes_first_and_keeps_them():
    X, y = blobs()
    est = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes"):
        est.partial_fit(X, y)
    est.partial_fit(X[:100], y[:100], classes=[0, 1, 2, 3])
    assert est.classes_.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="differ"):
        est.partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="not in classes_"):
        est.partial_fit(X, y + 10)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:, :4], y)
    est.partial_fit(X, y)
    assert est.n_iter_ == 2


def test_early_stopping_stops_and_keeps_the_best_network():
    X, y = blobs(n=600, seed=1)
    est = MLPClassifier(early_stopping=True, n_iter_no_change=3, max_iter=50,
                        random_state=0).fit(X, y)
    assert est.n_iter_ < 50
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    best = int(np.argmax(est.validation_scores_))
    assert est.n_iter_ == best + 1 + 3  # three epochs without improvement after the best


def test_uint8_pixels_train_as_their_float_values():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (200, 12), dtype=np.uint8)
    y = (X[:, 0] > X[:, 1]).astype(int)
    a = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    b = MLPClassifier(max_iter=3, random_state=0).fit(X.astype(np.float64), y)
    # float64 rows subtract the mean in float64, uint8 rows its float32 rounding: the same
    # training to float32 rounding.
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


def test_predict_log_proba_is_log_of_proba():
    X, y = blobs()
    est = MLPClassifier(max_iter=3, random_state=0, dtype="float64").fit(X, y)
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(est.predict_proba(X)))


def test_fitted_estimator_pickles_and_clones():
    X, y = blobs()
    est = MLPClassifier(max_iter=3, random_state=0, optimizer=SGD(momentum=0.5)).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    again.partial_fit(X, y)  # the schedule, optimizer and random stream came along
    est.partial_fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    fresh = clone(est)
    assert not hasattr(fresh, "network_")
    assert fresh.get_params()["max_iter"] == 3


def test_optimizer_parameter_is_never_changed():
    opt = SGD(momentum=0.9)
    X, y = blobs()
    est = MLPClassifier(optimizer=opt, max_iter=2, random_state=0).fit(X, y)
    assert opt.n_params is None and opt.steps == 0
    assert est.optimizer_ is not opt and est.optimizer_.momentum == 0.9


def test_one_class_is_refused():
    X, _ = blobs()
    with pytest.raises(ValueError, match="2 classes"):
        MLPClassifier().fit(X, np.zeros(len(X), int))


@pytest.mark.parametrize("params,error", [
    (dict(hidden_layer_sizes=(0,)), ValueError),
    (dict(hidden_layer_sizes="50"), TypeError),
    (dict(batch_norm="yes"), TypeError),
    (dict(bn_placement="middle"), ValueError),
    (dict(dropout=1.0), ValueError),
    (dict(alpha=-0.1), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(optimizer="rmsprop"), ValueError),
    (dict(optimizer=5), TypeError),
    (dict(eta_min=0.2, eta_max=0.1), ValueError),
    (dict(cycles=0), ValueError),
    (dict(max_iter=0), ValueError),
    (dict(validation_fraction=1.0), ValueError),
    (dict(n_iter_no_change=0), ValueError),
    (dict(tol=float("nan")), ValueError),
    (dict(dtype="int8"), TypeError),
    (dict(standardize=None), TypeError),
])
def test_bad_parameters_raise_at_fit_not_at_construction(params, error):
    est = MLPClassifier(**params)  # scikit-learn's convention: construction never checks
    X, y = blobs(n=30)
    with pytest.raises(error):
        est.fit(X, y)
    with pytest.raises(error):
        MLPClassifier(**params).partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.skipif(HAS_OPTIMIZERS, reason="cbn.fit takes optimizer= here")
@pytest.mark.parametrize("optimizer", ["adam", "adamw", SGD(momentum=0.9, nesterov=True)])
def test_optimizers_the_training_loop_lacks_are_refused(optimizer):
    X, y = blobs(n=30)
    with pytest.raises(ValueError, match="optimizer"):
        MLPClassifier(optimizer=optimizer).fit(X, y)


@pytest.mark.skipif(HAS_LAYER_OPTIONS, reason="cbn.Network takes bn_placement here")
@pytest.mark.parametrize("params", [dict(bn_placement="after"), dict(dropout=0.1)])
def test_layer_options_the_network_lacks_are_refused(params):
    X, y = blobs(n=30)
    with pytest.raises(ValueError, match="bn_placement"):
        MLPClassifier(**params).fit(X, y)


@needs_optimizers
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adaptive_optimizers_learn_and_keep_their_state(optimizer):
    X, y = blobs()
    est = MLPClassifier(optimizer=optimizer, eta_min=1e-4, eta_max=3e-3, max_iter=10,
                        random_state=0).fit(X, y)
    assert est.score(X, y) > 0.9
    assert est.optimizer_.steps == est.t_


@needs_layer_options
def test_layer_options_reach_the_network():
    X, y = blobs()
    est = MLPClassifier(bn_placement="after", dropout=0.25, max_iter=2, random_state=0)
    config = est.fit(X, y).network_.config()
    assert config["bn_placement"] == "after"
    assert np.all(np.asarray(config["dropout"]) == 0.25)  # one rate, or one per layer


def test_verbose_prints_each_epoch(capsys):
    X, y = blobs()
    MLPClassifier(max_iter=2, verbose=True, early_stopping=True, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["Iteration 1", "Iteration 2"]
    assert "validation accuracy" in lines[0]


def test_pipeline_grid_search_on_digits():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(FunctionTransformer(np.sqrt),
                         MLPClassifier(batch_size=32, max_iter=10, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(16,), (50, 50)]},
                          cv=2).fit(X[:1200], y[:1200])
    assert search.best_params_ == {"mlpclassifier__hidden_layer_sizes": (50, 50)}
    assert search.best_score_ > 0.85
    assert search.score(X[1200:], y[1200:]) > 0.85


def test_cbn_itself_never_imports_sklearn(tmp_path):
    code = "import sys, cbn, cbn.optim; print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_comparison_example_runs_quick_on_the_sample(tmp_path):
    from test_examples import EXAMPLES, PNG_MAGIC, environment
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(EXAMPLES / "sklearn_comparison.py"), "--quick",
                           "--blas-threads", "1", "--out", str(out)], cwd=tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(document) == {"cifar10/cbn", "cifar10/sklearn", "digits/cbn", "digits/sklearn",
                             "targets", "diabetes/cbn", "diabetes/sklearn", "friedman1/cbn",
                             "friedman1/sklearn", "friedman1/targets", "imbalanced/none",
                             "imbalanced/balanced", "meta"}
    for key in ("cifar10/cbn", "cifar10/sklearn"):
        curve = document[key]["curve"]
        assert curve["epoch"] == [1, 2] and len(curve["val_accuracy"]) == 2
        assert 0 < curve["train_time"][0] < curve["train_time"][1] == document[key]["wall_time"]
    for key in ("digits/cbn", "digits/sklearn"):
        assert document[key]["test_accuracy"] > 0.8 and document[key]["best_params"]
    assert document["meta"]["data"]["source"] == "sample"
    assert (out / "accuracy_vs_time.png").read_bytes().startswith(PNG_MAGIC)
    for figure in ("diabetes_r2.png", "friedman1_r2_vs_time.png", "imbalanced_recall.png"):
        assert (out / figure).read_bytes().startswith(PNG_MAGIC)
    assert len(document["diabetes/cbn"]["test_r2"]) == 1
    assert document["friedman1/cbn"]["curve"]["epoch"] == [1, 2]
    assert len(document["imbalanced/balanced"]["recall"]) == 3
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.count("| cbn.sklearn.MLPClassifier |") == 2
    assert summary.count("| cbn.sklearn.MLPRegressor |") == 2


def test_comparison_runs_the_parts_asked_for(tmp_path):
    from test_examples import EXAMPLES, environment
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(EXAMPLES / "sklearn_comparison.py"), "--quick",
                           "--parts", "diabetes", "imbalanced", "--out", str(out)],
                          cwd=tmp_path, env=environment(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(document) == {"diabetes/cbn", "diabetes/sklearn", "imbalanced/none",
                             "imbalanced/balanced", "meta"}


def _comparison_example():
    import importlib.util
    from test_examples import EXAMPLES
    spec = importlib.util.spec_from_file_location("sklearn_comparison",
                                                  EXAMPLES / "sklearn_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_stops_scikit_learn_where_its_fit_would():
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    example = _comparison_example()
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    settings = dict(hidden_layer_sizes=(16,), batch_size=50, max_iter=200, tol=1e-2,
                    n_iter_no_change=3)
    fitted = SklearnMLP(random_state=0, **settings).fit(X, y)
    stepped = SklearnMLP(random_state=np.random.RandomState(0), **settings)
    stops = []
    for _ in range(settings["max_iter"]):
        stepped.partial_fit(X, y, classes=np.arange(10))
        stops.append(example.sklearn_stops(stepped.loss_curve_, stepped.tol,
                                           stepped.n_iter_no_change))
        # scikit-learn's own counter, which fit tests after every epoch
        assert stops[-1] == (stepped._no_improvement_count > stepped.n_iter_no_change)
        if stops[-1]:
            break
    assert stops[-1] and not any(stops[:-1])
    # Same initialisation and first permutation as fit: one RandomState runs through.
    assert stepped.loss_curve_[0] == fitted.loss_curve_[0]


def test_comparison_reads_accuracy_at_a_time_and_time_to_reach_an_accuracy():
    example = _comparison_example()
    curve = {"train_time": [1.0, 2.0, 3.0], "test_accuracy": [0.3, 0.5, 0.4]}
    assert example.accuracy_at(curve, 0.5) is None
    assert example.accuracy_at(curve, 2.5) == 0.5
    assert example.accuracy_at(curve, 3.0) == 0.4
    assert example.time_to_reach(curve, 0.45) == 2.0
    assert example.time_to_reach(curve, 0.6) is None

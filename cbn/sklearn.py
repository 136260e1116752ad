"""scikit-learn estimators on cbn's networks: ``MLPClassifier`` and ``MLPRegressor`` work in
``Pipeline``, ``GridSearchCV``, ``clone`` and pickle like scikit-learn's own. Needs scikit-learn
(``pip install "cbn[sklearn]"``); the rest of cbn never imports it. Reference: docs/sklearn.md.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.multiclass import check_classification_targets

from . import _validate as check
from ._sk_base import BaseMLP
from .augment import Augment
from .optim import Optimizer

__all__ = ["MLPClassifier", "MLPRegressor"]

_SCHEDULE = """
    The learning rate follows ``cycles`` triangular cycles between ``eta_min`` and
    ``eta_max`` spread over ``max_iter`` epochs (the course's schedule: 20 epochs of 450
    mini-batches of 100 and 2 cycles give n_s = 2250). Every epoch visits a fresh random
    permutation of the training rows.
"""

_LAYERS = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default (50, 50)
        Widths of the hidden layers.
    batch_norm : bool, default True
        Batch normalisation in each hidden layer.
    bn_placement : "before" or "after", default "before"
        Batch normalisation before or after each hidden ReLU.
    dropout : float in [0, 1), default 0.0
        Dropout rate of the hidden activations in training.
    norm : "batch", "layer", None or "auto", default "auto"
        The hidden blocks' normalisation (``cbn.Network``'s ``norm``); "auto": as
        ``batch_norm`` says.
    activation : "relu" or "gelu", default "relu"
        The hidden blocks' activation.
    residual : bool, default False
        Residual connections around the hidden blocks whose widths match.
    expansion : int >= 1 or None, default None
        Pre-norm residual blocks with this expansion factor (``cbn.Network``'s
        ``expansion``; needs ``residual``, a norm and equal widths).
    ema : float in [0, 1), default 0.0
        Decay of a moving average of the parameters and running statistics over the steps
        of ``fit`` (``cbn.EMA``), which the network takes when ``fit`` ends; 0: none. Not
        with ``partial_fit`` or ``early_stopping``, which score and keep the live network.
    init : "he", "xavier" or a float sigma > 0, default "he"
        Initialisation of the weights (``cbn.Network``'s ``init``): a scheme, or normal
        weights of standard deviation sigma, so a sensitivity study over sigma is a grid
        search.
"""

_TRAINING = """
    augment : cbn.Augment or None, default None
        Random flips, translations and jitter of the training images (``cbn.fit``'s
        ``augment``); rows are images of ``augment.image_shape``, (3, 32, 32) by default for
        3,072 features. Validation rows and predictions are never augmented.
    alpha : float >= 0, default 0.005
        cbn's L2 strength lambda: the cost is the mean loss + alpha * sum of squared
        weights, whatever the batch size. scikit-learn's MLPs add
        ``alpha / (2 * batch rows) * sum W^2`` to each mini-batch's mean loss instead, so its
        ``alpha`` equals ``2 * batch_size * alpha`` here (1.0 for the course's 0.005 at 100).
    batch_size : int >= 1, default 100
        Rows per mini-batch (all rows when there are fewer).
    optimizer : "sgd", "adam", "adamw", "lamb", "lion" or a ``cbn.optim.Optimizer``,
        default "sgd"
        The update rule; an optimizer object is copied, never changed. Adam usually wants
        ``eta_max`` around 1e-3. Its state (SGD's momentum buffer, Adam's moments and step
        count) carries over from epoch to epoch, into ``partial_fit`` and into warm starts.
    eta_min, eta_max : float, default 1e-5 and 1e-1
        Bounds of the cyclical learning rate, 0 <= eta_min <= eta_max.
    cycles : float > 0, default 2
        Learning-rate cycles over ``max_iter`` epochs.
    max_iter : int >= 1, default 20
        Epochs (fewer when early stopping ends the run).
    standardize : bool, default True
        Standardise every feature with the mean and standard deviation of the training rows
        (fitted inside, so raw pixels work as they are; uint8 images stay uint8 in memory).
        Any finite X: the mean is subtracted at full precision however far from 0 the data
        lie, and only a feature whose 1/std ``dtype`` cannot hold is refused.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training rows (stratified by {split}),
        stop when their {score} (weighted by ``sample_weight``) has not improved by
        ``tol`` for ``n_iter_no_change`` epochs, and restore the network of the best
        epoch. Without it every epoch runs: with a cyclical rate the training loss rises
        with the rate, so it is no stopping signal. ``partial_fit`` ignores it.
    validation_fraction : float in (0, 1), default 0.1
    n_iter_no_change : int >= 1, default 10
        Epochs without improvement before stopping; let it span a learning-rate cycle.
    tol : float >= 0, default 1e-4
        Smallest validation {score} gain that counts as an improvement.
    warm_start : bool, default False
        ``fit`` on a fitted estimator continues its network, standardisation, optimizer
        state, schedule position and random stream for ``max_iter`` more epochs (as
        ``partial_fit`` does for one), instead of starting afresh. The architecture and
        the standardisation are the first fit's.
    dtype : "float32" or "float64", default "float32"
        Precision of the network (float32 is about twice as fast).
    precision : "fp32" or "bf16-mixed", default "fp32"
        "bf16-mixed" (with float32) runs the layer products in bfloat16 with float32
        accumulation (``cbn.Network``'s ``precision``; ``pip install "cbn[bf16]"``).
    random_state : int, RandomState or None, default None
        Seeds initialisation, shuffling and the validation split; an int makes ``fit``
        repeat exactly (with the same BLAS thread count).
    verbose : int >= 0 or bool, default 0
        Print one line per epoch: the loss (and the validation {score}).
"""

_ATTRIBUTES = """
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)
    loss_curve_ : list of float
        Per epoch: the mean (sample-weighted) mini-batch {loss}
        plus ``alpha * sum W^2`` at the epoch's end.
    best_loss_ : float or None
        Without early stopping the smallest entry of ``loss_curve_``; with it the entry of
        the epoch whose network was restored.
    validation_scores_ : list of float or None
        Validation {score} per epoch with early stopping, else None.
    best_validation_score_ : float or None
        The best of them: that of the network kept.
    n_iter_ : int
        Epochs run.
    t_ : int
        Updates made (mini-batches).
    network_ : cbn.Network
    normalization_ : cbn.data.Normalization or None
    optimizer_ : cbn.optim.Optimizer
        The optimizer with its state (moments, update count).
"""


class MLPClassifier(ClassifierMixin, BaseMLP):
    __doc__ = ('''A k-layer fully connected network with batch normalisation, trained with cbn
    on the softmax cross-entropy.
''' + _SCHEDULE + _LAYERS + '''    label_smoothing : float in [0, 1), default 0.0
        Cross-entropy against (1 - eps) onehot + eps / K, as PyTorch's.
    mixup : float >= 0, default 0.0
        Mixup's alpha (``cbn.Mixup``): each training batch mixed with itself reversed, rows
        and targets, with a share drawn from Beta(alpha, alpha) per step; 0: none.
    class_weight : None, "balanced" or dict {label: weight}, default None
        Weights of the classes in the loss, multiplying ``sample_weight``: a dict gives some
        classes a weight (the others 1); "balanced" gives class c the weight
        n_samples / (n_classes * count(c)) over the y of ``fit`` (scikit-learn's meaning;
        ``partial_fit`` takes a dict only, its batch not being the classes' frequencies).
''' + _TRAINING.format(split="class and weight", score="accuracy") + '''
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted (any type numpy can sort).
''' + _ATTRIBUTES.format(loss="cross-entropy", score="accuracy") + '    """')

    _stratify = True
    _score_name = "accuracy"
    _validate_y: dict = {}

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (50, 50), *,
                 batch_norm: bool = True, bn_placement: str = "before", dropout: float = 0.0,
                 norm: Optional[str] = "auto", activation: str = "relu",
                 residual: bool = False, expansion: Optional[int] = None,
                 ema: float = 0.0,
                 init: Union[str, float] = "he",
                 label_smoothing: float = 0.0, mixup: float = 0.0, class_weight=None,
                 augment: Optional[Augment] = None, alpha: float = 0.005, batch_size: int = 100,
                 optimizer: Union[str, Optimizer] = "sgd", eta_min: float = 1e-5,
                 eta_max: float = 1e-1, cycles: float = 2, max_iter: int = 20,
                 standardize: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, warm_start: bool = False, dtype: str = "float32",
                 random_state=None, verbose: int = 0, precision: str = "fp32") -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.mixup = mixup
        self.batch_norm = batch_norm
        self.bn_placement = bn_placement
        self.dropout = dropout
        self.norm = norm
        self.activation = activation
        self.residual = residual
        self.ema = ema
        self.expansion = expansion
        self.init = init
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.augment = augment
        self.alpha = alpha
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.cycles = cycles
        self.max_iter = max_iter
        self.standardize = standardize
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.precision = precision

    def _check_params(self) -> None:
        super()._check_params()
        check.real("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        check.real("mixup", self.mixup, low=0.0)
        cw = self.class_weight
        if not (cw is None or isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")

    # -- targets ----------------------------------------------------------------------------

    def _targets(self, y, *, first: bool, partial: bool, classes) -> np.ndarray:
        """Class indices of ``y``; on a first call, ``classes_`` from ``classes`` or y."""
        check_classification_targets(y)
        if first and partial:
            if classes is None:
                raise ValueError("classes must be given on the first call of partial_fit")
            classes = np.asarray(classes)
            check_classification_targets(classes)
            self.classes_ = np.unique(classes)
        elif first:
            self.classes_ = np.unique(y)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from the "
                             f"first call's {self.classes_.tolist()}")
        if first and len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; y has 1 class "
                             f"({self.classes_[0]!r})")
        return self._encode(y)

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Class indices of the labels ``y``; labels outside ``classes_`` raise ValueError."""
        idx = np.searchsorted(self.classes_, y)
        idx[idx == len(self.classes_)] = 0
        unknown = self.classes_[idx] != y
        if unknown.any():
            raise ValueError(f"y holds labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(y[unknown]).tolist()[:10]}")
        return idx.astype(np.int64)

    def _targets_for_network(self, y: np.ndarray) -> np.ndarray:
        return y

    def _loss_options(self) -> dict:
        options = {"label_smoothing": float(self.label_smoothing)} if self.label_smoothing \
            else {}
        if self.mixup:
            options["mixup"] = float(self.mixup)
        return options

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _weights(self, y: np.ndarray, sample_weight, partial: bool) -> Optional[np.ndarray]:
        """``sample_weight`` times the weight of each row's class."""
        weights = super()._weights(y, sample_weight, partial)
        per_class = self._class_weights(y, partial)
        if per_class is None:
            return weights
        weights = per_class[y] if weights is None else weights * per_class[y]
        if not weights.sum() > 0:
            raise ValueError("sample_weight times class_weight is 0 for every row")
        return weights

    def _check_weighted_classes(self, y: np.ndarray, weights: Optional[np.ndarray]) -> None:
        """Refuse weights under which the rows of fewer than 2 classes count (partial_fit's
        batches may hold one class; fit's data may not)."""
        if weights is None:
            return
        counted = np.flatnonzero(np.bincount(y, weights, minlength=len(self.classes_)) > 0)
        if len(counted) < 2:
            raise ValueError("sample_weight and class_weight leave weight on the rows of 1 "
                             f"class only ({self.classes_[counted].tolist()[0]!r}); "
                             f"{type(self).__name__} needs at least 2 classes")

    def _class_weights(self, y: np.ndarray, partial: bool) -> Optional[np.ndarray]:
        """The weight of each class (in ``classes_`` order), or None."""
        cw = self.class_weight
        if cw is None:
            return None
        if isinstance(cw, str):
            if partial:
                raise ValueError("class_weight='balanced' is not available in partial_fit "
                                 "(a batch's counts are not the classes' frequencies); pass "
                                 "a dict of weights")
            counts = np.bincount(y, minlength=len(self.classes_)).astype(np.float64)
            with np.errstate(divide="ignore"):  # a class absent from y gets no row anyway
                return np.where(counts > 0, len(y) / (len(self.classes_) * counts), 0.0)
        weights = np.ones(len(self.classes_))
        unknown = [label for label in cw if not np.isin(label, self.classes_)]
        if unknown:
            raise ValueError(f"class_weight names classes not in y: {unknown[:10]} (classes_: "
                             f"{self.classes_.tolist()[:20]})")
        for label, weight in cw.items():
            weight = check.real(f"class_weight[{label!r}]", weight, low=0.0)
            weights[np.searchsorted(self.classes_, label)] = weight
        return weights

    def _validation_score(self, X, y, w) -> float:
        return float(np.average(self._outputs(X).argmax(axis=1) == y, weights=w))

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None) -> "MLPClassifier":
        """Train on X (n_samples, n_features) and labels y (n_samples,), each row's loss
        weighted by ``sample_weight`` (n_samples,) >= 0 and ``class_weight``: a fresh
        network, or the fitted one continued with ``warm_start``."""
        return self._fit(X, y, sample_weight, partial=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None) -> "MLPClassifier":
        """One epoch over (X, y), continuing the network, optimizer and schedule.

        ``classes`` (every label that will ever occur) is required on the first call, which
        also fits the standardisation and sizes the schedule from this X.
        """
        return self._fit(X, y, sample_weight, partial=True, classes=classes)

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy on (X, y), weighted by ``sample_weight``."""
        return super().score(X, y, self._checked_score_weights(X, sample_weight))

    # -- prediction -------------------------------------------------------------------------

    def _outputs(self, X) -> np.ndarray:
        return self.network_.predict_proba(self._source(X), normalization=self._normalization())

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order,
        in the network's dtype (batch norm in evaluation mode)."""
        return self._outputs(self._check_fitted_X(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of ``predict_proba`` (-inf where a probability underflowed to 0)."""
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, shape (n_samples,)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class MLPRegressor(RegressorMixin, BaseMLP):
    __doc__ = ('''A k-layer fully connected network with batch normalisation, trained with cbn
    on the squared error, for one or several float targets.

    Each target column is standardised inside (its training rows' mean and standard
    deviation, weighted by ``sample_weight``; 1 for a constant column), the network
    learns the standardised values, and ``predict`` returns them in y's original units,
    as float64. ``score`` is R^2
    (scikit-learn's ``r2_score``, uniform average over the targets).
''' + _SCHEDULE + _LAYERS + _TRAINING.format(split="weight", score="R^2") + '''
    Attributes
    ----------
    n_outputs_ : int
        Target columns (1 for a 1-D y, which ``predict`` then returns as 1-D).
    target_mean_, target_scale_ : ndarray of shape (n_outputs_,)
        The standardisation of the targets.
''' + _ATTRIBUTES.format(loss="squared error of the standardised targets",
                         score="R^2") + '    """')

    _stratify = False
    _score_name = "R^2"
    _validate_y = dict(y_numeric=True, multi_output=True)

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (50, 50), *,
                 batch_norm: bool = True, bn_placement: str = "before", dropout: float = 0.0,
                 norm: Optional[str] = "auto", activation: str = "relu",
                 residual: bool = False, expansion: Optional[int] = None,
                 ema: float = 0.0,
                 init: Union[str, float] = "he",
                 augment: Optional[Augment] = None, alpha: float = 0.005, batch_size: int = 100,
                 optimizer: Union[str, Optimizer] = "sgd", eta_min: float = 1e-5,
                 eta_max: float = 1e-1, cycles: float = 2, max_iter: int = 20,
                 standardize: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, warm_start: bool = False, dtype: str = "float32",
                 random_state=None, verbose: int = 0, precision: str = "fp32") -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.batch_norm = batch_norm
        self.bn_placement = bn_placement
        self.dropout = dropout
        self.norm = norm
        self.activation = activation
        self.residual = residual
        self.ema = ema
        self.expansion = expansion
        self.init = init
        self.augment = augment
        self.alpha = alpha
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.cycles = cycles
        self.max_iter = max_iter
        self.standardize = standardize
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.precision = precision

    # -- targets ----------------------------------------------------------------------------

    def _targets(self, y, *, first: bool, partial: bool, classes) -> np.ndarray:
        """y as float64 (n, n_outputs), checked against the first fit's columns."""
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y has NaN or infinite values")
        columns = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self.n_outputs_ = columns
        elif columns != self.n_outputs_:
            raise ValueError(f"y has {columns} target columns but the estimator was fitted "
                             f"on {self.n_outputs_}")
        return y.reshape(len(y), columns)

    def _fit_targets(self, y: np.ndarray, weights: Optional[np.ndarray]) -> None:
        """The mean and scale of each target column over the training rows, weighted as
        their loss is (a row of weight 2 counts as two, one of weight 0 not at all)."""
        with np.errstate(over="ignore", invalid="ignore"):  # refused below
            mean = np.average(y, axis=0, weights=weights)
            std = np.sqrt(np.average((y - mean) ** 2, axis=0, weights=weights))
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("y: its mean or standard deviation overflows float64; rescale y")
        self.target_mean_ = mean
        self.target_scale_ = np.where(std > 0, std, 1.0)

    def _targets_for_network(self, y: np.ndarray) -> np.ndarray:
        """The standardised targets in the network's dtype. A network has at least 2
        outputs (cbn.Network's softmax needs them): a single target is learnt by two output
        units on the same values, and ``predict`` averages them."""
        z = ((y - self.target_mean_) / self.target_scale_).astype(self.network_.dtype)
        return np.repeat(z, 2, axis=1) if self.n_outputs_ == 1 else np.ascontiguousarray(z)

    def _n_outputs(self) -> int:
        return max(2, self.n_outputs_)

    def _loss_options(self) -> dict:
        return {"loss": "mse"}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validation_score(self, X, y, w) -> float:
        return float(r2_score(y, self._outputs(X), sample_weight=w))

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None) -> "MLPRegressor":
        """Train on X (n_samples, n_features) and targets y (n_samples,) or (n_samples,
        n_outputs), each row's squared error weighted by ``sample_weight`` (n_samples,) >= 0:
        a fresh network, or the fitted one continued with ``warm_start``."""
        return self._fit(X, y, sample_weight, partial=False)

    def partial_fit(self, X, y, sample_weight=None) -> "MLPRegressor":
        """One epoch over (X, y), continuing the network, optimizer and schedule; the first
        call also fits both standardisations and sizes the schedule from this X."""
        return self._fit(X, y, sample_weight, partial=True)

    def score(self, X, y, sample_weight=None) -> float:
        """R^2 of the predictions on (X, y), weighted by ``sample_weight``."""
        return super().score(X, y, self._checked_score_weights(X, sample_weight))

    # -- prediction -------------------------------------------------------------------------

    def _outputs(self, X) -> np.ndarray:
        """Predictions for validated X, float64 (n, n_outputs) in y's units."""
        raw = self.network_.raw_outputs(self._source(X), normalization=self._normalization())
        z = raw.astype(np.float64)
        if self.n_outputs_ == 1:
            z = z.mean(axis=1, keepdims=True)
        return z * self.target_scale_ + self.target_mean_

    def predict(self, X) -> np.ndarray:
        """Predicted targets, float64, shape (n_samples,) for a 1-D y in fit, else
        (n_samples, n_outputs)."""
        out = self._outputs(self._check_fitted_X(X))
        return out[:, 0] if self.n_outputs_ == 1 else out

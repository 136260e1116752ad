"""A scikit-learn classifier on cbn's networks: ``MLPClassifier`` works in ``Pipeline``,
``GridSearchCV``, ``clone`` and pickle like scikit-learn's own. Needs scikit-learn
(``pip install "cbn[sklearn]"``); the rest of cbn never imports it.
"""
# Design: the estimator only translates. It validates and encodes the data as scikit-learn
# does, then trains with ``cbn.fit`` one epoch per call, so that early stopping, ``partial_fit``
# and the per-epoch ``loss_curve_`` need nothing from the training loop it does not have; the
# learning-rate schedule and the optimizer state carry over from one call to the next.
from __future__ import annotations

import inspect
import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _ops
from . import _validate as check
from .augment import Augment
from .data import Normalization
from .inputs import Fitted
from .network import ACTIVATIONS, NORMS, Network
from .optim import OPTIMIZERS, Optimizer
from .schedule import CyclicLR
from .train import fit as train
from .train import steps_per_epoch

__all__ = ["MLPClassifier"]

BN_PLACEMENTS = ("before", "after")
# Inputs the network reads as they are (uint8 pixels are standardised batch by batch);
# any other numeric dtype is converted to the first.
SOURCE_DTYPES = [np.float64, np.float32, np.uint8]


def _core_accepts(function, name: str) -> bool:
    """Whether ``function`` (``Network`` or ``fit``) takes the keyword ``name``."""
    return name in inspect.signature(function).parameters


class _ContinuedLR(CyclicLR):
    """``schedule`` from update ``offset`` on: ``fit`` counts each call's updates from 0."""

    def __init__(self, schedule: CyclicLR, offset: int) -> None:
        super().__init__(**schedule.state_dict())
        self.offset = offset

    def lr(self, step: int) -> float:
        return super().lr(step + self.offset)


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A k-layer fully connected network with batch normalisation, trained with cbn.

    The learning rate follows ``cycles`` triangular cycles between ``eta_min`` and
    ``eta_max`` spread over ``max_iter`` epochs (the course's schedule: 20 epochs of 450
    mini-batches of 100 and 2 cycles give n_s = 2250). Every epoch visits a fresh random
    permutation of the training rows.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default (50, 50)
        Widths of the hidden layers.
    batch_norm : bool, default True
        Batch normalisation in each hidden layer.
    bn_placement : "before" or "after", default "before"
        Batch normalisation before or after each hidden ReLU (needs a ``cbn.Network`` with
        ``bn_placement``).
    dropout : float in [0, 1), default 0.0
        Dropout rate of the hidden activations in training (needs a ``cbn.Network`` with
        ``dropout``).
    norm : "batch", "layer", None or "auto", default "auto"
        The hidden blocks' normalisation (``cbn.Network``'s ``norm``); "auto": as
        ``batch_norm`` says.
    activation : "relu" or "gelu", default "relu"
        The hidden blocks' activation.
    residual : bool, default False
        Residual connections around the hidden blocks whose widths match.
    label_smoothing : float in [0, 1), default 0.0
        Cross-entropy against (1 - eps) onehot + eps / K, as PyTorch's.
    augment : cbn.Augment or None, default None
        Random flips, translations and jitter of the training images (``cbn.fit``'s
        ``augment``); rows are images of ``augment.image_shape``, (3, 32, 32) by default for
        3,072 features. Validation rows and predictions are never augmented.
    alpha : float >= 0, default 0.005
        cbn's L2 strength lambda: the cost is the mean cross-entropy + alpha * sum of squared
        weights, whatever the batch size. scikit-learn's ``MLPClassifier`` adds
        ``alpha / (2 * batch rows) * sum W^2`` to each mini-batch's mean loss instead, so its
        ``alpha`` equals ``2 * batch_size * alpha`` here (1.0 for the course's 0.005 at 100).
    batch_size : int >= 1, default 100
        Rows per mini-batch (all rows when there are fewer).
    optimizer : "sgd", "adam", "adamw" or a ``cbn.optim.Optimizer``, default "sgd"
        The update rule; an optimizer object is copied, never changed. Anything but SGD
        without Nesterov needs ``cbn.fit(optimizer=...)``. Adam usually wants ``eta_max``
        around 1e-3. The state of Adam, AdamW and Nesterov SGD carries over from epoch to
        epoch; heavy-ball SGD runs in ``fit``'s compiled update, whose velocity starts from
        zero at each epoch here (one ``fit`` call per epoch).
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
        Hold out ``validation_fraction`` of the training rows (stratified), stop when their
        accuracy has not improved by ``tol`` for ``n_iter_no_change`` epochs, and keep the
        best network. Without it every epoch runs: with a cyclical rate the training loss
        rises with the rate, so it is no stopping signal. ``partial_fit`` ignores it.
    validation_fraction : float in (0, 1), default 0.1
    n_iter_no_change : int >= 1, default 10
        Epochs without improvement before stopping; let it span a learning-rate cycle.
    tol : float >= 0, default 1e-4
        Smallest validation accuracy gain that counts as an improvement.
    dtype : "float32" or "float64", default "float32"
        Precision of the network (float32 is about twice as fast).
    random_state : int, RandomState or None, default None
        Seeds initialisation, shuffling and the validation split; an int makes ``fit``
        repeat exactly (with the same BLAS thread count).
    verbose : bool, default False
        Print the loss (and validation accuracy) after each epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted (any type numpy can sort).
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)
    loss_curve_ : list of float
        Per epoch: the mean mini-batch cross-entropy plus ``alpha * sum W^2`` at its end.
    validation_scores_ : list of float or None
        Validation accuracy per epoch with early stopping, else None.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Updates made (mini-batches).
    network_ : cbn.Network
    normalization_ : cbn.data.Normalization or None
    optimizer_ : cbn.optim.Optimizer
        The optimizer with its state (moments, update count).
    """

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (50, 50), *,
                 batch_norm: bool = True, bn_placement: str = "before", dropout: float = 0.0,
                 norm: Optional[str] = "auto", activation: str = "relu",
                 residual: bool = False, label_smoothing: float = 0.0,
                 augment: Optional[Augment] = None, alpha: float = 0.005, batch_size: int = 100,
                 optimizer: Union[str, Optimizer] = "sgd", eta_min: float = 1e-5,
                 eta_max: float = 1e-1, cycles: float = 2, max_iter: int = 20,
                 standardize: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, dtype: str = "float32", random_state=None,
                 verbose: bool = False) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.batch_norm = batch_norm
        self.bn_placement = bn_placement
        self.dropout = dropout
        self.norm = norm
        self.activation = activation
        self.residual = residual
        self.label_smoothing = label_smoothing
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
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Validate the constructor arguments (scikit-learn checks them in fit, not init)."""
        hidden = self.hidden_layer_sizes
        check.widths("hidden_layer_sizes",
                     (hidden,) if isinstance(hidden, numbers.Integral) else hidden)
        for name in ("batch_norm", "standardize", "early_stopping", "residual"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check.choice("bn_placement", self.bn_placement, BN_PLACEMENTS)
        check.real("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.bn_placement != "before" or self.dropout:
            if not _core_accepts(Network, "bn_placement"):
                raise ValueError("bn_placement='after' and dropout need a cbn.Network that "
                                 "takes them; this one does not")
        if self.norm not in NORMS + ("auto",):
            raise ValueError(f"norm must be one of {NORMS + ('auto',)}, got {self.norm!r}")
        check.choice("activation", self.activation, ACTIVATIONS)
        check.real("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        if self.augment is not None and not isinstance(self.augment, Augment):
            raise TypeError(f"augment must be a cbn.Augment or None, got {self.augment!r}")
        check.real("alpha", self.alpha, low=0.0)
        check.integer("batch_size", self.batch_size, low=1)
        eta_min = check.real("eta_min", self.eta_min, low=0.0)
        eta_max = check.real("eta_max", self.eta_max, low=0.0)
        if eta_min > eta_max:
            raise ValueError(f"eta_min ({eta_min}) must not exceed eta_max ({eta_max})")
        check.real("cycles", self.cycles, low=0.0, low_open=True)
        check.integer("max_iter", self.max_iter, low=1)
        check.real("validation_fraction", self.validation_fraction, low=0.0, high=1.0,
                   low_open=True, high_open=True)
        check.integer("n_iter_no_change", self.n_iter_no_change, low=1)
        check.real("tol", self.tol, low=0.0)
        check.float_dtype(self.dtype)
        self._new_optimizer()

    def _new_optimizer(self) -> Optimizer:
        """A fresh optimizer of the ``optimizer`` parameter, checked against the core."""
        if isinstance(self.optimizer, str):
            opt = OPTIMIZERS[check.choice("optimizer", self.optimizer, list(OPTIMIZERS))]()
        elif isinstance(self.optimizer, Optimizer):  # its configuration, none of its state
            opt = type(self.optimizer)(**self.optimizer.hyper_parameters())
        else:
            raise TypeError("optimizer must be 'sgd', 'adam', 'adamw' or a "
                            f"cbn.optim.Optimizer, got {self.optimizer!r}")
        if opt.fused_momentum is None and not _core_accepts(train, "optimizer"):
            raise ValueError(f"optimizer {opt!r} needs cbn.fit(optimizer=...), which this "
                             "version of cbn.fit does not take")
        return opt

    # -- data -------------------------------------------------------------------------------

    def _check_X(self, X) -> np.ndarray:
        """Validated, C-contiguous rows with the fitted number of features."""
        return validate_data(self, X, dtype=SOURCE_DTYPES, order="C", reset=False)

    def _check_X_y(self, X, y, *, reset: bool):
        """Validated rows and 1-D class labels, as scikit-learn expects."""
        X, y = validate_data(self, X, y, dtype=SOURCE_DTYPES, order="C", reset=reset)
        check_classification_targets(y)
        return X, y

    def _source(self, X: np.ndarray) -> np.ndarray:
        """X as the network reads it: any source dtype when standardising, else its dtype."""
        if self.normalization_ is not None:
            return X
        dtype = self.network_.dtype
        with np.errstate(over="ignore"):  # refused below
            source = np.ascontiguousarray(X, dtype=dtype)
        if source.dtype != X.dtype and not _ops.all_finite(source.reshape(-1)):
            raise ValueError(f"X holds values beyond the range of {dtype.name} (the dtype "
                             "parameter); pass dtype='float64' or standardize=True")
        return source

    def _normalization(self):
        """What the network is told about inputs: this estimator's own standardisation, fitted
        on the training rows and applied as it is to any X (``Fitted``: cbn.inputs' checks of
        image units never judge it), or False (``standardize=False``: X as given)."""
        if self.normalization_ is None:
            return False
        return Fitted(mean=self.normalization_.mean, std=self.normalization_.std)

    def _fit_standardisation(self, X: np.ndarray) -> Optional[Normalization]:
        """The mean and std of each feature of the training rows X (None without
        ``standardize``), refused with a ValueError if the network's dtype cannot hold them."""
        if not self.standardize:
            return None
        try:
            norm = Normalization.fit(X)
            norm.scale(self.dtype)
        except ValueError as exc:
            raise ValueError(f"X cannot be standardised in {np.dtype(self.dtype).name} (the "
                             f"dtype parameter): {exc}; {self._remedy()}") from None
        return norm

    def _remedy(self) -> str:
        """What to do about X that the network's dtype cannot hold once standardised."""
        wider = "" if np.dtype(self.dtype) == np.float64 else " or pass dtype='float64'"
        return "rescale X" + wider

    def _check_reach(self, X: np.ndarray, rows: str) -> None:
        """Refuse ``rows`` of X (named so in the error) that lie so many standard deviations
        from the training rows' mean that the network's dtype overflows once they are
        standardised."""
        norm, dtype = self.normalization_, self.network_.dtype
        if norm is None:
            return
        limit = np.finfo(dtype).max
        step = max(1, (1 << 20) // X.shape[1])
        with np.errstate(over="ignore"):  # an overflow is what is looked for
            for start in range(0, X.shape[0], step):
                if not (np.abs(X[start:start + step] - norm.mean) <= limit * norm.std).all():
                    raise ValueError(f"X: {rows} lie too many standard deviations from the "
                                     f"training rows' mean for {dtype.name} (the dtype "
                                     f"parameter) once standardised; {self._remedy()}")

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Class indices of the labels ``y``; labels outside ``classes_`` raise ValueError."""
        idx = np.searchsorted(self.classes_, y)
        idx[idx == len(self.classes_)] = 0
        unknown = self.classes_[idx] != y
        if unknown.any():
            raise ValueError(f"y holds labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(y[unknown]).tolist()[:10]}")
        return idx.astype(np.int64)

    # -- training ---------------------------------------------------------------------------

    def _start(self, X: np.ndarray, n_train: int, rng: np.random.RandomState) -> None:
        """A fresh network, normalisation, optimizer and schedule for ``n_train`` rows."""
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; y has 1 class "
                             f"({self.classes_[0]!r})")
        hidden = self.hidden_layer_sizes
        hidden = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(hidden)
        extra = {}
        if _core_accepts(Network, "bn_placement"):
            extra = dict(bn_placement=self.bn_placement, dropout=float(self.dropout))
        if self.norm != "auto" or self.activation != "relu" or self.residual:
            extra.update(norm=(("batch" if self.batch_norm else None) if self.norm == "auto"
                               else self.norm), activation=self.activation,
                         residual=bool(self.residual))
        self.network_ = Network(X.shape[1], hidden, len(self.classes_),
                                batch_norm=None if "norm" in extra else bool(self.batch_norm),
                                dtype=np.dtype(self.dtype),
                                seed=int(rng.randint(2 ** 31)), **extra)
        if self.augment is not None:
            self.augment.shape_for(X.shape[1])
        self.normalization_ = self._fit_standardisation(X)
        net = self.network_
        self.optimizer_ = self._new_optimizer()
        self.optimizer_.bind(net.flat_params.size, net.n_weights, net.dtype)
        batch = min(self.batch_size, n_train)
        total = self.max_iter * steps_per_epoch(n_train, batch, net.batch_norm)
        self.schedule_ = CyclicLR(self.eta_min, self.eta_max,
                                  max(1, round(total / (2 * self.cycles))))
        self.loss_curve_ = []
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = None
        self.n_iter_ = 0
        self.t_ = 0
        self._rng = rng  # partial_fit goes on drawing from it

    def _epoch(self, X, y, X_val, y_val, rng: np.random.RandomState) -> Optional[float]:
        """One epoch over (X, y); append to the curves; return the validation accuracy."""
        net, opt = self.network_, self.optimizer_
        if _core_accepts(train, "optimizer"):
            update = dict(optimizer=opt)
        else:
            update = dict(momentum=opt.fused_momentum)
        if self.augment is not None:
            update["augment"] = self.augment
        if self.label_smoothing:
            update["label_smoothing"] = float(self.label_smoothing)
        history = train(net, self._source(X), y, X_val=X_val if X_val is None
                        else self._source(X_val), y_val=y_val, lam=self.alpha,
                        batch_size=self.batch_size, schedule=_ContinuedLR(self.schedule_, self.t_),
                        epochs=1, seed=int(rng.randint(2 ** 31)), progress=False,
                        normalization=self._normalization(), **update)
        self.t_ += history.step[-1]
        self.n_iter_ += 1
        self.loss_curve_.append(history.batch_loss[-1] + self.alpha * net.l2_penalty())
        score = history.val_accuracy[-1] if X_val is not None else None
        if self.verbose:
            shown = "" if score is None else f", validation accuracy = {score:.4f}"
            print(f"Iteration {self.n_iter_}, loss = {self.loss_curve_[-1]:.8f}{shown}")
        return score

    def fit(self, X, y) -> "MLPClassifier":
        """Train a fresh network on X (n_samples, n_features) and labels y (n_samples,)."""
        self._check_params()
        X, y = self._check_X_y(X, y, reset=True)
        rng = check_random_state(self.random_state)
        self.classes_, y = np.unique(y, return_inverse=True)
        y = y.astype(np.int64)
        X_val = y_val = None
        if self.early_stopping and len(self.classes_) >= 2:
            X, X_val, y, y_val = self._split(X, y, rng)
        self._start(X, X.shape[0], rng)
        if X_val is not None:
            self._check_reach(X_val, "rows held out for early stopping")
        best, stale, best_state = -math.inf, 0, None
        for _ in range(self.max_iter):
            score = self._epoch(X, y, X_val, y_val, rng)
            if score is None:
                continue
            self.validation_scores_.append(score)
            if score > best + self.tol:
                best, stale, best_state = score, 0, self.network_.state_dict()
            else:
                stale += 1
            if stale >= self.n_iter_no_change:
                if self.verbose:
                    print(f"Validation accuracy did not improve by {self.tol} for "
                          f"{self.n_iter_no_change} epochs; stopping.")
                break
        if best_state is not None:
            self.network_.load_state_dict(best_state)
            self.best_validation_score_ = best
        return self

    def _split(self, X, y, rng):
        """Hold out ``validation_fraction`` of the rows, stratified when every class can."""
        try:
            return train_test_split(X, y, test_size=self.validation_fraction, stratify=y,
                                    random_state=rng)
        except ValueError:  # a class with one row, or fewer held-out rows than classes
            return train_test_split(X, y, test_size=self.validation_fraction,
                                    random_state=rng)

    def partial_fit(self, X, y, classes=None) -> "MLPClassifier":
        """One epoch over (X, y), continuing the network, optimizer and schedule.

        ``classes`` (every label that will ever occur) is required on the first call, which
        also fits the standardisation and sizes the schedule from this X.
        """
        first = not hasattr(self, "classes_")
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call of partial_fit")
            self._check_params()
            X, y = self._check_X_y(X, y, reset=True)
            classes = np.asarray(classes)
            check_classification_targets(classes)
            self.classes_ = np.unique(classes)
        else:
            X, y = self._check_X_y(X, y, reset=False)
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes {np.unique(classes).tolist()} differ from the "
                                 f"first call's {self.classes_.tolist()}")
        y = self._encode(y)
        if first:
            self._start(X, X.shape[0], check_random_state(self.random_state))
        self._epoch(X, y, None, None, self._rng)
        return self

    # -- prediction -------------------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order,
        in the network's dtype (batch norm in evaluation mode)."""
        check_is_fitted(self)
        X = self._check_X(X)
        return self.network_.predict_proba(self._source(X), normalization=self._normalization())

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of ``predict_proba`` (-inf where a probability underflowed to 0)."""
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, shape (n_samples,)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

"""What cbn.sklearn's two estimators share: parameters, the input standardisation, the
training loop of one ``cbn.fit`` call per epoch, early stopping, warm starts and weights.
Needs scikit-learn; the rest of cbn never imports it.
"""
# Design: the estimators only translate. They validate and encode the data as scikit-learn
# does, then train with ``cbn.fit`` one epoch per call, so that early stopping, ``partial_fit``,
# warm starts and the per-epoch ``loss_curve_`` need nothing from the training loop it does not
# have: the network, the optimizer (its state lives in the object: Adam's moments, SGD's
# momentum buffer), the learning-rate schedule (``_ContinuedLR``) and the random stream all
# carry over from one call to the next.
from __future__ import annotations

import inspect
import math
import numbers
from typing import Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _ops, bf16
from . import _validate as check
from .augment import Augment
from .data import Normalization
from .ema import EMA
from .inputs import Fitted
from .losses import sample_weights
from .network import ACTIVATIONS, INIT_NAMES, NORMS, Network, check_blocks
from .optim import OPTIMIZERS, Optimizer, bind_network
from .schedule import CyclicLR
from .train import fit as train
from .train import steps_per_epoch

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


class BaseMLP(BaseEstimator):
    """The shared machinery of ``MLPClassifier`` and ``MLPRegressor`` (see their docstrings
    for the parameters). Subclasses set ``_stratify`` and ``_score_name`` and implement the
    ``_targets*`` hooks, ``_n_outputs``, ``_loss_options`` and ``_validation_score``."""

    _stratify = True  # the held-out split keeps the classes' shares
    _score_name = "accuracy"

    # -- parameters -------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Validate the constructor arguments (scikit-learn checks them in fit, not init)."""
        hidden = self.hidden_layer_sizes
        widths = check.widths("hidden_layer_sizes",
                              (hidden,) if isinstance(hidden, numbers.Integral) else hidden)
        for name in ("batch_norm", "standardize", "early_stopping", "residual", "warm_start"):
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
        if check.real("ema", self.ema, low=0.0, high=1.0, high_open=True) and \
                self.early_stopping:
            raise ValueError("ema (a moving average) and early_stopping (the best live "
                             "network) each choose the network fit ends with; use one")
        if self.expansion is not None:
            check.integer("expansion", self.expansion, low=1)
            norm = (("batch" if self.batch_norm else None) if self.norm == "auto"
                    else self.norm)
            check_blocks(widths, self.residual, norm, self.dropout, self.bn_placement)
        if isinstance(self.init, str):
            check.choice("init", self.init, INIT_NAMES)
        else:
            check.real("init (sigma)", self.init, low=0.0, low_open=True)
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
        if not isinstance(self.verbose, (bool, np.bool_)):
            check.integer("verbose", self.verbose, low=0)
        bf16.check_precision(self.precision, check.float_dtype(self.dtype))
        self._new_optimizer()

    def _new_optimizer(self) -> Optimizer:
        """A fresh optimizer of the ``optimizer`` parameter, checked against the core."""
        if isinstance(self.optimizer, str):
            opt = OPTIMIZERS[check.choice("optimizer", self.optimizer, list(OPTIMIZERS))]()
        elif isinstance(self.optimizer, Optimizer):  # its configuration, none of its state
            opt = type(self.optimizer)(**self.optimizer.hyper_parameters())
        else:
            raise TypeError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or "
                            f"a cbn.optim.Optimizer, got {self.optimizer!r}")
        if opt.fused_momentum is None and not _core_accepts(train, "optimizer"):
            raise ValueError(f"optimizer {opt!r} needs cbn.fit(optimizer=...), which this "
                             "version of cbn.fit does not take")
        return opt

    # -- data -------------------------------------------------------------------------------

    def _check_X(self, X) -> np.ndarray:
        """Validated, C-contiguous rows with the fitted number of features."""
        return validate_data(self, X, dtype=SOURCE_DTYPES, order="C", reset=False)

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

    def _weights(self, y: np.ndarray, sample_weight, partial: bool) -> Optional[np.ndarray]:
        """The checked per-row weights of the loss (None: all equal). The classifier
        multiplies in its class weights."""
        if sample_weight is None:
            return None
        return sample_weights(sample_weight, len(y))

    def _checked_score_weights(self, X, sample_weight):
        """``score``'s ``sample_weight``, checked as ``fit``'s is."""
        if sample_weight is None:
            return None
        return sample_weights(sample_weight, len(X))

    # -- training ---------------------------------------------------------------------------

    def _start(self, X: np.ndarray, y: np.ndarray, weights: Optional[np.ndarray],
               rng: np.random.RandomState) -> None:
        """A fresh network, standardisations, optimizer and schedule for the training rows
        X, y of ``weights``."""
        n_train = X.shape[0]
        hidden = self.hidden_layer_sizes
        hidden = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(hidden)
        extra = {}
        if _core_accepts(Network, "bn_placement"):
            extra = dict(bn_placement=self.bn_placement, dropout=float(self.dropout))
        if self.norm != "auto" or self.activation != "relu" or self.residual:
            extra.update(norm=(("batch" if self.batch_norm else None) if self.norm == "auto"
                               else self.norm), activation=self.activation,
                         residual=bool(self.residual))
        if self.expansion is not None:
            extra["expansion"] = self.expansion
        if self.precision != "fp32":
            extra["precision"] = self.precision
        init = self.init if isinstance(self.init, str) else float(self.init)
        self.network_ = Network(X.shape[1], hidden, self._n_outputs(),
                                batch_norm=None if "norm" in extra else bool(self.batch_norm),
                                init=init, dtype=np.dtype(self.dtype),
                                seed=int(rng.randint(2 ** 31)), **extra)
        if self.augment is not None:
            self.augment.shape_for(X.shape[1])
        self.normalization_ = self._fit_standardisation(X)
        self._fit_targets(y, weights)
        net = self.network_
        self.optimizer_ = self._new_optimizer()
        bind_network(self.optimizer_, net)
        batch = min(self.batch_size, n_train)
        total = self.max_iter * steps_per_epoch(n_train, batch, net.batch_norm)
        self.schedule_ = CyclicLR(self.eta_min, self.eta_max,
                                  max(1, round(total / (2 * self.cycles))))
        self.loss_curve_ = []
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = None
        self.best_loss_ = None
        self.n_iter_ = 0
        self.t_ = 0
        self._rng = rng  # partial_fit and warm starts go on drawing from it

    def _batch_norm(self) -> bool:
        """Whether the network of these parameters has batch normalisation."""
        return self.norm == "batch" or (self.norm == "auto" and bool(self.batch_norm))

    def _loss_options(self) -> dict:
        """``cbn.fit``'s keywords of the loss (its default: cross-entropy)."""
        return {}

    def _check_weighted_classes(self, y: np.ndarray, weights: Optional[np.ndarray]) -> None:
        """Refuse weights that leave too little to learn (the classifier: one class)."""

    def _fit_targets(self, y: np.ndarray, weights: Optional[np.ndarray]) -> None:
        """Fit what the targets need from the training rows (the regressor's scale)."""

    def _epoch(self, X, y, weights, rng: np.random.RandomState, callbacks=None) -> None:
        """One epoch over (X, y) with per-row ``weights``; append to ``loss_curve_``;
        ``callbacks`` are ``cbn.fit``'s."""
        net, opt = self.network_, self.optimizer_
        if _core_accepts(train, "optimizer"):
            update = dict(optimizer=opt)
        else:
            update = dict(momentum=opt.fused_momentum)
        if self.augment is not None:
            update["augment"] = self.augment
        update.update(self._loss_options())
        if weights is not None:
            update["sample_weight"] = weights
        history = train(net, self._source(X), self._targets_for_network(y), lam=self.alpha,
                        batch_size=self.batch_size,
                        schedule=_ContinuedLR(self.schedule_, self.t_), epochs=1,
                        seed=int(rng.randint(2 ** 31)), progress=False,
                        normalization=self._normalization(), callbacks=callbacks, **update)
        self.t_ += history.step[-1]
        self.n_iter_ += 1
        self.loss_curve_.append(history.batch_loss[-1] + self.alpha * net.l2_penalty())

    def _report(self, score: Optional[float]) -> None:
        if self.verbose:
            shown = "" if score is None else f", validation {self._score_name} = {score:.4f}"
            print(f"Iteration {self.n_iter_}, loss = {self.loss_curve_[-1]:.8f}{shown}")

    def _fit(self, X, y, sample_weight, *, partial: bool, classes=None):
        """``fit`` (``partial=False``) and ``partial_fit``: validate, then train a fresh
        network, or continue the fitted one for ``partial_fit`` and ``warm_start``."""
        self._check_params()
        if partial and self.ema:
            raise ValueError("ema averages the steps of one fit call; partial_fit trains one "
                             "epoch a call (use fit, or ema=0)")
        first = not ((partial or self.warm_start) and hasattr(self, "network_"))
        X, y = validate_data(self, X, y, dtype=SOURCE_DTYPES, order="C", reset=first,
                             **self._validate_y)
        y = self._targets(y, first=first, partial=partial, classes=classes)
        weights = self._weights(y, sample_weight, partial)
        if not partial:
            self._check_weighted_classes(y, weights)
        rng = check_random_state(self.random_state) if first else self._rng
        X_val = y_val = w_val = None
        if self.early_stopping and not partial:
            train_rows, val_rows = self._split(y, weights, rng)
            X_val, y_val = X[val_rows], y[val_rows]
            X, y = X[train_rows], y[train_rows]
            if weights is not None:
                weights, w_val = weights[train_rows], weights[val_rows]
                if not weights.sum() > 0 or not w_val.sum() > 0:
                    raise ValueError("sample_weight: the rows "
                                     + ("held out" if weights.sum() > 0 else "left to train")
                                     + " by early_stopping's validation_fraction all have "
                                     "weight 0")
        if first:
            if X.shape[0] < 2 and self._batch_norm():
                raise ValueError(f"n_samples={X.shape[0]} rows to train on: batch "
                                 "normalisation needs at least 2")
            self._start(X, y, weights, rng)
        if X_val is not None:
            self._check_reach(X_val, "rows held out for early stopping")
            if self.validation_scores_ is None:  # a warm start turning early stopping on
                self.validation_scores_ = []
        best, stale, best_state, best_loss = -math.inf, 0, None, None
        average, callbacks = None, None
        if self.ema:  # one average over every step of this call (cbn.EMA, as fit keeps it)
            average = EMA(self.ema).averager(self.network_)
            callbacks = [_AverageSteps(average)]
        for _ in range(1 if partial else self.max_iter):
            self._epoch(X, y, weights, self._rng, callbacks)
            if X_val is None:
                self._report(None)
                continue
            score = self._validation_score(X_val, y_val, w_val)
            self.validation_scores_.append(score)
            self._report(score)
            if score > best + self.tol:
                best, stale = score, 0
                best_state, best_loss = self.network_.state_dict(), self.loss_curve_[-1]
            else:
                stale += 1
            if stale >= self.n_iter_no_change:
                if self.verbose:
                    print(f"Validation {self._score_name} did not improve by {self.tol} for "
                          f"{self.n_iter_no_change} epochs; stopping.")
                break
        if average is not None:
            average.apply()
        if best_state is not None:
            self.network_.load_state_dict(best_state)
            self.best_validation_score_, self.best_loss_ = best, best_loss
        elif self.validation_scores_ is None or partial:
            self.best_loss_ = min(self.loss_curve_)
        return self

    def _split(self, y: np.ndarray, weights: Optional[np.ndarray],
               rng) -> Tuple[np.ndarray, np.ndarray]:
        """Rows to train on and rows held out: ``validation_fraction`` of them, stratified
        when the data allow by class (the classifier) and by zero or positive weight, so
        that both parts keep rows that count."""
        rows = np.arange(len(y))
        strata = y if self._stratify else None
        if weights is not None and not weights.all():
            strata = (weights > 0) if strata is None else 2 * strata + (weights > 0)
        for stratify in ([strata] if strata is not None else []) + [None]:
            try:
                return train_test_split(rows, test_size=self.validation_fraction,
                                        stratify=stratify, random_state=rng)
            except ValueError:  # a stratum of one row, or fewer held-out rows than strata
                continue
        raise ValueError(f"early_stopping: validation_fraction={self.validation_fraction} "
                         f"of n_samples={len(y)} rows leaves no row to train on or none to "
                         "hold out")

    def _outputs(self, X) -> np.ndarray:
        """The network's outputs for validated X (probabilities or raw outputs)."""
        raise NotImplementedError

    def _check_fitted_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self._check_X(X)


class _AverageSteps:
    """The callback that updates a moving average (``cbn.ema.Averager``) after every step of
    the estimator's epochs."""

    per_step = True

    def __init__(self, average) -> None:
        self.average, self.steps = average, 0  # steps over the epochs of one fit call

    def on_train_begin(self, run) -> None:
        pass

    def on_epoch_end(self, run, logs) -> None:
        pass

    def on_step_end(self, run, step: int, loss: float) -> None:
        self.steps += 1
        self.average.update(self.steps)

    def on_train_end(self, run) -> None:
        pass

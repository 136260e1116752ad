"""The losses a network trains on, and their checked targets.

- ``"cross_entropy"`` (default): softmax cross-entropy against integer class labels, with
  ``label_smoothing`` eps in [0, 1) as PyTorch's ``cross_entropy(label_smoothing=eps)``:
  the target of a sample of class t is the distribution (1 - eps) onehot(t) + eps / K.
- ``"mse"``: the squared error against float targets (n, K), the mean over all n K values
  (``torch.nn.MSELoss()``). The network's outputs are then its raw outputs
  (``Network.raw_outputs``), not probabilities; the accuracy ``fit`` records counts the rows
  whose largest output sits where their target's largest value does.

Mixup (``cbn.Mixup``) makes the cross-entropy's target of row i lam q(t_i) + (1 - lam)
q(t_{n-1-i}), q(t) its smoothed one-hot above: a soft target, in the same kernel (lam = 1 is
the plain loss); it needs ``"cross_entropy"``.

``sample_weight`` w (n,), w >= 0 with a positive sum, makes the loss of a batch the weighted
mean sum w_i l_i / sum w_i (l_i: sample i's loss). Batch-norm statistics stay unweighted:
a sample's weight scales its loss, not its share of the batch mean and variance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _validate as check

LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class Targets:
    """Checked targets of one loss for the rows of one source: ``labels`` (int64 (n,),
    cross-entropy) or ``values`` ((n, K) in the network's dtype, mse), and ``weights``
    (float64 (n,)) or None."""

    loss: str
    labels: Optional[np.ndarray]
    values: Optional[np.ndarray]
    weights: Optional[np.ndarray]
    label_smoothing: float = 0.0

    def apply(self, plan) -> None:
        """Score ``plan``'s outputs with this loss (after ``plan.set_data(src, self.labels,
        ...)``)."""
        plan.set_loss(self.loss, self.label_smoothing, self.weights, self.values)


def targets(y, n: int, num_classes: int, dtype, *, loss: str = "cross_entropy",
            label_smoothing: float = 0.0, sample_weight=None, name: str = "y",
            weight_name: str = "sample_weight") -> Targets:
    """Check ``y`` and the loss options for ``n`` rows and ``num_classes`` outputs."""
    loss = check.choice("loss", loss, LOSSES)
    label_smoothing = check.real("label_smoothing", label_smoothing, low=0.0, high=1.0,
                                 high_open=True)
    kind = getattr(y, "dtype", np.dtype("O")).kind
    if loss == "cross_entropy":
        if kind == "f":
            raise TypeError(f"{name} holds floats, but loss='cross_entropy' takes integer "
                            "class labels (use loss='mse' for float targets)")
        labels, values = check.labels(name, y, n, num_classes), None
    else:
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss='cross_entropy' only")
        if kind in "iub":
            raise TypeError(f"{name} holds integer labels, but loss='mse' takes float targets "
                            f"of shape (n, {num_classes}) (one-hot: np.eye({num_classes})[y])")
        values = check.matrix(name, y, cols=num_classes)
        if values.shape[0] != n:
            raise ValueError(f"{name} has {values.shape[0]} rows but the data has {n}")
        labels, values = None, np.ascontiguousarray(values, dtype=dtype)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} has NaN or infinite values once in {np.dtype(dtype)}")
    weights = None if sample_weight is None else sample_weights(sample_weight, n, weight_name)
    return Targets(loss, labels, values, weights, label_smoothing)


def mix_shares(mix, n: int, name: str = "mix") -> np.ndarray:
    """Mixup's shares as float64 (n,): a number for every row, or one per row, each in
    [0, 1] (a ValueError or TypeError naming ``name`` otherwise)."""
    shares = np.asarray(check.real_array(name, mix), dtype=np.float64)
    shares = np.full(n, float(shares)) if shares.ndim == 0 else np.ascontiguousarray(shares)
    if shares.shape != (n,):
        raise ValueError(f"{name} must be a number or one value per row ({n}), got "
                         f"shape {shares.shape}")
    if not (np.isfinite(shares).all() and ((shares >= 0) & (shares <= 1)).all()):
        raise ValueError(f"{name} must be in [0, 1], got values from {shares.min()!r} to "
                         f"{shares.max()!r}")
    return shares


def sample_weights(sample_weight, n: int, name: str = "sample_weight") -> np.ndarray:
    """``sample_weight`` as float64 (n,), checked: finite, >= 0, not all zero (a ValueError
    or TypeError naming ``name`` otherwise)."""
    weights = np.ascontiguousarray(check.real_array(name, sample_weight), dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"{name} must be 1-D with one weight per row ({n}), got "
                         f"shape {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (weights < 0).any():
        raise ValueError(f"{name} must be >= 0, got a minimum of {weights.min()}")
    if not weights.sum() > 0:
        raise ValueError(f"{name} must not be all zero")
    return weights

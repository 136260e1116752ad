"""A network's parameters in one flat buffer: the layout of its named views (``W1, b1,
gamma1, beta1, ..., Wk, bk``, weights first so the L2 penalty is one slice), the matching
gradient views, the batch-norm running statistics, and their initialisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _validate as check


@dataclass
class Parameters:
    """The buffers of one network.

    Attributes
    ----------
    theta, grad : ndarray, shape (n_params,)
        All parameters and their gradients, weights first.
    params, grads : dict of str to ndarray
        Named views into ``theta`` and ``grad``, in the order ``W1, b1, gamma1, beta1, ...``;
        ``Wl`` has shape (d_{l-1}, d_l), the others (d_l,).
    running : dict of str to ndarray
        ``running_mean{l}`` (zeros) and ``running_var{l}`` (ones) of each hidden block with
        batch norm, shape (d_l,); none with layer norm.
    n_weights : int
        How many entries of ``theta`` are weights.
    """

    theta: np.ndarray
    grad: np.ndarray
    params: Dict[str, np.ndarray]
    grads: Dict[str, np.ndarray]
    running: Dict[str, np.ndarray]
    n_weights: int


def allocate(dims: Sequence[int], norm: Optional[str], dtype: np.dtype,
             normed: Optional[Sequence[bool]] = None) -> Parameters:
    """Zeroed parameters of a network with layer widths ``dims`` (input first), with gamma
    and beta in every hidden block when it has a ``norm`` ("batch" or "layer"), and running
    statistics with "batch"; ``normed`` (one per hidden layer) names the blocks that have
    the norm when not all do."""
    k = len(dims) - 1
    normed = [norm is not None and (normed is None or bool(normed[l])) for l in range(k - 1)]
    shapes = [(f"W{l + 1}", (dims[l], dims[l + 1])) for l in range(k)]
    n_weights = sum(a * b for _, (a, b) in shapes)
    for l in range(k):
        shapes.append((f"b{l + 1}", (dims[l + 1],)))
        if l < k - 1 and normed[l]:
            shapes.append((f"gamma{l + 1}", (dims[l + 1],)))
            shapes.append((f"beta{l + 1}", (dims[l + 1],)))
    total = sum(int(np.prod(s)) for _, s in shapes)
    theta, grad = np.zeros(total, dtype), np.zeros(total, dtype)
    params: Dict[str, np.ndarray] = {}
    grads: Dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        params[name] = theta[offset:offset + size].reshape(shape)
        grads[name] = grad[offset:offset + size].reshape(shape)
        offset += size
    order = []
    for l in range(1, k + 1):
        order += [f"W{l}", f"b{l}"]
        if l < k and normed[l - 1]:
            order += [f"gamma{l}", f"beta{l}"]
    running: Dict[str, np.ndarray] = {}
    if norm == "batch":
        for l in (l for l in range(1, k) if normed[l - 1]):
            running[f"running_mean{l}"] = np.zeros(dims[l], dtype)
            running[f"running_var{l}"] = np.ones(dims[l], dtype)
    return Parameters(theta, grad, {name: params[name] for name in order},
                      {name: grads[name] for name in order}, running, n_weights)


def initialize(params: Dict[str, np.ndarray], num_layers: int, init: Union[str, float],
               norm: Optional[str], rng: np.random.Generator) -> None:
    """Draw every weight from N(0, sigma^2) (He: 2/d_in, Xavier: 1/d_in, or the number
    ``init``), layer by layer; gamma to 1. Biases and beta stay 0."""
    for l in range(1, num_layers + 1):
        W = params[f"W{l}"]
        d_in = W.shape[0]
        if init == "he":
            sigma = np.sqrt(2.0 / d_in)
        elif init == "xavier":
            sigma = np.sqrt(1.0 / d_in)
        else:
            sigma = float(init)
        W[...] = rng.standard_normal(W.shape) * sigma
        if f"gamma{l}" in params:
            params[f"gamma{l}"][...] = 1


def dropout_rates(dropout, hidden_layers: int) -> Tuple[float, ...]:
    """One drop probability in [0, 1) per hidden layer, from one value or a sequence."""
    if isinstance(dropout, (str, bytes)) or not np.ndim(dropout) in (0, 1):
        raise TypeError(f"dropout must be a number or a sequence of numbers, got {dropout!r}")
    if np.ndim(dropout) == 0:
        rates = [dropout] * hidden_layers
    else:
        rates = list(dropout)
        if len(rates) != hidden_layers:
            raise ValueError(f"dropout needs one value per hidden layer ({hidden_layers}), "
                             f"got {len(rates)}: {rates}")
    return tuple(check.real("dropout", p, low=0.0, high=1.0, high_open=True) for p in rates)

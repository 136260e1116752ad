"""The public, checked face of the compiled core ``cbn._ops``: its kernels one by one, with
their inputs checked, a functional API for tests, teaching and reuse. The network runs the
same kernels through ``_ops.Plan`` instead. (Named ``cbn.kernels`` before; that name is a
deprecated alias for one release.)

Every function takes C-contiguous float32 or float64 arrays of one dtype (uint8 is also
allowed as the source of ``gather_rows``) and returns new arrays of that dtype, except the
in-place ``running_stats_update`` and ``sgd_update``. Shapes: rows are samples; X (n, d),
W (d, m), S and H (n, m), per-feature vectors (m,).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import numpy as np

from . import _ops
from . import _validate as check
from . import losses
from .augment import Augment, Mixup


def _same_dtype(**arrays: np.ndarray) -> np.dtype:
    dtypes = {name: a.dtype for name, a in arrays.items()}
    first = next(iter(dtypes.values()))
    if any(dt != first for dt in dtypes.values()):
        listed = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise TypeError(f"arrays must share one dtype (float32 or float64), got {listed}")
    return first


def _shaped_like(name: str, array, first_name: str, first: np.ndarray) -> np.ndarray:
    """``array`` checked as a matrix of ``first``'s shape (named in the error)."""
    array = check.matrix(name, array, cols=first.shape[1])
    if array.shape != first.shape:
        raise ValueError(f"{first_name} and {name} must share a shape, got {first.shape} and "
                         f"{array.shape}")
    return array


def _finite(what: str, *arrays: Optional[np.ndarray]) -> None:
    """Finite inputs can still overflow (e.g. a variance of values near 1e20 in float32):
    raise rather than return inf or NaN."""
    for a in arrays:
        if a is not None:
            check.finite_result(what, a)


def _writeable(name: str, a: np.ndarray) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is updated in place)")


def linear_forward(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """S = X W + b, shape (n, m)."""
    X = check.matrix("X", X)
    W = check.matrix("W", W, finite=True)
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"X is {X.shape} but W is {W.shape}: W needs {X.shape[1]} rows")
    b = check.vector("b", b, size=W.shape[1])
    dt = _same_dtype(X=X, W=W, b=b)
    S = np.empty((X.shape[0], W.shape[1]), dt)
    _ops.linear_forward(X, W, b, S)
    _finite("linear_forward", S)
    return S


def linear_backward(X: np.ndarray, W: np.ndarray, dS: np.ndarray, lam: float = 0.0, *,
                    need_dX: bool = True) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Gradients of a linear layer: dW = X^T dS + 2 lam W, db = sum_rows dS, dX = dS W^T
    (None when ``need_dX`` is False)."""
    X = check.matrix("X", X)
    W = check.matrix("W", W)
    if W.shape[0] != X.shape[1]:
        raise ValueError(f"X is {X.shape} but W is {W.shape}: W needs {X.shape[1]} rows")
    dS = check.matrix("dS", dS, cols=W.shape[1])
    if dS.shape[0] != X.shape[0]:
        raise ValueError(f"dS has {dS.shape[0]} rows but X has {X.shape[0]}")
    lam = check.real("lam", lam, low=0.0)
    dt = _same_dtype(X=X, W=W, dS=dS)
    dW = np.empty_like(W)
    db = np.empty(W.shape[1], dt)
    dX = np.empty_like(X) if need_dX else None
    _ops.linear_backward(X, W, dS, lam, dW, db, dX)
    _finite("linear_backward", dW, db, dX)
    return dW, db, dX


def _bn_params(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    m = S.shape[1]
    gamma = check.vector("gamma", gamma, size=m)
    beta = check.vector("beta", beta, size=m)
    eps = check.real("eps", eps, low=0.0, low_open=True)
    return gamma, beta, eps


def _train_args(S, gamma, beta, eps):
    """The checked inputs of a training-mode batch norm, and its cache (Shat, batch
    statistics) to fill."""
    S = check.matrix("S", S, min_rows=2)
    gamma, beta, eps = _bn_params(S, gamma, beta, eps)
    dt = _same_dtype(S=S, gamma=gamma, beta=beta)
    m = S.shape[1]
    cache = {"Shat": np.empty_like(S), "mean": np.empty(m, dt), "var": np.empty(m, dt),
             "inv_std": np.empty(m, dt)}
    return S, gamma, beta, eps, cache


def _eval_args(S, gamma, beta, running_mean, running_var, eps):
    """The checked inputs of an evaluation-mode batch norm, and its scale and shift buffers."""
    S = check.matrix("S", S)
    gamma, beta, eps = _bn_params(S, gamma, beta, eps)
    running_mean = check.vector("running_mean", running_mean, size=S.shape[1])
    running_var = check.vector("running_var", running_var, size=S.shape[1])
    if (running_var < 0).any():
        raise ValueError("running_var must be non-negative")
    dt = _same_dtype(S=S, gamma=gamma, beta=beta, running_mean=running_mean,
                     running_var=running_var)
    scale, shift = np.empty(S.shape[1], dt), np.empty(S.shape[1], dt)
    return S, gamma, beta, running_mean, running_var, eps, scale, shift


def _bn_forward_train(name: str, S, gamma, beta, eps, relu: bool):
    S, gamma, beta, eps, cache = _train_args(S, gamma, beta, eps)
    H = np.empty_like(S)
    _ops.bn_forward_train(S, gamma, beta, eps, cache["mean"], cache["var"], cache["inv_std"],
                          cache["Shat"], H, relu)
    _finite(name, H, *cache.values())
    return H, cache


def _bn_forward_eval(name: str, S, gamma, beta, running_mean, running_var, eps, relu: bool):
    S, gamma, beta, running_mean, running_var, eps, scale, shift = _eval_args(
        S, gamma, beta, running_mean, running_var, eps)
    H = np.empty_like(S)
    _ops.bn_forward_eval(S, gamma, beta, running_mean, running_var, eps, scale, shift, H, relu)
    _finite(name, H, scale, shift)  # an infinite shift can give a finite (or 0) H
    return H


def _bn_backward(name: str, dZ, H, Shat, gamma, inv_std, relu: bool):
    dZ = check.matrix("dH" if relu else "dZ", dZ, min_rows=2)
    shape = dZ.shape
    arrays = dict(Shat=check.matrix("Shat", Shat, cols=shape[1]))
    if relu:
        arrays["H"] = check.matrix("H", H, cols=shape[1])
    if any(a.shape != shape for a in arrays.values()):
        raise ValueError(f"{'dH, H' if relu else 'dZ'} and Shat must share a shape, got "
                         f"{shape}, " + ", ".join(str(a.shape) for a in arrays.values()))
    gamma = check.vector("gamma", gamma, size=shape[1])
    inv_std = check.vector("inv_std", inv_std, size=shape[1])
    dt = _same_dtype(dZ=dZ, **arrays, gamma=gamma, inv_std=inv_std)
    dS = np.empty_like(dZ)
    dgamma, dbeta = np.empty(shape[1], dt), np.empty(shape[1], dt)
    _ops.bn_backward(dZ, arrays.get("H", dZ), arrays["Shat"], gamma, inv_std, dgamma, dbeta,
                     dS, relu)
    _finite(name, dS, dgamma, dbeta)
    return dS, dgamma, dbeta


def bn_relu_forward_train(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                          eps: float = 1e-5) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Batch norm with the batch's statistics, then ReLU: H = max(0, gamma Shat + beta) with
    Shat = (S - mean) / sqrt(var + eps) and var biased. Returns H and a cache with
    ``Shat``, ``mean``, ``var``, ``inv_std`` for the backward pass. Needs n >= 2."""
    return _bn_forward_train("bn_relu_forward_train", S, gamma, beta, eps, True)


def bn_relu_forward_eval(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                         running_mean: np.ndarray, running_var: np.ndarray,
                         eps: float = 1e-5) -> np.ndarray:
    """Batch norm with running statistics, then ReLU (evaluation mode); any n >= 1."""
    return _bn_forward_eval("bn_relu_forward_eval", S, gamma, beta, running_mean, running_var,
                            eps, True)


def bn_relu_backward(dH: np.ndarray, H: np.ndarray, Shat: np.ndarray, gamma: np.ndarray,
                     inv_std: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of ``bn_relu_forward_train``: returns dS, dgamma, dbeta."""
    return _bn_backward("bn_relu_backward", dH, H, Shat, gamma, inv_std, True)


def bn_forward_train(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                     eps: float = 1e-5) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Batch norm with the batch's statistics (no ReLU): Z = gamma Shat + beta with
    Shat = (S - mean) / sqrt(var + eps) and var biased. Returns Z and a cache with ``Shat``,
    ``mean``, ``var``, ``inv_std`` for the backward pass. Needs n >= 2."""
    return _bn_forward_train("bn_forward_train", S, gamma, beta, eps, False)


def bn_forward_eval(S: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                    running_mean: np.ndarray, running_var: np.ndarray,
                    eps: float = 1e-5) -> np.ndarray:
    """Batch norm with running statistics (evaluation mode, no ReLU); any n >= 1."""
    return _bn_forward_eval("bn_forward_eval", S, gamma, beta, running_mean, running_var, eps,
                            False)


def bn_backward(dZ: np.ndarray, Shat: np.ndarray, gamma: np.ndarray,
                inv_std: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of ``bn_forward_train``: returns dS, dgamma, dbeta."""
    return _bn_backward("bn_backward", dZ, None, Shat, gamma, inv_std, False)


def dropout(A: np.ndarray, p: float, *, seed: int = 0, step: int = 0,
            layer: int = 0) -> np.ndarray:
    """Inverted dropout: A times the mask of (seed, step, layer), whose entries are
    1 / (1 - p) (kept, probability 1 - p) or 0. The mask depends only on those keys and the
    element's row-major index, so the same call is also the backward pass (A = dB)."""
    A = check.matrix("A", A)
    p = check.real("p", p, low=0.0, high=1.0, high_open=True)
    keys = [check.integer(name, v, low=0, high=2**64 - 1)
            for name, v in (("seed", seed), ("step", step), ("layer", layer))]
    B = np.empty_like(A)
    _ops.dropout(A, B, p, *keys)
    return B


def running_stats_update(mean: np.ndarray, var: np.ndarray, running_mean: np.ndarray,
                         running_var: np.ndarray, *, alpha: float = 0.9, batch_size: int = 0,
                         unbiased: bool = False, first: bool = False) -> None:
    """In place: running = alpha running + (1 - alpha) batch (copy on the ``first`` batch).
    With ``unbiased`` the variance is scaled by n / (n - 1) for a batch of ``batch_size``."""
    m = check.vector("mean", mean).shape[0]
    var = check.vector("var", var, size=m)
    running_mean = check.vector("running_mean", running_mean, size=m, writeable=True)
    running_var = check.vector("running_var", running_var, size=m, writeable=True)
    _same_dtype(mean=mean, var=var, running_mean=running_mean, running_var=running_var)
    alpha = check.real("alpha", alpha, low=0.0, high=1.0)
    factor = 1.0
    if unbiased:
        n = check.integer("batch_size", batch_size, low=2)
        factor = n / (n - 1)
    _ops.running_stats_update(mean, var, running_mean, running_var, alpha, factor, bool(first))
    _finite("running_stats_update (the running statistics, already updated)", running_mean,
            running_var)


def relu_forward(S: np.ndarray) -> np.ndarray:
    """H = max(0, S)."""
    S = check.matrix("S", S)
    H = np.empty_like(S)
    _ops.relu_forward(S, H)
    return H


def relu_backward(dH: np.ndarray, H: np.ndarray) -> np.ndarray:
    """dS = dH where H > 0, else 0."""
    dH = check.matrix("dH", dH)
    H = _shaped_like("H", H, "dH", dH)
    _same_dtype(dH=dH, H=H)
    dS = np.empty_like(dH)
    _ops.relu_backward(dH, H, dS)
    return dS


def softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably (shifted by each row's max)."""
    Z = check.matrix("Z", Z)
    P = np.empty_like(Z)
    _ops.softmax_cross_entropy(Z, None, None, P)
    return P


def softmax_cross_entropy(Z: np.ndarray, y: np.ndarray, *, label_smoothing: float = 0.0,
                          sample_weight: Optional[np.ndarray] = None, mix=None
                          ) -> Tuple[float, np.ndarray, int]:
    """Mean cross-entropy of logits Z (n, K) against labels y, its gradient w.r.t. Z
    ((P - q) / n, q = (1 - label_smoothing) onehot(y) + label_smoothing / K), and the number
    of rows whose argmax equals the label. With ``sample_weight`` w the mean is
    sum w_i l_i / sum w_i and row i's gradient is scaled by w_i / sum w instead of 1 / n.
    ``mix`` (mixup's targets, ``cbn.Mixup``): row i's share of its own label, a number or
    one per row, each in [0, 1]; row i's target is then mix_i q(y_i) + (1 - mix_i)
    q(y_{n-1-i})."""
    Z = check.matrix("Z", Z)
    t = losses.targets(y, Z.shape[0], Z.shape[1], Z.dtype, label_smoothing=label_smoothing,
                       sample_weight=sample_weight)
    if mix is not None:
        mix = losses.mix_shares(mix, Z.shape[0])
    G = np.empty_like(Z)
    loss, correct = _ops.softmax_cross_entropy(Z, t.labels, G, None, t.label_smoothing,
                                               t.weights, mix)
    _finite("softmax_cross_entropy", np.array(loss), G)
    return loss / Z.shape[0], G, int(correct)


def squared_error(Z: np.ndarray, Y: np.ndarray, *,
                  sample_weight: Optional[np.ndarray] = None) -> Tuple[float, np.ndarray]:
    """The mean over all n K values of (Z - Y)^2 (``torch.nn.MSELoss()``) and its gradient
    w.r.t. Z, 2 (Z - Y) / (n K); with ``sample_weight`` w the mean over rows is weighted,
    sum w_i l_i / sum w_i, and row i's gradient is scaled by w_i / sum w instead of 1 / n."""
    Z = check.matrix("Z", Z)
    t = losses.targets(Y, Z.shape[0], Z.shape[1], Z.dtype, loss="mse",
                       sample_weight=sample_weight, name="Y")
    G = np.empty_like(Z)
    loss, _ = _ops.squared_error(Z, t.values, G, t.weights)
    _finite("squared_error", np.array(loss), G)
    return loss / Z.shape[0], G


def layer_norm_forward(A: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                       eps: float = 1e-5) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Layer norm: each row normalised over its features, Shat = (A - mean) / sqrt(var + eps)
    (biased var, per row), then Z = gamma Shat + beta. Returns Z and a cache with ``Shat``
    and ``inv_std`` (n,) for the backward pass."""
    A = check.matrix("A", A)
    gamma, beta, eps = _bn_params(A, gamma, beta, eps)
    dt = _same_dtype(A=A, gamma=gamma, beta=beta)
    cache = {"Shat": np.empty_like(A), "inv_std": np.empty(A.shape[0], dt)}
    Z = np.empty_like(A)
    _ops.ln_forward(A, gamma, beta, eps, cache["inv_std"], cache["Shat"], Z)
    _finite("layer_norm_forward", Z, *cache.values())
    return Z, cache


def layer_norm_backward(dZ: np.ndarray, Shat: np.ndarray, gamma: np.ndarray,
                        inv_std: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of ``layer_norm_forward``: returns dA, dgamma, dbeta."""
    dZ = check.matrix("dZ", dZ)
    Shat = _shaped_like("Shat", Shat, "dZ", dZ)
    gamma = check.vector("gamma", gamma, size=dZ.shape[1])
    inv_std = check.vector("inv_std", inv_std, size=dZ.shape[0])
    dt = _same_dtype(dZ=dZ, Shat=Shat, gamma=gamma, inv_std=inv_std)
    dA = np.empty_like(dZ)
    dgamma, dbeta = np.empty(dZ.shape[1], dt), np.empty(dZ.shape[1], dt)
    _ops.ln_backward(dZ, Shat, gamma, inv_std, dgamma, dbeta, dA)
    _finite("layer_norm_backward", dA, dgamma, dbeta)
    return dA, dgamma, dbeta


def gelu_forward(A: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """GELU, exact: H = A Phi(A) (``torch.nn.GELU()``). Returns H and its derivative
    Phi(A) + A phi(A), which ``gelu_backward`` multiplies the incoming gradient by."""
    A = check.matrix("A", A)
    H, slope = np.empty_like(A), np.empty_like(A)
    _ops.gelu_forward(A, H, slope)
    _finite("gelu_forward", H, slope)
    return H, slope


def gelu_backward(dH: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """dA = dH times the derivative ``gelu_forward`` returned."""
    dH = check.matrix("dH", dH)
    slope = _shaped_like("slope", slope, "dH", dH)
    _same_dtype(dH=dH, slope=slope)
    return dH * slope


def sgd_update(theta: np.ndarray, grad: np.ndarray, lr: float, *, lam: float = 0.0,
               momentum: float = 0.0, velocity: Optional[np.ndarray] = None,
               weight_decay: Optional[float] = None) -> bool:
    """In place: theta -= lr (grad + 2 lam theta), or with ``velocity``:
    velocity = momentum velocity - lr (grad + 2 lam theta); theta += velocity (the gradient
    of the L2 term lam sum theta^2, as everywhere in cbn). ``weight_decay`` (deprecated, for
    one release) is the old spelling of 2 lam. Returns True when every updated value is
    finite."""
    theta = check.vector("theta", theta, writeable=True)
    grad = check.vector("grad", grad, size=theta.shape[0])
    lr = check.real("lr", lr, low=0.0)
    if weight_decay is not None:
        warnings.warn("sgd_update(weight_decay=w) is deprecated and goes in the next release; "
                      "pass lam=w / 2 (the L2 strength, as fit's lam)", DeprecationWarning,
                      stacklevel=2)
        if lam:
            raise ValueError("give lam or weight_decay, not both")
        lam = check.real("weight_decay", weight_decay, low=0.0) / 2
    lam = check.real("lam", lam, low=0.0)
    momentum = check.real("momentum", momentum, low=0.0, high=1.0)
    if velocity is not None:
        velocity = check.vector("velocity", velocity, size=theta.shape[0], writeable=True)
        _same_dtype(theta=theta, grad=grad, velocity=velocity)
    else:
        if momentum:
            raise ValueError("momentum > 0 needs a velocity array")
        _same_dtype(theta=theta, grad=grad)
    return not _ops.sgd_update(theta, grad, lr, lam, momentum, velocity)


def gather_rows(src: np.ndarray, idx: np.ndarray, shift: np.ndarray, scale: np.ndarray,
                dtype=np.float32, augment=None, seed: int = 0, step: int = 0,
                mixup=None) -> np.ndarray:
    """out[i] = (src[idx[i]] - shift) * scale in ``dtype``: mini-batch rows taken straight
    from stored images (uint8, float32 or float64) and standardised on the way, x - shift
    kept to ``dtype``'s precision however large the shift (taken in float64); with
    ``augment`` (a ``cbn.Augment``) row i is then transformed with the draws of
    (seed, step, i), and with ``mixup`` (a ``cbn.Mixup``) the rows are then mixed with
    the batch reversed with the share ``mixup.share(seed, step)``: the batch of a training
    step of ``fit`` whose key is ``seed``."""
    dt = check.float_dtype(dtype)
    src = check.matrix("src", src, dtypes=check.SOURCE_DTYPES)
    if (not isinstance(idx, np.ndarray) or isinstance(idx, np.ma.MaskedArray)
            or idx.dtype.kind not in "iu" or idx.ndim != 1):
        raise TypeError("idx must be a 1-D numpy array (not masked) of integer row indices")
    if idx.size == 0:
        raise ValueError("idx must not be empty")
    if idx.min() < 0 or idx.max() >= src.shape[0]:
        raise ValueError(f"idx must be in [0, {src.shape[0]}), got [{idx.min()}, {idx.max()}]")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    d = src.shape[1]
    shift = np.ascontiguousarray(check.vector("shift", shift, size=d), dtype=np.float64)
    scale = np.ascontiguousarray(check.vector("scale", scale, size=d), dtype=dt)
    compiled = None
    if augment is not None:
        if not isinstance(augment, Augment):
            raise TypeError(f"augment must be a cbn.Augment or None, got {augment!r}")
        compiled = augment.compiled(d, check.integer("seed", seed, low=0, high=2**64 - 1))
        step = check.integer("step", step, low=0, high=2**64 - 1)
    mix = None
    if mixup is not None:
        if not isinstance(mixup, Mixup):
            raise TypeError(f"mixup must be a cbn.Mixup or None, got {mixup!r}")
        mix = np.full(idx.size, mixup.share(seed, step))
    out = np.empty((idx.size, d), dt)
    _ops.gather_rows(src, idx, shift, scale, out, compiled,
                     step=step if compiled is not None else 0, mix=mix)
    _finite("gather_rows", out)
    return out

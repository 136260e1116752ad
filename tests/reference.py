"""Plain NumPy reference of everything cbn computes: the kernels, the network's cost and
gradients, and one SGD step. Written independently of cbn, for tests and benchmarks.

Shapes: X (n, d) rows of samples, W (d_in, d_out), vectors (d_out,).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np


def linear_forward(X, W, b):
    return X @ W + b


def linear_backward(X, W, dS, lam=0.0):
    """Returns dW (with the L2 term 2 lam W), db, dX."""
    return X.T @ dS + 2 * lam * W, dS.sum(axis=0), dS @ W.T


def bn_relu_forward_train(S, gamma, beta, eps=1e-5):
    mean = S.mean(axis=0)
    var = S.var(axis=0)  # biased, as batch norm normalises with
    inv_std = 1 / np.sqrt(var + eps)
    Shat = (S - mean) * inv_std
    H = np.maximum(0, gamma * Shat + beta)
    return H, dict(mean=mean, var=var, inv_std=inv_std, Shat=Shat)


def bn_relu_forward_eval(S, gamma, beta, running_mean, running_var, eps=1e-5):
    return np.maximum(0, gamma * (S - running_mean) / np.sqrt(running_var + eps) + beta)


def bn_relu_backward(dH, H, Shat, gamma, inv_std):
    """Returns dS, dgamma, dbeta (the course's batch-norm back pass, after the ReLU mask)."""
    n = dH.shape[0]
    dZ = dH * (H > 0)
    dgamma = (dZ * Shat).sum(axis=0)
    dbeta = dZ.sum(axis=0)
    dShat = dZ * gamma
    dS = inv_std / n * (n * dShat - dShat.sum(axis=0) - Shat * (dShat * Shat).sum(axis=0))
    return dS, dgamma, dbeta


def bn_forward_train(S, gamma, beta, eps=1e-5):
    """Batch norm alone: returns Z = gamma Shat + beta and the cache."""
    mean = S.mean(axis=0)
    var = S.var(axis=0)
    inv_std = 1 / np.sqrt(var + eps)
    Shat = (S - mean) * inv_std
    return gamma * Shat + beta, dict(mean=mean, var=var, inv_std=inv_std, Shat=Shat)


def bn_forward_eval(S, gamma, beta, running_mean, running_var, eps=1e-5):
    return gamma * (S - running_mean) / np.sqrt(running_var + eps) + beta


def bn_backward(dZ, Shat, gamma, inv_std):
    """Returns dS, dgamma, dbeta of batch norm alone."""
    return bn_relu_backward(dZ, np.ones_like(dZ), Shat, gamma, inv_std)


def _splitmix64(x: int) -> int:
    mask = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def _lowbias32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def dropout_mask(shape, p, seed, step, layer):
    """The inverted-dropout multiplier of every element (1/(1-p) kept, 0 dropped): element k
    (row-major) is kept if lowbias32(lowbias32(k ^ lo) ^ hi) >= p 2^32, (hi, lo) the halves of
    the key splitmix64(splitmix64(splitmix64(seed) ^ step) ^ layer)."""
    key = _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ layer)
    lo, hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    k = np.arange(int(np.prod(shape)), dtype=np.uint32)
    h = _lowbias32(_lowbias32(k ^ lo) ^ hi)
    keep = h >= min(round(p * 2**32), 2**32 - 1)
    return (keep / (1 - p)).reshape(shape)


def softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def softmax_cross_entropy(Z, y):
    """Returns the mean loss and its gradient w.r.t. Z."""
    n = Z.shape[0]
    P = softmax(Z)
    loss = -np.log(P[np.arange(n), y]).mean()
    G = P.copy()
    G[np.arange(n), y] -= 1
    return loss, G / n


def soft_cross_entropy(Z, y, label_smoothing=0.0, w=None):
    """Cross-entropy against (1 - eps) onehot(y) + eps / K, its mean weighted by w (sum w l /
    sum w) when given; returns the mean loss and its gradient w.r.t. Z."""
    n, K = Z.shape
    Q = np.full((n, K), label_smoothing / K)
    Q[np.arange(n), y] += 1 - label_smoothing
    logP = np.log(softmax(Z))
    c = np.full(n, 1 / n) if w is None else np.asarray(w, float) / np.sum(w)
    return float((c * -(Q * logP).sum(axis=1)).sum()), (softmax(Z) - Q) * c[:, None]


def target_cross_entropy(Z, Q):
    """Mean cross-entropy against the target distributions Q (n, K) (timm's
    SoftTargetCrossEntropy); returns the mean loss and its gradient w.r.t. Z."""
    n = Z.shape[0]
    return float(-(Q * np.log(softmax(Z))).sum() / n), (softmax(Z) - Q) / n


def squared_error(Z, Y, w=None):
    """The mean over all values of (Z - Y)^2 (rows weighted by w when given) and its
    gradient w.r.t. Z."""
    n, K = Z.shape
    c = np.full(n, 1 / n) if w is None else np.asarray(w, float) / np.sum(w)
    return float((c * ((Z - Y) ** 2).mean(axis=1)).sum()), 2 * (Z - Y) * c[:, None] / K


def layer_norm_forward(A, gamma, beta, eps=1e-5):
    """Returns Z and a cache (Shat, inv_std per row)."""
    mean = A.mean(axis=1, keepdims=True)
    inv_std = 1 / np.sqrt(A.var(axis=1, keepdims=True) + eps)
    Shat = (A - mean) * inv_std
    return gamma * Shat + beta, {"Shat": Shat, "inv_std": inv_std[:, 0]}


def layer_norm_backward(dZ, Shat, gamma, inv_std):
    """Returns dA, dgamma, dbeta."""
    D = dZ * gamma
    dA = inv_std[:, None] * (D - D.mean(axis=1, keepdims=True)
                             - Shat * (D * Shat).mean(axis=1, keepdims=True))
    return dA, (dZ * Shat).sum(axis=0), dZ.sum(axis=0)


def gelu(A):
    """Returns GELU(A) = A Phi(A) and its derivative Phi(A) + A phi(A)."""
    from math import erf
    cdf = 0.5 * (1 + np.vectorize(erf)(A / np.sqrt(2)))
    return A * cdf, cdf + A * np.exp(-A * A / 2) / np.sqrt(2 * np.pi)


class ReferenceNet:
    """The network cbn.Network describes, in NumPy: params keyed W1, b1, gamma1, beta1, ...
    ``placement`` "before" (Linear, BN, ReLU) or "after" (Linear, ReLU, BN); ``dropout`` one
    probability per hidden layer, applied in training with the masks of ``dropout_key``
    (seed, step) when that is set."""

    def __init__(self, params: Dict[str, np.ndarray], batch_norm: bool, eps: float = 1e-5,
                 alpha: float = 0.9, running: Optional[Dict[str, np.ndarray]] = None,
                 placement: str = "before", dropout=None, dropout_key=None):
        self.params = {k: v.copy() for k, v in params.items()}
        self.batch_norm = batch_norm
        self.eps = eps
        self.alpha = alpha
        self.k = sum(1 for name in params if name.startswith("W"))
        self.running = {k: v.copy() for k, v in (running or {}).items()}
        self.placement = placement
        self.dropout = list(dropout or [0.0] * (self.k - 1))
        self.dropout_key = dropout_key

    def forward(self, X, training: bool):
        """Logits, one (input, cache) per hidden block, and the last hidden output. The cache
        holds the block's pre-activation gradient recipe: relu (the ReLU output), bn (batch
        statistics) and mask (dropout multiplier)."""
        p, caches, A = self.params, [], X
        for l in range(1, self.k):
            S = linear_forward(A, p[f"W{l}"], p[f"b{l}"])
            cache = {}
            H = S
            if self.placement == "after":
                H = cache["relu"] = np.maximum(0, H)
            if self.batch_norm and training:
                H, cache["bn"] = bn_forward_train(H, p[f"gamma{l}"], p[f"beta{l}"], self.eps)
            elif self.batch_norm:
                H = bn_forward_eval(H, p[f"gamma{l}"], p[f"beta{l}"],
                                    self.running[f"running_mean{l}"],
                                    self.running[f"running_var{l}"], self.eps)
            if self.placement == "before":
                H = cache["relu"] = np.maximum(0, H)
            if training and self.dropout[l - 1] > 0 and self.dropout_key is not None:
                seed, step = self.dropout_key
                cache["mask"] = dropout_mask(H.shape, self.dropout[l - 1], seed, step, l - 1)
                H = H * cache["mask"]
            caches.append((A, H, cache))
            A = H
        Z = linear_forward(A, p[f"W{self.k}"], p[f"b{self.k}"])
        return Z, caches, A

    def cost_and_grads(self, X, y, lam) -> Tuple[float, Dict[str, np.ndarray], List]:
        p = self.params
        Z, caches, A = self.forward(X, training=True)
        # y: labels, or target distributions (n, K)
        loss, G = softmax_cross_entropy(Z, y) if np.ndim(y) == 1 else target_cross_entropy(Z, y)
        cost = loss + lam * sum((p[f"W{l}"] ** 2).sum() for l in range(1, self.k + 1))
        grads = {}
        grads[f"W{self.k}"], grads[f"b{self.k}"], dA = linear_backward(A, p[f"W{self.k}"], G, lam)
        for l in range(self.k - 1, 0, -1):
            A_in, H, cache = caches[l - 1]
            d = dA * cache["mask"] if "mask" in cache else dA
            if self.placement == "before":
                d = d * (cache["relu"] > 0)
            if self.batch_norm:
                bn = cache["bn"]
                d, grads[f"gamma{l}"], grads[f"beta{l}"] = bn_backward(
                    d, bn["Shat"], p[f"gamma{l}"], bn["inv_std"])
            if self.placement == "after":
                d = d * (cache["relu"] > 0)
            grads[f"W{l}"], grads[f"b{l}"], dA = linear_backward(A_in, p[f"W{l}"], d, lam)
        return cost, grads, caches

    def update_running(self, caches, first: bool):
        for l, (_, _, cache) in enumerate(caches, start=1):
            for stat, key in (("mean", f"running_mean{l}"), ("var", f"running_var{l}")):
                if first:
                    self.running[key] = cache["bn"][stat].copy()
                else:
                    self.running[key] = (self.alpha * self.running[key]
                                         + (1 - self.alpha) * cache["bn"][stat])

    def sgd_step(self, X, y, lam, lr, first=False) -> float:
        """One plain SGD step (training-mode BN, running statistics updated). Returns the loss."""
        cost, grads, caches = self.cost_and_grads(X, y, lam)
        if self.batch_norm:
            self.update_running(caches, first)
        for name, g in grads.items():
            self.params[name] -= lr * g
        return cost

    def predict_proba(self, X):
        return softmax(self.forward(X, training=False)[0])

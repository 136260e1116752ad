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


class ReferenceNet:
    """The network cbn.Network describes, in NumPy: params keyed W1, b1, gamma1, beta1, ..."""

    def __init__(self, params: Dict[str, np.ndarray], batch_norm: bool, eps: float = 1e-5,
                 alpha: float = 0.9, running: Optional[Dict[str, np.ndarray]] = None):
        self.params = {k: v.copy() for k, v in params.items()}
        self.batch_norm = batch_norm
        self.eps = eps
        self.alpha = alpha
        self.k = sum(1 for name in params if name.startswith("W"))
        self.running = {k: v.copy() for k, v in (running or {}).items()}

    def forward(self, X, training: bool):
        p, caches, A = self.params, [], X
        for l in range(1, self.k):
            S = linear_forward(A, p[f"W{l}"], p[f"b{l}"])
            if self.batch_norm and training:
                H, cache = bn_relu_forward_train(S, p[f"gamma{l}"], p[f"beta{l}"], self.eps)
            elif self.batch_norm:
                H = bn_relu_forward_eval(S, p[f"gamma{l}"], p[f"beta{l}"],
                                         self.running[f"running_mean{l}"],
                                         self.running[f"running_var{l}"], self.eps)
                cache = {}
            else:
                H, cache = np.maximum(0, S), {}
            caches.append((A, H, cache))
            A = H
        Z = linear_forward(A, p[f"W{self.k}"], p[f"b{self.k}"])
        return Z, caches, A

    def cost_and_grads(self, X, y, lam) -> Tuple[float, Dict[str, np.ndarray], List]:
        p = self.params
        Z, caches, A = self.forward(X, training=True)
        loss, G = softmax_cross_entropy(Z, y)
        cost = loss + lam * sum((p[f"W{l}"] ** 2).sum() for l in range(1, self.k + 1))
        grads = {}
        grads[f"W{self.k}"], grads[f"b{self.k}"], dA = linear_backward(A, p[f"W{self.k}"], G, lam)
        for l in range(self.k - 1, 0, -1):
            A_in, H, cache = caches[l - 1]
            if self.batch_norm:
                dS, grads[f"gamma{l}"], grads[f"beta{l}"] = bn_relu_backward(
                    dA, H, cache["Shat"], p[f"gamma{l}"], cache["inv_std"])
            else:
                dS = dA * (H > 0)
            grads[f"W{l}"], grads[f"b{l}"], dA = linear_backward(A_in, p[f"W{l}"], dS, lam)
        return cost, grads, caches

    def update_running(self, caches, first: bool):
        for l, (_, _, cache) in enumerate(caches, start=1):
            for stat, key in (("mean", f"running_mean{l}"), ("var", f"running_var{l}")):
                if first:
                    self.running[key] = cache[stat].copy()
                else:
                    self.running[key] = self.alpha * self.running[key] + (1 - self.alpha) * cache[stat]

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

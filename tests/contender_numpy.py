"""The benchmarks' NumPy contender: cbn's training step and evaluation in plain NumPy, with the
math of tests/reference.py and every buffer allocated once (``out=`` wherever NumPy allows),
so it is a fair, good NumPy implementation.

The network is ``input -> [Linear -> BN -> ReLU] x (k-1) -> Linear -> softmax``
(``Linear -> ReLU`` without BN); cost = mean cross-entropy + lam * sum W^2; plain SGD.
Batch norm as in cbn and the course: biased batch variance, running statistics with EMA
factor ``alpha``, the first batch's statistics copied when ``first``.
Shapes: images (N, d) uint8 (or standardised floats), labels (N,) int64, W (d_in, d_out),
per-feature vectors (m,).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np


class NumpyNet:
    """A copy of a network's parameters (keyed ``W1, b1, gamma1, beta1, ...`` as
    ``cbn.Network.params``) with work buffers for up to ``batch`` rows."""

    def __init__(self, params: Dict[str, np.ndarray], batch_norm: bool, batch: int,
                 eps: float = 1e-5, alpha: float = 0.9) -> None:
        self.k = sum(1 for name in params if name.startswith("W"))
        self.p = {name: np.array(v) for name, v in params.items()}
        dt = self.p["W1"].dtype
        self.batch_norm, self.eps, self.alpha = batch_norm, eps, alpha
        dims = [self.p["W1"].shape[0]] + [self.p[f"W{l}"].shape[1] for l in range(1, self.k + 1)]
        hid = dims[1:-1]
        self.running: Dict[str, np.ndarray] = {}
        if batch_norm:
            for l, m in enumerate(hid, start=1):
                self.running[f"mean{l}"] = np.zeros(m, dt)
                self.running[f"var{l}"] = np.ones(m, dt)
        n = batch
        self.Xu8 = np.empty((n, dims[0]), np.uint8)
        self.X = np.empty((n, dims[0]), dt)
        self.S = [np.empty((n, m), dt) for m in dims[1:]]   # pre-activation, later its gradient
        self.Shat = [np.empty((n, m), dt) for m in hid]
        self.H = [np.empty((n, m), dt) for m in hid]
        self.dH = [np.empty((n, m), dt) for m in hid]
        self.T = [np.empty((n, m), dt) for m in hid]        # scratch
        self.mask = [np.empty((n, m), bool) for m in hid]
        self.dW = [np.empty((a, b), dt) for a, b in zip(dims[:-1], dims[1:])]
        self.db = [np.empty(m, dt) for m in dims[1:]]
        self.mean = [np.empty(m, dt) for m in hid]
        self.var = [np.empty(m, dt) for m in hid]
        self.inv_std = [np.empty(m, dt) for m in hid]
        self.dgamma = [np.empty(m, dt) for m in hid]
        self.dbeta = [np.empty(m, dt) for m in hid]
        self.row = np.empty(n, dt)
        self.picked = np.empty(n, dt)
        self.rows = np.arange(n)
        self.labels = np.empty(n, np.int64)

    def gather(self, images: np.ndarray, idx: np.ndarray, shift: Optional[np.ndarray],
               scale: Optional[np.ndarray]) -> np.ndarray:
        """(images[idx] - shift) * scale into the batch buffer; the (n, d) view. Without
        ``shift`` and ``scale`` the rows are taken as they are (float input, standardised)."""
        n = idx.shape[0]
        X = self.X[:n]
        if shift is None:
            np.take(images, idx, axis=0, out=X)
            return X
        np.take(images, idx, axis=0, out=self.Xu8[:n])
        np.subtract(self.Xu8[:n], shift, out=X)
        X *= scale
        return X

    def forward(self, X: np.ndarray, training: bool, first: bool = False) -> np.ndarray:
        """Logits (n, K), a view of a work buffer. Training mode normalises with the batch's
        statistics and updates the running ones."""
        n, p, A = X.shape[0], self.p, X
        for l in range(1, self.k + 1):
            S = self.S[l - 1][:n]
            np.matmul(A, p[f"W{l}"], out=S)
            S += p[f"b{l}"]
            if l == self.k:
                return S
            i, H = l - 1, self.H[l - 1][:n]
            if self.batch_norm and training:
                self._bn_train(l, S, H, first)
            elif self.batch_norm:  # fold the running statistics into one affine map
                scale, shift = self.inv_std[i], self.mean[i]
                np.add(self.running[f"var{l}"], self.eps, out=scale)
                np.sqrt(scale, out=scale)
                np.divide(p[f"gamma{l}"], scale, out=scale)
                np.multiply(self.running[f"mean{l}"], scale, out=shift)
                np.subtract(p[f"beta{l}"], shift, out=shift)
                np.multiply(S, scale, out=H)
                H += shift
            else:
                np.copyto(H, S)
            np.maximum(H, 0, out=H)
            A = H
        raise AssertionError("a network has at least one layer")

    def _bn_train(self, l: int, S: np.ndarray, H: np.ndarray, first: bool) -> None:
        n, i = S.shape[0], l - 1
        mean, var, inv_std = self.mean[i], self.var[i], self.inv_std[i]
        Shat, T = self.Shat[i][:n], self.T[i][:n]
        np.mean(S, axis=0, out=mean)
        np.subtract(S, mean, out=Shat)
        np.multiply(Shat, Shat, out=T)
        np.mean(T, axis=0, out=var)
        np.add(var, self.eps, out=inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.reciprocal(inv_std, out=inv_std)
        Shat *= inv_std
        np.multiply(Shat, self.p[f"gamma{l}"], out=H)
        H += self.p[f"beta{l}"]
        rm, rv = self.running[f"mean{l}"], self.running[f"var{l}"]
        if first:
            np.copyto(rm, mean)
            np.copyto(rv, var)
        else:
            for running, batch in ((rm, mean), (rv, var)):
                running *= self.alpha
                running += (1 - self.alpha) * batch

    def loss(self, Z: np.ndarray, y: np.ndarray, grad: bool) -> Tuple[float, int]:
        """(sum of the rows' cross-entropy losses, number classified correctly); with
        ``grad`` Z is overwritten by the gradient of the mean loss, (softmax(Z) - Y) / n."""
        n = Z.shape[0]
        row, picked, rows = self.row[:n], self.picked[:n], self.rows[:n]
        np.max(Z, axis=1, out=row)
        Z -= row[:, None]
        np.take(Z.ravel(), rows * Z.shape[1] + y, out=picked)
        correct = int(np.count_nonzero(picked == 0))  # the label's logit is the row max
        np.exp(Z, out=Z)
        np.sum(Z, axis=1, out=row)
        total = float(np.log(row, out=row).sum() - picked.sum())
        if grad:
            np.sum(Z, axis=1, out=row)
            Z /= row[:, None]
            Z[rows, y] -= 1
            Z /= n
        return total, correct

    def train_step(self, images: np.ndarray, labels: np.ndarray, idx: np.ndarray,
                   shift: Optional[np.ndarray], scale: Optional[np.ndarray], lr: float,
                   lam: float, first: bool = False) -> float:
        """One SGD step on rows ``idx`` of ``images`` (uint8 with ``shift`` and ``scale``, or
        floats of the network's dtype without); the mean loss before the update."""
        X = self.gather(images, idx, shift, scale)
        n, p = X.shape[0], self.p
        y = self.labels[:n]
        np.take(labels, idx, out=y)
        G = self.forward(X, training=True, first=first)
        loss = self.loss(G, y, grad=True)[0] / n
        decay = 1 - 2 * lr * lam  # the L2 term's gradient 2 lam W, applied to W only
        for l in range(self.k, 0, -1):
            A = X if l == 1 else self.H[l - 2][:n]
            W, dW, db = p[f"W{l}"], self.dW[l - 1], self.db[l - 1]
            np.matmul(A.T, G, out=dW)
            np.sum(G, axis=0, out=db)
            if l > 1:
                dH = self.dH[l - 2][:n]
                np.matmul(G, W.T, out=dH)  # before W changes
                G = self.S[l - 2][:n]
                self._relu_bn_backward(l - 1, dH, G, lr)
            W *= decay
            dW *= lr
            W -= dW
            db *= lr
            p[f"b{l}"] -= db
        return loss

    def _relu_bn_backward(self, l: int, dH: np.ndarray, dS: np.ndarray, lr: float) -> None:
        """dS, the gradient w.r.t. layer l's pre-activation, from dH (w.r.t. its output);
        updates gamma_l and beta_l with their gradients."""
        n, i = dH.shape[0], l - 1
        mask = self.mask[i][:n]
        np.greater(self.H[i][:n], 0, out=mask)
        dH *= mask
        if not self.batch_norm:
            np.copyto(dS, dH)
            return
        Shat, T = self.Shat[i][:n], self.T[i][:n]
        dgamma, dbeta, factor = self.dgamma[i], self.dbeta[i], self.inv_std[i]
        np.multiply(dH, Shat, out=T)
        np.sum(T, axis=0, out=dgamma)
        np.sum(dH, axis=0, out=dbeta)
        # dS = gamma inv_std (dZ - (dbeta + Shat dgamma) / n)
        np.multiply(Shat, dgamma, out=T)
        T += dbeta
        T /= n
        np.subtract(dH, T, out=dS)
        factor *= self.p[f"gamma{l}"]
        dS *= factor
        for name, g in ((f"gamma{l}", dgamma), (f"beta{l}", dbeta)):
            g *= lr
            self.p[name] -= g

    def evaluate(self, images: np.ndarray, labels: np.ndarray, shift: np.ndarray,
                 scale: np.ndarray) -> Tuple[float, int]:
        """Evaluation mode over all rows, in blocks of the buffer size: (sum of losses,
        number correct)."""
        total, correct, N, cap = 0.0, 0, images.shape[0], self.X.shape[0]
        for start in range(0, N, cap):
            stop = min(start + cap, N)
            X = self.X[:stop - start]
            np.subtract(images[start:stop], shift, out=X)
            X *= scale
            t, c = self.loss(self.forward(X, training=False), labels[start:stop], grad=False)
            total += t
            correct += c
        return total, correct

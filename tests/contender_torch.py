"""The benchmarks' PyTorch contenders: the same network and SGD step in PyTorch, written as a
PyTorch user would (``nn.Linear``, ``nn.BatchNorm1d``, ``F.cross_entropy``, autograd,
``torch.optim.SGD`` with weight decay on the weights only), with the mini-batch gathered from
uint8 images into preallocated buffers. Eager by default; ``compiled=True`` runs the forward
pass and loss through ``torch.compile`` (its backward graph is compiled with it; the
optimizer's step stays eager, a few fused foreach updates); ``bf16=True`` runs the forward pass
under ``torch.autocast("cpu", dtype=torch.bfloat16)``, PyTorch's mixed precision (bf16
products, fp32 master weights and loss). Needs torch (optional; the benchmarks leave these
contenders out when it is missing)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class TorchNet:
    """The network of ``params`` (keyed as ``cbn.Network.params``) in PyTorch, with batch
    buffers for up to ``batch`` rows. BN momentum 1 - alpha equals cbn's EMA factor alpha."""

    def __init__(self, params: Dict[str, np.ndarray], batch_norm: bool, batch: int,
                 eps: float = 1e-5, alpha: float = 0.9, compiled: bool = False,
                 bf16: bool = False) -> None:
        self.k = sum(1 for name in params if name.startswith("W"))
        dt = torch.float64 if params["W1"].dtype == np.float64 else torch.float32
        layers, weights, others = [], [], []
        for l in range(1, self.k + 1):
            W = torch.from_numpy(np.array(params[f"W{l}"]))
            linear = nn.Linear(W.shape[0], W.shape[1], dtype=dt)
            with torch.no_grad():
                linear.weight.copy_(W.T)
                linear.bias.copy_(torch.from_numpy(np.array(params[f"b{l}"])))
            layers.append(linear)
            weights.append(linear.weight)
            others.append(linear.bias)
            if l < self.k:
                if batch_norm:
                    bn = nn.BatchNorm1d(W.shape[1], eps=eps, momentum=1 - alpha, dtype=dt)
                    layers.append(bn)
                    others += [bn.weight, bn.bias]
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers)
        self.optimizer = torch.optim.SGD([{"params": weights}, {"params": others}], lr=0.0)
        self.dtype = dt
        d = params["W1"].shape[0]
        self.Xu8 = torch.empty((batch, d), dtype=torch.uint8)
        self.X = torch.empty((batch, d), dtype=dt)
        self.y = torch.empty(batch, dtype=torch.int64)
        self.bf16 = bf16
        self._loss, self._logits = self._eager_loss, self._eager_logits
        if compiled:
            self._loss = torch.compile(self._eager_loss)
            self._logits = torch.compile(self._eager_logits)

    def _eager_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return F.cross_entropy(self.model(X), y)

    def _eager_logits(self, X: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(X).float()

    def load_running(self, stats: Dict[str, np.ndarray]) -> None:
        """BN's running statistics from a network's ``running_stats``
        (``running_mean{l}``, ``running_var{l}``)."""
        norms = [m for m in self.model if isinstance(m, nn.BatchNorm1d)]
        with torch.no_grad():
            for l, bn in enumerate(norms, start=1):
                bn.running_mean.copy_(torch.from_numpy(np.array(stats[f"running_mean{l}"])))
                bn.running_var.copy_(torch.from_numpy(np.array(stats[f"running_var{l}"])))

    def _batch(self, images: torch.Tensor, idx: torch.Tensor, shift: Optional[torch.Tensor],
               scale: Optional[torch.Tensor]) -> torch.Tensor:
        n = idx.shape[0]
        X = self.X[:n]
        if shift is None:  # float input, standardised already
            torch.index_select(images, 0, idx, out=X)
            return X
        torch.index_select(images, 0, idx, out=self.Xu8[:n])
        X.copy_(self.Xu8[:n]).sub_(shift).mul_(scale)
        return X

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                   shift: Optional[torch.Tensor], scale: Optional[torch.Tensor], lr: float,
                   lam: float) -> float:
        """One SGD step on rows ``idx`` (tensors from ``torch.from_numpy``: uint8 images with
        ``shift`` and ``scale``, or floats of the network's dtype without); the mean loss."""
        X = self._batch(images, idx, shift, scale)
        y = self.y[:idx.shape[0]]
        torch.index_select(labels, 0, idx, out=y)
        self.model.train()
        loss = self._loss(X, y)
        self.optimizer.zero_grad()
        loss.backward()
        weights, others = self.optimizer.param_groups
        weights["lr"], weights["weight_decay"], others["lr"] = lr, 2 * lam, lr
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor,
                 scale: torch.Tensor) -> Tuple[float, int]:
        """Evaluation mode in blocks of the buffer size: (sum of losses, number correct)."""
        self.model.eval()
        total, correct, N, cap = 0.0, 0, images.shape[0], self.X.shape[0]
        for start in range(0, N, cap):
            stop = min(start + cap, N)
            X = self.X[:stop - start]
            X.copy_(images[start:stop]).sub_(shift).mul_(scale)
            Z = self._logits(X)
            y = labels[start:stop]
            total += F.cross_entropy(Z, y, reduction="sum").item()
            correct += int((Z.argmax(dim=1) == y).sum())
        return total, correct

"""The benchmarks' lower bound: only the matrix products of a training step (or of an evaluation),
through ``numpy.matmul`` into preallocated outputs. Anything a step does besides these GEMMs
(gather, batch norm, softmax, update, Python) is what a contender adds on top of the bound."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def step_flops(dims: Sequence[int], batch: int) -> int:
    """Floating-point operations of the products of one training step (those ``GemmBound.step``
    runs), 2 m k n per m x k by k x n product: per layer the forward S = A W, the weight
    gradient A^T dS and, above the first layer (whose input needs no gradient), dS W^T."""
    return sum(2 * batch * a * b * (2 if l == 0 else 3)
               for l, (a, b) in enumerate(zip(dims[:-1], dims[1:])))


def forward_flops(dims: Sequence[int], rows: int) -> int:
    """Floating-point operations of the forward products of ``rows`` rows (evaluation)."""
    return sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:]))


class GemmBound:
    """The GEMMs of one step of the fully connected network with widths ``dims``
    (input, hidden..., classes) on ``batch`` rows of ``dtype``: per layer the forward
    S = A W, the weight gradient A^T dS and (above the first layer) the input gradient dS W^T."""

    def __init__(self, dims: Sequence[int], batch: int, dtype, seed: int = 0,
                 source: Optional[np.ndarray] = None,
                 order: Optional[np.ndarray] = None) -> None:
        """With ``source`` (the data set's rows) and ``order`` (the row order), each step
        and each ``evaluate`` also reads its batch's rows, as stored, into a buffer: the
        read no training step can avoid (the ``gemm+rows`` bound)."""
        rng = np.random.default_rng(seed)
        self.batch = batch
        self.source, self.order, self.next = source, order, 0
        self.rows = None if source is None else np.empty((batch, source.shape[1]), source.dtype)
        self.X = rng.standard_normal((batch, dims[0])).astype(dtype)
        self.W = [rng.standard_normal((a, b)).astype(dtype) for a, b in zip(dims[:-1], dims[1:])]
        self.S = [np.empty((batch, b), dtype) for b in dims[1:]]
        self.dW = [np.empty_like(W) for W in self.W]
        self.dA = [np.empty((batch, a), dtype) for a in dims[:-1]]

    def read_rows(self) -> None:
        """The next batch's rows of ``source`` in ``order``, cycling (nothing without one)."""
        if self.source is None:
            return
        if self.next + self.batch > len(self.order):
            self.next = 0
        np.take(self.source, self.order[self.next:self.next + self.batch], axis=0,
                out=self.rows)
        self.next += self.batch

    def evaluate(self) -> None:
        """The rows' read, then the forward products."""
        self.read_rows()
        self.forward()

    def forward(self) -> None:
        A = self.X
        for W, S in zip(self.W, self.S):
            np.matmul(A, W, out=S)
            A = S

    def step(self) -> None:
        """The forward products, then the backward ones (the S buffers stand in for the
        activations and their gradients: the bound counts the products, not the values);
        first the batch's rows when there is a ``source``."""
        self.read_rows()
        self.forward()
        for l in range(len(self.W) - 1, -1, -1):
            A = self.X if l == 0 else self.S[l - 1]
            np.matmul(A.T, self.S[l], out=self.dW[l])
            if l > 0:
                np.matmul(self.S[l], self.W[l].T, out=self.dA[l])

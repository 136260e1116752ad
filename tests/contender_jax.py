"""The benchmarks' JAX contender: the same network and SGD step as one ``jax.jit`` function, written
as a JAX user would (parameters in a dict, ``jax.value_and_grad``, the update in the same
function, the batch's rows gathered and standardised inside it from the data set held as a
device array). The parameters and running statistics are donated to each step, so XLA
updates them in place. ``bf16=True`` makes each layer's product take bfloat16 operands with
float32 accumulation (``preferred_element_type``); the rest stays float32, as in cbn's
bf16-mixed precision. Needs jax (optional: ``pip install "jax[cpu]"``; the benchmarks leave
it out when it is missing)."""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _dot(A, W, bf16: bool):
    if bf16:
        return jnp.dot(A.astype(jnp.bfloat16), W.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)
    return jnp.dot(A, W)


def _logits(p, running, X, k: int, batch_norm: bool, training: bool, eps: float, bf16: bool):
    """(logits, per hidden layer its batch (mean, variance)) of rows X."""
    stats, A = [], X
    for l in range(1, k + 1):
        S = _dot(A, p[f"W{l}"], bf16) + p[f"b{l}"]
        if l == k:
            return S, stats
        if batch_norm and training:
            mean = S.mean(axis=0)
            var = jnp.mean(jnp.square(S - mean), axis=0)
            stats.append((mean, var))
        elif batch_norm:
            mean, var = running[f"mean{l}"], running[f"var{l}"]
        if batch_norm:
            S = (S - mean) * jax.lax.rsqrt(var + eps) * p[f"gamma{l}"] + p[f"beta{l}"]
        A = jax.nn.relu(S)
    raise AssertionError("a network has at least one layer")


def _rows(images, idx, shift, scale):
    X = jnp.take(images, idx, axis=0)
    if shift is None:
        return X
    return (X.astype(jnp.float32) - shift) * scale


@functools.partial(jax.jit, static_argnames=("k", "batch_norm", "eps", "alpha", "bf16"),
                   donate_argnums=(0, 1))
def _train_step(p, running, images, labels, idx, shift, scale, lr, lam, *, k, batch_norm, eps,
                alpha, bf16):
    X = _rows(images, idx, shift, scale)
    y = jnp.take(labels, idx)

    def loss_fn(p):
        Z, stats = _logits(p, running, X, k, batch_norm, True, eps, bf16)
        picked = jnp.take_along_axis(Z, y[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(Z, axis=1) - picked), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    decay = 1 - 2 * lr * lam  # the L2 term's gradient 2 lam W, on the weights only
    new = {n: (v * decay if n[0] == "W" else v) - lr * grads[n] for n, v in p.items()}
    new_running = dict(running)
    for l, (mean, var) in enumerate(stats, start=1):
        new_running[f"mean{l}"] = alpha * running[f"mean{l}"] + (1 - alpha) * mean
        new_running[f"var{l}"] = alpha * running[f"var{l}"] + (1 - alpha) * var
    return new, new_running, loss


@functools.partial(jax.jit, static_argnames=("block", "k", "batch_norm", "eps", "bf16"))
def _evaluate_block(p, running, images, labels, start, shift, scale, *, block, k, batch_norm,
                    eps, bf16):
    images = jax.lax.dynamic_slice_in_dim(images, start, block)
    labels = jax.lax.dynamic_slice_in_dim(labels, start, block)
    X = (images.astype(jnp.float32) - shift) * scale
    Z, _ = _logits(p, running, X, k, batch_norm, False, eps, bf16)
    picked = jnp.take_along_axis(Z, labels[:, None], axis=1)[:, 0]
    total = jnp.sum(jax.nn.logsumexp(Z, axis=1) - picked)
    return total, jnp.sum(jnp.argmax(Z, axis=1) == labels)


class JaxNet:
    """The network of ``params`` (keyed as ``cbn.Network.params``) in JAX, float32. BN as
    cbn's: biased batch variance, running statistics with EMA factor ``alpha``."""

    def __init__(self, params: Dict[str, np.ndarray], batch_norm: bool, eps: float = 1e-5,
                 alpha: float = 0.9, bf16: bool = False) -> None:
        self.k = sum(1 for name in params if name.startswith("W"))
        self.p = {n: jnp.asarray(np.array(v, dtype=np.float32)) for n, v in params.items()}
        self.running = {}
        if batch_norm:
            for l in range(1, self.k):
                m = params[f"W{l}"].shape[1]
                self.running[f"mean{l}"] = jnp.zeros(m, jnp.float32)
                self.running[f"var{l}"] = jnp.ones(m, jnp.float32)
        self.static = dict(k=self.k, batch_norm=batch_norm, eps=eps, bf16=bf16)
        self.alpha = alpha

    def load_running(self, stats: Dict[str, np.ndarray]) -> None:
        """BN's running statistics from a network's ``running_stats``."""
        for name in list(self.running):
            self.running[name] = jnp.asarray(np.array(
                stats[name.replace("mean", "running_mean").replace("var", "running_var")],
                dtype=np.float32))

    @staticmethod
    def data(images: np.ndarray, labels: np.ndarray, shift: Optional[np.ndarray],
             scale: Optional[np.ndarray]):
        """The data set as device arrays (once, before the steps): (images, labels as int32,
        shift, scale)."""
        put = lambda a: None if a is None else jnp.asarray(a)
        return put(images), jnp.asarray(labels.astype(np.int32)), put(shift), put(scale)

    def train_step(self, data, idx: np.ndarray, lr: float, lam: float) -> float:
        """One SGD step on rows ``idx`` of ``data`` (from ``JaxNet.data``); the mean loss
        before the update, once the step has finished (as PyTorch's ``loss.item()`` waits)."""
        images, labels, shift, scale = data
        self.p, self.running, loss = _train_step(
            self.p, self.running, images, labels, jnp.asarray(idx.astype(np.int32)), shift,
            scale, np.float32(lr), np.float32(lam), alpha=self.alpha, **self.static)
        jax.block_until_ready(self.p)  # the whole step done, not only its loss
        return float(loss)

    def evaluate(self, data, block: int) -> Tuple[float, int]:
        """Evaluation mode over all rows in blocks of ``block`` (which divides their number):
        (sum of losses, number correct)."""
        images, labels, shift, scale = data
        if images.shape[0] % block:
            raise ValueError(f"block {block} does not divide {images.shape[0]} rows")
        total, correct = 0.0, 0
        for start in range(0, images.shape[0], block):
            t, c = _evaluate_block(self.p, self.running, images, labels, start, shift, scale,
                                   block=block, **self.static)
            total += float(t)
            correct += int(c)
        return total, correct

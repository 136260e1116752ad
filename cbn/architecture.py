"""A network's architecture and its compiled plans: the layers laid out as a sequence of
typed ops over preallocated buffers, one plan per batch capacity, cached under a memory
budget (``Workspace``). (Named ``cbn.workspace`` before; that name is a deprecated alias for
one release.)

Each hidden block is a linear layer followed by element-wise ops, chosen here by a short
``if`` per option (``_block_ops``); the output layer is a linear layer alone. An op is one
file of the compiled core (its kernels and its ``OpSpec`` constructor, ``cbn/_specs.pxi``);
putting it in the architecture is one line here.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _ops
from . import _validate as check
from . import tune
from .losses import Targets
from .threads import GOVERNED_FROM, TeamGovernor, share_pool

# The cbn.Network whose plans these are (it imports this module, not the reverse).
Net = Any

# Rows per block when evaluating: small enough that a block's input stays in cache between
# the gather and the GEMM (docs/benchmarks.md, "What the fast path does").
EVAL_BLOCK = 256
# Workspace bytes a network keeps cached across calls. Each batch size gets its own plan
# (its buffers hold every row), so a one-off call on a whole data set (cost_and_grads on
# 45,000 images: ~0.6 GB) would otherwise stay allocated for the network's lifetime.
PLAN_CACHE_BYTES = 64 * 2**20


class CachedPlan(NamedTuple):
    """A plan, the layer specs behind it, the bytes of its workspace and the number of column
    slices its first layer runs in (1: not sliced)."""
    capacity: int
    plan: "_ops.Plan"
    layers: List["_ops.LayerSpec"]
    nbytes: int
    slices: int


class Workspace:
    """Plans of one network by capacity, least recently used first; see ``plan``."""

    def __init__(self, net: Net) -> None:
        self._net = net
        self.plans: Dict[int, CachedPlan] = {}
        self._last: List["_ops.LayerSpec"] = []   # the layers of the plan returned last
        self._rows = np.arange(0, dtype=np.int64)  # 0..n-1 for evaluation, grown on demand

    def plan(self, rows: int) -> "_ops.Plan":
        """A compiled plan with workspace for at least ``rows`` rows: the smallest one cached,
        else a new one. Callers set its data each time. Plans stay cached while their
        workspaces total at most PLAN_CACHE_BYTES (least recently used dropped first); a larger
        one serves its call and is freed once no one holds it (the plan keeps its arrays)."""
        fits = [cap for cap in self.plans if cap >= rows]
        if fits:
            cached = self.plans.pop(min(fits))
            self.plans[cached.capacity] = cached  # most recently used last
            self._last = cached.layers
            return cached.plan
        built = self._build(rows)
        self._last = built.layers
        if built.nbytes > PLAN_CACHE_BYTES:
            return built.plan
        self.plans[rows] = built
        while sum(cached.nbytes for cached in self.plans.values()) > PLAN_CACHE_BYTES:
            del self.plans[next(iter(self.plans))]
        return built.plan

    def forward_blocks(self, src: np.ndarray, y: Union[None, np.ndarray, Targets],
                       shift: np.ndarray,
                       scale: np.ndarray, probs: Optional[np.ndarray] = None,
                       training: bool = False, dropout_seed: Optional[int] = None,
                       name: str = "X", mix: Optional[float] = None) -> Tuple[float, int]:
        """Forward the rows of ``src`` (n, d) in blocks (evaluation mode unless ``training``,
        which takes all n rows as one batch); return the sum of losses and the number correct
        (both 0 without labels ``y``) and fill ``probs`` (n, K) when given. ``y``: int64
        labels (cross-entropy), or the ``Targets`` of a loss, whose sample weights are for
        a single batch (training mode). In training mode
        a ``dropout_seed`` applies the dropout masks of (dropout_seed, step 0). ``shift`` and
        ``scale`` standardise the rows in the gather (``Network.prepare_input``). ``mix``
        (training only): mixup's share, the batch and its targets mixed with the batch
        reversed (``Plan.set_mix``)."""
        net = self._net
        n = src.shape[0]
        if training:
            if net.batch_norm and n < 2:
                raise ValueError("batch statistics need at least 2 samples")
            cap = n
        else:
            cap = min(n, EVAL_BLOCK)
        plan = self.plan(cap)
        if self._rows.shape[0] < n:
            self._rows = np.arange(n, dtype=np.int64)
        if isinstance(y, Targets) and y.weights is not None and n > cap:
            raise ValueError("sample weights score one batch, not blocks")
        dropout = training and dropout_seed is not None and net.has_dropout
        loss, correct = 0.0, 0
        # Many blocks: their thread count is chosen as a training run's steps' is. The
        # governor's dry pass points the plan at other data: the run's are set after it.
        governed = n >= GOVERNED_FROM * cap
        governor = TeamGovernor(active=governed, kind="evaluate", probe=self.probe(
            plan, src, y, shift, scale, (cap, n % cap), training, dropout=dropout)
            if governed else None)
        self._set_data(plan, src, y, shift, scale)
        if dropout:
            plan.set_dropout(dropout_seed, 0)
        mixing = training and mix is not None
        if mixing:
            plan.set_mix(mix)
        try:
            for start in range(0, n, cap):
                stop = min(start + cap, n)
                out = None if probs is None else probs[start:stop]
                governor.begin()
                l, c = plan.forward(start, stop - start, training, probs=out, dropout=dropout,
                                    mix=mixing)
                governor.end(stop - start == cap)
                if not plan.input_finite:
                    raise check.non_finite_input(name, src, self._rows[start:stop])
                loss += l
                correct += c
        finally:
            governor.close()
            if mixing:
                plan.set_mix(None)  # the cached plan serves later calls too
        return loss, correct

    def _set_data(self, plan: "_ops.Plan", src: np.ndarray,
                  y: Union[None, np.ndarray, Targets], shift: np.ndarray,
                  scale: np.ndarray) -> None:
        """Point ``plan`` at ``src`` in row order, scored against ``y``: int64 labels, or
        the ``Targets`` of a loss (which ``set_data`` alone would reset to cross-entropy)."""
        targets = y if isinstance(y, Targets) else None
        plan.set_data(src, y if targets is None else targets.labels, self._rows, shift, scale)
        if targets is not None:
            targets.apply(plan)

    def probe(self, plan: "_ops.Plan", src: np.ndarray,
              y: Union[None, np.ndarray, Targets],
              shift: np.ndarray, scale: np.ndarray, sizes: Tuple[int, ...], training: bool,
              lam: float = 0.0, dropout: bool = False) -> Tuple[Hashable, Callable[[], bytes]]:
        """``TeamGovernor``'s probe of a run of ``plan`` over ``src`` in batches of ``sizes``
        rows (0s ignored): its key, and a dry pass that takes the run's products on the first
        rows of ``src`` at each size and returns their results' bytes. Training: forward and
        gradients (as a step takes them; the gradient buffer is restored after); else an
        evaluation forward. It changes no parameter or running statistic; it points the plan
        at ``src`` in row order, so the caller sets the run's data after it."""
        net = self._net
        sizes = tuple(sorted({size for size in sizes if size > 0}))
        slices = next((c.slices for c in self.plans.values() if c.plan is plan), None)
        key = (training, net.dtype.str, tuple(net.dims), net.batch_norm, net.bn_placement,
               net.expansion,
               dropout, plan.capacity, slices, sizes, _ops.transposed_from())
        if self._rows.shape[0] < src.shape[0]:
            self._rows = np.arange(src.shape[0], dtype=np.int64)

        def dry_pass() -> bytes:
            self._set_data(plan, src, y, shift, scale)
            results = []
            if training:
                grad = net.flat_grad
                saved = grad.copy()
                try:
                    for size in sizes:
                        plan.forward(0, size, True, grad_out=True, dropout=dropout)
                        plan.backward(size, lam)
                        results.append(grad.tobytes())
                finally:
                    np.copyto(grad, saved)
            else:
                probs = np.empty((max(sizes), net.num_classes), net.dtype)
                for size in sizes:
                    plan.forward(0, size, False, probs=probs[:size])
                    results.append(probs[:size].tobytes())
            return b"".join(results)

        return key, dry_pass

    def active_units(self, rows: int) -> np.ndarray:
        """Which ReLU outputs were positive in the last forward pass, over its first ``rows``
        rows, of the plan ``plan`` returned last (flat bool); used to spot ReLU kinks."""
        active = [op.out[:rows].ravel() > 0 for spec in self._last for op in spec.ops
                  if op.is_relu]
        return np.concatenate(active) if active else np.zeros(0, dtype=bool)

    def _build(self, cap: int) -> CachedPlan:
        tune.ensure()  # the CPU-dependent thresholds below, measured once per machine
        share_pool()  # any OpenBLAS loaded since the last plan, e.g. SciPy's
        net = self._net
        dt, dims, k = net.dtype, net.dims, net.num_layers
        allocated: List[np.ndarray] = []

        def buffer(*shape: int) -> np.ndarray:
            a = np.zeros(shape, dt)
            allocated.append(a)
            return a

        X = buffer(cap, net.input_dim)
        # One workspace for every layer's transposed weight product (used one layer at a time).
        WT = (buffer(max(dims[l - 1] * dims[l] for l in range(1, k + 1)))
              if cap >= _ops.transposed_from() else None)
        layers: List["_ops.LayerSpec"] = []
        for l in range(1, k + 1):
            if l == k:
                ops = ()
            elif net.expansion is not None:
                ops = self._prenorm_ops(l, cap, buffer, layers)
            else:
                ops = self._block_ops(l, cap, buffer, X, layers[-1] if layers else None)
            layers.append(_ops.LayerSpec(
                net._params[f"W{l}"], net._params[f"b{l}"], net._grads[f"W{l}"],
                net._grads[f"b{l}"], buffer(cap, dims[l]), WT, ops))
        # The first layer in column slices, one per thread (why: cbn/_blas.pxi), for as
        # many threads as there are now, up to MAX_SLICES.
        slices = min(_ops.slice_threads(), _ops.MAX_SLICES)
        if net.input_dim < _ops.sliced_from():
            slices = 1
        partials = buffer(slices, cap, dims[1]) if slices > 1 else None
        plan = _ops.Plan(cap, net.input_dim, X, net._theta, net._grad, net.n_weights, layers,
                         net.bn_eps, net.bn_alpha, net.bn_unbiased, partials)
        return CachedPlan(cap, plan, layers, sum(a.nbytes for a in allocated), slices)

    def _norm(self, l: int, m: int, cap: int, buffer, relu: bool) -> "_ops.OpSpec":
        """The norm op of hidden layer ``l`` (width ``m``), fused with ReLU if ``relu``."""
        net = self._net
        gamma, beta = net._params[f"gamma{l}"], net._params[f"beta{l}"]
        dgamma, dbeta = net._grads[f"gamma{l}"], net._grads[f"beta{l}"]
        if net.norm == "layer":
            return _ops.layer_norm_op(out=buffer(cap, m), Shat=buffer(cap, m),
                                      inv_std=buffer(cap), gamma=gamma, beta=beta,
                                      dgamma=dgamma, dbeta=dbeta)
        return _ops.batch_norm_op(
            out=buffer(cap, m), Shat=buffer(cap, m), relu=relu, gamma=gamma, beta=beta,
            dgamma=dgamma, dbeta=dbeta,
            rmean=net._running[f"running_mean{l}"], rvar=net._running[f"running_var{l}"],
            mean=buffer(m), var=buffer(m), inv_std=buffer(m), escale=buffer(m),
            eshift=buffer(m))

    def _activation(self, m: int, cap: int, buffer) -> "_ops.OpSpec":
        """The activation op of a hidden layer of width ``m``."""
        if self._net.activation == "gelu":
            return _ops.gelu_op(buffer(cap, m), buffer(cap, m))
        return _ops.relu_op(buffer(cap, m))

    def _prenorm_ops(self, l: int, cap: int, buffer, layers: list) -> list:
        """The ops of hidden layer ``l`` (1-based) of a network of pre-norm blocks
        (``Network(expansion=...)``): odd layers carry the residual stream x (the embedding,
        then each block's projection back, which adds the skip from the stream two layers
        below) and end with the norm the next linear reads; even layers expand, with the
        activation alone. A ``stream_op`` marks each point a later skip reads, to take that
        skip's gradient in."""
        net = self._net
        m = net.dims[l]
        if l % 2 == 0:
            return [self._activation(m, cap, buffer)]
        ops = []
        if l > 1:  # the skip from the stream two layers below, into its stream op's buffer
            below = layers[l - 3]
            stream = next(op for op in below.ops if op.name == "stream")
            value = below.S if below.ops[0] is stream else below.ops[0].out
            ops.append(_ops.residual_op(buffer(cap, m), value, stream.array("grad"),
                                        feeds_input_grad=False))
        if l + 2 < net.num_layers:  # a skip above reads this point
            ops.append(_ops.stream_op(buffer(cap, m)))
        ops.append(self._norm(l, m, cap, buffer, relu=False))
        return ops

    def _block_ops(self, l: int, cap: int, buffer, X: np.ndarray,
                   below: Optional["_ops.LayerSpec"]) -> list:
        """The element-wise ops of hidden block ``l`` (1-based), in order; ``X`` is the
        batch buffer, ``below`` the layer below (None for the first)."""
        net = self._net
        m = net.dims[l]

        def norm(relu: bool) -> "_ops.OpSpec":
            return self._norm(l, m, cap, buffer, relu)

        def activation() -> "_ops.OpSpec":
            return self._activation(m, cap, buffer)

        if net.norm is None:
            ops = [activation()]
        elif net.bn_placement == "after":
            ops = [activation(), norm(relu=False)]
        elif net.norm == "batch" and net.activation == "relu":
            ops = [norm(relu=True)]  # the fused kernel
        else:
            ops = [norm(relu=False), activation()]
        if net.dropout[l - 1] > 0:
            ops.append(_ops.dropout_op(net.dropout[l - 1]))
        if net.residual and net.dims[l - 1] == m:
            ops.append(_ops.residual_op(buffer(cap, m), X if below is None else below.output,
                                        None if below is None else below.S))
        return ops

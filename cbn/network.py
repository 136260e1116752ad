"""The k-layer fully connected network: parameters, running statistics, and the compiled plans
that run it.

Architecture: ``input -> [Linear -> BatchNorm -> ReLU] x (k-1) -> Linear -> softmax``;
without batch norm the hidden blocks are ``Linear -> ReLU``. All parameters live in one
flat buffer (weights first), and ``params`` exposes named views into it, so one kernel
call updates every parameter and a checkpoint is one array.

Batch-norm conventions (and their PyTorch equivalents):

- ``bn_alpha`` is the course's EMA factor: ``running = alpha * running + (1 - alpha) * batch``.
  The default 0.9 equals PyTorch's ``BatchNorm1d(momentum=0.1)``.
- ``bn_eps`` (default 1e-5) is added to the variance, as PyTorch's ``eps``.
- ``bn_init="first_batch"`` (the course's rule) sets the running statistics to the first
  training batch's statistics; ``"zeros_ones"`` starts from mean 0, variance 1 as PyTorch.
- ``bn_unbiased=False`` keeps the biased batch variance in the running variance (the course);
  ``True`` stores the unbiased one as PyTorch does. Normalisation in training always uses
  the biased batch variance, as in both.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from typing import (Dict, Iterator, Mapping, MutableMapping, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import numpy as np

from . import _ops
from . import _validate as check
from . import inputs

# Rows per block when evaluating. Small enough that a block's input (256 x 3072 float32, 3 MB)
# stays in cache between the gather and the GEMM: 256 evaluated 45,000 images up to 35 %
# faster than 1024 on one thread (docs/benchmarks.md).
EVAL_BLOCK = 256
# Workspace bytes a network keeps cached across calls. Each batch size gets its own plan
# (its buffers hold every row), so a one-off call on a whole data set (cost_and_grads on
# 45,000 images: ~0.6 GB) would otherwise stay allocated for the network's lifetime.
PLAN_CACHE_BYTES = 64 * 2**20
INIT_NAMES = ("he", "xavier")
BN_INITS = ("first_batch", "zeros_ones")
FORMAT_VERSION = 1


def _exclusive(method):
    """Run ``method`` holding the network's lock: its computations share the cached plans and
    workspaces, so one network computes for one thread at a time."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class _CachedPlan(NamedTuple):
    """A plan, the arrays behind it (one spec dict per layer) and their bytes."""
    capacity: int
    plan: "_ops.Plan"
    layers: list
    nbytes: int


class LiveArrays(MutableMapping):
    """A dict-like view of named arrays owned by a network: reading gives the live array,
    assigning copies the value into it (same shape, finite), so the network always computes
    with what the mapping shows. Names cannot be added or removed."""

    def __init__(self, arrays: Dict[str, np.ndarray], what: str) -> None:
        self._arrays = arrays
        self._what = what

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __setitem__(self, name: str, value) -> None:
        if name not in self._arrays:
            raise KeyError(f"no {self._what} named {name!r}; names: {list(self._arrays)}")
        target = self._arrays[name]
        value = check.real_array(name, value)
        if value.shape != target.shape:
            raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        check.running_stat(name, value)
        target[...] = value

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{self._what}s of a network cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array{v.shape}" for k, v in self._arrays.items()) + "}"


class Network:
    """A k-layer fully connected network with optional batch normalisation.

    Parameters
    ----------
    input_dim : int
        Number of input features d (3072 for CIFAR-10).
    hidden : sequence of int
        Widths of the hidden layers, e.g. ``[50, 50]`` for a 3-layer network.
    num_classes : int
        Number of output classes K (>= 2).
    batch_norm : bool
        Batch normalisation before each hidden ReLU (never on the output layer).
    init : "he", "xavier" or float
        Weight initialisation: He, N(0, 2/d_in); Xavier, N(0, 1/d_in); a number sigma
        draws every weight from N(0, sigma^2). Biases and beta start at 0, gamma at 1.
    dtype : float32 or float64
        Precision of parameters and computation.
    seed : int or None
        Seed of the initialisation.
    bn_alpha, bn_eps, bn_init, bn_unbiased
        Batch-norm options; see the module docstring for their PyTorch equivalents.

    Layout: ``params`` maps ``W1, b1, gamma1, beta1, ..., Wk, bk`` to arrays; ``Wl`` has
    shape (d_{l-1}, d_l), so a layer computes ``S = X W + b`` on rows of samples.

    Threads: one network may be shared between threads. Its computations (``predict_proba``,
    ``predict``, ``evaluate``, ``accuracy``, ``cost``, ``cost_and_grads``, ``state_dict``,
    ``load_state_dict``) take its lock, and ``cbn.fit`` holds it for the whole run, so a
    call made during training waits until training ends. Different networks never wait
    for each other.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, *,
                 batch_norm: bool = True, init: Union[str, float] = "he",
                 dtype=np.float64, seed: Optional[int] = None, bn_alpha: float = 0.9,
                 bn_eps: float = 1e-5, bn_init: str = "first_batch",
                 bn_unbiased: bool = False) -> None:
        self.input_dim = check.integer("input_dim", input_dim, low=1)
        self.hidden = check.widths("hidden", hidden)
        self.num_classes = check.integer("num_classes", num_classes, low=2)
        if not isinstance(batch_norm, (bool, np.bool_)):
            raise TypeError(f"batch_norm must be True or False, got {batch_norm!r}")
        self.batch_norm = bool(batch_norm)
        if isinstance(init, str):
            self.init: Union[str, float] = check.choice("init", init, INIT_NAMES)
        else:
            self.init = check.real("init (sigma)", init, low=0.0, low_open=True)
        self.dtype = check.float_dtype(dtype)
        if seed is not None:
            check.integer("seed", seed, low=0)
        self.seed = seed
        self.bn_alpha = check.real("bn_alpha", bn_alpha, low=0.0, high=1.0)
        self.bn_eps = check.real("bn_eps", bn_eps, low=0.0, low_open=True)
        # Below the smallest normal number, eps rounds to 0 (or loses precision) in this dtype
        # and a constant feature gets 1/sqrt(var + eps) = inf.
        if self.bn_eps < np.finfo(self.dtype).tiny:
            raise ValueError(f"bn_eps must be >= {np.finfo(self.dtype).tiny:g} in {self.dtype}, "
                             f"got {bn_eps}")
        self.bn_init = check.choice("bn_init", bn_init, BN_INITS)
        if not isinstance(bn_unbiased, (bool, np.bool_)):
            raise TypeError(f"bn_unbiased must be True or False, got {bn_unbiased!r}")
        self.bn_unbiased = bool(bn_unbiased)

        self.dims = (self.input_dim,) + self.hidden + (self.num_classes,)
        self._lock = threading.RLock()
        self._build_buffers()
        self._initialize(np.random.default_rng(seed))
        if not np.isfinite(self._theta).all():
            raise ValueError(f"init sigma={init} is too large for {self.dtype}: weights overflow")
        # Plans by capacity, least recently used first.
        self._plans: Dict[int, _CachedPlan] = {}
        self._last_workspace: list = []         # of the plan _plan returned last
        self._rows = np.arange(0, dtype=np.int64)  # 0..n-1 for evaluation, grown on demand
        self._identity_shift = np.zeros(self.input_dim, self.dtype)
        self._identity_scale = np.ones(self.input_dim, self.dtype)
        self._normalization: Optional[inputs.Normalization] = None

    # -- construction ---------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """k: the number of linear layers."""
        return len(self.dims) - 1

    def _build_buffers(self) -> None:
        dims, k = self.dims, self.num_layers
        shapes = [(f"W{l + 1}", (dims[l], dims[l + 1])) for l in range(k)]
        self.n_weights = sum(a * b for _, (a, b) in shapes)
        for l in range(k):
            shapes.append((f"b{l + 1}", (dims[l + 1],)))
            if self.batch_norm and l < k - 1:
                shapes.append((f"gamma{l + 1}", (dims[l + 1],)))
                shapes.append((f"beta{l + 1}", (dims[l + 1],)))
        total = sum(int(np.prod(s)) for _, s in shapes)
        self._theta = np.zeros(total, self.dtype)
        self._grad = np.zeros(total, self.dtype)
        self._params: Dict[str, np.ndarray] = {}
        self._grads: Dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in shapes:
            size = int(np.prod(shape))
            self._params[name] = self._theta[offset:offset + size].reshape(shape)
            self._grads[name] = self._grad[offset:offset + size].reshape(shape)
            offset += size
        order = []
        for l in range(1, k + 1):
            order += [f"W{l}", f"b{l}"]
            if self.batch_norm and l < k:
                order += [f"gamma{l}", f"beta{l}"]
        self._params = {name: self._params[name] for name in order}
        self._grads = {name: self._grads[name] for name in order}
        self._running: Dict[str, np.ndarray] = {}
        if self.batch_norm:
            for l in range(1, k):
                self._running[f"running_mean{l}"] = np.zeros(dims[l], self.dtype)
                self._running[f"running_var{l}"] = np.ones(dims[l], self.dtype)
        self._stats_seen = False

    def _initialize(self, rng: np.random.Generator) -> None:
        for l in range(1, self.num_layers + 1):
            W = self._params[f"W{l}"]
            d_in = W.shape[0]
            if self.init == "he":
                sigma = np.sqrt(2.0 / d_in)
            elif self.init == "xavier":
                sigma = np.sqrt(1.0 / d_in)
            else:
                sigma = float(self.init)
            W[...] = rng.standard_normal(W.shape) * sigma
            if self.batch_norm and l < self.num_layers:
                self._params[f"gamma{l}"][...] = 1

    def _plan(self, rows: int) -> _ops.Plan:
        """A compiled plan with workspace for at least ``rows`` rows: the smallest one cached,
        else a new one. Callers set its data each time. Plans stay cached while their
        workspaces total at most PLAN_CACHE_BYTES (least recently used dropped first); a larger
        one serves its call and is freed once no one holds it (the plan keeps its arrays)."""
        fits = [cap for cap in self._plans if cap >= rows]
        if fits:
            cached = self._plans.pop(min(fits))
            self._plans[cached.capacity] = cached  # most recently used last
            self._last_workspace = cached.layers
            return cached.plan
        cap = rows
        dt, k = self.dtype, self.num_layers
        X = np.zeros((cap, self.input_dim), dt)
        # One workspace for every layer's transposed weight product (used one layer at a time).
        WT = (np.zeros(max(self.dims[l - 1] * self.dims[l] for l in range(1, k + 1)), dt)
              if cap >= _ops.WEIGHT_PRODUCT_TRANSPOSED_FROM else None)
        layers = []
        for l in range(1, k + 1):
            d_in, d_out = self.dims[l - 1], self.dims[l]
            hidden = l < k
            bn = self.batch_norm and hidden
            spec = dict(d_in=d_in, d_out=d_out, hidden=hidden, bn=bn,
                        W=self._params[f"W{l}"], b=self._params[f"b{l}"],
                        dW=self._grads[f"W{l}"], db=self._grads[f"b{l}"],
                        S=np.zeros((cap, d_out), dt), WT=WT)
            if hidden:
                spec["H"] = np.zeros((cap, d_out), dt)
            if bn:
                spec.update(gamma=self._params[f"gamma{l}"], beta=self._params[f"beta{l}"],
                            dgamma=self._grads[f"gamma{l}"], dbeta=self._grads[f"beta{l}"],
                            rmean=self._running[f"running_mean{l}"],
                            rvar=self._running[f"running_var{l}"],
                            Shat=np.zeros((cap, d_out), dt))
                for key in ("mean", "var", "inv_std", "escale", "eshift"):
                    spec[key] = np.zeros(d_out, dt)
            layers.append(spec)
        # The first layer in column slices, one per thread (why: cbn/_ops.pyx), for as
        # many threads as there are now, up to MAX_SLICES.
        slices = min(_ops.threads(), _ops.MAX_SLICES)
        partials = (np.zeros((slices, cap, self.dims[1]), dt)
                    if slices > 1 and self.input_dim >= _ops.FIRST_LAYER_SLICED_FROM else None)
        plan = _ops.Plan(cap, self.input_dim, dt == np.float64, X, self._theta, self._grad,
                         self.n_weights, layers, self.bn_eps, self.bn_alpha,
                         self.bn_unbiased, partials)
        self._last_workspace = layers
        size = X.nbytes + sum(0 if a is None else a.nbytes for a in (WT, partials)) + sum(
            spec[key].nbytes for spec in layers for key in ("S", "H", "Shat") if key in spec)
        if size > PLAN_CACHE_BYTES:
            return plan
        self._plans[cap] = _CachedPlan(cap, plan, layers, size)
        while sum(cached.nbytes for cached in self._plans.values()) > PLAN_CACHE_BYTES:
            del self._plans[next(iter(self._plans))]
        return plan

    def _relu_pattern(self, rows: int) -> np.ndarray:
        """Which hidden units were active (H > 0) in the last forward pass, over its first
        ``rows`` rows, made with the plan ``_plan`` returned last; used to spot ReLU kinks in
        gradient checks."""
        active = [spec["H"][:rows].ravel() > 0 for spec in self._last_workspace if spec["hidden"]]
        return np.concatenate(active) if active else np.zeros(0, dtype=bool)

    # -- parameters and state -------------------------------------------------------------

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """Mapping name -> parameter array (``W1, b1, gamma1, beta1, ..., Wk, bk``). The arrays
        are live views into the network: ``net.params["W1"][...] = x`` and
        ``net.params["W1"] = x`` both copy ``x`` into it (shape checked)."""
        return LiveArrays(self._params, "parameter")

    @property
    def running_stats(self) -> Mapping[str, np.ndarray]:
        """Mapping ``running_mean{l}``/``running_var{l}`` -> batch-norm running statistics
        (live views, assignable like ``params``; empty without batch norm)."""
        return LiveArrays(self._running, "running statistic")

    @property
    def normalization(self) -> Optional[inputs.Normalization]:
        """The input standardisation this network applies to raw images when predicting or
        evaluating without ``normalization=`` (set by ``fit(..., normalization=...)``, kept
        by ``save``/``load``, ``state_dict`` and ``copy``); None: inputs are used as given.
        Assign an object with per-feature ``mean`` and ``std``, or None. See cbn.inputs."""
        return self._normalization

    @normalization.setter
    def normalization(self, value) -> None:
        self._normalization = (None if value is None
                               else inputs.as_normalization(value, self.input_dim))

    @property
    def flat_params(self) -> np.ndarray:
        """All parameters in one contiguous vector (weights first); a live view."""
        return self._theta

    def l2_penalty(self) -> float:
        """Sum of squared weights (W only; not b, gamma or beta)."""
        return _ops.sum_of_squares(self._theta[:self.n_weights])

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild an identical network."""
        return dict(input_dim=self.input_dim, hidden=list(self.hidden),
                    num_classes=self.num_classes, batch_norm=self.batch_norm,
                    init=self.init, dtype=self.dtype.name, seed=self.seed,
                    bn_alpha=self.bn_alpha, bn_eps=self.bn_eps, bn_init=self.bn_init,
                    bn_unbiased=self.bn_unbiased)

    @_exclusive
    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter and running statistic, plus ``stats_seen``, and
        ``input_mean``/``input_std`` when the network has a ``normalization``."""
        state = {k: v.copy() for k, v in self._params.items()}
        state.update({k: v.copy() for k, v in self._running.items()})
        state["stats_seen"] = np.array(self._stats_seen)
        if self._normalization is not None:
            state["input_mean"] = self._normalization.mean.copy()
            state["input_std"] = self._normalization.std.copy()
        return state

    @_exclusive
    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy parameters and running statistics from ``state`` (as made by ``state_dict``);
        the input normalization too when ``state`` holds one (else it is left as it is)."""
        expected = set(self._params) | set(self._running) | {"stats_seen"}
        missing = expected - set(state)
        extra = set(state) - expected - set(_INPUT_KEYS)
        if missing or extra:
            raise ValueError(f"state does not fit this network: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for name, target in list(self._params.items()) + list(self._running.items()):
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {target.shape}")
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise ValueError(f"{name} must be finite floating-point values")
            check.running_stat(name, value)
        for name, target in list(self._params.items()) + list(self._running.items()):
            target[...] = state[name]
        self._stats_seen = bool(np.asarray(state["stats_seen"]))
        if set(_INPUT_KEYS) & set(state):
            if not set(_INPUT_KEYS) <= set(state):
                raise ValueError(f"state holds only one of {_INPUT_KEYS}")
            self.normalization = inputs.Normalization(
                *(np.asarray(state[k]) for k in _INPUT_KEYS))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write configuration, parameters and running statistics to an ``.npz`` file
        (no pickle), atomically: a crash mid-write leaves any previous file intact. A SHA-256
        ``checksum`` of the content goes with it, so ``load`` refuses a damaged file."""
        from .checkpoint import atomic_savez, with_checksum
        atomic_savez(path, **with_checksum(self.to_arrays()))

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """What ``save`` writes: ``network_config`` (JSON string), ``format_version`` and
        ``state_dict()``; ``from_arrays`` reads it back."""
        return dict(network_config=np.array(json.dumps(self.config())),
                    format_version=np.array(FORMAT_VERSION), **self.state_dict())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Network":
        """Rebuild a network saved with ``save`` (or from a ``fit`` checkpoint). Anything wrong
        with the file (not a cbn ``.npz``, truncated, corrupt, doctored, sizes its
        configuration does not allow, content not matching its checksum) raises
        ``cbn.checkpoint.CheckpointError`` (a ValueError) naming it; no array is read before
        its declared size was checked. Files saved before cbn wrote a checksum load without
        one."""
        from .checkpoint import load_network
        return load_network(path, cls)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "arrays") -> "Network":
        """Rebuild a network from the arrays ``save`` writes (``network_config`` + state)."""
        if "network_config" not in arrays:
            raise ValueError(f"{source} holds no cbn network (no 'network_config')")
        try:
            config = json.loads(str(arrays["network_config"]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: network_config is not valid JSON: {exc}") from None
        _check_config_fits(config, arrays, source)
        net = cls(**config)
        state = {k: v for k, v in arrays.items()
                 if k in net._params or k in net._running or k in ("stats_seen", *_INPUT_KEYS)}
        net.load_state_dict(state)
        return net

    def copy(self) -> "Network":
        """An independent network with the same configuration and state."""
        net = Network(**self.config())
        net.load_state_dict(self.state_dict())
        return net

    # -- computation ------------------------------------------------------------------------

    def _source(self, X, normalization) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate input rows; return (source, shift, scale) for the gather kernel."""
        if normalization is None:
            X = check.matrix("X", X, cols=self.input_dim)
            return X, self._identity_shift, self._identity_scale
        X = check.matrix("X", X, cols=self.input_dim, dtypes=check.SOURCE_DTYPES)
        mean, std = (check.real_array(f"normalization.{name}", getattr(normalization, name, None))
                     for name in ("mean", "std"))
        mean = check.vector("normalization.mean", mean, size=self.input_dim)
        std = check.vector("normalization.std", std, size=self.input_dim)
        if (std <= 0).any():
            raise ValueError("normalization.std must be positive")
        with np.errstate(over="ignore"):  # refused below
            scale = (1.0 / std).astype(self.dtype)
            shift = mean.astype(self.dtype)
        if not np.isfinite(scale).all():
            raise ValueError(f"normalization.std is too small: 1/std overflows {self.dtype}")
        if not np.isfinite(shift).all():
            raise ValueError(f"normalization.mean is too large for {self.dtype}")
        return X, shift, scale

    def _evaluate(self, src, y, shift, scale, probs: Optional[np.ndarray] = None,
                  training: bool = False) -> Tuple[float, int]:
        """Forward src in blocks (evaluation mode unless ``training``); sum of losses and
        number correct (both 0 without labels); fills ``probs`` when given."""
        n = src.shape[0]
        if training:
            if self.batch_norm and n < 2:
                raise ValueError("batch statistics need at least 2 samples")
            cap = n
        else:
            cap = min(n, EVAL_BLOCK)
        plan = self._plan(cap)
        if self._rows.shape[0] < n:
            self._rows = np.arange(n, dtype=np.int64)
        plan.set_data(src, y, self._rows, shift, scale)
        loss, correct = 0.0, 0
        for start in range(0, n, cap):
            stop = min(start + cap, n)
            out = None if probs is None else probs[start:stop]
            l, c = plan.forward(start, stop - start, training, probs=out)
            loss += l
            correct += c
        return loss, correct

    @_exclusive
    def predict_proba(self, X: np.ndarray, *, normalization=None,
                      mode: str = "eval") -> np.ndarray:
        """Class probabilities, shape (n, K), in the network's dtype.

        ``mode="eval"`` (default) uses the running statistics; ``mode="train"`` uses the
        statistics of X itself as one batch (what training-mode BN computes; a common bug
        at test time, offered to show the difference). ``normalization`` (an object with
        per-feature ``mean`` and ``std``) standardises uint8 or raw inputs on the fly;
        None uses the network's own ``normalization``, False feeds X as it is. Inputs in
        the wrong units raise or warn (cbn.inputs)."""
        check.choice("mode", mode, ("eval", "train"))
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self._source(X, normalization)
        probs = np.empty((src.shape[0], self.num_classes), self.dtype)
        self._evaluate(src, None, shift, scale, probs, training=(mode == "train"))
        check.finite_result("predict_proba", probs)
        return probs

    def predict(self, X: np.ndarray, *, normalization=None) -> np.ndarray:
        """Predicted class per row (evaluation mode), int64 of shape (n,)."""
        return self.predict_proba(X, normalization=normalization).argmax(axis=1)

    @_exclusive
    def evaluate(self, X: np.ndarray, y: np.ndarray, lam: float = 0.0, *,
                 normalization=None) -> Dict[str, float]:
        """Mean loss, cost (loss + lam * sum W^2) and accuracy in evaluation mode;
        ``normalization`` as in ``predict_proba``."""
        lam = check.real("lam", lam, low=0.0)
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self._source(X, normalization)
        y = check.labels("y", y, src.shape[0], self.num_classes)
        loss, correct = self._evaluate(src, y, shift, scale)
        n = src.shape[0]
        cost = loss / n + lam * self.l2_penalty()
        check.finite_result("evaluate (loss and cost)", np.array([loss, cost]))
        return {"loss": loss / n, "cost": cost, "accuracy": correct / n}

    def accuracy(self, X: np.ndarray, y: np.ndarray, *, normalization=None) -> float:
        """Fraction of rows classified correctly, in evaluation mode."""
        return self.evaluate(X, y, normalization=normalization)["accuracy"]

    @_exclusive
    def cost(self, X: np.ndarray, y: np.ndarray, lam: float = 0.0) -> float:
        """Cost of one batch in training mode (batch statistics; running statistics untouched)."""
        lam = check.real("lam", lam, low=0.0)
        src, shift, scale = self._source(X, None)
        y = check.labels("y", y, src.shape[0], self.num_classes)
        loss, _ = self._evaluate(src, y, shift, scale, training=True)
        cost = loss / src.shape[0] + lam * self.l2_penalty()
        check.finite_result("cost", np.array(cost))
        return cost

    @_exclusive
    def cost_and_grads(self, X: np.ndarray, y: np.ndarray,
                       lam: float = 0.0) -> Tuple[float, Dict[str, np.ndarray]]:
        """Cost and its gradient w.r.t. every parameter on one batch, in training mode.

        cost = mean cross-entropy + lam * sum of squared weights. Batch norm uses the batch's
        statistics; the running statistics are left untouched. Returns ``(cost, grads)``
        with ``grads`` keyed like ``params`` (fresh arrays)."""
        lam = check.real("lam", lam, low=0.0)
        src, shift, scale = self._source(X, None)
        n = src.shape[0]
        y = check.labels("y", y, n, self.num_classes)
        if self.batch_norm and n < 2:
            raise ValueError("a training batch with batch norm needs at least 2 samples, got 1")
        plan = self._plan(n)
        plan.set_data(src, y, np.arange(n, dtype=np.int64), shift, scale)
        loss, _ = plan.forward(0, n, True, grad_out=True)
        plan.backward(n, lam)
        cost = loss / n + lam * self.l2_penalty()
        check.finite_result("cost", np.array(cost))
        check.finite_result("the gradients", self._grad)
        return cost, {k: v.copy() for k, v in self._grads.items()}

    def __repr__(self) -> str:
        bn = "BN" if self.batch_norm else "no BN"
        return (f"Network({'-'.join(map(str, self.dims))}, {bn}, init={self.init!r}, "
                f"{self.dtype.name})")


_INPUT_KEYS = ("input_mean", "input_std")  # the normalization in state_dict and saved files


def _check_config_fits(config, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Check a stored config's layer sizes against the stored weights before building
    anything, so a doctored file cannot make ``from_arrays`` allocate a huge network."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: network_config must be a JSON object, got {config!r:.80}")
    hidden = config.get("hidden")
    if not isinstance(hidden, list):
        raise ValueError(f"{source}: network_config['hidden'] must be a list, got {hidden!r:.80}")
    dims = [config.get("input_dim"), *hidden, config.get("num_classes")]
    for l in range(1, len(dims)):
        W = arrays.get(f"W{l}")
        shape = None if W is None else np.shape(W)
        if shape != (dims[l - 1], dims[l]):
            raise ValueError(f"{source}: W{l} has shape {shape} but network_config says "
                             f"({dims[l - 1]}, {dims[l]})")

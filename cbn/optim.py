"""Optimizers over the network's flat parameter buffer, with PyTorch's update formulas:
``SGD`` (momentum, Nesterov), ``Adam`` and ``AdamW``; and two that PyTorch's core lacks,
with the formulas of their papers' reference implementations: ``Lamb`` (timm's) and
``Lion`` (lucidrains' lion-pytorch, the paper's Algorithm 2).

Cost per parameter and step (passes over the n values, each one ufunc): plain SGD 2,
SGD with momentum 4, Nesterov 6, Adam 13, AdamW 13 + 1 over the weights (timings in
docs/benchmarks.md); Lion 1 and Lamb 3 (plus 1 with gradient clipping), each a compiled
loop (cbn/_update.pxi).
"""
# Design: an optimizer owns its state buffers (allocated once by ``bind``) and updates the flat
# vector ``theta`` in place from ``grad`` with NumPy ufuncs writing into a preallocated
# scratch vector (``out=``), or one compiled loop, so ``step`` allocates nothing. The learning rate is not a
# hyper-parameter: the schedule gives it per step. The first ``n_weights`` entries of theta
# are the weight matrices W1..Wk (the network stores them first); the rest are biases, gamma
# and beta, which decoupled weight decay leaves alone. ``grad`` already holds the coupled L2
# term ``2 lam W`` of ``fit``'s cost.
from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _ops
from . import _validate as check

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lamb", "Lion", "OPTIMIZERS", "check_state"]

N_CONSTS = 7  # scalar slots an update needs at most (AdamW)


class Optimizer:
    """Base class: one update rule over preallocated buffers shaped like the parameters.

    Subclasses list their hyper-parameters in ``_hyper`` (constructor argument names), their
    state buffers in ``_buffers``, and implement ``_update``.
    """

    _hyper: Tuple[str, ...] = ()
    _buffers: Tuple[str, ...] = ()
    _nonnegative: Tuple[str, ...] = ()  # buffers that are never negative (second moments)
    _layout = False  # the update needs the sizes of the weight tensors (``tensors``)

    def __init__(self) -> None:
        self.n_params: Optional[int] = None
        self.n_weights: Optional[int] = None
        self.dtype: Optional[np.dtype] = None
        self.tensors: Optional[Tuple[int, ...]] = None
        self.steps = 0  # updates made so far (PyTorch's ``state["step"]``)
        self._state: Dict[str, np.ndarray] = {}
        self._scratch: Optional[np.ndarray] = None
        self._consts: Tuple[np.ndarray, ...] = ()
        self._lr_max = math.inf  # the largest rate the dtype holds, once bound

    # -- sizes ------------------------------------------------------------------------------

    def bind(self, n_params: int, n_weights: int, dtype, tensors=None) -> None:
        """Allocate the state buffers (zeros) for ``n_params`` parameters of ``dtype`` whose
        first ``n_weights`` are weights, those of the weight tensors of sizes ``tensors``
        (W1, W2, ... in order, summing to ``n_weights``; None: one tensor), which only
        ``Lamb`` reads. Binding again to the same sizes keeps the state; other sizes raise
        ValueError (use a fresh optimizer for another network)."""
        n_params = check.integer("n_params", n_params, low=1)
        n_weights = check.integer("n_weights", n_weights, low=0, high=n_params)
        dtype = check.float_dtype(dtype)
        tensors = _tensor_sizes(tensors, n_weights)
        if self.n_params is not None:
            if ((self.n_params, self.n_weights, self.dtype, self.tensors)
                    != (n_params, n_weights, dtype, tensors)):
                raise ValueError(
                    f"{type(self).__name__} is bound to {self.n_params} parameters "
                    f"({self.n_weights} weights in tensors of {list(self.tensors)}) of "
                    f"{self.dtype}, not {n_params} ({n_weights} in {list(tensors)}) "
                    f"of {dtype}; use a fresh optimizer for another network")
            return
        self._check_dtype(dtype)
        self.n_params, self.n_weights, self.dtype = n_params, n_weights, dtype
        self.tensors = tensors
        self._lr_max = float(np.finfo(dtype).max)
        self._state = {name: np.zeros(n_params, dtype) for name in self._buffers}
        self._scratch = np.empty(n_params, dtype)
        self._consts = tuple(np.empty((), dtype) for _ in range(N_CONSTS))

    def _check_dtype(self, dtype: np.dtype) -> None:
        """Refuse hyper-parameters that change meaning once rounded to ``dtype``, where the
        update uses them (a ValueError naming the hyper-parameter and the dtype)."""

    @staticmethod
    def _below_one(name: str, value: float, dtype: np.dtype) -> None:
        """A decay factor in [0, 1) must stay below 1 in ``dtype`` (at 1 nothing decays)
        and, if positive, above 0."""
        rounded = float(dtype.type(value))
        if rounded == 1.0:
            raise ValueError(f"{name}={value!r} rounds to 1 in {dtype}, where it must be < 1; "
                             f"use at most {float(np.nextafter(dtype.type(1), dtype.type(0)))!r} "
                             "or float64")
        if value > 0 and rounded == 0.0:
            raise ValueError(f"{name}={value!r} rounds to 0 in {dtype}; use 0, a larger "
                             "value or float64")

    # -- the update -------------------------------------------------------------------------

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``theta`` in place from ``grad`` with learning rate ``lr``.

        theta, grad : 1-D C-contiguous arrays of the bound size and dtype; theta writeable,
            and the two must not overlap. Not checked for NaN (``fit`` watches divergence).
        lr : float >= 0, the schedule's rate for this update.
        """
        if self.n_params is None:
            raise ValueError(f"{type(self).__name__} is not bound to parameters; call "
                             "bind(n_params, n_weights, dtype) first")
        dtypes = (self.dtype,)
        check.vector("theta", theta, size=self.n_params, dtypes=dtypes, finite=False,
                     writeable=True)
        check.vector("grad", grad, size=self.n_params, dtypes=dtypes, finite=False)
        if np.may_share_memory(theta, grad):
            raise ValueError("theta and grad must not share memory")
        if type(lr) is not float or not 0.0 <= lr <= self._lr_max:  # the full check allocates
            lr = check.real("lr", lr, low=0.0)
            if lr > self._lr_max:
                raise ValueError(f"lr={lr!r} overflows {self.dtype} (at most "
                                 f"{self._lr_max:.4g})")
        self.steps += 1
        self._update(theta, grad, lr)

    def _update(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _const(self, slot: int, value: float) -> np.ndarray:
        """``value`` in preallocated 0-d array ``slot`` of the parameters' dtype: ufuncs convert
        a Python float afresh on every call, which allocates."""
        c = self._consts[slot]
        c[()] = value
        return c

    @property
    def fused_momentum(self) -> Optional[float]:
        """The momentum to use when ``fit`` may run its compiled SGD update instead of ``step``
        (plain SGD: 0.0); None otherwise."""
        return None

    # -- state ------------------------------------------------------------------------------

    def hyper_parameters(self) -> dict:
        """The constructor arguments."""
        return {name: getattr(self, name) for name in self._hyper}

    def state_dict(self) -> dict:
        """Name, hyper-parameters, sizes, update count and copies of the state buffers."""
        state = dict(name=type(self).__name__, **self.hyper_parameters(), step=self.steps,
                     n_params=self.n_params, n_weights=self.n_weights,
                     dtype=None if self.dtype is None else self.dtype.name)
        if self._layout:
            state["tensors"] = None if self.tensors is None else list(self.tensors)
        state.update({name: buf.copy() for name, buf in self._state.items()})
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what ``state_dict`` returned: hyper-parameters, update count and buffers,
        so the next ``step`` continues bit-identically. An unbound optimizer binds to the
        state's sizes; a bound one must match them. Anything wrong raises ValueError and
        changes nothing."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        try:
            fresh = self._restored(state, str)
        except TypeError as exc:  # a value of the wrong type is a bad state like any other
            raise ValueError(f"{type(self).__name__} state: {exc}") from exc
        self.__dict__.update(fresh.__dict__)

    def _restored(self, state: Mapping, label: Callable[[str], str]) -> "Optimizer":
        """A new optimizer holding ``state``, checked against this one's sizes; errors about
        a buffer name it ``label(key)``."""
        name = type(self).__name__
        if state.get("name") != name:
            raise ValueError(f"state is for optimizer {state.get('name')!r}, not {name!r}")
        missing = sorted(set(self._hyper) - set(state))
        if missing:
            raise ValueError(f"{name} state: missing keys {missing}")
        fresh = type(self)(**{k: state[k] for k in self._hyper})  # validates them
        expected = {"name", "step", "n_params", "n_weights", "dtype", *fresh._hyper,
                    *fresh._buffers, *(("tensors",) if fresh._layout else ())}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{name} state: missing keys {missing}, unexpected keys {extra}")
        fresh.steps = check.integer("step", state["step"], low=0)
        if state["n_params"] is None:
            if fresh.steps:
                raise ValueError(f"{name} state has {fresh.steps} steps but no sizes")
        else:
            fresh.bind(state["n_params"], state["n_weights"], state["dtype"],
                       state["tensors"] if fresh._layout else None)
            if self.n_params is not None:  # raises if they differ
                self.bind(fresh.n_params, fresh.n_weights, fresh.dtype,
                          fresh.tensors if fresh._layout else self.tensors)
            for key in fresh._buffers:
                buf = state[key]
                if getattr(buf, "dtype", None) != fresh.dtype:  # a ValueError, as for sizes
                    raise ValueError(f"{label(key)} must be a {fresh.dtype} array, got "
                                     f"{getattr(buf, 'dtype', type(buf).__name__)}")
                check.vector(label(key), buf, size=fresh.n_params, dtypes=(fresh.dtype,))
                if key in fresh._nonnegative and (buf < 0).any():
                    raise ValueError(f"{label(key)} is a second moment and must be >= 0, got "
                                     f"a minimum of {float(buf.min()):g}")
                np.copyto(fresh._state[key], buf)
        if self.n_params is not None and fresh.n_params is None:
            raise ValueError(f"{name} is bound to {self.n_params} parameters; the state has none")
        return fresh

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``
    with ``dampening=0`` and ``weight_decay=0`` (the L2 term is already in the gradient).

    Update at step t with rate lr, gradient g and momentum mu::

        mu = 0:      theta -= lr g
        mu > 0:      b = mu b + g                      (b = 0 before the first step, so b_1 = g)
                     theta -= lr b                     (nesterov=False)
                     theta -= lr (g + mu b)            (nesterov=True)

    Parameters
    ----------
    momentum : float
        0 <= momentum < 1 (PyTorch allows 1 and above; they never converge).
    nesterov : bool
        Nesterov momentum; needs momentum > 0, as in PyTorch.

    Plain SGD (momentum 0) runs as ``fit``'s compiled update, fused into the weight-gradient
    product (``fused_momentum`` is 0); with momentum the buffer lives here, so its steps are
    PyTorch's under any schedule and carry over between ``fit`` calls. (``fit(momentum=...)``
    without an optimizer keeps the compiled heavy-ball form v = mu v - lr g, theta += v,
    which matches this only while the rate is constant.)
    """

    _hyper = ("momentum", "nesterov")

    def __init__(self, momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__()
        self.momentum = check.real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0, got momentum=0")
        self._buffers = ("momentum_buffer",) if self.momentum > 0 else ()

    @property
    def fused_momentum(self) -> Optional[float]:
        return 0.0 if self.momentum == 0 else None

    def _check_dtype(self, dtype):
        self._below_one("momentum", self.momentum, dtype)

    def _update(self, theta, grad, lr):
        s, c = self._scratch, self._const
        if self.momentum == 0:
            np.multiply(grad, c(0, lr), out=s)
        else:
            b, mu = self._state["momentum_buffer"], c(1, self.momentum)
            np.multiply(b, mu, out=b)
            np.add(b, grad, out=b)
            if self.nesterov:
                np.multiply(b, mu, out=s)
                np.add(s, grad, out=s)
                np.multiply(s, c(0, lr), out=s)
            else:
                np.multiply(b, c(0, lr), out=s)
        np.subtract(theta, s, out=theta)


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with PyTorch's formulas (``torch.optim.Adam``, amsgrad off,
    weight_decay 0: the coupled L2 term is already in the gradient).

    At step t (1-based) with rate lr and gradient g::

        m = m + (1 - beta1) (g - m)          (PyTorch's lerp: beta1 m + (1 - beta1) g)
        v = beta2 v + (1 - beta2) g^2
        theta -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``eps`` is added after the square root of the bias-corrected v, as PyTorch does (the
    paper's placement); TensorFlow adds it to the uncorrected sqrt(v) instead, which differs
    in the first steps.

    Parameters
    ----------
    beta1, beta2 : float
        Decay rates of the first and second moment estimates, in [0, 1).
    eps : float
        Added to the denominator, > 0.
    """

    _hyper = ("beta1", "beta2", "eps")
    _buffers = ("exp_avg", "exp_avg_sq")
    _nonnegative = ("exp_avg_sq",)

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta1 = check.real("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = check.real("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.eps = check.real("eps", eps, low=0.0, low_open=True)

    def _check_dtype(self, dtype):
        self._below_one("beta1", self.beta1, dtype)
        self._below_one("beta2", self.beta2, dtype)
        tiny = float(np.finfo(dtype).tiny)
        if self.eps < tiny:  # 0 (or a subnormal) would divide a zero or tiny moment by 0
            raise ValueError(f"eps={self.eps!r} is below the smallest normal {dtype} number, "
                             f"{tiny!r}, and rounds towards 0 there; use a larger eps or "
                             "float64")

    def _update(self, theta, grad, lr):
        s, m, v = self._scratch, self._state["exp_avg"], self._state["exp_avg_sq"]
        c, t = self._const, self.steps
        np.subtract(grad, m, out=s)
        np.multiply(s, c(0, 1.0 - self.beta1), out=s)
        np.add(m, s, out=m)
        np.multiply(grad, grad, out=s)
        np.multiply(s, c(1, 1.0 - self.beta2), out=s)
        np.multiply(v, c(2, self.beta2), out=v)
        np.add(v, s, out=v)
        np.sqrt(v, out=s)
        np.divide(s, c(3, (1.0 - self.beta2 ** t) ** 0.5), out=s)
        np.add(s, c(4, self.eps), out=s)
        np.divide(m, s, out=s)
        np.multiply(s, c(5, lr / (1.0 - self.beta1 ** t)), out=s)
        np.subtract(theta, s, out=theta)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019), as ``torch.optim.AdamW``.

    Each step first shrinks the weights, then takes Adam's step::

        W *= 1 - lr * weight_decay          (theta[:n_weights] only)

    Decoupled decay is not an L2 term: it bypasses Adam's per-coordinate scaling, so every
    weight decays at the same relative rate whatever its gradient history. It applies to the
    weights only (biases, gamma and beta are left alone), as usual with batch norm, where
    shrinking gamma and beta would fight the normalisation. PyTorch decays every tensor given
    to it; pass only the weights there to compare. ``fit``'s ``lam`` still adds the coupled
    term to the gradient: use ``lam=0`` for pure AdamW.

    Parameters
    ----------
    beta1, beta2, eps : as ``Adam``.
    weight_decay : float
        Decoupled decay per unit learning rate, >= 0.
    """

    _hyper = ("beta1", "beta2", "eps", "weight_decay")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(beta1, beta2, eps)
        self.weight_decay = check.real("weight_decay", weight_decay, low=0.0)
        self._weights_of: Optional[np.ndarray] = None
        self._weights: Optional[np.ndarray] = None

    def _update(self, theta, grad, lr):
        if self.n_weights and self.weight_decay:
            if self._weights_of is not theta:  # a new view per step would allocate
                self._weights_of, self._weights = theta, theta[:self.n_weights]
            np.multiply(self._weights, self._const(6, 1.0 - lr * self.weight_decay),
                        out=self._weights)
        Adam._update(self, theta, grad, lr)  # super() would allocate its proxy each step


def bind_network(optimizer, net) -> None:
    """``optimizer.bind`` to the parameters of ``net`` (a ``cbn.Network``), with the sizes of
    its weight matrices for an optimizer that reads them (``Lamb``); any other object with
    ``bind(n_params, n_weights, dtype)`` gets those three."""
    if getattr(optimizer, "_layout", False):
        optimizer.bind(net.flat_params.size, net.n_weights, net.dtype, net.weight_sizes)
    else:
        optimizer.bind(net.flat_params.size, net.n_weights, net.dtype)


def _tensor_sizes(tensors, n_weights: int) -> Tuple[int, ...]:
    """``tensors`` checked: positive sizes summing to ``n_weights`` (None: one tensor of them
    all, or none without weights)."""
    if tensors is None:
        return (n_weights,) if n_weights else ()
    if isinstance(tensors, (str, bytes)) or not hasattr(tensors, "__iter__"):
        raise TypeError(f"tensors must be a sequence of sizes, got {tensors!r}")
    sizes = tuple(check.integer("tensors", size, low=1) for size in tensors)
    if sum(sizes) != n_weights:
        raise ValueError(f"tensors {list(sizes)} hold {sum(sizes)} weights, not the "
                         f"{n_weights} of n_weights")
    return sizes


class Lamb(Optimizer):
    """LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes"), with the formulas of timm's ``timm.optim.Lamb`` (bias correction on,
    ``grad_averaging`` on, weight decay on the weight matrices only, as timm's optimizer
    factory groups parameters: biases, gamma and beta get none).

    At step t (1-based) with rate lr and gradient g (``fit``'s coupled L2 term included)::

        g  = g / max(||g|| / max_grad_norm, 1)      (global norm over every parameter; skipped
                                                      when max_grad_norm is None)
        m  = beta1 m + (1 - beta1) g
        v  = beta2 v + (1 - beta2) g^2
        u  = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        for each weight matrix W (its slice of u, u_W):
            u_W += weight_decay W
            r = ||W|| / ||u_W||  (1 if either is 0; min(r, 1) with trust_clip)
            u_W *= r             (only when weight_decay > 0 or always_adapt, as timm)
        theta -= lr u

    The weight matrices are the tensors ``bind`` is given (``fit`` and the estimator pass
    the network's W1, W2, ...); the norms are accumulated in float64.

    Parameters
    ----------
    beta1, beta2 : decay rates of the moments, in [0, 1) (timm: 0.9, 0.999).
    eps : added to the denominator, > 0 (timm: 1e-6).
    weight_decay : decoupled decay of the weights per unit rate, >= 0 (timm: 0.01).
    max_grad_norm : the global gradient norm clipped to, > 0, or None (timm: 1.0).
    trust_clip : clip the trust ratio at 1 (LAMBC; timm: False).
    always_adapt : apply the trust ratio also when weight_decay is 0 (timm: False).
    """

    _hyper = ("beta1", "beta2", "eps", "weight_decay", "max_grad_norm", "trust_clip",
              "always_adapt")
    _buffers = ("exp_avg", "exp_avg_sq")
    _nonnegative = ("exp_avg_sq",)
    _layout = True

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: Optional[float] = 1.0,
                 trust_clip: bool = False, always_adapt: bool = False) -> None:
        super().__init__()
        self.beta1 = check.real("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = check.real("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.eps = check.real("eps", eps, low=0.0, low_open=True)
        self.weight_decay = check.real("weight_decay", weight_decay, low=0.0)
        self.max_grad_norm = None if max_grad_norm is None else check.real(
            "max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        for name, value in (("trust_clip", trust_clip), ("always_adapt", always_adapt)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
            setattr(self, name, bool(value))
        self._ends = np.zeros(0, dtype=np.int64)  # where each weight tensor ends

    _check_dtype = Adam._check_dtype

    def _update(self, theta, grad, lr):
        t = self.steps
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = max(math.sqrt(_ops.sum_of_squares(grad)) / self.max_grad_norm, 1.0)
        _ops.lamb_update(theta, grad, self._state["exp_avg"], self._state["exp_avg_sq"],
                         self._scratch, lr, self.beta1, self.beta2, self.eps,
                         self.weight_decay, clip, 1.0 - self.beta1 ** t,
                         math.sqrt(1.0 - self.beta2 ** t), self._ends,
                         bool(self.weight_decay or self.always_adapt), self.trust_clip)

    def bind(self, n_params, n_weights, dtype, tensors=None) -> None:
        super().bind(n_params, n_weights, dtype, tensors)
        self._ends = np.cumsum(np.array(self.tensors, dtype=np.int64))


class Lion(Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), with the
    formulas of the paper's Algorithm 2 as lucidrains' ``lion_pytorch.Lion`` writes them
    (decoupled weight decay on the weight matrices only, as ``AdamW`` here)::

        W     *= 1 - lr weight_decay                        (theta[:n_weights] only)
        theta -= lr sign(beta1 m + (1 - beta1) g)           (sign(0) = 0)
        m      = beta2 m + (1 - beta2) g

    Its steps all have size lr, so it wants a rate 3-10 times below AdamW's and a weight
    decay as many times higher (the paper's advice).

    Parameters
    ----------
    beta1, beta2 : interpolation and decay rates, in [0, 1) (lion-pytorch: 0.9, 0.99).
    weight_decay : decoupled decay of the weights per unit rate, >= 0 (lion-pytorch: 0).
    """

    _hyper = ("beta1", "beta2", "weight_decay")
    _buffers = ("exp_avg",)

    def __init__(self, beta1: float = 0.9, beta2: float = 0.99,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.beta1 = check.real("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = check.real("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.real("weight_decay", weight_decay, low=0.0)

    def _check_dtype(self, dtype):
        self._below_one("beta1", self.beta1, dtype)
        self._below_one("beta2", self.beta2, dtype)

    def _update(self, theta, grad, lr):
        _ops.lion_update(theta, grad, self._state["exp_avg"], lr, self.beta1, self.beta2,
                         1.0 - lr * self.weight_decay, self.n_weights)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "lamb": Lamb, "lion": Lion}
"""Optimizer classes by lower-case name."""


def check_state(state: Mapping, label: Callable[[str], str] = str) -> None:
    """Check ``state``, the ``state_dict()`` of an optimizer of this module, as its class's
    ``load_state_dict`` would (hyper-parameters, sizes, dtype, step count, finite buffers of
    the right length, second moments >= 0), without an optimizer at hand. Raises ValueError,
    naming a buffer ``label(key)``."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping, got {type(state).__name__}")
    classes = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    name = state.get("name")
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"state names no optimizer of cbn.optim: {check.short_repr(name)}")
    try:
        classes[name]()._restored(state, label)
    except TypeError as exc:
        raise ValueError(f"{name} state: {exc}") from None

"""The k-layer fully connected network: its specification, parameters and running
statistics, and the calls that run it (its compiled plans: ``cbn.architecture``; its files:
``cbn.serialization``).

Architecture: ``input -> [Linear -> BatchNorm -> ReLU -> Dropout] x (k-1) -> Linear -> softmax``;
with ``bn_placement="after"`` the hidden blocks are ``Linear -> ReLU -> BatchNorm -> Dropout``,
without batch norm ``Linear -> ReLU -> Dropout``; dropout is there only where its probability
is above 0, and active in training only. ``norm="layer"`` puts LayerNorm where BatchNorm
would be, ``activation="gelu"`` GELU where ReLU would be, and ``residual=True`` adds each
hidden block's input to its output wherever the two widths match. All parameters live in one flat buffer (weights
first), and ``params`` exposes named views into it, so one kernel call updates every
parameter and a checkpoint is one array.

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
import threading
from typing import Callable, Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _ops
from . import _validate as check
from . import bf16, inputs, losses, parameters, serialization
from ._files import PathLike
from .live import LiveArrays
from .threads import computing
from .architecture import Workspace

INIT_NAMES = ("he", "xavier")
BN_INITS = ("first_batch", "zeros_ones")
BN_PLACEMENTS = ("before", "after")
NORMS = ("batch", "layer", None)
ACTIVATIONS = ("relu", "gelu")
_UNSET = object()  # ``norm`` not given: ``batch_norm`` says which


def _norm(batch_norm, norm) -> Optional[str]:
    """The normalisation a network's ``batch_norm`` and ``norm`` arguments ask for."""
    if batch_norm is not None and not isinstance(batch_norm, (bool, np.bool_)):
        raise TypeError(f"batch_norm must be True or False, got {batch_norm!r}")
    if norm is _UNSET:
        return None if batch_norm is not None and not batch_norm else "batch"
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if batch_norm is not None and bool(batch_norm) != (norm == "batch"):
        raise ValueError(f"batch_norm={batch_norm} contradicts norm={norm!r}; give only norm")
    return norm


def _exclusive(method):
    """Run ``method`` holding the network's lock: its computations share the cached plans and
    workspaces, so one network computes for one thread at a time. It runs as a computation
    (``threads.computing``), on the thread count of the process, not one a governed run in
    another thread chose for itself."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.exclusive(), computing():
            return method(self, *args, **kwargs)
    return locked


def layer_dims(input_dim: int, hidden: Sequence[int], num_classes: int,
               expansion: Optional[int] = None) -> Tuple[int, ...]:
    """The widths of a network's layers, input first: ``hidden`` between the input and the
    classes, or with ``expansion`` e the embedding's width d, then (e d, d) per block."""
    if expansion is None:
        return (input_dim, *hidden, num_classes)
    d = hidden[0]
    return (input_dim, d, *(expansion * d, d) * (len(hidden) - 1), num_classes)


def check_blocks(hidden: Sequence[int], residual: bool, norm: Optional[str], dropout,
                 bn_placement: str) -> None:
    """What pre-norm blocks (``expansion``) need of the other options (a ValueError)."""
    if not residual or norm is None:
        raise ValueError("expansion builds pre-norm residual blocks: it needs residual=True "
                         "(command line: --residual) and a norm ('layer' or 'batch')")
    if len(set(hidden)) != 1:
        raise ValueError(f"expansion needs equal hidden widths (the residual stream's), got "
                         f"{list(hidden)}")
    if np.any(dropout) or bn_placement != "before":
        raise ValueError("expansion's blocks take no dropout and no bn_placement='after' (the "
                         "norm opens each block)")


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
        Batch normalisation in each hidden block (never on the output layer): the course's
        spelling of ``norm="batch"`` (True, the default) and ``norm=None`` (False).
    norm : "batch", "layer" or None
        The normalisation of each hidden block. LayerNorm normalises each sample over its
        features (biased variance, ``bn_eps``), with per-feature ``gamma{l}`` and ``beta{l}``
        as BatchNorm's, and no running statistics; it sits where ``bn_placement`` says.
    activation : "relu" or "gelu"
        The hidden blocks' activation; GELU is the exact form x Phi(x) (``torch.nn.GELU()``).
    residual : bool
        h_l = h_{l-1} + block_l(h_{l-1}) for every hidden layer whose input and output widths
        match, the block being its linear -> norm -> activation -> dropout as configured.
    expansion : int >= 1 or None
        Pre-norm residual blocks with this expansion factor (with ``residual=True``, a
        ``norm`` and equal ``hidden`` widths d, no dropout): the first hidden layer embeds
        the input, x = W1 input + b1, and each further width is a block
        x := x + W' act(W norm(x) + b) + b' whose inner width is expansion * d (the MLP
        block of a pre-norm transformer, as in Bachmann et al., 2023, "Scaling MLPs"); the
        output layer reads norm(x). Each block is two of the network's linear layers, so
        ``params`` holds W1, b1, gamma1, beta1 (the embedding's norm), W2, b2 (the
        expansion), W3, b3, gamma3, beta3 (the projection back and the next norm), ...
    init : "he", "xavier" or float
        Weight initialisation: He, N(0, 2/d_in); Xavier, N(0, 1/d_in); a number sigma
        draws every weight from N(0, sigma^2). Biases and beta start at 0, gamma at 1.
    dtype : float32 (default) or float64
        Precision of parameters and computation.
    precision : "fp32" (default) or "bf16-mixed"
        "bf16-mixed" (float32 networks only) runs the layer products in bfloat16 with float32
        accumulation, in training and evaluation; parameters, batch norm, the loss and the
        update stay float32. It needs a CPU with AVX512_BF16 and ``pip install "cbn[bf16]"``;
        elsewhere the network warns once and computes in float32 (``cbn.bf16``).
    seed : int or None
        Seed of the initialisation.
    bn_alpha, bn_eps, bn_init, bn_unbiased
        Batch-norm options; see the module docstring for their PyTorch equivalents.
    bn_placement : "before" or "after"
        Batch norm before each hidden ReLU (the course's ``Linear -> BN -> ReLU``) or after it
        (``Linear -> ReLU -> BN``, whose output feeds the next linear layer).
    dropout : float or sequence of float
        Inverted dropout after each hidden block: the probability 0 <= p < 1 of zeroing a
        unit (kept units are scaled by 1/(1-p)), one value for every hidden layer or one per
        hidden layer. Training steps only; masks come from a hash of (seed, step, layer,
        unit), so runs, resumes and gradient checks repeat them exactly.

    Layout: ``params`` maps ``W1, b1, gamma1, beta1, ..., Wk, bk`` to arrays; ``Wl`` has
    shape (d_{l-1}, d_l), so a layer computes ``S = X W + b`` on rows of samples.

    Threads: one network may be shared between threads. Its computations (``predict_proba``,
    ``predict``, ``evaluate``, ``accuracy``, ``cost``, ``cost_and_grads``, ``state_dict``,
    ``load_state_dict``, ``to_arrays``, ``save``, ``copy``, pickling, and the plan-level
    methods ``plan`` and ``active_units``) take its lock; ``cbn.fit`` and
    ``cbn.gradcheck`` hold it for the whole run (``exclusive``), so a call made during
    training waits until training ends. Different networks never wait for each other.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, *,
                 batch_norm: Optional[bool] = None, init: Union[str, float] = "he",
                 dtype=np.float32, seed: Optional[int] = None, bn_alpha: float = 0.9,
                 bn_eps: float = 1e-5, bn_init: str = "first_batch",
                 bn_unbiased: bool = False, bn_placement: str = "before",
                 dropout: Union[float, Sequence[float]] = 0.0, norm=_UNSET,
                 activation: str = "relu", residual: bool = False,
                 expansion: Optional[int] = None, precision: str = "fp32") -> None:
        self.input_dim = check.integer("input_dim", input_dim, low=1)
        self.hidden = check.widths("hidden", hidden)
        self.num_classes = check.integer("num_classes", num_classes, low=2)
        self.norm: Optional[str] = _norm(batch_norm, norm)
        self.batch_norm = self.norm == "batch"
        self.activation = check.choice("activation", activation, ACTIVATIONS)
        if not isinstance(residual, (bool, np.bool_)):
            raise TypeError(f"residual must be True or False, got {residual!r}")
        self.residual = bool(residual)
        if isinstance(init, str):
            try:
                float(init)
            except ValueError:
                self.init: Union[str, float] = check.choice("init", init, INIT_NAMES)
            else:  # a sigma given as text, as a command line or a file would give it
                raise TypeError(f"init must be one of {list(INIT_NAMES)} or a positive sigma "
                                f"as a number; got the string {init!r} (pass {init} without "
                                "quotes)")
        else:
            self.init = check.real("init (sigma)", init, low=0.0, low_open=True)
        self.dtype = check.float_dtype(dtype)
        self.precision = bf16.check_precision(precision, self.dtype)
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
        self.bn_placement = check.choice("bn_placement", bn_placement, BN_PLACEMENTS)
        self.dropout = parameters.dropout_rates(dropout, len(self.hidden))

        self.expansion = None if expansion is None else check.integer("expansion", expansion,
                                                                        low=1)
        normed = None
        if self.expansion is not None:
            check_blocks(self.hidden, self.residual, self.norm, self.dropout, self.bn_placement)
            normed = [l % 2 == 0 for l in range(2 * len(self.hidden) - 1)]  # the stream's
        self.dims = layer_dims(self.input_dim, self.hidden, self.num_classes, self.expansion)
        # Whether the products run in bf16 here (else float32: cbn.bf16.active)
        self.bf16 = bf16.active(self.precision)
        self._lock = threading.RLock()
        buffers = parameters.allocate(self.dims, self.norm, self.dtype, normed)
        self._theta, self._grad, self.n_weights = buffers.theta, buffers.grad, buffers.n_weights
        self._params, self._grads, self._running = buffers.params, buffers.grads, buffers.running
        self._stats_seen = False
        # Batch norm's first-batch rule (``copies_batch_stats``).
        self._first_batch_rule = self.norm == "batch" and self.bn_init == "first_batch"
        parameters.initialize(self._params, self.num_layers, self.init, self.norm,
                              np.random.default_rng(seed))
        if not np.isfinite(self._theta).all():
            raise ValueError(f"init sigma={init} is too large for {self.dtype}: weights overflow")
        self._workspace = Workspace(self)
        self._identity_shift = np.zeros(self.input_dim, self.dtype)
        self._identity_scale = np.ones(self.input_dim, self.dtype)
        self._normalization: Optional[inputs.Normalization] = None

    # -- construction ---------------------------------------------------------------------


    @property
    def num_layers(self) -> int:
        """k: the number of linear layers."""
        return len(self.dims) - 1

    @property
    def weight_sizes(self) -> Tuple[int, ...]:
        """The sizes of the weight matrices W1..Wk, in the order the first ``n_weights``
        entries of the flat parameters hold them (what ``cbn.optim.Lamb`` needs)."""
        return tuple(a * b for a, b in zip(self.dims[:-1], self.dims[1:]))

    # -- running the compiled plans directly (what cbn.fit and cbn.gradcheck build on) -----

    def exclusive(self) -> threading.RLock:
        """The network's lock, as a context manager: ``with net.exclusive(): ...`` makes the
        block the only code computing with this network (its calls take the lock too, so
        the same thread may call them inside). Whoever runs a ``plan`` holds it for as long
        as it uses the plan."""
        return self._lock

    @_exclusive
    def plan(self, rows: int) -> _ops.Plan:
        """The compiled plan with workspace for at least ``rows`` rows (``Workspace.plan``);
        the caller points it at its data (``set_data``) before each use, holding
        ``exclusive()`` for as long as it uses the plan."""
        return self._workspace.plan(rows)

    def probe(self, plan: _ops.Plan, src: np.ndarray, y, shift: np.ndarray, scale: np.ndarray,
              sizes: Tuple[int, ...], training: bool, lam: float = 0.0,
              dropout: bool = False) -> Tuple[Hashable, Callable[[], bytes]]:
        """``cbn.threads.TeamGovernor``'s probe of a run of ``plan`` (one of this network's)
        over ``src`` in batches of ``sizes`` rows: ``Workspace.probe``. Its dry pass runs the
        plan, so the caller holds ``exclusive()`` while the governor may call it."""
        return self._workspace.probe(plan, src, y, shift, scale, sizes, training, lam, dropout)

    @_exclusive
    def active_units(self, rows: int) -> np.ndarray:
        """Which ReLU outputs were positive in the last forward pass (first ``rows`` rows),
        flat bool: a gradient check compares them to spot ReLU kinks."""
        return self._workspace.active_units(rows)

    @property
    def flat_grad(self) -> np.ndarray:
        """The gradient buffer of the last backward pass, laid out like ``flat_params``
        (a live view: the next backward pass overwrites it)."""
        return self._grad

    @property
    def stats_seen(self) -> bool:
        """True once a training step has updated the running statistics (with
        ``bn_init="first_batch"`` the next step then blends into them instead of copying)."""
        return self._stats_seen

    @stats_seen.setter
    def stats_seen(self, value: bool) -> None:
        self._stats_seen = bool(value)

    @property
    def copies_batch_stats(self) -> bool:
        """Batch norm's first-batch rule (``bn_init="first_batch"``): True while the next
        training step is to set the running statistics to its batch's statistics rather than
        blend into them, that is until a training step has updated them."""
        return self._first_batch_rule and not self._stats_seen

    def batch_stats_updated(self) -> None:
        """Note that a training step updated the running statistics (with batch norm):
        later steps blend into them."""
        if self.batch_norm:
            self._stats_seen = True

    @property
    def has_dropout(self) -> bool:
        """True if any hidden layer drops units in training."""
        return any(p > 0 for p in self.dropout)

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
        Assign an object with per-feature ``mean`` and ``std``, or None: it is checked and
        converted once (``cbn.inputs.Checked``), and the gather's shift and scale are kept
        with it. See cbn.inputs."""
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
                    bn_unbiased=self.bn_unbiased, bn_placement=self.bn_placement,
                    dropout=list(self.dropout), norm=self.norm, activation=self.activation,
                    residual=self.residual,
                    **({} if self.expansion is None else dict(expansion=self.expansion)),
                    **({} if self.precision == "fp32" else dict(precision=self.precision)))

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
        serialization.check_state(state, {**self._params, **self._running})
        normalization = None
        if set(serialization.INPUT_MEMBERS) & set(state):  # checked before anything changes
            if not set(serialization.INPUT_MEMBERS) <= set(state):
                raise ValueError(f"state holds only one of {serialization.INPUT_MEMBERS}")
            try:
                normalization = inputs.Normalization(
                    *(np.asarray(state[k]) for k in serialization.INPUT_MEMBERS))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"input_mean, input_std: {exc}") from None
        for name, target in list(self._params.items()) + list(self._running.items()):
            target[...] = state[name]
        self._workspace.weights_changed()
        self._stats_seen = bool(np.asarray(state["stats_seen"]))
        if normalization is not None:
            self.normalization = normalization

    @_exclusive
    def save(self, path: PathLike) -> None:
        """Write configuration, parameters and running statistics to an ``.npz`` file
        (no pickle), atomically: a crash mid-write leaves any previous file intact. A SHA-256
        ``checksum`` of the content goes with it, so ``load`` refuses a damaged file."""
        serialization.save(self, path)

    @_exclusive
    def to_arrays(self) -> Dict[str, np.ndarray]:
        """What ``save`` writes: ``network_config`` (JSON string), ``format_version`` and
        ``state_dict()``; ``from_arrays`` reads it back."""
        return serialization.to_arrays(self)

    @classmethod
    def load(cls, path: PathLike) -> "Network":
        """Rebuild a network saved with ``save`` (or from a ``fit`` checkpoint). A truncated,
        corrupt or doctored file, or one whose content does not match its checksum, raises
        ``cbn.checkpoint.CheckpointError`` (a ValueError). A file without a checksum loads
        as it is."""
        return serialization.load_network(path, cls)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "arrays") -> "Network":
        """Rebuild a network from the arrays ``save`` writes (``network_config`` + state)."""
        return serialization.from_arrays(cls, arrays, source)

    @_exclusive
    def copy(self) -> "Network":
        """An independent network with the same configuration and state."""
        net = Network(**self.config())
        net.load_state_dict(self.state_dict())
        return net

    def __getstate__(self) -> Dict[str, np.ndarray]:
        # The compiled plans do not pickle; the configuration and the state rebuild them.
        return self.to_arrays()

    def __setstate__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.__dict__.update(type(self).from_arrays(arrays, source="pickle").__dict__)

    # -- computation ------------------------------------------------------------------------

    def prepare_input(self, X, normalization=None,
                      name: str = "X") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate input rows (float, or uint8 with a ``normalization`` that has per-feature
        ``mean`` and ``std``); return (source, shift, scale) for the plan's gather kernel."""
        # NaN and inf are refused as the kernels gather the rows (check.non_finite_input), not
        # by a pass over all of X first, which would read all of X once more.
        if normalization is None:
            X = check.matrix(name, X, cols=self.input_dim, finite=False)
            return X, self._identity_shift, self._identity_scale
        return inputs.gather_arguments(X, normalization, self.input_dim, self.dtype, name)

    def evaluate_prepared(self, src, y, shift, scale, probs: Optional[np.ndarray] = None,
                          training: bool = False, dropout_seed: Optional[int] = None,
                          name: str = "X", mix: Optional[float] = None) -> Tuple[float, int]:
        """Forward ``src`` (from ``prepare_input``; ``name`` for errors) in blocks:
        ``Workspace.forward_blocks``."""
        return self._workspace.forward_blocks(src, y, shift, scale, probs, training,
                                              dropout_seed, name, mix)

    @_exclusive
    def precise_bn(self, X: np.ndarray, *, batch_size: int = 100,
                   batches: Optional[int] = None, normalization=None, seed: int = 0) -> None:
        """PreciseBN (Wu and Johnson, 2021, "Rethinking 'Batch' in BatchNorm"; fvcore's
        ``update_bn_stats``): set each batch-norm layer's running mean and variance to the
        plain average, over ``batches`` mini-batches of ``batch_size`` rows of X (drawn
        without replacement, in the permutation of ``seed``; None: every full batch), of
        the batch statistics the current weights give in training mode, without dropout
        (the variance as training records it, ``bn_unbiased``). Training leaves moving
        averages that mix statistics of earlier weights (and averaged weights, ``cbn.EMA``,
        never produced any); this replaces them. ``normalization`` as in ``predict_proba``."""
        if not self.batch_norm:
            raise ValueError("precise_bn recomputes batch-norm statistics; this network has "
                             "none")
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self.prepare_input(X, normalization)
        n = src.shape[0]
        rows = min(check.integer("batch_size", batch_size, low=2), n)
        if rows < 2:
            raise ValueError("precise_bn needs at least 2 rows of X")
        full = n // rows
        batches = full if batches is None else check.integer("batches", batches, low=1,
                                                             high=full)
        order = np.random.default_rng(check.integer("seed", seed, low=0)).permutation(n)
        self.precise_bn_prepared(src, shift, scale, order, rows, batches)

    def precise_bn_prepared(self, src, shift, scale, order: np.ndarray, rows: int,
                            batches: int) -> None:
        """``precise_bn`` over the first ``batches`` batches of ``rows`` of ``order``, the rows
        of ``src`` prepared as ``prepare_input`` gives them (what ``fit`` runs at its end);
        on any error the running statistics are left as they were."""
        plan = self.plan(rows)
        plan.set_data(src, None, order, shift, scale)
        before = {name: value.copy() for name, value in self._running.items()}
        sums = {name: np.zeros(value.shape) for name, value in self._running.items()}
        try:
            for b in range(batches):
                # first=True: the batch's statistics replace the running ones, summed here
                plan.forward(b * rows, rows, True, update_stats=True, first=True)
                if not plan.input_finite:
                    raise check.non_finite_input("X", src, order[b * rows:(b + 1) * rows])
                for name, value in self._running.items():
                    sums[name] += value
            with np.errstate(over="ignore"):  # an overflow is refused just below
                means = {name: (total / batches).astype(self.dtype)
                         for name, total in sums.items()}
            for mean in means.values():
                check.finite_result("precise_bn's statistics", mean)
        except BaseException:
            for name, value in before.items():
                self._running[name][...] = value
            raise
        for name, mean in means.items():
            self._running[name][...] = mean
        self._stats_seen = True

    @_exclusive
    def predict_proba(self, X: np.ndarray, *, normalization=None,
                      mode: str = "eval") -> np.ndarray:
        """Class probabilities, shape (n, K), in the network's dtype.

        ``mode="eval"`` (default) uses the running statistics; ``mode="train"`` uses the
        statistics of X itself as one batch (what training-mode BN computes; a common bug
        at test time, offered to show the difference). ``normalization`` (an object with
        per-feature ``mean`` and ``std``) standardises uint8 or raw inputs on the fly;
        None uses the network's own ``normalization``, False feeds X as it is. Images in
        the wrong units raise or warn (cbn.inputs).

        X holds one example per row, (n, input_dim); one example is ``x.reshape(1, -1)``.
        Image features are channel-first, as CIFAR-10 stores them (all red values, then
        green, then blue, each plane row by row); rows flattened channel-last are warned
        about and converted by ``cbn.inputs.to_channel_first``."""
        check.choice("mode", mode, ("eval", "train"))
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self.prepare_input(X, normalization)
        probs = np.empty((src.shape[0], self.num_classes), self.dtype)
        self.evaluate_prepared(src, None, shift, scale, probs, training=(mode == "train"))
        check.finite_result("predict_proba", probs)
        return probs

    def predict(self, X: np.ndarray, *, normalization=None) -> np.ndarray:
        """Predicted class per row (evaluation mode), int64 of shape (n,); X's rows as in
        ``predict_proba`` (channel-first image features)."""
        return self.predict_proba(X, normalization=normalization).argmax(axis=1)

    @_exclusive
    def evaluate(self, X: np.ndarray, y: np.ndarray, lam: float = 0.0, *,
                 normalization=None) -> Dict[str, float]:
        """Mean loss, cost (loss + lam * sum W^2) and accuracy in evaluation mode;
        ``normalization`` as in ``predict_proba``."""
        lam = check.real("lam", lam, low=0.0)
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self.prepare_input(X, normalization)
        y = check.labels("y", y, src.shape[0], self.num_classes)
        loss, correct = self.evaluate_prepared(src, y, shift, scale)
        n = src.shape[0]
        cost = loss / n + lam * self.l2_penalty()
        check.finite_result("evaluate (loss and cost)", np.array([loss, cost]))
        return {"loss": loss / n, "cost": cost, "accuracy": correct / n}

    def accuracy(self, X: np.ndarray, y: np.ndarray, *, normalization=None) -> float:
        """Fraction of rows classified correctly, in evaluation mode."""
        return self.evaluate(X, y, normalization=normalization)["accuracy"]

    @_exclusive
    def cost(self, X: np.ndarray, y: np.ndarray, lam: float = 0.0, *,
             dropout_seed: Optional[int] = 0, loss: str = "cross_entropy",
             label_smoothing: float = 0.0, sample_weight=None,
             mix: Optional[float] = None) -> float:
        """Cost of one batch in training mode (batch statistics; running statistics untouched),
        with the dropout masks of ``dropout_seed`` and the loss options and ``mix`` as in
        ``cost_and_grads``."""
        lam = check.real("lam", lam, low=0.0)
        dropout_seed = check.dropout_seed(dropout_seed)
        src, shift, scale = self.prepare_input(X, None)
        targets = self._targets(y, src.shape[0], loss, label_smoothing, sample_weight)
        mix = self._mix(mix, targets)
        loss, _ = self.evaluate_prepared(src, targets, shift, scale, training=True,
                                         dropout_seed=dropout_seed, mix=mix)
        cost = loss / src.shape[0] + lam * self.l2_penalty()
        check.finite_result("cost", np.array(cost))
        return cost

    @_exclusive
    def cost_and_grads(self, X: np.ndarray, y: np.ndarray, lam: float = 0.0, *,
                       dropout_seed: Optional[int] = 0, loss: str = "cross_entropy",
                       label_smoothing: float = 0.0, sample_weight=None,
                       mix: Optional[float] = None) -> Tuple[float, Dict[str, np.ndarray]]:
        """Cost and its gradient w.r.t. every parameter on one batch, in training mode.

        cost = mean loss + lam * sum of squared weights, the loss being ``loss``
        ("cross_entropy" against integer labels ``y``, with ``label_smoothing``; "mse"
        against float targets ``y`` (n, K)), its mean weighted by ``sample_weight`` when
        given (cbn.losses). Batch norm uses the batch's (unweighted) statistics; the running
        statistics are left untouched. Dropout layers apply the
        masks of ``dropout_seed`` (an integer in [0, 2^64); None: no dropout), the same on
        every call with the same seed, so ``cost`` with that seed is the function these are
        the gradients of. ``mix`` (cross-entropy only): mixup's share in [0, 1], the batch
        and its targets mixed with the batch reversed as ``fit`` with a ``cbn.Mixup`` mixes a
        step whose draw is that share (None: no mixing). Returns ``(cost, grads)`` with
        ``grads`` keyed like ``params`` (fresh arrays)."""
        lam = check.real("lam", lam, low=0.0)
        dropout_seed = check.dropout_seed(dropout_seed)
        src, shift, scale = self.prepare_input(X, None)
        n = src.shape[0]
        targets = self._targets(y, n, loss, label_smoothing, sample_weight)
        mix = self._mix(mix, targets)
        if self.batch_norm and n < 2:
            raise ValueError("a training batch with batch norm needs at least 2 samples, got 1")
        plan = self.plan(n)
        plan.set_data(src, targets.labels, np.arange(n, dtype=np.int64), shift, scale)
        targets.apply(plan)
        dropout = dropout_seed is not None and self.has_dropout
        if dropout:
            plan.set_dropout(dropout_seed, 0)
        plan.set_mix(mix)
        try:
            loss, _ = plan.forward(0, n, True, grad_out=True, dropout=dropout,
                                   mix=mix is not None)
        finally:
            plan.set_mix(None)  # the cached plan serves later calls too
        if not plan.input_finite:
            raise check.non_finite_input("X", src, np.arange(n))
        plan.backward(n, lam)
        cost = loss / n + lam * self.l2_penalty()
        check.finite_result("cost", np.array(cost))
        check.finite_result("the gradients", self._grad)
        return cost, {k: v.copy() for k, v in self._grads.items()}

    @staticmethod
    def _mix(mix, targets: losses.Targets) -> Optional[float]:
        """``mix`` checked: None, or a share in [0, 1] with the cross-entropy."""
        if mix is None:
            return None
        mix = check.real("mix", mix, low=0.0, high=1.0)
        if targets.loss != "cross_entropy":
            raise ValueError(f"mix (mixup) needs loss='cross_entropy', got {targets.loss!r}")
        return mix

    def _targets(self, y, n: int, loss: str, label_smoothing: float,
                 sample_weight) -> losses.Targets:
        return losses.targets(y, n, self.num_classes, self.dtype, loss=loss,
                              label_smoothing=label_smoothing, sample_weight=sample_weight)

    @_exclusive
    def raw_outputs(self, X: np.ndarray, *, normalization=None,
                    mode: str = "eval") -> np.ndarray:
        """The last layer's outputs S = H W + b, shape (n, K), before any softmax: what a
        network trained with ``loss="mse"`` predicts. ``normalization`` and ``mode`` as in
        ``predict_proba``."""
        check.choice("mode", mode, ("eval", "train"))
        normalization = inputs.resolve(X, normalization, self._normalization, self.input_dim)
        src, shift, scale = self.prepare_input(X, normalization)
        out = np.empty((src.shape[0], self.num_classes), self.dtype)
        raw = losses.Targets("mse", None, None, None)
        self.evaluate_prepared(src, raw, shift, scale, out, training=(mode == "train"))
        check.finite_result("raw_outputs", out)
        return out

    def __repr__(self) -> str:
        norm = {"batch": "BN", "layer": "LN", None: "no BN"}[self.norm]
        act = "ReLU" if self.activation == "relu" else "GELU"
        bn = (norm + (f" after {act}" if self.bn_placement == "after" else "")
              if self.norm else norm)
        if self.activation != "relu" and not (self.norm and self.bn_placement == "after"):
            bn += ", GELU"
        if self.residual:
            bn += ", residual" if self.expansion is None else \
                f", pre-norm blocks x{self.expansion}"
        if self.has_dropout:
            bn += f", dropout {list(self.dropout)}"
        if self.precision != "fp32":
            bn += f", {self.precision}" + ("" if self.bf16 else " (as float32 here)")
        return (f"Network({'-'.join(map(str, self.dims))}, {bn}, init={self.init!r}, "
                f"{self.dtype.name})")

"""Gradient checking: analytic gradients against centered finite differences, in float64."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _validate as check
from .network import _UNSET, Network
from .threads import one_thread


@dataclass
class GradcheckResult:
    """Per-parameter comparison of analytic and numerical gradients.

    Each row holds ``name`` (e.g. ``W3``), ``layer``, ``max_relative_error``,
    ``max_absolute_error``, ``max_gradient`` (largest |analytic| entry), ``entries`` (how
    many were checked) and ``kinks`` (entries whose finite difference had to shrink its step
    because the perturbation switched a ReLU on or off; ``skipped`` counts those that still
    did at the smallest step and so have no valid finite difference).

    The relative error of one entry is |a - n| / max(floor, |a| + |n|). Parameters whose
    gradient is 0 by construction (the biases of layers followed directly by batch norm,
    which the normalisation cancels) are compared with an absolute floor of 1 instead, since their
    relative error would only divide rounding noise by rounding noise.
    """

    rows: List[Dict[str, float]] = field(default_factory=list)
    tolerance: float = 1e-6
    h: float = 1e-3
    floor: float = 1e-6

    @property
    def max_relative_error(self) -> float:
        """The largest relative error over every checked entry."""
        return max((r["max_relative_error"] for r in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        """True if every parameter's error is within the tolerance."""
        return self.max_relative_error <= self.tolerance

    def as_dict(self) -> dict:
        return dict(max_relative_error=self.max_relative_error, passed=self.passed,
                    tolerance=self.tolerance, h=self.h, floor=self.floor,
                    table=[dict(r) for r in self.rows])

    def table(self) -> str:
        """The rows as a Markdown table."""
        lines = ["| parameter | max relative error | max absolute error | max gradient "
                 "| entries | kinks (skipped) |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['name']} | {r['max_relative_error']:.2e} | "
                         f"{r['max_absolute_error']:.2e} | {r['max_gradient']:.2e} | "
                         f"{r['entries']} | {r['kinks']} ({r['skipped']}) |")
        return "\n".join(lines)


def _derivative(net: Network, X, y, lam: float, flat: np.ndarray, i: int, h: float,
                pattern: np.ndarray, dropout_seed: int, options: dict) -> Tuple[float, bool]:
    """Fourth-order centered difference of the cost along entry i of ``flat``:
    (8 (f(+h) - f(-h)) - (f(+2h) - f(-2h))) / 12h. Also says whether any evaluation
    switched a ReLU relative to ``pattern`` (then the cost has a kink within the stencil)."""
    old = flat[i]
    values = {}
    kink = False
    for k in (1, -1, 2, -2):
        flat[i] = old + k * h
        values[k] = net.cost(X, y, lam, dropout_seed=dropout_seed, **options)
        kink = kink or not np.array_equal(net.active_units(len(y)), pattern)
    flat[i] = old
    return (8 * (values[1] - values[-1]) - (values[2] - values[-2])) / (12 * h), kink


def gradcheck(net: Optional[Network] = None, X: Optional[np.ndarray] = None,
              y: Optional[np.ndarray] = None, lam: float = 0.0, *,
              hidden: Sequence[int] = (50, 50), batch_norm: Optional[bool] = True,
              input_dim: int = 10,
              num_classes: int = 10, n: int = 8, init="he", seed: int = 0, h: float = 1e-3,
              floor: float = 1e-6, tolerance: float = 1e-6,
              max_entries: Optional[int] = None, bn_placement: str = "before",
              dropout=0.0, dropout_seed: int = 0, norm=_UNSET, activation: str = "relu",
              residual: bool = False, loss: str = "cross_entropy",
              label_smoothing: float = 0.0, sample_weight=None,
              mix: Optional[float] = None) -> GradcheckResult:
    """Compare ``net.cost_and_grads`` with centered finite differences for every parameter
    of every layer, in float64 and training mode.

    The differences are fourth-order centered ones with step ``h``; an entry whose stencil
    crosses a ReLU kink (the pattern of active units changes, so the cost is not smooth
    there) is redone with h/10 and h/100, and skipped if it still crosses one.

    Give ``net``, ``X``, ``y`` to check a network on a batch (a float32 network is checked
    through a float64 copy); otherwise a network with ``hidden`` widths, ``batch_norm``
    and ``init`` is built on ``input_dim`` features with ``n`` random samples (normal
    inputs, labels covering the classes), from ``seed``.
    ``bn_placement``, ``dropout``, ``norm``, ``activation`` and ``residual`` configure that
    network as ``Network`` does; with ``loss="mse"`` its targets are normal (n, K) values.
    ``loss``, ``label_smoothing``, ``sample_weight`` and ``mix`` (mixup's share) choose the
    cost, as in ``Network.cost_and_grads``.
    ``max_entries`` checks a random subset of that many entries per parameter (all when None).
    Dropout masks are held fixed: every cost evaluation uses those of ``dropout_seed``.
    """
    lam = check.real("lam", lam, low=0.0)
    h = check.real("h", h, low=0.0, low_open=True)
    floor = check.real("floor", floor, low=0.0, low_open=True)
    tolerance = check.real("tolerance", tolerance, low=0.0)
    seed = check.integer("seed", seed, low=0)
    dropout_seed = check.integer("dropout_seed", dropout_seed, low=0, high=2**64 - 1)
    if max_entries is not None:
        max_entries = check.integer("max_entries", max_entries, low=1)
    rng = np.random.default_rng(seed)
    if net is None:
        if X is not None or y is not None:
            raise ValueError("X and y go with net; without a net, gradcheck makes its own data")
        net = Network(input_dim, hidden, num_classes, init=init, dtype=np.float64, seed=seed,
                      bn_placement=bn_placement, dropout=dropout, norm=norm,
                      batch_norm=batch_norm if norm is _UNSET else None,
                      activation=activation, residual=residual)
        n = check.integer("n", n, low=2 if net.batch_norm else 1)
        X = rng.standard_normal((n, net.input_dim))
        y = np.arange(n, dtype=np.int64) % net.num_classes
        rng.shuffle(y)
        if loss == "mse":
            y = rng.standard_normal((n, net.num_classes))
    else:
        if not isinstance(net, Network):
            raise TypeError(f"net must be a cbn.Network, got {type(net).__name__}")
        if X is None or y is None:
            raise ValueError("gradcheck(net, X, y): give the batch to check on")
        if net.dtype != np.float64:
            config = net.config()
            config["dtype"] = "float64"
            copy = Network(**config)
            copy.load_state_dict({k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                  for k, v in net.state_dict().items()})
            net = copy
        if type(X) is np.ndarray and X.dtype in check.FLOAT_DTYPES:  # not a masked array
            X = np.ascontiguousarray(X, dtype=np.float64)  # other dtypes: refused below

    # One thread: thousands of tiny products, where a team only adds wake-ups and barriers
    # (tens of times slower beside a busy process).
    # The perturbed parameters and ReLU patterns are this call's alone.
    with net.exclusive(), one_thread():
        return _check_all(net, X, y, lam, rng, h, floor, tolerance, max_entries, dropout_seed,
                          dict(loss=loss, label_smoothing=label_smoothing,
                               sample_weight=sample_weight, mix=mix))


def _check_all(net: Network, X, y, lam: float, rng, h: float, floor: float, tolerance: float,
               max_entries: Optional[int], dropout_seed, options: dict) -> GradcheckResult:
    # validates X, y and the loss options
    _, analytic = net.cost_and_grads(X, y, lam, dropout_seed=dropout_seed, **options)
    net.cost(X, y, lam, dropout_seed=dropout_seed, **options)
    pattern = net.active_units(len(y))
    # A bias right before batch norm shifts what the normalisation subtracts again.
    zero_by_construction = ({f"b{l}" for l in range(1, net.num_layers)}
                            if net.batch_norm and net.bn_placement == "before" else set())
    result = GradcheckResult(tolerance=tolerance, h=h, floor=floor)
    for name, param in net.params.items():
        flat = param.reshape(-1)
        entries = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            entries = np.sort(rng.choice(flat.size, max_entries, replace=False))
        a = analytic[name].reshape(-1)[entries]
        numeric = np.empty(entries.size)
        valid = np.ones(entries.size, dtype=bool)
        kinks = 0
        for j, i in enumerate(entries):
            for step in (h, h / 10, h / 100):
                numeric[j], kink = _derivative(net, X, y, lam, flat, i, step, pattern,
                                               dropout_seed, options)
                if not kink:
                    break
                kinks += step == h
            else:
                valid[j] = False
        diff = np.abs(a - numeric)[valid]
        scale = np.abs(a) + np.abs(numeric)
        denom = np.maximum(1.0 if name in zero_by_construction else floor, scale[valid])
        rel = diff / denom
        result.rows.append(dict(name=name, layer=int(re.sub(r"\D", "", name)),
                                max_relative_error=float(rel.max(initial=0.0)),
                                max_absolute_error=float(diff.max(initial=0.0)),
                                max_gradient=float(np.abs(a).max()),
                                entries=int(entries.size), kinks=int(kinks),
                                skipped=int((~valid).sum())))
    return result

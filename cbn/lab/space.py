"""Search spaces over :class:`cbn.lab.experiment.RunConfig` fields (``LogUniform``, ``Uniform``,
``Choice``), the trials planned from them and a search seed, and their narrowing around the
best records (:func:`refine`)."""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

from .. import _validate as check
from .._files import json_ready
from .experiment import RunConfig


def _config_fields() -> Dict[str, tuple]:
    """RunConfig field name -> the types its hint allows (``Optional[int]`` -> (int, None))."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: typing.get_args(hints[f.name]) or (hints[f.name],) for f in fields(RunConfig)}


_FIELD_TYPES = _config_fields()
# Fields a numeric range may be drawn for; those without float get rounded samples.
_NUMERIC = {name for name, types in _FIELD_TYPES.items() if int in types or float in types}
_INTEGER = {name for name in _NUMERIC if float not in _FIELD_TYPES[name]}


def _bounds(kind: str, low, high, *, positive: bool) -> tuple:
    low = check.real(f"{kind} low", low, low=0.0, low_open=True) if positive \
        else check.real(f"{kind} low", low)
    high = check.real(f"{kind} high", high)
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got low={low}, high={high}")
    return low, high


@dataclass(frozen=True)
class LogUniform:
    """Values whose logarithm is uniform on [log low, log high]; 0 < low < high.

    The usual prior for a scale such as lambda or a learning rate."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _bounds("LogUniform", self.low, self.high, positive=True)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def narrow(self, values: Sequence[float], pad: float) -> "LogUniform":
        """The span of ``values`` widened by ``pad`` x this range's width on each side (in log
        space), clipped to this range."""
        logs = [math.log(v) for v in values]
        width = math.log(self.high) - math.log(self.low)
        low = max(self.low, math.exp(min(logs) - pad * width))
        high = min(self.high, math.exp(max(logs) + pad * width))
        return LogUniform(low, high)

    def as_dict(self) -> dict:
        return {"dist": "LogUniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform:
    """Values uniform on [low, high]; low < high (e.g. momentum)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = _bounds("Uniform", self.low, self.high, positive=False)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def narrow(self, values: Sequence[float], pad: float) -> "Uniform":
        """The span of ``values`` widened by ``pad`` x this range's width on each side,
        clipped to this range."""
        width = self.high - self.low
        return Uniform(max(self.low, min(values) - pad * width),
                       min(self.high, max(values) + pad * width))

    def as_dict(self) -> dict:
        return {"dist": "Uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each equally likely: e.g. widths ``Choice([(50, 50), (100,)])``
    or BN on/off ``Choice([True, False])``."""

    options: tuple

    def __post_init__(self) -> None:
        if isinstance(self.options, (str, bytes)) or not hasattr(self.options, "__iter__"):
            raise TypeError(f"Choice options must be a list of values, got {self.options!r}")
        options = tuple(self.options)
        if not options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", options)

    def sample(self, rng: np.random.Generator):
        return self.options[int(rng.integers(len(self.options)))]

    def narrow(self, values: Sequence, pad: float) -> "Choice":
        """The options that occur in ``values``, in their original order (``pad`` unused)."""
        seen = [json_ready(v, strict=False) for v in values]
        return Choice([o for o in self.options if json_ready(o, strict=False) in seen])

    def as_dict(self) -> dict:
        return {"dist": "Choice", "options": json_ready(self.options, strict=False)}


Distribution = Union[LogUniform, Uniform, Choice]


def check_space(space) -> Dict[str, Distribution]:
    """Check that ``space`` maps RunConfig field names to distributions; return a sorted copy."""
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict of RunConfig field name -> LogUniform, Uniform "
                        f"or Choice, got {type(space).__name__}")
    unknown = sorted(str(name) for name in space if name not in _FIELD_TYPES)
    if unknown:
        raise ValueError(f"space has unknown hyper-parameter(s) {unknown}; the known ones "
                         f"(RunConfig fields) are {list(_FIELD_TYPES)}")
    for name, dist in space.items():
        if not isinstance(dist, (LogUniform, Uniform, Choice)):
            raise TypeError(f"space[{name!r}] must be LogUniform, Uniform or Choice, got "
                            f"{dist!r}; put fixed values in base=RunConfig(...)")
        if not isinstance(dist, Choice) and name not in _NUMERIC:
            raise TypeError(f"space[{name!r}]: {type(dist).__name__} draws numbers but "
                            f"{name!r} is not numeric; use Choice([...])")
    return {name: space[name] for name in sorted(space)}


# --------------------------------------------------------------------------------------------
# Trials: planned up front from the search seed
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One planned run: its index in the search, training seed, sampled hyper-parameters
    (JSON-plain values, e.g. ``hidden`` as a list) and the full config they give."""

    index: int
    seed: int
    params: Dict[str, Any]
    config: RunConfig


def sample_trials(space: Mapping[str, Distribution], n_trials: int, *,
                  base: RunConfig = RunConfig(), seed: int = 0) -> List[Trial]:
    """Plan ``n_trials`` trials. Trial i depends only on (seed, i, space, base), so the first
    trials of a longer search are those of a shorter one."""
    space = check_space(space)
    n_trials = check.integer("n_trials", n_trials, low=1)
    seed = check.integer("seed", seed, low=0)
    if not isinstance(base, RunConfig):
        raise TypeError(f"base must be a cbn.lab.experiment.RunConfig, got {type(base).__name__}")
    trials = []
    for index in range(n_trials):
        params_seq, run_seq = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
        rng = np.random.default_rng(params_seq)
        params = {}
        for name, dist in space.items():
            value = dist.sample(rng)
            params[name] = int(round(value)) if name in _INTEGER and \
                not isinstance(dist, Choice) else json_ready(value, strict=False)
        trials.append(Trial(index, int(run_seq.generate_state(1)[0]), params,
                            base.with_(**params)))
    return trials


def refine(space: Mapping[str, Distribution], records: Sequence[dict], *, top: int = 5,
           pad: float = 0.1, key: str = "val_accuracy") -> Dict[str, Distribution]:
    """A narrower space around the ``top`` successful trials by ``key``.

    Each range becomes the span of the top trials' values widened by ``pad`` x its old width
    on each side (log space for LogUniform), clipped to the old range; a Choice keeps the
    options the top trials used."""
    space = check_space(space)
    top = check.integer("top", top, low=1)
    pad = check.real("pad", pad, low=0.0, low_open=True)
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise ValueError("records holds no successful trial to refine around")
    chosen = sorted(ok, key=lambda r: -r[key])[:top]  # stable: earlier trials win ties
    narrowed = {}
    for name, dist in space.items():
        if any(name not in r for r in chosen):
            raise ValueError(f"records have no {name!r}; were they made with this space?")
        narrowed[name] = dist.narrow([r[name] for r in chosen], pad)
    return narrowed

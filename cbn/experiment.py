"""One training run, described by a config and scored on train/validation/test: the unit the
examples repeat and the hyper-parameter search distributes."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Union

import numpy as np

from .data import CIFAR10
from .network import Network
from .schedule import CyclicLR
from .train import History, fit


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run besides the data and the seed.

    Defaults are the course's 3-layer setting: hidden [50, 50], BN, He init, lambda 0.005,
    eta 1e-5..1e-1, batch 100, 2 cycles. ``step_size`` None means the course's rule
    n_s = 5 * n_train / batch_size (2250 for 45,000 images)."""

    hidden: tuple = (50, 50)
    batch_norm: bool = True
    init: Union[str, float] = "he"
    lam: float = 0.005
    eta_min: float = 1e-5
    eta_max: float = 1e-1
    step_size: Optional[int] = None
    cycles: float = 2
    batch_size: int = 100
    dtype: str = "float32"
    momentum: float = 0.0
    eval_every: Optional[int] = None

    def with_(self, **changes) -> "RunConfig":
        """A copy with some fields changed."""
        if "hidden" in changes:
            changes["hidden"] = tuple(changes["hidden"])
        return replace(self, **changes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def resolved_step_size(self, n_train: int) -> int:
        """n_s: the configured one, else 5 * n_train / batch_size (at least 1)."""
        if self.step_size is not None:
            return int(self.step_size)
        return max(1, int(round(5 * n_train / self.batch_size)))


@dataclass
class RunResult:
    """A trained network, its history and its final scores (accuracies are fractions)."""

    config: RunConfig
    seed: int
    net: Network
    history: History
    metrics: Dict[str, float] = field(default_factory=dict)


def run(data: CIFAR10, config: RunConfig = RunConfig(), seed: int = 0, *,
        progress: bool = False) -> RunResult:
    """Train one network on ``data.train`` (validating on ``data.val`` as it goes) and score
    it on all three splits in evaluation mode. ``seed`` fixes initialisation and shuffling."""
    n_train = len(data.train)
    net = Network(data.train.images.shape[1], config.hidden, len(data.label_names),
                  batch_norm=config.batch_norm, init=config.init, dtype=np.dtype(config.dtype),
                  seed=seed)
    schedule = CyclicLR(config.eta_min, config.eta_max, config.resolved_step_size(n_train))
    started = time.perf_counter()
    history = fit(net, data.train.images, data.train.labels, X_val=data.val.images,
                  y_val=data.val.labels, lam=config.lam, batch_size=config.batch_size,
                  schedule=schedule, cycles=config.cycles, seed=seed, progress=progress,
                  normalization=data.normalization, momentum=config.momentum,
                  eval_every=config.eval_every)
    metrics: Dict[str, float] = {"wall_time": time.perf_counter() - started,
                                 "step_size": schedule.step_size}
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        scores = net.evaluate(part.images, part.labels, config.lam,
                              normalization=data.normalization)
        metrics[f"{split}_accuracy"] = scores["accuracy"]
        metrics[f"{split}_loss"] = scores["loss"]
        metrics[f"{split}_cost"] = scores["cost"]
    return RunResult(config, seed, net, history, metrics)


def mean_std(values: List[float]) -> Dict[str, object]:
    """``{"mean", "std", "values"}`` over runs (std with ddof=0; 0 for a single run)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in arr]}

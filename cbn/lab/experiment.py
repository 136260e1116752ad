"""Experiments: one training run described by a config and scored on train/validation/test
(the unit the examples repeat and the hyper-parameter search distributes), repeated runs
(each kept on disk and reused) summarised as mean +- std, and the measurements the examples
share (BN statistics at test time, gradient checks). The examples' command line and output
folder live in :mod:`cbn.lab.record`."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .. import _validate as check
from .._files import PathLike, json_ready, write_text
from ..data import CIFAR10
from ..callbacks import EpochLines
from ..checkpoint import CheckpointError
from ..gradcheck import GradcheckResult, gradcheck
from ..network import ACTIVATIONS, NORMS, Network, check_blocks
from .. import optim
from ..augment import Augment, mirror
from ..ema import EMA
from ..schedule import ConstantLR, CosineAnnealingLR, CyclicLR, OneCycleLR
from ..train import History, fit, steps_per_epoch


OPTIMIZERS = ("sgd", "adam", "adamw", "lamb", "lion")
SCHEDULES = ("cyclic", "constant", "cosine", "onecycle")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run besides the data and the seed: every option of
    ``cbn.Network`` and ``cbn.fit`` that a run sets, by name (the one description behind
    ``cbn train``, its ``--config`` files, the examples and the hyper-parameter search).

    Defaults are the course's 3-layer setting: hidden [50, 50], BN, He init, lambda 0.005,
    eta 1e-5..1e-1, batch 100, 2 cycles. ``step_size`` None means the course's rule
    n_s = 5 * n_train / batch_size (2250 for 45,000 images).

    ``epochs`` (None: as many as ``cycles`` take) trains that many passes instead, with
    ``cycles`` learning-rate cycles spread over them (n_s = steps / (2 cycles) unless
    ``step_size`` is set). ``schedule``: "cyclic" (triangular, eta_min..eta_max), "constant"
    (eta_max), "cosine" (eta_max down to eta_min) or "onecycle" (up to eta_max and down);
    all but "cyclic" need ``epochs``. ``optimizer``: "sgd" (the built-in SGD with
    ``momentum``), "adam", or "adamw", "lamb", "lion" (each with ``weight_decay``, decoupled). ``hflip``, ``shift`` and
    ``noise`` augment training images (``cbn.Augment``), ``mixup`` (alpha > 0; 0: off)
    mixes them (``cbn.Mixup``). ``ema`` (a decay in (0, 1); 0: off) trains a moving average
    of the weights that the network takes at the end (``cbn.EMA``), its batch-norm
    statistics recomputed over ``precise_bn`` batches when that is set, updated every
    ``ema_every`` steps. ``eval_points`` (None: one a
    cycle's tenth under ``eval_every``, else once an epoch) spreads that many history points
    over the run; ``eval_train`` also scores the training set at each. ``tta`` scores the
    validation and test sets on each image and its mirror (probabilities averaged)."""

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
    # Options of cbn.Network and cbn.fit; "auto": the norm ``batch_norm`` says.
    norm: Optional[str] = "auto"
    activation: str = "relu"
    residual: bool = False
    expansion: Optional[int] = None
    label_smoothing: float = 0.0
    mixup: float = 0.0
    ema: float = 0.0
    ema_every: int = 1
    precise_bn: int = 0
    bn_placement: str = "before"
    dropout: float = 0.0
    epochs: Optional[int] = None
    schedule: str = "cyclic"
    optimizer: str = "sgd"
    weight_decay: float = 0.01
    hflip: bool = False
    shift: int = 0
    noise: float = 0.0
    eval_points: Optional[int] = None
    eval_train: bool = True
    tta: bool = False

    def __post_init__(self) -> None:
        # The options a search may draw are checked here, when a trial is planned, rather
        # than when its network is built.
        if self.norm not in NORMS + ("auto",):
            raise ValueError(f"norm must be one of {NORMS + ('auto',)}, got {self.norm!r}")
        check.choice("activation", self.activation, ACTIVATIONS)
        for name in ("residual", "hflip", "eval_train", "tta", "batch_norm"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check.real("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        check.real("mixup", self.mixup, low=0.0)
        check.real("ema", self.ema, low=0.0, high=1.0, high_open=True)
        check.integer("precise_bn", self.precise_bn, low=0)
        check.integer("ema_every", self.ema_every, low=1)
        if self.precise_bn and not self.ema:
            raise ValueError("precise_bn recomputes the statistics of the averaged weights; "
                             "it needs ema")
        check.choice("bn_placement", self.bn_placement, ("before", "after"))
        check.real("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        check.choice("schedule", self.schedule, SCHEDULES)
        check.choice("optimizer", self.optimizer, OPTIMIZERS)
        check.real("weight_decay", self.weight_decay, low=0.0)
        check.integer("shift", self.shift, low=0)
        check.real("noise", self.noise, low=0.0)
        for name in ("epochs", "eval_points", "expansion"):
            if getattr(self, name) is not None:
                check.integer(name, getattr(self, name), low=1)
        if self.expansion is not None:
            options = self.network_options()
            check_blocks(self.hidden, self.residual, options["norm"], self.dropout,
                         self.bn_placement)
        if self.schedule != "cyclic" and self.epochs is None:
            raise ValueError(f"schedule {self.schedule!r} needs epochs (cycles count the "
                             "cyclic schedule's cycles only)")
        if self.optimizer != "sgd" and self.momentum:
            raise ValueError(f"momentum is the built-in SGD's; optimizer {self.optimizer!r} "
                             "keeps its own")

    def with_(self, **changes) -> "RunConfig":
        """A copy with some fields changed."""
        if "hidden" in changes:
            changes["hidden"] = tuple(changes["hidden"])
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """The fields as a dict; the options in ``_OMITTED_AT_DEFAULT`` only when set, so a
        configuration that does not use them reads as it did before they existed."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]
        return d

    def network_options(self) -> dict:
        """The keywords of ``cbn.Network`` this configuration sets."""
        norm = ("batch" if self.batch_norm else None) if self.norm == "auto" else self.norm
        options = dict(norm=norm, activation=self.activation, residual=self.residual,
                       bn_placement=self.bn_placement, dropout=self.dropout)
        if self.expansion is not None:
            options["expansion"] = self.expansion
        return options

    def resolved_step_size(self, n_train: int) -> int:
        """n_s: the configured one, else 5 * n_train / batch_size (at least 1), or with
        ``epochs`` the steps of the run over 2 ``cycles``."""
        if self.step_size is not None:
            return int(self.step_size)
        if self.epochs is not None:
            return max(1, int(self.total_steps(n_train) // (2 * self.cycles)))
        return max(1, int(round(5 * n_train / self.batch_size)))

    def total_steps(self, n_train: int) -> int:
        """The steps of the run (with ``epochs``; with cycles, 2 n_s per cycle)."""
        if self.epochs is not None:
            return self.epochs * steps_per_epoch(n_train, self.batch_size,
                                                 self.network_options()["norm"] == "batch")
        return int(round(self.cycles * 2 * self.resolved_step_size(n_train)))

    def make_schedule(self, n_train: int):
        """The learning-rate schedule this configuration names, for ``n_train`` rows."""
        if self.schedule == "cyclic":
            return CyclicLR(self.eta_min, self.eta_max, self.resolved_step_size(n_train))
        if self.schedule == "constant":
            return ConstantLR(self.eta_max)
        if self.schedule == "cosine":
            return CosineAnnealingLR(self.eta_max, self.eta_min, self.total_steps(n_train))
        return OneCycleLR(self.eta_max, self.total_steps(n_train))

    def make_optimizer(self):
        """None (fit's built-in SGD with ``momentum``) or the named ``cbn.optim`` optimizer."""
        if self.optimizer == "adam":
            return optim.Adam()
        if self.optimizer == "adamw":
            return optim.AdamW(weight_decay=self.weight_decay)
        if self.optimizer == "lamb":
            return optim.Lamb(weight_decay=self.weight_decay)
        if self.optimizer == "lion":
            return optim.Lion(weight_decay=self.weight_decay)
        return None

    def make_augment(self) -> Optional[Augment]:
        """The ``cbn.Augment`` of ``hflip``, ``shift`` and ``noise``; None if none is set."""
        augment = Augment(hflip=self.hflip, shift=self.shift, noise=self.noise)
        return augment if augment.active else None

    def fit_options(self, n_train: int) -> dict:
        """The keywords of ``cbn.fit`` this configuration sets, for ``n_train`` rows (all but
        the data, seed, progress and checkpoint)."""
        schedule = self.make_schedule(n_train)
        length = (dict(epochs=self.epochs) if self.epochs is not None
                  else dict(cycles=self.cycles))
        eval_every = self.eval_every
        if self.eval_points is not None:
            eval_every = max(1, self.total_steps(n_train) // self.eval_points)
        return dict(lam=self.lam, batch_size=self.batch_size, schedule=schedule,
                    momentum=self.momentum, optimizer=self.make_optimizer(),
                    augment=self.make_augment(), eval_every=eval_every,
                    eval_train=self.eval_train, label_smoothing=self.label_smoothing,
                    mixup=self.mixup or None,
                    ema=EMA(self.ema, self.precise_bn, self.ema_every) if self.ema else None,
                    **length)


_OMITTED_AT_DEFAULT = dict(norm="auto", activation="relu", residual=False, expansion=None,
                           label_smoothing=0.0,
                           mixup=0.0, ema=0.0, ema_every=1, precise_bn=0,
                           bn_placement="before", dropout=0.0, epochs=None, schedule="cyclic",
                           optimizer="sgd", weight_decay=0.01, hflip=False, shift=0, noise=0.0,
                           eval_points=None, eval_train=True, tta=False)


@dataclass
class RunResult:
    """A trained network, its history and its final scores (accuracies are fractions)."""

    config: RunConfig
    seed: int
    net: Network
    history: History
    metrics: Dict[str, float] = field(default_factory=dict)


def run(data: CIFAR10, config: RunConfig = RunConfig(), seed: int = 0, *,
        progress: Optional[bool] = False, checkpoint: Optional[PathLike] = None,
        resume: Union[None, bool, PathLike] = None, verbose: int = 0,
        callbacks=None) -> RunResult:
    """Train one network on ``data.train`` (validating on ``data.val`` as it goes) and score
    it on all three splits in evaluation mode. ``seed`` fixes initialisation and shuffling;
    ``progress`` None shows a progress bar only on a terminal. ``checkpoint`` and ``resume``
    are ``fit``'s: a run stopped by Ctrl-C raises ``cbn.train.TrainingInterrupted`` after
    writing ``checkpoint``, and ``resume=True`` continues it bit for bit; its ``wall_time``
    then counts the training of every invocation. ``verbose`` and ``callbacks`` are
    ``fit``'s."""
    n_train = len(data.train)
    net = Network(data.train.images.shape[1], config.hidden, len(data.label_names),
                  init=config.init, dtype=np.dtype(config.dtype), seed=seed,
                  **config.network_options())
    options = config.fit_options(n_train)
    started = time.perf_counter()
    history = fit(net, data.train.images, data.train.labels, X_val=data.val.images,
                  y_val=data.val.labels, seed=seed, progress=progress,
                  normalization=data.normalization, checkpoint=checkpoint, resume=resume,
                  verbose=verbose, callbacks=callbacks, **options)
    # A resumed run's history carries the seconds of the invocations before this one.
    elapsed = max(time.perf_counter() - started, history.wall_time[-1] if history.wall_time
                  else 0.0)
    schedule = options["schedule"]
    metrics: Dict[str, float] = {"wall_time": elapsed,
                                 "step_size": getattr(schedule, "step_size", 0),
                                 **score(net, data, config.lam)}
    for split in ("val", "test") if config.tta else ():
        part = getattr(data, split)
        metrics[f"{split}_accuracy_one_view"] = metrics[f"{split}_accuracy"]
        probs = sum(net.predict_proba(images, normalization=data.normalization)
                    for images in (part.images, mirror(part.images)))
        metrics[f"{split}_accuracy"] = float(np.mean(probs.argmax(axis=1) == part.labels))
    return RunResult(config, seed, net, history, metrics)


def score(net: Network, data, lam: float) -> Dict[str, float]:
    """Accuracy, loss and cost (with ``lam``) of ``net`` on each split of ``data``, in
    evaluation mode: ``train_accuracy``, ``val_loss``, ``test_cost``, ..."""
    metrics: Dict[str, float] = {}
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        scores = net.evaluate(part.images, part.labels, lam, normalization=data.normalization)
        for what in ("accuracy", "loss", "cost"):
            metrics[f"{split}_{what}"] = scores[what]
    return metrics


def mean_std(values: List[float]) -> Dict[str, object]:
    """``{"mean", "std", "values"}`` over runs (std with ddof=0; 0 for a single run)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in arr]}


# --------------------------------------------------------------------------------------------
# Repeated runs
# --------------------------------------------------------------------------------------------

POINTS_PER_CYCLE = 10  # history points per learning-rate cycle, as in the course's plots
QUICK_STEP_SIZE = 10   # n_s under --quick: a cycle of 20 steps still runs every code path
QUICK_POINTS_PER_CYCLE = 4  # each point evaluates the whole training and validation sets


def with_eval_points(config: RunConfig, n_train: int,
                     points_per_cycle: int = POINTS_PER_CYCLE) -> RunConfig:
    """``config`` with ``eval_every`` set so the history has ``points_per_cycle`` points per
    cycle (one every 2 n_s / points steps; 450 steps = one epoch for the course's setting)."""
    cycle = 2 * config.resolved_step_size(n_train)
    return config.with_(eval_every=max(1, cycle // points_per_cycle))


class ExampleOptions(Protocol):
    """The options of an example that shape its runs (an example's parsed command line,
    ``cbn.lab.record.parse_example_args``, has them)."""

    dtype: str
    quick: bool


def example_config(options: ExampleOptions, n_train: int, **fields) -> RunConfig:
    """A RunConfig with ``fields`` and the example's ``options`` applied: ``dtype`` and
    POINTS_PER_CYCLE history points per cycle, or with ``quick`` short cycles (n_s =
    QUICK_STEP_SIZE) with QUICK_POINTS_PER_CYCLE points."""
    config = RunConfig(dtype=options.dtype, **fields)
    if options.quick:
        return with_eval_points(config.with_(step_size=QUICK_STEP_SIZE), n_train,
                                QUICK_POINTS_PER_CYCLE)
    return with_eval_points(config, n_train)


def setting_sentence(config: RunConfig, n_train: int, runs: int, seeds: Sequence[int]) -> str:
    """The training setting of an example's runs, for its summary: "λ = ..., η ∈ [...],
    batch ..., n_s = ..., ... cycles, dtype; N run(s) per configuration (seeds ...)"."""
    return (f"λ = {config.lam}, η ∈ [{config.eta_min:g}, {config.eta_max:g}], batch "
            f"{config.batch_size}, n_s = {config.resolved_step_size(n_train)}, "
            f"{config.cycles:g} cycles, {config.dtype}; {runs} run(s) per configuration "
            f"(seeds {', '.join(map(str, seeds))})")


def _data_identity(data: CIFAR10) -> Dict[str, object]:
    return {"source": data.source, "protocol": data.protocol,
            "sizes": [len(data.train), len(data.val), len(data.test)]}


def _saved_run(path: Path, data: CIFAR10, config: RunConfig, seed: int) -> Optional[RunResult]:
    """The run saved at ``path`` (.json + .npz) if it is this run on this data, else None."""
    try:
        saved = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if (saved.get("config") != config.as_dict() or saved.get("seed") != seed
                or saved.get("data") != _data_identity(data)):
            return None
        net = Network.load(path.with_suffix(".npz"))
        return RunResult(config, seed, net, History(**saved["history"]), saved["metrics"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        if check.from_newer_cbn(error):  # a newer cbn's run is kept, never redone over
            raise ValueError(f"{path.parent}: {error}; or choose another --out") from None
        return None  # missing, cut off by a kill, or from other code: run it again


def _save_run(path: Path, data: CIFAR10, result: RunResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.net.save(path.with_suffix(".npz"))
    write_text(path.with_suffix(".json"), json.dumps(json_ready({
        "config": result.config.as_dict(), "seed": result.seed, "data": _data_identity(data),
        "metrics": result.metrics, "history": result.history.as_dict()})))


def repeat(data: CIFAR10, config: RunConfig, seeds: Sequence[int], *, desc: str = "",
           saved: Optional[Path] = None, reuse_from: Optional[Path] = None,
           reused: Optional[List[int]] = None, progress: Optional[bool] = None,
           ) -> List[RunResult]:
    """``run(data, config, seed)`` for each seed in turn, with progress bars (one over the
    runs, one inside each run; ``progress`` None shows them only on a terminal), or where
    none is shown and stderr is not a terminal (a log file), one line per epoch.

    With ``saved`` (a folder), each finished run is kept there as ``seed<seed>.json`` (config,
    data, metrics, history) and ``.npz`` (the network), and a run already kept there, or in
    ``reuse_from``, for the same config, seed and data is loaded instead of trained again
    (and kept in ``saved``; its seed appended to ``reused``). The run in progress keeps a
    checkpoint there (``seed<seed>.checkpoint.npz``, written every epoch and on Ctrl-C, deleted
    when the run is kept), so an interrupted example continues that run bit for bit."""
    results = []
    disable = None if progress is None else not progress
    for seed in tqdm(list(seeds), desc=desc or "runs", unit="run", dynamic_ncols=True,
                     disable=disable):
        path = None if saved is None else Path(saved) / f"seed{seed}"
        result = None if path is None else _saved_run(path, data, config, seed)
        if result is None and path is not None and reuse_from is not None:
            result = _saved_run(Path(reuse_from) / f"seed{seed}", data, config, seed)
            if result is not None:
                _save_run(path, data, result)
        if result is None:
            # Where no bar shows (a log file), one line per epoch says how the run goes.
            lines = [] if progress or sys.stderr.isatty() else [
                EpochLines(f"{desc or 'run'}, seed {seed}")]
            result = _run_resumable(data, config, seed, progress, path, lines)
        else:
            print(f"{desc or 'run'}: reusing the finished run with seed {seed}",
                  file=sys.stderr)
            if reused is not None:
                reused.append(seed)
        results.append(result)
    return results


def _run_resumable(data: CIFAR10, config: RunConfig, seed: int, progress: Optional[bool],
                   path: Optional[Path], callbacks: list) -> RunResult:
    """``run``, kept at ``path`` (when given) and continued from its checkpoint there."""
    if path is None:
        return run(data, config, seed, progress=progress, callbacks=callbacks)
    checkpoint = path.with_name(path.name + CHECKPOINT_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = run(data, config, seed, progress=progress, checkpoint=checkpoint, resume=True,
                     callbacks=callbacks)
    except CheckpointError:  # of another configuration or data, or cut off: start afresh
        checkpoint.unlink(missing_ok=True)
        result = run(data, config, seed, progress=progress, checkpoint=checkpoint, resume=True,
                     callbacks=callbacks)
    _save_run(path, data, result)
    checkpoint.unlink(missing_ok=True)  # the finished run replaces it
    return result


# The checkpoint of a kept run still in progress: ``seed<seed>`` + this.
CHECKPOINT_SUFFIX = ".checkpoint.npz"


class Recorder(Protocol):
    """What ``run_configs`` records into: ``cbn.lab.record.ExampleRecord`` (which imports this
    module, so it is named here by what it does)."""

    def repeat(self, data: CIFAR10, config: RunConfig, seeds: Sequence[int],
               key: str) -> List[RunResult]: ...

    def add(self, key: str, entry: Mapping[str, object]) -> None: ...


def run_configs(data: CIFAR10, configs: Mapping[str, RunConfig], seeds: Sequence[int],
                record: Recorder) -> Dict[str, List[RunResult]]:
    """Run every configuration with every seed (the same seeds for each, so configurations
    are compared on equal draws), record each under its name; return the runs by name.
    Finished runs are kept in ``record.saved_runs(name)`` and reused on a rerun."""
    out = {}
    for key, config in configs.items():
        out[key] = record.repeat(data, config, seeds, key)
        record.add(key, summarize(out[key]))
    return out


def summarize(results: Sequence[RunResult], *, histories: bool = True) -> Dict[str, object]:
    """What results.json records for one configuration run with several seeds.

    Returns ``train/val/test_accuracy``, ``_loss`` and ``_cost`` as :func:`mean_std` dicts
    (accuracies are fractions), ``config`` (the RunConfig as a dict), ``runs`` (per seed: seed,
    wall time in seconds, step size and the final metrics) and, when ``histories``, the
    history of every run (``History.as_dict()``), from which every curve can be redrawn."""
    if not results:
        raise ValueError("results must hold at least one run")
    entry: Dict[str, object] = {}
    for split in ("train", "val", "test"):
        for what in ("accuracy", "loss", "cost"):
            key = f"{split}_{what}"
            entry[key] = mean_std([r.metrics[key] for r in results])
    entry["wall_time"] = mean_std([r.metrics["wall_time"] for r in results])
    entry["config"] = results[0].config.as_dict()
    entry["runs"] = [dict(seed=r.seed, **{k: float(v) for k, v in r.metrics.items()})
                     for r in results]
    if histories:
        entry["histories"] = [r.history.as_dict() for r in results]
    return entry


def bn_statistics_accuracy(net: Network, images: np.ndarray, labels: np.ndarray,
                           normalization, batch_sizes: Sequence[int] = (100, 10, 2),
                           ) -> Dict[str, float]:
    """Accuracy of a BN network on one split, by where the BN statistics come from.

    ``running`` -- the running averages kept during training (the correct test-time rule,
    ``net.predict_proba(X)``); ``never updated`` -- running statistics left at their initial
    mean 0, variance 1 (as if training never updated them); ``batch (whole split)`` -- the
    statistics of the whole split as one batch (``mode="train"``); ``batch of m`` --
    statistics of consecutive batches of m images, so every prediction depends on which
    images share its batch (a last batch of one image is left out). Fractions in [0, 1]."""
    if not net.batch_norm:
        raise ValueError("bn_statistics_accuracy needs a network with batch norm")
    out = {"running": net.accuracy(images, labels, normalization=normalization)}
    stale = net.copy()
    state = stale.state_dict()
    for name in stale.running_stats:
        state[name][...] = 0.0 if name.startswith("running_mean") else 1.0
    stale.load_state_dict(state)
    out["never updated"] = stale.accuracy(images, labels, normalization=normalization)
    whole = net.predict_proba(images, normalization=normalization, mode="train")
    out["batch (whole split)"] = float((whole.argmax(axis=1) == labels).mean())
    n = len(labels)
    for m in batch_sizes:
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise ValueError(f"batch_sizes must be integers >= 2, got {m!r}")
        correct = 0
        for start in range(0, n - 1, m):  # a last batch of one image has no batch variance
            stop = min(start + m, n)
            probs = net.predict_proba(images[start:stop], normalization=normalization,
                                      mode="train")
            correct += int((probs.argmax(axis=1) == labels[start:stop]).sum())
        scored = n - (n % m == 1)
        out[f"batch of {m}"] = correct / scored
    return out


GRADCHECK_NETWORKS = {"3-layer": (50, 50), "9-layer": (50, 30, 20, 20, 10, 10, 10, 10)}


def gradient_checks(data: CIFAR10, *, n: int = 10, dims: int = 20, lam: float = 0.005,
                    tolerance: float = 1e-6, seed: int = 0, dtype: str = "float64",
                    max_entries: Optional[int] = None,
                    networks: Mapping[str, Sequence[int]] = GRADCHECK_NETWORKS,
                    ) -> Dict[str, GradcheckResult]:
    """:func:`cbn.gradcheck` of every network in ``networks`` (name -> hidden widths), with
    and without BN, on the first ``n`` training images of ``data``, standardised, reduced to
    their first ``dims`` features (as the course suggests, to keep the finite differences
    cheap). Returns the results by ``"<name>/bn"`` and ``"<name>/no_bn"``."""
    n_train, d = data.train.images.shape
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= n_train:
        raise ValueError(f"n must be an integer in 2..{n_train}, got {n!r}")
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= d:
        raise ValueError(f"dims must be an integer in 1..{d}, got {dims!r}")
    X = np.ascontiguousarray(data.normalization.apply(data.train.images[:n], np.float64)[:, :dims])
    y = np.asarray(data.train.labels[:n])
    results = {}
    for name, hidden in networks.items():
        for bn in (False, True):
            net = Network(dims, hidden, len(data.label_names), batch_norm=bn, init="he",
                          dtype=np.dtype(dtype), seed=seed)
            results[f"{name}/{'bn' if bn else 'no_bn'}"] = gradcheck(
                net, X, y, lam, tolerance=tolerance, max_entries=max_entries, seed=seed)
    return results


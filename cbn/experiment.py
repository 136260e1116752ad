"""Experiments: one training run described by a config and scored on train/validation/test
(the unit the examples repeat and the hyper-parameter search distributes), repeated runs
summarised as mean +- std, and the plumbing every example shares: its command line, its data,
and the ``results.json`` / ``summary.md`` it writes with the run's provenance."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .data import CIFAR10, DataError, SampleDataWarning, load_or_sample
from .gradcheck import GradcheckResult, gradcheck
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
        progress: Optional[bool] = False) -> RunResult:
    """Train one network on ``data.train`` (validating on ``data.val`` as it goes) and score
    it on all three splits in evaluation mode. ``seed`` fixes initialisation and shuffling;
    ``progress`` None shows a progress bar only on a terminal."""
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
                  eval_every=config.eval_every, eval_train=True)
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


def example_config(args: argparse.Namespace, n_train: int, **fields) -> RunConfig:
    """A RunConfig with ``fields`` and the example options applied: ``--dtype`` and
    POINTS_PER_CYCLE history points per cycle, or under ``--quick`` short cycles (n_s =
    QUICK_STEP_SIZE) with QUICK_POINTS_PER_CYCLE points."""
    config = RunConfig(dtype=args.dtype, **fields)
    if args.quick:
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
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, cut off by a kill, or from other code: run it again


def _save_run(path: Path, data: CIFAR10, result: RunResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.net.save(path.with_suffix(".npz"))
    _write_text(path.with_suffix(".json"), json.dumps(json_ready({
        "config": result.config.as_dict(), "seed": result.seed, "data": _data_identity(data),
        "metrics": result.metrics, "history": result.history.as_dict()})))


def repeat(data: CIFAR10, config: RunConfig, seeds: Sequence[int], *, desc: str = "",
           saved: Optional[Path] = None, reuse_from: Optional[Path] = None,
           reused: Optional[List[int]] = None, progress: Optional[bool] = None,
           ) -> List[RunResult]:
    """``run(data, config, seed)`` for each seed in turn, with progress bars (one over the
    runs, one inside each run; ``progress`` None shows them only on a terminal).

    With ``saved`` (a folder), each finished run is kept there as ``seed<seed>.json`` (config,
    data, metrics, history) and ``.npz`` (the network), and a run already kept there, or in
    ``reuse_from``, for the same config, seed and data is loaded instead of trained again
    (and kept in ``saved``; its seed appended to ``reused``), so an interrupted or repeated
    example resumes where it stopped."""
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
            result = run(data, config, seed, progress=progress)
            if path is not None:
                _save_run(path, data, result)
        else:
            print(f"{desc or 'run'}: reusing the finished run with seed {seed}",
                  file=sys.stderr)
            if reused is not None:
                reused.append(seed)
        results.append(result)
    return results


def run_configs(data: CIFAR10, configs: Mapping[str, RunConfig], seeds: Sequence[int],
                record: "ExampleRecord") -> Dict[str, List[RunResult]]:
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


# --------------------------------------------------------------------------------------------
# What every example shares: command line, data, provenance, output files
# --------------------------------------------------------------------------------------------


def example_parser(name: str, description: str, *, runs: Optional[int] = 3,
                   dtype: str = "float32") -> argparse.ArgumentParser:
    """The options every example takes: ``--data``, ``--protocol``, ``--out`` (default
    ``results/<name>``, or ``results/<name>-quick`` with ``--quick``), ``--seed``,
    ``--dtype``, ``--quick``, ``--blas-threads``, ``--no-progress`` and, when ``runs`` is
    given, ``--runs`` (default ``runs``, 1 under ``--quick``)."""
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=description,
        epilog="The results are written into OUT.partial and replace OUT only when the "
               "example finishes, so OUT always holds one whole run. Finished training runs "
               "are kept in OUT/runs (and OUT.partial/runs) and reused when the example is "
               "run again with the same options; delete both to train everything again.")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="the cifar-10-batches-py folder (or its parent); without it the "
                             "usual places are searched, then the shipped sample is used "
                             "with a notice")
    parser.add_argument("--protocol", choices=("full", "seed"), default="full",
                        help="full: 45,000 train / 5,000 val from data_batch_1..5; seed: "
                             "train on data_batch_1, validate on data_batch_2 (default full)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"output folder (default results/{name}, or "
                             f"results/{name}-quick with --quick)")
    parser.add_argument("--seed", type=int, default=0,
                        help="first seed; run i uses seed + i (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=dtype,
                        help=f"precision of training (default {dtype})")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (short cycles, 1 run) that exercises every code "
                             "path; its numbers mean nothing")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="limit BLAS to N threads (threadpoolctl; default: the BLAS "
                             "default). 1 is fastest on a machine busy with other work, where "
                             "spinning BLAS threads slow the small mini-batch products down")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are shown only on a terminal anyway)")
    if runs is not None:
        parser.add_argument("--runs", type=int, default=None,
                            help=f"runs (seeds) per configuration (default {runs}, "
                                 "1 with --quick)")
        parser.set_defaults(default_runs=runs)
    parser.set_defaults(example_name=name)
    return parser


def parse_example_args(parser: argparse.ArgumentParser,
                       argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the shared options; resolves ``out`` and ``runs`` (``--quick`` means
    1 run), sets ``progress`` (False, or None: only on a terminal) and applies
    ``--blas-threads``."""
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out is None:
        args.out = str(Path("results") / (args.example_name + ("-quick" if args.quick else "")))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out must be a folder, but {args.out} is a file")
    args.progress = False if args.no_progress else None
    if args.blas_threads is not None:
        if args.blas_threads < 1:
            parser.error(f"--blas-threads must be >= 1, got {args.blas_threads}")
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.blas_threads)  # for the rest of the process
    if hasattr(args, "default_runs"):
        if args.runs is None:
            args.runs = 1 if args.quick else args.default_runs
        if args.runs < 1:
            parser.error(f"--runs must be >= 1, got {args.runs}")
    return args


def show_progress(args: argparse.Namespace) -> bool:
    """Whether the example's progress bars show: on a terminal, unless ``--no-progress``."""
    return args.progress is None and sys.stderr.isatty()


SAMPLE_NOTICE = ("notice: no CIFAR-10 found (give --data DIR, set $CBN_DATA, or download "
                 "it); using the small sample shipped with cbn, whose accuracies are not "
                 "comparable with the full data set's")


def open_data(path: Optional[str], protocol: str = "full", *,
              download: bool = False, prog: str = "cbn") -> CIFAR10:
    """:func:`cbn.data.load_or_sample` for a command line: the fallback to the shipped
    sample is announced as one plain line on stderr (``<prog>: notice: ...``) rather than
    as a Python warning. Errors propagate (FileNotFoundError, DataError, ValueError)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SampleDataWarning)
        data = load_or_sample(path, protocol=protocol, download=download)
    for warning in caught:
        if issubclass(warning.category, SampleDataWarning):
            print(f"{prog}: {SAMPLE_NOTICE}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    return data


def load_data(args: argparse.Namespace) -> CIFAR10:
    """The data the options name (:func:`open_data`: the shipped sample, announced on
    stderr, when no CIFAR-10 is found), with a one-line description printed.

    A ``--data`` folder that does not hold CIFAR-10 ends the program with the loader's
    message (exit status 1) rather than silently falling back to the sample."""
    prog = getattr(args, "example_name", "cbn")
    try:
        data = open_data(args.data, protocol=args.protocol, prog=prog)
    except (FileNotFoundError, DataError) as exc:
        raise SystemExit(f"{prog}: error: {exc}") from None
    print(f"data: {data.source} (protocol {data.protocol}): {len(data.train)} train, "
          f"{len(data.val)} val, {len(data.test)} test images", file=sys.stderr)
    return data


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, object]:
    """Where a result was measured: platform, CPU, cores, Python and library versions, and
    the BLAS libraries in use with their thread counts (``threadpoolctl``)."""
    import scipy
    from threadpoolctl import threadpool_info

    from . import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    return {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cbn": __version__,
        "blas": [{k: pool.get(k) for k in keys} for pool in threadpool_info()],
    }


def _load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages: other work on the machine slows every run, so
    wall times are only comparable with this in view. None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def json_ready(value):
    """Replace non-finite floats (a diverged loss) by None so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return json_ready(value.item())
    return value


def data_description(data: CIFAR10) -> str:
    """The data set in a few words, for figure titles: "CIFAR-10, full protocol (45000 /
    5000 / 10000)" or "CIFAR-10 shipped sample (2000 / 500 / 1000)"."""
    sizes = f"{len(data.train)} / {len(data.val)} / {len(data.test)}"
    if data.source == "sample":
        return f"CIFAR-10 shipped sample ({sizes})"
    return f"CIFAR-10, {data.protocol} protocol ({sizes})"


class ExampleRecord:
    """The results of one example run and their provenance, written as ``results.json``
    (configuration name -> metrics, plus ``"meta"``) and ``summary.md``.

    Everything is written into ``folder`` (``<out>.partial``), which replaces ``out`` only
    when :meth:`write` finishes, so ``out`` never mixes two runs and an interrupted run
    leaves it as it was (its finished training runs wait in ``folder`` to be reused).

    ``meta`` holds the example's name, the exact command line, the seeds, whether it was a
    ``--quick`` run, the data source, protocol and split sizes, the machine
    (:func:`machine_info`), start and end times (UTC) with the load averages then, the wall
    time of this invocation, the wall time of each training run (``run_wall_times``,
    including runs reused from an earlier invocation) and their sum (``training_time``), and
    the figures written."""

    def __init__(self, name: str, args: argparse.Namespace, data: CIFAR10) -> None:
        self.name = name
        self.out = Path(args.out)
        self.folder = self.out.with_name(self.out.name + ".partial")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.quick = bool(getattr(args, "quick", False))
        self.data = data
        self.entries: Dict[str, object] = {}
        self.figures: List[str] = []
        self.progress: Optional[bool] = getattr(args, "progress", None)
        self._kept_runs: set = set()
        self._other_times: Dict[str, List[Dict[str, float]]] = {}
        self._started = time.perf_counter()
        options = {k: v for k, v in vars(args).items()
                   if k not in ("default_runs", "example_name")}
        self.meta: Dict[str, object] = {
            "example": name,
            "quick": self.quick,
            "command": shlex.join([sys.executable] + sys.argv),
            "cwd": os.getcwd(),
            "options": options,
            "data": {"source": data.source, "protocol": data.protocol,
                     "train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "machine": machine_info(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": _load_average(),
        }

    def add(self, key: str, entry: Mapping[str, object]) -> None:
        """Record one configuration's metrics under ``key`` (e.g. ``"sigma=1e-3/bn"``)."""
        if key == "meta":
            raise ValueError("'meta' is reserved for the provenance entry")
        self.entries[key] = dict(entry)

    def repeat(self, data: CIFAR10, config: RunConfig, seeds: Sequence[int],
               key: str) -> List[RunResult]:
        """:func:`repeat` for configuration ``key``, keeping its finished runs in
        ``runs/<key>`` (reusing those of an earlier invocation with the same options, in
        ``folder`` or ``out``) and noting the reused runs in ``meta["reused_runs"]``."""
        reused: List[int] = []
        sub = Path("runs") / key.replace("/", "_").replace("=", "")
        results = repeat(data, config, seeds, desc=key, saved=self.folder / sub,
                         reuse_from=self.out / sub, reused=reused, progress=self.progress)
        self._kept_runs.update(sub / f"seed{seed}{ext}" for seed in seeds
                               for ext in (".json", ".npz"))
        if reused:
            self.meta.setdefault("reused_runs", {})[key] = reused
        return results

    def caption(self, seeds: Optional[Sequence[int]] = None, *,
                runs: Optional[str] = None) -> str:
        """What every figure's title states: data set, protocol, the seeds (or ``runs``, a
        description of them), and "QUICK run" under ``--quick``."""
        if runs is None:
            seeds = list(seeds) if seeds is not None else [self.meta["options"].get("seed", 0)]
            runs = (f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                    f"({', '.join(map(str, seeds))})")
        text = f"{data_description(self.data)}; {runs}"
        return text + "\nQUICK run (tiny budget)" if self.quick else text

    def figure(self, filename: str) -> Path:
        """The path to save a figure called ``filename`` (a PNG), remembered for the summary
        and the report."""
        self.figures.append(filename)
        return self.folder / filename

    def note_run_times(self, key: str, runs: Sequence[Mapping[str, float]]) -> None:
        """Add the wall times of runs made outside :meth:`repeat` (e.g. search trials:
        ``seed`` and ``wall_time`` each) to ``meta["run_wall_times"]``."""
        self._other_times[key] = [{"seed": r["seed"], "wall_time": r["wall_time"]}
                                  for r in runs]

    def _run_times(self) -> Dict[str, List[Dict[str, float]]]:
        """Wall time of each run by configuration (as measured when it was trained)."""
        times = {}
        for key, entry in self.entries.items():
            runs = entry.get("runs") if isinstance(entry, dict) else None
            if runs:
                times[key] = [{"seed": r["seed"], "wall_time": r["wall_time"]} for r in runs]
        return times

    def _drop_stale_runs(self) -> None:
        """Delete the kept runs this invocation did not use (other seeds or options)."""
        runs = self.folder / "runs"
        if not runs.is_dir():
            return
        for path in sorted(runs.rglob("*"), reverse=True):  # files before their folders
            if path.is_file() and path.relative_to(self.folder) not in self._kept_runs:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    def write(self, summary: str) -> Path:
        """Write ``results.json`` and ``summary.md`` (``summary`` plus the provenance lines
        and the figures), replace ``out`` with the finished folder, and print the summary on
        stdout; return the path of results.json."""
        meta = dict(self.meta)
        meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta["load_average_end"] = _load_average()
        meta["wall_time"] = time.perf_counter() - self._started
        own = self._run_times()
        meta["seeds"] = sorted({r["seed"] for runs in own.values() for r in runs}) \
            or [meta["options"].get("seed")]
        meta["run_wall_times"] = {**own, **self._other_times}
        meta["training_time"] = sum(r["wall_time"] for runs in meta["run_wall_times"].values()
                                    for r in runs)
        meta["figures"] = list(self.figures)
        document = dict(self.entries)
        document["meta"] = meta
        text = json.dumps(json_ready(document), indent=1, allow_nan=False)
        _write_text(self.folder / "results.json", text + "\n")
        data = meta["data"]
        title, _, body = summary.strip().partition("\n")
        lines = [title + " (QUICK run)" if self.quick else title]
        if self.quick:
            lines += ["", "**Quick run** (`--quick`): a tiny budget that only exercises the "
                          "code; these numbers say nothing about the method."]
        lines += [body.rstrip(), ""]
        lines += [f"![{Path(f).stem}]({f})" for f in self.figures]
        trained = (f"Training time (all runs): {meta['training_time']:.1f} s. "
                   if meta["run_wall_times"] else "")
        lines += ["", f"Data: {data['source']} (protocol {data['protocol']}; {data['train']} "
                      f"train / {data['val']} val / {data['test']} test). Seeds: "
                      f"{', '.join(map(str, meta['seeds']))}. {trained}This invocation: "
                      f"{meta['wall_time']:.1f} s on {meta['machine']['cpu']} "
                      f"({meta['machine']['cores']} cores).",
                  f"Command: `{meta['command']}`", ""]
        text = "\n".join(lines)
        _write_text(self.folder / "summary.md", text)
        self._drop_stale_runs()
        _replace_folder(self.folder, self.out)
        print(text)
        print(f"wrote {self.out / 'results.json'}, {self.out / 'summary.md'} and "
              f"{len(self.figures)} figure(s)", file=sys.stderr)
        return self.out / "results.json"


def _replace_folder(new: Path, old: Path) -> None:
    """Put folder ``new`` in the place of ``old`` (moved aside, then deleted)."""
    aside = None
    if old.exists():
        aside = old.with_name(old.name + ".old")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(old, aside)
    os.replace(new, old)
    if aside is not None:
        shutil.rmtree(aside)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

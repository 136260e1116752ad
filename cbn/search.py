"""Random hyper-parameter search over :class:`cbn.experiment.RunConfig` fields: reproducible,
resumable, and run on local processes or any ``concurrent.futures.Executor`` (a Dask cluster
included) without changes.

Usage::

    from cbn.experiment import RunConfig
    from cbn.plots import plot_search
    from cbn.search import Choice, DataSpec, LogUniform, best, refine, search, write_csv

    if __name__ == "__main__":        # worker processes re-import this script
        data = DataSpec("~/data/cifar-10-batches-py", protocol="full", val_size=5000)
        space = {"lam": LogUniform(1e-5, 1e-1), "hidden": Choice([(50, 50), (100, 100)])}
        coarse = search(data, space, 20, base=RunConfig(cycles=2), seed=0,
                        results="coarse.jsonl")    # the same call again resumes it
        fine = search(data, refine(space, coarse, top=3), 20, base=RunConfig(cycles=2),
                      seed=1, results="fine.jsonl")
        print(best(coarse + fine))                 # the record with the best val_accuracy
        write_csv(coarse + fine, "search.csv"); plot_search(coarse + fine, "search.png")

On a Dask cluster, pass ``executor=dask.distributed.Client(address).get_executor()``.
:func:`coarse_to_fine` runs the search/refine loop in one call.

Every trial is one :func:`cbn.experiment.run`. Trial ``i``'s hyper-parameters and training
seed come from ``numpy.random.SeedSequence(seed, spawn_key=(i,))`` alone, and every trial
runs with the same number of BLAS threads (``blas_threads``, default 1) wherever it runs, so
serial, process and Dask searches give the same table bit for bit (except ``wall_time``).

Workers get a small :class:`DataSpec`, not the images, and load the data once per process.

A record (one row of the table) is a flat dict: ``trial``, ``seed``, ``status`` ("ok" or
"failed"), every RunConfig field (``hidden`` as a list), ``data_source``, then for "ok"
trials the metrics of ``run`` (``train/val/test_accuracy`` as fractions, ``*_loss``,
``*_cost``, ``wall_time`` in seconds, ``resolved_step_size``) and ``error`` (None, or
"ExceptionType: message" for a failed trial, which has no metrics).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import threading
import typing
from concurrent.futures import (Executor, FIRST_COMPLETED, ProcessPoolExecutor,
                                ThreadPoolExecutor, wait)
from dataclasses import dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import _validate as check
from .data import CIFAR10, PROTOCOLS, load_or_sample, load_sample
from .experiment import RunConfig, run

__all__ = [
    "LogUniform", "Uniform", "Choice", "DataSpec", "Trial", "sample_trials", "run_trial",
    "search", "best", "refine", "coarse_to_fine", "write_csv", "write_json",
    "default_workers",
]

PathLike = Union[str, os.PathLike]
FORMAT_VERSION = 1  # of the JSON-lines results file


# --------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------

def _config_fields() -> Dict[str, tuple]:
    """RunConfig field name -> the types its hint allows (``Optional[int]`` -> (int, None))."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: typing.get_args(hints[f.name]) or (hints[f.name],) for f in fields(RunConfig)}


_FIELD_TYPES = _config_fields()
# Fields a numeric range may be drawn for; those without float get rounded samples.
_NUMERIC = {name for name, types in _FIELD_TYPES.items() if int in types or float in types}
_INTEGER = {name for name in _NUMERIC if float not in _FIELD_TYPES[name]}


def _plain(value):
    """``value`` as JSON would give it back: tuples become lists, numpy scalars Python ones."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


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
        seen = [_plain(v) for v in values]
        return Choice([o for o in self.options if _plain(o) in seen])

    def as_dict(self) -> dict:
        return {"dist": "Choice", "options": _plain(self.options)}


Distribution = Union[LogUniform, Uniform, Choice]


def _check_space(space) -> Dict[str, Distribution]:
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
    space = _check_space(space)
    n_trials = check.integer("n_trials", n_trials, low=1)
    seed = check.integer("seed", seed, low=0)
    if not isinstance(base, RunConfig):
        raise TypeError(f"base must be a cbn.experiment.RunConfig, got {type(base).__name__}")
    trials = []
    for index in range(n_trials):
        params_seq, run_seq = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
        rng = np.random.default_rng(params_seq)
        params = {}
        for name, dist in space.items():
            value = dist.sample(rng)
            params[name] = int(round(value)) if name in _INTEGER and \
                not isinstance(dist, Choice) else _plain(value)
        trials.append(Trial(index, int(run_seq.generate_state(1)[0]), params,
                            base.with_(**params)))
    return trials


# --------------------------------------------------------------------------------------------
# Data: a small picklable spec, loaded once per worker process
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """Where a worker finds the data: the arguments of :func:`cbn.data.load_or_sample`, or
    ``root="sample"`` for the sample shipped with cbn (:func:`cbn.data.load_sample`).

    ``root`` None searches the usual places *on the worker* (and falls back to the sample
    with a warning there; each record's ``data_source`` says what was used)."""

    root: Optional[str] = None
    protocol: str = "full"
    val_size: int = 5000

    def __post_init__(self) -> None:
        if self.root is not None:
            if not isinstance(self.root, (str, os.PathLike)):
                raise TypeError(f"root must be a path, 'sample' or None, got {self.root!r}")
            object.__setattr__(self, "root", os.fspath(self.root))
        check.choice("protocol", self.protocol, PROTOCOLS)
        check.integer("val_size", self.val_size, low=1)

    def load(self) -> CIFAR10:
        if self.root == "sample":
            return load_sample()
        return load_or_sample(self.root, protocol=self.protocol, val_size=self.val_size)

    def as_dict(self) -> dict:
        return {"root": self.root, "protocol": self.protocol, "val_size": self.val_size}


# One data set per process: a worker serves one search at a time, and a second entry would
# double its memory (138 MB of training images for the full set).
_cache: Dict[DataSpec, CIFAR10] = {}
_cache_lock = threading.Lock()


def _cached(spec: DataSpec) -> CIFAR10:
    with _cache_lock:
        if spec not in _cache:
            _cache.clear()
            _cache[spec] = spec.load()
        return _cache[spec]


def _data_argument(data, executor) -> tuple:
    """(what the trial function gets, the data's identity for the results file header)."""
    if isinstance(data, CIFAR10):
        if not (executor == "serial" or isinstance(executor, ThreadPoolExecutor)):
            raise TypeError("an in-memory CIFAR10 is only accepted with executor='serial' (or a "
                            "ThreadPoolExecutor); give worker processes a DataSpec, e.g. "
                            "DataSpec(root, protocol=..., val_size=...) or 'sample'")
        n = (len(data.train), len(data.val), len(data.test))
        return data, {"source": data.source, "protocol": data.protocol, "sizes": list(n)}
    if isinstance(data, (str, os.PathLike)):
        data = DataSpec(data)
    if not isinstance(data, DataSpec):
        raise TypeError(f"data must be a DataSpec, a path, 'sample' or a loaded CIFAR10, got "
                        f"{type(data).__name__}")
    return data, data.as_dict()


# --------------------------------------------------------------------------------------------
# Running one trial (this is what workers execute)
# --------------------------------------------------------------------------------------------

def run_trial(trial: Trial, data: Union[DataSpec, CIFAR10], blas_threads: int = 1) -> dict:
    """Run one trial with ``blas_threads`` BLAS threads and return its record.

    An exception raised by training (e.g. ``DivergenceError``, a bad value such as a negative
    lambda) is recorded as a failed trial; one raised while loading the data propagates, so a
    setup problem stops the search instead of marking every trial failed."""
    loaded = data if isinstance(data, CIFAR10) else _cached(data)
    record = {"trial": trial.index, "seed": trial.seed, "status": "ok",
              **trial.config.as_dict(), "data_source": loaded.source}
    try:
        with threadpool_limits(limits=blas_threads):
            metrics = dict(run(loaded, trial.config, trial.seed).metrics)
    except Exception as exc:  # the trial's own failure: keep it in the table
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return record
    # run() reports the n_s it used as "step_size"; the config's step_size may be None.
    metrics["resolved_step_size"] = metrics.pop("step_size")
    record.update({k: _plain(v) for k, v in metrics.items()}, error=None)
    return record


def default_workers(blas_threads: int = 1) -> int:
    """Worker processes such that workers x BLAS threads does not exceed the usable cores."""
    blas_threads = check.integer("blas_threads", blas_threads, low=1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // blas_threads)


@contextlib.contextmanager
def _executor(executor, max_workers: Optional[int], blas_threads: int,
              n_tasks: int) -> Iterator[Optional[Executor]]:
    """The executor to submit to (None: run serially here); a pool made here is shut down."""
    if isinstance(executor, Executor):
        yield executor
        return
    if executor not in (None, "processes", "serial"):
        raise ValueError(f"executor must be 'processes' (the default), 'serial' or a "
                         f"concurrent.futures.Executor, got {executor!r}")
    if executor == "serial" or n_tasks == 0:
        yield None
        return
    workers = default_workers(blas_threads) if max_workers is None else max_workers
    # spawn, not fork: a forked child inherits the parent's BLAS thread pools mid-state.
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, n_tasks)),
                               mp_context=get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute(pool: Optional[Executor], trials: List[Trial], data,
             blas_threads: int) -> Iterator[dict]:
    """Yield the trials' records as they finish."""
    if pool is None:
        for trial in trials:
            yield run_trial(trial, data, blas_threads)
        return
    pending = {pool.submit(run_trial, trial, data, blas_threads) for trial in trials}
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()  # a worker crash or data error ends the search here
    finally:
        for future in pending:  # interrupted: do not start what is still queued
            future.cancel()


# --------------------------------------------------------------------------------------------
# The results file: a header line, then one JSON line per finished trial
# --------------------------------------------------------------------------------------------

def _differences(saved: dict, wanted: dict) -> List[str]:
    return [f"{str(key)[:40]}: file has {check.short_repr(saved.get(key))}, this "
            f"search {check.short_repr(wanted.get(key))}"
            for key in sorted(set(saved) | set(wanted), key=str)[:50]
            if saved.get(key) != wanted.get(key)]


# What an "ok" record holds beyond its configuration: the metrics of one run.
_METRICS = ("wall_time", "resolved_step_size") + tuple(
    f"{split}_{what}" for split in ("train", "val", "test")
    for what in ("accuracy", "loss", "cost"))


class _ResultsFile:
    """Append-only JSON-lines log of a search, flushed and synced per trial.

    Line 1 is the header identifying the search (seed, space, base config, data); each
    further line is one finished trial's record. A last line cut off by a kill is dropped
    (that trial runs again). Read and written as bytes, so the offsets that drop the cut-off
    line are exact whatever the line ends (``\\n`` or ``\\r\\n``)."""

    def __init__(self, path: PathLike, header: dict) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))
        self._file = None

    def resume(self, trials: List[Trial]) -> Dict[int, dict]:
        """Open the file (creating it with the header if new or empty); return the saved
        records of ``trials`` by index, after checking every one of them (before any trial
        runs) and that they belong to this search. Errors name the file and the line."""
        raw = self.path.read_bytes() if self.path.exists() else b""
        complete = raw[:raw.rfind(b"\n") + 1]  # whole lines only
        lines = complete.split(b"\n")[:-1]
        if not any(line.strip() for line in lines):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")
            self.append(self.header)
            return {}
        saved = [self._parse(number, line) for number, line in enumerate(lines, 1)]
        head = saved[0]
        if not isinstance(head, dict) or head.get("cbn_search") != FORMAT_VERSION:
            raise ValueError(f"{self.path} is not a cbn search results file (version "
                             f"{FORMAT_VERSION}); choose another results path")
        diff = _differences(head, self.header)
        if diff:
            raise ValueError(f"{self.path} holds a different search ({'; '.join(diff)}); "
                             "use another results path to start this one")
        done = {}
        for number, record in enumerate(saved[1:], 2):
            index = _check_record(f"{self.path}, line {number}", record)
            if index < len(trials):
                _check_matches(self.path, record, trials[index])
                done[index] = record
        self._file = open(self.path, "r+b")
        self._file.truncate(len(complete))  # drop a cut-off last line
        self._file.seek(0, os.SEEK_END)
        return done

    def _parse(self, number: int, line: bytes):
        try:
            return json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path}, line {number}: not UTF-8 text (byte "
                             f"{line[exc.start]:#04x} at column {exc.start + 1}); not a cbn "
                             "search results file, or damaged") from None
        except (ValueError, RecursionError):  # JSONDecodeError, too deep, too many digits
            raise ValueError(f"{self.path}: line {number} is not JSON; not a cbn search "
                             "results file, or damaged") from None

    def append(self, record: dict) -> None:
        self._file.write((json.dumps(record) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _check_record(where: str, record) -> int:
    """A saved trial record's index, after checking it is one ``run_trial`` makes: a trial
    index, a status, and for "ok" every metric as a finite number."""
    index = record.get("trial") if isinstance(record, dict) else None
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{where}: a line without a trial index: {check.short_repr(record)}")
    status = record.get("status")
    if status not in ("ok", "failed"):
        raise ValueError(f"{where}: trial {index} has status {check.short_repr(status)}, "
                         "not 'ok' or 'failed'")
    if status == "ok":
        bad = [key for key in _METRICS
               if isinstance(record.get(key), bool) or not isinstance(record.get(key), (int, float))
               or not math.isfinite(record[key])]
        if bad:
            raise ValueError(f"{where}: trial {index} is 'ok' but lacks finite {', '.join(bad)}")
    return index


def _check_matches(path: Path, record: dict, trial: Trial) -> None:
    wanted = {"seed": trial.seed, **trial.config.as_dict()}
    diff = _differences({k: record.get(k) for k in wanted}, wanted)
    if diff:
        raise ValueError(f"{path}: trial {trial.index} was run with other settings "
                         f"({'; '.join(diff)}); the file belongs to a different search")


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

def search(data: Union[DataSpec, PathLike, CIFAR10], space: Mapping[str, Distribution],
           n_trials: int, *, base: RunConfig = RunConfig(), seed: int = 0,
           executor: Union[None, str, Executor] = None, max_workers: Optional[int] = None,
           blas_threads: int = 1, results: Optional[PathLike] = None,
           progress: bool = True) -> List[dict]:
    """Run a random search and return one record per trial, ordered by trial index.

    Parameters
    ----------
    data : a :class:`DataSpec`, a path or "sample" (shorthand for ``DataSpec(data)``), or,
        with ``executor="serial"`` or a ThreadPoolExecutor only, a loaded ``CIFAR10``.
    space : RunConfig field name -> ``LogUniform``, ``Uniform`` or ``Choice``; the other
        fields come from ``base``. Integer fields (step_size, batch_size) get rounded draws.
    n_trials : trials to run, >= 1.
    seed : search seed (int >= 0); fixes every trial's hyper-parameters and training seed.
    executor : "processes" (default; local worker processes, ``max_workers`` of them, by
        default :func:`default_workers`), "serial" (this process), or any
        ``concurrent.futures.Executor`` (e.g. Dask's ``client.get_executor()``; give Dask
        workers one thread each, ``threads_per_worker=1``, since BLAS limits are per process),
        left open.
    blas_threads : BLAS threads per trial, in every mode (same count -> same bits).
    results : JSON-lines file to save trials to as they finish; an existing file from the
        same search is resumed (finished and failed trials are not rerun), one from another
        search is refused with ValueError.
    progress : show a tqdm bar over trials.

    A trial whose training raises is recorded with ``status="failed"`` and its ``error``;
    an error outside training (data not found, worker crash, Ctrl-C) stops the search, with
    the finished trials saved.
    """
    seed = check.integer("seed", seed, low=0)
    trials = sample_trials(space, n_trials, base=base, seed=seed)
    blas_threads = check.integer("blas_threads", blas_threads, low=1)
    if max_workers is not None:
        max_workers = check.integer("max_workers", max_workers, low=1)
    trial_data, data_identity = _data_argument(data, executor)
    header = {"cbn_search": FORMAT_VERSION, "seed": seed, "data": data_identity,
              "space": {name: dist.as_dict() for name, dist in _check_space(space).items()},
              "base": base.as_dict()}
    store = _ResultsFile(results, header) if results is not None else None
    done = store.resume(trials) if store is not None else {}
    todo = [t for t in trials if t.index not in done]
    bar = tqdm(total=len(trials), initial=len(done), disable=not progress, unit="trial",
               desc="search", dynamic_ncols=True)
    try:
        # Also limits the threads of trials run in this process (serial, thread pools, Dask
        # with processes=False), where per-trial limits of concurrent threads would race.
        with threadpool_limits(limits=blas_threads), \
                _executor(executor, max_workers, blas_threads, len(todo)) as pool:
            for record in _execute(pool, todo, trial_data, blas_threads):
                done[record["trial"]] = record
                if store is not None:
                    store.append(record)
                bar.update(1)
                scores = [r["val_accuracy"] for r in done.values() if r["status"] == "ok"]
                if scores:
                    bar.set_postfix(best_val=f"{max(scores):.4f}", refresh=False)
    finally:
        bar.close()
        if store is not None:
            store.close()
    return [done[t.index] for t in trials]


def _ok(records: Sequence[dict]) -> List[dict]:
    return [r for r in records if r.get("status") == "ok"]


def best(records: Sequence[dict], key: str = "val_accuracy") -> dict:
    """The successful record with the highest ``key`` (the earliest trial on ties)."""
    ok = _ok(records)
    if not ok:
        raise ValueError("records holds no successful trial to pick from")
    if key not in ok[0]:
        raise ValueError(f"key {key!r} is not in the records; they have {list(ok[0])}")
    return max(ok, key=lambda r: r[key])  # max keeps the first of equal maxima


def refine(space: Mapping[str, Distribution], records: Sequence[dict], *, top: int = 5,
           pad: float = 0.1, key: str = "val_accuracy") -> Dict[str, Distribution]:
    """A narrower space around the ``top`` successful trials by ``key``.

    Each range becomes the span of the top trials' values widened by ``pad`` x its old width
    on each side (log space for LogUniform), clipped to the old range; a Choice keeps the
    options the top trials used."""
    space = _check_space(space)
    top = check.integer("top", top, low=1)
    pad = check.real("pad", pad, low=0.0, low_open=True)
    ok = _ok(records)
    if not ok:
        raise ValueError("records holds no successful trial to refine around")
    chosen = sorted(ok, key=lambda r: -r[key])[:top]  # stable: earlier trials win ties
    narrowed = {}
    for name, dist in space.items():
        if any(name not in r for r in chosen):
            raise ValueError(f"records have no {name!r}; were they made with this space?")
        narrowed[name] = dist.narrow([r[name] for r in chosen], pad)
    return narrowed


def _round_path(results: Optional[PathLike], r: int) -> Optional[Path]:
    if results is None:
        return None
    path = Path(results)
    return path.with_name(f"{path.stem}.round{r}{path.suffix}")


def coarse_to_fine(data: Union[DataSpec, PathLike, CIFAR10], space: Mapping[str, Distribution],
                   n_trials: int, *, rounds: int = 2, top: int = 5, pad: float = 0.1,
                   base: RunConfig = RunConfig(), seed: int = 0,
                   executor: Union[None, str, Executor] = None,
                   max_workers: Optional[int] = None, blas_threads: int = 1,
                   results: Optional[PathLike] = None, progress: bool = True) -> List[dict]:
    """``rounds`` searches of ``n_trials`` each, every one in the space :func:`refine` makes
    from the previous round's records; returns all records, each with its ``round``.

    Round r uses seed ``seed + r`` and saves to ``<results stem>.round<r><suffix>`` (e.g.
    ``lam.round0.jsonl``), so the whole run resumes like :func:`search`. Other arguments as
    in :func:`search` and :func:`refine`."""
    rounds = check.integer("rounds", rounds, low=1)
    space = _check_space(space)
    check.integer("top", top, low=1)
    check.real("pad", pad, low=0.0, low_open=True)
    _data_argument(data, executor)  # reject bad data before any pool starts
    everything: List[dict] = []
    with _executor(executor, max_workers, blas_threads, n_trials) as pool:
        for r in range(rounds):
            records = search(data, space, n_trials, base=base, seed=seed + r,
                             executor="serial" if pool is None else pool,
                             blas_threads=blas_threads, results=_round_path(results, r),
                             progress=progress)
            everything += [{"round": r, **record} for record in records]
            if r + 1 < rounds:
                space = refine(space, records, top=top, pad=pad)
    return everything


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _columns(records: Sequence[dict]) -> List[str]:
    columns: Dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return list(columns)


def _write_atomically(path: PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(records: Sequence[dict], path: PathLike) -> None:
    """Write the records as CSV: one column per key seen (in first-seen order), empty cells
    for missing values and None, lists (``hidden``) as JSON text such as ``[50, 50]``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(records), restval="", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else
                         ("" if v is None else v) for k, v in record.items()})
    _write_atomically(path, out.getvalue())


def write_json(records: Sequence[dict], path: PathLike) -> None:
    """Write the records as one JSON list (NaN/inf losses appear as NaN/Infinity)."""
    _write_atomically(path, json.dumps([_plain_record(r) for r in records], indent=1) + "\n")


def _plain_record(record: dict) -> dict:
    return {k: _plain(v) for k, v in record.items()}

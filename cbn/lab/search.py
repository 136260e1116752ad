"""Random hyper-parameter search over :class:`cbn.lab.experiment.RunConfig` fields: reproducible,
resumable, and run on local processes or any ``concurrent.futures.Executor`` (a Dask cluster
included) without changes.

Usage::

    from cbn.lab.experiment import RunConfig
    from cbn.lab.plots import plot_search
    from cbn.lab.search import Choice, DataSpec, LogUniform, best, refine, search, write_csv

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

Every trial is one :func:`cbn.lab.experiment.run`. Trial ``i``'s hyper-parameters and training
seed come from ``numpy.random.SeedSequence(seed, spawn_key=(i,))`` alone, and every trial
runs with the same number of BLAS threads (``blas_threads``, default 1) wherever it runs, so
serial, process and Dask searches give the same table bit for bit (except ``wall_time``).

Workers get a small :class:`DataSpec`, not the images, and load the data once per process.
The spaces and trials live in :mod:`cbn.lab.space`, the results file and tables in
:mod:`cbn.lab.search_log`; this module runs the trials.

A record (one row of the table) is a flat dict: ``trial``, ``seed``, ``status`` ("ok" or
"failed"), every RunConfig field (``hidden`` as a list), ``data_source``, then for "ok"
trials the metrics of ``run`` (``train/val/test_accuracy`` as fractions, ``*_loss``,
``*_cost``, ``wall_time`` in seconds, ``resolved_step_size``) and ``error`` (None, or
"ExceptionType: message" for a failed trial, which has no metrics).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import (Executor, FIRST_COMPLETED, ProcessPoolExecutor,
                                ThreadPoolExecutor, wait)
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm
from tqdm.std import tqdm as tqdm_base  # every tqdm class's lock

from .. import _validate as check
from .._files import PathLike, json_ready, user_path
from ..data import CIFAR10, PROTOCOLS, load_or_sample, load_sample
from .experiment import RunConfig, run
from .search_log import FORMAT_VERSION, ResultsFile, write_csv, write_json
from .space import (Choice, Distribution, LogUniform, Trial, Uniform, check_space, refine,
                    sample_trials)
from ..tune import usable_cores

__all__ = [
    "LogUniform", "Uniform", "Choice", "DataSpec", "Trial", "sample_trials", "run_trial",
    "search", "best", "refine", "coarse_to_fine", "write_csv", "write_json",
    "default_workers",
]


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
    record.update({k: json_ready(v, strict=False) for k, v in metrics.items()}, error=None)
    return record


def default_workers(blas_threads: int = 1) -> int:
    """Worker processes such that workers x BLAS threads does not exceed the usable cores."""
    blas_threads = check.integer("blas_threads", blas_threads, low=1)
    return max(1, usable_cores() // blas_threads)


@contextlib.contextmanager
def _executor(executor, max_workers: Optional[int], blas_threads: int,
              n_tasks: int) -> Iterator[Optional[Executor]]:
    """The executor to submit to (None: run serially here). A pool made here ends with the
    search: shut down when it finishes, its workers terminated at once when it stops early
    (an exception, Ctrl-C, SIGTERM), and each worker ends by itself if this process dies."""
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
                               mp_context=get_context("spawn"),
                               initializer=_end_with_parent, initargs=(os.getpid(),))
    try:
        with _sigterm_raises():
            yield pool
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _end_with_parent(parent: int) -> None:
    """Worker initializer: leave Ctrl-C to the search (which then ends the pool), and exit
    as soon as the search's process is gone, however it ended (SIGKILL included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a named semaphore, which a terminated worker would leave to the
    # resource tracker to remove (with a warning on stderr); a worker's bars need no more.
    tqdm_base.set_lock(threading.RLock())

    def watch() -> None:
        while os.getppid() == parent:  # the parent's pid changes when it dies
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="cbn-search-parent", daemon=True).start()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a pool made here runs, SIGTERM raises ``SystemExit(143)`` (128 + SIGTERM) in
    this process, so the way out ends the workers; its default action would end this process
    alone. Only in the main thread, over the default action (a program's own handler is left
    alone); a second SIGTERM gets the default action."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now, running trials included (``shutdown`` would wait for them)."""
    # concurrent.futures has no public call for this before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


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
        same search is resumed (finished and failed trials are not rerun). The file is only
        appended to: any other file (another search's, or not a results file at all) is
        refused with ValueError and left as it was, and so is a file another search is
        writing at the moment (it is locked while a search runs; "in use by another search").
    progress : show a tqdm bar over trials.

    A trial whose training raises is recorded with ``status="failed"`` and its ``error``;
    an error outside training (data not found, worker crash, Ctrl-C) stops the search, with
    the finished trials saved. Worker processes made here end with the search: on an
    error, Ctrl-C (``KeyboardInterrupt``) or SIGTERM (``SystemExit(143)``, when SIGTERM has
    its default action) their running trials are stopped, and a worker whose search process
    was killed exits by itself.
    """
    seed = check.integer("seed", seed, low=0)
    trials = sample_trials(space, n_trials, base=base, seed=seed)
    blas_threads = check.integer("blas_threads", blas_threads, low=1)
    if max_workers is not None:
        max_workers = check.integer("max_workers", max_workers, low=1)
    trial_data, data_identity = _data_argument(data, executor)
    header = {"cbn_search": FORMAT_VERSION, "seed": seed, "data": data_identity,
              "space": {name: dist.as_dict() for name, dist in check_space(space).items()},
              "base": base.as_dict()}
    store = ResultsFile(results, header) if results is not None else None
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


def _round_path(results: Optional[PathLike], r: int) -> Optional[Path]:
    if results is None:
        return None
    path = Path(user_path(results))
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
    space = check_space(space)
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

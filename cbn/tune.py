"""The kernels' choices that depend on the CPU, measured on the running machine.

Two thresholds decide how a step runs, and where each starts to pay differs between CPUs
(and OpenBLAS's kernels for them): the rows from which the weight product is taken
transposed, and the inputs from which the first layer is split in column slices, one per
thread. ``ensure()`` measures both once per CPU and thread count, in a fraction of a second
(docs/benchmarks.md), the first time a network builds a plan on a machine that is not busy,
and keeps them in ``$XDG_CACHE_HOME/cbn/tune.json`` (``~/.cache/cbn``), so later runs on
the machine reuse them. ``CBN_AUTOTUNE=0`` keeps the
built-in values instead.

The cache is optional: whatever it holds, it is read within bounds (size, nesting, a
FIFO or folder at its name) and each threshold must be an int in the range measuring gives.
A damaged cache gives one ``TuneCacheWarning`` naming it, and the built-in values for that
process; its damaged entries are dropped from the file where it can be rewritten (not a
folder, a file without permission or a newer cbn's file, which are left as they are), so
the next process measures again.

Results: both thresholds change the last bits of a run (the order of a sum, a rounding),
as the thread count does; with the cache, runs on one machine repeat bit for bit. They
never change during a training run (``held``): a measurement that comes due then waits
for the next plan built after it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from . import _ops
from . import _validate as check
from . import parameters
from ._files import atomic_write, cache_dir

DEFAULTS = {"transposed_from": _ops.transposed_from(), "sliced_from": _ops.sliced_from()}
ROWS = (100, 200, 400, 800)           # batch sizes the weight product is timed at
INPUTS = (64, 128, 256, 512, 1024)    # first-layer widths slicing is timed at
REPEATS = 3                           # timings per candidate; the fastest counts
MARGIN = 0.9                          # a way must be 10 % faster to replace the built-in one
NEVER = 10 ** 9

_lock = threading.RLock()
_done: Dict[str, Dict[str, int]] = {}  # machine key -> thresholds applied in this process
_measuring = False
_wait = [0.0]  # time.monotonic() before which ensure() does not look again (a busy machine)
BUSY_WAIT = 60.0
_runs = [0]  # training runs in progress (``held``)


def current() -> Dict[str, int]:
    """The thresholds in use now."""
    return {"transposed_from": _ops.transposed_from(), "sliced_from": _ops.sliced_from()}


@contextlib.contextmanager
def held() -> Iterator[None]:
    """For the length of a training run: ``ensure()`` changes no threshold, since its later
    steps read them (the weight product's form) and must sum as its first ones did."""
    with _lock:
        _runs[0] += 1
    try:
        yield
    finally:
        with _lock:
            _runs[0] -= 1


def enabled() -> bool:
    """False when ``CBN_AUTOTUNE`` is 0 (or "off", "false", "no")."""
    return check.env_switch("CBN_AUTOTUNE")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` ({} elsewhere)."""
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def machine_key() -> str:
    """What the thresholds depend on: the CPU (model, family, its vector extensions), the
    thread count and the OpenBLAS build."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vector = "+".join(f for f in ("avx2", "avx512f") if f in flags)
    return "|".join([cpu_name(), info.get("cpu family", ""), info.get("model", ""),
                     platform.machine(), vector, f"threads={_ops.threads()}",
                     _ops.blas_config()])


def _second_wins(first, second, default: bool) -> bool:
    """Whether ``second`` is the faster of two ways to do the same work: each timed REPEATS
    times, alternating (so a change of load hits both), the fastest of each compared; a
    difference under MARGIN keeps ``default``."""
    first(), second()  # warm: page faults, packed buffers, woken threads
    best = [float("inf"), float("inf")]
    for _ in range(REPEATS):
        for k, run in enumerate((first, second)):
            start = time.perf_counter()
            run()
            best[k] = min(best[k], time.perf_counter() - start)
    if best[1] < MARGIN * best[0]:
        return True
    if best[0] < MARGIN * best[1]:
        return False
    return default


def _from(candidates, wins) -> int:
    """The smallest candidate from which ``wins(c)`` holds for it and every larger one
    (NEVER if not for the largest)."""
    chosen = NEVER
    for c in sorted(candidates, reverse=True):
        if not wins(c):
            break
        chosen = c
    return chosen


def measure_transposed_from(dtype=np.float32) -> int:
    """The fewest rows (of ROWS) from which the transposed weight product of the course's
    first layer (3072 x 50) is faster, for that row count and every larger one."""
    rng = np.random.default_rng(0)

    def transposed_wins(rows: int) -> bool:
        A = rng.standard_normal((rows, 3072)).astype(dtype)
        dS = rng.standard_normal((rows, 50)).astype(dtype)
        C, tmp = np.empty((3072, 50), dtype), np.empty(3072 * 50, dtype)
        return _second_wins(lambda: _ops.weight_product(A, dS, C),
                            lambda: _ops.weight_product(A, dS, C, tmp),
                            rows >= DEFAULTS["transposed_from"])
    return _from(ROWS, transposed_wins)


def _course_plan(d: int, dtype) -> "_ops.Plan":
    """A plan of the course's network with ``d`` inputs, d-[50]-10 with batch norm before
    ReLU, for batches of 100, assembled from the compiled core's pieces as
    ``cbn.architecture`` assembles a network's (this module sits below the network, whose plans
    read the thresholds measured here)."""
    cap, dims = 100, (d, 50, 10)
    buffers = parameters.allocate(dims, "batch", np.dtype(dtype))
    parameters.initialize(buffers.params, 2, "he", "batch", np.random.default_rng(0))
    p, g, r = buffers.params, buffers.grads, buffers.running

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype)

    WT = zeros(d * 50) if cap >= _ops.transposed_from() else None
    norm = _ops.batch_norm_op(
        out=zeros(cap, 50), Shat=zeros(cap, 50), relu=True, gamma=p["gamma1"], beta=p["beta1"],
        dgamma=g["gamma1"], dbeta=g["beta1"], rmean=r["running_mean1"],
        rvar=r["running_var1"], mean=zeros(50), var=zeros(50), inv_std=zeros(50),
        escale=zeros(50), eshift=zeros(50))
    layers = [_ops.LayerSpec(p["W1"], p["b1"], g["W1"], g["b1"], zeros(cap, 50), WT, [norm]),
              _ops.LayerSpec(p["W2"], p["b2"], g["W2"], g["b2"], zeros(cap, 10), WT, ())]
    slices = min(_ops.slice_threads(), _ops.MAX_SLICES) if d >= _ops.sliced_from() else 1
    return _ops.Plan(cap, d, zeros(cap, d), buffers.theta, buffers.grad, buffers.n_weights,
                     layers, 1e-5, 0.9, False, zeros(slices, cap, 50) if slices > 1 else None)


def measure_sliced_from(dtype=np.float32) -> int:
    """The fewest inputs (of INPUTS) from which a sliced first layer ([50] hidden, batch 100)
    trains faster, for that width and every larger one (the built-in value on one thread)."""
    if _ops.threads() < 2 or not _ops.OPENMP:
        return DEFAULTS["sliced_from"]
    rng = np.random.default_rng(0)
    saved = _ops.sliced_from()

    def steps(d: int, sliced: bool):
        X = rng.standard_normal((400, d)).astype(dtype)
        y = np.arange(400, dtype=np.int64) % 10
        _ops.set_sliced_from(1 if sliced else NEVER)
        plan = _course_plan(d, dtype)
        plan.set_data(X, y, np.arange(400, dtype=np.int64), np.zeros(d, dtype),
                      np.ones(d, dtype))
        plan.set_velocity(None)
        return lambda: [plan.train_step(100 * b, 100, 1e-3, 0.0, 0.0, False) for b in range(2)]

    try:
        return _from(INPUTS, lambda d: _second_wins(steps(d, False), steps(d, True),
                                                    d >= DEFAULTS["sliced_from"]))
    finally:
        _ops.set_sliced_from(saved)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _busy() -> bool:
    """True when other work keeps the cores busy (1-minute load average at least the cores
    this process may use): tuning waits for a later process then."""
    try:
        return os.getloadavg()[0] >= usable_cores()
    except OSError:  # no load average on this system
        return False


FORMAT_VERSION = 1  # of tune.json; a cache that names none is version 1
MAX_CACHE_BYTES = 1 << 20  # an entry takes ~200 bytes: a larger file is not one cbn wrote
_warned: set = set()  # cache files already warned about in this process


class TuneCacheWarning(UserWarning):
    """The tuned-threshold cache could not be used; the built-in or newly measured thresholds
    are used instead."""


def _read_cache(path: Path) -> Tuple[dict, Optional[str], bool]:
    """``(cache, trouble, writable)``: the cache file's entries ({} if missing or unusable),
    what is wrong with it (None if nothing), and whether it may be replaced: not when it
    could not be read (a folder, a device, no permission) or a newer cbn wrote it."""
    try:
        # O_NONBLOCK: a FIFO at the cache's name must not hang the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return {}, None, True
    except OSError as exc:
        return {}, f"cannot be read ({exc.strerror or type(exc).__name__})", False
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}, "is not a regular file", False
            raw = f.read(MAX_CACHE_BYTES + 1)
    except OSError as exc:
        return {}, f"cannot be read ({exc.strerror or type(exc).__name__})", False
    if len(raw) > MAX_CACHE_BYTES:
        return {}, f"is larger than {MAX_CACHE_BYTES} bytes", True
    try:
        cache = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return {}, "is not UTF-8 text", True
    except RecursionError:
        return {}, "nests JSON too deeply", True
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        return {}, f"is not valid JSON ({str(exc)[:80]})", True
    if not isinstance(cache, dict):
        return {}, f"holds a JSON {type(cache).__name__}, not an object", True
    version = cache.pop("format_version", FORMAT_VERSION)
    try:
        check.file_version(version, FORMAT_VERSION, ValueError)
    except ValueError as exc:  # a newer cbn's file is left as it is
        newer = type(version) is int and version > FORMAT_VERSION
        return {}, str(exc), not newer
    return cache, None, True


def _valid(entry) -> bool:
    """An entry as ``ensure`` writes it: each threshold an int (not bool) in the range the
    measurements give (the smallest candidate is >= 1; NEVER means never)."""
    return (isinstance(entry, dict) and set(entry) == set(DEFAULTS)
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= NEVER
                    for v in entry.values()))


def _warn(path: Path, trouble: str, instead: str) -> None:
    """One warning per cache file and process."""
    if path not in _warned:
        _warned.add(path)
        warnings.warn(f"{path}: {trouble}; {instead}", TuneCacheWarning, stacklevel=2)


def _write_cache(path: Path, entries: dict) -> None:
    """Replace the cache file with ``entries`` (atomically); a read-only home keeps none."""
    document = {"format_version": FORMAT_VERSION, **entries}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(document, indent=1).encode()))
    except OSError:
        pass


def ensure(path: Optional[Path] = None) -> Dict[str, int]:
    """Apply this machine's thresholds: from the cache file (``path``, default
    ``tune.json`` in cbn's cache folder), else measured now and saved there; the built-in
    ones when tuning is off. Returns them. Cheap after the first call in a process."""
    if not enabled():
        return dict(DEFAULTS)
    global _measuring
    with _lock:
        # While measuring, during a training run (its evaluations build plans too), or
        # while a governor has changed the thread count (the machine's count is the held
        # one): what is set now.
        if (_measuring or _runs[0] or _ops.slice_threads() != _ops.threads()
                or time.monotonic() < _wait[0]):
            return current()
        key = machine_key()
        if key in _done:
            return _done[key]
        path = Path(path) if path is not None else cache_dir() / "tune.json"
        cache, trouble, writable = _read_cache(path)
        found = cache.get(key)
        if key in cache and not _valid(found):
            trouble = f"the entry of this machine is not one cbn writes: {check.short_repr(found)}"
        if trouble:  # a cache is optional: its damage never costs more than the built-ins
            _warn(path, trouble, "using the built-in thresholds")
            found = dict(DEFAULTS)
            if writable:  # keep the good entries; the next process measures this machine
                _write_cache(path, {k: v for k, v in cache.items() if k != key and _valid(v)})
        elif not _valid(found):
            if _busy():  # timings now would say more about the load than the CPU
                _wait[0] = time.monotonic() + BUSY_WAIT
                return current()
            _measuring = True
            try:
                found = {"transposed_from": measure_transposed_from(),
                         "sliced_from": measure_sliced_from()}
            finally:
                _measuring = False
            _write_cache(path, {**{k: v for k, v in cache.items() if _valid(v)}, key: found})
        _ops.set_transposed_from(found["transposed_from"])
        _ops.set_sliced_from(found["sliced_from"])
        _done[key] = found
        return found

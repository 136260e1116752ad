"""How many threads the training steps get: all of them, or one when a team cannot run.

A team of threads is only as fast as its slowest member: every product waits at its
barriers for all of them. When another busy process shares the cores, the scheduler parks
one member for whole time slices and the rest wait, so a two-thread step can take several
times longer than the same step on one thread. Which is faster depends on the load of the
moment, so ``TeamGovernor`` measures it: it times the steps, compares short stretches on all
threads and on one, back to back, and trains on whichever was faster, probing again after
a stretch that doubles while the choice holds, or at once when the step times shift.

Switching never changes a result. The first layer's column slices are fixed for the whole
run (``hold_slices``), but OpenBLAS's kernels for some CPUs (Haswell's among them) round a
product differently on one thread and on several: each thread's share starts at other tile
edges. So a governed run first takes its own products at its batch sizes (a dry pass that
changes nothing) on all threads and on one; where the bits differ, it stays on all threads,
ungoverned. The answer is kept for the rest of the process, per shapes and thread count.
The count is the process's: the governor moves it only while its run is the one
computation in progress (``computing``); one that starts meanwhile waits for it to be back.
``CBN_ADAPTIVE_THREADS=0`` turns the governor off.

``share_pool`` hands the other OpenBLAS libraries of the process (NumPy's, SciPy's) the same
pool of threads, so that their idle threads do not spin against cbn's team after each of
their products. ``import cbn`` does it for the libraries loaded by then, and each new plan
(a network's first run at a batch size) for any loaded since; ``CBN_SHARE_POOL=0`` leaves
every library its own threads. Where OpenMP may run fewer threads than a batch of BLAS jobs
needs (``OMP_DYNAMIC``, ``OMP_THREAD_LIMIT``, ``OMP_MAX_ACTIVE_LEVELS`` or their setters, a
forked child), the jobs still all run at once and the pool is given up for OpenBLAS's own
threads, with no change to any result (``cbn/_threads.pxi``).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Tuple

import scipy_openblas32
import threadpoolctl

from . import _ops
from . import _validate as check

# Steps timed on the other side in a comparison (after one untimed step that may pay for
# waking threads), fewer when it is plainly slower; the choice's side is its last steps.
PROBE_STEPS = 5
# Steps between comparisons: from FIRST_STRETCH, doubling while the choice holds, at most
# LONGEST_STRETCH (then a comparison costs well under 1 % of the run).
FIRST_STRETCH = 32
LONGEST_STRETCH = 4096
# On one thread, a load that lifts does not change the step times, so only a comparison
# finds out: they come at least this often.
LONGEST_ON_ONE = 256
# Compare again at once when the recent median step time moves this far from the one the
# choice was made on (a process started or stopped beside us); stop timing the other side
# when its steps are this much slower.
SHIFT = 1.5
# One thread must be this much faster to be chosen (equal times keep all threads).
MARGIN = 0.95


# Evaluations of at least this many blocks are governed too (fewer: too few to compare).
GOVERNED_FROM = 16

# One run governs at a time: the thread count is the process's (two networks trained at once
# in two Python threads keep the count they found).
_governing = threading.Lock()


# A run that starts within this many seconds of the last one's end (with the same ceiling)
# carries on from its state: its choice, step times and the count to the next comparison,
# so many short calls of fit are governed as one long run.
REMEMBER_SECONDS = 5.0
_last: dict = {}  # kind -> (time.monotonic() at its end, the governor of the last run)

# Whether a run's products come out bit for bit the same on one thread as on all of them:
# (the run's key, ceiling) -> bool, measured by the first governed run of those shapes.
_neutral: Dict[Tuple[Hashable, int], bool] = {}

# The thread count is the process's: a governor moves it off its ceiling (or probes) only
# while its run is the one computation in progress, and a computation that starts meanwhile
# waits until the count is back, which the governed run gives back before its next step.
_state = threading.Condition(threading.RLock())
_computing = [0]  # computations in progress (``computing``), a governed run's own included
_waiting = [0]    # computations waiting for the count to be back
_away: List[Optional["TeamGovernor"]] = [None]  # the governor whose count is off its ceiling


def _crowded() -> bool:
    """Another computation is in progress or waiting (call holding ``_state``)."""
    return _computing[0] > 1 or _waiting[0] > 0


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Around every computation of a network: its products run on the thread count it
    finds, so it waits while a governed run has the count off its ceiling, and keeps the
    governor from moving it until it ends."""
    with _state:
        away = _away[0]
        if away is not None and away.owner == threading.get_ident():
            _computing[0] += 1
            away._set(away.ceiling)  # nested in the governed run's own thread
        else:
            _waiting[0] += 1
            try:
                _state.wait_for(lambda: _away[0] is None)
            finally:
                _waiting[0] -= 1
            _computing[0] += 1
    _mine.depth = getattr(_mine, "depth", 0) + 1
    try:
        yield
    finally:
        _mine.depth -= 1
        with _state:
            _computing[0] -= 1


_mine = threading.local()  # depth: the computations this thread is inside (``computing``)


class _OneThread:
    """The holder of the count while ``one_thread`` runs: computations nested in its own
    thread stay on one thread (``computing`` asks it for its ceiling back, and it keeps one)."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.ceiling = 1

    def _set(self, threads: int) -> None:
        pass


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one thread: for work of many tiny products (a gradient check's
    thousands of cost evaluations), where a team costs more in wake-ups and barriers than it
    saves, and many times more beside another busy process (a member parked for a time
    slice stalls every product). Computations of other threads wait until it ends, as for a
    governed run, so theirs run on the process's count; it waits for those in progress."""
    if not _ops.OPENMP or _ops.threads() == 1 or getattr(_mine, "depth", 0):
        yield  # one thread already, or inside this thread's own computation: its count
        return
    holder = _OneThread()
    with _state:
        _waiting[0] += 1
        try:
            _state.wait_for(lambda: _away[0] is None and _computing[0] == 0)
        finally:
            _waiting[0] -= 1
        ceiling = _ops.threads()
        _ops.set_threads(1)
        _away[0] = holder
    try:
        yield
    finally:
        with _state:
            _ops.set_threads(ceiling)
            _away[0] = None
            _state.notify_all()


# Names OpenBLAS builds give the threads-callback setter (the scipy-openblas wheels prefix
# their symbols and suffix the 64-bit-integer build's).
_SETTER_NAMES = [prefix + "openblas_set_threads_callback_function" + suffix
                 for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
_shared_paths: List[str] = []  # the libraries share_pool has handed the pool


def share_pool() -> List[str]:
    """Run the parallel jobs of every other pthreads OpenBLAS loaded in the process on
    cbn's OpenMP pool; returns the paths of the libraries that share it.

    Libraries too old to take a threads callback (OpenBLAS before 0.3.27), OpenMP builds and
    other BLAS (MKL, BLIS) keep their threads. Their results do not change, only the threads
    that compute them; their thread counts stay theirs (``threadpoolctl`` still sets them).
    Does nothing when ``CBN_SHARE_POOL`` is 0, without OpenMP, or once the pool was left
    (in a forked child, or where OpenMP's settings may shrink a team)."""
    if not _ops.shared_pool_count():  # given back since (a forked child, a left pool)
        _shared_paths.clear()
    if not (_ops.OPENMP and check.env_switch("CBN_SHARE_POOL")):
        return list(_shared_paths)
    own = os.path.realpath(scipy_openblas32.get_lib_dir())  # cbn's own, already on the pool
    for info in threadpoolctl.threadpool_info():
        path = os.path.realpath(info.get("filepath") or "")
        if (info.get("internal_api") != "openblas" or info.get("threading_layer") != "pthreads"
                or os.path.dirname(path) == own or path in _shared_paths):
            continue
        setter = _setter_address(path)
        if setter and _ops.share_pool_with(setter):
            _shared_paths.append(path)
    return list(_shared_paths)


def unshare_pool() -> None:
    """Give every library ``share_pool`` took its own threads back."""
    _ops.unshare_pool()
    _shared_paths.clear()


def _setter_address(path: str) -> int:
    """The address of the threads-callback setter of the loaded library at ``path``, or 0."""
    try:  # RTLD_NOLOAD: the library already in the process, never a second copy
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):  # not loaded any more; no RTLD_NOLOAD off Linux
        return 0
    for name in _SETTER_NAMES:
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
        except AttributeError:
            continue
    return 0


def enabled() -> bool:
    """False when ``CBN_ADAPTIVE_THREADS`` is set to 0 (or "off", "false", "no")."""
    return check.env_switch("CBN_ADAPTIVE_THREADS")


class _Times:
    """The last ``size`` step times and their median, in preallocated lists: the governor
    runs inside the training loop, which allocates nothing per step."""

    def __init__(self, size: int) -> None:
        self.values = [0.0] * size
        self.scratch = [0.0] * size
        self.count = 0  # values held, at most size
        self.next = 0   # where the next one goes

    def add(self, seconds: float) -> None:
        self.values[self.next] = seconds
        self.next = (self.next + 1) % len(self.values)
        self.count = min(self.count + 1, len(self.values))

    def clear(self) -> None:
        self.count = self.next = 0

    @property
    def full(self) -> bool:
        return self.count == len(self.values)

    def median(self) -> float:
        """The median (the upper one of an even count); an insertion sort of a few values."""
        s, n = self.scratch, self.count
        for k in range(n):
            v, j = self.values[k], k
            while j and s[j - 1] > v:
                s[j] = s[j - 1]
                j -= 1
            s[j] = v
        return s[n // 2]


class TeamGovernor:
    """Chooses, stretch by stretch, between ``ceiling`` threads and one for the steps of one
    run of ``kind`` ("fit", or "evaluate" for the blocks of an evaluation); off unless
    ``active``. Call ``begin()`` before each step and ``end(full)`` after it (``full``: a
    full-size batch, the only ones timed); ``close()`` restores the thread count.

    ``probe`` is (key, dry pass): a pass through the run's products at every batch size
    it takes, changing no state, that returns their results as bytes; the key names those
    shapes. The governor stays off when the pass gives other bytes on one thread than on
    the ceiling. Without a probe the steps are taken to give the same bits on any count."""

    def __init__(self, ceiling: Optional[int] = None, active: bool = True,
                 kind: str = "fit",
                 probe: Optional[Tuple[Hashable, Callable[[], bytes]]] = None) -> None:
        self.ceiling = _ops.threads() if ceiling is None else ceiling
        self.kind = kind
        self.threads = self.ceiling
        self.owner = threading.get_ident()
        self.active = (active and self.ceiling > 1 and _ops.OPENMP and enabled()
                       and _governing.acquire(blocking=False))
        if self.active:
            _ops.hold_slices(self.ceiling)
            neutral = False
            try:
                neutral = probe is None or self._neutral(*probe)
            finally:
                if not neutral:  # (or the probe was interrupted) all threads, ungoverned
                    _ops.hold_slices(0)
                    self.active = False
                    _governing.release()
        self.choice = self.ceiling              # what the last comparison chose
        self.reference = 0.0                    # the choice's median step time then (0: none)
        self.stretch = FIRST_STRETCH
        self.until_probe = 0                    # steps before the next comparison
        self.probing = 0                        # steps of the comparison taken so far
        self.other = _Times(PROBE_STEPS)        # the other side's times in this comparison
        self.recent = _Times(PROBE_STEPS)       # the choice's last step times
        self.switches = 0
        self._started = 0.0
        at, last = _last.get(kind, (-1e9, None))
        if (self.active and last is not None and last.ceiling == self.ceiling
                and time.monotonic() - at < REMEMBER_SECONDS):
            self.choice, self.reference, self.stretch = last.choice, last.reference, last.stretch
            self.until_probe, self.recent = last.until_probe, last.recent

    def _neutral(self, key: Hashable, dry_pass: Callable[[], bytes]) -> bool:
        """Whether ``dry_pass`` gives the same bytes on one thread as on the ceiling; run
        once per process and (key, ceiling), with the slices held as for the run."""
        key = (key, self.ceiling)
        with _state:  # computations that start meanwhile wait for the probe's end
            if key not in _neutral:
                if _crowded():  # no one thread under others' products: ungoverned this time
                    return False
                many = dry_pass()
                self._set(1)
                try:
                    one = dry_pass()
                finally:
                    self._set(self.ceiling)
                _neutral[key] = one == many
            return _neutral[key]

    def _set(self, threads: int) -> None:
        with _state:
            if _crowded():  # others' products run on the ceiling
                threads = self.ceiling
            if threads != self.threads:
                _ops.set_threads(threads)
                self.threads = threads
                _away[0] = None if threads == self.ceiling else self
                _state.notify_all()

    def begin(self) -> None:
        """Before a step: set its thread count."""
        if not self.active:
            return
        if not self.probing and self.until_probe <= 0 and self.recent.full:
            self.probing = 1
            self.other.clear()
        self._set((1 if self.choice == self.ceiling else self.ceiling) if self.probing
                  else self.choice)
        self._started = time.perf_counter()

    def rest(self) -> None:
        """Between steps, before other work of the run (its evaluations): back to the
        ceiling, the count the run's results are defined by; ``begin()`` sets the next."""
        if self.active:
            self._set(self.ceiling)

    def end(self, full: bool = True) -> None:
        """After a step: time it (``full``: a full-size batch, comparable with the others)."""
        if not self.active:
            return
        seconds = time.perf_counter() - self._started
        if self.probing:
            if full and self.probing > 1:  # the first step on the other side is not timed
                self.other.add(seconds)
            self.probing += 1
            mine = self.recent.median()
            plainly_slower = self.other.count >= 2 and self.other.median() > SHIFT * mine
            if self.other.full or plainly_slower or self.probing > 2 * PROBE_STEPS:
                self._decide(mine)
            return
        self.until_probe -= 1
        if full:
            self.recent.add(seconds)
            if self.reference and self.recent.full and self.until_probe > 0:
                now = self.recent.median()
                if not self.reference / SHIFT < now < self.reference * SHIFT:
                    self.until_probe = 0  # the load changed: compare again now

    def _decide(self, mine: float) -> None:
        self.probing = 0
        self.until_probe = self.stretch
        if not self.other.count:  # no full batch on the other side: keep the choice
            return
        other = self.other.median()
        one, many = (other, mine) if self.choice == self.ceiling else (mine, other)
        choice = 1 if one < MARGIN * many else self.ceiling
        if choice == self.choice:
            self.stretch = min(2 * self.stretch,
                               LONGEST_STRETCH if choice == self.ceiling else LONGEST_ON_ONE)
            self.reference = mine
        else:
            self.stretch = FIRST_STRETCH
            self.switches += 1
            self.choice, self.reference = choice, other
            self.recent.clear()
        self.until_probe = self.stretch

    def close(self) -> None:
        """Give the thread count back as it was before the run."""
        if self.active:
            if self.probing:  # a comparison cut short: the next run starts one afresh
                self.probing, self.until_probe = 0, 0
            _last[self.kind] = (time.monotonic(), self)
            self._set(self.ceiling)
            _ops.hold_slices(0)
            self.active = False
            _governing.release()

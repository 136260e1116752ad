"""What every example shares: its command line, its data, and the record of its results
(``results.json`` / ``summary.md`` with the run's provenance) in an output folder that is
replaced whole when the example finishes."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..data import CIFAR10, DataError, SampleDataWarning, load_or_sample
from .._files import json_ready, user_path, write_text
from .experiment import RunConfig, RunResult, repeat
from ..tune import cpu_name, machine_key, usable_cores


def example_parser(name: str, description: str, *, runs: Optional[int] = 3,
                   dtype: str = "float32") -> argparse.ArgumentParser:
    """The options every example takes: ``--data``, ``--protocol``, ``--out`` (default
    ``results/<name>``, or ``results/<name>-quick`` with ``--quick``), ``--seed``,
    ``--dtype``, ``--quick``, ``--blas-threads``, ``--no-progress`` and, when ``runs`` is
    given, ``--runs`` (default ``runs``, 1 under ``--quick``)."""
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=description,
        epilog="The results are written into OUT.partial and replace OUT only when the "
               "example finishes, so OUT always holds one whole run. OUT must be new, empty, "
               f"or a results folder of {name}.py (marked by its {MARKER} file): any other "
               "folder is refused, never overwritten. Finished training runs "
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
                             "default, one per core). Training moves to one thread by itself "
                             "while other work makes that faster (cbn/threads.py)")
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
    args.progress = False if args.no_progress else None
    if args.blas_threads is not None:
        if not 1 <= args.blas_threads <= 2 ** 31 - 1:  # a C int
            parser.error(f"--blas-threads must be in 1..{2 ** 31 - 1}, got {args.blas_threads}")
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.blas_threads)  # for the rest of the process
    if hasattr(args, "default_runs"):
        if args.runs is None:
            args.runs = 1 if args.quick else args.default_runs
        if args.runs < 1:
            parser.error(f"--runs must be >= 1, got {args.runs}")
    args.out = user_path(args.out)
    try:  # before any data is read or anything trained
        check_out_folder(Path(args.out), args.example_name)
    except FolderError as exc:
        raise SystemExit(f"{args.example_name}: error: --out {args.out}: {exc}") from None
    return args


def run_example(main: Callable[[], int], name: str) -> int:
    """``main()`` of example ``name``, for its ``__main__``: a file that cannot be written
    (disk full, a read-only folder) or an output folder that another took over during the
    run ends it with one line on stderr, ``<name>: error: ...``, and exit status 1 instead of
    a traceback. Its finished training runs stay in OUT.partial, to be reused.

    Ctrl-C or SIGTERM lets the training step in progress finish and checkpoint (see
    :func:`cbn.lab.experiment.repeat`), then ends the example with one line on stderr saying
    where it stopped and the command that resumes it, and exit status 130."""
    route_sigterm()
    try:
        return main()
    except KeyboardInterrupt as exc:
        print(f"{name}: {interrupted_line(exc)}; resume with: "
              f"{shlex.join([sys.executable] + sys.argv)}", file=sys.stderr)
        return 130
    except FolderError as exc:
        message = str(exc)
    except OSError as exc:
        message = (f"{exc.filename}: " if exc.filename else "") + str(exc.strerror or exc)
    print(f"{name}: error: " + " ".join(message.split()), file=sys.stderr)
    return 1


def route_sigterm() -> None:
    """Make SIGTERM stop the process as Ctrl-C does (``KeyboardInterrupt``), so a run
    killed politely finishes its step and keeps its checkpoint (``cbn.fit`` defers both);
    only over the default action, in the main thread."""
    if (hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """"interrupted", with the step where training stopped and the scores last recorded
    when ``fit`` says them."""
    step, total = getattr(exc, "step", None), getattr(exc, "total", None)
    if step is None:
        return "interrupted"
    kept = ", checkpoint kept" if getattr(exc, "checkpoint", None) else ""
    history = getattr(exc, "history", None)
    last = history.last() if history is not None else {}
    shown = [f"{name.replace('_', ' ')} {last[name]:.4g}"
             for name in ("epoch", "batch_loss", "train_accuracy", "val_accuracy") if name in last]
    scores = f" (last recorded: {', '.join(shown)})" if shown else ""
    return f"interrupted at training step {step} of {total}{kept}{scores}"


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


# The library's messages name a Python argument with its option beside it,
# "download=True (command line: --download)"; a command line's name the option alone.
_PYTHON_ARGUMENT = re.compile(r"\S+=\S+ \(command line: ([^)]+)\)")


def command_line_words(message: str) -> str:
    """``message`` with each "argument=value (command line: --option)" as "--option"."""
    return _PYTHON_ARGUMENT.sub(r"\1", message)


def load_data(args: argparse.Namespace) -> CIFAR10:
    """The data the options name (:func:`open_data`: the shipped sample, announced on
    stderr, when no CIFAR-10 is found), with a one-line description printed.

    A ``--data`` folder that does not hold CIFAR-10 ends the program with the loader's
    message (exit status 1) rather than silently falling back to the sample."""
    prog = getattr(args, "example_name", "cbn")
    try:
        data = open_data(args.data, protocol=args.protocol, prog=prog)
    except (FileNotFoundError, DataError) as exc:
        raise SystemExit(f"{prog}: error: {command_line_words(str(exc))}") from None
    print(f"data: {data.source} (protocol {data.protocol}): {len(data.train)} train, "
          f"{len(data.val)} val, {len(data.test)} test images", file=sys.stderr)
    return data


def machine_info() -> Dict[str, object]:
    """Where a result was measured: platform, CPU, cores, Python and library versions, and
    the BLAS libraries in use with their thread counts (``threadpoolctl``)."""
    import scipy
    from threadpoolctl import threadpool_info

    from .. import __version__

    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_key": machine_key(),  # family, model, vector extensions, threads, BLAS kernels
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
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
    leaves it as it was (its finished training runs wait in ``folder`` to be reused). The
    folder is marked as the example's by a ``.cbn-example`` file holding ``name``; ``out``
    must be new, empty or so marked (:func:`check_out_folder`, :class:`FolderError`).

    ``meta`` holds the example's name, the exact command line, the seeds, whether it was a
    ``--quick`` run, the data source, protocol and split sizes, the machine
    (:func:`machine_info`), start and end times (UTC) with the load averages then, the wall
    time of this invocation, the wall time of each training run (``run_wall_times``,
    including runs reused from an earlier invocation) and their sum (``training_time``), and
    the figures written."""

    def __init__(self, name: str, args: argparse.Namespace, data: CIFAR10) -> None:
        self.name = name
        self.out = Path(user_path(args.out))
        self.folder = _partial(self.out)
        check_out_folder(self.out, name)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / MARKER, name + "\n")
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
        write_text(self.folder / "results.json", text + "\n")
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
        write_text(self.folder / "summary.md", text)
        self._drop_stale_runs()
        check_out_folder(self.out, self.name)  # again: OUT may have changed during the run
        _replace_folder(self.folder, self.out)
        print(text)
        print(f"wrote {self.out / 'results.json'}, {self.out / 'summary.md'} and "
              f"{len(self.figures)} figure(s)", file=sys.stderr)
        return self.out / "results.json"


# The file that marks a folder as an example's own results folder; it holds the example's
# name. Only folders marked by the same example are ever replaced or deleted.
MARKER = ".cbn-example"


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _aside(out: Path) -> Path:
    return out.with_name(out.name + ".old")


class FolderError(ValueError):
    """An output folder that an example may not fill; the message names it."""


def _owner(folder: Path) -> Optional[str]:
    """The example whose results ``folder`` holds (the name in its marker), or None."""
    try:
        with open(folder / MARKER, "rb") as f:
            return f.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _is_empty(folder: Path) -> bool:
    try:
        return not any(folder.iterdir())
    except OSError:
        return False


def check_out_folder(out: Path, name: str) -> None:
    """Refuse (:class:`FolderError`, naming the folder) an output folder ``out`` that example
    ``name`` may not fill: ``out``, and its ``out.partial`` and ``out.old`` where they exist,
    must each be an empty folder or one marked as ``name``'s (its ``.cbn-example`` file), so
    that replacing or deleting them never loses anything the example did not write."""
    for folder in (out, _partial(out), _aside(out)):
        if not os.path.lexists(folder):
            continue
        if folder.is_symlink():
            raise FolderError(f"{folder} is a symbolic link; give the folder it points to")
        if not folder.is_dir():
            raise FolderError(f"{folder} is a file, not a folder")
        owner = _owner(folder)
        if owner == name or (owner is None and _is_empty(folder)):
            continue
        holds = (f"holds the results of {owner!r}, not of {name!r}" if owner is not None else
                 f"is not empty and is not a results folder of {name} (no {MARKER} file)")
        raise FolderError(f"refusing to replace folder {folder}, which {holds}; give another "
                         "--out, or empty or delete that folder yourself")


def _remove(folder: Path) -> None:
    """Delete ``folder``, which :func:`check_out_folder` found empty or marked as the
    example's own."""
    if _owner(folder) is None:
        folder.rmdir()  # empty: fails rather than delete anything that arrived since
    else:
        shutil.rmtree(folder)


def _replace_folder(new: Path, old: Path) -> None:
    """Put folder ``new`` in the place of ``old`` (moved aside as ``old.old``, then deleted);
    ``old`` and ``old.old`` must have passed :func:`check_out_folder`."""
    aside = _aside(old)
    if aside.exists():  # left by an earlier run that stopped mid-replacement
        _remove(aside)
    moved = old.exists()
    if moved:
        os.replace(old, aside)
    os.replace(new, old)
    if moved:
        _remove(aside)

"""The ``cbn`` command: ``cbn train | evaluate | gradcheck | report``.

``cbn`` alone is ``cbn train``: the course's 3-layer batch-norm network on the CIFAR-10 found
by --data (or in the usual places), else on the sample shipped with the package, so it runs
straight after ``pip install .``. Every argument is checked before any data is read; errors
are one line on stderr (``cbn: error: ...``, exit status 2); results go to stdout as a short
table, or as JSON with --json.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..checkpoint import CheckpointError, save_checkpoint
from ..data import CIFAR10, DataError
from .._files import json_ready, user_path, write_text
from .experiment import (CHECKPOINT_SUFFIX, GRADCHECK_NETWORKS, RunConfig, gradient_checks,
                         run, score)
from ..network import Network, layer_dims
# Argument types: checked while parsing, before any data is read.
from .options import (RUN_OPTIONS, OptionError, add_run_arguments, config_of, gradcheck_arguments,
                      nonnegative_int, run_values, thread_count)
from .record import command_line_words, data_description, open_data, route_sigterm
from .report import REPORT_DESCRIPTION, add_report_arguments, build_report, report_file
from ..schedule import CyclicLR
from ..train import DivergenceError, TrainingInterrupted

COMMANDS = ("train", "evaluate", "gradcheck", "report")
DESCRIPTION = ("Batch-normalized k-layer networks on CIFAR-10. Without a command, cbn runs "
               "'cbn train': the course's 3-layer BN network, on the CIFAR-10 given by --data "
               "or found in the usual places, else on the small sample shipped with cbn.")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT
# What a user can get wrong (arguments, files, data); anything else is a bug and keeps
# its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, DataError, ImportError,
               CheckpointError, DivergenceError, ValueError, TypeError)


class UsageError(Exception):
    """A bad argument or input, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cbn: error: <message> (see <prog> --help)``."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


# -- the parser ------------------------------------------------------------------------------


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR",
                        help="the cifar-10-batches-py folder or its parent (default: $CBN_DATA, "
                             "./data, ~/data, ...; else the shipped sample)")
    parser.add_argument("--download", action="store_true",
                        help="fetch CIFAR-10 (163 MiB, md5-checked) into DIR, or into "
                             "$CBN_DATA or ~/.cache/cbn, when it is not there yet")
    parser.add_argument("--protocol", choices=("full", "seed"), default="full",
                        help="full: 45,000 train / 5,000 val from data_batch_1..5; seed: "
                             "train on data_batch_1, validate on data_batch_2 (default full)")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blas-threads", type=thread_count, metavar="N",
                        help="BLAS threads (default: one per core, or $OPENBLAS_NUM_THREADS)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The ``cbn`` parser with its four subcommands."""
    parser = _Parser(prog="cbn", description=DESCRIPTION,
                     epilog="cbn COMMAND --help lists the options of each command.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"cbn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train a network and print its scores (default)",
                           description="Train a k-layer network with mini-batch SGD and a "
                                       "cyclical learning rate; print its accuracy, loss and "
                                       "cost on the training, validation and test sets. The "
                                       "defaults are the course's 3-layer BN setting.")
    _data_arguments(train)
    train.add_argument("--config", metavar="FILE",
                       help="a run file (.toml or .json) holding options by name (hidden = "
                            "[100, 50], lam = 0.001, ...); options given here override it")
    groups = {name: train.add_argument_group(name)
              for name in ("network", "training", "augmentation")}
    add_run_arguments(train, groups)
    g = train.add_argument_group("output")
    g.add_argument("--save", metavar="FILE", help="save the trained network (.npz)")
    g.add_argument("--out", metavar="FILE",
                   help="write the scores, configuration and training history as JSON")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="write a checkpoint (.npz) at every epoch's end and when Ctrl-C or "
                        "SIGTERM stops the run (without it, an interrupted run writes one "
                        "beside --save or in the current folder)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run from --checkpoint FILE, bit for bit, if the file "
                        "exists (same options and data); start afresh if not")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown only on a terminal anyway)")
    g.add_argument("--quiet", action="store_true",
                   help="no line per epoch on stderr (epoch, step, loss, train and "
                        "validation accuracy, learning rate, seconds)")
    g.add_argument("--json", action="store_true",
                   help="print the results as JSON instead of a table")

    evaluate = sub.add_parser("evaluate", help="score a saved network",
                              description="Score a network saved by `cbn train --save` (or "
                                          "Network.save) on the data's splits.")
    evaluate.add_argument("--model", metavar="FILE", required=True,
                          help="the saved network (.npz)")
    _data_arguments(evaluate)
    evaluate.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                          help="which split to score (default test)")
    _common_arguments(evaluate)

    check = sub.add_parser("gradcheck", help="check analytic gradients against numerical ones",
                           description="Compare every parameter's analytic gradient with "
                                       "fourth-order centred differences in float64, for "
                                       "3- and 9-layer networks with and without BN, on "
                                       "real training images reduced to their first DIMS "
                                       "features. Exit status 1 if an error exceeds the "
                                       "tolerance.")
    _data_arguments(check)
    gradcheck_arguments(check)
    check.add_argument("--seed", type=nonnegative_int, default=0,
                       help="seed of the networks' initialisation (default 0)")
    _common_arguments(check)

    report = sub.add_parser("report", help="gather the examples' results into REPORT.md",
                            description=REPORT_DESCRIPTION + " Same as cbn-report.")
    add_report_arguments(report)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (no command means ``train``) and check what the types alone cannot."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        # No command takes a positional argument: a first word is a command, mistyped.
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        raise UsageError(f"invalid choice: {argv[0]!r} (choose from {', '.join(COMMANDS)})"
                         + (f"; did you mean {close[0]!r}?" if close else "")
                         + " (see cbn --help)")
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "train")
    args = build_parser().parse_args(argv)
    args.argv = argv  # as the user gave it, to print the command that resumes a run
    # every path the user names
    for option in ("save", "out", "model", "results", "data", "checkpoint"):
        if getattr(args, option, None):
            setattr(args, option, user_path(getattr(args, option)))
    if args.command == "train":
        given = {o.name: getattr(args, o.name) for o in RUN_OPTIONS if hasattr(args, o.name)}
        try:
            values = run_values(given, args.config and user_path(args.config))
        except OptionError as exc:
            raise UsageError(str(exc)) from None
        for name, value in values.items():
            setattr(args, name, value)
        args.run_config = config_of(values)
        if args.resume and not args.checkpoint:
            raise UsageError("--resume continues from --checkpoint FILE, which is not given")
        for option in ("save", "out", "checkpoint"):
            _check_writable(f"--{option}", getattr(args, option))
        _check_network_fits(args.hidden, 1, 2, args.dtype,  # the data's widths come later
                            args.run_config.expansion)
    if args.command == "evaluate" and not Path(args.model).is_file():
        raise UsageError(f"--model {args.model}: no such file")
    if args.command == "report" and args.out is not None:
        _check_writable("--out", args.out)
    if args.command == "gradcheck" and args.n < 2:
        raise UsageError(f"--n must be >= 2, got {args.n}")
    return args


def _check_writable(option: str, path: Optional[str]) -> None:
    """Refuse, before any work, a file that cannot be written where it is named."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {target.parent} "
                         + ("is a file" if parent.exists() else "does not exist"))
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: folder {target.parent} is not writable")


def _write(option: str, path: str, write: Callable[[], object]) -> None:
    """``write()`` the file ``path`` that ``option`` names (through the atomic writer, so a
    failure leaves any previous file whole); an OSError (disk full, ...) becomes the one-line
    error naming both."""
    try:
        write()
    except OSError as exc:
        raise UsageError(f"{option} {path}: could not write the file: "
                         f"{exc.strerror or exc}") from None


def _gib(size: float) -> str:
    """A size in bytes in binary units: "34.5 GiB", "2.91 TiB"."""
    for unit in ("GiB", "TiB", "PiB"):
        size /= 1024 ** (3 if unit == "GiB" else 1)
        if size < 1024 or unit == "PiB":
            return f"{size:.3g} {unit}"


def _physical_memory() -> Optional[int]:
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_network_fits(hidden: Sequence[int], inputs: int, classes: int, dtype: str,
                        expansion: Optional[int] = None) -> None:
    """Refuse ``--hidden`` widths whose parameters, gradients and the last good copy that
    ``fit`` keeps (a lower bound of what training needs) exceed the machine's memory, before
    numpy is asked for them: an allocation that the OS grants lazily would end in the process
    being killed rather than in an error."""
    dims = layer_dims(inputs, hidden, classes, expansion)
    need = 3 * np.dtype(dtype).itemsize * sum((a + 1) * b for a, b in zip(dims, dims[1:]))
    have = _physical_memory()
    if have is not None and need > have:
        raise UsageError(f"--hidden {' '.join(map(str, hidden))}: the network does not fit in "
                         f"memory (it needs at least {_gib(need)}; this machine has "
                         f"{_gib(have)})")


def _no_memory(what: str, exc: MemoryError) -> UsageError:
    """The one-line error for a MemoryError, naming ``what`` (the option that asked for it)
    and, from numpy's error, the size of the allocation that failed."""
    shape, dtype = getattr(exc, "shape", None), getattr(exc, "dtype", None)
    try:
        detail = f"{_gib(math.prod(shape) * np.dtype(dtype).itemsize)} could not be allocated"
    except (TypeError, ValueError):
        detail = "an allocation failed"
    return UsageError(f"{what}: does not fit in memory ({detail})")


# -- the commands ----------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _data(args: argparse.Namespace) -> CIFAR10:
    data = open_data(args.data, protocol=args.protocol, download=args.download)
    # Said once: the result names the data too, on the same screen when both are a terminal.
    if not (sys.stdout.isatty() and sys.stderr.isatty()) or args.json:
        print(f"data: {data_description(data)}" + ("" if data.source == "sample"
                                                    else f" from {data.source}"),
              file=sys.stderr)
    return data


def _data_json(data: CIFAR10) -> Dict[str, object]:
    return {"source": data.source, "sample": data.source == "sample",
            "protocol": data.protocol,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}


def _scores_table(scores: Dict[str, Dict[str, float]]) -> str:
    rows = [[split, f"{100 * s['accuracy']:.2f} %", f"{s['loss']:.4f}"]
            + ([f"{s['cost']:.4f}"] if "cost" in s else [])
            for split, s in scores.items()]
    headers = ["split", "accuracy", "loss"] + (["cost"] if rows and len(rows[0]) > 3 else [])
    return _table(headers, rows)


def train(args: argparse.Namespace) -> int:
    config = args.run_config
    hidden = f"--hidden {' '.join(map(str, config.hidden))}"
    try:
        # Build what checks itself (widths, sigma, the schedule) before reading any data;
        # the data decides the input and output widths.
        Network(1, config.hidden, 2, init=config.init, dtype=np.dtype(config.dtype),
                **config.network_options())
        if config.schedule == "cyclic":
            CyclicLR(config.eta_min, config.eta_max, config.step_size or 1)
    except MemoryError as exc:
        raise _no_memory(hidden, exc) from None
    data = _data(args)
    _check_network_fits(config.hidden, data.n_features, data.n_classes, config.dtype,
                        config.expansion)
    try:
        result = run(data, config, seed=args.seed,
                     progress=False if args.no_progress else None,
                     checkpoint=args.checkpoint, resume=True if args.resume else None,
                     verbose=0 if args.quiet else 1)
    except MemoryError as exc:  # the data is in memory already: the network is too large
        raise _no_memory(hidden, exc) from None
    except TrainingInterrupted as stop:
        return _interrupted(args, data, config, stop)
    if args.save:
        _write("--save", args.save, lambda: result.net.save(args.save))
    scores = {split: {what: result.metrics[f"{split}_{what}"]
                      for what in ("accuracy", "loss", "cost")}
              for split in ("train", "val", "test")}
    document = {"command": "train", "data": _data_json(data), "config": config.as_dict(),
                "seed": args.seed, "step_size": result.metrics["step_size"],
                "wall_time": result.metrics["wall_time"], "scores": scores,
                "saved": args.save}
    if args.out:
        text = json.dumps(json_ready(dict(document, history=result.history.as_dict())),
                          indent=1) + "\n"
        _write("--out", args.out, lambda: write_text(args.out, text))
    if args.json:
        print(json.dumps(json_ready(document), indent=1))
        return 0
    bn = "with BN" if config.batch_norm else "without BN"
    length = (f"{config.epochs} epochs" if config.epochs is not None
              else f"{config.cycles:g} cycles")
    schedule = (f"n_s {result.metrics['step_size']:.0f}" if config.schedule == "cyclic"
                else f"{config.schedule} schedule")
    print(f"{len(config.hidden) + 1}-layer {list(config.hidden)} {bn}, init {config.init}, "
          f"{config.dtype}{'' if config.precision == 'fp32' else ' ' + config.precision}; "
          f"lambda {config.lam:g}, eta {config.eta_min:g}..{config.eta_max:g}, "
          f"batch {config.batch_size}, {schedule}, {length}"
          + ("" if config.optimizer == "sgd" else f", {config.optimizer}")
          + f", seed {args.seed}")
    print(f"data: {data_description(data)}" + (" (not comparable with full CIFAR-10)"
                                              if data.source == "sample" else ""))
    print(_scores_table(scores))
    print(f"training took {result.metrics['wall_time']:.1f} s"
          + (f"; network saved to {args.save}" if args.save else ""))
    return 0


def _interrupted(args: argparse.Namespace, data: CIFAR10, config: RunConfig,
                 stop: TrainingInterrupted) -> int:
    """Keep the work of a run that Ctrl-C or SIGTERM stopped: its checkpoint (``--checkpoint``,
    else a new file beside ``--save`` or in the current folder), the network (``--save``);
    print its scores so far and the command that resumes it; exit status 130."""
    path = stop.checkpoint
    if path is None:
        path = _new_file(Path(args.save).parent if args.save else Path("."),
                         (Path(args.save).stem if args.save else "cbn-train")
                         + CHECKPOINT_SUFFIX)
        _write("--checkpoint", path, lambda: save_checkpoint(path, stop.state))
    if args.save:
        _write("--save", args.save, lambda: stop.net.save(args.save))
    metrics = score(stop.net, data, config.lam)
    scores = {split: {what: metrics[f"{split}_{what}"] for what in ("accuracy", "loss", "cost")}
              for split in ("train", "val", "test")}
    again = resume_command(args.argv, path)
    if args.json:
        print(json.dumps(json_ready({
            "command": "train", "interrupted": True, "step": stop.step, "total": stop.total,
            "data": _data_json(data), "config": config.as_dict(), "seed": args.seed,
            "scores": scores, "checkpoint": path, "saved": args.save, "resume": again}),
            indent=1))
    else:
        print(f"interrupted at step {stop.step} of {stop.total}; scores so far:")
        print(_scores_table(scores))
        print(f"checkpoint written to {path}"
              + (f"; network saved to {args.save}" if args.save else ""))
    print(f"cbn: resume with: {again}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _new_file(folder: Path, name: str) -> str:
    """``folder/name``, or ``folder/<stem>-2<suffixes>``, ...: the first that does not exist,
    so a file the user has is never overwritten."""
    stem, suffix = name.split(".", 1)
    candidate, i = folder / name, 1
    while candidate.exists():
        i += 1
        candidate = folder / f"{stem}-{i}.{suffix}"
    return str(candidate)


def resume_command(argv: Sequence[str], checkpoint: str) -> str:
    """The ``cbn`` command line ``argv`` continuing from ``checkpoint``: its own
    ``--checkpoint``/``--resume`` replaced by ``--checkpoint CHECKPOINT --resume``."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--checkpoint":
            skip = True
        elif not (token == "--resume" or token.startswith("--checkpoint=")):
            kept.append(token)
    return shlex.join(["cbn", *kept, "--checkpoint", checkpoint, "--resume"])


def evaluate(args: argparse.Namespace) -> int:
    net = Network.load(args.model)
    data = _data(args)
    if (net.input_dim, net.num_classes) != (data.n_features, data.n_classes):
        raise UsageError(f"--model {args.model} takes {net.input_dim} inputs and "
                         f"{net.num_classes} classes, not the data's {data.n_features} "
                         f"and {data.n_classes}")
    normalization = None
    if net.normalization is None:
        normalization = data.normalization
        print("cbn: notice: the model holds no input normalization; standardising with the "
              "data's training statistics", file=sys.stderr)
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    started = time.perf_counter()
    scores = {}
    for split in splits:
        part = data.split(split)
        s = net.evaluate(part.images, part.labels, normalization=normalization)
        scores[split] = {"accuracy": s["accuracy"], "loss": s["loss"]}
    document = {"command": "evaluate", "model": args.model, "network": repr(net),
                "data": _data_json(data), "scores": scores,
                "wall_time": time.perf_counter() - started}
    if args.json:
        print(json.dumps(json_ready(document), indent=1))
    else:
        print(f"{net!r} from {args.model}")
        print(f"data: {data_description(data)}")
        print(_scores_table(scores))
    return 0


def gradcheck(args: argparse.Namespace) -> int:
    data = _data(args)
    if args.n > len(data.train) or args.dims > data.train.images.shape[1]:
        raise UsageError(f"--n must be at most {len(data.train)} and --dims at most "
                         f"{data.train.images.shape[1]}")
    results = gradient_checks(data, n=args.n, dims=args.dims, lam=args.lam,
                              tolerance=args.tolerance, seed=args.seed)
    passed = all(r.passed for r in results.values())
    if args.json:
        print(json.dumps(json_ready({
            "command": "gradcheck", "data": _data_json(data), "passed": passed,
            "n": args.n, "dims": args.dims, "lam": args.lam, "seed": args.seed,
            "results": {key: r.as_dict() for key, r in results.items()}}), indent=1))
    else:
        print(f"gradient check: {args.n} training images, first {args.dims} features, "
              f"lambda {args.lam:g}, float64, fourth-order centred differences")
        rows = [[key.replace("/no_bn", " without BN").replace("/bn", " with BN"),
                 str(len(GRADCHECK_NETWORKS[key.split("/")[0]]) + 1),
                 f"{r.max_relative_error:.2e}", "passed" if r.passed else "FAILED"]
                for key, r in results.items()]
        print(_table(["network", "layers", "max relative error", f"tol {args.tolerance:g}"],
                     rows))
    return 0 if passed else 1


def report(args: argparse.Namespace) -> int:
    out = report_file(Path(args.results), Path(args.out) if args.out else None)
    text = build_report(Path(args.results), out)
    _write("--out", str(out), lambda: write_text(out, text))
    print(f"wrote {out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``cbn`` with ``argv`` (default: the command line); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = None
    route_sigterm()  # SIGTERM stops a run as Ctrl-C does: at a step, keeping its work
    try:
        args = parse(argv)
        if getattr(args, "blas_threads", None):
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=args.blas_threads)  # for the rest of the process
        command = {"train": train, "evaluate": evaluate, "gradcheck": gradcheck,
                   "report": report}[args.command]
        return command(args)
    except UsageError as exc:
        return _fail(str(exc))
    except USER_ERRORS as exc:
        return _fail(str(exc))
    except MemoryError as exc:
        return _fail(str(_no_memory(_sized_by(args), exc)))
    except KeyboardInterrupt:
        print("cbn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# The option that sizes what each command holds in memory, named when memory runs out.
SIZED_BY = {"train": "data", "evaluate": "model", "gradcheck": "n", "report": "results"}


def _sized_by(args: Optional[argparse.Namespace]) -> str:
    option = SIZED_BY.get(getattr(args, "command", None) or "")
    value = getattr(args, option, None) if option else None
    return f"--{option} {value}" if value is not None else "the data"


def _fail(message: str) -> int:
    """Print ``cbn: error: <message>`` as one line on stderr; return the usage exit status."""
    print("cbn: error: " + " ".join(command_line_words(message).split()), file=sys.stderr)
    return EXIT_USAGE

"""The options of a training run, each declared once (``RUN_OPTIONS``): ``cbn train``'s
command line and run files (``cbn train --config run.toml`` or ``.json``) are both read from
this table into the same values, checked the same way, and give one ``RunConfig`` plus the
run's seed and BLAS threads.

A run file holds the options by their ``RunConfig`` names (``hidden = [100, 50]``,
``lam = 0.001``, ``optimizer = "adam"``, ``epochs = 10``, ``seed = 3``, ...); options given
on the command line override it. TOML needs Python 3.11 (``tomllib``) or the ``tomli``
package; JSON always works.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .experiment import OPTIMIZERS, SCHEDULES, RunConfig
from ..network import ACTIVATIONS


class OptionError(ValueError):
    """A bad option value, its message naming the option as its source spells it."""


# -- value types: text in, value out; ArgumentTypeError says what is wrong -------------------


def _number(text: str, kind, low=None, low_open=False, what="", high=None, high_open=False):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    if low is not None and (value <= low if low_open else value < low):
        raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
    if high is not None and (value >= high if high_open else value > high):
        raise argparse.ArgumentTypeError(
            f"must be {'below' if high_open else 'at most'} {high}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, what="an integer")


def nonnegative_int(text: str) -> int:
    return _number(text, int, 0, what="an integer")


def positive_float(text: str) -> float:
    return _number(text, float, 0.0, low_open=True, what="a number")


def nonnegative_float(text: str) -> float:
    return _number(text, float, 0.0, what="a number")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, 0.0, what="a number", high=1.0, high_open=True)


# Thread counts go to C ints (OpenBLAS, OpenMP).
MAX_THREADS = 2 ** 31 - 1


def thread_count(text: str) -> int:
    return _number(text, int, 1, what="an integer", high=MAX_THREADS)


def init_option(text: str):
    """``he``, ``xavier`` or a positive sigma."""
    if text in ("he", "xavier"):
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be he, xavier or a positive sigma, got {text!r}")


def norm_option(text: str) -> Optional[str]:
    """batch, layer or none."""
    if text not in ("batch", "layer", "none"):
        raise argparse.ArgumentTypeError(f"must be batch, layer or none, got {text!r}")
    return None if text == "none" else text


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(names)})")
        return text
    parse.metavar = "{" + ",".join(names) + "}"  # type: ignore[attr-defined]
    return parse


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: ``name`` is its RunConfig field (or ``seed``, ``blas_threads``), its key in
    a run file; ``flag`` its command-line spelling. ``kind``: "value", "list" (one or more
    values), "switch" (a flag that sets True) or "off" (a flag that sets False)."""

    name: str
    parse: Optional[Callable[[str], Any]]
    help: str
    kind: str = "value"
    flag: Optional[str] = None
    group: str = "training"
    metavar: Optional[str] = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


RUN_OPTIONS = (
    Option("hidden", positive_int, "hidden layer widths", "list", group="network",
           metavar="W"),
    Option("batch_norm", None, "no batch normalization", "off", "--no-bn", group="network"),
    Option("norm", norm_option, "normalization layer: batch, layer or none (default: as "
           "--no-bn says)", group="network"),
    Option("bn_placement", _choice("before", "after"), "normalization before or after the "
           "activation", group="network"),
    Option("activation", _choice(*ACTIVATIONS), "activation function", group="network"),
    Option("residual", None, "residual connections between equal widths", "switch",
           group="network"),
    Option("expansion", positive_int, "pre-norm residual blocks with this expansion factor "
           "(with --residual, a norm and equal --hidden widths)", group="network"),
    Option("dropout", fraction, "dropout rate of the hidden layers", group="network"),
    Option("init", init_option, "he, xavier, or sigma: weights drawn from N(0, sigma^2)",
           group="network"),
    Option("dtype", _choice("float32", "float64"), "precision", group="network"),
    Option("precision", _choice("fp32", "bf16-mixed"), "bf16-mixed: the layer products in "
           "bfloat16 with float32 accumulation (float32 only; pip install 'cbn[bf16]')",
           group="network"),
    Option("lam", nonnegative_float, "L2 strength lambda"),
    Option("batch_size", positive_int, "mini-batch size"),
    Option("epochs", positive_int, "train this many epochs, with --cycles cycles over them "
           "(default: as many as --cycles take)"),
    Option("cycles", positive_float, "learning-rate cycles to train for"),
    Option("schedule", _choice(*SCHEDULES), "learning-rate schedule: cyclic (eta-min..eta-max), "
           "constant (eta-max), cosine, onecycle; all but cyclic need --epochs"),
    Option("eta_min", positive_float, "smallest learning rate"),
    Option("eta_max", positive_float, "largest learning rate"),
    Option("step_size", positive_int, "steps per half cycle (default 5 * training images / "
           "batch size, or with --epochs the steps over 2 cycles)", metavar="N_S"),
    Option("optimizer", _choice(*OPTIMIZERS), "sgd (the course's, with --momentum), adam, "
           "adamw, lamb, lion"),
    Option("momentum", nonnegative_float, "heavy-ball momentum of sgd, below 1"),
    Option("weight_decay", nonnegative_float, "decoupled weight decay of adamw, lamb and lion"),
    Option("label_smoothing", fraction, "label smoothing of the cross-entropy"),
    Option("ema", fraction, "decay of a moving average of the weights, which the network "
           "takes at the end (0: none)"),
    Option("ema_every", positive_int, "with --ema: update the average every this many steps"),
    Option("precise_bn", nonnegative_int, "with --ema: recompute the averaged network's "
           "batch-norm statistics over this many training batches"),
    Option("mixup", nonnegative_float, "mixup alpha: batches mixed with themselves reversed, "
           "shares from Beta(alpha, alpha) (0: none)", group="augmentation"),
    Option("hflip", None, "augment: random horizontal flips", "switch", group="augmentation"),
    Option("shift", nonnegative_int, "augment: random translations of up to this many pixels",
           group="augmentation"),
    Option("noise", nonnegative_float, "augment: pixel jitter of this standard deviation",
           group="augmentation"),
    Option("eval_points", positive_int, "history points over the run (default once an "
           "epoch)"),
    Option("tta", None, "score validation and test on each image and its mirror", "switch"),
    Option("seed", nonnegative_int, "seed of the initialisation and the shuffling"),
    Option("blas_threads", thread_count, "BLAS threads (default: one per core, or "
           "$OPENBLAS_NUM_THREADS)", group="run", metavar="N"),
)
OPTIONS_BY_NAME = {o.name: o for o in RUN_OPTIONS}
DEFAULTS: Dict[str, Any] = {**{f.name: f.default for f in fields(RunConfig)}, "seed": 0,
                            "blas_threads": None}


def add_run_arguments(parser: argparse.ArgumentParser, groups: Mapping[str, Any]) -> None:
    """Add every option of ``RUN_OPTIONS`` to ``parser`` (in the argument group of its
    ``group``, from ``groups``), with no default: a value is set only when given, so run
    files and defaults fill in the rest (``run_values``)."""
    for o in RUN_OPTIONS:
        target = groups.get(o.group, parser)
        default = DEFAULTS[o.name]
        shown = (" ".join(map(str, default)) if isinstance(default, tuple) else default)
        help = o.help if o.kind in ("switch", "off") or "default" in o.help or default is None \
            else f"{o.help} (default {shown})"
        common = dict(dest=o.name, default=argparse.SUPPRESS, help=help)
        if o.kind == "switch":
            target.add_argument(o.option, action="store_true", **common)
        elif o.kind == "off":
            target.add_argument(o.option, action="store_false", **common)
        else:
            target.add_argument(o.option, type=o.parse,
                                metavar=o.metavar or getattr(o.parse, "metavar", None),
                                nargs="+" if o.kind == "list" else None, **common)


def run_values(given: Mapping[str, Any], file: Optional[str] = None) -> Dict[str, Any]:
    """Every option's value: the defaults, then ``file``'s (a run file), then ``given``
    (the command line's), checked together (``OptionError`` names each option as the command
    line spells it, or as ``FILE: key``)."""
    values = dict(DEFAULTS)
    source: Dict[str, str] = {}
    if file is not None:
        for name, value in read_run_file(file).items():
            values[name], source[name] = value, f"{file}: {name}"
    for name, value in given.items():
        values[name], source[name] = value, OPTIONS_BY_NAME[name].option
    values["hidden"] = tuple(values["hidden"])

    def say(name: str) -> str:
        return source.get(name) or OPTIONS_BY_NAME[name].option

    check_together(values, say)
    return values


def check_together(values: Mapping[str, Any], say: Callable[[str], str]) -> None:
    """What no single option's type checks: their combinations."""
    if values["schedule"] in ("cyclic", "cosine") and values["eta_min"] >= values["eta_max"]:
        raise OptionError(f"{say('eta_min')} ({values['eta_min']:g}) must be below "
                          f"{say('eta_max')} ({values['eta_max']:g})")
    if values["momentum"] >= 1:
        raise OptionError(f"{say('momentum')} must be below 1, got {values['momentum']:g}")
    if values["optimizer"] != "sgd" and values["momentum"]:
        raise OptionError(f"{say('momentum')} is sgd's; {say('optimizer')} "
                          f"{values['optimizer']} keeps its own")
    norm = values["norm"]
    batch = values["batch_norm"] if norm == "auto" else norm == "batch"
    if values["batch_size"] < 2 and batch:
        raise OptionError(f"{say('batch_size')} must be >= 2 with batch normalization")
    if values["precise_bn"] and not values["ema"]:
        raise OptionError(f"{say('precise_bn')} recomputes the averaged weights' statistics; "
                          f"it needs {say('ema')}")
    if values["schedule"] != "cyclic" and values["epochs"] is None:
        raise OptionError(f"{say('schedule')} {values['schedule']} needs --epochs (cycles "
                          "count the cyclic schedule's cycles only)")


def config_of(values: Mapping[str, Any]) -> RunConfig:
    """The ``RunConfig`` of ``run_values``' result."""
    return RunConfig(**{f.name: values[f.name] for f in fields(RunConfig)})


def read_run_file(path: str) -> Dict[str, Any]:
    """The options of a run file (``.toml``, else JSON), each checked by its option's type;
    ``OptionError`` naming the file (and the key) otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise OptionError(f"--config {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".toml"):
            document = _toml().loads(raw.decode("utf-8"))
        else:
            document = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise OptionError(f"--config {path}: not valid {kind}: {exc}") from None
    if not isinstance(document, dict):
        raise OptionError(f"--config {path}: must hold a table of options, got "
                          f"{type(document).__name__}")
    values = {}
    for key, value in document.items():
        if key not in OPTIONS_BY_NAME:
            close = difflib.get_close_matches(str(key), list(OPTIONS_BY_NAME), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OptionError(f"{path}: unknown option {key!r}{hint}")
        values[key] = _file_value(OPTIONS_BY_NAME[key], value, f"{path}: {key}")
    return values


def _file_value(o: Option, value: Any, where: str) -> Any:
    """A run file's ``value`` for option ``o``, checked as the command line checks its text."""
    if o.kind in ("switch", "off"):
        if not isinstance(value, bool):
            raise OptionError(f"{where} must be true or false, got {value!r}")
        return value
    items = value if o.kind == "list" else [value]
    if o.kind == "list" and (not isinstance(value, list) or not value):
        raise OptionError(f"{where} must be a list of one or more values, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise OptionError(f"{where}: expected a number or a name, got {item!r}")
        if o.parse in (positive_int, nonnegative_int, thread_count) and not isinstance(item, int):
            raise OptionError(f"{where}: expected an integer, got {item!r}")
        try:
            out.append(o.parse(str(item)))
        except argparse.ArgumentTypeError as exc:
            raise OptionError(f"{where}: {exc}") from None
    return tuple(out) if o.kind == "list" else out[0]


def _toml():
    try:
        import tomllib
        return tomllib
    except ImportError:
        try:
            import tomli
            return tomli
        except ImportError:
            raise OptionError("TOML run files need Python 3.11 or the tomli package "
                              "(pip install tomli); JSON run files need nothing") from None


def run_file_text(values: Mapping[str, Any]) -> str:
    """A JSON run file holding ``values`` where they differ from the defaults."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                       if k in OPTIONS_BY_NAME and v != DEFAULTS[k]}, indent=1) + "\n"


def estimator_config(*, hidden_layer_sizes: Sequence[int] = (50, 50), batch_norm: bool = True,
                     bn_placement: str = "before", dropout: float = 0.0, norm="auto",
                     activation: str = "relu", residual: bool = False,
                     label_smoothing: float = 0.0, mixup: float = 0.0, alpha: float = 0.005,
                     batch_size: int = 100, optimizer: str = "sgd", eta_min: float = 1e-5,
                     eta_max: float = 1e-1, cycles: float = 2, max_iter: int = 20,
                     dtype: str = "float32", precision: str = "fp32",
                     **_ignored) -> RunConfig:
    """The ``RunConfig`` of a ``cbn.sklearn.MLPClassifier``'s parameters (``get_params()``):
    ``alpha`` is ``lam``, ``max_iter`` the epochs with ``cycles`` cycles over them. Its
    parameters that only the estimator has (standardisation, early stopping, verbosity, the
    random state, an ``Augment`` or optimizer object) are left out."""
    hidden = (hidden_layer_sizes,) if isinstance(hidden_layer_sizes, int) \
        else tuple(hidden_layer_sizes)
    return RunConfig(hidden=hidden, batch_norm=batch_norm, bn_placement=bn_placement,
                     dropout=dropout, norm=norm, activation=activation, residual=residual,
                     label_smoothing=label_smoothing, mixup=mixup, lam=alpha, batch_size=batch_size,
                     optimizer=optimizer if isinstance(optimizer, str) else "sgd",
                     eta_min=eta_min, eta_max=eta_max, cycles=cycles, epochs=max_iter,
                     dtype=dtype, precision=precision)


def gradcheck_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a gradient check (``cbn gradcheck`` and examples/gradient_check.py)."""
    parser.add_argument("--n", type=positive_int, default=10,
                        help="training images in the batch (>= 2; default 10)")
    parser.add_argument("--dims", type=positive_int, default=20,
                        help="input features kept (the first ones; default 20)")
    parser.add_argument("--lam", type=nonnegative_float, default=0.005,
                        help="L2 strength, so its gradient is checked too (default 0.005)")
    parser.add_argument("--tolerance", type=positive_float, default=1e-6,
                        help="largest relative error accepted (default 1e-6)")

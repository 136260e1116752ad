"""Results as Markdown: the tables the examples write into their ``summary.md``, and
``REPORT.md``, which gathers every example's results folder into one document next to the
numbers the course and the original report published.

Run ``cbn report`` (or ``cbn-report``, or ``python examples/report.py``) after the examples.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import reprlib
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .._files import user_path, write_text
from .tables import markdown_table, mean_of, number, percent

# --------------------------------------------------------------------------------------------
# Published numbers and targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A number someone published, and where our matching number lives in the results:
    ``example`` (results folder), ``keys`` (configuration names, shell-style patterns) and
    ``metric`` (a key of their entries)."""

    what: str
    published: str
    source: str
    example: str
    keys: str
    metric: str


# Numbers published elsewhere that the examples reproduce, with their source (the course's
# assignment text and the original report); nothing below is measured by cbn.
REFERENCE_NUMBERS: Tuple[Reference, ...] = (
    Reference("3-layer [50, 50] with BN: test accuracy", "≈ 53.5 %",
              "KTH DD2424 assignment 3 instructions (course)", "three_layer", "bn",
              "test_accuracy"),
    Reference("gradient check: max relative error", "≈ 1 (wrong gradients)",
              "the original report", "gradient_check", "*", "max_relative_error"),
    Reference("sensitivity to initialisation, with BN: accuracy", "≈ 15 % (validation)",
              "the original report", "sensitivity", "sigma=*/bn", "val_accuracy"),
)


@dataclass(frozen=True)
class Target:
    """A goal for our own numbers: every entry matching ``keys`` in ``example`` must have
    its ``metric`` (mean over runs when several) ``>=`` or ``<=`` ``value``; ``op`` None
    means "report it as is"."""

    what: str
    example: str
    keys: str
    metric: str
    op: Optional[str]
    value: Optional[float]


# The reproduction's goals (full protocol, means over 3 runs).
TARGETS: Tuple[Target, ...] = (
    Target("gradient check, every parameter (float64)", "gradient_check", "*",
           "max_relative_error", "<=", 1e-6),
    Target("3-layer with BN, test accuracy", "three_layer", "bn", "test_accuracy", ">=", 0.535),
    Target("3-layer without BN, test accuracy", "three_layer", "no_bn", "test_accuracy",
           ">=", 0.52),
    Target("9-layer with BN, test accuracy", "deep_network", "9-layer/bn", "test_accuracy",
           ">=", 0.515),
    Target("9-layer without BN, test accuracy", "deep_network", "9-layer/no_bn",
           "test_accuracy", None, None),
    Target("best λ after the fine search, 3 cycles, test accuracy", "lambda_search", "final",
           "test_accuracy", ">=", 0.54),
    Target("sensitivity with BN, test accuracy for every σ", "sensitivity", "sigma=*/bn",
           "test_accuracy", ">=", 0.50),
    Target("sensitivity without BN, test accuracy (chance is 10 %)", "sensitivity",
           "sigma=*/no_bn", "test_accuracy", None, None),
    Target("bonus: best fully connected network, test accuracy", "bonus", "best",
           "test_accuracy", ">=", 0.65),
)

# Order of the sections in REPORT.md; other results folders follow alphabetically.
EXAMPLE_ORDER = ("gradient_check", "three_layer", "deep_network", "lambda_search",
                 "sensitivity", "bonus")

# --------------------------------------------------------------------------------------------
# REPORT.md
# --------------------------------------------------------------------------------------------


def load_results(results_dir: Path) -> Dict[str, Tuple[Path, dict]]:
    """Every ``<results_dir>/<folder>/results.json``, by folder name, in report order (the
    examples in EXAMPLE_ORDER, each full run before its ``--quick`` run)."""
    found = {}
    for path in sorted(Path(user_path(results_dir)).glob("*/results.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ValueError(f"{path}: not a readable results file: "
                             f"{reprlib.repr(str(exc))[1:-1]}") from None
        check_results(path, document)
        found[path.parent.name] = (path.parent, document)
    order = {name: i for i, name in enumerate(EXAMPLE_ORDER)}

    def rank(item):
        name, (_, document) = item
        example = _example(name, document)
        return order.get(example, len(order)), example, is_quick(document), name

    return dict(sorted(found.items(), key=rank))


# The metrics of the entries that the report reads (REFERENCE_NUMBERS and TARGETS).
_REPORTED = frozenset(r.metric for r in REFERENCE_NUMBERS) | frozenset(t.metric for t in TARGETS)


def _kind(value) -> str:
    """What a JSON value is, in the words of an error message."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list", str: "text", type(None): "null"}.get(
        type(value), type(value).__name__)


def check_results(path: Path, document: object) -> None:
    """Check the structure of a ``results.json`` where the report reads it: the top level
    and ``meta`` objects, the provenance fields in ``meta`` (each optional, but of the kind
    :class:`ExampleRecord` writes) and the reported metrics of every entry (a number, null, or
    a ``{"mean", "std", "values"}`` object). Raises ValueError naming the file and the field
    ("results/x/results.json: meta.data must be an object, got a list")."""

    def fail(field: str, expected: str, value: object) -> None:
        raise ValueError(f"{path}: {field} must be {expected}, got {_kind(value)}")

    def obj(field: str, value: object) -> Mapping:
        if not isinstance(value, dict):
            fail(field, "an object", value)
        return value

    def items(field: str, value: object) -> List:
        if not isinstance(value, list):
            fail(field, "a list", value)
        return value

    def number(field: str, value: object, null: bool = False) -> None:
        if value is None and null:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(field, "a number" + (" or null" if null else ""), value)
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{path}: {field} is too large a number") from None

    def scalar(field: str, value: object) -> None:  # shown as it is
        if isinstance(value, (dict, list)):
            fail(field, "text or a number", value)

    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a cbn results file: it holds {_kind(document)}, not an "
                         "object")
    if "meta" not in document:
        raise ValueError(f"{path}: not a cbn results file (no 'meta' entry)")
    meta = obj("meta", document["meta"])
    for key in ("example", "command", "started", "finished", "quick"):
        scalar(f"meta.{key}", meta.get(key))
    obj("meta.options", meta.get("options", {}))
    scalar("meta.options.quick", meta.get("options", {}).get("quick"))
    data = obj("meta.data", meta.get("data", {}))
    for key in ("source", "protocol", "train", "val", "test"):
        scalar(f"meta.data.{key}", data.get(key))
    machine = obj("meta.machine", meta.get("machine", {}))
    for key, value in machine.items():
        if key != "blas":
            scalar(f"meta.machine.{key}", value)
    for i, pool in enumerate(items("meta.machine.blas", machine.get("blas", []))):
        for key, value in obj(f"meta.machine.blas[{i}]", pool).items():
            scalar(f"meta.machine.blas[{i}].{key}", value)
    for i, seed in enumerate(items("meta.seeds", meta.get("seeds", []))):
        scalar(f"meta.seeds[{i}]", seed)
    for key in ("wall_time", "training_time"):
        if key in meta:
            number(f"meta.{key}", meta[key])
    for key in ("load_average_start", "load_average_end"):
        value = meta.get(key)
        for i, x in enumerate(value if isinstance(value, list) else [value]):
            scalar(f"meta.{key}" + (f"[{i}]" if isinstance(value, list) else ""), x)
    for key, seeds in obj("meta.reused_runs", meta.get("reused_runs") or {}).items():
        for i, seed in enumerate(items(f"meta.reused_runs.{key}", seeds)):
            scalar(f"meta.reused_runs.{key}[{i}]", seed)
    for key, runs in obj("meta.run_wall_times", meta.get("run_wall_times") or {}).items():
        for i, run in enumerate(items(f"meta.run_wall_times.{key}", runs)):
            field = f"meta.run_wall_times.{key}[{i}]"
            number(f"{field}.wall_time", obj(field, run).get("wall_time"))
    for key, entry in document.items():
        if key == "meta" or not isinstance(entry, dict):
            continue
        for metric in _REPORTED & set(entry):
            field, value = f"{key}.{metric}", entry[metric]
            if not isinstance(value, dict):
                number(field, value, null=True)
                continue
            values = items(f"{field}.values", value.get("values", []))
            for key in ("mean", "std") if len(values) > 1 else ("mean",):
                if key not in value:
                    raise ValueError(f"{path}: {field} has no '{key}'")
            for key in ("mean", "std"):
                if key in value:
                    number(f"{field}.{key}", value[key], null=True)
            for i, x in enumerate(values):
                number(f"{field}.values[{i}]", x, null=True)


def is_quick(document: Mapping[str, object]) -> bool:
    """Whether a results document comes from a ``--quick`` run."""
    meta = document.get("meta", {})
    return bool(meta.get("quick", meta.get("options", {}).get("quick", False)))


def _example(folder: str, document: Mapping[str, object]) -> str:
    return str(document.get("meta", {}).get("example") or folder)


def _matching(document: Mapping[str, object], pattern: str,
              metric: str) -> List[Tuple[str, object]]:
    return [(key, entry[metric]) for key, entry in document.items()
            if key != "meta" and fnmatch.fnmatchcase(key, pattern)
            and isinstance(entry, Mapping) and metric in entry]


def _format(metric: str, value) -> str:
    return percent(value) + " %" if metric.endswith("accuracy") else number(value, ".2e")


def _ours(results, example: str, pattern: str,
          metric: str) -> Tuple[str, List[Tuple[List[float], Mapping[str, object]]]]:
    """Our numbers for a reference or target: the text for the table, and the means of each
    results folder of ``example`` with its document (quick runs labelled as such)."""
    folders = [(name, doc) for name, (_, doc) in results.items()
               if _example(name, doc) == example]
    if not folders:
        return f"not run (no results/{example})", []
    texts, found = [], []
    for name, document in folders:
        label = f"{name}, QUICK run: " if is_quick(document) else (
            f"{name}: " if len(folders) > 1 else "")
        matches = _matching(document, pattern, metric)
        if not matches:
            texts.append(f"{label}no '{pattern}' entry with {metric}")
            continue
        if len(matches) == 1 and matches[0][0] == pattern:
            texts.append(label + _format(metric, matches[0][1]))
        else:
            texts.append(label + "<br>".join(f"{key}: {_format(metric, value)}"
                                             for key, value in matches))
        found.append(([mean_of(value) for _, value in matches], document))
    return "<br>".join(texts), found


def _verdict(target: Target, found: List[Tuple[List[float], Mapping[str, object]]]) -> str:
    if not found:
        return "not run"
    judged = [means for means, document in found if not is_quick(document)
              and document["meta"].get("data", {}).get("protocol") == "full"]
    if not judged:  # the targets are for full runs on the full protocol only
        if all(is_quick(document) for _, document in found):
            return "n/a (quick run)"
        protocols = sorted({str(d["meta"].get("data", {}).get("protocol")) for _, d in found})
        return f"n/a (protocol {', '.join(protocols)})"
    if target.op is None:
        return "reported as is"
    compare: Callable[[float, float], bool] = (
        (lambda a, b: a >= b) if target.op == ">=" else (lambda a, b: a <= b))
    ok = all(math.isfinite(m) and compare(m, target.value) for means in judged for m in means)
    return "met" if ok else "**missed**"


def _target_text(target: Target) -> str:
    if target.op is None:
        return "report as is"
    if target.metric.endswith("accuracy"):
        return f"{target.op} {100 * target.value:g} %"
    return f"{target.op} {target.value:g}"


def comparison_section(results) -> str:
    """Our numbers next to the published ones, and each target met or missed."""
    rows = [[ref.what, _ours(results, ref.example, ref.keys, ref.metric)[0], ref.published,
             ref.source] for ref in REFERENCE_NUMBERS]
    published = markdown_table(["quantity", "ours (mean ± std over runs)", "published",
                                "source"], rows)
    rows = []
    for target in TARGETS:
        text, found = _ours(results, target.example, target.keys, target.metric)
        rows.append([target.what, text, _target_text(target), _verdict(target, found)])
    targets = markdown_table(["target (full protocol)", "ours", "target", "verdict"], rows)
    return ("## Our numbers and the published ones\n\n" + published
            + "\n\nPublished numbers are quoted from `cbn.lab.report.REFERENCE_NUMBERS`, which "
              "names their sources; ours are read from each example's `results.json`.\n\n"
            + "## Targets\n\n" + targets + "\n")


def _demote(markdown: str, levels: int = 1) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown,
                  flags=re.MULTILINE)


def _relink(markdown: str, folder: Path, report_dir: Path) -> str:
    """Point the summary's relative image and file links at ``folder`` as seen from the
    report."""
    prefix = Path(os.path.relpath(folder, report_dir)).as_posix()

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith("/"):
            return match.group(0)
        return f"{match.group(1)}({prefix}/{target})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, markdown)


def _machine_lines(meta: Mapping[str, object]) -> List[str]:
    machine = meta.get("machine", {})
    blas = "; ".join(sorted(f"{b.get('internal_api')} {b.get('version')} "
                            f"({b.get('num_threads')} threads, {b.get('threading_layer')})"
                            for b in machine.get("blas", [])))
    return [f"- machine: {machine.get('platform')}; CPU {machine.get('cpu')}, "
            f"{machine.get('cores')} cores ({machine.get('usable_cores')} usable)",
            f"- versions: Python {machine.get('python')}, numpy {machine.get('numpy')}, "
            f"scipy {machine.get('scipy')}, cbn {machine.get('cbn')}",
            f"- BLAS: {blas or 'unknown'}"]


def provenance_section(meta: Mapping[str, object]) -> str:
    """Command, data, seeds, machine and wall times of one example run."""
    data = meta.get("data", {})
    lines = [f"- command: `{meta.get('command')}`"
             + (" (QUICK run: a tiny budget)" if meta.get("quick") else ""),
             f"- data: {data.get('source')} (protocol {data.get('protocol')}; "
             f"{data.get('train')} train / {data.get('val')} val / {data.get('test')} test)",
             f"- seeds: {', '.join(map(str, meta.get('seeds', [])))}",
             f"- started {meta.get('started')}, finished {meta.get('finished')}, "
             f"wall time {meta.get('wall_time', float('nan')):.1f} s; training time of all "
             f"runs {meta.get('training_time', float('nan')):.1f} s"]
    if meta.get("load_average_start") is not None:
        lines.append(f"- machine load average (1/5/15 min) during this invocation: "
                     f"{meta['load_average_start']} at the start, {meta.get('load_average_end')} "
                     f"at the end (above {meta.get('machine', {}).get('cores')}, the number of "
                     "cores, other work was competing for the CPU)")
    lines += _machine_lines(meta)
    reused = meta.get("reused_runs") or {}
    if reused:
        lines.append("- runs trained by an earlier invocation with the same options and "
                     "reused (their wall times are from then): " + "; ".join(f"{key} seeds {', '.join(map(str, seeds))}"
                                                   for key, seeds in reused.items()))
    times = meta.get("run_wall_times") or {}
    if times:
        rows = [[key, ", ".join(f"{r['wall_time']:.1f}" for r in runs)]
                for key, runs in times.items()]
        lines += ["", markdown_table(["configuration", "wall time of each run (s)"], rows)]
    return "\n".join(lines)


def build_report(results_dir: Path, report_path: Path) -> str:
    """The text of REPORT.md for the results folders under ``results_dir``."""
    results = load_results(results_dir)
    if not results:
        raise ValueError(f"no results found: {results_dir}/*/results.json does not exist; "
                         "run the examples first")
    report_dir = report_path.resolve().parent
    parts = ["# cbn: DD2424 assignment 3 reproduced on CIFAR-10", "",
             f"Generated by `cbn-report` on "
             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from "
             f"`{results_dir}` ({', '.join(results)}). Accuracies are percentages, mean ± "
             "standard deviation over runs (n = number of runs).", ""]
    sources = {(doc["meta"].get("data", {}).get("source"), doc["meta"].get("data", {})
                .get("protocol")) for _, doc in results.values()}
    if any(source == "sample" for source, _ in sources):
        parts += ["> **Note:** some results below come from the small sample shipped with cbn, "
                  "not the full CIFAR-10; their accuracies are not comparable with the "
                  "published numbers.", ""]
    quick = [name for name, (_, doc) in results.items() if is_quick(doc)]
    if quick:
        parts += [f"> **Note:** {', '.join(quick)}: QUICK runs (`--quick`, a tiny budget that "
                  "only exercises the code); their numbers say nothing about the method.", ""]
    parts.append(comparison_section(results))
    parts += ["## Machine", ""]
    machines: Dict[str, List[str]] = {}
    for name, (_, document) in results.items():
        machines.setdefault("\n".join(_machine_lines(document["meta"])), []).append(name)
    for lines, names in machines.items():
        parts += [f"Examples {', '.join(names)}:" if len(machines) > 1 else
                  "Every example ran on:", "", lines, ""]
    trained = sum(doc["meta"].get("training_time", 0.0) for _, doc in results.values())
    invoked = sum(doc["meta"].get("wall_time", 0.0) for _, doc in results.values())
    parts += [f"Training time, the sum of the wall times of every run: {trained / 60:.1f} min "
              "(runs made in parallel, such as search trials, each count in full); the "
              "examples' last invocations took "
              f"{invoked / 60:.1f} min, reusing runs trained by earlier ones where noted. Each "
              "example's runs are listed in its provenance section.", ""]
    for name, (folder, document) in results.items():
        summary_path = folder / "summary.md"
        try:
            summary = (summary_path.read_text(encoding="utf-8") if summary_path.exists()
                       else f"# {name}\n\n(no summary.md)")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{summary_path}: not a readable summary: "
                             f"{reprlib.repr(str(exc))[1:-1]}") from None
        parts += [_relink(_demote(summary), folder.resolve(), report_dir).rstrip(), "",
                  "### Provenance", "", provenance_section(document["meta"]), ""]
    return "\n".join(parts)


def write_report(results_dir: Path, out: Optional[Path] = None) -> Path:
    """Write REPORT.md (default ``results_dir/REPORT.md``) from the results folders under
    ``results_dir``, atomically; return its path. ValueError when there are no results."""
    out = report_file(results_dir, out)
    write_text(out, build_report(Path(results_dir), out))
    return out


def report_file(results_dir: Path, out: Optional[Path] = None) -> Path:
    """Where the report goes: ``out``, by default ``results_dir/REPORT.md`` (``~`` expanded)."""
    return Path(user_path(out if out is not None else Path(results_dir) / "REPORT.md"))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cbn-report`` and ``cbn report``: ``--results`` and ``--out``."""
    parser.add_argument("--results", metavar="DIR", default="results",
                        help="folder holding one sub-folder per example (default results)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="the report to write (default DIR/REPORT.md)")


REPORT_DESCRIPTION = ("Gather the examples' results folders (DIR/*/results.json, summary.md "
                      "and figures) into one Markdown report.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``cbn-report [--results DIR] [--out FILE]``: write REPORT.md from the results folders."""
    parser = argparse.ArgumentParser(prog="cbn-report", description=REPORT_DESCRIPTION)
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    out = report_file(Path(args.results), Path(args.out) if args.out else None)
    try:
        write_report(Path(args.results), out)
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:  # reading is checked above: this is the report's own write
        return _fail(f"{out}: could not write the report: {exc.strerror or exc}")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print("cbn-report: " + " ".join(message.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

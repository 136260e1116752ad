"""The records of a search on disk: the resumable JSON-lines results file (a header line,
then one line per finished trial, flushed and synced as each trial ends) and the CSV and JSON
tables."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence

from . import _validate as check
from ._files import PathLike, json_ready, write_text
from .space import Trial

FORMAT_VERSION = 1  # of the JSON-lines results file


def _differences(saved: dict, wanted: dict) -> List[str]:
    return [f"{str(key)[:40]}: file has {check.short_repr(saved.get(key))}, this "
            f"search {check.short_repr(wanted.get(key))}"
            for key in sorted(set(saved) | set(wanted), key=str)[:50]
            if saved.get(key) != wanted.get(key)]


# What an "ok" record holds beyond its configuration: the metrics of one run.
_METRICS = ("wall_time", "resolved_step_size") + tuple(
    f"{split}_{what}" for split in ("train", "val", "test")
    for what in ("accuracy", "loss", "cost"))


class ResultsFile:
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
        if not isinstance(head, dict) or "cbn_search" not in head:
            raise ValueError(f"{self.path} is not a cbn search results file (version "
                             f"{FORMAT_VERSION}); choose another results path")
        check.file_version(head["cbn_search"], FORMAT_VERSION,
                           lambda message: ValueError(f"{self.path}: {message}"),
                           field="cbn_search")
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



def _columns(records: Sequence[dict]) -> List[str]:
    columns: Dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return list(columns)


def write_csv(records: Sequence[dict], path: PathLike) -> None:
    """Write the records as CSV: one column per key seen (in first-seen order), empty cells
    for missing values and None, lists (``hidden``) as JSON text such as ``[50, 50]``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(records), restval="", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else
                         ("" if v is None else v) for k, v in record.items()})
    write_text(path, out.getvalue())


def write_json(records: Sequence[dict], path: PathLike) -> None:
    """Write the records as one JSON list (NaN/inf losses appear as NaN/Infinity)."""
    write_text(path, json.dumps([_plain_record(r) for r in records], indent=1) + "\n")


def _plain_record(record: dict) -> dict:
    return {k: json_ready(v, strict=False) for k, v in record.items()}

"""The records of a search on disk: the resumable JSON-lines results file (a header line,
then one line per finished trial, appended and synced as each trial ends, locked while a
search writes it) and the CSV and JSON tables."""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .. import _validate as check
from .._files import PathLike, json_ready, user_path, write_text
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
    """Append-only JSON-lines log of a search, one whole line per trial, synced as it ends.

    Line 1 is the header identifying the search (seed, space, base config, data); each
    further line is one finished trial's record. Lines may end in ``\\n``, ``\\r\\n`` or
    ``\\r`` (mixed too); blank lines are skipped. A last line cut off by a kill is dropped
    (that trial runs again); a last record without a line end is kept and ended first.

    The file is only ever appended to: one that is not a results file of this search is
    refused, never replaced; only a header of this very search cut off by a kill is written
    again. While a search has it open, it holds an exclusive ``flock`` on it (POSIX), and a
    second search on the same file is refused at once rather than mixing its lines in."""

    def __init__(self, path: PathLike, header: dict) -> None:
        self.path = Path(user_path(path))
        self.header = json.loads(json.dumps(header))
        self._fd: Optional[int] = None
        self._newline = b"\n"

    def resume(self, trials: List[Trial]) -> Dict[int, dict]:
        """Open and lock the file (creating it with the header if new or empty); return the
        saved records of ``trials`` by index, after checking every one of them (before any
        trial runs) and that they belong to this search. Errors name the file and the line."""
        self._fd = self._open()
        try:
            return self._resume(trials)
        except BaseException:
            self.close()
            raise

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{self.path} is not a regular file; give a file path for "
                                 "the results")
            _lock(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _resume(self, trials: List[Trial]) -> Dict[int, dict]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        raw = b"".join(iter(lambda: os.read(self._fd, 1 << 20), b""))
        ours = json.dumps(self.header).encode("utf-8") + b"\n"
        if len(raw) < len(ours) and ours.startswith(raw):  # new, or its header cut off
            os.ftruncate(self._fd, 0)
            self._write(ours)
            return {}
        if not raw.strip():
            raise ValueError(f"{self.path} holds only white space, not a cbn search results "
                             "file; choose another results path")
        done: Dict[int, dict] = {}
        keep = len(raw)
        for number, (start, line, end) in enumerate(_lines(raw), 1):
            if number == 1:
                self._check_header(self._parse(number, line))
                self._newline = end or b"\n"  # append in the file's own convention
                continue
            if not line.strip():
                continue
            try:
                record = self._parse(number, line)
            except ValueError:
                if end or not line.startswith(_RECORD_START):
                    raise
                keep = start  # the last record, cut off by a kill: dropped, its trial reruns
                break
            index = _check_record(f"{self.path}, line {number}", record)
            if index < len(trials):
                _check_matches(self.path, record, trials[index])
                done[index] = record
        if keep < len(raw):
            os.ftruncate(self._fd, keep)
        elif not raw.endswith((b"\n", b"\r")):  # else the next record would join that line
            self._write(self._newline)
        return done

    def _check_header(self, head) -> None:
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
        """Append ``record`` as one line, in one write (O_APPEND), synced to disk."""
        self._write(json.dumps(record).encode("utf-8") + self._newline)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # os.write writes less only when interrupted or out of space
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        """Unlock and close the file (unlocking first: a child forked during the search
        shares the lock, and must not keep the file locked after it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


_LINE_END = re.compile(rb"\r\n|\r|\n")
_RECORD_START = b'{"trial": '  # how every record run_trial makes begins


def _lines(raw: bytes) -> Iterator[Tuple[int, bytes, bytes]]:
    """(offset, text, line end) of each line of ``raw``; the last line's end is b"" when the
    file does not end with a line end."""
    start = 0
    for match in _LINE_END.finditer(raw):
        yield start, raw[start:match.start()], match.group()
        start = match.end()
    if start < len(raw):
        yield start, raw[start:], b""


def _lock(fd: int, path: Path) -> None:
    """Take the exclusive lock of a results file, or refuse: another search is writing it."""
    if fcntl is None:  # no flock on this system: unguarded
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        raise ValueError(f"{path} is in use by another search"
                         f"{f' (pid {holder})' if holder else ''}; wait for it to finish or "
                         "choose another results path") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise
        # a file system without locks (some network file systems): unguarded


def _lock_holder(fd: int) -> Optional[int]:
    """The process holding the flock of ``fd``'s file, from Linux's /proc/locks, else None."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
                    return int(fields[4]) or None
    except (OSError, ValueError):
        pass
    return None


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

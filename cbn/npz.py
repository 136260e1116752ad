"""Reading ``.npz`` files that may be damaged or hostile: every member's declared size,
shape and dtype checked before any data is read, checksums over a file's arrays, and typed
access to its members. No pickle anywhere: every value is a numeric array or a string in a
0-d unicode array.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from . import _validate as check
from ._files import PathLike, user_path


class CheckpointError(ValueError):
    """A saved network or checkpoint is truncated, corrupt, incomplete, or belongs to another
    run or network. The message starts with the file's path."""


# Bounds on what a file may declare before any of its arrays is read: memory stays within a
# small multiple of the file's size whatever its zip and .npy headers claim.
MAX_MEMBERS = 4096
MAX_TEXT_BYTES = 1 << 20  # JSON members (network_config, run, rng_state) and the checksum


@dataclass(frozen=True)
class Member:
    """What an ``.npz`` member declares before its data is read."""
    shape: Tuple[int, ...]
    dtype: np.dtype


Expect = Callable[[Dict[str, Member], Callable[[str], np.ndarray]], None]


def read_npz(path: PathLike, expect: Optional[Expect] = None,
             error: Optional[type] = None) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle, each only after every member's
    declared size was checked.

    First the zip directory and each member's ``.npy`` header are read (names, shapes,
    dtypes) and checked: plain numeric or text dtypes only, headers agreeing with the zip's
    sizes, all of it at most twice the file's size (a compressed member cannot expand into
    gigabytes). Then ``expect(members, read)`` may refuse the layout (``read(name)`` reads one
    member, e.g. a small JSON config that sizes the rest). Only then is the data read.

    Raises FileNotFoundError / PermissionError / IsADirectoryError as the OS reports them, and
    ``error`` (``CheckpointError`` by default) naming the file for anything else wrong with it
    (not a zip, a plain ``.npy``, object arrays, truncated or corrupt entries, or refused by
    ``expect``, whose own exceptions of that type pass through)."""
    path = user_path(path)
    error = CheckpointError if error is None else error

    def fail(message: str) -> Exception:
        return error(f"{path}: {message}")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(6) == b"\x93NUMPY":
                raise fail("a single .npy array, not a cbn network, checkpoint or other .npz "
                           "file")
            f.seek(0)
            try:
                archive = zipfile.ZipFile(f)
            except zipfile.BadZipFile:
                raise fail("not a cbn network, checkpoint or other .npz file (not a zip "
                           "archive)") from None
            with archive:
                members = _members(archive, size, fail)

                def read(name: str) -> np.ndarray:
                    with archive.open(name + ".npy") as member:
                        return np.lib.format.read_array(member, allow_pickle=False)

                if expect is not None:
                    expect(members, read)
                return {name: read(name) for name in members}
    except (FileNotFoundError, PermissionError, IsADirectoryError, error):
        raise
    except MemoryError:
        raise fail("too large to load into memory") from None
    except Exception as exc:  # untrusted bytes: whatever the zip/npy readers raise means corrupt
        raise fail(f"not a readable .npz file (truncated or corrupt?): "
                   f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _members(archive: zipfile.ZipFile, size: int, fail) -> Dict[str, Member]:
    """Names, shapes and dtypes of an archive's members from the headers alone, checked."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise fail(f"has {len(infos)} members, more than a cbn file ever holds")
    declared = sum(info.file_size for info in infos)
    if declared > 2 * size + (1 << 20):
        raise fail(f"declares {declared} bytes of arrays in a file of {size} bytes")
    members: Dict[str, Member] = {}
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if not name or name in members:
            raise fail(f"member {info.filename[:80]!r} is not a .npy array or is repeated")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):  # 3.0 only for non-latin-1 structured fields
                raise fail(f"{name[:80]!r} has .npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header = member.tell()
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufU":
            raise fail(f"{name[:80]!r} has dtype {dtype}: only numbers and text are allowed")
        if info.file_size != header + math.prod(shape) * dtype.itemsize:
            raise fail(f"{name[:80]!r}: its .npy header (shape {shape}, {dtype}) does not "
                       f"match its size in the archive ({info.file_size} bytes)")
        members[name] = Member(tuple(shape), dtype)
    return members


def parse_json(text: str, key: str, fail):
    """``text`` (member ``key``) parsed as JSON; ``fail(message)`` makes the error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise fail(f"'{key}' nests JSON too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise fail(f"'{key}' is not valid JSON: {str(exc)[:200]}") from None


def with_checksum(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``arrays`` plus their ``checksum`` (what ``verified`` checks on reading)."""
    return dict(arrays, checksum=np.array(_digest(arrays)))


def verified(arrays: Dict[str, np.ndarray], fail, required: bool = True) -> Dict[str, np.ndarray]:
    """``arrays`` without their ``checksum``, after checking it; ``fail(message)`` makes the
    error. Without ``required``, a file that has no checksum passes."""
    if "checksum" not in arrays and not required:
        return dict(arrays)
    checksum = member_text(arrays, "checksum", fail)
    arrays = {k: v for k, v in arrays.items() if k != "checksum"}
    if checksum != _digest(arrays):
        raise fail("content does not match its checksum: the file was modified or corrupted")
    return arrays


def _digest(arrays: Dict[str, np.ndarray]) -> str:
    """SHA-256 of every array's name, dtype, shape and bytes: a checkpoint changed by
    anything but ``save_checkpoint`` (a bit flip inside the zip's own CRC, an edit) is refused."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- typed access to untrusted arrays: ``fail(message)`` makes the error ----------------------

def member_array(arrays, key, fail) -> np.ndarray:
    """Member ``key`` as an array; missing is an error."""
    if key not in arrays:
        raise fail(f"missing '{key}'")
    return np.asarray(arrays[key])


def member_text(arrays, key, fail) -> str:
    """Member ``key`` as a string (a 0-d unicode array)."""
    value = member_array(arrays, key, fail)
    if value.shape != () or value.dtype.kind != "U":
        raise fail(f"'{key}' must be a 0-d string array, got {value.dtype} {value.shape}")
    return str(value)


def member_json(arrays, key, fail):
    """Member ``key`` as a string, parsed as JSON."""
    return parse_json(member_text(arrays, key, fail), key, fail)


def member_int(arrays, key, fail) -> int:
    """Member ``key`` as an integer (a 0-d integer array)."""
    value = member_array(arrays, key, fail)
    if value.shape != () or value.dtype.kind not in "iu":
        raise fail(f"'{key}' must be a 0-d integer array, got {value.dtype} {value.shape}")
    return int(value)


def member_version(arrays, key, newest: int, fail, oldest: int = 1) -> int:
    """Member ``key``, a file's format version, checked by ``cbn._validate.file_version``:
    one this cbn reads (``oldest`` to ``newest``), else an error saying whether a newer cbn
    wrote the file."""
    value = member_array(arrays, key, fail)
    if value.shape != ():
        raise fail(f"'{key}' must be one version number, got shape {value.shape}")
    return check.file_version(value.item(), newest, fail, field=key, oldest=oldest)


def member_float(arrays, key, fail) -> float:
    """Member ``key`` as a finite number (a 0-d numeric array)."""
    value = member_array(arrays, key, fail)
    if value.shape != () or value.dtype.kind not in "fiu" or not math.isfinite(float(value)):
        raise fail(f"'{key}' must be a finite 0-d number, got {value.dtype} {value!r:.80}")
    return float(value)

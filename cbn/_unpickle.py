"""A pickle reader for untrusted CIFAR-10 batch files: plain containers and numeric arrays only.

# Design: Python's unpickler calls whatever a file names, and even the few numpy globals
# the official files need are unsafe as they stand: ``dtype.__setstate__`` (reached through
# the BUILD opcode, which ``find_class`` never sees) accepts object fields that make numpy
# read raw bytes as pointers, ``_reconstruct`` and ``ndarray`` allocate any shape, and
# memo references build structures exponentially larger than the file (a tuple nested 40
# deep whose hash never finishes, a list whose conversion needs gigabytes). So this module
# runs the pure-Python unpickler with its own dispatch table:
#
# * an allowlist of opcodes: data, containers, memo, globals, REDUCE and BUILD; never
#   instance creation (INST, OBJ, NEWOBJ), extensions or persistent ids;
# * globals resolve to three factories, and REDUCE calls nothing else: an empty int8 array
#   (what ``ndarray.__reduce__`` starts from), a *description* of a plain numeric dtype (never
#   a real dtype object, so no dtype state is ever set), and latin-1 text to bytes;
# * BUILD runs only on an array made by that factory, and only after its state was checked:
#   a numeric dtype from the allowlist, a shape of non-negative ints, exactly
#   ``prod(shape) * itemsize`` bytes of data. numpy then builds it from that state alone;
# * every container is weighed as it is built (elements counting shared references, and
#   nesting depth), a container cannot change once inside another (so no cycles and no
#   stale weights), and bytes made by REDUCE and BUILD are charged to a budget of twice the
#   file size. Nothing grows beyond what the file's size allows, and every step is linear.
"""
from __future__ import annotations

import codecs
import io
import math
import pickle
from typing import BinaryIO

import numpy as np

from ._validate import short_repr

try:  # numpy >= 2 (1.26 also has this alias); avoids importing the deprecated numpy.core shim
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 1.26: numpy.core is the real module there
    from numpy.core.multiarray import _reconstruct

__all__ = ["RefusedPickle", "UnsafeGlobal", "MAX_DEPTH", "MAX_ELEMENTS", "load", "loads"]

# A CIFAR-10 batch nests 3 deep and holds ~20,000 elements (labels and file names).
MAX_DEPTH = 32
MAX_ELEMENTS = 1 << 22

# The dtypes of plain numeric arrays, as ``dtype.__reduce__`` names them.
_NUMERIC_CODES = frozenset(
    ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"])
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")
_CONTAINERS = (tuple, list, dict, set, frozenset)

class RefusedPickle(Exception):
    """The file is not a pickle of plain data and numeric arrays, or exceeds the limits."""


class UnsafeGlobal(RefusedPickle):
    """The file names a global outside the allowlist; nothing it names was run."""


class _DtypeSpec:
    """What a pickled numeric dtype describes, checked; becomes a real dtype only inside a
    checked array state."""

    __slots__ = ("code", "byteorder", "built")

    def __init__(self, code: str) -> None:
        self.code, self.byteorder, self.built = code, "=", False

    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _make_array(subtype, shape, typecode) -> np.ndarray:
    # ndarray.__reduce__ always starts from _reconstruct(ndarray, (0,), b'b').
    if (subtype is not np.ndarray or type(shape) is not tuple or shape != (0,)
            or type(typecode) not in (bytes, str) or typecode not in (b"b", "b")):
        raise RefusedPickle("_reconstruct is only allowed as ndarray.__reduce__ calls it, "
                            "_reconstruct(ndarray, (0,), b'b')")
    return _reconstruct(np.ndarray, (0,), b"b")


def _make_dtype(code, align=False, copy=True) -> _DtypeSpec:
    if type(code) is bytes:
        code = code.decode("latin-1")
    if type(code) is not str or code not in _NUMERIC_CODES:
        raise RefusedPickle(f"dtype {short_repr(code)} refused: only plain numeric dtypes "
                            f"({', '.join(sorted(_NUMERIC_CODES))}) are allowed")
    if type(align) not in (bool, int) or align:
        raise RefusedPickle("aligned (structured) dtypes are refused")
    return _DtypeSpec(code)


def _encode_latin1(text, encoding="utf-8") -> bytes:
    # py3 pickles bytes b as _codecs.encode(b.decode("latin1"), "latin1"); other codecs
    # (hex, base64, zlib, ...) could grow or transform data.
    if type(text) is not str or type(encoding) is not str or encoding.lower() not in _LATIN1:
        raise UnsafeGlobal(f"refused _codecs.encode with encoding {short_repr(encoding)}; only "
                           "latin-1 (how Python 3 pickles bytes) is allowed")
    return codecs.encode(text, "latin1")


_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _make_array,
    ("numpy._core.multiarray", "_reconstruct"): _make_array,
    ("numpy", "ndarray"): np.ndarray,  # only as _reconstruct's first argument
    ("numpy", "dtype"): _make_dtype,
    ("_codecs", "encode"): _encode_latin1,
}
_CALLABLE = (_make_array, _make_dtype, _encode_latin1)


class _BoundedFile:
    """Reads of an open file that refuse to ask for more bytes than remain in it, so a
    declared length is checked before anything of that size is allocated."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file, self._left = file, size

    def read(self, n: int = -1) -> bytes:
        if n > self._left:
            raise RefusedPickle(f"declares {n} bytes where only {self._left} remain "
                                "(truncated or corrupt)")
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline(self._left)
        self._left -= len(line)
        return line


class _Opcodes(dict):
    def __missing__(self, key: int):
        raise RefusedPickle(f"pickle opcode {bytes([key])!r} is not allowed in a data file")


class _Unpickler(pickle._Unpickler):
    """See the module docstring. ``_budget`` counts down the bytes REDUCE and BUILD may
    still create."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        # encoding="bytes": py2 str -> bytes, as the official keys (b"data", ...) expect.
        super().__init__(_BoundedFile(file, size), encoding="bytes")
        self._budget = 2 * size + (1 << 20)
        self._weights: dict = {}   # id(container) -> (elements, depth)
        self._inside: set = set()  # ids of containers already placed in another
        self._unbuilt: dict = {}   # id(array) -> array made by _make_array, awaiting BUILD
        self._alive: list = []     # keeps every weighed object alive, so ids stay unique

    def find_class(self, module: str, name: str):
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeGlobal(
                f"refused to unpickle global '{short_repr(module)[1:-1]}.{short_repr(name)[1:-1]}'"
                "; only numpy array reconstruction is allowed in CIFAR-10 files, so nothing "
                "from this file was run") from None

    # -- weighing containers ------------------------------------------------------------

    def _measure(self, children, start: int = 1, depth: int = 0) -> tuple:
        weights, inside = self._weights, self._inside
        for child in children:
            w, d = weights.get(id(child), (1, 0)) if type(child) in _CONTAINERS else (1, 0)
            start += w
            depth = max(depth, d + 1)
        if start > MAX_ELEMENTS:
            raise RefusedPickle(f"holds more than {MAX_ELEMENTS} elements (counting shared "
                                "references)")
        if depth > MAX_DEPTH:
            raise RefusedPickle(f"nests containers more than {MAX_DEPTH} deep")
        for child in children:
            if type(child) in _CONTAINERS:
                inside.add(id(child))
        return start, depth

    def _new(self, container, children) -> None:
        self._weights[id(container)] = self._measure(children)
        self._alive.append(container)
        self.append(container)

    def _grow(self, target, kind: type, children) -> None:
        if type(target) is not kind:
            raise RefusedPickle(f"adds items to a {type(target).__name__}, not a "
                                f"{kind.__name__}")
        if id(target) in self._inside or any(child is target for child in children):
            raise RefusedPickle(f"changes a {kind.__name__} after placing it in another "
                                "container (shared or cyclic structure)")
        self._weights[id(target)] = self._measure(children, *self._weights[id(target)])

    # -- containers ---------------------------------------------------------------------

    def _empty_tuple(self):
        self._new((), ())

    def _tuple(self):
        items = self.pop_mark()
        self._new(tuple(items), items)

    def _tuple_n(self, n: int):
        if len(self.stack) < n:
            raise RefusedPickle("a tuple opcode finds too few items on the stack")
        items = self.stack[-n:]
        del self.stack[-n:]
        self._new(tuple(items), items)

    def _empty_list(self):
        self._new([], ())

    def _list(self):
        items = self.pop_mark()
        self._new(items, items)

    def _empty_dict(self):
        self._new({}, ())

    def _dict(self):
        items = self.pop_mark()
        self._measure(items)  # before any key is hashed
        self._new({items[i]: items[i + 1] for i in range(0, len(items), 2)}, items)

    def _empty_set(self):
        self._new(set(), ())

    def _frozenset(self):
        items = self.pop_mark()
        self._measure(items)
        self._new(frozenset(items), items)

    def _append(self):
        value = self.stack.pop()
        self._grow(self.stack[-1], list, (value,))
        self.stack[-1].append(value)

    def _appends(self):
        items = self.pop_mark()
        self._grow(self.stack[-1], list, items)
        self.stack[-1].extend(items)

    def _setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._grow(self.stack[-1], dict, (key, value))
        self.stack[-1][key] = value

    def _setitems(self):
        items = self.pop_mark()
        self._grow(self.stack[-1], dict, items)
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _additems(self):
        items = self.pop_mark()
        self._grow(self.stack[-1], set, items)
        self.stack[-1].update(items)

    # -- calls and object state ---------------------------------------------------------

    def _charge(self, nbytes: int) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise RefusedPickle("creates more bytes than twice its size (shared references)")

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is allowed for allowed in _CALLABLE):
            raise RefusedPickle(f"REDUCE may call only the allowed numpy and codecs "
                                f"functions, not a {type(func).__name__}")
        if type(args) is not tuple or len(args) > 3:
            raise RefusedPickle("REDUCE arguments must be a tuple of at most 3 values")
        if func is _encode_latin1 and args and type(args[0]) is str:
            self._charge(len(args[0]))
        result = func(*args)
        if func is _make_array:
            self._unbuilt[id(result)] = result
        self.stack[-1] = result

    def _build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is _DtypeSpec and not target.built:
            target.byteorder = _dtype_byteorder(target, state)
            target.built = True
        elif type(target) is np.ndarray and self._unbuilt.pop(id(target), None) is target:
            checked = _array_state(state)
            self._charge(len(checked[-1]))
            target.__setstate__(checked)
        else:
            raise RefusedPickle(f"BUILD (setting object state) is allowed only once on a "
                                f"numpy array or dtype, not on a {type(target).__name__}")

    dispatch = _Opcodes()


def _dtype_byteorder(spec: _DtypeSpec, state) -> str:
    """The byte order from a numeric dtype's state, after checking it describes nothing but
    that: (3, byteorder, None, None, None, -1, -1, 0) (version 4 adds a None metadata)."""
    if (type(state) is not tuple or len(state) not in (8, 9)
            or type(state[0]) is not int or state[0] != 2 + len(state) - 7
            or any(value is not None for value in state[2:5] + state[8:])
            or any(type(value) is not int for value in state[5:8])
            or state[5:8] != (-1, -1, 0)):
        raise RefusedPickle(f"dtype state refused: only (3, byteorder, None, None, None, -1, "
                            f"-1, 0) of a plain numeric dtype is allowed, got "
                            f"{short_repr(state)}")
    byteorder = state[1].decode("latin-1") if type(state[1]) is bytes else state[1]
    single = np.dtype(spec.code).itemsize == 1
    if type(byteorder) is not str or byteorder not in ("|" if single else "<>="):
        raise RefusedPickle(f"dtype {spec.code} with byte order {short_repr(state[1])} refused")
    return byteorder


def _array_state(state) -> tuple:
    """An array's BUILD state, checked and rebuilt from checked parts:
    (1, shape, dtype, is_fortran, data) with exactly prod(shape) * itemsize bytes of data."""
    if type(state) is tuple and len(state) == 4:
        state = (1,) + state
    if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int \
            or state[0] != 1:
        raise RefusedPickle("array state refused: expected (1, shape, dtype, fortran, data)")
    _, shape, spec, fortran, data = state
    if (type(shape) is not tuple or len(shape) > 32
            or any(type(n) is not int or not 0 <= n < 1 << 62 for n in shape)):
        raise RefusedPickle(f"array shape refused: {short_repr(shape)}")
    if type(spec) is not _DtypeSpec:
        raise RefusedPickle(f"array dtype refused: a {type(spec).__name__}, not a numeric dtype")
    if type(fortran) not in (bool, int) or fortran not in (0, 1):
        raise RefusedPickle("array state refused: is_fortran must be a bool")
    dtype = spec.dtype()
    if type(data) is not bytes or len(data) != math.prod(shape) * dtype.itemsize:
        size = len(data) if type(data) is bytes else type(data).__name__
        raise RefusedPickle(f"array data refused: shape {shape} of {dtype} needs "
                            f"{math.prod(shape) * dtype.itemsize} bytes, got {size}")
    return 1, shape, dtype, bool(fortran), data


def _allow() -> None:
    base, table = pickle._Unpickler.dispatch, _Unpickler.dispatch
    P = pickle
    for op in (P.PROTO, P.FRAME, P.STOP, P.MARK, P.POP, P.POP_MARK, P.DUP, P.NONE, P.NEWTRUE,
               P.NEWFALSE, P.INT, P.BININT, P.BININT1, P.BININT2, P.LONG, P.LONG1, P.LONG4,
               P.FLOAT, P.BINFLOAT, P.STRING, P.BINSTRING, P.SHORT_BINSTRING, P.BINBYTES,
               P.SHORT_BINBYTES, P.BINBYTES8, P.UNICODE, P.BINUNICODE, P.SHORT_BINUNICODE,
               P.BINUNICODE8, P.GET, P.BINGET, P.LONG_BINGET, P.PUT, P.BINPUT, P.LONG_BINPUT,
               P.MEMOIZE, P.GLOBAL, P.STACK_GLOBAL):
        table[op[0]] = base[op[0]]
    ours = {P.EMPTY_TUPLE: _Unpickler._empty_tuple, P.TUPLE: _Unpickler._tuple,
            P.TUPLE1: lambda self: self._tuple_n(1), P.TUPLE2: lambda self: self._tuple_n(2),
            P.TUPLE3: lambda self: self._tuple_n(3), P.EMPTY_LIST: _Unpickler._empty_list,
            P.LIST: _Unpickler._list, P.EMPTY_DICT: _Unpickler._empty_dict,
            P.DICT: _Unpickler._dict, P.EMPTY_SET: _Unpickler._empty_set,
            P.FROZENSET: _Unpickler._frozenset, P.APPEND: _Unpickler._append,
            P.APPENDS: _Unpickler._appends, P.SETITEM: _Unpickler._setitem,
            P.SETITEMS: _Unpickler._setitems, P.ADDITEMS: _Unpickler._additems,
            P.REDUCE: _Unpickler._reduce, P.BUILD: _Unpickler._build}
    for op, function in ours.items():
        table[op[0]] = function


_allow()


def read_plain_data(file: BinaryIO, size: int):
    """Read plain data and numeric arrays from ``file`` (``size`` bytes from its current
    position). Raises ``RefusedPickle`` (``UnsafeGlobal`` for a global outside the allowlist)
    for anything else, and the unpickler's own errors for malformed data."""
    return _Unpickler(file, size).load()


def read_plain_data_from_bytes(data: bytes):
    """``read_plain_data`` from bytes in memory."""
    return read_plain_data(io.BytesIO(data), len(data))

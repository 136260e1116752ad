"""Batch files built to crash, hang or exhaust the reader: each gives a DataError naming the
file, quickly and in little memory.

The files are assembled opcode by opcode from what the restricted unpickler admits. Those
that crashed or hung the interpreter before it was hardened run in a subprocess with a time
limit and report their peak memory.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import _unpickle
from cbn.data import DataError, UnsafePickleError, read_batch
from cbn.data.cifar10 import _read_label_names

from test_data import _py2_value, batch_dict, py2_pickle, py3_pickle

# The child imports the cbn under test (installed or built in place), never a source tree
# without its extension: it runs elsewhere, with that cbn's folder on its path.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"


def _dtype(code: bytes, state: bytes) -> bytes:
    """Opcodes of numpy.dtype(code, 0, 1) followed by BUILD with ``state`` (opcodes)."""
    return b"cnumpy\ndtype\n" + _py2_value(code) + b"K\x00K\x01\x87R" + state + b"b"


def _array(dtype_ops: bytes, shape: tuple, raw: bytes) -> bytes:
    state = b"(" + _py2_value(1) + _py2_value(shape) + dtype_ops + _py2_value(0) + \
        _py2_value(raw) + b"t"
    return RECONSTRUCT + state + b"b"


def _batch(data_ops: bytes, labels_ops: bytes = b"]") -> bytes:
    return (b"\x80\x02}(" + _py2_value(b"data") + data_ops + _py2_value(b"labels")
            + labels_ops + b"u.")


PLAIN_STATE = _py2_value((3, b"|", None, None, None, -1, -1, 0))


def _object_field_batch() -> bytes:
    """A 1-D array of a structured dtype whose one field holds objects; its bytes are read as
    object pointers (0x4141...), and the garbage collector then follows them."""
    obj = _dtype(b"O8", _py2_value((3, b"|", None, None, None, -1, -1, 63)))
    fields = b"}(" + _py2_value(b"f0") + b"(" + obj + _py2_value(0) + b"tu"
    state = (b"(" + _py2_value(3) + _py2_value(b"|") + b"N" + _py2_value((b"f0",)) + fields
             + _py2_value(8) + _py2_value(1) + _py2_value(1) + b"t")
    return _batch(_array(_dtype(b"V8", state), (4,), b"\x41" * 32))


def _nested_tuple_key(depth: int = 40) -> bytes:
    """{t: 0} with t = (t', t'), t' = (t'', t'') ... ``depth`` levels, each a memo reference:
    a few hundred bytes whose key takes 2**depth steps to hash."""
    ops = b"\x80\x02}q\x00)q\x01"
    for level in range(1, depth + 1):
        ops += b"h" + bytes([level]) + b"h" + bytes([level]) + b"\x86q" + bytes([level + 1])
    return ops + b"K\x00s."


def _shared_labels(depth: int = 30) -> bytes:
    """A batch whose labels are [l, l] with l = [l', l'] ... ``depth`` levels of memo
    references: as an array, 2**depth integers."""
    ops = b"]q\x01K\x00a"
    for level in range(1, depth + 1):
        ops += b"]q" + bytes([level + 1]) + b"(h" + bytes([level]) + b"h" + bytes([level]) + b"e"
    return _batch(_array(_dtype(b"u1", PLAIN_STATE), (1, 3072), bytes(3072)), ops)


def _run_read_batch(path: Path, timeout: float = 60) -> dict:
    """read_batch(path) in a fresh interpreter: its outcome and peak resident memory (MiB)."""
    code = textwrap.dedent(f"""
        import json, resource, sys
        from cbn.data import DataError, read_batch
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_batch({str(path)!r})
            outcome, message = "loaded", ""
        except DataError as exc:
            outcome, message = "DataError", str(exc)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(dict(outcome=outcome, message=message, grew=(peak - base) / 1024)))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(path).parent, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"the reader died ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- crashes, hangs and blow-ups, each in its own interpreter --------------------------------


def test_structured_dtype_with_an_object_field_is_refused_without_crashing(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_object_field_batch())
    result = _run_read_batch(path)
    assert result["outcome"] == "DataError"
    assert result["message"].startswith(str(path)) and "dtype 'V8' refused" in result["message"]


def test_tuple_key_nested_through_memo_references_is_refused_quickly(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_nested_tuple_key())
    assert path.stat().st_size < 300
    result = _run_read_batch(path, timeout=30)
    assert result["outcome"] == "DataError"
    assert result["message"].startswith(str(path))
    assert "elements" in result["message"] and len(result["message"]) < 300


def test_labels_sharing_references_are_refused_in_little_memory(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_shared_labels())
    assert path.stat().st_size < 4096
    result = _run_read_batch(path)
    assert result["outcome"] == "DataError" and result["message"].startswith(str(path))
    assert result["grew"] < 64, f"peak memory grew by {result['grew']:.0f} MiB"


# -- what the reader refuses, in this process -------------------------------------------------


def _refused(tmp_path, content: bytes, pattern: str, error=DataError) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(error, match=re.escape(str(path)) + ".*" + pattern):
        read_batch(path)


def test_numeric_dtype_with_a_structured_state_is_refused(tmp_path):
    state = (b"(" + _py2_value(3) + _py2_value(b"|") + b"N" + _py2_value((b"f0",)) + b"}"
             + _py2_value(8) + _py2_value(1) + _py2_value(0) + b"t")
    _refused(tmp_path, _batch(_array(_dtype(b"u8", state), (1,), bytes(8))), "dtype state refused")


@pytest.mark.parametrize("code", [b"O8", b"V8", b"M8", b"U1", b"S3", b"c16"])
def test_non_numeric_dtypes_are_refused(tmp_path, code):
    _refused(tmp_path, _batch(_array(_dtype(code, PLAIN_STATE), (1,), bytes(8))),
             f"dtype '{code.decode()}' refused")


@pytest.mark.parametrize("shape, size", [((2, 3072), 3072), ((1, 3072), 3073), ((-1,), 0)],
                         ids=["too-few-bytes", "too-many-bytes", "negative-shape"])
def test_array_data_must_match_its_shape_exactly(tmp_path, shape, size):
    _refused(tmp_path, _batch(_array(_dtype(b"u1", PLAIN_STATE), shape, bytes(size))),
             "array (data|shape) refused")


def test_reconstruct_with_a_large_shape_is_refused_before_allocating(tmp_path):
    ops = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
           + _py2_value((1 << 30,)) + b"U\x01b\x87R")
    _refused(tmp_path, _batch(ops), "_reconstruct is only allowed")


def test_calling_ndarray_directly_is_refused(tmp_path):
    ops = b"cnumpy\nndarray\n" + _py2_value(((1 << 20, 1 << 20),)) + b"R"
    _refused(tmp_path, _batch(ops), "REDUCE may call only")


def test_build_on_anything_but_a_fresh_array_is_refused(tmp_path):
    twice = _array(_dtype(b"u1", PLAIN_STATE), (1, 3072), bytes(3072)) + \
        b"(" + _py2_value(1) + _py2_value((1,)) + _dtype(b"u1", PLAIN_STATE) + b"K\x00U\x01\x00tb"
    _refused(tmp_path, _batch(twice), "BUILD .* allowed only once")
    _refused(tmp_path, _batch(b"]" + _py2_value({b"a": 1}) + b"b"), "BUILD .* not on a list")


@pytest.mark.parametrize("opcode", [pickle.NEWOBJ, pickle.OBJ, pickle.INST, pickle.EXT1,
                                    pickle.BINPERSID, pickle.BYTEARRAY8])
def test_opcodes_that_create_objects_are_refused(tmp_path, opcode):
    _refused(tmp_path, b"\x80\x02" + opcode + b"\x00" * 8 + b".", "opcode .* not allowed")


def test_declared_length_beyond_the_file_is_refused_before_reading(tmp_path):
    _refused(tmp_path, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",
             "declares 1099511627776 bytes where only 3 remain")


def test_bytes_made_from_one_shared_string_are_bounded_by_the_file_size(tmp_path):
    text = b"X" + struct.pack("<I", 4096) + b"a" * 4096 + b"q\x01"
    call = b"c_codecs\nencode\nh\x01X\x06\x00\x00\x00latin1\x86R"
    content = b"\x80\x02]" + text[:0] + b"(" + text + b"0" + call * 4000 + b"e."
    _refused(tmp_path, content, "more bytes than twice its size")


def test_a_list_changed_after_it_was_shared_is_refused(tmp_path):
    # l = []; m = [l, l]; l += [0] would make m's weight stale (and allows cycles).
    content = b"\x80\x02]q\x01]q\x02(h\x01h\x01eh\x01K\x00a."
    _refused(tmp_path, content, "after placing it in another container")


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    lists = _unpickle.MAX_DEPTH + 2
    _refused(tmp_path, b"\x80\x02" + b"]" * lists + b"a" * (lists - 1) + b".",
             f"more than {_unpickle.MAX_DEPTH} deep")


def test_refusals_never_print_the_offending_structure(tmp_path):
    path = tmp_path / "batches.meta"
    path.write_bytes(py2_pickle({b"label_names": [[b"x" * 1000] * 100] * 10,
                                 b"num_vis": 3072}))
    with pytest.raises(DataError) as info:
        _read_label_names(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 400


# -- what the reader still accepts ------------------------------------------------------------


@pytest.mark.parametrize("dump", [py2_pickle, py3_pickle, lambda b: pickle.dumps(b, protocol=4)],
                         ids=["py2", "py3-protocol-2", "protocol-4"])
@pytest.mark.parametrize("dtype", ["<u1", "<i2", ">i4", "<f4", ">f8", "|b1"])
def test_plain_numeric_arrays_load_exactly(tmp_path, dump, dtype):
    values = np.arange(12).reshape(3, 4).astype(dtype)
    loaded = _unpickle.read_plain_data_from_bytes(dump({b"a": values, b"f": np.asfortranarray(values)}))
    for array in loaded.values():
        # numpy swaps big-endian data to native order as it loads it
        assert array.dtype == values.dtype.newbyteorder("=") and np.array_equal(array, values)


def test_a_real_sized_batch_loads_exactly(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 10_000)
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_pickle(batch_dict(images, labels)))
    got_images, got_labels = read_batch(path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)


def test_a_global_outside_the_allowlist_is_still_an_unsafe_pickle_error(tmp_path):
    _refused(tmp_path, b"\x80\x02cos\nsystem\n.", "refused to unpickle global 'os.system'",
             UnsafePickleError)


def test_a_shape_of_huge_integers_is_refused_before_multiplying_them(tmp_path):
    huge = b"\x8a\xff" + (1 << 2030).to_bytes(255, "little", signed=True)  # LONG1
    shape = b"(" + huge * 32 + b"t"
    state = b"(" + _py2_value(1) + shape + _dtype(b"u1", PLAIN_STATE) + _py2_value(0) + \
        _py2_value(b"") + b"t"
    _refused(tmp_path, _batch(RECONSTRUCT + state + b"b"), "array shape refused")


def test_a_key_that_is_not_latin1_text_is_a_data_error(tmp_path):
    _refused(tmp_path, py3_pickle({"\u20ac": 1}), r"missing key\(s\)")

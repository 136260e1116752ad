"""Behaviour of cbn.data: finding, downloading, safely unpickling, validating, splitting and
normalising CIFAR-10, and the shipped sample.

Every test makes its own small files in the official format in a tmp folder; none reads the
real data set or reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import re
import shlex
import struct
import tarfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cbn import data
from cbn.data import normalization
from cbn.data import (
    CIFAR10,
    CIFAR10_MD5,
    LABEL_NAMES,
    DataError,
    Normalization,
    SampleDataWarning,
    Split,
    UnsafePickleError,
    load_cifar10,
    load_or_sample,
    load_sample,
    read_batch,
)

ROWS = 30  # rows per fixture batch
TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]


# --------------------------------------------------------------------------------------------
# Writing files in the official format
# --------------------------------------------------------------------------------------------


def _py2_value(obj) -> bytes:
    """Opcodes for ``obj`` as Python 2 + numpy pickled the official files (protocol 2, py2 str)."""
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, bytes):  # a py2 str
        if len(obj) < 256:
            return b"U" + bytes([len(obj)]) + obj
        return b"T" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, tuple):
        items = b"".join(map(_py2_value, obj))
        return (
            items + b"\x85\x86\x87"[len(obj) - 1 : len(obj)]
            if 1 <= len(obj) <= 3
            else b"(" + items + b"t"
        )
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(map(_py2_value, obj)) + b"e" if obj else b"")
    if isinstance(obj, dict):
        items = b"".join(_py2_value(k) + _py2_value(v) for k, v in obj.items())
        return b"}" + (b"(" + items + b"u" if obj else b"")
    if isinstance(obj, np.ndarray):
        endian, name = obj.dtype.str[0].encode(), obj.dtype.str[1:].encode()
        dtype = (
            b"cnumpy\ndtype\n"
            + _py2_value(name)
            + b"K\x00K\x01\x87R"
            + _py2_value((3, endian, None, None, None, -1, -1, 0))
            + b"b"
        )
        state = (
            b"("
            + _py2_value(1)
            + _py2_value(obj.shape)
            + dtype
            + _py2_value(0)
            + _py2_value(np.ascontiguousarray(obj).tobytes())
            + b"t"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            + state
            + b"b"
        )
    raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
    return b"\x80\x02" + _py2_value(obj) + b"."


def py3_pickle(obj) -> bytes:
    """How Python 3 + numpy 2 pickle the same dict at protocol 2 (bytes via _codecs.encode)."""
    return pickle.dumps(obj, protocol=2)


def batch_dict(
    images: np.ndarray, labels: np.ndarray, label: bytes = b"training batch 1 of 5"
) -> dict:
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in labels],
        b"data": images,
        b"filenames": [b"%d_x.png" % i for i in range(len(labels))],
    }


def write_cifar(parent: Path, rows: int = ROWS, seed: int = 0, dump=py2_pickle) -> dict[str, tuple]:
    """Write a complete small ``parent/cifar-10-batches-py``; return {file: (images, labels)}."""
    folder = parent / data.FOLDER_NAME
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    meta = {
        b"num_cases_per_batch": rows,
        b"label_names": [n.encode() for n in LABEL_NAMES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(dump(meta))
    written = {}
    for name in TRAIN_FILES + ["test_batch"]:
        images = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=rows)
        (folder / name).write_bytes(dump(batch_dict(images, labels)))
        written[name] = (images, labels)
    return written


def write_batch(folder: Path, name: str, batch, dump=py2_pickle) -> Path:
    path = folder / name
    path.write_bytes(dump(batch))
    return path


def make_archive(
    path: Path, parent: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()
) -> str:
    """tar.gz ``parent/cifar-10-batches-py`` plus ``extra`` members to ``path``; return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(parent / data.FOLDER_NAME, arcname=data.FOLDER_NAME)
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_dir(tmp_path) -> SimpleNamespace:
    """A small complete CIFAR-10 folder: ``.parent`` holds ``.folder``; ``.batches`` its arrays."""
    batches = write_cifar(tmp_path / "src")
    return SimpleNamespace(
        parent=tmp_path / "src", folder=tmp_path / "src" / data.FOLDER_NAME, batches=batches
    )


@pytest.fixture
def no_cifar_anywhere(tmp_path, monkeypatch) -> SimpleNamespace:
    """Empty HOME and working directory, $CBN_DATA and $XDG_CACHE_HOME unset."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CBN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(cwd)
    return SimpleNamespace(home=home, cwd=cwd)


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve files from a tmp folder on 127.0.0.1:<free port>; yields (folder, base URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------------------------
# Loading and splitting
# --------------------------------------------------------------------------------------------


def test_load_reads_official_python2_pickles(cifar_dir):
    cifar = load_cifar10(cifar_dir.folder, val_size=ROWS)
    assert isinstance(cifar, CIFAR10)
    assert cifar.label_names == LABEL_NAMES
    assert cifar.source == str(cifar_dir.folder)
    assert cifar.protocol == "full"
    images, labels = cifar_dir.batches["test_batch"]
    np.testing.assert_array_equal(cifar.test.images, images)
    np.testing.assert_array_equal(cifar.test.labels, labels)


def test_load_reads_python3_written_pickles(tmp_path):
    write_cifar(tmp_path, dump=py3_pickle)
    globals_used = {
        arg
        for op, arg, _ in pickletools.genops(
            py3_pickle(batch_dict(np.zeros((1, 3072), np.uint8), [0]))
        )
        if op.name in ("GLOBAL", "STACK_GLOBAL")
    }
    assert "_codecs encode" in globals_used  # the path this test is about is exercised
    cifar = load_cifar10(tmp_path, val_size=ROWS)
    assert len(cifar.train) + len(cifar.val) == 5 * ROWS


def test_splits_hold_uint8_images_and_int64_labels(cifar_dir):
    cifar = load_cifar10(cifar_dir.folder, val_size=ROWS)
    for split in (cifar.train, cifar.val, cifar.test):
        assert split.images.dtype == np.uint8 and split.images.flags.c_contiguous
        assert split.images.shape[1] == 3072
        assert split.labels.dtype == np.int64 and split.labels.shape == (len(split),)


def test_split_arrays_are_read_only(cifar_dir):
    cifar = load_cifar10(cifar_dir.folder, val_size=ROWS)
    with pytest.raises(ValueError):
        cifar.train.images[0, 0] = 1
    with pytest.raises(ValueError):
        cifar.val.labels[0] = 1


def test_root_may_be_the_parent_of_the_batches_folder(cifar_dir):
    assert load_cifar10(cifar_dir.parent, val_size=ROWS).source == str(cifar_dir.folder)


def test_full_protocol_validates_on_the_last_val_size_images_of_the_concatenation(cifar_dir):
    cifar = load_cifar10(cifar_dir.folder, protocol="full", val_size=45)
    images = np.concatenate([cifar_dir.batches[name][0] for name in TRAIN_FILES])
    labels = np.concatenate([cifar_dir.batches[name][1] for name in TRAIN_FILES])
    np.testing.assert_array_equal(cifar.train.images, images[:-45])
    np.testing.assert_array_equal(cifar.train.labels, labels[:-45])
    np.testing.assert_array_equal(cifar.val.images, images[-45:])
    np.testing.assert_array_equal(cifar.val.labels, labels[-45:])


def test_full_protocol_default_val_size_is_5000(cifar_dir):
    with pytest.raises(ValueError, match="val_size=5000 leaves no training images"):
        load_cifar10(cifar_dir.folder)  # only 150 training images in the fixture


def test_seed_protocol_trains_on_batch_1_validates_on_batch_2_tests_on_test_batch(cifar_dir):
    cifar = load_cifar10(cifar_dir.folder, protocol="seed")
    assert cifar.protocol == "seed"
    np.testing.assert_array_equal(cifar.train.images, cifar_dir.batches["data_batch_1"][0])
    np.testing.assert_array_equal(cifar.val.images, cifar_dir.batches["data_batch_2"][0])
    np.testing.assert_array_equal(cifar.test.labels, cifar_dir.batches["test_batch"][1])


def test_seed_protocol_does_not_need_batches_3_to_5(cifar_dir):
    for name in TRAIN_FILES[2:]:
        (cifar_dir.folder / name).unlink()
    assert len(load_cifar10(cifar_dir.folder, protocol="seed").train) == ROWS


def test_unknown_protocol_is_rejected(cifar_dir):
    with pytest.raises(ValueError, match="protocol"):
        load_cifar10(cifar_dir.folder, protocol="half")


@pytest.mark.parametrize("val_size,error", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                            (True, TypeError), ("100", TypeError)])
def test_invalid_val_size_is_rejected(cifar_dir, val_size, error):
    with pytest.raises(error, match="val_size"):
        load_cifar10(cifar_dir.folder, val_size=val_size)


def test_val_size_leaving_no_training_images_is_rejected(cifar_dir):
    with pytest.raises(ValueError, match="leaves no training images"):
        load_cifar10(cifar_dir.folder, val_size=5 * ROWS)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["full", "seed"])
def test_normalization_is_fitted_on_train_only(tmp_path, protocol):
    batches = write_cifar(tmp_path)
    folder = tmp_path / data.FOLDER_NAME
    # Validation and test images are all 255, training images at most 100: any leak shows.
    held_out = (
        ["data_batch_5", "test_batch"] if protocol == "full" else ["data_batch_2", "test_batch"]
    )
    for name in TRAIN_FILES + ["test_batch"]:
        images, labels = batches[name]
        images = np.full_like(images, 255) if name in held_out else images % 101
        write_batch(folder, name, batch_dict(images, labels))
        batches[name] = (images, labels)
    train_names = TRAIN_FILES[:4] if protocol == "full" else ["data_batch_1"]
    train = np.concatenate([batches[name][0] for name in train_names]).astype(np.float64)

    cifar = load_cifar10(folder, protocol=protocol, val_size=ROWS)

    np.testing.assert_allclose(cifar.normalization.mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cifar.normalization.std, train.std(axis=0), rtol=1e-12)


def test_features_standardise_train_to_zero_mean_unit_std(cifar_dir):
    features = load_cifar10(cifar_dir.folder, val_size=ROWS).features("train", dtype=np.float64)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(features.std(axis=0), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_features_apply_the_train_normalization_to_other_splits_in_the_requested_dtype(
    cifar_dir, dtype
):
    cifar = load_cifar10(cifar_dir.folder, val_size=ROWS)
    features = cifar.features("test", dtype=dtype)
    expected = (cifar.test.images - cifar.normalization.mean) / cifar.normalization.std
    assert features.dtype == dtype and features.flags.c_contiguous
    np.testing.assert_allclose(features, expected, rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_features_reject_integer_dtype(cifar_dir):
    with pytest.raises(TypeError, match="float32 or float64"):
        load_cifar10(cifar_dir.folder, val_size=ROWS).features("train", dtype=np.int32)


def test_features_reject_unknown_split(cifar_dir):
    with pytest.raises(ValueError, match="split"):
        load_cifar10(cifar_dir.folder, val_size=ROWS).features("validation")


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 6))), st.integers(1, 50))
def test_normalization_fit_matches_numpy_for_any_chunking(images, chunk_elements):
    with mock.patch.object(normalization, "_CHUNK_ELEMENTS", chunk_elements):
        norm = Normalization.fit(images)
    reference = images.astype(np.float64)
    std = reference.std(axis=0)
    np.testing.assert_allclose(norm.mean, reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.std, np.where(std == 0, 1.0, std), rtol=1e-9)


def test_normalization_fit_of_uint8_is_exact_across_its_row_blocks():
    # 700 rows span three float32 blocks; all-255 rows are the worst case for their sums.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(700, 5), dtype=np.uint8)
    images[:300, 0] = 255
    images[:, 1] = 255
    images[:, 2] = 7
    images[-1, 2] = 8  # one differing row: a tiny but nonzero std
    norm = Normalization.fit(images)
    reference = images.astype(np.float64)
    np.testing.assert_allclose(norm.mean, reference.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(norm.std[[0, 2, 3, 4]], reference.std(axis=0)[[0, 2, 3, 4]],
                               rtol=1e-12)
    assert norm.std[1] == 1.0


def test_normalization_gives_constant_features_unit_std():
    images = np.zeros((5, 4), dtype=np.uint8)
    images[:, 1] = [1, 2, 3, 4, 5]
    norm = Normalization.fit(images)
    assert norm.std[0] == 1.0 and norm.std[1] == pytest.approx(np.sqrt(2))
    np.testing.assert_array_equal(norm.apply(images)[:, 0], 0.0)


def test_normalization_apply_writes_into_a_given_buffer():
    images = np.arange(12, dtype=np.uint8).reshape(3, 4)
    norm = Normalization.fit(images)
    out = np.empty((3, 4), dtype=np.float32)
    assert norm.apply(images, out=out) is out
    np.testing.assert_allclose(out, (images - norm.mean) / norm.std, rtol=1e-6)


def test_normalization_apply_rejects_wrong_width():
    norm = Normalization.fit(np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        norm.apply(np.zeros((2, 5), dtype=np.uint8))


def test_split_len_is_number_of_images():
    assert len(Split(np.zeros((7, 3072), np.uint8), np.zeros(7, np.int64))) == 7


# --------------------------------------------------------------------------------------------
# Never executing data
# --------------------------------------------------------------------------------------------


class _TouchMarker:
    """Pickles to a call of os.system that would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_malicious_pickle_is_refused_and_its_payload_never_runs(cifar_dir, tmp_path):
    marker = tmp_path / "payload-ran"
    images, labels = cifar_dir.batches["data_batch_1"]
    evil = batch_dict(images, labels)
    evil[b"labels"] = _TouchMarker(marker)
    path = write_batch(cifar_dir.folder, "data_batch_1", evil, dump=py3_pickle)

    with pytest.raises(UnsafePickleError) as info:
        load_cifar10(cifar_dir.folder, val_size=ROWS)

    assert not marker.exists()
    assert str(path) in str(info.value)
    assert f"{os.system.__module__}.system" in str(info.value)


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("numpy", "load"),
        ("numpy.core.multiarray", "scalar"),
        ("copyreg", "_reconstructor"),
    ],
)
def test_globals_outside_the_allowlist_are_refused(tmp_path, module, name):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c%s\n%s\n." % (module.encode(), name.encode()))
    with pytest.raises(
        UnsafePickleError, match=re.escape(f"{path}: refused to unpickle global '{module}.{name}'")
    ):
        read_batch(path)


def test_codecs_encode_with_a_codec_other_than_latin1_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x03\x00\x00\x00hex\x86R.")
    with pytest.raises(UnsafePickleError, match="'hex'"):
        read_batch(path)


# --------------------------------------------------------------------------------------------
# Validation of files and content
# --------------------------------------------------------------------------------------------


def test_truncated_batch_raises_data_error_naming_the_file(cifar_dir):
    path = cifar_dir.folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*truncated or corrupt"):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", bytes(range(256)) * 4])
def test_corrupt_batch_raises_data_error_naming_the_file(cifar_dir, content):
    path = cifar_dir.folder / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


@pytest.mark.parametrize("name", TRAIN_FILES + ["test_batch", "batches.meta"])
def test_missing_file_raises_data_error_naming_it(cifar_dir, name):
    (cifar_dir.folder / name).unlink()
    with pytest.raises(DataError, match=f"missing {name}"):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


def _images(rows=ROWS, cols=3072, dtype=np.uint8):
    return np.zeros((rows, cols), dtype=dtype)


@pytest.mark.parametrize(
    "batch, complaint",
    [
        ({**batch_dict(_images(cols=3071), [0] * ROWS)}, r"shape \(n, 3072\)"),
        ({**batch_dict(_images().ravel(), [0] * ROWS)}, r"shape \(n, 3072\)"),
        ({**batch_dict(_images(rows=0), [])}, r"n >= 1"),
        ({**batch_dict(_images(dtype=np.float32), [0] * ROWS)}, "dtype uint8, got float32"),
        ({**batch_dict(_images(), [0] * (ROWS - 1) + [10])}, r"labels must be in 0..9, found 10"),
        ({**batch_dict(_images(), [-1] + [0] * (ROWS - 1))}, r"labels must be in 0..9, found -1"),
        ({**batch_dict(_images(), [0] * (ROWS - 1))}, f"{ROWS - 1} labels for {ROWS} images"),
        (
            {**batch_dict(_images(), [0] * ROWS), b"labels": [b"cat"] * ROWS},
            "flat list of integers",
        ),
        ({**batch_dict(_images(), [0] * ROWS), b"data": [0] * 3072}, "must be a numpy array"),
        ({b"data": _images(), b"filenames": []}, r"missing key\(s\) \['labels'\]"),
        ({b"labels": [0] * ROWS}, r"missing key\(s\) \['data'\]"),
        ([1, 2, 3], "expected a dict, got list"),
    ],
    ids=[
        "3071-columns",
        "1-D",
        "no-rows",
        "float32",
        "label-10",
        "label-minus-1",
        "label-count",
        "label-type",
        "data-type",
        "no-labels",
        "no-data",
        "not-a-dict",
    ],
)
def test_wrong_batch_content_raises_data_error_naming_file_and_fault(cifar_dir, batch, complaint):
    path = write_batch(cifar_dir.folder, "data_batch_2", batch)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + complaint):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


def test_meta_without_ten_label_names_raises_data_error(cifar_dir):
    path = write_batch(cifar_dir.folder, "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*10 names"):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


@pytest.mark.parametrize("num_vis", [np.array([3072, 3072]), 3072.0, True, "3072"],
                         ids=["array", "float", "bool", "text"])
def test_meta_with_num_vis_not_the_int_3072_raises_data_error(cifar_dir, num_vis):
    meta = {b"label_names": [n.encode() for n in LABEL_NAMES], b"num_vis": num_vis}
    path = write_batch(cifar_dir.folder, "batches.meta", meta, dump=py3_pickle)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*num_vis"):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


def test_batch_with_a_huge_sparse_tail_raises_data_error_naming_it(cifar_dir):
    path = cifar_dir.folder / "data_batch_2"
    with open(path, "r+b") as f:
        f.truncate(1 << 42)  # 4 TiB of holes after the pickle
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*too large"):
        load_cifar10(cifar_dir.folder, val_size=ROWS)


def test_incomplete_folder_lists_all_missing_files(cifar_dir):
    for name in ("data_batch_4", "test_batch"):
        (cifar_dir.folder / name).unlink()
    with pytest.raises(DataError, match="missing data_batch_4, test_batch"):
        load_cifar10(cifar_dir.folder)


# --------------------------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------------------------


def test_cbn_data_environment_variable_is_searched_first(no_cifar_anywhere, monkeypatch, tmp_path):
    write_cifar(no_cifar_anywhere.cwd / "data")  # also present, but lower priority
    write_cifar(tmp_path / "env")
    monkeypatch.setenv("CBN_DATA", str(tmp_path / "env"))
    assert load_cifar10(val_size=ROWS).source == str(tmp_path / "env" / data.FOLDER_NAME)


def test_data_folder_in_working_directory_is_found(no_cifar_anywhere):
    write_cifar(no_cifar_anywhere.cwd / "data")
    source = load_cifar10(val_size=ROWS).source
    assert Path(source) == no_cifar_anywhere.cwd / "data" / data.FOLDER_NAME


def test_keras_cache_folder_is_found(no_cifar_anywhere):
    write_cifar(no_cifar_anywhere.home / ".keras" / "datasets")
    source = load_cifar10(val_size=ROWS).source
    assert Path(source) == no_cifar_anywhere.home / ".keras" / "datasets" / data.FOLDER_NAME


def test_not_found_error_lists_every_place_it_looked(no_cifar_anywhere):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10()
    message = str(info.value)
    assert "$CBN_DATA: not set" in message
    for _, path in data.search_paths()[1:]:
        assert str(path) in message
    assert str(no_cifar_anywhere.home / ".keras" / "datasets" / data.FOLDER_NAME) in message


def test_explicit_root_without_cifar_raises_file_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(tmp_path / "empty")


def test_explicit_root_that_does_not_exist_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_cifar10(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def test_download_fetches_checks_and_extracts_the_archive(cifar_dir, http_server, tmp_path):
    www, base = http_server
    md5 = make_archive(www / "cifar.tar.gz", cifar_dir.parent)
    dest = tmp_path / "dest"

    cifar = load_cifar10(dest, download=True, url=f"{base}/cifar.tar.gz", md5=md5, val_size=ROWS)

    assert cifar.source == str(dest / data.FOLDER_NAME)
    np.testing.assert_array_equal(cifar.test.images, cifar_dir.batches["test_batch"][0])
    assert sorted(p.name for p in dest.iterdir()) == [
        data.FOLDER_NAME
    ]  # archive and scratch removed


def test_download_fills_an_existing_empty_folder(cifar_dir, http_server, tmp_path):
    www, base = http_server
    md5 = make_archive(www / "cifar.tar.gz", cifar_dir.parent)
    (tmp_path / "data").mkdir()
    cifar = load_cifar10(
        tmp_path / "data", download=True, url=f"{base}/cifar.tar.gz", md5=md5, val_size=ROWS
    )
    assert cifar.source == str(tmp_path / "data" / data.FOLDER_NAME)


def test_download_shows_a_progress_bar(cifar_dir, http_server, tmp_path, capsys):
    www, base = http_server
    md5 = make_archive(www / "cifar.tar.gz", cifar_dir.parent)
    load_cifar10(
        tmp_path / "dest", download=True, url=f"{base}/cifar.tar.gz", md5=md5, val_size=ROWS
    )
    assert "Downloading cifar-10-python.tar.gz" in capsys.readouterr().err


def test_download_without_root_goes_to_cbn_data(
    cifar_dir, http_server, no_cifar_anywhere, monkeypatch, tmp_path
):
    www, base = http_server
    md5 = make_archive(www / "cifar.tar.gz", cifar_dir.parent)
    monkeypatch.setenv("CBN_DATA", str(tmp_path / "cache"))
    cifar = load_cifar10(download=True, url=f"{base}/cifar.tar.gz", md5=md5, val_size=ROWS)
    assert cifar.source == str(tmp_path / "cache" / data.FOLDER_NAME)


def test_download_is_skipped_when_the_data_is_already_there(cifar_dir):
    cifar = load_cifar10(
        cifar_dir.parent, download=True, url="http://127.0.0.1:9/unreachable", val_size=ROWS
    )
    assert cifar.source == str(cifar_dir.folder)


def test_download_with_wrong_md5_is_refused_and_deleted(cifar_dir, http_server, tmp_path):
    www, base = http_server
    make_archive(www / "cifar.tar.gz", cifar_dir.parent)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=f"does not match the expected {CIFAR10_MD5}"):
        load_cifar10(dest, download=True, url=f"{base}/cifar.tar.gz")
    assert list(dest.iterdir()) == []


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    payload = b"owned\n" if kind == tarfile.REGTYPE else None
    info.size = len(payload) if payload else 0
    return info, payload


@pytest.mark.parametrize(
    "kind", ["parent-dir", "dotdot-inside", "absolute", "symlink", "hardlink", "outside-folder"]
)
def test_download_refuses_archive_with_unsafe_member(cifar_dir, http_server, tmp_path, kind):
    www, base = http_server
    escape = tmp_path / "escaped"
    member = {
        "parent-dir": _member("../escaped"),
        "dotdot-inside": _member(f"{data.FOLDER_NAME}/../../escaped"),
        "absolute": _member(str(escape)),
        "symlink": _member(f"{data.FOLDER_NAME}/link", tarfile.SYMTYPE, str(escape)),
        "hardlink": _member(f"{data.FOLDER_NAME}/hard", tarfile.LNKTYPE, "/etc/passwd"),
        "outside-folder": _member("escaped"),
    }[kind]
    md5 = make_archive(www / "evil.tar.gz", cifar_dir.parent, extra=[member])
    dest = tmp_path / "dest"

    with pytest.raises(DataError, match="refused"):
        load_cifar10(dest, download=True, url=f"{base}/evil.tar.gz", md5=md5)

    assert not escape.exists() and not os.path.lexists(escape)
    assert list(dest.iterdir()) == []  # nothing extracted, archive deleted


def test_download_refuses_non_http_url(tmp_path):
    with pytest.raises(ValueError, match="http"):
        load_cifar10(tmp_path / "dest", download=True, url=f"file://{tmp_path}/cifar.tar.gz")


# --------------------------------------------------------------------------------------------
# The shipped sample and the fallback
# --------------------------------------------------------------------------------------------


def test_shipped_sample_loads_as_cifar10_with_source_sample():
    sample = load_sample()
    assert isinstance(sample, CIFAR10)
    assert sample.source == "sample" and sample.protocol == "sample"
    assert sample.label_names == LABEL_NAMES
    assert (len(sample.train), len(sample.val), len(sample.test)) == (2000, 500, 1000)


def test_shipped_sample_is_class_balanced():
    sample = load_sample()
    for split, per_class in ((sample.train, 200), (sample.val, 50), (sample.test, 100)):
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), [per_class] * 10)


def test_shipped_sample_train_and_val_are_distinct_official_images():
    with np.load(data.SAMPLE_PATH, allow_pickle=False) as npz:
        train, val, test = npz["train_indices"], npz["val_indices"], npz["test_indices"]
    assert np.intersect1d(train, val).size == 0
    assert train.max() < 50_000 and val.max() < 50_000 and test.max() < 10_000
    assert len(np.unique(train)) == len(train) and len(np.unique(test)) == len(test)


def test_shipped_sample_fits_in_ten_megabytes():
    assert data.SAMPLE_PATH.stat().st_size <= 10_000_000


def test_sample_readme_records_the_npz_sha256():
    readme = (data.SAMPLE_PATH.parent / "README.md").read_text()
    assert hashlib.sha256(data.SAMPLE_PATH.read_bytes()).hexdigest() in readme


def test_sample_npz_with_a_missing_array_raises_data_error(tmp_path):
    path = tmp_path / "sample.npz"
    np.savez_compressed(path, train_images=np.zeros((1, 3072), np.uint8))
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*missing arrays"):
        load_sample(path)


def test_fallback_warns_and_returns_the_sample_when_nothing_is_found(no_cifar_anywhere):
    with pytest.warns(SampleDataWarning, match=r"(?s)Using the small CIFAR-10 sample.*Looked in"):
        cifar = load_or_sample()
    assert cifar.source == "sample"


def test_fallback_returns_the_real_data_without_warning_when_found(no_cifar_anywhere):
    write_cifar(no_cifar_anywhere.cwd / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cifar = load_or_sample(protocol="seed")
    assert cifar.source == str(no_cifar_anywhere.cwd / "data" / data.FOLDER_NAME)


def test_fallback_does_not_replace_an_explicit_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_or_sample(tmp_path / "typo")


def test_fallback_does_not_hide_corrupt_data(no_cifar_anywhere):
    write_cifar(no_cifar_anywhere.cwd / "data")
    (no_cifar_anywhere.cwd / "data" / data.FOLDER_NAME / "test_batch").write_bytes(b"junk")
    with pytest.raises(DataError):
        load_or_sample(protocol="seed")


def test_a_dataset_gives_its_feature_and_class_counts():
    sample = load_sample()
    assert (sample.n_features, sample.n_classes) == (3072, 10)
    assert CIFAR10 is data.Dataset

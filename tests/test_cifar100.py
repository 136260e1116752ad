"""Behaviour of cbn.data.load_cifar100 on small files in the official python layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbn.data import DataError, Dataset, UnsafePickleError, load_cifar100
from cbn.data.cifar100 import FOLDER_NAME
from cbn.lab.experiment import RunConfig, run
from test_data import py2_pickle, py3_pickle

FINE = [f"fine{k}".encode() for k in range(100)]
COARSE = [f"coarse{k}".encode() for k in range(20)]


def write_cifar100(parent: Path, train_rows: int = 60, test_rows: int = 20, dump=py2_pickle,
                   seed: int = 0) -> dict:
    """A small ``parent/cifar-100-python``; return {file: (images, fine, coarse)}."""
    folder = parent / FOLDER_NAME
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "meta").write_bytes(dump({b"fine_label_names": FINE,
                                        b"coarse_label_names": COARSE}))
    written = {}
    for name, rows in (("train", train_rows), ("test", test_rows)):
        images = rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, rows), rng.integers(0, 20, rows)
        (folder / name).write_bytes(dump({
            b"filenames": [b"%d.png" % i for i in range(rows)], b"batch_label": b"x",
            b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
            b"data": images}))
        written[name] = (images, fine, coarse)
    return written


@pytest.mark.parametrize("dump", [py2_pickle, py3_pickle])
def test_fine_labels_split_in_order_with_their_names(tmp_path, dump):
    written = write_cifar100(tmp_path, dump=dump)
    data = load_cifar100(tmp_path, val_size=15)
    images, fine, _ = written["train"]
    assert isinstance(data, Dataset) and data.protocol == "full"
    assert data.source == str(tmp_path / FOLDER_NAME)
    np.testing.assert_array_equal(data.train.images, images[:45])
    np.testing.assert_array_equal(data.val.labels, fine[45:])
    np.testing.assert_array_equal(data.test.labels, written["test"][1])
    assert data.label_names == tuple(n.decode() for n in FINE)
    assert (data.n_features, data.n_classes) == (3072, 100)
    np.testing.assert_allclose(data.normalization.mean, images[:45].mean(axis=0))


def test_coarse_labels_give_the_twenty_superclasses(tmp_path):
    written = write_cifar100(tmp_path)
    data = load_cifar100(tmp_path / FOLDER_NAME, labels="coarse", val_size=10)
    np.testing.assert_array_equal(data.test.labels, written["test"][2])
    assert data.n_classes == 20 and data.label_names[-1] == "coarse19"


def test_a_run_takes_its_widths_from_the_data(tmp_path):
    write_cifar100(tmp_path, train_rows=60)
    data = load_cifar100(tmp_path, val_size=20)
    result = run(data, RunConfig(hidden=(8,), step_size=2, cycles=1, batch_size=10), seed=0)
    assert (result.net.input_dim, result.net.num_classes) == (3072, 100)
    assert 0 <= result.metrics["test_accuracy"] <= 1


def test_a_label_outside_the_classes_is_refused_naming_the_file(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / FOLDER_NAME / "test"
    images = np.zeros((2, 3072), np.uint8)
    path.write_bytes(py2_pickle({b"data": images, b"fine_labels": [0, 100],
                                 b"coarse_labels": [0, 1]}))
    with pytest.raises(DataError, match=f"{path}: labels must be in 0..99"):
        load_cifar100(tmp_path, val_size=10)


def test_a_missing_meta_file_is_named(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / FOLDER_NAME / "meta").unlink()
    with pytest.raises(DataError, match="missing meta"):
        load_cifar100(tmp_path, val_size=10)


def test_names_of_the_wrong_count_are_refused(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / FOLDER_NAME / "meta").write_bytes(py2_pickle({
        b"fine_label_names": FINE[:99], b"coarse_label_names": COARSE}))
    with pytest.raises(DataError, match="list of 100 names"):
        load_cifar100(tmp_path, val_size=10)


def test_a_pickle_naming_a_global_is_refused(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / FOLDER_NAME / "train").write_bytes(b"\x80\x02cos\nsystem\nU\x04trueR.")
    with pytest.raises(UnsafePickleError):
        load_cifar100(tmp_path, val_size=10)


@pytest.mark.parametrize("kwargs,error", [({"labels": "medium"}, ValueError),
                                          ({"val_size": 0}, ValueError),
                                          ({"val_size": 2.0}, TypeError),
                                          ({"val_size": 60}, ValueError)])
def test_bad_arguments_are_refused(tmp_path, kwargs, error):
    write_cifar100(tmp_path)
    with pytest.raises(error):
        load_cifar100(tmp_path, **{"val_size": 10, **kwargs})


def test_no_data_where_told_to_look_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-100 at"):
        load_cifar100(tmp_path / "nowhere")

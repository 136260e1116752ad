"""Behaviour of cbn._files: the atomic writer and the JSON helper every file writer shares."""
import json
import math

import numpy as np
import pytest

from cbn._files import atomic_write, json_ready, write_text


def test_write_text_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_text(path, "old\n")
    write_text(path, "n\u00e9w\n")
    assert path.read_text(encoding="utf-8") == "n\u00e9w\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_failing_writer_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "table.csv"
    write_text(path, "a,b\n")

    def half_then_fail(f):
        f.write(b"a,")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "a,b\n" and len(list(tmp_path.iterdir())) == 1


def test_json_ready_makes_strict_json_of_numpy_values_and_tuples():
    value = {1: (np.float32(0.5), np.int64(3)), "loss": float("nan"), "x": [np.inf, True]}
    ready = json_ready(value)
    assert ready == {"1": [0.5, 3], "loss": None, "x": [None, True]}
    json.dumps(ready, allow_nan=False)


def test_json_ready_keeps_non_finite_values_when_not_strict():
    ready = json_ready({"loss": np.float64("nan"), "hidden": (50, 50)}, strict=False)
    assert math.isnan(ready["loss"]) and ready["hidden"] == [50, 50]

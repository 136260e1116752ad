"""Network and checkpoint files built to exhaust memory or to slip past the checks: each is a
CheckpointError naming the file, raised before any oversized array is read; and the modes
of files cbn writes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cbn
from cbn import CyclicLR, Network, fit
from cbn._files import atomic_savez
from cbn.checkpoint import CheckpointError, load_checkpoint
from cbn.npz import read_npz, with_checksum

# The child imports the cbn under test (installed or built in place), never a source tree
# without its extension: it runs elsewhere, with that cbn's folder on its path.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(cbn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _saved(tmp_path: Path, net: Network, name: str = "net.npz") -> Path:
    path = tmp_path / name
    net.save(path)
    return path


def _add_zeros_member(path: Path, nbytes: int) -> None:
    """Append a deflated member declaring ``nbytes`` of float64 zeros (a few hundred kB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("extra.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                member.write(chunk)


def _peak_growth(call: str, path: Path) -> dict:
    """Run ``call`` (an expression on ``path``) in a fresh interpreter: outcome, peak MiB."""
    code = textwrap.dedent(f"""
        import json, resource
        from cbn import Network
        from cbn.checkpoint import CheckpointError, load_checkpoint
        path = {str(path)!r}
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            {call}
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = str(exc)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(dict(outcome=outcome, grew=(peak - base) / 1024)))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(path).parent, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("call", ["Network.load(path)", "load_checkpoint(path)"])
def test_a_member_declaring_far_more_than_the_file_is_refused_before_reading(tmp_path, call):
    net = Network(3072, [50], 10, seed=0)  # ~1.2 MB on disk
    path = tmp_path / "run.npz"
    fit(net, np.zeros((20, 3072)), np.arange(20) % 10, lam=0.0, batch_size=10, epochs=1,
        schedule=0.01, checkpoint=path, progress=False)
    _add_zeros_member(path, 256 << 20)
    assert path.stat().st_size < 4 << 20
    result = _peak_growth(call, path)
    assert result["outcome"].startswith(str(path))
    assert "declares" in result["outcome"]
    assert result["grew"] < 64, f"peak memory grew by {result['grew']:.0f} MiB"


def test_a_member_the_network_does_not_have_is_refused(tmp_path):
    path = _saved(tmp_path, Network(6, [5], 3, seed=0))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("extra.npy", _npy(np.zeros(1000)))
    with pytest.raises(CheckpointError, match=f"{path}.*does not have: \\['extra'\\]"):
        Network.load(path)


def test_a_member_whose_zip_size_disagrees_with_its_npy_header_is_refused(tmp_path):
    net = Network(6, [5], 3, seed=0)
    arrays = net.to_arrays()
    path = tmp_path / "net.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in arrays.items():
            raw = _npy(value)
            archive.writestr(name + ".npy", raw + (b"\0" * 64 if name == "W1" else b""))
    with pytest.raises(CheckpointError, match=f"{path}.*'W1'.*does not match its size"):
        Network.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: json.dumps({**c, "surprise": 1}), "does not describe a network.*surprise"),
    (lambda c: json.dumps(c)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nests JSON"),
    (lambda c: json.dumps({**c, "batch_norm": "yes"}), "does not describe a network.*batch_norm"),
    (lambda c: json.dumps({**c, "hidden": [10**6]}),
     r"W1 has shape \(6, 5\) but network_config says"),
], ids=["unexpected-key", "deep-json", "wrong-type", "huge-layer"])
def test_a_doctored_config_is_a_checkpoint_error_naming_the_file(tmp_path, edit, message):
    net = Network(6, [5], 3, seed=0)
    arrays = net.to_arrays()
    arrays["network_config"] = np.array(edit(net.config()))
    path = tmp_path / "doctored.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=f"{path}: .*{message}"):
        Network.load(path)


def test_a_doctored_checkpoint_is_a_checkpoint_error_when_resuming(tmp_path):
    X = np.random.default_rng(0).standard_normal((20, 6))
    y = np.arange(20) % 3
    run = dict(lam=0.0, batch_size=5, schedule=CyclicLR(1e-3, 0.1, 4), cycles=1, seed=0,
               progress=False)
    path = tmp_path / "run.npz"
    fit(Network(6, [5], 3, seed=0), X, y, checkpoint=path, **run)
    arrays = read_npz(path)
    for name, value in [("network_config", np.array("[" * 100_000 + "]" * 100_000)),
                        ("b1", np.zeros(7))]:
        # a deliberate edit: the checksum recomputed, so only the content checks can tell
        doctored = with_checksum({k: v for k, v in {**arrays, name: value}.items()
                                  if k != "checksum"})
        np.savez(tmp_path / "doctored.npz", **doctored)
        with pytest.raises(CheckpointError, match=str(tmp_path / "doctored.npz")):
            fit(Network(6, [5], 3, seed=0), X, y, resume=tmp_path / "doctored.npz", **run)
        with pytest.raises(CheckpointError, match=str(tmp_path / "doctored.npz")):
            load_checkpoint(tmp_path / "doctored.npz")


def test_a_checkpoint_with_adam_dropout_and_normalization_loads_through_the_strict_reader(
        tmp_path):
    """Every member a current checkpoint holds (optimizer state, dropout key, schedule state,
    input normalization) is one the member whitelist allows; anything else is still refused."""
    from cbn.inputs import Normalization
    from cbn.optim import Adam
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 6)).astype(np.uint8)
    y = np.arange(40) % 3
    norm = Normalization(X.mean(axis=0), X.std(axis=0) + 1)
    run = dict(lam=0.001, batch_size=8, schedule=CyclicLR(1e-3, 0.05, 5), cycles=2, seed=0,
               progress=False, normalization=norm)
    new_net = lambda: Network(6, [5, 4], 3, seed=0, dropout=0.3)  # noqa: E731
    expected = new_net()
    fit(expected, X, y, optimizer=Adam(), **run)
    path = tmp_path / "run.npz"
    fit(new_net(), X, y, optimizer=Adam(), checkpoint=path, **run)
    assert load_checkpoint(path).optimizer["name"] == "Adam"
    members = read_npz(path)
    assert "dropout_key" in members and any(k.startswith("optimizer_") for k in members)
    loaded = Network.load(path)  # a checkpoint is also a network file
    np.testing.assert_array_equal(loaded.normalization.mean, norm.mean)
    net = new_net()
    fit(net, X, y, optimizer=Adam(), resume=path, **run)
    np.testing.assert_array_equal(net.flat_params, expected.flat_params)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("surplus.npy", _npy(np.zeros(3)))
    with pytest.raises(CheckpointError, match="does not have: \\['surplus'\\]"):
        load_checkpoint(path)


def test_a_negative_running_variance_in_a_file_is_refused(tmp_path):
    net = Network(6, [5], 3, seed=0)
    arrays = net.to_arrays()
    arrays.pop("checksum", None)
    arrays["running_var1"] = -np.ones(5)
    np.savez(tmp_path / "neg.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'neg.npz'}.*running_var1"):
        Network.load(tmp_path / "neg.npz")


@pytest.mark.parametrize("content", [b"W1 = [[1, 2]]\n", b"", b"\x93NUMPY\x01\x00"],
                         ids=["text", "empty", "npy-magic"])
def test_a_file_that_is_not_an_npz_says_so_naming_it(tmp_path, content):
    path = tmp_path / "net.txt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        Network.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "allow_pickle" not in message
    assert "not a cbn network" in message


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_savez(tmp_path / "a.npz", a=np.zeros(2))
        Network(4, [3], 2, seed=0).save(tmp_path / "net.npz")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("a.npz", "net.npz"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected


def test_json_with_an_integer_of_too_many_digits_is_a_checkpoint_error(tmp_path):
    net = Network(6, [5], 3, seed=0)
    arrays = net.to_arrays()
    arrays["network_config"] = np.array('{"input_dim": ' + "9" * 5000 + "}")
    np.savez(tmp_path / "digits.npz", **arrays)
    with pytest.raises(CheckpointError, match="digits.npz: 'network_config' is not valid JSON"):
        Network.load(tmp_path / "digits.npz")


def test_a_sample_npz_with_a_member_declaring_far_more_than_the_file_is_a_data_error(tmp_path):
    from cbn.data import DataError, load_sample
    path = tmp_path / "sample.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("label_names.npy", _npy(np.array(["x"] * 10)))
    _add_zeros_member(path, 64 << 20)
    with pytest.raises(DataError, match=f"{path}: declares"):
        load_sample(path)

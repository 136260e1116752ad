"""Property-based fuzzing of every public entry point with bad input.

Each test gives one entry point valid arguments with some of them spoiled: wrong shapes and
ranks, other dtypes (int, bool, float16, long double, complex, object, str), non-contiguous,
negatively strided, Fortran-ordered, read-only and masked arrays, NaN and inf, huge and tiny
values, empty arrays, lists and None; numbers that are negative, zero, NaN, inf, bool, str,
complex or too large; and for files, truncated, bit-flipped, garbage and booby-trapped ones,
and random streams of the pickle opcodes the batch reader admits.

The property, everywhere:

* the call raises TypeError or ValueError (DataError and CheckpointError are ValueErrors) with
  a message, or it returns a finite, well-shaped result: any other exception, a crash, a
  numpy ComplexWarning (imaginary parts silently dropped) or a NaN fails the test;
* a spoil that changes what the input means (NaN, a non-real dtype, a wrong shape, labels out
  of range, a bad hyper-parameter) must be refused;
* a spoil that keeps the meaning (read-only, strided, reversed rows, another float dtype, a
  list) may be refused, but if accepted the result must equal the result for the same
  values passed as a plain C-contiguous array: never silently different.

The hypothesis profile (tests/conftest.py) bounds the examples in CI; CBN_FUZZ=long runs a
long fuzzing run. Every file written goes to pytest's tmp folders.
"""
from __future__ import annotations

import functools
import io
import json
import math
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cbn import (ConstantLR, CyclicLR, DivergenceError, History, Network, data, fit, gradcheck,
                 kernels)
from cbn import npz as cbn_npz
from cbn import train as cbn_train
from cbn.checkpoint import CheckpointError

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
OTHER_DTYPES = ("int8", "int32", "int64", "uint8", "uint64", "bool", "float16", "longdouble",
                "complex64", "complex128", "object", "U8", "datetime64[s]")
ACCEPTED = (TypeError, ValueError)
LABELS = tuple(np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                     "uint32", "uint64"))
REALS = LABELS + FLOATS + (np.dtype("float16"), np.dtype("longdouble"))

# Examples per test: the profile's count, a quarter of it for tests that train networks.
EXAMPLES = settings.default.max_examples
SLOW = settings(max_examples=max(25, EXAMPLES // 4))


# --------------------------------------------------------------------------------------------
# Spoiling arrays
# --------------------------------------------------------------------------------------------

@dataclass
class Spoiled:
    """A spoiled argument. ``clean`` is the plain C-contiguous array it stands for when the
    spoil kept its meaning (the call may accept it, and must then act as on ``clean``), or
    None when it must be refused."""
    value: object
    clean: Optional[np.ndarray]
    kind: str


# Spoils that keep the values (and so the meaning) of an array.
LAYOUT = ("readonly", "strided", "fortran", "reversed")


@st.composite
def spoiled(draw, a: np.ndarray, allowed=FLOATS, free_rows: bool = False,
            free_cols: bool = False, kinds: Optional[Tuple[str, ...]] = None) -> Spoiled:
    """Spoil array ``a`` (already valid). ``allowed``: the dtypes the argument accepts;
    ``free_rows`` / ``free_cols``: whether the number of rows / columns may change on its
    own (predicting on fewer rows is fine, training with fewer labels than rows is not)."""
    kinds = kinds or ("same", "dtype", "dtype", "rank", "rows", "cols", "nan", "huge", "tiny",
                      "empty", "list", "none", "masked") + LAYOUT * 2
    if a.dtype.kind not in "biuf":  # strings: only structural spoils apply
        kinds = tuple(k for k in kinds if k in ("same", "rank", "rows", "empty", "none") + LAYOUT)
    kind = draw(st.sampled_from(kinds))
    value, keeps = _spoil(draw, a, kind, allowed, free_rows, free_cols)
    if keeps and isinstance(value, np.ndarray) and value.ndim >= 1 and draw(st.booleans()):
        second = draw(st.sampled_from(LAYOUT))  # layouts combine: read-only and strided, ...
        value, _ = _spoil(draw, value, second, allowed, free_rows, free_cols)
        kind += "+" + second
    # The same values as a plain array: what the call must treat the spoiled one like.
    clean = np.ascontiguousarray(np.asarray(value)) if keeps else None
    return Spoiled(value, clean, kind)


def _spoil(draw, a, kind, allowed, free_rows, free_cols):
    """(value, keeps_meaning) for one spoil."""
    if kind == "same":
        return a.copy(), True
    if kind == "readonly":
        v = a.copy()
        v.flags.writeable = False
        return v, True
    if kind == "strided":
        if a.ndim == 0:
            return a.copy(), True
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2], True
    if kind == "fortran":
        return np.asfortranarray(a), True
    if kind == "reversed":
        return (a[::-1] if a.ndim else a.copy()), True
    if kind == "dtype":
        dt = np.dtype(draw(st.sampled_from(OTHER_DTYPES + tuple(d.name for d in allowed))))
        if dt.kind == "M":
            v = np.abs(a).astype(np.int64).astype(dt)
        elif dt.kind in "iub":
            with np.errstate(invalid="ignore", over="ignore"):
                v = np.nan_to_num(a.astype(np.float64)).astype(dt)
        else:
            v = a.astype(dt)
        return v, dt in allowed
    if kind == "rank":
        how = draw(st.sampled_from(("ravel", "up", "scalar", "zero-d")))
        if how == "ravel":
            v = a.ravel() if a.ndim != 1 else a.reshape(1, -1)
        elif how == "up":
            v = a[None]
        elif how == "scalar":
            v = a.flat[0].item() if a.size else 0.0
        else:
            v = np.array(a.flat[0] if a.size else 0, a.dtype)
        return v, False
    if kind == "rows":
        if a.ndim == 0:
            return a.copy(), True
        n = a.shape[0]
        rows = draw(st.sampled_from([max(0, n - 1), n + 1, 2 * n]))
        v = np.resize(a, (rows,) + a.shape[1:]) if rows else a[:0].copy()
        return v, free_rows and rows > 0
    if kind == "cols":
        if a.ndim < 2:  # a vector's only axis is its rows
            return np.append(a, a[:1]) if a.ndim == 1 else a.copy(), a.ndim == 0 or free_rows
        v = draw(st.sampled_from([a[:, :-1], np.concatenate([a, a[:, :1]], axis=1)]))
        return np.ascontiguousarray(v), free_cols and v.shape[1] > 0
    if kind == "nan":
        if a.dtype not in FLOATS or a.size == 0:
            return a.astype(np.float64) + np.nan, False
        v = a.copy()
        v.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return v, False
    if kind == "huge":
        if a.dtype not in FLOATS:
            return a.copy(), True
        big = draw(st.sampled_from([1e30, 1e150, 1e300])) if a.dtype == np.float64 else 1e30
        with np.errstate(over="ignore"):
            v = (a * a.dtype.type(big if big < np.finfo(a.dtype).max else 1e30))
        return v, bool(np.isfinite(v).all())
    if kind == "tiny":
        if a.dtype not in FLOATS:
            return a.copy(), True
        return a * a.dtype.type(1e-40 if a.dtype == np.float32 else 1e-310), True
    if kind == "empty":
        return a[:0].copy() if a.ndim else np.zeros(0, a.dtype), free_rows
    if kind == "list":
        return a.tolist(), True
    if kind == "none":
        return None, False
    if kind == "masked":
        mask = np.zeros(a.shape, bool)
        if a.size:
            mask.flat[0] = True
        return np.ma.masked_array(a, mask=mask), False
    raise AssertionError(kind)


def outcome(call: Callable):
    """("ok", result) or ("refused", message). Other exceptions propagate and fail the test;
    so does a ComplexWarning (numpy dropping imaginary parts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a refused input's checks
        try:
            return "ok", call()
        except ACCEPTED as exc:
            assert str(exc), f"{type(exc).__name__} without a message"
            return "refused", str(exc)


def judge(spoils, got, clean_call: Callable, same: Callable) -> None:
    """The fuzz property for one call made with ``spoils``; ``clean_call`` makes the same call
    with every argument's ``clean`` array, ``same`` compares two results."""
    must_refuse = [s.kind for s in spoils if s.clean is None]
    if must_refuse:
        assert got[0] == "refused", f"accepted a spoiled argument ({must_refuse})"
        return
    if got[0] == "ok":
        expected = outcome(clean_call)
        assert expected[0] == "ok", \
            f"accepted spoiled input whose plain form is refused: {expected[1]}"
        same(got[1], expected[1])


def equal(a, b) -> None:
    """Results must be exactly equal (the same values go through the same kernels)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            equal(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, z in zip(a, b):
            equal(x, z)
    else:
        np.testing.assert_array_equal(a, b)


def finite(*values) -> None:
    for v in values:
        if isinstance(v, dict):
            finite(*v.values())
        elif v is not None:
            assert np.isfinite(np.asarray(v, dtype=np.float64)).all(), \
                f"non-finite result {v!r:.200}"


# --------------------------------------------------------------------------------------------
# Spoiling numbers
# --------------------------------------------------------------------------------------------

WEIRD = st.one_of(
    st.integers(-5, 5),
    st.integers(-2**80, 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),
    st.sampled_from([0, 0.0, -0.0, 1, 1.0, 0.5, 1e-300, 5e-324, 1e300, 10**400, -(10**400),
                     True, False, None, "1", b"1", "nan", 1j, 1 + 0j, [1], (2,), {},
                     math.nan, math.inf, -math.inf, np.float32(0.5), np.float16(0.5),
                     np.int64(3), np.uint8(2), np.float64(2.0), np.bool_(True), np.nan,
                     Fraction(1, 3), Decimal("0.5"), np.array(0.5), np.array([0.5]),
                     np.complex128(1), object()]),
)


def is_real(v) -> bool:
    """A real number as cbn's argument checks define it: numbers.Real, not bool."""
    import numbers
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def is_int(v) -> bool:
    import numbers
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def real_in(v, low=-math.inf, high=math.inf, low_open=False, high_open=False) -> bool:
    if not is_real(v):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    return (math.isfinite(x) and (x > low if low_open else x >= low)
            and (x < high if high_open else x <= high))


def int_in(v, low=-math.inf, high=math.inf) -> bool:
    return is_int(v) and low <= int(v) <= high


# --------------------------------------------------------------------------------------------
# Networks and data used throughout (small, so thousands of examples stay fast)
# --------------------------------------------------------------------------------------------

D, K, N = 6, 3, 12
RNG = np.random.default_rng(0)
X64 = RNG.standard_normal((N, D))
Y = (np.arange(N) % K).astype(np.int64)
NETS = {(bn, dt): Network(D, [5, 4], K, batch_norm=bn, dtype=dt, seed=1)
        for bn in (True, False) for dt in (np.float32, np.float64)}
for _net in NETS.values():  # running statistics from data, so evaluation mode means something
    fit(_net, X64.astype(_net.dtype), Y, lam=0.0, batch_size=6, schedule=0.05, epochs=2,
        seed=0, progress=False)


class Norm:
    """A normalisation object as fit() and predict_proba() take it."""
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


IMAGES = RNG.integers(0, 256, (N, D), dtype=np.uint8)
NORM = Norm(IMAGES.mean(axis=0), IMAGES.std(axis=0) + 1.0)

nets = st.sampled_from(sorted(NETS, key=str))


# --------------------------------------------------------------------------------------------
# Network: construction, forward, cost and gradients
# --------------------------------------------------------------------------------------------

def network_arg_is_valid(name, v, dtype_ok=True, dtype=np.float64) -> bool:
    if name in ("input_dim", "hidden_width"):
        return int_in(v, 1)
    if name == "num_classes":
        return int_in(v, 2)
    if name == "init":
        return v in ("he", "xavier") if isinstance(v, str) else real_in(v, 0, low_open=True)
    if name == "seed":
        return v is None or int_in(v, 0)
    if name == "bn_alpha":
        return real_in(v, 0, 1)
    if name == "bn_eps":
        return real_in(v, np.finfo(dtype).tiny)
    if name in ("batch_norm", "bn_unbiased"):
        return isinstance(v, (bool, np.bool_))
    if name == "bn_init":
        return v in ("first_batch", "zeros_ones")
    raise AssertionError(name)


SMALL_OR_WEIRD = st.one_of(st.integers(1, 8), WEIRD)


@given(name=st.sampled_from(["input_dim", "hidden_width", "num_classes", "init", "seed",
                             "bn_alpha", "bn_eps", "batch_norm", "bn_unbiased", "bn_init"]),
       value=st.one_of(SMALL_OR_WEIRD, st.sampled_from(["he", "xavier", "glorot", ""])),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_network_accepts_exactly_the_valid_arguments(name, value, dtype):
    if name in ("input_dim", "hidden_width", "num_classes") and is_int(value):
        assume(int(value) <= 64)  # valid but huge sizes only measure the allocator
    kwargs = dict(input_dim=D, hidden=[4], num_classes=K, dtype=dtype)
    if name == "hidden_width":
        kwargs["hidden"] = [3, value]
    else:
        kwargs[name] = value
    got = outcome(lambda: Network(**kwargs))
    valid = network_arg_is_valid(name, value, dtype=dtype)
    if name == "init" and valid and got[0] == "refused":
        assert "overflow" in got[1]  # weights drawn with a huge sigma do not fit the dtype
        return
    assert (got[0] == "ok") == valid, (name, value, got)
    if valid:
        net = got[1]
        finite(net.flat_params)
        X = np.ones((3, net.input_dim), dtype)
        probs = outcome(lambda: net.predict_proba(X))
        if probs[0] == "refused":  # a valid but huge sigma: the logits overflow
            assert name == "init" and "NaN or infinite" in probs[1], probs
        else:
            finite(probs[1])
            np.testing.assert_allclose(probs[1].sum(axis=1), 1, rtol=1e-5)


@given(hidden=st.one_of(st.lists(SMALL_OR_WEIRD, max_size=3), WEIRD,
                        st.sampled_from(["50", b"5", "", (), range(1, 3), {3: 1}, {3, 4}, {},
                                         np.array([3, 4]), np.array([2.0, 3.0]),
                                         np.array([[3]])])),
       dtype=st.one_of(st.sampled_from([np.float32, np.float64, "float32", "f8", float,
                                        np.float16, np.int32, complex, "complex64", object,
                                        str, "nonsense", np.dtype("<f4"), np.dtype(">f8")]),
                       WEIRD))
def test_network_widths_and_dtype(hidden, dtype):
    valid_hidden = (not isinstance(hidden, (str, bytes, np.ndarray, dict, set))
                    and hasattr(hidden, "__iter__")
                    and all(int_in(h, 1) for h in hidden))
    if isinstance(hidden, np.ndarray):
        valid_hidden = hidden.ndim == 1 and hidden.dtype.kind in "iu" and (hidden >= 1).all()
    if valid_hidden:
        assume(all(int(h) <= 64 for h in hidden))
    try:
        valid_dtype = np.dtype(dtype) in FLOATS
    except TypeError:
        valid_dtype = False
    got = outcome(lambda: Network(4, hidden, 3, dtype=dtype))
    assert (got[0] == "ok") == (valid_hidden and valid_dtype), (hidden, dtype, got)
    if got[0] == "ok":
        net = got[1]
        assert net.dtype in FLOATS and net.dtype.isnative  # a big-endian request is made native
        finite(net.predict_proba(np.zeros((2, 4), net.dtype)))


@given(key=nets, data=st.data())
def test_predict_proba_with_spoiled_rows(key, data):
    net = NETS[key]
    X = X64.astype(net.dtype)
    s = data.draw(spoiled(X, free_rows=True))
    mode = data.draw(st.sampled_from(["eval", "train", "predict", "", None, 1]))
    call = ((lambda v: net.predict(v)) if mode == "predict"
            else (lambda v: net.predict_proba(v, mode=mode)))
    if mode not in ("eval", "train", "predict"):
        s = Spoiled(s.value, None, f"mode={mode!r}")
    got = outcome(lambda: call(s.value))
    if got[0] == "ok" and mode == "predict":
        assert got[1].shape == (np.asarray(s.value).shape[0],) and got[1].dtype.kind == "i"
        assert ((0 <= got[1]) & (got[1] < K)).all()
    elif got[0] == "ok":
        probs = got[1]
        assert probs.shape == (np.asarray(s.value).shape[0], K) and probs.dtype == net.dtype
        finite(probs)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-4)
    else:
        assert "X" in got[1] or "NaN" in got[1] or "batch" in got[1] or "mode" in got[1], got[1]
    judge([s], got, lambda: call(s.clean), equal)


@given(key=nets, data=st.data())
def test_evaluate_with_spoiled_rows_labels_and_lam(key, data):
    net = NETS[key]
    X = X64.astype(net.dtype)
    sx, sy = Spoiled(X, X, "same"), Spoiled(Y, Y, "same")
    if data.draw(st.booleans()):  # one of the two: equal changes to both rows would be valid
        sx = data.draw(spoiled(X))
    else:
        sy = data.draw(spoiled(Y, allowed=LABELS))
    labels_out_of_range = data.draw(st.sampled_from([None, -1, K, 2**40]))
    if labels_out_of_range is not None and isinstance(sy.value, np.ndarray) and sy.value.size \
            and sy.value.dtype.kind in "iu" and sy.value.ndim == 1:
        v = sy.value.astype(np.int64)
        v[0] = labels_out_of_range
        sy = Spoiled(v, None, "labels out of range")
    lam = data.draw(st.one_of(st.floats(0, 1), WEIRD))
    lam_ok = real_in(lam, 0)
    got = outcome(lambda: net.evaluate(sx.value, sy.value, lam))
    if got[0] == "ok":
        r = got[1]
        finite(r)
        assert 0 <= r["accuracy"] <= 1 and r["cost"] >= r["loss"] >= 0
    spoils = [sx, sy] + ([] if lam_ok else [Spoiled(lam, None, "lam")])
    judge(spoils, got, lambda: net.evaluate(sx.clean, sy.clean, lam), equal)


@given(key=nets, data=st.data())
def test_predict_with_normalization_of_uint8_images(key, data):
    net = NETS[key]
    sx = data.draw(spoiled(IMAGES, allowed=(np.dtype(np.uint8),) + FLOATS, free_rows=True))
    which = data.draw(st.sampled_from(["mean", "std", "object", "none"]))
    norm, spoils = NORM, [sx]
    if which in ("mean", "std"):
        base = getattr(NORM, which)
        sn = data.draw(spoiled(base, allowed=REALS))
        if which == "std" and data.draw(st.booleans()):
            v = base.copy()
            v[0] = data.draw(st.sampled_from([0.0, -1.0, 1e-320]))
            sn = Spoiled(v, None, "std not positive or too small")
        spoils.append(sn)
        norm = Norm(sn.value if which == "mean" else NORM.mean,
                    sn.value if which == "std" else NORM.std)
        clean_norm = Norm(sn.clean if which == "mean" else NORM.mean,
                          sn.clean if which == "std" else NORM.std)
    elif which == "object":
        norm = clean_norm = object()
        spoils.append(Spoiled(norm, None, "no mean/std"))
    else:
        norm = clean_norm = NORM
    got = outcome(lambda: net.predict_proba(sx.value, normalization=norm))
    if got[0] == "ok":
        finite(got[1])
    judge(spoils, got, lambda: net.predict_proba(sx.clean, normalization=clean_norm), equal)


@given(key=nets, data=st.data())
def test_cost_and_gradients_with_spoiled_batch(key, data):
    net = NETS[key]
    X = X64.astype(net.dtype)
    sx, sy = Spoiled(X, X, "same"), Spoiled(Y, Y, "same")
    if data.draw(st.booleans()):
        sx = data.draw(spoiled(X))
    else:
        sy = data.draw(spoiled(Y, allowed=LABELS))
    rows = data.draw(st.sampled_from([N, 2, 1]))  # a batch of one with BN must be refused
    if rows < N:
        spoils = [Spoiled(X64[:rows].astype(net.dtype), X64[:rows].astype(net.dtype), "rows"),
                  Spoiled(Y[:rows], Y[:rows], "rows")]
        if rows == 1 and net.batch_norm:
            spoils[0] = Spoiled(spoils[0].value, None, "BN batch of 1")
    else:
        spoils = [sx, sy]
    lam = data.draw(st.one_of(st.sampled_from([0.0, 0.01]), WEIRD))
    if not real_in(lam, 0):
        spoils.append(Spoiled(lam, None, "lam"))
    which = data.draw(st.sampled_from(["cost", "cost_and_grads"]))
    call = getattr(net, which)
    got = outcome(lambda: call(spoils[0].value, spoils[1].value, lam))
    if got[0] == "ok":
        cost, grads = (got[1], {}) if which == "cost" else got[1]
        finite(cost, *grads.values())
    judge(spoils, got, lambda: call(spoils[0].clean, spoils[1].clean, lam), equal)


@settings(max_examples=max(10, EXAMPLES // 10))
@given(entries=st.dictionaries(
    st.sampled_from(["hidden", "batch_norm", "input_dim", "num_classes", "n", "h", "floor",
                     "tolerance", "seed", "max_entries", "lam", "init"]),
    st.one_of(st.integers(-2, 4), WEIRD, st.just([3])), max_size=3))
def test_gradcheck_arguments(entries):
    kwargs = dict(hidden=(3,), input_dim=3, num_classes=3, n=4, max_entries=2)
    kwargs.update(entries)
    for key in ("input_dim", "num_classes", "n", "max_entries"):
        if is_int(kwargs.get(key)):
            assume(int(kwargs[key]) <= 6)
    got = outcome(lambda: gradcheck(**kwargs))
    if got[0] == "ok":
        result = got[1]
        assert result.rows and all(math.isfinite(r["max_relative_error"]) for r in result.rows)
        valid = (real_in(kwargs["h"] if "h" in kwargs else 1e-3, 0, low_open=True)
                 and real_in(kwargs.get("lam", 0.0), 0)
                 and (kwargs["max_entries"] is None or int_in(kwargs["max_entries"], 1)))
        assert valid, kwargs


@given(spoil_x=st.booleans(), data=st.data())
def test_gradcheck_on_a_given_batch(spoil_x, data):
    net = NETS[(True, np.float32)]
    sx = (data.draw(spoiled(X64[:4].astype(np.float32))) if spoil_x
          else Spoiled(X64[:4], X64[:4], "same"))
    sy = Spoiled(Y[:4], Y[:4], "same") if spoil_x else data.draw(spoiled(Y[:4], allowed=LABELS))
    got = outcome(lambda: gradcheck(net, sx.value, sy.value, max_entries=1, seed=0))
    if got[0] == "ok":
        assert all(math.isfinite(r["max_relative_error"]) for r in got[1].rows)
    if sx.clean is None or sy.clean is None:
        assert got[0] == "refused", (sx.kind, sy.kind)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

@given(eta_min=st.one_of(st.floats(0, 1), WEIRD), eta_max=st.one_of(st.floats(0, 1), WEIRD),
       step_size=st.one_of(st.integers(1, 50), WEIRD),
       mode=st.sampled_from(["triangular", "triangular2", "exp_range", "cosine", "", 1]),
       gamma=st.one_of(st.floats(0, 1), WEIRD), step=st.one_of(st.integers(0, 10**6), WEIRD))
def test_cyclic_schedule(eta_min, eta_max, step_size, mode, gamma, step):
    got = outcome(lambda: CyclicLR(eta_min, eta_max, step_size, mode, gamma=gamma))
    valid = (real_in(eta_min, 0) and real_in(eta_max, 0) and float(eta_min) <= float(eta_max)
             and int_in(step_size, 1) and mode in ("triangular", "triangular2", "exp_range")
             and real_in(gamma, 0, 1, low_open=True))
    assert (got[0] == "ok") == valid, got
    if valid:
        schedule = got[1]
        lr = outcome(lambda: schedule.lr(step))
        assert (lr[0] == "ok") == int_in(step, 0, 2**53), (step, lr)
        if lr[0] == "ok":
            assert float(eta_min) <= lr[1] <= float(eta_max) + 1e-12 * float(eta_max)
        curve = outcome(lambda: schedule.curve(step if not int_in(step, 0) else int(step) % 50))
        if curve[0] == "ok":
            finite(curve[1])


@pytest.mark.parametrize("mode", ["triangular2", "exp_range"])
def test_decaying_cyclic_schedules_reach_zero_without_overflow(mode):
    """Found by fuzzing: triangular2 computed 2.0 ** (cycle - 1), which overflows after
    1024 cycles (a long run with a short step size) and crashed training."""
    schedule = CyclicLR(0.0, 1.0, 1, mode, gamma=0.5)
    assert schedule.lr(2048) == 0.0 and schedule.lr(2**53) == 0.0
    with pytest.raises(ValueError, match="step"):
        schedule.lr(10**400)


@given(lr=WEIRD, steps=st.one_of(st.integers(0, 20), WEIRD))
def test_constant_schedule(lr, steps):
    assume(not int_in(steps, 21))  # valid, but a curve of 2**40 steps only measures memory
    got = outcome(lambda: ConstantLR(lr))
    assert (got[0] == "ok") == real_in(lr, 0), got
    if got[0] == "ok":
        curve = outcome(lambda: got[1].curve(steps))
        assert (curve[0] == "ok") == int_in(steps, 0, 20)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------

FIT_ARGS = dict(lam=0.01, batch_size=4, schedule=0.05, epochs=1, seed=0, progress=False)


def fit_result(bn, dtype, X, y, **kwargs):
    """Train a fresh network; return what must match between equivalent calls. Divergence
    (a huge lam, say) is a valid outcome: the history then stops where it was detected."""
    net = Network(D, [5], K, batch_norm=bn, dtype=dtype, seed=3)
    try:
        history = fit(net, X, y, **{**FIT_ARGS, **kwargs})
        diverged = None
    except DivergenceError as exc:
        assert "step" in str(exc) and "learning rate" in str(exc)
        history, diverged = exc.history, exc.step
    result = {k: v for k, v in history.as_dict().items() if k != "wall_time"}
    result["params"] = net.flat_params.copy()
    result["running"] = [v.copy() for v in net.running_stats.values()]
    result["diverged"] = diverged
    return result


def check_fit_result(r) -> None:
    finite(r["params"], *r["running"], r["train_loss"], r["batch_loss"], r["val_loss"])
    assert r["step"] or r["diverged"] is not None, "a run that records nothing"


@SLOW
@given(bn=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_fit_with_spoiled_data(bn, dtype, data):
    X = X64.astype(dtype)
    target = data.draw(st.sampled_from(["X", "y", "X_val", "y_val"]))
    s = data.draw(spoiled(Y if target.startswith("y") else X,
                          allowed=LABELS if target.startswith("y") else FLOATS,
                          free_rows=False))
    args = dict(X=X, y=Y, X_val=X, y_val=Y)
    clean = dict(args)
    args[target], clean[target] = s.value, s.clean
    got = outcome(lambda: fit_result(bn, dtype, **args))
    if got[0] == "ok":
        check_fit_result(got[1])
    judge([s], got, lambda: fit_result(bn, dtype, **clean), equal)


def fit_hyper_valid(name, v, bn) -> bool:
    if name == "lam":
        return real_in(v, 0)
    if name == "batch_size":
        return int_in(v, 2 if bn else 1)
    if name == "momentum":
        return real_in(v, 0, 1, high_open=True)
    if name == "epochs":
        return int_in(v, 1)
    if name == "eval_every":
        return v is None or int_in(v, 1)
    if name == "seed":
        return v is None or int_in(v, 0)
    if name == "schedule":
        return isinstance(v, (ConstantLR, CyclicLR)) or real_in(v, 0)
    if name == "cycles":
        return False  # with a ConstantLR schedule, cycles= is always refused
    raise AssertionError(name)


@SLOW
@given(name=st.sampled_from(["lam", "batch_size", "momentum", "epochs", "eval_every", "seed",
                             "schedule", "cycles"]),
       value=st.one_of(st.integers(-2, 5), WEIRD), bn=st.booleans())
def test_fit_accepts_exactly_the_valid_hyper_parameters(name, value, bn):
    if name in ("epochs", "batch_size") and is_int(value):
        assume(int(value) <= 10**6)  # valid; more epochs only take longer
    if name == "epochs":
        assume(not is_int(value) or int(value) <= 3)
    kwargs = {name: value}
    if name == "cycles":
        kwargs["epochs"] = None
    got = outcome(lambda: fit_result(bn, np.float64, X64, Y, **kwargs))
    assert (got[0] == "ok") == fit_hyper_valid(name, value, bn), (name, value, got)
    if got[0] == "ok":
        check_fit_result(got[1])


@SLOW
@given(eta_max=st.one_of(st.floats(0.01, 10), st.sampled_from([1e3, 1e6, 1e12, 1e30, 1e300])),
       step_size=st.integers(1, 30), cycles=st.one_of(st.floats(0.01, 3), WEIRD),
       bn=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       momentum=st.sampled_from([0.0, 0.9]))
def test_fit_with_cyclic_schedule_never_returns_nan(eta_max, step_size, cycles, bn, dtype,
                                                    momentum):
    if real_in(cycles, 3.0001):  # valid; more cycles only take longer, unless they overflow
        assume(not math.isfinite(float(cycles) * 2 * step_size))
    schedule = CyclicLR(1e-5, eta_max, step_size)
    net = Network(D, [5], K, batch_norm=bn, dtype=dtype, seed=3)
    before = net.flat_params.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            history = fit(net, X64.astype(dtype), Y, X_val=X64.astype(dtype), y_val=Y, lam=0.01,
                          batch_size=4, schedule=schedule, cycles=cycles, momentum=momentum,
                          seed=0, progress=False)
    except DivergenceError as exc:
        assert "step" in str(exc) and "learning rate" in str(exc)
        finite(net.flat_params, *net.running_stats.values())
        assert exc.restored_step % 50 == 0 and exc.restored_step <= exc.step
        if exc.restored_step == 0:
            np.testing.assert_array_equal(net.flat_params, before)
        return
    except ACCEPTED:
        steps = float(cycles) * 2 * step_size if real_in(cycles, 0, low_open=True) else math.nan
        assert not math.isfinite(steps) or round(steps) < 1, cycles
        return
    finite(net.flat_params, *net.running_stats.values(), *history.as_dict().values())
    copy = Network.from_arrays(net.to_arrays())  # the state is savable: every value finite
    np.testing.assert_array_equal(copy.flat_params, net.flat_params)


@SLOW
@given(rows=st.integers(1, 5), batch_size=st.one_of(st.integers(1, 7), st.just(2**40)),
       bn=st.booleans())
def test_fit_on_tiny_data_and_batches(rows, batch_size, bn):
    """Batches of one with BN are refused; a batch larger than the data set is one batch."""
    got = outcome(lambda: fit_result(bn, np.float64, X64[:rows], Y[:rows], batch_size=batch_size))
    if bn and min(rows, batch_size) < 2:
        assert got[0] == "refused" and "at least 2" in got[1]
    else:
        assert got[0] == "ok", got
        check_fit_result(got[1])
        if batch_size >= rows:
            assert got[1]["step"] == [1]


# --------------------------------------------------------------------------------------------
# Kernels (cbn.ops): spoil one argument of a valid call
# --------------------------------------------------------------------------------------------

def kernel_calls(dt):
    """name -> (function, valid positional arguments, keyword arguments)."""
    r = np.random.default_rng(5)
    n, d, m = 5, 4, 3
    X, W = r.standard_normal((n, d)).astype(dt), r.standard_normal((d, m)).astype(dt)
    b = r.standard_normal(m).astype(dt)
    S = r.standard_normal((n, m)).astype(dt)
    gamma, beta = (1 + r.random(m)).astype(dt), r.standard_normal(m).astype(dt)
    H, cache = kernels.bn_relu_forward_train(S, gamma, beta)
    mean, var = S.mean(0).astype(dt), S.var(0).astype(dt)
    theta, grad = r.standard_normal(7).astype(dt), r.standard_normal(7).astype(dt)
    src = r.integers(0, 255, (6, d), dtype=np.uint8)
    return {
        "linear_forward": (kernels.linear_forward, (X, W, b), {}),
        "linear_backward": (kernels.linear_backward, (X, W, S), {"lam": 0.1}),
        "bn_relu_forward_train": (kernels.bn_relu_forward_train, (S, gamma, beta), {}),
        "bn_relu_forward_eval": (kernels.bn_relu_forward_eval, (S, gamma, beta, mean, var), {}),
        "bn_relu_backward": (kernels.bn_relu_backward,
                             (S, H, cache["Shat"], gamma, cache["inv_std"]), {}),
        "running_stats_update": (kernels.running_stats_update, (mean, var, mean.copy(), var.copy()),
                                 {"batch_size": n, "unbiased": True}),
        "relu_forward": (kernels.relu_forward, (S,), {}),
        "relu_backward": (kernels.relu_backward, (S, H), {}),
        "softmax": (kernels.softmax, (S,), {}),
        "softmax_cross_entropy": (kernels.softmax_cross_entropy, (S, np.arange(n) % m), {}),
        "sgd_update": (kernels.sgd_update, (theta, grad, 0.1),
                       {"weight_decay": 0.01, "momentum": 0.9, "velocity": np.zeros(7, dt)}),
        "gather_rows": (kernels.gather_rows, (src, np.array([3, 0, 5]), np.full(d, 100.0),
                                              np.full(d, 0.01)), {"dtype": dt}),
    }


KERNEL_NAMES = sorted(kernel_calls(np.float64))
# (kernel, argument slot) -> the axes of that argument that may change on their own.
FREE_AXES = {("linear_forward", 0): "rows", ("bn_relu_forward_train", 0): "rows",
             ("bn_relu_forward_eval", 0): "rows", ("relu_forward", 0): "rows cols",
             ("softmax", 0): "rows cols", ("softmax_cross_entropy", 0): "cols",
             ("gather_rows", 0): "rows", ("gather_rows", 1): "rows"}
IN_PLACE = {"running_stats_update": (2, 3), "sgd_update": (0,)}


def run_kernel(fn, args, kwargs, name):
    """Call a kernel on copies of its in-place arguments; return everything it produced."""
    args = list(args)
    for i in IN_PLACE.get(name, ()):
        if isinstance(args[i], np.ndarray):
            args[i] = args[i].copy() if args[i].flags.writeable else args[i]
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("velocity"), np.ndarray) and kwargs["velocity"].flags.writeable:
        kwargs["velocity"] = kwargs["velocity"].copy()
    out = fn(*args, **kwargs)
    produced = [out] + [args[i] for i in IN_PLACE.get(name, ())]
    if name == "sgd_update":
        produced.append(kwargs.get("velocity"))
    return produced


def finite_kernel_output(produced, name="") -> None:
    if name == "sgd_update" and produced[0] is False:
        return  # documented: returns False when an updated value is not finite
    for p in produced:
        if isinstance(p, (tuple, list)):
            finite_kernel_output(p)
        elif isinstance(p, dict):
            finite_kernel_output(list(p.values()))
        elif isinstance(p, (np.ndarray, float, int)) and not isinstance(p, bool):
            finite(p)


@given(name=st.sampled_from(KERNEL_NAMES), dt=st.sampled_from([np.float32, np.float64]),
       data=st.data())
def test_kernels_with_one_spoiled_array(name, dt, data):
    fn, args, kwargs = kernel_calls(dt)[name]
    slots = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    slot = data.draw(st.sampled_from(slots))
    a = args[slot]
    is_labels = name == "softmax_cross_entropy" and slot == 1
    is_index = name == "gather_rows" and slot == 1
    is_src = name == "gather_rows" and slot == 0
    if is_labels or is_index:
        allowed = LABELS
    elif is_src:
        allowed = (np.dtype(np.uint8),) + FLOATS
    elif name == "gather_rows":
        allowed = FLOATS  # shift and scale are cast to the output dtype
    else:
        allowed = (np.dtype(dt),)
    free = FREE_AXES.get((name, slot), "")
    s = data.draw(spoiled(a, allowed=allowed, free_rows="rows" in free, free_cols="cols" in free))
    in_place = slot in IN_PLACE.get(name, ())
    if in_place and isinstance(s.value, np.ndarray) and not s.value.flags.writeable:
        s = Spoiled(s.value, None, s.kind + " (in place)")  # a read-only output must be refused
    if name in ("bn_relu_forward_eval",) and slot == 4 and s.clean is not None \
            and s.clean.size and (s.clean < 0).any():
        s = Spoiled(s.value, None, "negative variance")
    args_spoiled = list(args)
    args_spoiled[slot] = s.value
    args_clean = list(args)
    args_clean[slot] = s.clean
    got = outcome(lambda: run_kernel(fn, args_spoiled, kwargs, name))
    if got[0] == "ok":
        finite_kernel_output(got[1], name)
    judge([s], got, lambda: run_kernel(fn, args_clean, kwargs, name), equal)


@given(name=st.sampled_from(KERNEL_NAMES), key=st.sampled_from(["lam", "eps", "alpha", "lr",
                                                                "weight_decay", "momentum",
                                                                "batch_size", "dtype"]),
       value=WEIRD, dt=st.sampled_from([np.float32, np.float64]))
def test_kernels_with_a_spoiled_number(name, key, value, dt):
    import inspect
    fn, args, kwargs = kernel_calls(dt)[name]
    if key not in inspect.signature(fn).parameters:
        return
    kwargs = dict(kwargs)
    kwargs[key] = value
    if key == "lr":
        args = args[:2]
    got = outcome(lambda: run_kernel(fn, args, kwargs, name))
    if got[0] == "ok":
        finite_kernel_output(got[1], name)
        valid = {"lam": lambda v: real_in(v, 0), "eps": lambda v: real_in(v, 0, low_open=True),
                 "alpha": lambda v: real_in(v, 0, 1), "lr": lambda v: real_in(v, 0),
                 "weight_decay": lambda v: real_in(v, 0), "momentum": lambda v: real_in(v, 0, 1),
                 "batch_size": lambda v: int_in(v, 2), "dtype": lambda v: False}[key]
        if key == "dtype":
            try:
                valid = lambda v: np.dtype(v) in FLOATS  # noqa: E731
            except TypeError:
                pass
        assert valid(value), (name, key, value)


# --------------------------------------------------------------------------------------------
# Data loading (cbn.data): malformed arguments and files
# --------------------------------------------------------------------------------------------

def batch_bytes(rows=3, seed=0, **override) -> bytes:
    r = np.random.default_rng(seed)
    batch = {b"data": r.integers(0, 256, (rows, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in r.integers(0, 10, rows)], b"batch_label": b"x"}
    batch.update(override)
    return pickle.dumps(batch, protocol=2)


def mutate(draw, raw: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "flip", "garbage", "empty", "append",
                                "splice"]))
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "flip":
        b = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            # Flips in the pickle's opcodes and header matter most; pixels are 3072 per row.
            i = draw(st.one_of(st.integers(0, min(400, len(b) - 1)), st.integers(0, len(b) - 1)))
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if how == "garbage":
        return draw(st.binary(max_size=300))
    if how == "empty":
        return b""
    if how == "append":
        return raw + draw(st.binary(min_size=1, max_size=50))
    start = draw(st.integers(0, len(raw) - 1))
    return raw[:start] + draw(st.binary(max_size=40)) + raw[start + draw(st.integers(0, 40)):]


BOOBY_TRAPS = [
    # os.system("true") via REDUCE: refused before anything is called.
    b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
    b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.",
    b"\x80\x02c__builtin__\ngetattr\n.",
    # _codecs.encode with a codec that could expand data: refused.
    b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.",
    # A dict whose data is a huge nested list instead of an array.
    pickle.dumps({b"data": [[0] * 10] * 10, b"labels": [0] * 10}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1]}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
    pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, protocol=2),
    pickle.dumps({b"labels": [0, 1]}, protocol=2),
    pickle.dumps([1, 2, 3], protocol=2),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 2**70]}, protocol=2),
]


def check_batch(images, labels) -> None:
    assert images.dtype == np.uint8 and images.ndim == 2 and images.shape[1] == 3072
    assert labels.dtype == np.int64 and labels.shape == (images.shape[0],)
    assert images.shape[0] >= 1 and labels.min() >= 0 and labels.max() <= 9


@given(data_=st.data())
def test_read_batch_of_a_damaged_file(tmp_path_factory, data_):
    raw = batch_bytes()
    damaged = data_.draw(st.one_of(st.builds(lambda: None), st.sampled_from(BOOBY_TRAPS)))
    damaged = mutate(data_.draw, raw) if damaged is None else damaged
    path = tmp_path_factory.mktemp("batch") / "data_batch_1"
    path.write_bytes(damaged)
    got = outcome(lambda: data.read_batch(path))
    if got[0] == "ok":
        check_batch(*got[1])
    else:
        assert str(path) in got[1], got[1]  # the message names the file


# Pieces of pickles made only of what the batch reader admits: containers, memo references
# (which share structure), the allowed globals, REDUCE and BUILD. Random sequences of them
# try the reader's limits on sharing, nesting, mutation and object state.
OPCODE_PIECES = [b"(", b"]", b"}", b")", b"\x85", b"\x86", b"\x87", b"t", b"l", b"d", b"a",
                 b"e", b"s", b"u", b"N", b"R", b"b", b"0", b"2", b"1",
                 b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"c_codecs\nencode\n",
                 b"cnumpy.core.multiarray\n_reconstruct\n", b"U\x02u1", b"U\x01b",
                 b"X\x06\x00\x00\x00latin1", b"U\x01|", b"J\xff\xff\xff\xff"]


@st.composite
def opcode_streams(draw) -> bytes:
    pieces = []
    for _ in range(draw(st.integers(1, 80))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            pieces.append(b"q" + bytes([draw(st.integers(0, 7))]))   # BINPUT
        elif kind == 1:
            pieces.append(b"h" + bytes([draw(st.integers(0, 7))]))   # BINGET
        elif kind == 2:
            pieces.append(b"K" + bytes([draw(st.integers(0, 255))]))  # BININT1
        else:
            pieces.append(draw(st.sampled_from(OPCODE_PIECES)))
    return b"\x80\x02" + b"".join(pieces) + b"."


@given(stream=opcode_streams())
def test_read_batch_of_random_admitted_opcodes(tmp_path_factory, stream):
    path = tmp_path_factory.mktemp("ops") / "data_batch_1"
    path.write_bytes(stream)
    got = outcome(lambda: data.read_batch(path))
    if got[0] == "ok":
        check_batch(*got[1])
    else:
        assert got[1].startswith(str(path)) and len(got[1]) < 600, got[1]


def cifar_folder(root: Path, rows=3) -> Path:
    folder = root / data.FOLDER_NAME
    folder.mkdir()
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(batch_bytes(rows, seed=k))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [n.encode() for n in data.LABEL_NAMES]}, protocol=2))
    return folder


@SLOW
@given(target=st.sampled_from(["data_batch_1", "data_batch_5", "test_batch", "batches.meta",
                               None]),
       protocol=st.one_of(st.sampled_from(["full", "seed", "other"]), WEIRD),
       val_size=st.one_of(st.integers(-1, 20), WEIRD), data_=st.data())
def test_load_cifar10_with_a_damaged_folder_or_bad_arguments(tmp_path_factory, target, protocol,
                                                             val_size, data_):
    folder = cifar_folder(tmp_path_factory.mktemp("cifar"))
    if target is not None:
        (folder / target).write_bytes(mutate(data_.draw, (folder / target).read_bytes()))
    got = outcome(lambda: data.load_cifar10(folder.parent, protocol=protocol, val_size=val_size))
    if got[0] == "ok":
        cifar = got[1]
        assert protocol in ("full", "seed") and int_in(val_size, 1)
        for split in (cifar.train, cifar.val, cifar.test):
            check_batch(split.images, split.labels)
        finite(cifar.normalization.mean, cifar.normalization.std)
        finite(cifar.features("val", np.float32))


@SLOW
@given(data_=st.data())
def test_load_sample_of_a_damaged_npz(tmp_path_factory, data_):
    raw = data.SAMPLE_PATH.read_bytes()
    how = data_.draw(st.sampled_from(["bytes", "arrays"]))
    path = tmp_path_factory.mktemp("sample") / "sample.npz"
    if how == "bytes":
        path.write_bytes(mutate(data_.draw, raw[:4096]) if data_.draw(st.booleans())
                         else mutate(data_.draw, raw))
    else:
        with np.load(data.SAMPLE_PATH, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        key = data_.draw(st.sampled_from(sorted(arrays)))
        s = data_.draw(spoiled(arrays[key], allowed=(arrays[key].dtype,), free_rows=True,
                               kinds=("dtype", "rank", "rows", "cols", "nan", "empty", "same")))
        if s.value is None or isinstance(s.value, (float, int, list)):
            del arrays[key]
        else:
            arrays[key] = s.value
        if key.endswith("labels") and key in arrays and data_.draw(st.booleans()):
            arrays[key] = np.full_like(arrays[key], data_.draw(st.sampled_from([-1, 10, 255])))
        np.savez(path, **arrays)
    got = outcome(lambda: data.load_sample(path))
    if got[0] == "ok":
        for split in (got[1].train, got[1].val, got[1].test):
            check_batch(split.images, split.labels)
        finite(got[1].normalization.std)
    else:
        assert str(path) in got[1] or "label" in got[1] or "images" in got[1], got[1]


SAMPLE = data.load_sample()


@given(split=st.one_of(st.sampled_from(["train", "val", "test"]), WEIRD, st.just("TRAIN")),
       dtype=st.one_of(st.sampled_from([np.float32, np.float64, "float32"]), WEIRD))
def test_cifar10_methods(split, dtype):
    features = outcome(lambda: SAMPLE.features(split, dtype))
    valid_split = isinstance(split, str) and split in ("train", "val", "test")
    try:
        valid_dtype = np.dtype(dtype) in FLOATS
    except TypeError:
        valid_dtype = False
    assert (features[0] == "ok") == (valid_split and valid_dtype), (split, dtype, features)
    if features[0] == "ok":
        finite(features[1])
        assert features[1].shape == SAMPLE.split(split).images.shape


@SLOW
@given(protocol=st.one_of(st.sampled_from(["full", "seed"]), WEIRD),
       val_size=st.one_of(st.integers(-2, 40), WEIRD),
       which=st.sampled_from(["folder", "file", "missing"]))
def test_load_or_sample_arguments(tmp_path_factory, protocol, val_size, which):
    """Never downloads here (download=False); a given folder that is missing or wrong raises
    instead of falling back to the sample."""
    root = tmp_path_factory.mktemp("root")
    target = {"folder": cifar_folder(root).parent, "file": root / "x.txt",
              "missing": root / "no"}[which]
    if which == "file":
        target.write_text("not data")
    def load():
        try:
            return data.load_or_sample(target, protocol=protocol, val_size=val_size)
        except FileNotFoundError as exc:  # documented: no data where it was told to look
            return exc

    got = outcome(load)
    if got[0] == "ok" and isinstance(got[1], FileNotFoundError):
        assert which != "folder" and str(target) in str(got[1])
    elif got[0] == "ok":
        assert which == "folder" and protocol in ("full", "seed") and int_in(val_size, 1)
        check_batch(got[1].train.images, got[1].train.labels)


@given(data_=st.data())
def test_normalization_fit_and_apply(data_):
    images = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    # Documented: "raw pixel values (uint8 or any real dtype)".
    s = data_.draw(spoiled(images, allowed=REALS, free_rows=True))
    fitted = outcome(lambda: data.Normalization.fit(s.value))
    if fitted[0] == "ok":
        finite(fitted[1].mean, fitted[1].std)
        assert (fitted[1].std > 0).all()
    norm = data.Normalization.fit(images)
    dtype = data_.draw(st.one_of(st.sampled_from([np.float32, np.float64]), WEIRD))
    applied = outcome(lambda: norm.apply(s.value, dtype))
    if applied[0] == "ok":
        out = applied[1]
        assert out.dtype in FLOATS and out.flags.c_contiguous
        finite(out)
    if s.clean is None:
        assert applied[0] == "refused", s.kind


@given(mean=st.one_of(st.just(np.zeros(3)), WEIRD, st.sampled_from(
           [np.zeros(0), np.zeros((1, 3)), np.array([np.nan, 0, 0]), np.zeros(3, complex),
            np.array(["a", "b", "c"]), [0, 0, 0]])),
       std=st.one_of(st.just(np.ones(3)), WEIRD, st.sampled_from(
           [np.zeros(3), -np.ones(3), np.array([1, 1, np.inf]), np.ones(4), np.ones(3, complex)])))
def test_normalization_constructor(mean, std):
    got = outcome(lambda: data.Normalization(mean, std))
    if got[0] == "ok":
        n = got[1]
        finite(n.mean, n.std)
        assert (n.std > 0).all() and n.mean.shape == n.std.shape and n.mean.ndim == 1


@given(data_=st.data())
def test_split_constructor(data_):
    images, labels = RNG.integers(0, 256, (4, 5), dtype=np.uint8), np.arange(4) % 3
    si, sl = Spoiled(images, images, "same"), Spoiled(labels, labels, "same")
    if data_.draw(st.booleans()):
        si = data_.draw(spoiled(images, allowed=(np.dtype(np.uint8),), free_cols=True))
    else:
        sl = data_.draw(spoiled(labels, allowed=LABELS))
    got = outcome(lambda: data.Split(si.value, sl.value))
    if got[0] == "ok":
        split = got[1]
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.labels.shape == (split.images.shape[0],)
    if si.clean is None or sl.clean is None:
        assert got[0] == "refused", (si.kind, sl.kind)


# --------------------------------------------------------------------------------------------
# Saved networks and checkpoints: damaged and doctored files
# --------------------------------------------------------------------------------------------

RUN = dict(lam=0.01, batch_size=5, schedule=0.05, epochs=3, seed=0, momentum=0.5,
           progress=False, eval_train=True)  # 3 steps per epoch, 9 in all


class _Crash(Exception):
    pass


@functools.lru_cache(maxsize=None)
def mid_run_checkpoint() -> Tuple[bytes, tuple]:
    """(bytes of a checkpoint written at step 4, mid-epoch, by a run that then crashed;
    the result of the same run never interrupted)."""
    original = cbn_train.save_checkpoint

    def save_then_crash(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == 4:
            raise _Crash

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.npz"
        cbn_train.save_checkpoint = save_then_crash
        try:
            with pytest.raises(_Crash):
                fit(Network(D, [5], K, seed=3), X64, Y, checkpoint=path, checkpoint_every=2,
                    **RUN)
        finally:
            cbn_train.save_checkpoint = original
        raw = path.read_bytes()
    net = Network(D, [5], K, seed=3)
    history = fit(net, X64, Y, **RUN)
    return raw, _result(net, history)


def _result(net, history):
    return net.flat_params.copy(), {k: v for k, v in history.as_dict().items() if k != "wall_time"}


def _resume(path: Path):
    """The result of resuming from ``path``; a deliberately edited but well-formed checkpoint
    (huge weights, say) may also diverge, which must leave a finite network."""
    net = Network(D, [5], K, seed=3)
    try:
        history = fit(net, X64, Y, resume=path, **RUN)
    except DivergenceError as exc:
        finite(net.flat_params, *net.running_stats.values())
        return "diverged", exc.history.as_dict()
    return _result(net, history)


@SLOW
@given(data_=st.data())
def test_damaged_checkpoints_are_refused_or_resume_correctly(tmp_path_factory, data_):
    """Damaged bytes, or arrays edited without going through cbn: refused, or (a change the
    file format ignores) resumed exactly as the uninterrupted run. Edited arrays whose
    checksum was recomputed (a deliberate edit): refused, or resumed to a finite,
    well-formed result."""
    raw, reference = mid_run_checkpoint()
    assert _resume_bytes(tmp_path_factory, raw) is not None  # the intact file resumes
    how = data_.draw(st.sampled_from(["bytes", "array", "json"]))
    rehash = how != "bytes" and data_.draw(st.booleans())
    if how == "bytes":
        damaged = mutate(data_.draw, raw)
    else:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if how == "json":
            key = data_.draw(st.sampled_from(["network_config", "rng_state", "run"]))
            doc = json.loads(str(arrays[key]))
            field_ = data_.draw(st.sampled_from(sorted(doc)))
            doc[field_] = data_.draw(st.one_of(WEIRD.filter(_jsonable), st.just([10**6, 10**6]),
                                               st.just("x"), st.just({"state": 1})))
            arrays[key] = np.array(json.dumps(doc) if data_.draw(st.booleans()) else "{nope")
        else:
            key = data_.draw(st.sampled_from(sorted(k for k in arrays if k != "checksum")))
            a = arrays[key]
            s = data_.draw(spoiled(a, allowed=(a.dtype,), free_rows=True,
                                   kinds=("dtype", "rank", "rows", "cols", "nan", "huge",
                                          "empty", "none")))
            if s.value is None:
                del arrays[key]
            else:
                arrays[key] = np.asarray(s.value)
        if rehash:
            arrays.pop("checksum", None)
            arrays["checksum"] = np.array(cbn_npz._digest(arrays))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        damaged = buffer.getvalue()
    got = _resume_bytes(tmp_path_factory, damaged)
    if got is None:
        return
    if not rehash:
        equal(got, reference)
    elif not isinstance(got[0], str):  # not ("diverged", history)
        params, history = got
        finite(params, *history.values())
        assert len({len(history[k]) for k in ("step", "epoch", "lr", "batch_loss",
                                              "train_loss")}) == 1


def _resume_bytes(tmp_path_factory, raw: bytes):
    """Resume from a checkpoint with these bytes; None if refused with a clear error."""
    path = tmp_path_factory.mktemp("ckpt") / "run.npz"
    path.write_bytes(raw)
    got = outcome(lambda: _resume(path))
    if got[0] == "refused":
        assert str(path) in got[1] or "must" in got[1], got[1]
        return None
    return got[1]


def _jsonable(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


@given(data_=st.data())
def test_network_load_of_a_damaged_file(tmp_path_factory, data_):
    tmp = tmp_path_factory.mktemp("net")
    good = tmp / "net.npz"
    NETS[(True, np.float64)].save(good)
    path = tmp / "damaged.npz"
    path.write_bytes(mutate(data_.draw, good.read_bytes()))
    got = outcome(lambda: Network.load(path))
    if got[0] == "ok":
        net = got[1]
        finite(net.flat_params, *net.running_stats.values())
        assert net.config() == NETS[(True, np.float64)].config()


def test_doctored_network_config_cannot_request_a_huge_network(tmp_path):
    """The stored config's sizes are checked against the stored weights before anything
    is allocated."""
    net = Network(D, [5], K, seed=0)
    arrays = net.to_arrays()
    config = net.config()
    config["hidden"] = [10**6, 10**6]
    arrays["network_config"] = np.array(json.dumps(config))
    path = tmp_path / "doctored.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="W1 has shape"):
        Network.load(path)


def test_a_plain_npy_or_pickled_file_is_not_a_network(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="npz"):
        Network.load(tmp_path / "a.npy")
    np.savez(tmp_path / "obj.npz", network_config=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        Network.load(tmp_path / "obj.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ValueError, match="no cbn network"):
        Network.load(tmp_path / "empty.npz")


@given(d=st.dictionaries(st.sampled_from(list(History().as_dict()) + ["extra"]),
                         st.lists(st.floats(allow_nan=False), max_size=3)))
def test_history_from_dict(d):
    got = outcome(lambda: History.from_dict(d))
    assert (got[0] == "ok") == (set(d) == set(History().as_dict()))

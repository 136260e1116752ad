"""Augmentation inside the gather: against an independent NumPy implementation of the same
transform and draws, in the training step, never in evaluation, and through resume."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cbn
from cbn import Augment, CyclicLR, Network, fit
from cbn import ops as kernels
from cbn import checkpoint as cbn_checkpoint
from cbn.checkpoint import CheckpointError
from cbn.data import Normalization
from cbn import testing

M64 = 2**64 - 1
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


# -- the reference: the same key -> draw mapping, written again in plain Python/NumPy ----------

def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def sample_key(seed: int, step: int, sample: int) -> int:
    return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ ((1 << 63) | sample))


def lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def normals(key: int, count: int) -> np.ndarray:
    lo, hi = key & 0xFFFFFFFF, key >> 32
    j = np.arange(count, dtype=np.uint64)
    u1 = (lowbias32(lowbias32((2 * j) ^ lo) ^ hi) + 1.0) / 2**32
    u2 = lowbias32(lowbias32((2 * j + 1) ^ lo) ^ hi) / 2**32
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def draws(key: int, shift: int):
    """(flip bit, dy, dx) of a sample key."""
    return (key & 1, ((key >> 8) & 0xFFFF) % (2 * shift + 1) - shift,
            ((key >> 24) & 0xFFFF) % (2 * shift + 1) - shift)


def augment_reference(Z: np.ndarray, aug: Augment, shape, seed: int, step: int) -> np.ndarray:
    """Row i of the standardised batch Z, flipped, translated and jittered with its draws."""
    C, H, W = shape
    out = np.zeros_like(Z, dtype=np.float64)
    for i, z in enumerate(Z.astype(np.float64)):
        key = sample_key(seed, step, i)
        flip, dy, dx = draws(key, aug.shift)
        img = z.reshape(C, H, W)
        if aug.hflip and flip:
            img = img[:, :, ::-1]
        moved = np.zeros_like(img)
        moved[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            img[:, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
        out[i] = moved.ravel()
        if aug.noise > 0:
            out[i] += aug.noise * normals(splitmix64(key), C * H * W)
    return out


def images(n=12, shape=(3, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, size=(n, int(np.prod(shape))), dtype=np.uint8)
    return src, Normalization(src.mean(0), src.std(0) + 1.0)


CONFIGS = [Augment(hflip=True, shift=0), Augment(hflip=False, shift=4),
           Augment(hflip=True, shift=4), Augment(hflip=False, shift=0, noise=0.3),
           Augment(hflip=True, shift=2, noise=0.1, image_shape=(2, 5, 7))]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("source", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("aug", CONFIGS, ids=lambda a: str(a.config()))
def test_gather_matches_numpy_reference(dt, source, aug):
    shape = aug.image_shape or (3, 32, 32)
    src, norm = images(shape=shape)
    src = src.astype(source)
    idx = np.array([5, 0, 11, 3, 3, 7, 1, 9, 2, 10, 4, 6])
    shift, scale = norm.mean, 1 / norm.std
    got = kernels.gather_rows(src, idx, shift, scale, dtype=dt, augment=aug, seed=7, step=123)
    Z = (src[idx].astype(np.float64) - shift) * scale
    np.testing.assert_allclose(got, augment_reference(Z, aug, shape, 7, 123), **TOL[dt])


def test_column_slices_gather_the_same_values_as_whole_rows():
    # The first layer gathers column slices on separate threads: a slice's values must not
    # depend on where the slice starts.
    src, norm = images(n=6)
    idx = np.arange(6, dtype=np.int64)
    shift, scale = norm.mean.astype(np.float32), (1 / norm.std).astype(np.float32)
    args = Augment(hflip=True, shift=4, noise=0.2).compiled(3072, 3)
    whole = np.zeros((6, 3072), np.float32)
    cbn._ops.gather_rows(src, idx, shift, scale, whole, args, step=9)
    pieces = np.full((6, 3072), np.nan, np.float32)
    for j0, j1 in ((0, 1000), (1000, 1001), (1001, 2050), (2050, 3072)):
        cbn._ops.gather_rows(src, idx, shift, scale, pieces, args, j0, j1, step=9)
    np.testing.assert_array_equal(pieces, whole)


def test_draws_cover_both_flips_and_every_shift():
    keys = [sample_key(0, step, i) for step in range(20) for i in range(50)]
    flips, dys, dxs = zip(*(draws(k, 4) for k in keys))
    assert 0.4 < np.mean(flips) < 0.6
    assert set(dys) == set(dxs) == set(range(-4, 5))
    src, norm = images()
    got = [kernels.gather_rows(src, np.zeros(1, np.int64), norm.mean, 1 / norm.std,
                               augment=Augment(), step=s) for s in range(8)]
    assert len({g.tobytes() for g in got}) == 8  # each step draws another view


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_training_step_gradient_is_the_gradient_on_the_augmented_batch(dt, threads):
    src, norm = images(n=40, seed=1)
    y = np.arange(40) % 10
    aug = Augment(hflip=True, shift=3, noise=0.05)
    with threadpool_limits(threads):
        net = Network(3072, [16, 12], 10, batch_norm=True, dtype=dt, seed=0)
        twin = net.copy()
        plan = net.plan(40)
        idx = np.random.default_rng(0).permutation(40)
        shift, scale = norm.mean.astype(dt), (1 / norm.std).astype(dt)
        plan.set_data(src, y, idx, shift, scale)
        plan.set_augment(aug.compiled(3072, 11))
        plan.grad_step(0, 40, 0.01, True, False, 5)
        plan.set_augment(None)
        Z = (src[idx].astype(np.float64) - norm.mean) / norm.std
        X = np.ascontiguousarray(augment_reference(Z, aug, (3, 32, 32), 11, 5), dtype=dt)
        _, grads = twin.cost_and_grads(X, y[idx], 0.01)
    for name, g in grads.items():
        np.testing.assert_allclose(testing.gradients(net)[name], g, **{
            np.float32: dict(rtol=2e-3, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-12)}[dt])


def test_evaluation_never_augments():
    src, norm = images(n=30)
    y = np.arange(30) % 10
    net = Network(3072, [8], 10, batch_norm=True, seed=0)
    before = net.copy()
    plan = net.plan(30)
    plan.set_augment(Augment(noise=1.0).compiled(3072, 0))
    # The plan is cached: evaluation and gradient checks through it see the plain images.
    np.testing.assert_array_equal(net.predict_proba(src, normalization=norm),
                                  before.predict_proba(src, normalization=norm))
    Z = (src - norm.mean) / norm.std
    np.testing.assert_array_equal(net.cost_and_grads(Z, y)[1]["W1"],
                                  before.cost_and_grads(Z, y)[1]["W1"])


def test_fit_augments_training_only_and_leaves_no_augmentation_behind():
    src, norm = images(n=60, seed=2)
    y = np.arange(60) % 10
    run = dict(X_val=src[:20], y_val=y[:20], normalization=norm, lam=0.001, batch_size=20,
               schedule=0.05, epochs=2, seed=0, progress=False)
    plain, augmented = Network(3072, [8], 10, seed=0), Network(3072, [8], 10, seed=0)
    fit(plain, src, y, **run)
    history = fit(augmented, src, y, augment=Augment(hflip=True, shift=4), **run)
    assert not np.array_equal(plain.flat_params, augmented.flat_params)
    scores = augmented.evaluate(src[:20], y[:20], normalization=norm)
    assert history.val_loss[-1] == pytest.approx(scores["loss"], rel=1e-12)
    assert history.val_accuracy[-1] == scores["accuracy"]
    # The plan fit used is cached; a later training step through it is not augmented.
    again = augmented.copy()
    fit(augmented, src, y, **run)
    fit(again, src, y, **run)
    np.testing.assert_array_equal(augmented.flat_params, again.flat_params)


def test_fit_with_augment_is_deterministic_and_seeded():
    src, norm = images(n=40, seed=3)
    y = np.arange(40) % 10
    results = []
    for seed in (0, 0, 1):
        net = Network(3072, [8], 10, seed=0)
        fit(net, src, y, normalization=norm, lam=0.0, batch_size=10, schedule=0.05, epochs=1,
            seed=seed, progress=False, augment=Augment(noise=0.1))
        results.append(net.flat_params.copy())
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.mark.parametrize("crash_step", [3, 7])
def test_resume_with_augment_is_bit_identical(tmp_path, monkeypatch, crash_step):
    from cbn import train as train_module
    src, norm = images(n=40, seed=4)
    y = np.arange(40) % 10
    run = dict(X_val=src[:10], y_val=y[:10], normalization=norm, lam=0.001, batch_size=8,
               schedule=CyclicLR(1e-3, 0.05, 5), cycles=1, seed=4, eval_every=4,
               progress=False, augment=Augment(hflip=True, shift=4, noise=0.1))
    new_net = lambda: Network(3072, [6], 10, seed=1, dropout=0.2)  # noqa: E731
    original = cbn_checkpoint.save_checkpoint

    def save_then_crash(path, checkpoint):
        original(path, checkpoint)
        if checkpoint.step == crash_step:
            raise Crash
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    path = tmp_path / "run.npz"
    with pytest.raises(Crash):
        fit(new_net(), src, y, checkpoint=path, checkpoint_every=1, **run)
    monkeypatch.undo()
    expected = new_net()
    expected_history = fit(expected, src, y, **run)
    net = new_net()
    history = fit(net, src, y, resume=path, **run)
    np.testing.assert_array_equal(net.flat_params, expected.flat_params)
    assert {k: v for k, v in history.as_dict().items() if k != "wall_time"} == \
           {k: v for k, v in expected_history.as_dict().items() if k != "wall_time"}


def test_resume_refuses_another_augmentation(tmp_path):
    src, norm = images(n=20)
    y = np.arange(20) % 10
    run = dict(normalization=norm, lam=0.0, batch_size=10, schedule=0.01, epochs=2, seed=0,
               progress=False)
    path = tmp_path / "run.npz"
    fit(Network(3072, [6], 10, seed=0), src, y, augment=Augment(), checkpoint=path, **run)
    with pytest.raises(CheckpointError, match="augment"):
        fit(Network(3072, [6], 10, seed=0), src, y, augment=Augment(shift=2), resume=path,
            **run)
    with pytest.raises(CheckpointError, match="augment"):
        fit(Network(3072, [6], 10, seed=0), src, y, resume=path, **run)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shift=-1), ValueError, "shift"),
    (dict(shift=2.5), TypeError, "shift"),
    (dict(noise=-0.1), ValueError, "noise"),
    (dict(noise=float("nan")), ValueError, "noise"),
    (dict(hflip="yes"), TypeError, "hflip"),
    (dict(image_shape=(3, 32)), ValueError, "image_shape"),
    (dict(image_shape=(3, 0, 32)), ValueError, "image_shape"),
    (dict(shift=8, image_shape=(1, 8, 8)), ValueError, "shift"),
])
def test_augment_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        Augment(**kwargs)


def test_fit_checks_the_image_shape_against_the_features():
    X = np.random.default_rng(0).normal(size=(20, 48))
    y = np.arange(20) % 3
    run = dict(lam=0.0, batch_size=10, schedule=0.01, epochs=1, progress=False)
    with pytest.raises(ValueError, match="image_shape"):
        fit(Network(48, [4], 3, seed=0), X, y, augment=Augment(), **run)
    with pytest.raises(ValueError, match="48 features"):
        fit(Network(48, [4], 3, seed=0), X, y, augment=Augment(shift=1, image_shape=(3, 4, 5)),
            **run)
    with pytest.raises(TypeError, match="augment"):
        fit(Network(48, [4], 3, seed=0), X, y, augment="flip", **run)
    fit(Network(48, [4], 3, seed=0), X, y, augment=Augment(shift=1, image_shape=(3, 4, 4)),
        **run)


def test_plan_refuses_an_image_shape_that_does_not_fit():
    plan = Network(48, [4], 3, seed=0).plan(4)
    with pytest.raises(ValueError, match="48 input features"):
        plan.set_augment(Augment(hflip=True, shift=1, image_shape=(3, 4, 5)).compiled(60, 0))


def test_sklearn_estimator_passes_augment_to_fit_and_checks_it():
    pytest.importorskip("sklearn")
    from cbn.sklearn import MLPClassifier
    src, _ = images(n=60, seed=5)
    y = np.arange(60) % 3
    args = dict(hidden_layer_sizes=[8], max_iter=2, batch_size=20, random_state=0)
    plain = MLPClassifier(**args).fit(src, y)
    augmented = MLPClassifier(augment=Augment(noise=0.5), **args).fit(src, y)
    again = MLPClassifier(augment=Augment(noise=0.5), **args).fit(src, y)
    assert not np.array_equal(plain.network_.flat_params, augmented.network_.flat_params)
    np.testing.assert_array_equal(augmented.network_.flat_params, again.network_.flat_params)
    with pytest.raises(TypeError, match="augment"):
        MLPClassifier(augment=True, **args).fit(src, y)
    with pytest.raises(ValueError, match="image_shape"):
        MLPClassifier(augment=Augment(), **args).fit(src[:, :100], y)


def test_a_warm_augmented_step_allocates_nothing():
    import tracemalloc
    src, norm = images(n=40, seed=6)
    y = np.arange(40) % 10
    net = Network(3072, [16], 10, batch_norm=True, dtype=np.float32, seed=0)
    plan = net.plan(20)
    plan.set_data(src, y, np.arange(40, dtype=np.int64), norm.mean.astype(np.float32),
                  (1 / norm.std).astype(np.float32))
    plan.set_velocity(None)
    plan.set_augment(Augment(hflip=True, shift=4, noise=0.1).compiled(3072, 0))
    plan.train_step(0, 20, 0.01, 0.0, 0.0, True, False, 0)  # warm up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in range(1, 6):
            plan.train_step(20 * (step % 2), 20, 0.01, 0.0, 0.0, False, False, step)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 512  # the returned tuples come and go; no buffer


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_mirror_flips_each_image_left_right(dtype):
    from cbn.augment import mirror
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, (4, 2 * 5 * 7)).astype(dtype)
    got = mirror(X, image_shape=(2, 5, 7))
    assert got.dtype == X.dtype and got.shape == X.shape and got.flags.c_contiguous
    for i in range(4):
        for c in range(2):
            for r in range(5):
                for x in range(7):
                    assert got[i, c * 35 + r * 7 + x] == X[i, c * 35 + r * 7 + 6 - x]
    np.testing.assert_array_equal(mirror(got, image_shape=(2, 5, 7)), X)
    with pytest.raises(ValueError, match="image_shape"):
        mirror(X)  # 70 features: no default shape
    with pytest.raises(ValueError):
        mirror(X[0], image_shape=(2, 5, 7))

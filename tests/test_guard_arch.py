"""The two floors: the library (cbn) and the lab above it (cbn.lab)."""
import subprocess
import sys
import warnings

import pytest

MOVED = {f"cbn.{name}": f"cbn.lab.{name}" for name in (
    "cli", "experiment", "options", "record", "report", "search", "search_log", "space", "plots",
    "tables")}
MOVED.update({"cbn.kernels": "cbn.ops", "cbn.workspace": "cbn.architecture"})


def test_importing_cbn_loads_neither_the_lab_nor_matplotlib(tmp_path):
    code = ("import sys, cbn; print(sorted(m for m in sys.modules "
            "if m == 'matplotlib' or m.startswith(('cbn.lab', 'cbn._moved'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("old, new", MOVED.items())
def test_an_old_module_name_is_the_moved_module_with_a_deprecation_warning(old, new):
    import importlib

    import cbn
    sys.modules.pop(old, None)
    vars(cbn).pop(old.split(".")[1], None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        f"{old} is deprecated and goes in the next release; import {new} instead"]


def test_the_old_name_of_cbn_ops_is_an_attribute_of_cbn_too():
    import cbn
    sys.modules.pop("cbn.kernels", None)
    vars(cbn).pop("kernels", None)
    with pytest.warns(DeprecationWarning, match="cbn.kernels is deprecated"):
        assert cbn.kernels is cbn.ops


def test_the_import_contract_holds(tmp_path):
    """pyproject.toml's [tool.importlinter]: the lab above the library, every module in its
    layer, no cycles (imports inside functions count), matplotlib in cbn.lab.plots only."""
    from pathlib import Path
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, "
            "no_logo=True))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_drawing_a_figure_leaves_matplotlib_s_backend_as_it_was(tmp_path):
    code = ("import matplotlib; before = matplotlib.get_backend(); "
            "import cbn; from cbn.lab import plots; "
            "plots.plot_curves('c.png', {'run': [cbn.History(step=[1, 2], val_loss=[2.3, 2.0])]},"
            " 'loss'); import sys; "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend() == before)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ,
                                                      "MPLBACKEND": "svg"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_a_fit_converts_its_normalization_once_and_the_network_keeps_the_result(monkeypatch):
    import numpy as np

    import cbn
    from cbn.data import Normalization
    calls = []
    original = Normalization.scale

    def counted(self, dtype):
        calls.append(dtype)
        return original(self, dtype)
    monkeypatch.setattr(Normalization, "scale", counted)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 12), dtype=np.uint8)
    y = rng.integers(0, 3, 40)
    norm = Normalization.fit(X)
    net = cbn.Network(12, [8], 3, seed=0)
    cbn.fit(net, X, y, X_val=X[:10], y_val=y[:10], lam=0.0, batch_size=10, schedule=0.01,
            epochs=1, normalization=norm)
    net.predict_proba(X)
    net.predict_proba(X[:5])
    net.evaluate(X, y)
    assert len(calls) == 1


def test_sgd_update_takes_the_l2_strength_by_its_one_name():
    import numpy as np

    from cbn import ops
    rng = np.random.default_rng(0)
    theta, grad = rng.standard_normal(40).astype(np.float32), rng.standard_normal(40)
    grad = grad.astype(np.float32)
    by_lam, by_old = theta.copy(), theta.copy()
    assert ops.sgd_update(by_lam, grad, 0.1, lam=0.005)
    with pytest.warns(DeprecationWarning, match="lam=w / 2"):
        assert ops.sgd_update(by_old, grad, 0.1, weight_decay=0.01)
    np.testing.assert_array_equal(by_lam, by_old)
    np.testing.assert_allclose(by_lam, theta - 0.1 * (grad + 0.01 * theta), rtol=1e-6)


def test_augmentation_crosses_into_the_plan_as_one_typed_object():
    from cbn import Augment, Network
    plan = Network(48, [4], 3, seed=0).plan(4)
    compiled = Augment(hflip=True, shift=1, image_shape=(3, 4, 4)).compiled(48, 7)
    assert compiled.features == 48
    plan.set_augment(compiled)
    plan.set_augment(None)
    with pytest.raises(TypeError):
        plan.set_augment((True, 1, 0.0, 3, 4, 4, 7))


def test_batch_norm_s_first_batch_rule_is_the_network_s():
    import numpy as np

    import cbn
    X = np.random.default_rng(0).standard_normal((20, 6))
    y = np.arange(20) % 2
    net = cbn.Network(6, [4], 2, seed=0, dtype=np.float64)
    assert net.copies_batch_stats
    cbn.fit(net, X, y, lam=0.0, batch_size=10, schedule=0.01, epochs=1, progress=False)
    assert not net.copies_batch_stats and net.stats_seen
    assert not cbn.Network(6, [4], 2, bn_init="zeros_ones").copies_batch_stats
    assert not cbn.Network(6, [4], 2, norm="layer").copies_batch_stats


def test_a_network_held_exclusive_keeps_other_threads_waiting():
    import threading

    import numpy as np

    import cbn
    net = cbn.Network(6, [4], 2, seed=0, dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((5, 6))
    done = threading.Event()
    with net.exclusive():
        net.predict(X)  # the holder's own calls go through
        other = threading.Thread(target=lambda: (net.predict(X), done.set()))
        other.start()
        other.join(0.2)
        assert not done.is_set()
    other.join(60)
    assert done.is_set()


def test_tuning_times_the_kernels_without_building_a_network(monkeypatch):
    from threadpoolctl import threadpool_limits

    import cbn
    from cbn import _ops, tune

    def refuse(*args, **kwargs):
        raise AssertionError("tune built a Network")
    monkeypatch.setattr(cbn.Network, "__init__", refuse)
    with threadpool_limits(2, user_api="blas"):
        if _ops.threads() < 2 or not _ops.OPENMP:
            pytest.skip("slicing is timed with two threads and OpenMP")
        assert tune.measure_sliced_from() in (*tune.INPUTS, tune.NEVER)

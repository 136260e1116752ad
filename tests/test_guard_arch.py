"""The two floors: the library (cbn) and the lab above it (cbn.lab)."""
import subprocess
import sys
import warnings

import pytest

MOVED = ["cli", "experiment", "options", "record", "report", "search", "search_log", "space",
         "plots", "tables"]


def test_importing_cbn_loads_neither_the_lab_nor_matplotlib(tmp_path):
    code = ("import sys, cbn; print(sorted(m for m in sys.modules "
            "if m == 'matplotlib' or m.startswith(('cbn.lab', 'cbn._moved'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", MOVED)
def test_an_old_module_name_is_the_moved_module_with_a_deprecation_warning(name):
    import importlib
    sys.modules.pop(f"cbn.{name}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(f"cbn.{name}")
    assert old is importlib.import_module(f"cbn.lab.{name}")
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        f"cbn.{name} is deprecated and goes in the next release; import cbn.lab.{name} instead"]

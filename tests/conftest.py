"""Shared test settings: the hypothesis profiles, and the benchmarks' collection and summary.

``ci`` (the default) is bounded and derandomised, so the suite is quick and every run tries
the same examples. ``CBN_FUZZ=long`` selects ``long``: fresh random examples, many more of
them (tests/test_fuzz.py then tries well over 10,000 inputs in all), for a long fuzzing run:

    CBN_FUZZ=long python -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics

Benchmarks (tests that take pytest-benchmark's ``benchmark`` fixture) run only under
``--benchmark-only``, which runs nothing else, or ``--benchmark-enable``, which runs
everything; a plain run deselects them. Such a run ends
with the table of ratios of tests/bench_table.py, with the machine's peak measured once in the
run (tests/bench_peak.py, the ``peaks`` fixture), also written as ``<name>.ratios.md`` and
``<name>.ratios.json`` beside ``--benchmark-json=<name>.json``.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=700, deadline=None,
                          suppress_health_check=_QUIET)
settings.load_profile("long" if os.environ.get("CBN_FUZZ") == "long" else "ci")

# The kernels' CPU-dependent thresholds stay the built-in ones in the suite (test_tune.py
# tunes on purpose): measured ones would move the row and input counts tests pick to cross
# them, and would write to the user's cache folder.
os.environ.setdefault("CBN_AUTOTUNE", "0")

# -- benchmarks: only with --benchmark-only, and one table of ratios at the end -------------

_RESULTS = pytest.StashKey[list]()
_LOAD = pytest.StashKey[tuple]()
_PEAKS = pytest.StashKey[dict]()


def _load_average() -> tuple:
    """The 1, 5 and 15 minute load averages, or () where the system does not tell."""
    return os.getloadavg() if hasattr(os, "getloadavg") else ()


def pytest_configure(config):
    config.stash[_RESULTS] = []
    config.stash[_LOAD] = _load_average()


def pytest_collection_modifyitems(config, items):
    """A plain run leaves out the timed benchmarks (they assert nothing), and
    ``--benchmark-only`` the ordinary tests, without listing either as skips."""
    if config.getoption("benchmark_enable", False):
        return
    only = bool(config.getoption("benchmark_only", False))
    kept, left = [], []
    for item in items:
        timed = "benchmark" in getattr(item, "fixturenames", ())
        (kept if timed == only else left).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture
def case_results(request) -> list:
    """Where each benchmark case leaves its ``bench_table.CaseResult`` for the summary."""
    return request.config.stash[_RESULTS]


@pytest.fixture(scope="session")
def peaks(request) -> dict:
    """The machine's peak per precision (``bench_peak.Peak``), measured once per run on the
    threads the benchmarks use, for the summary's "% of peak"."""
    import bench_peak
    measured = bench_peak.measure_all(bench_peak.blas_threads())
    request.config.stash[_PEAKS] = measured
    return measured


def _context(config) -> dict:
    """Load averages (1, 5, 15 min) at the start and end of the run, and the BLAS in use."""
    from threadpoolctl import threadpool_info
    import bench_table
    blas = [bench_table.blas_line(pool) for pool in threadpool_info()]
    return {"load_average_start": list(config.stash[_LOAD]),
            "load_average_end": list(_load_average()), "blas": blas}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    import bench_table
    context = _context(config)
    peaks = config.stash.get(_PEAKS, {})
    terminalreporter.write_sep("=", "cbn ratios")
    terminalreporter.write_line(bench_table.format_table(results, peaks=peaks))
    load = "load average (1, 5, 15 min): {} at start, {} at end".format(
        *(", ".join(f"{v:.2f}" for v in context[k]) or "unknown"
          for k in ("load_average_start", "load_average_end")))
    for line in [load] + context["blas"]:
        terminalreporter.write_line(line)
    json_path = config.getoption("benchmark_json", None)
    if json_path is not None:
        stem = os.path.splitext(os.fspath(json_path))[0] + ".ratios"
        for path in bench_table.write(results, stem, peaks=peaks, **context):
            terminalreporter.write_line(f"wrote {path}")

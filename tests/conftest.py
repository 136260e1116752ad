"""Shared test settings: the hypothesis profiles.

``ci`` (the default) is bounded and derandomised, so the suite is quick and every run tries
the same examples. ``CBN_FUZZ=long`` selects ``long``: fresh random examples, many more of
them (tests/test_fuzz.py then tries well over 10,000 inputs in all), for a long fuzzing run:

    CBN_FUZZ=long python -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics
"""
import os

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

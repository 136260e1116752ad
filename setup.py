"""Build the Cython extension; all metadata lives in pyproject.toml."""
import os

import numpy  # noqa: F401  (build requirement; BLAS comes from scipy, not numpy headers)
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 vectorises the per-feature loops; -march=native is opt-in because it makes a non-portable binary.
extra = ["-O3"]
if os.environ.get("CBN_NATIVE") == "1":
    extra.append("-march=native")

ext = Extension("cbn._ops", ["cbn/_ops.pyx"], extra_compile_args=extra)

setup(
    ext_modules=cythonize(
        [ext],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)

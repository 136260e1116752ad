"""Build the Cython extension; all metadata lives in pyproject.toml."""
import os
import platform
import sys

import scipy_openblas32
from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup

# The plan's code, once per dtype from one template (why: its header), rendered before
# cythonize so that _ops.pyx can include it.
for template in ["cbn/_plan.pxi.tp"]:
    with open(template, encoding="utf-8") as f:
        rendered = Tempita.sub(f.read())
    target = template[:-len(".tp")]
    if not os.path.exists(target) or open(target, encoding="utf-8").read() != rendered:
        with open(target, "w", encoding="utf-8") as f:
            f.write(rendered)

# -O3 vectorises the per-feature loops; -march=native is opt-in because it makes a
# non-portable binary.
extra = ["-O3"]
if os.environ.get("CBN_NATIVE") == "1":
    extra.append("-march=native")
# OpenMP gives one thread pool for OpenBLAS's GEMM jobs and our own parallel loops (why: the
# module docstring of cbn/_ops.pyx). On by default with gcc on Linux; CBN_OPENMP=0 builds
# without it (OpenBLAS then runs its own threads and the gather runs on one thread).
openmp = ["-fopenmp"] if os.environ.get("CBN_OPENMP", "1" if sys.platform.startswith("linux")
                                        else "0") == "1" else []

# glibc's vector math (libmvec: erff, expf as 4, 8 or 16 at once) for GELU in float32, where
# GCC on x86-64 Linux with OpenMP can call it and glibc has its erff (2.35+); CBN_MVEC tells
# cbn/_gelu.pxi the library is linked.
libc, libc_version = platform.libc_ver()
mvec = (bool(openmp) and sys.platform.startswith("linux") and platform.machine() == "x86_64"
        and libc == "glibc" and tuple(map(int, libc_version.split(".")[:2])) >= (2, 35))

# BLAS: OpenBLAS from the scipy-openblas32 wheel (why not scipy's: cbn/_blas.pxi), a build
# requirement and a runtime dependency. Installed, it sits next to cbn in site-packages, where
# the relative rpath finds it; for in-place and editable builds cbn/__init__.py imports
# scipy_openblas32 first, which loads the library before cbn._ops needs it. Its minimum
# version is the first whose threads callback serves two networks trained at once
# (docs/benchmarks.md, "Which BLAS"; tests/test_reliability.py).
origin = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
ext = Extension(
    "cbn._ops", ["cbn/_ops.pyx"],
    include_dirs=[scipy_openblas32.get_include_dir()],
    library_dirs=[scipy_openblas32.get_lib_dir()],
    libraries=[scipy_openblas32.get_library()] + (["mvec"] if mvec else []),
    define_macros=[("CBN_MVEC", "1")] if mvec else [],
    runtime_library_dirs=[] if sys.platform == "win32" else [f"{origin}/../scipy_openblas32/lib"],
    extra_compile_args=extra + openmp,
    extra_link_args=openmp,
)

# The machine's peak for the benchmarks (cbn/_peak.pyx): no BLAS, never imported by `import cbn`.
peak = Extension("cbn._peak", ["cbn/_peak.pyx"], extra_compile_args=extra + openmp,
                 extra_link_args=openmp)

setup(
    ext_modules=cythonize(
        [ext, peak],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)

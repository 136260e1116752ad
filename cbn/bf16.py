"""bf16-mixed precision: whether this machine runs it, and its backend.

``cbn.Network(..., dtype=np.float32, precision="bf16-mixed")`` runs the layer products
(forward, input gradients, weight products) in bfloat16 with float32 accumulation, in
training and evaluation; the master weights, batch norm, the loss and the update stay
float32. The products are oneDNN's matmul, which the optional extra installs::

    pip install "cbn[bf16]"

(the ``onednn-cpu-gomp`` wheel: oneDNN 3.2 on GNU OpenMP, the runtime of cbn's own thread
pool). cbn opens the library at run time, so it installs and runs without it.

Where bf16 is missing it falls back to float32, with one warning (``BF16Warning``) per
process: on a CPU without AVX512_BF16 (bf16 dot products emulated in float32 would be
several times slower than the float32 products), and when ``CBN_BF16=0`` (or "off",
"false", "no"), which hides the bf16 path as if the CPU lacked it. On a CPU that has it,
asking for bf16-mixed without the extra raises ``ImportError`` naming the extra.
"""
from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from . import _ops
from . import _validate as check

PRECISIONS = ("fp32", "bf16-mixed")
EXTRA = "cbn[bf16]"
DISTRIBUTION = "onednn-cpu-gomp"  # what the extra installs
LIBRARY = "libdnnl.so.3"  # oneDNN 3.x: the C API cbn/_bf16.pxi declares


class BF16Warning(RuntimeWarning):
    """bf16-mixed was asked for where it cannot run: the network computes in float32."""


_warned = False


def check_precision(precision, dtype) -> str:
    """``precision`` checked: "fp32" or "bf16-mixed", the latter with float32 only."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16-mixed" and dtype.name != "float32":
        raise ValueError(f"precision='bf16-mixed' runs float32 networks; got dtype={dtype.name}")
    return precision


def cpu_has_bf16() -> bool:
    """True if the CPU has AVX512_BF16 (as Linux reports it) and ``CBN_BF16`` does not
    hide it."""
    if not check.env_switch("CBN_BF16"):
        return False
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:
        pass
    return False


def _candidates() -> List[Path]:
    """Where the extra's library may be: the files the installed distribution lists, then
    the lib folders of this environment (where its wheel puts them)."""
    found: List[Path] = []
    try:
        from importlib import metadata
        dist = metadata.distribution(DISTRIBUTION)
        found += [Path(dist.locate_file(f)) for f in dist.files or []
                  if Path(str(f)).name == LIBRARY]
    except Exception:  # not installed, or metadata unreadable: look in the usual places
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix)):
        found.append(Path(prefix) / "lib" / LIBRARY)
    return found


def library_path() -> Optional[str]:
    """The oneDNN library the extra installed, or None."""
    for path in _candidates():
        if path.is_file():
            return str(path.resolve())
    return None


def load() -> None:
    """Open oneDNN (once per process). Raises ImportError naming the extra when it is not
    installed or cannot be loaded."""
    if _ops.dnnl_loaded():
        return
    path = library_path()
    if path is None:
        raise ImportError(f"precision='bf16-mixed' needs oneDNN: pip install '{EXTRA}' "
                          f"(no {LIBRARY} from {DISTRIBUTION} in {sys.prefix})")
    try:
        _ops.dnnl_open(path)
    except OSError as exc:
        raise ImportError(f"precision='bf16-mixed': oneDNN from '{EXTRA}' does not load: "
                          f"{exc}") from None


def active(precision: str) -> bool:
    """Whether a network asking for ``precision`` runs its products in bf16 here: False for
    "fp32"; for "bf16-mixed", True once oneDNN is loaded, False (warning once per process)
    where the CPU lacks bf16 or ``CBN_BF16=0`` hides it."""
    global _warned
    if precision != "bf16-mixed":
        return False
    if not cpu_has_bf16():
        if not _warned:
            _warned = True
            why = ("CBN_BF16=0 hides it" if not check.env_switch("CBN_BF16")
                   else "this CPU has no AVX512_BF16")
            warnings.warn(f"precision='bf16-mixed': {why}; computing in float32",
                          BF16Warning, stacklevel=3)
        return False
    load()
    return True


def available() -> bool:
    """True if bf16-mixed runs here: a bf16 CPU, not hidden, and oneDNN loadable."""
    if not cpu_has_bf16():
        return False
    try:
        load()
    except ImportError:
        return False
    return True


def describe() -> str:
    """One line for reports: whether bf16-mixed runs here, and why not."""
    if not check.env_switch("CBN_BF16"):
        return "bf16-mixed: hidden (CBN_BF16=0)"
    if not cpu_has_bf16():
        return "bf16-mixed: no AVX512_BF16 on this CPU (float32)"
    path = library_path()
    if path is None:
        return f"bf16-mixed: oneDNN not installed (pip install '{EXTRA}')"
    return f"bf16-mixed: oneDNN {os.path.basename(path)} ({_ops.dnnl_impl(256, 1024, 1024)})" \
        if available() else f"bf16-mixed: {path} does not load"

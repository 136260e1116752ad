"""The machine's peak floating-point rate, measured at run time, for the benchmarks' "% of peak".

For each precision, the higher of two measurements on the threads the benchmarks use:

- a register-only loop (``cbn._peak``, compiled with the package, not imported by
  ``import cbn``): independent multiply-add chains in vector registers, on AVX-512F, else
  AVX2+FMA, else plain C for fp32, and ``vdpbf16ps`` (AVX512_BF16) for bf16, picked from what
  the CPU reports;
- the best rate of a large matrix product: ``numpy.matmul`` in float32 for fp32, PyTorch's
  bfloat16 ``matmul`` (when torch is installed) for bf16, where a library may use units the
  loop does not (AMX, say).

Each rate is calibrated (``calibrate``): the work per run grows until a run lasts
``SECONDS``, then the best of ``REPEATS`` runs counts, since on a shared machine every
disturbance makes a run slower, never faster. The benchmarks measure the peaks before their
first case and the loops again before every case, keeping the highest (``remeasure``). A precision the CPU has no instruction for
(bf16 without AVX512_BF16) has no peak: it is reported absent, never guessed.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

PRECISIONS = ("fp32", "bf16")
SECONDS = 0.05    # a calibrated run lasts at least this (short: more chances of a quiet moment)
REPEATS = 10      # runs at the calibrated size; the best counts
GEMM_N = 1536     # the large product, n x n by n x n


def calibrate(run: Callable[[int], Tuple[float, float]], seconds: Optional[float] = None,
              repeats: Optional[int] = None, start: int = 1 << 12,
              limit: int = 1 << 40) -> float:
    """The best rate (operations per second) of ``run(size) -> (seconds, operations)``: the
    size doubles (or grows by the time still missing) until a run lasts ``seconds``, then
    ``repeats`` runs at that size, the fastest counting (the calibration run among them).
    ValueError if a run reports no time or no operations at ``limit``. ``seconds`` and
    ``repeats`` default to ``SECONDS`` and ``REPEATS``."""
    seconds = SECONDS if seconds is None else seconds
    repeats = REPEATS if repeats is None else repeats
    size = start
    while True:
        elapsed, ops = run(size)
        if elapsed >= seconds or size >= limit:
            break
        grow = 2.0 if elapsed <= 0 else min(max(1.2 * seconds / elapsed, 2.0), 1e3)
        size = min(int(size * grow), limit)
    if not (elapsed > 0 and ops > 0 and math.isfinite(ops / elapsed)):
        raise ValueError(f"a run of size {size} took {elapsed} s for {ops} operations")
    rates = [ops / elapsed]
    for _ in range(repeats - 1):
        elapsed, ops = run(size)
        if elapsed > 0:
            rates.append(ops / elapsed)
    return max(rates)


@dataclass(frozen=True)
class Peak:
    """One precision's peak: ``gflops`` is the higher of ``loop_gflops`` and ``gemm_gflops``
    (None, absent, when the CPU has no instruction for the precision: ``note`` says why).
    ``threads``: the threads the loop ran on."""

    precision: str
    gflops: Optional[float]
    loop_gflops: Optional[float]
    gemm_gflops: Optional[float]
    isa: Optional[str]
    gemm: Optional[str]
    threads: int
    note: str = ""

    def describe(self) -> str:
        """One line, e.g. "fp32 peak 310.2 GFLOP/s on 2 threads (avx512f loop 310.2, ...)"."""
        if self.gflops is None:
            return f"{self.precision} peak: absent ({self.note})"
        parts = [f"{self.isa} loop {self.loop_gflops:.1f}" if self.loop_gflops else None,
                 f"{self.gemm} {self.gemm_gflops:.1f}" if self.gemm_gflops else None]
        return (f"{self.precision} peak {self.gflops:.1f} GFLOP/s on {self.threads} threads ("
                + ", ".join(p for p in parts if p) + ")")

    def to_json(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "Peak":
        return cls(**{k: data.get(k) for k in ("precision", "gflops", "loop_gflops",
                                               "gemm_gflops", "isa", "gemm", "threads")},
                   note=data.get("note", ""))


def loop_rate(precision: str, threads: int) -> Tuple[Optional[float], Optional[str], int]:
    """(FLOP/s of the register-only loop, its instruction set, threads that ran); (None,
    None, threads) where the CPU has no instruction for ``precision``."""
    from cbn import _peak
    isa = _peak.isa(precision)
    if isa is None:
        return None, None, threads
    ran = [threads]

    def run(iterations: int) -> Tuple[float, float]:
        seconds, flops, ran[0] = _peak.run(precision, iterations, threads)
        return seconds, flops
    return calibrate(run), isa, ran[0]


def gemm_rate(precision: str, threads: int,
              n: Optional[int] = None) -> Tuple[Optional[float], str]:
    """(FLOP/s of the best n x n by n x n product, ``GEMM_N`` by default, what ran it):
    float32 ``numpy.matmul`` for fp32, bfloat16 ``torch.matmul`` for bf16 (None without
    torch)."""
    n = GEMM_N if n is None else n
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if precision == "fp32":
        C = np.empty_like(A)
        product, name = (lambda: np.matmul(A, B, out=C)), f"numpy.matmul {n}^3 float32"
    elif importlib.util.find_spec("torch") is None:
        return None, "no torch for a bfloat16 product"
    else:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            At, Bt = (torch.from_numpy(M).to(torch.bfloat16) for M in (A, B))
            Ct = torch.empty((n, n), dtype=torch.bfloat16)
            product = lambda: torch.matmul(At, Bt, out=Ct)
            return _best_product(product, n), f"torch.matmul {n}^3 bfloat16"
        finally:
            torch.set_num_threads(before)
    return _best_product(product, n), name


def _best_product(product: Callable[[], object], n: int) -> float:
    product()  # warm-up: packing buffers, thread pool

    def run(calls: int) -> Tuple[float, float]:
        start = time.perf_counter()
        for _ in range(calls):
            product()
        return time.perf_counter() - start, 2.0 * n ** 3 * calls
    return calibrate(run, start=1)


def blas_threads() -> int:
    """The threads the benchmarks use: the largest BLAS thread count in the process (cbn's
    OpenBLAS and NumPy's; PyTorch is set to the same)."""
    from threadpoolctl import threadpool_info
    return max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] or [1])


def measure(precision: str, threads: int) -> Peak:
    """The peak of ``precision`` ("fp32" or "bf16") on ``threads`` threads."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    loop, isa, ran = loop_rate(precision, threads)
    if loop is None:
        return Peak(precision, None, None, None, None, None, threads,
                    note=f"this CPU has no {precision} dot-product instruction (AVX512_BF16)")
    gemm, name = gemm_rate(precision, threads)
    best = max(r for r in (loop, gemm) if r is not None)
    return Peak(precision, best / 1e9, loop / 1e9, None if gemm is None else gemm / 1e9, isa,
                name if gemm is not None else None, ran)


def measure_all(threads: int) -> Dict[str, Peak]:
    return {p: measure(p, threads) for p in PRECISIONS}


def higher(a: Peak, b: Peak) -> Peak:
    """The higher of two measurements of one precision's peak (an absent one loses)."""
    return b if (b.gflops or 0.0) > (a.gflops or 0.0) else a


def remeasure(peaks: Dict[str, Peak]) -> None:
    """Measures each present peak's register loop again and keeps the higher, in place: a
    peak taken once on a shared machine is low whenever the machine was busy at that moment,
    and a low peak inflates every share of it."""
    for precision, peak in list(peaks.items()):
        if peak.loop_gflops is None:
            continue
        loop, isa, ran = loop_rate(precision, peak.threads)
        if loop is not None and loop / 1e9 > peak.loop_gflops:
            best = max(loop / 1e9, peak.gemm_gflops or 0.0)
            peaks[precision] = Peak(precision, best, loop / 1e9, peak.gemm_gflops, isa,
                                    peak.gemm, ran, peak.note)

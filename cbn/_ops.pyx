# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of cbn.

Every kernel is a ``cdef ... noexcept nogil`` function on raw pointers to C-contiguous,
row-major data (samples as rows), specialised for float32 and float64 by the fused type
``floating``. Kernels trust their inputs and never allocate: the Python layer
(``cbn.ops``, ``cbn.network``) validates, casts and allocates before calling them.

Two ways in:
- thin ``def`` wrappers, one per kernel, over typed memoryviews (used by ``cbn.ops``);
- ``Plan``: the buffers of one network at one batch capacity, described by typed
  ``LayerSpec``/``OpSpec`` objects, which runs a whole training step (gather, forward, loss,
  backward, update) with the GIL released. Its code is ``_plan.pxi``, rendered per dtype
  from the template ``_plan.pxi.tp`` by setup.py and included at the end of this file.

One file per concern, all included here into the one extension ``cbn._ops``: ``_blas.pxi``
(OpenBLAS declarations, ``_gemm``, the sliced first layer's batched products),
``_threads.pxi`` (the OpenMP pool), the linear layer, the losses (``_softmax``, ``_mse``)
and the update (``_update``), ``_specs.pxi`` (the op interface: ``OpContext``,
``OpKernels``, ``OpSpec``, ``LayerSpec``), one file per block op holding its kernels, its
two entry points, its ``OpKernels`` and its spec constructor (``_batchnorm``, ``_relu``,
``_dropout``, ``_layernorm``, ``_gelu``, ``_residual``), the gather (``_gather``) and
``_plan.pxi``. Each kernel file also has the ``def`` wrappers ``cbn.ops`` calls.

Threads: one OpenMP pool runs both OpenBLAS's GEMM jobs (handed over through OpenBLAS's
threads callback) and our own parallel loops (the gather, the transposed weight product's
pass), and the jobs of the other OpenBLAS libraries in the process too (NumPy's, SciPy's;
``cbn.threads.share_pool``). Two pools on two cores would spin against each other; a single
one also lets the gather, the largest piece of a step outside the GEMMs, use every core
instead of one. The
thread count is OpenBLAS's: every core, or ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
when set, and ``threadpoolctl`` changes it at run time like numpy's and scipy's. Built
without OpenMP (``OPENMP`` False), OpenBLAS runs its own threads and the gather runs on
one; a built-in pool is left the same way, for good, in a forked child and wherever OpenMP
might run a short team (``_threads.pxi``), with the same first-layer slices, so the same
results.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN, cos, erf, exp, log, sqrt
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cdef extern from *:
    void __builtin_prefetch(const void* addr, int rw, int locality) nogil  # gcc and clang


include "_blas.pxi"
include "_threads.pxi"
include "_update.pxi"
include "_linear.pxi"
include "_softmax.pxi"
include "_mse.pxi"

# The ops: the interface, then one line per op (each file holds its kernels and its spec).
include "_specs.pxi"
include "_batchnorm.pxi"
include "_relu.pxi"
include "_dropout.pxi"
include "_layernorm.pxi"
include "_gelu.pxi"
include "_residual.pxi"

include "_gather.pxi"

# ---------------------------------------------------------------------------------------
# Plan: a whole network at one batch capacity, run step by step without the GIL.
# ---------------------------------------------------------------------------------------

include "_plan.pxi"


def Plan(int cap, int d0, object X, object theta, object grad, Py_ssize_t n_weights,
         list layers, double eps, double alpha, bint unbiased, object partials=None):
    """The compiled plan of one network at batch capacity ``cap`` (``Plan32`` or ``Plan64``
    by theta's dtype): pointers to its parameters, gradients and workspace, which runs a
    whole training step (gather, forward, loss, backward, update) with the GIL released.

    X: (cap, d0) batch buffer; theta, grad: flat parameters and gradients (weights first,
    ``n_weights`` of them); layers: one ``LayerSpec`` per linear layer, input to output;
    eps, alpha, unbiased: batch-norm options; partials: (slices, cap, d1) workspace of the
    sliced first layer, or None (not sliced). Every array is checked and kept alive."""
    kind = {"float32": Plan32, "float64": Plan64}.get(getattr(theta, "dtype", None).name
                                                      if hasattr(theta, "dtype") else None)
    if kind is None:
        raise TypeError(f"theta must be a float32 or float64 array, got {theta!r:.60}")
    return kind(cap, d0, X, theta, grad, n_weights, layers, eps, alpha, unbiased, partials)

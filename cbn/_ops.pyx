# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of cbn.

Every kernel is a ``cdef ... noexcept nogil`` function on raw pointers to C-contiguous,
row-major data (samples as rows), specialised for float32 and float64 by the fused type
``floating``. Kernels trust their inputs and never allocate: the Python layer
(``cbn.kernels``, ``cbn.network``) validates, casts and allocates before calling them.

Two ways in:
- thin ``def`` wrappers, one per kernel, over typed memoryviews (used by ``cbn.kernels``);
- ``Plan``: the buffers of one network at one batch capacity, described by typed
  ``LayerSpec``/``OpSpec`` objects, which runs a whole training step (gather, forward, loss,
  backward, update) with the GIL released. Its code is ``_plan.pxi``, rendered per dtype
  from the template ``_plan.pxi.tp`` by setup.py and included at the end of this file.

Threads: one OpenMP pool runs both OpenBLAS's GEMM jobs (handed over through OpenBLAS's
threads callback) and our own parallel loops (the gather, the transposed weight product's
pass). Two pools on two cores would spin
against each other; a single one also lets the gather, the largest piece of a step outside
the GEMMs, use every core instead of one. The thread count is OpenBLAS's: every core, or
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` when set, and ``threadpoolctl`` changes it
at run time like numpy's and scipy's. Built without OpenMP (``OPENMP`` False), OpenBLAS
runs its own threads and the gather runs on one; a built-in pool is left the same way, for
good, in a forked child and wherever OpenMP might run a short team (``_check_pool``).
"""
import os

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport NAN, cos, exp, log, sqrt
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

# OpenBLAS from the scipy-openblas32 wheel (the build numpy and scipy are made with; symbols
# prefixed "scipy_"), not scipy.linalg.cython_blas: scipy 1.17 bundles OpenBLAS 0.3.30, whose
# GEMM partitioning OpenBLAS 0.3.31 reverted (races could give wrong results), and which ran
# the first layer's small products (100 x 3072 x 50) on two threads well behind numpy's 0.3.31.
# Why not our own threads (OpenMP) instead: docs/benchmarks.md.

# OpenBLAS's threads-callback types, declared here rather than taken from cblas.h, whose
# names for them changed between releases (scipy_openblas_dojob_callback in 0.3.31,
# openblas_dojob_callback in 0.3.34); the signatures did not.
ctypedef void (*openblas_dojob_callback)(int thread_num, void* jobdata,
                                         int dojob_data) noexcept nogil
ctypedef void (*openblas_threads_callback)(int sync, openblas_dojob_callback dojob,
                                           int numjobs, size_t jobdata_elsize,
                                           void* jobdata, int dojob_data) noexcept nogil

cdef extern from "cblas.h" nogil:
    enum: CblasRowMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(int order, int transa, int transb, int M, int N, int K,
                           float alpha, const float* A, int lda, const float* B, int ldb,
                           float beta, float* C, int ldc)
    void scipy_cblas_dgemm(int order, int transa, int transb, int M, int N, int K,
                           double alpha, const double* A, int lda, const double* B, int ldb,
                           double beta, double* C, int ldc)

    # Batches of products, each run whole on one thread (group sizes all 1 here).
    void scipy_cblas_sgemm_batch(int order, const CBLAS_TRANSPOSE* ta, const CBLAS_TRANSPOSE* tb,
                                 const int* M, const int* N, const int* K, const float* alpha,
                                 const float** A, const int* lda, const float** B,
                                 const int* ldb, const float* beta, float** C, const int* ldc,
                                 int group_count, const int* group_size)
    void scipy_cblas_dgemm_batch(int order, const CBLAS_TRANSPOSE* ta, const CBLAS_TRANSPOSE* tb,
                                 const int* M, const int* N, const int* K, const double* alpha,
                                 const double** A, const int* lda, const double** B,
                                 const int* ldb, const double* beta, double** C, const int* ldc,
                                 int group_count, const int* group_size)

    void scipy_openblas_set_threads_callback_function(openblas_threads_callback callback)
    int scipy_openblas_get_num_threads()
    void scipy_openblas_set_num_threads(int num_threads)

cdef extern from *:
    void __builtin_prefetch(const void* addr, int rw, int locality) nogil  # gcc and clang

ctypedef fused source_t:
    uint8_t
    float
    double

# ---------------------------------------------------------------------------------------
# Threads: one OpenMP pool for OpenBLAS's parallel jobs and for our own parallel loops
# ---------------------------------------------------------------------------------------

cdef void _run_blas_jobs(int sync, openblas_dojob_callback dojob, int numjobs,
                         size_t jobdata_elsize, void* jobdata, int dojob_data) noexcept nogil:
    """OpenBLAS hands its parallel work here instead of to its own pthreads pool. Its jobs
    may wait for each other, so they must run at once, one per thread: every product goes
    through ``_check_pool``, which makes sure OpenMP will give the whole team first. Job i
    runs on thread i, which the sliced first layer counts on (see ``_slice_products``), and
    one batch runs at a time (``cbn_jobs_enter``)."""
    cdef int i
    cbn_jobs_enter()
    for i in prange(numjobs, num_threads=numjobs, schedule="static"):
        dojob(threadid(), <char*>jobdata + i * jobdata_elsize, dojob_data)
    cbn_jobs_leave()


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CBN_OPENMP 1
    /* One batch of OpenBLAS jobs at a time in the whole process. OpenBLAS 0.3.34's
       callback path is not safe for two batches at once: two networks trained in two
       Python threads, whose products (first-layer slices, or wide layers) went through here
       together, drifted from the same runs made one after the other, or blew up to NaN
       (tests/test_reliability.py). Each batch uses every thread anyway. */
    static omp_lock_t cbn_jobs_lock;
    static void cbn_jobs_init(void) { omp_init_lock(&cbn_jobs_lock); }
    static void cbn_jobs_enter(void) { omp_set_lock(&cbn_jobs_lock); }
    static void cbn_jobs_leave(void) { omp_unset_lock(&cbn_jobs_lock); }
    /* 1 if a parallel region asking for n threads might get fewer: dynamic team sizes
       (OMP_DYNAMIC), a thread limit below n (OMP_THREAD_LIMIT), or a call from inside an
       active region (nested regions get one thread). */
    static int cbn_team_may_fall_short(int n) {
        return omp_get_dynamic() || omp_in_parallel() || omp_get_thread_limit() < n;
    }
    #else
    #define CBN_OPENMP 0
    static int cbn_team_may_fall_short(int n) { return 1; }
    static void cbn_jobs_enter(void) {}
    static void cbn_jobs_leave(void) {}
    static void cbn_jobs_init(void) {}
    #endif
    """
    int CBN_OPENMP
    int cbn_team_may_fall_short(int n) nogil
    void cbn_jobs_enter() nogil
    void cbn_jobs_leave() nogil
    void cbn_jobs_init() nogil

OPENMP = bool(CBN_OPENMP)  # built with OpenMP: one shared pool; else OpenBLAS's own threads
cdef bint _pool = CBN_OPENMP  # our parallel loops and OpenBLAS's jobs run on the OpenMP pool


cdef void _leave_pool() noexcept nogil:
    """For good: OpenBLAS back on its own threads, one thread for our loops."""
    global _pool
    _pool = False
    scipy_openblas_set_threads_callback_function(NULL)


cdef inline void _check_pool() noexcept nogil:
    """Leave the pool before a GEMM whose jobs OpenMP might not all run at once: a short
    team would leave OpenBLAS's jobs waiting for each other forever."""
    if _pool and cbn_team_may_fall_short(scipy_openblas_get_num_threads()):
        _leave_pool()


def _leave_pool_after_fork():
    """In a forked child, GNU OpenMP's pool is gone but still looks alive, and the next
    parallel region would wait for it forever."""
    _leave_pool()


def pool_in_use():
    """True while OpenBLAS's jobs and the gather share the OpenMP pool (see the module doc)."""
    return bool(_pool)


if OPENMP:
    cbn_jobs_init()
    scipy_openblas_set_threads_callback_function(_run_blas_jobs)
    os.register_at_fork(after_in_child=_leave_pool_after_fork)


cdef inline int _threads() noexcept nogil:
    """Threads for our parallel loops: OpenBLAS's count, which threadpoolctl controls."""
    return scipy_openblas_get_num_threads() if _pool else 1


cdef inline int _team(int work) noexcept nogil:
    """Threads for a loop over ``work`` pieces: as many as there are threads, at most one
    per piece."""
    cdef int t = _threads()
    return t if t < work else work


def threads():
    """How many threads the gather uses now (OpenBLAS's count; 1 without the pool)."""
    return _threads()


cdef int _held_slices = 0  # hold_slices: first-layer slices as for this many threads, or 0


def hold_slices(int threads):
    """Slice the first layer as for ``threads`` threads whatever the thread count (0: as many
    slices as threads again), so that changing threads changes no result."""
    global _held_slices
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _held_slices = threads


def set_threads(int n):
    """Set OpenBLAS's thread count (that of the products and of our parallel loops)."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    scipy_openblas_set_num_threads(n)


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------

cdef void _gemm(bint ta, bint tb, int M, int N, int K, floating alpha, const floating* A,
                const floating* B, floating beta, floating* C) noexcept nogil:
    """Row-major C(M,N) := alpha op(A)(M,K) op(B)(K,N) + beta C, all operands contiguous."""
    cdef int lda = max(M if ta else K, 1), ldb = max(K if tb else N, 1)
    if M <= 0 or N <= 0:
        return
    _check_pool()
    if floating is float:
        scipy_cblas_sgemm(CblasRowMajor, CblasTrans if ta else CblasNoTrans,
                          CblasTrans if tb else CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                          beta, C, N)
    else:
        scipy_cblas_dgemm(CblasRowMajor, CblasTrans if ta else CblasNoTrans,
                          CblasTrans if tb else CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                          beta, C, N)


# The weight product A^T dS is computed as its transpose dS^T A, then added in with one pass,
# from this many rows up: OpenBLAS then packs A's rows as they lie in memory instead of
# across them. Measured on the first layer (3072 x 50): 10-30 % faster from 400 rows, in
# float32 and float64, on one and two threads; no faster at 100-250 rows on two threads.
cdef int _TRANSPOSED_FROM = 400
WEIGHT_PRODUCT_TRANSPOSED_FROM = _TRANSPOSED_FROM


cdef void _weight_product(int n, int d_in, int d_out, floating alpha, const floating* A,
                          const floating* dS, floating beta, floating* C,
                          floating* tmp) noexcept nogil:
    """C(d_in, d_out) := alpha A(n, d_in)^T dS(n, d_out) + beta C (beta 0: C is not read).
    ``tmp`` is a (d_out, d_in) workspace for the transposed product, or NULL."""
    cdef Py_ssize_t i, j
    if tmp == NULL or n < _TRANSPOSED_FROM:
        _gemm(True, False, d_in, d_out, n, alpha, A, dS, beta, C)
        return
    _gemm(True, False, d_out, d_in, n, alpha, dS, A, <floating>0, tmp)
    # Row i of C takes column i of tmp: the d_out lines of tmp it touches stay in L1 for
    # the next rows, so a plain loop reads tmp once.
    for i in prange(d_in, num_threads=_threads(), schedule="static"):
        if beta == 0:
            for j in range(d_out):
                C[i * d_out + j] = tmp[j * d_in + i]
        else:
            for j in range(d_out):
                C[i * d_out + j] = beta * C[i * d_out + j] + tmp[j * d_in + i]


cdef void _weight_grad(int n, int d_in, int d_out, const floating* A, const floating* dS,
                       floating lam2, const floating* W, floating* dW,
                       floating* tmp) noexcept nogil:
    """dW := A^T dS + lam2 W (``tmp``: as in _weight_product)."""
    cdef Py_ssize_t i
    cdef floating beta = 0
    if lam2 != 0:
        for i in range(<Py_ssize_t>d_in * d_out):
            dW[i] = lam2 * W[i]
        beta = 1
    _weight_product(n, d_in, d_out, <floating>1, A, dS, beta, dW, tmp)


cdef void _linear_fwd(int n, int d, int m, const floating* X, const floating* W,
                      const floating* b, floating* S) noexcept nogil:
    """S(n,m) := X(n,d) W(d,m) + b(m)."""
    cdef Py_ssize_t i, j
    for i in range(n):
        for j in range(m):
            S[i * m + j] = b[j]
    _gemm(False, False, n, m, d, <floating>1, X, W, <floating>1, S)


cdef void _col_sums(int n, int m, const floating* A, floating* out) noexcept nogil:
    """out(m) := sums of the columns of A(n,m)."""
    cdef Py_ssize_t i, j
    for j in range(m):
        out[j] = 0
    for i in range(n):
        for j in range(m):
            out[j] += A[i * m + j]


cdef void _linear_bwd(int n, int d, int m, const floating* X, const floating* W,
                      const floating* dS, floating lam2, floating* dW, floating* db,
                      floating* dX) noexcept nogil:
    """dW := X^T dS + lam2 W;  db := column sums of dS;  dX := dS W^T (skipped if dX is NULL)."""
    _weight_grad(n, d, m, X, dS, lam2, W, dW, <floating*>NULL)
    _col_sums(n, m, dS, db)
    if dX != NULL:
        _gemm(False, True, n, d, m, <floating>1, dS, W, <floating>0, dX)


cdef int _batch_stats(int n, int m, const floating* S, floating eps, floating* mean,
                      floating* var, floating* inv_std) noexcept nogil:
    """Per feature j over the n rows: mean, biased var, inv_std = 1/sqrt(var + eps).
    Returns 1 if a mean or variance is NaN or infinite (an overflowing batch), else 0."""
    cdef Py_ssize_t i, j
    cdef floating t
    cdef const floating* s
    cdef int bad = 0
    for j in range(m):
        mean[j] = 0
        var[j] = 0
    for i in range(n):
        s = S + i * m
        for j in range(m):
            mean[j] += s[j]
    for j in range(m):
        mean[j] /= n
    # Second pass on centred values: stable where E[S^2] - E[S]^2 would cancel.
    for i in range(n):
        s = S + i * m
        for j in range(m):
            t = s[j] - mean[j]
            var[j] += t * t
    for j in range(m):
        var[j] /= n
        inv_std[j] = 1 / sqrt(var[j] + eps)
        bad |= (mean[j] - mean[j]) != 0
        bad |= (var[j] - var[j]) != 0
    return bad


cdef int _bn_relu_fwd_train(int n, int m, const floating* S, const floating* gamma,
                            const floating* beta, floating eps, floating* mean,
                            floating* var, floating* inv_std, floating* Shat,
                            floating* H) noexcept nogil:
    """Batch statistics (``_batch_stats``);  Shat = (S - mean) inv_std;
    H = max(0, gamma Shat + beta). Returns _batch_stats' flag."""
    # Row pointers and branch-free selects in the inner loops let the compiler vectorise them.
    cdef Py_ssize_t i, j
    cdef floating z
    cdef const floating* s
    cdef floating* sh
    cdef floating* h
    cdef int bad = _batch_stats(n, m, S, eps, mean, var, inv_std)
    for i in range(n):
        s = S + i * m
        sh = Shat + i * m
        h = H + i * m
        # Two loops over the row: one loop writing both would need more runtime alias
        # checks than gcc allows itself, and stay scalar.
        for j in range(m):
            sh[j] = (s[j] - mean[j]) * inv_std[j]
        for j in range(m):
            z = gamma[j] * sh[j] + beta[j]
            h[j] = 0 if z <= 0 else z  # NaN stays NaN, for the finiteness checks
    return bad


cdef int _bn_fwd_train(int n, int m, const floating* S, const floating* gamma,
                       const floating* beta, floating eps, floating* mean, floating* var,
                       floating* inv_std, floating* Shat, floating* Z) noexcept nogil:
    """Batch statistics (``_batch_stats``);  Shat = (S - mean) inv_std;  Z = gamma Shat + beta.
    Returns _batch_stats' flag."""
    cdef Py_ssize_t i, j
    cdef const floating* s
    cdef floating* sh
    cdef floating* z
    cdef int bad = _batch_stats(n, m, S, eps, mean, var, inv_std)
    for i in range(n):
        s = S + i * m
        sh = Shat + i * m
        z = Z + i * m
        for j in range(m):
            sh[j] = (s[j] - mean[j]) * inv_std[j]
        for j in range(m):
            z[j] = gamma[j] * sh[j] + beta[j]
    return bad


cdef void _bn_bwd(int n, int m, const floating* dZ, const floating* Shat,
                  const floating* gamma, const floating* inv_std, floating* dgamma,
                  floating* dbeta, floating* dS) noexcept nogil:
    """dgamma = sum dZ Shat;  dbeta = sum dZ;  dS = gamma inv_std (dZ - dbeta/n - Shat dgamma/n).
    dS may alias dZ."""
    cdef Py_ssize_t i, j
    cdef floating inv_n = (<floating>1) / n
    cdef const floating* dz
    cdef const floating* sh
    cdef floating* ds
    for j in range(m):
        dgamma[j] = 0
        dbeta[j] = 0
    for i in range(n):
        dz = dZ + i * m
        sh = Shat + i * m
        for j in range(m):
            dgamma[j] += dz[j] * sh[j]
            dbeta[j] += dz[j]
    for i in range(n):
        dz = dZ + i * m
        sh = Shat + i * m
        ds = dS + i * m
        for j in range(m):
            ds[j] = gamma[j] * inv_std[j] * (dz[j] - (dbeta[j] + sh[j] * dgamma[j]) * inv_n)


cdef void _bn_relu_bwd(int n, int m, const floating* dH, const floating* H,
                       const floating* Shat, const floating* gamma,
                       const floating* inv_std, floating* dgamma, floating* dbeta,
                       floating* dS) noexcept nogil:
    """dZ = dH [H > 0];  dgamma = sum dZ Shat;  dbeta = sum dZ;
    dS = gamma inv_std (dZ - dbeta/n - Shat dgamma/n).  dS may alias dH."""
    cdef Py_ssize_t i, j
    cdef floating g, inv_n = (<floating>1) / n
    cdef const floating* dh
    cdef const floating* h
    cdef const floating* sh
    cdef floating* ds
    for j in range(m):
        dgamma[j] = 0
        dbeta[j] = 0
    for i in range(n):
        dh = dH + i * m
        h = H + i * m
        sh = Shat + i * m
        for j in range(m):
            g = dh[j]  # loaded unconditionally, then selected: vectorisable
            g = g if h[j] > 0 else 0
            dgamma[j] += g * sh[j]
            dbeta[j] += g
    for i in range(n):
        dh = dH + i * m
        h = H + i * m
        sh = Shat + i * m
        ds = dS + i * m
        for j in range(m):
            g = dh[j]
            g = g if h[j] > 0 else 0
            ds[j] = gamma[j] * inv_std[j] * (g - (dbeta[j] + sh[j] * dgamma[j]) * inv_n)


cdef int _bn_eval_affine(int m, const floating* gamma, const floating* beta,
                         const floating* rmean, const floating* rvar, floating eps,
                         floating* scale, floating* shift) noexcept nogil:
    """Fold running statistics into one affine map: scale = gamma / sqrt(rvar + eps),
    shift = beta - rmean scale. Returns 1 if a scale or shift is not finite, else 0."""
    cdef Py_ssize_t j
    cdef int bad = 0
    for j in range(m):
        scale[j] = gamma[j] / sqrt(rvar[j] + eps)
        shift[j] = beta[j] - rmean[j] * scale[j]
        bad |= (scale[j] - scale[j] + shift[j] - shift[j]) != 0
    return bad


cdef int _affine_relu(int n, int m, const floating* S, const floating* scale,
                      const floating* shift, floating* H) noexcept nogil:
    """H = max(0, S scale + shift), per feature, NaN kept (batch norm in evaluation mode,
    then ReLU). Returns 1 if an input S is not finite (ReLU would map -inf to 0), else 0."""
    cdef Py_ssize_t i, j, k
    cdef floating z
    cdef int bad = 0
    for i in range(n):
        for j in range(m):
            k = i * m + j
            z = S[k] * scale[j] + shift[j]
            H[k] = 0 if z <= 0 else z
            bad |= (S[k] - S[k]) != 0
    return bad


cdef void _affine(int n, int m, const floating* S, const floating* scale,
                  const floating* shift, floating* Z) noexcept nogil:
    """Z = S scale + shift, per feature (batch norm in evaluation mode)."""
    cdef Py_ssize_t i, j
    cdef const floating* s
    cdef floating* z
    for i in range(n):
        s = S + i * m
        z = Z + i * m
        for j in range(m):
            z[j] = s[j] * scale[j] + shift[j]


cdef int _running_update(int m, const floating* mean, const floating* var,
                         floating* rmean, floating* rvar, floating alpha,
                         floating var_factor, bint first) noexcept nogil:
    """rmean = alpha rmean + (1 - alpha) mean (same for var times var_factor);
    on the first batch both are copied instead (the course's initialisation).
    Returns 1 if a new running statistic is not finite, else 0."""
    cdef Py_ssize_t j
    cdef int bad = 0
    for j in range(m):
        if first:
            rmean[j] = mean[j]
            rvar[j] = var[j] * var_factor
        else:
            rmean[j] = alpha * rmean[j] + (1 - alpha) * mean[j]
            rvar[j] = alpha * rvar[j] + (1 - alpha) * var[j] * var_factor
        bad |= (rmean[j] - rmean[j] + rvar[j] - rvar[j]) != 0
    return bad


cdef int _relu(Py_ssize_t size, const floating* S, floating* H) noexcept nogil:
    """H = max(0, S), NaN kept.  H may alias S. Returns 1 if an S is not finite (ReLU would
    map -inf to 0 and hide it), else 0."""
    cdef Py_ssize_t k
    cdef floating s
    cdef int bad = 0
    for k in range(size):
        s = S[k]
        bad |= (s - s) != 0
        H[k] = 0 if s <= 0 else s
    return bad


cdef void _relu_bwd(Py_ssize_t size, const floating* dH, const floating* H,
                    floating* dS) noexcept nogil:
    """dS = dH [H > 0].  dS may alias dH."""
    cdef Py_ssize_t k
    for k in range(size):
        dS[k] = dH[k] if H[k] > 0 else 0


# Dropout masks come from a counter-based hash, so the forward and backward passes (and a
# gradient check holding the seed) regenerate the same mask without storing it. The key mixes
# (seed, step, layer) with splitmix64 once; each element then takes a 32-bit hash of its
# index, which the compiler vectorises (a 64-bit multiply per element would stay scalar).

cdef inline uint64_t _splitmix64(uint64_t x) noexcept nogil:
    """splitmix64's output function of x + golden gamma."""
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline uint64_t _dropout_key(uint64_t seed, uint64_t step, uint64_t layer) noexcept nogil:
    """One 64-bit key per (seed, step, layer)."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ layer)


cdef inline uint32_t _hash32(uint32_t x) noexcept nogil:
    """A 32-bit integer hash (lowbias32)."""
    x ^= x >> 16
    x *= 0x7FEB352DU
    x ^= x >> 15
    x *= 0x846CA68BU
    x ^= x >> 16
    return x


cdef void _dropout(Py_ssize_t size, uint64_t key, uint32_t threshold, floating scale,
                   const floating* A, floating* B) noexcept nogil:
    """B[k] = A[k] scale if hash(k, key) >= threshold, else A[k] 0 (NaN stays NaN), with
    hash(k, key) = h32(h32(k ^ lo(key)) ^ hi(key)) and h32 = ``_hash32``. The forward pass
    and the backward pass (A = dB, B = dA) are this one map. B may alias A."""
    cdef Py_ssize_t k
    cdef uint32_t lo = <uint32_t>key, hi = <uint32_t>(key >> 32)
    cdef floating keep
    for k in range(size):
        keep = scale if _hash32(_hash32(<uint32_t>k ^ lo) ^ hi) >= threshold else 0
        B[k] = A[k] * keep


cdef void _softmax_xent(int n, int K, const floating* Z, const int64_t* y,
                        const int64_t* yidx, double inv_n, floating* G, floating* P,
                        double* loss, int64_t* correct) noexcept nogil:
    """Per row i with label t = y[yidx[i]] (y[i] if yidx is NULL):
    lse = log sum exp Z (shifted by the row max);  loss += lse - Z[t];
    correct += (argmax Z == t);  P = exp(Z - lse);  G = (P - onehot(t)) inv_n.
    y, G and P may be NULL; G or P may alias Z. The loss is NaN if a Z is not finite
    (an infinite logit can give finite probabilities)."""
    cdef Py_ssize_t i, j, arg
    cdef int64_t t = -1
    cdef const floating* z
    cdef floating* out
    cdef double mx, s, zt = 0, e, inv_s, spread = 0
    loss[0] = 0
    correct[0] = 0
    # The labels of shuffled rows lie all over y, out of cache after the first layer's work:
    # ask for all of them at once rather than wait for each in turn (~15 us a batch of 100).
    if y != NULL and yidx != NULL:
        for i in range(n):
            __builtin_prefetch(&y[yidx[i]], 0, 3)
    for i in range(n):
        z = Z + i * K
        mx = z[0]
        arg = 0
        for j in range(1, K):
            if z[j] > mx:
                mx = z[j]
                arg = j
        if y != NULL:
            t = y[yidx[i]] if yidx != NULL else y[i]
            zt = z[t]  # read before G or P, which may alias Z, overwrite it
        # One exp per entry: exp(z - mx) is kept (in P, else G) and divided by the sum.
        out = P + i * K if P != NULL else (G + i * K if G != NULL else NULL)
        s = 0
        for j in range(K):
            spread += z[j] - z[j]  # 0 unless some z is NaN or infinite
            e = exp(z[j] - mx)
            s += e
            if out != NULL:
                out[j] = <floating>e
        if y != NULL:
            loss[0] += mx + log(s) - zt
            correct[0] += (arg == t)
        if out != NULL:
            inv_s = 1 / s
            for j in range(K):
                e = out[j] * inv_s
                if P != NULL:
                    P[i * K + j] = <floating>e
                if G != NULL:
                    if j == t:
                        e -= 1
                    G[i * K + j] = <floating>(e * inv_n)
    if spread != 0:
        loss[0] = NAN


cdef int _sgd_update(Py_ssize_t size, floating* theta, const floating* grad, floating* vel,
                     floating lr, floating wd, floating momentum) noexcept nogil:
    """g = grad + wd theta;  with vel: vel = momentum vel - lr g, theta += vel;
    else theta -= lr g.  Returns 1 if any new value is not finite (t - t is NaN only then)."""
    cdef Py_ssize_t k
    cdef floating t
    cdef int bad = 0
    if vel != NULL:
        for k in range(size):
            vel[k] = momentum * vel[k] - lr * (grad[k] + wd * theta[k])
            t = theta[k] + vel[k]
            theta[k] = t
            bad |= (t - t) != 0
    else:
        for k in range(size):
            t = theta[k] - lr * (grad[k] + wd * theta[k])
            theta[k] = t
            bad |= (t - t) != 0
    return bad


# Augmentation happens inside the gather, so it costs no extra pass over the batch and no
# buffer: each output pixel reads its (flipped, translated) source pixel directly. Draws come
# from the dropout hash keyed by (seed, step, sample), so a run and its resume repeat them.

cdef struct AugmentSpec:
    bint flip        # mirror each image left-right with probability 1/2
    int shift        # translate by up to +-shift pixels in each direction
    double noise     # std of the Gaussian jitter added to every standardised value
    int C, H, W      # image layout: feature index = c H W + row W + col
    uint64_t seed    # draws of sample i of step s: keyed by (seed, s, AUGMENT_SAMPLE | i)
    uint64_t step


cdef uint64_t _AUGMENT_SAMPLE = 1ULL << 63  # sample streams apart from dropout's layer streams


cdef inline uint64_t _augment_key(uint64_t seed, uint64_t step, uint64_t sample) noexcept nogil:
    """One 64-bit key per (seed, step, sample): flip = bit 0, dy from bits 8-23, dx from bits
    24-39 (each mod 2 shift + 1, minus shift), the jitter from the key itself."""
    return _dropout_key(seed, step, _AUGMENT_SAMPLE | sample)


cdef inline double _normal(uint32_t lo, uint32_t hi, uint32_t j) noexcept nogil:
    """Standard normal draw j of a key: Box-Muller's cosine on the hashes of 2j and 2j + 1."""
    cdef double u1 = (_hash32(_hash32((2 * j) ^ lo) ^ hi) + 1.0) * 2.3283064365386963e-10
    cdef double u2 = _hash32(_hash32((2 * j + 1) ^ lo) ^ hi) * 2.3283064365386963e-10
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)


cdef void _gather_augmented_row(const source_t* row, int j0, int j1, const AugmentSpec* aug,
                                uint64_t key, const floating* shift, const floating* scale,
                                floating* o) noexcept nogil:
    """o[j] for j0 <= j < j1: the standardised image of ``row``, flipped and translated as
    ``key`` draws (pixels from outside the image are 0, the training mean), plus jitter."""
    cdef int W = aug.W, H = aug.H, HW = aug.H * aug.W, s = aug.shift
    cdef bint flip = aug.flip and (key & 1)
    cdef int dy = <int>(((key >> 8) & 0xFFFF) % (2 * s + 1)) - s
    cdef int dx = <int>(((key >> 24) & 0xFFFF) % (2 * s + 1)) - s
    cdef int j = j0, c, r, x0, x1, x, a, b, sr, f
    cdef uint32_t lo, hi
    cdef floating* out
    while j < j1:  # one image row (or the part of it in j0..j1) at a time
        c = j // HW
        r = (j - c * HW) // W
        x0 = j - c * HW - r * W
        x1 = x0 + (j1 - j) if x0 + (j1 - j) < W else W
        out = o + j - x0  # out[x]: column x of this image row
        sr = r - dy
        # Columns a..b-1 read source column x - dx; the others come from outside the image.
        a, b = (x0 if x0 > dx else dx), (x1 if x1 < W + dx else W + dx)
        if sr < 0 or sr >= H or a >= b:
            a = b = x1
        for x in range(x0, a):
            out[x] = 0
        for x in range(b, x1):
            out[x] = 0
        if flip:
            f = c * HW + sr * W + W - 1 + dx  # source feature f - x
            for x in range(a, b):
                out[x] = (<floating>row[f - x] - shift[f - x]) * scale[f - x]
        else:
            f = c * HW + sr * W - dx          # source feature f + x
            for x in range(a, b):
                out[x] = (<floating>row[f + x] - shift[f + x]) * scale[f + x]
        j += x1 - x0
    if aug.noise > 0:
        key = _splitmix64(key)
        lo, hi = <uint32_t>key, <uint32_t>(key >> 32)
        for j in range(j0, j1):
            o[j] += <floating>(aug.noise * _normal(lo, hi, <uint32_t>j))


cdef void _gather_block(Py_ssize_t i0, Py_ssize_t i1, int n, int d, int j0, int j1,
                        const source_t* src, const int64_t* idx, const floating* shift,
                        const floating* scale, const AugmentSpec* aug,
                        floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - shift[j]) scale[j] for rows i0 <= i < i1 (of n) and
    columns j0 <= j < j1 (of d), on the calling thread; augmented per row i if ``aug``."""
    cdef Py_ssize_t i, j
    cdef Py_ssize_t span = <Py_ssize_t>(j1 - j0) * sizeof(source_t)
    cdef const source_t* row
    cdef const char* ahead
    cdef floating* o
    for i in range(i0, i1):
        # The rows are scattered over the whole data set, so each one starts with cache
        # misses: ask for the next row while converting this one (~15 % faster gather of
        # 100 rows of 3072 uint8 out of 45,000).
        if i + 1 < n:
            ahead = <const char*>(src + idx[i + 1] * d + j0)
            for j in range(0, span, 64):
                __builtin_prefetch(ahead + j, 0, 0)
        row = src + idx[i] * d
        o = out + i * d
        if aug != NULL:
            _gather_augmented_row(row, j0, j1, aug, _augment_key(aug.seed, aug.step, i),
                                  shift, scale, o)
            continue
        for j in range(j0, j1):
            o[j] = (<floating>row[j] - shift[j]) * scale[j]


cdef void _gather(int n, int d, int j0, int j1, bint parallel, const source_t* src,
                  const int64_t* idx, const floating* shift, const floating* scale,
                  const AugmentSpec* aug, floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - shift[j]) scale[j] for columns j0..j1-1: mini-batch rows
    straight from the stored images (uint8 or float), standardised on the fly, augmented if
    ``aug`` is not NULL; rows split over the threads if ``parallel``, else all on the
    calling thread."""
    cdef Py_ssize_t i
    if not parallel:
        _gather_block(0, n, n, d, j0, j1, src, idx, shift, scale, aug, out)
        return
    for i in prange(n, num_threads=_threads(), schedule="static"):
        _gather_block(i, i + 1, n, d, j0, j1, src, idx, shift, scale, aug, out)


# ---------------------------------------------------------------------------------------
# def wrappers: one per kernel, no validation (cbn.kernels validates before calling).
# ---------------------------------------------------------------------------------------

def linear_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                   const floating[::1] b, floating[:, ::1] S):
    with nogil:
        _linear_fwd(X.shape[0], X.shape[1], W.shape[1], &X[0, 0], &W[0, 0], &b[0], &S[0, 0])


def linear_backward(const floating[:, ::1] X, const floating[:, ::1] W,
                    const floating[:, ::1] dS, double lam2, floating[:, ::1] dW,
                    floating[::1] db, floating[:, ::1] dX=None):
    cdef floating* pdx = NULL if dX is None else &dX[0, 0]
    with nogil:
        _linear_bwd(X.shape[0], X.shape[1], W.shape[1], &X[0, 0], &W[0, 0], &dS[0, 0],
                    <floating>lam2, &dW[0, 0], &db[0], pdx)


def bn_relu_forward_train(const floating[:, ::1] S, const floating[::1] gamma,
                          const floating[::1] beta, double eps, floating[::1] mean,
                          floating[::1] var, floating[::1] inv_std,
                          floating[:, ::1] Shat, floating[:, ::1] H):
    with nogil:
        _bn_relu_fwd_train(S.shape[0], S.shape[1], &S[0, 0], &gamma[0], &beta[0],
                           <floating>eps, &mean[0], &var[0], &inv_std[0], &Shat[0, 0], &H[0, 0])


def bn_relu_forward_eval(const floating[:, ::1] S, const floating[::1] gamma,
                         const floating[::1] beta, const floating[::1] running_mean,
                         const floating[::1] running_var, double eps,
                         floating[::1] scale, floating[::1] shift, floating[:, ::1] H):
    with nogil:
        _bn_eval_affine(S.shape[1], &gamma[0], &beta[0], &running_mean[0], &running_var[0],
                        <floating>eps, &scale[0], &shift[0])
        _affine_relu(S.shape[0], S.shape[1], &S[0, 0], &scale[0], &shift[0], &H[0, 0])


def bn_relu_backward(const floating[:, ::1] dH, const floating[:, ::1] H,
                     const floating[:, ::1] Shat, const floating[::1] gamma,
                     const floating[::1] inv_std, floating[::1] dgamma,
                     floating[::1] dbeta, floating[:, ::1] dS):
    with nogil:
        _bn_relu_bwd(dH.shape[0], dH.shape[1], &dH[0, 0], &H[0, 0], &Shat[0, 0], &gamma[0],
                     &inv_std[0], &dgamma[0], &dbeta[0], &dS[0, 0])


def running_stats_update(const floating[::1] mean, const floating[::1] var,
                         floating[::1] running_mean, floating[::1] running_var,
                         double alpha, double var_factor, bint first):
    with nogil:
        _running_update(mean.shape[0], &mean[0], &var[0], &running_mean[0], &running_var[0],
                        <floating>alpha, <floating>var_factor, first)


def relu_forward(const floating[:, ::1] S, floating[:, ::1] H):
    with nogil:
        _relu(S.shape[0] * S.shape[1], &S[0, 0], &H[0, 0])


def relu_backward(const floating[:, ::1] dH, const floating[:, ::1] H, floating[:, ::1] dS):
    with nogil:
        _relu_bwd(dH.shape[0] * dH.shape[1], &dH[0, 0], &H[0, 0], &dS[0, 0])


def bn_forward_train(const floating[:, ::1] S, const floating[::1] gamma,
                     const floating[::1] beta, double eps, floating[::1] mean,
                     floating[::1] var, floating[::1] inv_std, floating[:, ::1] Shat,
                     floating[:, ::1] Z):
    """Returns True if a batch mean or variance is not finite."""
    cdef int bad
    with nogil:
        bad = _bn_fwd_train(S.shape[0], S.shape[1], &S[0, 0], &gamma[0], &beta[0],
                            <floating>eps, &mean[0], &var[0], &inv_std[0], &Shat[0, 0], &Z[0, 0])
    return bool(bad)


def bn_forward_eval(const floating[:, ::1] S, const floating[::1] gamma,
                    const floating[::1] beta, const floating[::1] running_mean,
                    const floating[::1] running_var, double eps, floating[::1] scale,
                    floating[::1] shift, floating[:, ::1] Z):
    with nogil:
        _bn_eval_affine(S.shape[1], &gamma[0], &beta[0], &running_mean[0], &running_var[0],
                        <floating>eps, &scale[0], &shift[0])
        _affine(S.shape[0], S.shape[1], &S[0, 0], &scale[0], &shift[0], &Z[0, 0])


def bn_backward(const floating[:, ::1] dZ, const floating[:, ::1] Shat,
                const floating[::1] gamma, const floating[::1] inv_std, floating[::1] dgamma,
                floating[::1] dbeta, floating[:, ::1] dS):
    with nogil:
        _bn_bwd(dZ.shape[0], dZ.shape[1], &dZ[0, 0], &Shat[0, 0], &gamma[0], &inv_std[0],
                &dgamma[0], &dbeta[0], &dS[0, 0])


def dropout(const floating[:, ::1] A, floating[:, ::1] B, double p, uint64_t seed,
            uint64_t step, uint64_t layer):
    """B = A times the inverted-dropout mask of (seed, step, layer): forward and backward."""
    cdef uint32_t threshold = <uint32_t>min(round(p * 2.0 ** 32), 2 ** 32 - 1)
    with nogil:
        _dropout(<Py_ssize_t>A.shape[0] * A.shape[1], _dropout_key(seed, step, layer),
                 threshold, <floating>(1 / (1 - p)), &A[0, 0], &B[0, 0])


def softmax_cross_entropy(const floating[:, ::1] Z, const int64_t[::1] y=None,
                          floating[:, ::1] G=None, floating[:, ::1] P=None):
    """Returns (sum of losses, number correct); fills G and P when given."""
    cdef double loss
    cdef int64_t correct
    cdef const int64_t* py = NULL if y is None else &y[0]
    cdef floating* pg = NULL if G is None else &G[0, 0]
    cdef floating* pp = NULL if P is None else &P[0, 0]
    with nogil:
        _softmax_xent(Z.shape[0], Z.shape[1], &Z[0, 0], py, NULL, 1.0 / Z.shape[0], pg, pp,
                      &loss, &correct)
    return loss, correct


def sgd_update(floating[::1] theta, const floating[::1] grad, double lr,
               double weight_decay=0.0, double momentum=0.0, floating[::1] velocity=None):
    """Returns True if any updated value is not finite."""
    cdef floating* pv = NULL if velocity is None else &velocity[0]
    cdef int bad
    with nogil:
        bad = _sgd_update(theta.shape[0], &theta[0], &grad[0], pv, <floating>lr,
                          <floating>weight_decay, <floating>momentum)
    return bool(bad)


def all_finite(const floating[::1] x):
    """True if no value of x is NaN or infinite (allocates nothing)."""
    cdef int bad
    with nogil:
        bad = _not_finite(x.shape[0], &x[0])
    return not bad


def sum_of_squares(const floating[::1] x):
    """Sum of x[k]^2, accumulated in double (here rather than numpy.dot: numpy's BLAS would
    wake its own thread pool, which then spins beside ours)."""
    cdef double total = 0
    cdef Py_ssize_t k
    with nogil:
        for k in range(x.shape[0]):
            total += <double>x[k] * x[k]
    return total


def gather_rows(const source_t[:, ::1] src, const int64_t[::1] idx,
                const floating[::1] shift, const floating[::1] scale, floating[:, ::1] out,
                object augment=None, int j0=0, j1=None):
    """augment: None, or (flip, shift, noise, C, H, W, seed, step), checked by the caller.
    Columns j0..j1-1 only (default: all), on one thread when that is not all of them."""
    cdef AugmentSpec spec
    cdef AugmentSpec* aug = NULL
    cdef int end = src.shape[1] if j1 is None else j1
    if not 0 <= j0 <= end <= src.shape[1]:
        raise ValueError(f"columns {j0}..{end} are not within the {src.shape[1]} of src")
    if augment is not None:
        (spec.flip, spec.shift, spec.noise, spec.C, spec.H, spec.W, spec.seed,
         spec.step) = augment
        if spec.C * spec.H * spec.W != src.shape[1] or spec.shift < 0:
            raise ValueError(f"augment {augment} does not fit rows of {src.shape[1]} values")
        aug = &spec
    with nogil:
        _gather(idx.shape[0], src.shape[1], j0, end, j0 == 0 and end == src.shape[1],
                &src[0, 0], &idx[0], &shift[0], &scale[0], aug, &out[0, 0])


# ---------------------------------------------------------------------------------------
# Plan: a whole network at one batch capacity, run step by step without the GIL.
# ---------------------------------------------------------------------------------------

# A network is a sequence of blocks: a linear layer followed by up to MAX_OPS element-wise
# ops (the hidden blocks' activations; none after the output layer). Each op reads the
# previous op's output (the linear layer's S first) and writes its own ``out``; the backward
# pass runs the ops in reverse, in place on the block's S buffer, which then holds the
# gradient w.r.t. S. Adding an op: a kernel pair, an OpKind, its two cases in
# _op_forward/_op_backward and a constructor on OpSpec.

cdef enum OpKind:
    OP_BN_RELU = 0   # batch norm then ReLU, fused (the course's block)
    OP_RELU = 1
    OP_BN = 2
    OP_DROPOUT = 3   # inverted dropout, in place on its input; training only

cdef enum: MAX_OPS = 4


cdef size_t _addr(object a) except 0:
    if a is None:
        raise ValueError("missing buffer")
    return <size_t>a.__array_interface__['data'][0]


# ---------------------------------------------------------------------------------------
# The first layer in column slices, one per thread.
#
# OpenBLAS splits a product between its threads by rows and columns of the output, and its
# threads wait for each other's packed panels; the first layer's products are long and thin
# (100 x 3072 x 50), and their two-thread split ran well behind one-thread products on part
# of the inputs each. So with two or more threads each one takes a slice of the input
# columns: it gathers them, then multiplies them by its rows of W into a partial product,
# and in the backward pass updates (or takes the gradient of) those rows of W from the same
# columns, still in its cache. The partial products are then summed.
#
# The products of all slices go to OpenBLAS as one batch (cblas_?gemm_batch), which runs
# each product whole on one thread, job t on thread t of our pool (_run_blas_jobs): the
# thread that gathered slice t. No product is ever called from inside one of our regions,
# and OpenBLAS's process-wide thread count is never touched.
# ---------------------------------------------------------------------------------------

cdef int _SLICED_FROM = 256
FIRST_LAYER_SLICED_FROM = _SLICED_FROM  # inputs; narrower first layers are not sliced
cdef enum: _MAX_SLICES = 8  # a constant: it sizes the arrays of _slice_products
MAX_SLICES = _MAX_SLICES


cdef inline int _slice_start(int d, int slices, int t) noexcept nogil:
    """First input column of slice t (slices as even as d allows)."""
    return <int>((<Py_ssize_t>d * t) // slices)


# The three products _slice_products batches, one per column slice [j0, j1) of X (n, d):
cdef enum SliceProduct:
    FORWARD      # P[t] (n, m) := alpha X[:, j0:j1] W[j0:j1] + beta P[t]    (B = W, C = P)
    WEIGHTS      # C[j0:j1] (w, m) := alpha X[:, j0:j1]^T dS + beta C[j0:j1] (B = dS, C = W or dW)
    TRANSPOSED   # T[t] (m, w) := alpha dS^T X[:, j0:j1], T[t] at C + j0 m   (B = dS, C = workspace)


cdef void _slice_products(int slices, int d, int n, int m, SliceProduct form, floating alpha,
                          const floating* X, const floating* B, floating beta,
                          floating* C) noexcept nogil:
    """The products of all column slices of X in one batch call (forms: SliceProduct);
    P[t] = C + t n m, w = j1 - j0."""
    cdef CBLAS_TRANSPOSE ta[_MAX_SLICES]
    cdef CBLAS_TRANSPOSE tb[_MAX_SLICES]
    cdef int M[_MAX_SLICES]
    cdef int N[_MAX_SLICES]
    cdef int K[_MAX_SLICES]
    cdef int lda[_MAX_SLICES]
    cdef int ldb[_MAX_SLICES]
    cdef int ldc[_MAX_SLICES]
    cdef int one[_MAX_SLICES]
    cdef floating alphas[_MAX_SLICES]
    cdef floating betas[_MAX_SLICES]
    cdef const floating* As[_MAX_SLICES]
    cdef const floating* Bs[_MAX_SLICES]
    cdef floating* Cs[_MAX_SLICES]
    cdef int t, j0, j1
    for t in range(slices):
        j0 = _slice_start(d, slices, t)
        j1 = _slice_start(d, slices, t + 1)
        alphas[t] = alpha
        betas[t] = beta
        one[t] = 1
        if form == FORWARD:
            ta[t], tb[t], M[t], N[t], K[t] = CblasNoTrans, CblasNoTrans, n, m, j1 - j0
            As[t], lda[t] = X + j0, d
            Bs[t], ldb[t] = B + <Py_ssize_t>j0 * m, m
            Cs[t], ldc[t] = C + <Py_ssize_t>t * n * m, m
        elif form == WEIGHTS:
            ta[t], tb[t], M[t], N[t], K[t] = CblasTrans, CblasNoTrans, j1 - j0, m, n
            As[t], lda[t] = X + j0, d
            Bs[t], ldb[t] = B, m
            Cs[t], ldc[t] = C + <Py_ssize_t>j0 * m, m
        else:
            ta[t], tb[t], M[t], N[t], K[t] = CblasTrans, CblasNoTrans, m, j1 - j0, n
            As[t], lda[t] = B, m
            Bs[t], ldb[t] = X + j0, d
            Cs[t], ldc[t] = C + <Py_ssize_t>j0 * m, j1 - j0
    _check_pool()
    if floating is float:
        scipy_cblas_sgemm_batch(CblasRowMajor, ta, tb, M, N, K, alphas, As, lda, Bs, ldb,
                                betas, Cs, ldc, slices, one)
    else:
        scipy_cblas_dgemm_batch(CblasRowMajor, ta, tb, M, N, K, alphas, As, lda, Bs, ldb,
                                betas, Cs, ldc, slices, one)


cdef int _not_finite(Py_ssize_t size, const floating* x) noexcept nogil:
    """1 if any x[k] is NaN or infinite (x - x is NaN only then), else 0."""
    cdef Py_ssize_t k
    cdef int bad = 0
    for k in range(size):
        bad |= (x[k] - x[k]) != 0
    return bad


cdef size_t _buffer(str name, object a, object dtype, Py_ssize_t size,
                    bint writeable=True) except 0:
    """The address of ``a`` after checking it can hold ``size`` values of ``dtype``,
    contiguous (and writeable when the plan writes it): the kernels trust these pointers."""
    if a is None:
        raise ValueError(f"{name}: missing buffer")
    if not hasattr(a, "__array_interface__") or a.dtype != dtype:
        raise TypeError(f"{name} must be a {dtype} array, got {type(a).__name__} "
                        f"{getattr(a, 'dtype', '')}")
    if not a.flags.c_contiguous or a.size < size or (writeable and not a.flags.writeable):
        raise ValueError(f"{name} must be a C-contiguous{' writeable' if writeable else ''} "
                         f"array of at least {size} values, got shape {a.shape}")
    return _addr(a)


cdef class OpSpec:
    """One element-wise op of a hidden block and the arrays it works on: the typed seam
    between ``cbn.network`` (which allocates) and ``Plan`` (which runs). Made by the
    constructors ``relu``, ``batch_norm`` and ``dropout``; Plan checks every array's dtype
    and size against the block's width and its batch capacity."""
    cdef readonly int kind
    cdef readonly object out, Shat, gamma, beta, dgamma, dbeta, rmean, rvar
    cdef readonly object mean, var, inv_std, escale, eshift
    cdef readonly double p

    @staticmethod
    def relu(out):
        """H = max(0, A); ``out`` (cap, m) receives H."""
        cdef OpSpec op = OpSpec()
        op.kind, op.out = OP_RELU, out
        return op

    @staticmethod
    def batch_norm(*, out, Shat, gamma, beta, dgamma, dbeta, rmean, rvar, mean, var, inv_std,
                   escale, eshift, bint relu=False):
        """Z = gamma (A - mean) / sqrt(var + eps) + beta, then max(0, Z) with ``relu`` (one
        fused kernel). ``out`` and ``Shat`` are (cap, m) workspaces, the rest (m,) vectors."""
        cdef OpSpec op = OpSpec()
        op.kind = OP_BN_RELU if relu else OP_BN
        op.out, op.Shat, op.gamma, op.beta = out, Shat, gamma, beta
        op.dgamma, op.dbeta = dgamma, dbeta
        op.rmean, op.rvar, op.mean, op.var, op.inv_std = rmean, rvar, mean, var, inv_std
        op.escale, op.eshift = escale, eshift
        return op

    @staticmethod
    def dropout(double p):
        """Inverted dropout in place, drop probability 0 <= p < 1, in training only."""
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        cdef OpSpec op = OpSpec()
        op.kind, op.p = OP_DROPOUT, p
        return op

    @property
    def is_relu(self):
        """True if the op ends in a ReLU (its output > 0 marks the active units)."""
        return self.kind in (OP_RELU, OP_BN_RELU)


cdef class LayerSpec:
    """A linear layer S = A W + b (W (d_in, d_out), S (cap, d_out)) with its gradients dW, db,
    the optional transposed-product workspace WT, and the ops that follow it (none after the
    output layer)."""
    cdef readonly object W, b, dW, db, S, WT
    cdef readonly tuple ops

    def __init__(self, W, b, dW, db, S, WT=None, ops=()):
        self.W, self.b, self.dW, self.db, self.S, self.WT = W, b, dW, db, S, WT
        self.ops = tuple(ops)
        if len(self.ops) > MAX_OPS or not all(isinstance(op, OpSpec) for op in self.ops):
            raise ValueError(f"ops must be at most {MAX_OPS} OpSpec, got {self.ops!r}")
        if len(W.shape) != 2:
            raise ValueError(f"W must be 2-D, got shape {W.shape}")

    @property
    def d_in(self):
        return self.W.shape[0]

    @property
    def d_out(self):
        return self.W.shape[1]

    @property
    def output(self):
        """The block's output: its last op's ``out`` (dropout works in place), else S."""
        for op in reversed(self.ops):
            if op.out is not None:
                return op.out
        return self.S


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


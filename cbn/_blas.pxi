# OpenBLAS: the cblas declarations, the one product ``_gemm`` and the batched products of the
# sliced first layer. Included by _ops.pyx.

# OpenBLAS from the scipy-openblas32 wheel (symbols prefixed "scipy_"), not
# scipy.linalg.cython_blas: the OpenBLAS scipy bundles is older, slower on the first layer's
# small products and unsafe in its GEMM partitioning (docs/benchmarks.md, "Which BLAS").

# OpenBLAS's threads-callback types, declared here rather than taken from cblas.h, whose
# names for them differ between releases while the signatures do not.
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
    char* scipy_openblas_get_config()
    char* scipy_openblas_get_corename()


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


# ---------------------------------------------------------------------------------------
# The first layer in column slices, one per thread.
#
# OpenBLAS splits a product between its threads by rows and columns of the output, and its
# threads wait for each other's packed panels; the first layer's products are long and thin
# (100 x 3072 x 50), and their two-thread split runs behind one-thread products on part of
# the inputs each (docs/benchmarks.md, "What the fast path does"). So with two or more
# threads each one takes a slice of the input columns: it gathers them, then multiplies them
# by its rows of W into a partial product, and in the backward pass updates (or takes the
# gradient of) those rows of W from the same columns, still in its cache. The partial
# products are then summed.
#
# The products of all slices go to OpenBLAS as one batch (cblas_?gemm_batch), which runs
# each product whole on one thread, job t on thread t of our pool (_run_blas_jobs): the
# thread that gathered slice t. No product is ever called from inside one of our regions,
# and OpenBLAS's process-wide thread count is never touched.
# ---------------------------------------------------------------------------------------

cdef int _SLICED_FROM = 256  # inputs; narrower first layers are not sliced (cbn.tune)


def blas_config():
    """OpenBLAS's build and the kernels it chose for this CPU, e.g. "OpenBLAS 0.3.x
    DYNAMIC_ARCH ... SkylakeX"."""
    return (scipy_openblas_get_config().decode(errors="replace") + " "
            + scipy_openblas_get_corename().decode(errors="replace"))


def sliced_from():
    """Inputs from which a plan built now slices the first layer (``set_sliced_from``)."""
    return _SLICED_FROM


def set_sliced_from(int inputs):
    """Slice the first layer of plans built from now on when it has this many inputs."""
    global _SLICED_FROM
    if inputs < 1:
        raise ValueError(f"inputs must be >= 1, got {inputs}")
    _SLICED_FROM = inputs
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

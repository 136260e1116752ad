# The linear layer S = X W + b: forward, backward and the weight product. Included by _ops.pyx.

# The weight product A^T dS is computed as its transpose dS^T A, then added in with one pass,
# from this many rows up: OpenBLAS then packs A's rows as they lie in memory instead of
# across them. Where that starts to pay depends on the CPU: cbn.tune measures it.
cdef int _TRANSPOSED_FROM = 400


def transposed_from():
    """Rows from which the weight product is taken transposed (``set_transposed_from``)."""
    return _TRANSPOSED_FROM


def set_transposed_from(int rows):
    """Take the weight product transposed from ``rows`` rows on (plans built before keep
    the workspace they have: without one, never)."""
    global _TRANSPOSED_FROM
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    _TRANSPOSED_FROM = rows


cdef void _weight_product(int n, int d_in, int d_out, floating alpha, const floating* A,
                          const floating* dS, floating beta, floating* C,
                          floating* tmp) noexcept nogil:
    """C(d_in, d_out) := alpha A(n, d_in)^T dS(n, d_out) + beta C (beta 0: C is not read).
    ``tmp`` is a (d_out, d_in) workspace for the transposed product, or NULL."""
    _weight_product_as(tmp != NULL and n >= _TRANSPOSED_FROM, n, d_in, d_out, alpha, A, dS,
                       beta, C, tmp)


cdef void _weight_product_as(bint transposed, int n, int d_in, int d_out, floating alpha,
                             const floating* A, const floating* dS, floating beta, floating* C,
                             floating* tmp) noexcept nogil:
    """_weight_product in the form asked for."""
    cdef Py_ssize_t i, j
    if not transposed:
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
                       floating l2_grad, const floating* W, floating* dW,
                       floating* tmp) noexcept nogil:
    """dW := A^T dS + l2_grad W (``tmp``: as in _weight_product)."""
    cdef Py_ssize_t i
    cdef floating beta = 0
    if l2_grad != 0:
        for i in range(<Py_ssize_t>d_in * d_out):
            dW[i] = l2_grad * W[i]
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
                      const floating* dS, floating l2_grad, floating* dW, floating* db,
                      floating* dX) noexcept nogil:
    """dW := X^T dS + l2_grad W;  db := column sums of dS;  dX := dS W^T (skipped if dX is NULL)."""
    _weight_grad(n, d, m, X, dS, l2_grad, W, dW, <floating*>NULL)
    _col_sums(n, m, dS, db)
    if dX != NULL:
        _gemm(False, True, n, d, m, <floating>1, dS, W, <floating>0, dX)


def linear_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                   const floating[::1] b, floating[:, ::1] S):
    with nogil:
        _linear_fwd(X.shape[0], X.shape[1], W.shape[1], &X[0, 0], &W[0, 0], &b[0], &S[0, 0])


def linear_backward(const floating[:, ::1] X, const floating[:, ::1] W,
                    const floating[:, ::1] dS, double lam, floating[:, ::1] dW,
                    floating[::1] db, floating[:, ::1] dX=None):
    cdef floating* pdx = NULL if dX is None else &dX[0, 0]
    with nogil:
        _linear_bwd(X.shape[0], X.shape[1], W.shape[1], &X[0, 0], &W[0, 0], &dS[0, 0],
                    <floating>_l2_grad(lam), &dW[0, 0], &db[0], pdx)


def weight_product(const floating[:, ::1] A, const floating[:, ::1] dS, floating[:, ::1] C,
                   floating[::1] tmp=None):
    """C := A^T dS, transposed through ``tmp`` (d_out * d_in values) when it is given, else
    directly: both forms, whatever the threshold (cbn.tune times them)."""
    with nogil:
        _weight_product_as(tmp is not None, A.shape[0], A.shape[1], dS.shape[1], <floating>1,
                           &A[0, 0], &dS[0, 0], <floating>0, &C[0, 0],
                           NULL if tmp is None else &tmp[0])

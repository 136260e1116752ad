# GELU, the exact form x Phi(x) (torch.nn.GELU()). Included by _ops.pyx.

cdef int _gelu(Py_ssize_t size, const floating* A, floating* H, floating* slope) noexcept nogil:
    """H = A Phi(A) with Phi(x) = (1 + erf(x / sqrt 2)) / 2; with ``slope`` (else NULL) also
    its derivative Phi(A) + A phi(A), for the backward pass. H may alias A. Returns 1 if an A
    is not finite (GELU maps -inf to NaN, +inf to inf: kept visible), else 0."""
    cdef Py_ssize_t k
    cdef floating a, cdf
    cdef int bad = 0
    for k in range(size):
        a = A[k]
        bad |= (a - a) != 0
        cdf = <floating>0.5 * (1 + erf(a * <floating>0.7071067811865476))
        if slope != NULL:
            slope[k] = cdf + a * <floating>0.3989422804014327 * exp(<floating>-0.5 * a * a)
        H[k] = a * cdf
    return bad


cdef int _gelu_forward_op(const OpContext* c, const floating* A, floating* out,
                          floating** buf, const double* arg) noexcept nogil:
    return _gelu(<Py_ssize_t>c.n * c.m, A, out, buf[0] if c.training else NULL)


cdef int _gelu_backward_op(const OpContext* c, floating* G, const floating* out,
                           floating** buf, const double* arg) noexcept nogil:
    cdef Py_ssize_t k
    cdef const floating* slope = buf[0]
    for k in range(<Py_ssize_t>c.n * c.m):
        G[k] *= slope[k]
    return 0


cdef OpKernels _GELU = OpKernels(_gelu_forward_op[float], _gelu_backward_op[float],
                                 _gelu_forward_op[double], _gelu_backward_op[double])


def gelu_op(out, slope):
    """H = GELU(A); ``out`` (cap, m) receives H, ``slope`` (cap, m) its derivative."""
    return _op_spec("gelu", _GELU, out, (("slope", slope, BATCH),), (), False, False)


def gelu_forward(const floating[:, ::1] A, floating[:, ::1] H, floating[:, ::1] slope):
    """Returns True if an input is not finite."""
    cdef int bad
    with nogil:
        bad = _gelu(A.shape[0] * A.shape[1], &A[0, 0], &H[0, 0], &slope[0, 0])
    return bool(bad)

# ReLU on its own (the blocks without batch norm before it). Included by _ops.pyx.

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


cdef int _relu_forward_op(const OpContext* c, const floating* A, floating* out,
                          floating** buf, const double* arg) noexcept nogil:
    return _relu(<Py_ssize_t>c.n * c.m, A, out)


cdef int _relu_backward_op(const OpContext* c, floating* G, const floating* out,
                           floating** buf, const double* arg) noexcept nogil:
    _relu_bwd(<Py_ssize_t>c.n * c.m, G, out, G)
    return 0


cdef OpKernels _RELU = OpKernels(_relu_forward_op[float], _relu_backward_op[float],
                                 _relu_forward_op[double], _relu_backward_op[double])


def relu_op(out):
    """H = max(0, A); ``out`` (cap, m) receives H."""
    return _op_spec("relu", _RELU, out, (), (), True, False)


def relu_forward(const floating[:, ::1] S, floating[:, ::1] H):
    with nogil:
        _relu(S.shape[0] * S.shape[1], &S[0, 0], &H[0, 0])


def relu_backward(const floating[:, ::1] dH, const floating[:, ::1] H, floating[:, ::1] dS):
    with nogil:
        _relu_bwd(dH.shape[0] * dH.shape[1], &dH[0, 0], &H[0, 0], &dS[0, 0])

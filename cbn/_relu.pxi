# ReLU on its own (the blocks without batch norm before it). Included by _ops.pyx.

cdef int _relu(Py_ssize_t size, const floating* S, floating* H,
               uint16_t* H16) noexcept nogil:
    """H = max(0, S), NaN kept, and rounded to bf16 into ``H16`` unless it is NULL (float32
    only; in blocks of a few KB, still in L1).  H may alias S. Returns 1 if an S is not
    finite (ReLU would map -inf to 0 and hide it), else 0."""
    cdef Py_ssize_t k, k0, k1
    cdef floating s
    cdef int bad = 0
    for k0 in range(0, size, 1024):
        k1 = k0 + 1024 if k0 + 1024 < size else size
        for k in range(k0, k1):
            s = S[k]
            bad |= (s - s) != 0
            H[k] = 0 if s <= 0 else s
        if floating is float:
            if H16 != NULL:
                cbn_round_bf16(H + k0, H16 + k0, k1 - k0)
    return bad


cdef void _relu_bwd(Py_ssize_t size, const floating* dH, const floating* H,
                    floating* dS, uint16_t* dS16) noexcept nogil:
    """dS = dH [H > 0], and rounded to bf16 into ``dS16`` as ``_relu`` does.  dS may alias
    dH."""
    cdef Py_ssize_t k, k0, k1
    for k0 in range(0, size, 1024):
        k1 = k0 + 1024 if k0 + 1024 < size else size
        for k in range(k0, k1):
            dS[k] = dH[k] if H[k] > 0 else 0
        if floating is float:
            if dS16 != NULL:
                cbn_round_bf16(dS + k0, dS16 + k0, k1 - k0)


cdef int _relu_forward_op(const OpContext* c, const floating* A, floating* out,
                          floating** buf, const double* arg) noexcept nogil:
    return _relu(<Py_ssize_t>c.n * c.m, A, out, c.out16)


cdef int _relu_backward_op(const OpContext* c, floating* G, const floating* out,
                           floating** buf, const double* arg) noexcept nogil:
    _relu_bwd(<Py_ssize_t>c.n * c.m, G, out, G, c.grad16)
    return 0


cdef OpKernels _RELU = OpKernels(_relu_forward_op[float], _relu_backward_op[float],
                                 _relu_forward_op[double], _relu_backward_op[double])


def relu_op(out):
    """H = max(0, A); ``out`` (cap, m) receives H."""
    return _op_spec("relu", _RELU, out, (), (), True, False, True)


def relu_forward(const floating[:, ::1] S, floating[:, ::1] H):
    with nogil:
        _relu(S.shape[0] * S.shape[1], &S[0, 0], &H[0, 0], NULL)


def relu_backward(const floating[:, ::1] dH, const floating[:, ::1] H, floating[:, ::1] dS):
    with nogil:
        _relu_bwd(dH.shape[0] * dH.shape[1], &dH[0, 0], &H[0, 0], &dS[0, 0], NULL)

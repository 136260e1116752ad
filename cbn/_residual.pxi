# The residual connection: a block's output plus the block's own input. Included by _ops.pyx.

cdef int _residual_forward_op(const OpContext* c, const floating* A, floating* out,
                              floating** buf, const double* arg) noexcept nogil:
    """out = A + input (buf[0], the block's input, (n, m))."""
    cdef Py_ssize_t k
    cdef const floating* x = buf[0]
    for k in range(<Py_ssize_t>c.n * c.m):
        out[k] = A[k] + x[k]
    return 0


cdef int _residual_backward_op(const OpContext* c, floating* G, const floating* out,
                               floating** buf, const double* arg) noexcept nogil:
    """The gradient passes to the block (G, unchanged) and to the block's input: it goes into
    buf[1] (that input's gradient buffer; NULL for the network's input), to which the block's
    linear layer then adds its own (the op ``feeds_input_grad``)."""
    if buf[1] != NULL:
        memcpy(buf[1], G, <size_t>c.n * c.m * sizeof(floating))
    return 0


cdef OpKernels _RESIDUAL = OpKernels(_residual_forward_op[float], _residual_backward_op[float],
                                     _residual_forward_op[double], _residual_backward_op[double])


def residual_op(out, input, input_grad, bint feeds_input_grad=True):
    """out = A + input: ``input`` is the block's input (cap, m), ``input_grad`` the buffer
    that receives the gradient w.r.t. it (the layer below's S), or None for the network's
    input. With ``feeds_input_grad`` False the skip spans more than its layer's own linear
    (a pre-norm block): ``input`` is an earlier point of the network and ``input_grad`` a
    buffer of its own, which a ``stream_op`` at that point adds in."""
    return _op_spec("residual", _RESIDUAL, out,
                    (("input", input, BATCH), ("input_grad", input_grad, BATCH)), (), False,
                    feeds_input_grad)


# The source of a long skip: nothing forward; backward, the skip's gradient (left by the
# residual op above, which runs first backward) joins the gradient flowing through the
# block's own path.

cdef int _stream_forward_op(const OpContext* c, const floating* A, floating* out,
                            floating** buf, const double* arg) noexcept nogil:
    return 0


cdef int _stream_backward_op(const OpContext* c, floating* G, const floating* out,
                             floating** buf, const double* arg) noexcept nogil:
    """G += buf[0], the gradient a residual op above left for this point."""
    cdef Py_ssize_t k
    cdef const floating* skip = buf[0]
    for k in range(<Py_ssize_t>c.n * c.m):
        G[k] += skip[k]
    return 0


cdef OpKernels _STREAM = OpKernels(_stream_forward_op[float], _stream_backward_op[float],
                                   _stream_forward_op[double], _stream_backward_op[double])


def stream_op(grad):
    """In place on its input, which a residual op further up reads as its skip: backward,
    adds ``grad`` (cap, m), the gradient that residual op left (its ``input_grad``)."""
    return _op_spec("stream", _STREAM, None, (("grad", grad, BATCH),), (), False, False)

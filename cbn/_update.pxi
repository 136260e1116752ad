# The L2 term, the parameter update (SGD with momentum) and the checks on the flat parameter
# vector. Included by _ops.pyx before the kernels that use the L2 term.


# The L2 term: the cost is the mean loss + lam * sum W^2 over the weights, ``lam`` being fit's
# ``lam`` (``cbn train --lam``); it is the only name the L2 strength has. What the kernels use
# of it is derived here alone, in double precision: the gradient's term l2_grad W, and the
# factor l2_shrink by which a plain SGD step scales W before adding -lr A^T dS.
cdef inline double _l2_grad(double lam) noexcept nogil:
    return 2 * lam


cdef inline double _l2_shrink(double lam, double lr) noexcept nogil:
    return 1 - lr * _l2_grad(lam)


cdef int _sgd_update(Py_ssize_t size, floating* theta, const floating* grad, floating* vel,
                     floating lr, floating l2_grad, floating momentum) noexcept nogil:
    """g = grad + l2_grad theta;  with vel: vel = momentum vel - lr g, theta += vel;
    else theta -= lr g.  Returns 1 if any new value is not finite (t - t is NaN only then)."""
    cdef Py_ssize_t k
    cdef floating t
    cdef int bad = 0
    if vel != NULL:
        for k in range(size):
            vel[k] = momentum * vel[k] - lr * (grad[k] + l2_grad * theta[k])
            t = theta[k] + vel[k]
            theta[k] = t
            bad |= (t - t) != 0
    else:
        for k in range(size):
            t = theta[k] - lr * (grad[k] + l2_grad * theta[k])
            theta[k] = t
            bad |= (t - t) != 0
    return bad


cdef int _not_finite(Py_ssize_t size, const floating* x) noexcept nogil:
    """1 if any x[k] is NaN or infinite (x - x is NaN only then), else 0."""
    cdef Py_ssize_t k
    cdef int bad = 0
    for k in range(size):
        bad |= (x[k] - x[k]) != 0
    return bad


def sgd_update(floating[::1] theta, const floating[::1] grad, double lr,
               double lam=0.0, double momentum=0.0, floating[::1] velocity=None):
    """SGD with the L2 term of ``lam``; returns True if any updated value is not finite."""
    cdef floating* pv = NULL if velocity is None else &velocity[0]
    cdef int bad
    with nogil:
        bad = _sgd_update(theta.shape[0], &theta[0], &grad[0], pv, <floating>lr,
                          <floating>_l2_grad(lam), <floating>momentum)
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

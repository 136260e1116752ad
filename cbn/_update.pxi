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


def lerp(floating[::1] avg, const floating[::1] live, double weight):
    """avg += weight (live - avg), in one pass (a moving average's update, torch's lerp_)."""
    cdef Py_ssize_t k
    cdef floating w = <floating>weight
    if live.shape[0] != avg.shape[0]:
        raise ValueError(f"live has {live.shape[0]} values for the {avg.shape[0]} of avg")
    with nogil:
        for k in range(avg.shape[0]):
            avg[k] = avg[k] + w * (live[k] - avg[k])


# The updates of cbn.optim's Lion and Lamb, each in as few passes over the parameters as its
# formulas allow (the NumPy form takes 8 and 15): a network of millions of parameters pays
# each pass on every step. The order of the operations is the docstrings' (cbn/optim.py),
# so each rounds as that form does.

cdef extern from *:
    """
    /* Lamb's first pass, per element: restrict pointers spare the loop the reloads that
       possible aliasing forces (about half its time). */
    #define CBN_LAMB_MOMENTS(NAME, T, SQRT)                                                    \
    static void NAME(const T* restrict grad, T* restrict m, T* restrict v,       \
                                  T* restrict u, Py_ssize_t n, T cl, T b1, T c1, T b2, T c2,  \
                                  T bc1, T bc2, T e) {                                        \
        Py_ssize_t k;                                                                         \
        for (k = 0; k < n; k++) {                                                             \
            T g = grad[k] / cl;                                                               \
            T mk = m[k] * b1 + g * c1;                                                        \
            T vk = v[k] * b2 + (g * g) * c2;                                                  \
            m[k] = mk;                                                                        \
            v[k] = vk;                                                                        \
            u[k] = (mk / bc1) / (SQRT(vk) / bc2 + e);                                         \
        }                                                                                     \
    }
    CBN_LAMB_MOMENTS(cbn_lamb_moments_f32, float, sqrtf)
    CBN_LAMB_MOMENTS(cbn_lamb_moments_f64, double, sqrt)
    """
    void cbn_lamb_moments_f32(const float*, float*, float*, float*, Py_ssize_t, float, float,
                              float, float, float, float, float, float) nogil
    void cbn_lamb_moments_f64(const double*, double*, double*, double*, Py_ssize_t, double,
                              double, double, double, double, double, double, double) nogil


cdef inline floating _sign(floating x) noexcept nogil:
    """1, -1, or x itself (0, or NaN, which stays NaN as numpy's sign keeps it)."""
    return 1 if x > 0 else (-1 if x < 0 else x)


def lion_update(floating[::1] theta, const floating[::1] grad, floating[::1] m, double lr,
                double beta1, double beta2, double decay, Py_ssize_t n_weights):
    """theta[:n_weights] *= decay (1 - lr weight_decay); theta -= lr sign(beta1 m +
    (1 - beta1) g); m = beta2 m + (1 - beta2) g; one pass. Sizes checked by the caller."""
    cdef Py_ssize_t k, n = theta.shape[0]
    cdef floating b1 = <floating>beta1, c1 = <floating>(1 - beta1)
    cdef floating b2 = <floating>beta2, c2 = <floating>(1 - beta2)
    cdef floating step = <floating>lr, shrink = <floating>decay, t, mk, gk
    with nogil:
        for k in range(n):
            t, mk, gk = theta[k], m[k], grad[k]
            if k < n_weights:
                t = t * shrink
            theta[k] = t - _sign(mk * b1 + gk * c1) * step
            m[k] = mk * b2 + gk * c2


def lamb_update(floating[::1] theta, const floating[::1] grad, floating[::1] m,
                floating[::1] v, floating[::1] u, double lr, double beta1, double beta2,
                double eps, double weight_decay, double clip, double bias1, double bias2_root,
                const int64_t[::1] ends, bint adapt, bint trust_clip):
    """Lamb's step (cbn.optim.Lamb) in two passes: the moments, the update u (decay
    included) and the norms of each weight tensor (``ends``: where each ends; the weights
    are theta[:ends[-1]]), then theta -= lr r u with each tensor's trust ratio r (1 outside
    the weights, or without ``adapt``). Sizes checked by the caller."""
    cdef Py_ssize_t k, t, start = 0, n = theta.shape[0], tensors = ends.shape[0]
    cdef floating b1 = <floating>beta1, c1 = <floating>(1 - beta1)
    cdef floating b2 = <floating>beta2, c2 = <floating>(1 - beta2)
    cdef floating e = <floating>eps, wd = <floating>weight_decay, cl = <floating>clip
    cdef floating bc1 = <floating>bias1, bc2 = <floating>bias2_root, step = <floating>lr
    cdef floating uk, r
    cdef double w_norm, u_norm, ratio
    with nogil:
        if floating is float:
            cbn_lamb_moments_f32(&grad[0], &m[0], &v[0], &u[0], n, cl, b1, c1, b2, c2, bc1,
                                 bc2, e)
        else:
            cbn_lamb_moments_f64(&grad[0], &m[0], &v[0], &u[0], n, cl, b1, c1, b2, c2, bc1,
                                 bc2, e)
        for t in range(tensors + 1):
            r = 1
            if t < tensors:
                w_norm = 0
                u_norm = 0
                for k in range(start, ends[t]):
                    if wd != 0:
                        u[k] = u[k] + theta[k] * wd
                    w_norm += <double>theta[k] * theta[k]
                    u_norm += <double>u[k] * u[k]
                if adapt:
                    w_norm, u_norm = sqrt(w_norm), sqrt(u_norm)
                    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                    if trust_clip and ratio > 1:
                        ratio = 1
                    r = <floating>ratio
            for k in range(start, ends[t] if t < tensors else n):
                uk = u[k] * r
                theta[k] = theta[k] - uk * step
            start = ends[t] if t < tensors else n

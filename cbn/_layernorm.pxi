# Layer normalisation: each sample normalised over its features (biased variance, batch
# norm's eps), then a per-feature affine map; the same in training and evaluation. Included
# by _ops.pyx.

cdef int _ln_fwd(int n, int m, const floating* A, const floating* gamma,
                 const floating* beta, floating eps, floating* inv_std, floating* Shat,
                 floating* Z) noexcept nogil:
    """Per row i: mean and biased var over its m values, inv_std[i] = 1/sqrt(var + eps),
    Shat = (A - mean) inv_std, Z = gamma Shat + beta. Z may alias A. Returns 1 if a mean or
    variance is not finite, else 0."""
    cdef Py_ssize_t i, j
    cdef floating mean, var, t, inv
    cdef const floating* a
    cdef floating* sh
    cdef floating* z
    cdef int bad = 0
    for i in range(n):
        a = A + i * m
        sh = Shat + i * m
        z = Z + i * m
        mean = 0
        for j in range(m):
            mean += a[j]
        mean /= m
        var = 0
        for j in range(m):  # on centred values, as batch norm's
            t = a[j] - mean
            var += t * t
        var /= m
        inv = 1 / sqrt(var + eps)
        inv_std[i] = inv
        bad |= (mean - mean + var - var) != 0
        for j in range(m):
            sh[j] = (a[j] - mean) * inv
        for j in range(m):
            z[j] = gamma[j] * sh[j] + beta[j]
    return bad


cdef void _ln_bwd(int n, int m, const floating* dZ, const floating* Shat,
                  const floating* gamma, const floating* inv_std, floating* dgamma,
                  floating* dbeta, floating* dA) noexcept nogil:
    """dgamma = sum over rows dZ Shat;  dbeta = sum over rows dZ;  per row, with
    D = dZ gamma: dA = inv_std (D - mean(D) - Shat mean(D Shat)), means over the row's
    features. dA may alias dZ."""
    cdef Py_ssize_t i, j
    cdef floating s1, s2, d, inv_m = (<floating>1) / m
    cdef const floating* dz
    cdef const floating* sh
    cdef floating* da
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
        da = dA + i * m
        s1 = 0
        s2 = 0
        for j in range(m):
            d = dz[j] * gamma[j]
            s1 += d
            s2 += d * sh[j]
        s1 *= inv_m
        s2 *= inv_m
        for j in range(m):
            da[j] = inv_std[i] * (dz[j] * gamma[j] - s1 - sh[j] * s2)


# The op: its arrays in the order layer_norm_op lists them.
cdef enum:
    LN_SHAT, LN_INV_STD, LN_GAMMA, LN_BETA, LN_DGAMMA, LN_DBETA


cdef int _ln_forward_op(const OpContext* c, const floating* A, floating* out,
                        floating** buf, const double* arg) noexcept nogil:
    return _ln_fwd(c.n, c.m, A, buf[LN_GAMMA], buf[LN_BETA], <floating>c.eps,
                   buf[LN_INV_STD], buf[LN_SHAT], out)


cdef int _ln_backward_op(const OpContext* c, floating* G, const floating* out,
                         floating** buf, const double* arg) noexcept nogil:
    cdef int bad = 0
    _ln_bwd(c.n, c.m, G, buf[LN_SHAT], buf[LN_GAMMA], buf[LN_INV_STD], buf[LN_DGAMMA],
            buf[LN_DBETA], G)
    if c.update:
        bad |= _sgd_update(c.m, buf[LN_GAMMA], buf[LN_DGAMMA], <floating*>NULL,
                           <floating>c.lr, <floating>0, <floating>0)
        bad |= _sgd_update(c.m, buf[LN_BETA], buf[LN_DBETA], <floating*>NULL,
                           <floating>c.lr, <floating>0, <floating>0)
    return bad


cdef OpKernels _LAYER_NORM = OpKernels(_ln_forward_op[float], _ln_backward_op[float],
                                       _ln_forward_op[double], _ln_backward_op[double])


def layer_norm_op(*, out, Shat, inv_std, gamma, beta, dgamma, dbeta):
    """Z = gamma (A - mean) / sqrt(var + eps) + beta with each row's own mean and var.
    ``out`` and ``Shat`` are (cap, m) workspaces, ``inv_std`` (cap,), the rest (m,)."""
    return _op_spec("layer_norm", _LAYER_NORM, out,
                    (("Shat", Shat, BATCH), ("inv_std", inv_std, SAMPLE),
                     ("gamma", gamma, FEATURE), ("beta", beta, FEATURE),
                     ("dgamma", dgamma, FEATURE), ("dbeta", dbeta, FEATURE)), (), False, False)


def ln_forward(const floating[:, ::1] A, const floating[::1] gamma, const floating[::1] beta,
               double eps, floating[::1] inv_std, floating[:, ::1] Shat, floating[:, ::1] Z):
    """Returns True if a row's mean or variance is not finite."""
    cdef int bad
    with nogil:
        bad = _ln_fwd(A.shape[0], A.shape[1], &A[0, 0], &gamma[0], &beta[0], <floating>eps,
                      &inv_std[0], &Shat[0, 0], &Z[0, 0])
    return bool(bad)


def ln_backward(const floating[:, ::1] dZ, const floating[:, ::1] Shat,
                const floating[::1] gamma, const floating[::1] inv_std,
                floating[::1] dgamma, floating[::1] dbeta, floating[:, ::1] dA):
    with nogil:
        _ln_bwd(dZ.shape[0], dZ.shape[1], &dZ[0, 0], &Shat[0, 0], &gamma[0], &inv_std[0],
                &dgamma[0], &dbeta[0], &dA[0, 0])

# Batch normalisation (with and without a fused ReLU), in training and evaluation mode, and
# the running statistics. Included by _ops.pyx.

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

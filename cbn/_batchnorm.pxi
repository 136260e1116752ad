# Batch normalisation (with and without a fused ReLU: one kernel each, with a flag), in
# training and evaluation mode, the running statistics, and the op. Included by _ops.pyx.

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


cdef inline int _bn_fwd_train(bint relu, int n, int m, const floating* S,
                              const floating* gamma, const floating* beta, floating eps,
                              floating* mean, floating* var, floating* inv_std,
                              floating* Shat, floating* H, uint16_t* H16) noexcept nogil:
    """Batch statistics (``_batch_stats``);  Shat = (S - mean) inv_std;
    H = gamma Shat + beta, then max(0, H) with ``relu``, and H rounded to bf16 into ``H16``
    unless it is NULL (float32 only). Returns _batch_stats' flag.
    ``relu`` is a constant where the plan calls it: the compiler folds it away."""
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
            if relu:
                h[j] = 0 if z <= 0 else z  # NaN stays NaN, for the finiteness checks
            else:
                h[j] = z
        if floating is float:
            if H16 != NULL:  # the row is still in L1
                cbn_round_bf16(h, H16 + i * m, m)
    return bad


cdef inline void _bn_bwd(bint relu, int n, int m, const floating* dH, const floating* H,
                         const floating* Shat, const floating* gamma,
                         const floating* inv_std, floating* dgamma, floating* dbeta,
                         floating* dS, uint16_t* dS16) noexcept nogil:
    """dZ = dH, times [H > 0] with ``relu``;  dgamma = sum dZ Shat;  dbeta = sum dZ;
    dS = gamma inv_std (dZ - dbeta/n - Shat dgamma/n), and dS rounded to bf16 into ``dS16``
    unless it is NULL (float32 only).  dS may alias dH; H is not read without ``relu``."""
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
            if relu:
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
            if relu:
                g = g if h[j] > 0 else 0
            ds[j] = gamma[j] * inv_std[j] * (g - (dbeta[j] + sh[j] * dgamma[j]) * inv_n)
        if floating is float:
            if dS16 != NULL:
                cbn_round_bf16(ds, dS16 + i * m, m)


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


cdef inline int _affine(bint relu, int n, int m, const floating* S,
                        const floating* scale, const floating* shift,
                        floating* H, uint16_t* H16) noexcept nogil:
    """H = S scale + shift, per feature (batch norm in evaluation mode), then max(0, H) with
    ``relu``, NaN kept; H rounded to bf16 into ``H16`` too unless it is NULL (float32 only). With ``relu``, returns 1 if an input S is not finite (ReLU would map
    -inf to 0), else 0; without, 0."""
    cdef Py_ssize_t i, j, k
    cdef floating z
    cdef const floating* s
    cdef floating* h
    cdef int bad = 0
    if relu:
        for i in range(n):
            for j in range(m):
                k = i * m + j
                z = S[k] * scale[j] + shift[j]
                H[k] = 0 if z <= 0 else z
                bad |= (S[k] - S[k]) != 0
            if floating is float:
                if H16 != NULL:
                    cbn_round_bf16(H + i * m, H16 + i * m, m)
        return bad
    for i in range(n):
        s = S + i * m
        h = H + i * m
        for j in range(m):
            h[j] = s[j] * scale[j] + shift[j]
        if floating is float:
            if H16 != NULL:
                cbn_round_bf16(h, H16 + i * m, m)
    return 0


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


# The op: its arrays in the order batch_norm_op lists them.
cdef enum:
    BN_SHAT, BN_GAMMA, BN_BETA, BN_DGAMMA, BN_DBETA, BN_RMEAN, BN_RVAR, BN_MEAN, BN_VAR,
    BN_INV_STD, BN_ESCALE, BN_ESHIFT


cdef inline int _bn_forward_as(bint relu, const OpContext* c, const floating* A,
                               floating* out, floating** buf) noexcept nogil:
    cdef int bad
    if c.training:  # on the batch's statistics
        bad = _bn_fwd_train(relu, c.n, c.m, A, buf[BN_GAMMA], buf[BN_BETA], <floating>c.eps,
                            buf[BN_MEAN], buf[BN_VAR], buf[BN_INV_STD], buf[BN_SHAT], out,
                            c.out16)
        if c.update_stats:
            bad |= _running_update(c.m, buf[BN_MEAN], buf[BN_VAR], buf[BN_RMEAN],
                                   buf[BN_RVAR], <floating>c.alpha, <floating>c.var_factor,
                                   c.first)
        return bad
    # on the running statistics
    bad = _bn_eval_affine(c.m, buf[BN_GAMMA], buf[BN_BETA], buf[BN_RMEAN], buf[BN_RVAR],
                          <floating>c.eps, buf[BN_ESCALE], buf[BN_ESHIFT])
    return bad | _affine(relu, c.n, c.m, A, buf[BN_ESCALE], buf[BN_ESHIFT], out, c.out16)


cdef inline int _bn_backward_as(bint relu, const OpContext* c, floating* G,
                                const floating* out, floating** buf) noexcept nogil:
    cdef int bad = 0
    _bn_bwd(relu, c.n, c.m, G, out, buf[BN_SHAT], buf[BN_GAMMA], buf[BN_INV_STD],
            buf[BN_DGAMMA], buf[BN_DBETA], G, c.grad16)
    if c.update:
        bad |= _sgd_update(c.m, buf[BN_GAMMA], buf[BN_DGAMMA], <floating*>NULL,
                           <floating>c.lr, <floating>0, <floating>0)
        bad |= _sgd_update(c.m, buf[BN_BETA], buf[BN_DBETA], <floating*>NULL,
                           <floating>c.lr, <floating>0, <floating>0)
    return bad


cdef int _bn_forward_op(const OpContext* c, const floating* A, floating* out,
                        floating** buf, const double* arg) noexcept nogil:
    return _bn_forward_as(False, c, A, out, buf)


cdef int _bn_backward_op(const OpContext* c, floating* G, const floating* out,
                         floating** buf, const double* arg) noexcept nogil:
    return _bn_backward_as(False, c, G, out, buf)


cdef int _bn_relu_forward_op(const OpContext* c, const floating* A, floating* out,
                             floating** buf, const double* arg) noexcept nogil:
    return _bn_forward_as(True, c, A, out, buf)


cdef int _bn_relu_backward_op(const OpContext* c, floating* G, const floating* out,
                              floating** buf, const double* arg) noexcept nogil:
    return _bn_backward_as(True, c, G, out, buf)


cdef OpKernels _BATCH_NORM = OpKernels(_bn_forward_op[float], _bn_backward_op[float],
                                       _bn_forward_op[double], _bn_backward_op[double])
cdef OpKernels _BATCH_NORM_RELU = OpKernels(
    _bn_relu_forward_op[float], _bn_relu_backward_op[float],
    _bn_relu_forward_op[double], _bn_relu_backward_op[double])


def batch_norm_op(*, out, Shat, gamma, beta, dgamma, dbeta, rmean, rvar, mean, var, inv_std,
                  escale, eshift, bint relu=False):
    """Z = gamma (A - mean) / sqrt(var + eps) + beta, then max(0, Z) with ``relu`` (the
    fused kernel). ``out`` and ``Shat`` are (cap, m) workspaces, the rest (m,) vectors."""
    cdef OpKernels kernels = _BATCH_NORM_RELU if relu else _BATCH_NORM
    return _op_spec("batch_norm_relu" if relu else "batch_norm", kernels, out,
                    (("Shat", Shat, BATCH), ("gamma", gamma, FEATURE), ("beta", beta, FEATURE),
                     ("dgamma", dgamma, FEATURE), ("dbeta", dbeta, FEATURE),
                     ("rmean", rmean, FEATURE), ("rvar", rvar, FEATURE),
                     ("mean", mean, FEATURE), ("var", var, FEATURE),
                     ("inv_std", inv_std, FEATURE), ("escale", escale, FEATURE),
                     ("eshift", eshift, FEATURE)), (), relu, False, True)


def bn_forward_train(const floating[:, ::1] S, const floating[::1] gamma,
                     const floating[::1] beta, double eps, floating[::1] mean,
                     floating[::1] var, floating[::1] inv_std, floating[:, ::1] Shat,
                     floating[:, ::1] Z, bint relu=False):
    """Returns True if a batch mean or variance is not finite."""
    cdef int bad
    with nogil:
        bad = _bn_fwd_train(relu, S.shape[0], S.shape[1], &S[0, 0], &gamma[0], &beta[0],
                            <floating>eps, &mean[0], &var[0], &inv_std[0], &Shat[0, 0],
                            &Z[0, 0], NULL)
    return bool(bad)


def bn_forward_eval(const floating[:, ::1] S, const floating[::1] gamma,
                    const floating[::1] beta, const floating[::1] running_mean,
                    const floating[::1] running_var, double eps, floating[::1] scale,
                    floating[::1] shift, floating[:, ::1] Z, bint relu=False):
    with nogil:
        _bn_eval_affine(S.shape[1], &gamma[0], &beta[0], &running_mean[0], &running_var[0],
                        <floating>eps, &scale[0], &shift[0])
        _affine(relu, S.shape[0], S.shape[1], &S[0, 0], &scale[0], &shift[0], &Z[0, 0], NULL)


def bn_backward(const floating[:, ::1] dZ, const floating[:, ::1] H,
                const floating[:, ::1] Shat, const floating[::1] gamma,
                const floating[::1] inv_std, floating[::1] dgamma, floating[::1] dbeta,
                floating[:, ::1] dS, bint relu=False):
    """With ``relu``, dZ is the gradient w.r.t. the ReLU's output H; without, H is unused."""
    with nogil:
        _bn_bwd(relu, dZ.shape[0], dZ.shape[1], &dZ[0, 0], &H[0, 0], &Shat[0, 0], &gamma[0],
                &inv_std[0], &dgamma[0], &dbeta[0], &dS[0, 0], NULL)


def running_stats_update(const floating[::1] mean, const floating[::1] var,
                         floating[::1] running_mean, floating[::1] running_var,
                         double alpha, double var_factor, bint first):
    with nogil:
        _running_update(mean.shape[0], &mean[0], &var[0], &running_mean[0], &running_var[0],
                        <floating>alpha, <floating>var_factor, first)

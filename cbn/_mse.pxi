# The squared-error loss (torch.nn.MSELoss(): the mean over every output of every sample),
# with the sample weights of _softmax.pxi. Included by _ops.pyx after it.

cdef void _squared_error(int n, int K, const floating* Z, const floating* T,
                         const int64_t* yidx, const double* w, double inv_n, floating* G,
                         floating* P, double* loss, int64_t* correct) noexcept nogil:
    """Per row i with target row t = T[yidx[i]] (T[i] if yidx is NULL):
    l_i = sum (Z - t)^2 / K;  correct += (argmax Z == argmax t);  P = Z (the raw outputs);
    G = 2 (Z - t) c_i / K, with c_i = inv_n and loss = sum l_i, or with sample weights w
    (indexed as T's rows) c_i = w_i / sum w and loss = n sum w_i l_i / sum w.
    T, w, G and P may be NULL (without T: P only); G may alias Z."""
    cdef Py_ssize_t i, j, arg, arg_t
    cdef const floating* z
    cdef const floating* t
    cdef double d, li, c = inv_n, wi = 1, inv_w = 0, mx, mt
    loss[0] = 0
    correct[0] = 0
    if w != NULL and T != NULL:
        inv_w = _inverse_weight_sum(n, w, yidx)
    for i in range(n):
        z = Z + i * K
        if P != NULL:
            for j in range(K):
                P[i * K + j] = z[j]
        if T == NULL:
            continue
        t = T + (yidx[i] if yidx != NULL else i) * K
        if w != NULL:
            wi = w[yidx[i]] if yidx != NULL else w[i]
            c = wi * inv_w
        li = 0
        arg = arg_t = 0
        mx, mt = z[0], t[0]
        for j in range(K):
            if z[j] > mx:
                mx, arg = z[j], j
            if t[j] > mt:
                mt, arg_t = t[j], j
            d = <double>z[j] - t[j]
            li += d * d
            if G != NULL:
                G[i * K + j] = <floating>(2 * d * c / K)
        li /= K
        loss[0] += li if w == NULL else wi * li
        correct[0] += arg == arg_t
    if w != NULL and T != NULL:
        loss[0] *= n * inv_w


def squared_error(const floating[:, ::1] Z, const floating[:, ::1] T=None,
                  floating[:, ::1] G=None, const double[::1] sample_weight=None):
    """Returns (n times the mean loss, number whose argmax matches the target's); fills G
    when given."""
    cdef double loss
    cdef int64_t correct
    cdef const floating* pt = NULL if T is None else &T[0, 0]
    cdef const double* pw = NULL if sample_weight is None else &sample_weight[0]
    cdef floating* pg = NULL if G is None else &G[0, 0]
    with nogil:
        _squared_error(Z.shape[0], Z.shape[1], &Z[0, 0], pt, NULL, pw, 1.0 / Z.shape[0], pg,
                       <floating*>NULL, &loss, &correct)
    return loss, correct

# Softmax with cross-entropy: loss, accuracy, probabilities and the logits' gradient, and
# the sample weights both losses share. Included by _ops.pyx.

cdef inline double _inverse_weight_sum(int n, const double* w,
                                       const int64_t* yidx) noexcept nogil:
    """1 / the sum of the batch's sample weights w[yidx[i]] (w[i] if yidx is NULL); 0 if
    they are all 0 (such a batch then scores 0, with zero gradients)."""
    cdef Py_ssize_t i
    cdef double total = 0
    for i in range(n):
        total += w[yidx[i]] if yidx != NULL else w[i]
    return 1 / total if total > 0 else 0


cdef void _softmax_xent(int n, int K, const floating* Z, const int64_t* y,
                        const int64_t* yidx, const double* w, double smoothing,
                        const double* mix, double inv_n, floating* G, floating* P,
                        double* loss, int64_t* correct) noexcept nogil:
    """Cross-entropy against the target distribution q = (1 - smoothing) onehot(t) +
    smoothing / K, per row i with label t = y[yidx[i]] (y[i] if yidx is NULL), or with
    ``mix`` (mixup: row i mixed with its partner, row n - 1 - i, of label t2) against
    q = mix[i] q(t) + (1 - mix[i]) q(t2) = (1 - smoothing) (mix[i] onehot(t) +
    (1 - mix[i]) onehot(t2)) + smoothing / K; mix NULL is the case mix[i] = 1:
    lse = log sum exp Z (shifted by the row max);  l_i = lse - sum q Z;
    correct += (argmax Z == t) (the first label);  P = exp(Z - lse);  G = (P - q) c_i, with c_i = inv_n and
    loss = sum l_i, or with sample weights w (indexed as y) c_i = w_i / sum w and
    loss = n sum w_i l_i / sum w (n times the weighted mean).
    y, w, G and P may be NULL; G or P may alias Z. The loss is NaN if a Z is not finite
    (an infinite logit can give finite probabilities)."""
    cdef Py_ssize_t i, j, arg
    cdef int64_t t = -1, t2 = -1
    cdef const floating* z
    cdef floating* out
    cdef double mx, s, zt = 0, e, inv_s, spread = 0, sum_z, li, c = inv_n, wi = 1, inv_w = 0
    cdef double hit = 1 - smoothing, uniform = smoothing / K, hit_t = hit, hit_t2 = 0, zt2 = 0
    loss[0] = 0
    correct[0] = 0
    if w != NULL:
        inv_w = _inverse_weight_sum(n, w, yidx)
    # The labels of shuffled rows lie all over y, out of cache after the first layer's work:
    # ask for all of them at once rather than wait for each in turn (docs/benchmarks.md).
    if y != NULL and yidx != NULL:
        for i in range(n):
            __builtin_prefetch(&y[yidx[i]], 0, 3)
    for i in range(n):
        z = Z + i * K
        mx = z[0]
        arg = 0
        for j in range(1, K):
            if z[j] > mx:
                mx = z[j]
                arg = j
        if y != NULL:
            t = y[yidx[i]] if yidx != NULL else y[i]
            zt = z[t]  # read before G or P, which may alias Z, overwrite it
            if mix != NULL:
                t2 = y[yidx[n - 1 - i]] if yidx != NULL else y[n - 1 - i]
                zt2 = z[t2]
                hit_t, hit_t2 = hit * mix[i], hit * (1 - mix[i])
        # One exp per entry: exp(z - mx) is kept (in P, else G) and divided by the sum.
        out = P + i * K if P != NULL else (G + i * K if G != NULL else NULL)
        s = 0
        sum_z = 0
        for j in range(K):
            spread += z[j] - z[j]  # 0 unless some z is NaN or infinite
            sum_z += z[j]
            e = exp(z[j] - mx)
            s += e
            if out != NULL:
                out[j] = <floating>e
        if y != NULL:
            if w != NULL:
                wi = w[yidx[i]] if yidx != NULL else w[i]
                c = wi * inv_w
            if mix != NULL:
                li = mx + log(s) - (hit_t * zt + hit_t2 * zt2 + uniform * sum_z)
            else:
                li = mx + log(s) - zt if smoothing == 0 else \
                    mx + log(s) - (hit * zt + uniform * sum_z)
            loss[0] += li if w == NULL else wi * li
            correct[0] += (arg == t)
        if out != NULL:
            inv_s = 1 / s
            for j in range(K):
                e = out[j] * inv_s
                if P != NULL:
                    P[i * K + j] = <floating>e
                if G != NULL:
                    if j == t:
                        e -= hit_t
                    if j == t2:
                        e -= hit_t2
                    G[i * K + j] = <floating>((e - uniform) * c)
    if w != NULL:
        loss[0] *= n * inv_w
    if spread != 0:
        loss[0] = NAN


def softmax_cross_entropy(const floating[:, ::1] Z, const int64_t[::1] y=None,
                          floating[:, ::1] G=None, floating[:, ::1] P=None,
                          double label_smoothing=0, const double[::1] sample_weight=None,
                          const double[::1] mix=None):
    """Returns (n times the mean loss, number correct); fills G and P when given. mix: each
    row's share of its own label, mixed with its partner's (``_softmax_xent``), or None;
    checked by the caller."""
    cdef double loss
    cdef int64_t correct
    cdef const int64_t* py = NULL if y is None else &y[0]
    cdef const double* pw = NULL if sample_weight is None else &sample_weight[0]
    cdef floating* pg = NULL if G is None else &G[0, 0]
    cdef floating* pp = NULL if P is None else &P[0, 0]
    cdef const double* pm = NULL if mix is None else &mix[0]
    if mix is not None and (y is None or mix.shape[0] != Z.shape[0]):
        raise ValueError("mix needs labels and one value per row of Z")
    with nogil:
        _softmax_xent(Z.shape[0], Z.shape[1], &Z[0, 0], py, NULL, pw, label_smoothing, pm,
                      1.0 / Z.shape[0], pg, pp, &loss, &correct)
    return loss, correct

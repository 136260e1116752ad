# GELU, the exact form x Phi(x) (torch.nn.GELU()). Included by _ops.pyx.

# In float32 the loop runs on glibc's vector erff and expf (libmvec, which setup.py links
# when it has them: CBN_MVEC), the widest the CPU has: a scalar erf costs as much as the
# rest of a small network's step. float64 keeps libm's scalar erf and exp.
cdef extern from *:
    """
    #if defined(CBN_MVEC) && defined(_OPENMP) && defined(__GNUC__) && __GNUC__ >= 6 \
        && !defined(__clang__) && defined(__x86_64__)
    #include <math.h>
    __attribute__((simd("notinbranch"))) float erff(float);
    __attribute__((simd("notinbranch"))) float expf(float);
    #define CBN_GELU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #define CBN_GELU_SIMD _Pragma("omp simd reduction(|:bad)")
    #else
    #define CBN_GELU_CLONES
    #define CBN_GELU_SIMD
    #endif
    /* h = a Phi(a); with s (else NULL) also Phi(a) + a phi(a); 1 if an a is not finite. */
    CBN_GELU_CLONES static int cbn_gelu_f32(const float* a, float* h, float* s,
                                             Py_ssize_t n) {
        Py_ssize_t k;
        int bad = 0;
        if (s == NULL) {
            CBN_GELU_SIMD
            for (k = 0; k < n; k++) {
                float x = a[k];
                bad |= (x - x) != 0;
                h[k] = x * (0.5f * (1.0f + erff(x * 0.70710678118654752f)));
            }
            return bad;
        }
        CBN_GELU_SIMD
        for (k = 0; k < n; k++) {
            float x = a[k];
            float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
            bad |= (x - x) != 0;
            s[k] = cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
            h[k] = x * cdf;
        }
        return bad;
    }
    """
    int cbn_gelu_f32(const float* a, float* h, float* s, Py_ssize_t n) nogil

cdef int _gelu(Py_ssize_t size, const floating* A, floating* H, floating* slope) noexcept nogil:
    """H = A Phi(A) with Phi(x) = (1 + erf(x / sqrt 2)) / 2; with ``slope`` (else NULL) also
    its derivative Phi(A) + A phi(A), for the backward pass. H may alias A. Returns 1 if an A
    is not finite (GELU maps -inf to NaN, +inf to inf: kept visible), else 0."""
    cdef Py_ssize_t k
    cdef double a, cdf
    cdef int bad = 0
    if floating is float:
        bad = cbn_gelu_f32(A, H, slope, size)
    else:
        for k in range(size):
            a = A[k]
            bad |= (a - a) != 0
            cdf = 0.5 * (1 + erf(a * 0.7071067811865476))
            if slope != NULL:
                slope[k] = cdf + a * 0.3989422804014327 * exp(-0.5 * a * a)
            H[k] = a * cdf
    return bad


cdef int _gelu_forward_op(const OpContext* c, const floating* A, floating* out,
                          floating** buf, const double* arg) noexcept nogil:
    return _gelu(<Py_ssize_t>c.n * c.m, A, out, buf[0] if c.training else NULL)


cdef int _gelu_backward_op(const OpContext* c, floating* G, const floating* out,
                           floating** buf, const double* arg) noexcept nogil:
    cdef Py_ssize_t k
    cdef const floating* slope = buf[0]
    for k in range(<Py_ssize_t>c.n * c.m):
        G[k] *= slope[k]
    return 0


cdef OpKernels _GELU = OpKernels(_gelu_forward_op[float], _gelu_backward_op[float],
                                 _gelu_forward_op[double], _gelu_backward_op[double])


def gelu_op(out, slope):
    """H = GELU(A); ``out`` (cap, m) receives H, ``slope`` (cap, m) its derivative."""
    return _op_spec("gelu", _GELU, out, (("slope", slope, BATCH),), (), False, False)


def gelu_forward(const floating[:, ::1] A, floating[:, ::1] H, floating[:, ::1] slope):
    """Returns True if an input is not finite."""
    cdef int bad
    with nogil:
        bad = _gelu(A.shape[0] * A.shape[1], &A[0, 0], &H[0, 0], &slope[0, 0])
    return bool(bad)

# The mini-batch gather: rows picked from the stored images, standardised and optionally
# augmented on the way. Included by _ops.pyx after _dropout.pxi (its hash).

ctypedef fused source_t:
    uint8_t
    float
    double


# The gather's plain loop, (x - shift) scale and the finite check in one pass over a row,
# written in C so that GCC compiles it also for AVX2 and AVX-512 and runs the widest the CPU
# has (function multiversioning, picked when the module loads): one portable build that uses
# the vector width of the machine it runs on. Elsewhere, the plain loop.
cdef extern from *:
    """
    /* GCC 6+ on x86-64 glibc (the clones are chosen through an ifunc, which musl lacks). */
    #if defined(__GNUC__) && __GNUC__ >= 6 && !defined(__clang__) && defined(__x86_64__) \
        && defined(__linux__) && defined(__GLIBC__)
    #define CBN_WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CBN_WIDEST_VECTORS
    #endif
    /* o[j] = (row[j] - shift[j]) scale[j] for j < n; 1 if any is NaN or infinite, else 0.
       ``next`` (the same columns of the next row to gather, or NULL) is asked for one cache
       line per line of ``row`` converted: its misses overlap the work, where asking for the
       whole row at once stalls until the core can track that many misses. */
    #define CBN_STANDARDISE(NAME, SRC, DST)                                              \
    CBN_WIDEST_VECTORS static int NAME(const SRC* row, const DST* shift, const DST* scale, \
                                       DST* o, Py_ssize_t n, const SRC* next) {         \
        const Py_ssize_t line = 64 / sizeof(SRC);                                        \
        Py_ssize_t j, k, end;                                                            \
        int bad = 0;                                                                     \
        for (k = 0; k < n; k += line) {                                                  \
            if (next) __builtin_prefetch(next + k, 0, 2);                                \
            end = k + line < n ? k + line : n;                                           \
            for (j = k; j < end; j++) {                                                  \
                DST v = ((DST)row[j] - shift[j]) * scale[j];                             \
                o[j] = v;                                                                \
                bad |= (v - v) != 0;                                                     \
            }                                                                            \
        }                                                                                \
        return bad;                                                                      \
    }
    CBN_STANDARDISE(cbn_standardise_u8_f32, uint8_t, float)
    CBN_STANDARDISE(cbn_standardise_u8_f64, uint8_t, double)
    CBN_STANDARDISE(cbn_standardise_f32_f32, float, float)
    CBN_STANDARDISE(cbn_standardise_f32_f64, float, double)
    CBN_STANDARDISE(cbn_standardise_f64_f32, double, float)
    CBN_STANDARDISE(cbn_standardise_f64_f64, double, double)
    """
    int cbn_standardise_u8_f32(const uint8_t*, const float*, const float*, float*,
                               Py_ssize_t, const void*) nogil
    int cbn_standardise_u8_f64(const uint8_t*, const double*, const double*, double*,
                               Py_ssize_t, const void*) nogil
    int cbn_standardise_f32_f32(const float*, const float*, const float*, float*,
                                Py_ssize_t, const void*) nogil
    int cbn_standardise_f32_f64(const float*, const double*, const double*, double*,
                                Py_ssize_t, const void*) nogil
    int cbn_standardise_f64_f32(const double*, const float*, const float*, float*,
                                Py_ssize_t, const void*) nogil
    int cbn_standardise_f64_f64(const double*, const double*, const double*, double*,
                                Py_ssize_t, const void*) nogil


cdef inline int _standardise(const source_t* row, const floating* shift,
                             const floating* scale, floating* o, Py_ssize_t n,
                             const source_t* next) noexcept nogil:
    """o[j] = (row[j] - shift[j]) scale[j] for j < n, prefetching ``next`` (NULL: none);
    1 if any is NaN or infinite, else 0."""
    if source_t is uint8_t:
        if floating is float:
            return cbn_standardise_u8_f32(row, shift, scale, o, n, next)
        else:
            return cbn_standardise_u8_f64(row, shift, scale, o, n, next)
    elif source_t is float:
        if floating is float:
            return cbn_standardise_f32_f32(row, shift, scale, o, n, next)
        else:
            return cbn_standardise_f32_f64(row, shift, scale, o, n, next)
    else:
        if floating is float:
            return cbn_standardise_f64_f32(row, shift, scale, o, n, next)
        else:
            return cbn_standardise_f64_f64(row, shift, scale, o, n, next)


# Augmentation happens inside the gather, so it costs no extra pass over the batch and no
# buffer: each output pixel reads its (flipped, translated) source pixel directly. Draws come
# from the dropout hash keyed by (seed, step, sample), so a run and its resume repeat them.

cdef struct AugmentSpec:
    bint flip        # mirror each image left-right with probability 1/2
    int shift        # translate by up to +-shift pixels in each direction
    double noise     # std of the Gaussian jitter added to every standardised value
    int C, H, W      # image layout: feature index = c H W + row W + col
    uint64_t seed    # draws of sample i of step s: keyed by (seed, s, AUGMENT_SAMPLE | i)
    uint64_t step


cdef uint64_t _AUGMENT_SAMPLE = 1ULL << 63  # sample streams apart from dropout's layer streams


cdef inline uint64_t _augment_key(uint64_t seed, uint64_t step, uint64_t sample) noexcept nogil:
    """One 64-bit key per (seed, step, sample): flip = bit 0, dy from bits 8-23, dx from bits
    24-39 (each mod 2 shift + 1, minus shift), the jitter from the key itself."""
    return _dropout_key(seed, step, _AUGMENT_SAMPLE | sample)


cdef inline double _normal(uint32_t lo, uint32_t hi, uint32_t j) noexcept nogil:
    """Standard normal draw j of a key: Box-Muller's cosine on the hashes of 2j and 2j + 1."""
    cdef double u1 = (_hash32(_hash32((2 * j) ^ lo) ^ hi) + 1.0) * 2.3283064365386963e-10
    cdef double u2 = _hash32(_hash32((2 * j + 1) ^ lo) ^ hi) * 2.3283064365386963e-10
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)


cdef void _gather_augmented_row(const source_t* row, int j0, int j1, const AugmentSpec* aug,
                                uint64_t key, const floating* shift, const floating* scale,
                                floating* o) noexcept nogil:
    """o[j] for j0 <= j < j1: the standardised image of ``row``, flipped and translated as
    ``key`` draws (pixels from outside the image are 0, the training mean), plus jitter."""
    cdef int W = aug.W, H = aug.H, HW = aug.H * aug.W, s = aug.shift
    cdef bint flip = aug.flip and (key & 1)
    cdef int dy = <int>(((key >> 8) & 0xFFFF) % (2 * s + 1)) - s
    cdef int dx = <int>(((key >> 24) & 0xFFFF) % (2 * s + 1)) - s
    cdef int j = j0, c, r, x0, x1, x, a, b, sr, f
    cdef uint32_t lo, hi
    cdef floating* out
    while j < j1:  # one image row (or the part of it in j0..j1) at a time
        c = j // HW
        r = (j - c * HW) // W
        x0 = j - c * HW - r * W
        x1 = x0 + (j1 - j) if x0 + (j1 - j) < W else W
        out = o + j - x0  # out[x]: column x of this image row
        sr = r - dy
        # Columns a..b-1 read source column x - dx; the others come from outside the image.
        a, b = (x0 if x0 > dx else dx), (x1 if x1 < W + dx else W + dx)
        if sr < 0 or sr >= H or a >= b:
            a = b = x1
        for x in range(x0, a):
            out[x] = 0
        for x in range(b, x1):
            out[x] = 0
        if flip:
            f = c * HW + sr * W + W - 1 + dx  # source feature f - x
            for x in range(a, b):
                out[x] = (<floating>row[f - x] - shift[f - x]) * scale[f - x]
        else:
            f = c * HW + sr * W - dx          # source feature f + x
            for x in range(a, b):
                out[x] = (<floating>row[f + x] - shift[f + x]) * scale[f + x]
        j += x1 - x0
    if aug.noise > 0:
        key = _splitmix64(key)
        lo, hi = <uint32_t>key, <uint32_t>(key >> 32)
        for j in range(j0, j1):
            o[j] += <floating>(aug.noise * _normal(lo, hi, <uint32_t>j))


cdef int _gather_block(Py_ssize_t i0, Py_ssize_t i1, int n, int d, int j0, int j1,
                       const source_t* src, const int64_t* idx, const floating* shift,
                       const floating* scale, const AugmentSpec* aug,
                       floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - shift[j]) scale[j] for rows i0 <= i < i1 (of n) and
    columns j0 <= j < j1 (of d), on the calling thread; augmented per row i if ``aug``.
    Returns 1 if a value written is NaN or infinite, else 0."""
    cdef Py_ssize_t i, j
    cdef int bad = 0
    cdef Py_ssize_t span = <Py_ssize_t>(j1 - j0) * sizeof(source_t)
    cdef const source_t* row
    cdef const source_t* nxt
    cdef floating* o
    for i in range(i0, i1):
        # The rows are scattered over the whole data set, so each one starts with cache
        # misses: ask for the next row while converting this one, a line at a time in the
        # plain loop, all at once before an augmented row (docs/benchmarks.md).
        nxt = src + idx[i + 1] * d + j0 if i + 1 < n else NULL
        if aug != NULL and nxt != NULL:
            for j in range(0, span, 64):
                __builtin_prefetch(<const char*>nxt + j, 0, 0)
        row = src + idx[i] * d
        o = out + i * d
        # Inputs are checked here, as they are read, rather than by a pass over the whole
        # data set before training: the row is in L1, the check is nearly free.
        if aug != NULL:
            _gather_augmented_row(row, j0, j1, aug, _augment_key(aug.seed, aug.step, i),
                                  shift, scale, o)
            bad |= _not_finite(j1 - j0, o + j0)
        else:
            bad |= _standardise(row + j0, shift + j0, scale + j0, o + j0, j1 - j0, nxt)
    return bad


cdef int _gather(int n, int d, int j0, int j1, bint parallel, const source_t* src,
                 const int64_t* idx, const floating* shift, const floating* scale,
                 const AugmentSpec* aug, floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - shift[j]) scale[j] for columns j0..j1-1: mini-batch rows
    straight from the stored images (uint8 or float), standardised on the fly, augmented if
    ``aug`` is not NULL; rows split over the threads if ``parallel``, else all on the
    calling thread. Returns 1 if a value written is NaN or infinite (a non-finite input,
    or one that overflows once standardised), else 0."""
    cdef Py_ssize_t i
    cdef int bad = 0
    if not parallel:
        return _gather_block(0, n, n, d, j0, j1, src, idx, shift, scale, aug, out)
    for i in prange(n, num_threads=_threads(), schedule="static"):
        bad |= _gather_block(i, i + 1, n, d, j0, j1, src, idx, shift, scale, aug, out)
    return bad


def gather_rows(const source_t[:, ::1] src, const int64_t[::1] idx,
                const floating[::1] shift, const floating[::1] scale, floating[:, ::1] out,
                object augment=None, int j0=0, j1=None):
    """augment: None, or (flip, shift, noise, C, H, W, seed, step), checked by the caller.
    Columns j0..j1-1 only (default: all), on one thread when that is not all of them.
    Returns False if a value written is NaN or infinite."""
    cdef AugmentSpec spec
    cdef AugmentSpec* aug = NULL
    cdef int end = src.shape[1] if j1 is None else j1
    if not 0 <= j0 <= end <= src.shape[1]:
        raise ValueError(f"columns {j0}..{end} are not within the {src.shape[1]} of src")
    if augment is not None:
        (spec.flip, spec.shift, spec.noise, spec.C, spec.H, spec.W, spec.seed,
         spec.step) = augment
        if spec.C * spec.H * spec.W != src.shape[1] or spec.shift < 0:
            raise ValueError(f"augment {augment} does not fit rows of {src.shape[1]} values")
        aug = &spec
    cdef int bad
    with nogil:
        bad = _gather(idx.shape[0], src.shape[1], j0, end, j0 == 0 and end == src.shape[1],
                      &src[0, 0], &idx[0], &shift[0], &scale[0], aug, &out[0, 0])
    return not bad

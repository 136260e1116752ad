# The mini-batch gather: rows picked from the stored images, standardised and optionally
# augmented on the way. Included by _ops.pyx after _dropout.pxi (its hash).

ctypedef fused source_t:
    uint8_t
    float
    double


# The gather's plain loop, (x - mean) scale and the finite check in one pass over a row,
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
    /* o[j] = (row[j] - mean[j]) scale[j] for j < n; 1 if any is NaN or infinite, else 0.
       The mean comes as ``mean`` (float64) and as ``hi`` + ``lo`` in DST (see _split_shift);
       VALUE says which each source reads. ``next`` (the same columns of the next row to
       gather, or NULL) is asked for one cache line per line of ``row`` converted: its
       misses overlap the work, where asking for the whole row at once stalls until the core
       can track that many misses. The arguments each line reads come first (in registers)
       and restrict spares the loop its aliasing checks, which it would run on every line. */
    #define CBN_STANDARDISE(NAME, SRC, DST, VALUE)                                       \
    CBN_WIDEST_VECTORS static int NAME(const SRC* restrict row, DST* restrict o,           \
                                       Py_ssize_t n, const SRC* next,                    \
                                       const DST* restrict hi, const DST* restrict scale, \
                                       const DST* restrict lo,                           \
                                       const double* restrict mean) {                    \
        const Py_ssize_t line = 64 / sizeof(SRC);                                        \
        Py_ssize_t j, k, end;                                                            \
        int bad = 0;                                                                     \
        (void)mean; (void)lo;                                                            \
        for (k = 0; k < n; k += line) {                                                  \
            if (next) __builtin_prefetch(next + k, 0, 2);                                \
            end = k + line < n ? k + line : n;                                           \
            for (j = k; j < end; j++) {                                                  \
                DST v = VALUE;                                                           \
                o[j] = v;                                                                \
                bad |= (v - v) != 0;                                                     \
            }                                                                            \
        }                                                                                \
        return bad;                                                                      \
    }
    /* uint8 rows (|x - mean| <= 255: the mean rounded to float32 is exact enough), and any
       rows into float64 (hi is the float64 mean itself). */
    #define CBN_NEAR(DST) (((DST)row[j] - hi[j]) * scale[j])
    CBN_STANDARDISE(cbn_standardise_u8_f32, uint8_t, float, CBN_NEAR(float))
    CBN_STANDARDISE(cbn_standardise_u8_f64, uint8_t, double, CBN_NEAR(double))
    /* float32 rows in float32: (x - hi) - lo keeps x - mean to float32 precision when the
       mean is large next to the spread, where x - float32(mean) would keep only its
       rounding error. */
    CBN_STANDARDISE(cbn_standardise_f32_f32, float, float,
                    ((row[j] - hi[j]) - lo[j]) * scale[j])
    CBN_STANDARDISE(cbn_standardise_f32_f64, float, double, CBN_NEAR(double))
    /* float64 rows in float32: the mean subtracted in float64. */
    CBN_STANDARDISE(cbn_standardise_f64_f32, double, float,
                    (float)(row[j] - mean[j]) * scale[j])
    CBN_STANDARDISE(cbn_standardise_f64_f64, double, double, CBN_NEAR(double))
    """
    int cbn_standardise_u8_f32(const uint8_t*, float*, Py_ssize_t, const void*,
                               const float*, const float*, const float*, const double*) nogil
    int cbn_standardise_u8_f64(const uint8_t*, double*, Py_ssize_t, const void*,
                               const double*, const double*, const double*, const double*) nogil
    int cbn_standardise_f32_f32(const float*, float*, Py_ssize_t, const void*,
                                const float*, const float*, const float*, const double*) nogil
    int cbn_standardise_f32_f64(const float*, double*, Py_ssize_t, const void*,
                                const double*, const double*, const double*, const double*) nogil
    int cbn_standardise_f64_f32(const double*, float*, Py_ssize_t, const void*,
                                const float*, const float*, const float*, const double*) nogil
    int cbn_standardise_f64_f64(const double*, double*, Py_ssize_t, const void*,
                                const double*, const double*, const double*, const double*) nogil


cdef inline int _standardise(const source_t* row, const double* mean, const floating* mean_hi,
                             const floating* mean_lo, const floating* scale, floating* o,
                             Py_ssize_t n, const source_t* next) noexcept nogil:
    """o[j] = (row[j] - mean[j]) scale[j] for j < n, prefetching ``next`` (NULL: none);
    1 if any is NaN or infinite, else 0."""
    if source_t is uint8_t:
        if floating is float:
            return cbn_standardise_u8_f32(row, o, n, next, mean_hi, scale, mean_lo, mean)
        else:
            return cbn_standardise_u8_f64(row, o, n, next, mean_hi, scale, mean_lo, mean)
    elif source_t is float:
        if floating is float:
            return cbn_standardise_f32_f32(row, o, n, next, mean_hi, scale, mean_lo, mean)
        else:
            return cbn_standardise_f32_f64(row, o, n, next, mean_hi, scale, mean_lo, mean)
    else:
        if floating is float:
            return cbn_standardise_f64_f32(row, o, n, next, mean_hi, scale, mean_lo, mean)
        else:
            return cbn_standardise_f64_f64(row, o, n, next, mean_hi, scale, mean_lo, mean)


cdef inline floating _standardised(source_t x, Py_ssize_t j, const double* mean,
                                   const floating* mean_hi, const floating* mean_lo,
                                   const floating* scale) noexcept nogil:
    """(x - mean[j]) scale[j] for feature j, computed as the plain loop computes it."""
    if source_t is double and floating is float:
        return <float>(x - mean[j]) * scale[j]
    elif source_t is float and floating is float:
        return ((x - mean_hi[j]) - mean_lo[j]) * scale[j]
    else:
        return (<floating>x - mean_hi[j]) * scale[j]


cdef int _split_shift(object shift, Py_ssize_t d, double* mean, floating* hi,
                      floating* lo) except -1:
    """The per-feature mean ``shift`` (d values, float64 or the gather's dtype) in the three
    forms the gather reads: ``mean`` in float64, and ``hi`` + ``lo`` in the gather's dtype,
    hi the mean rounded and lo what that rounding lost (0 in float64, or when the shift
    comes in the gather's dtype). In float32 the pair carries 48 bits of the mean, so that
    x - mean keeps float32 precision however large the mean is next to the spread."""
    cdef const double* s64
    cdef const floating* s
    cdef Py_ssize_t j
    own = "float32" if floating is float else "float64"
    dtype = getattr(shift, "dtype", None)
    if dtype is not None and dtype == "float64":
        s64 = <const double*>_buffer("shift", shift, "float64", d, False)
        for j in range(d):
            mean[j] = s64[j]
            hi[j] = <floating>s64[j]
            lo[j] = <floating>(s64[j] - <double>hi[j])
        return 0
    if dtype is None or dtype != own:
        raise TypeError(f"shift must be a float64 or {own} array, got "
                        f"{type(shift).__name__} {dtype if dtype is not None else ''}")
    s = <const floating*>_buffer("shift", shift, own, d, False)
    for j in range(d):
        mean[j] = s[j]
        hi[j] = s[j]
        lo[j] = 0
    return 0


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


cdef class Augmentation:
    """An augmentation as the compiled gather reads it (``cbn.Augment.compiled`` makes it):
    one typed ``AugmentSpec``, checked here once. ``Plan.set_augment`` takes it and keys its
    draws by the plan's step; ``gather_rows`` by the ``step`` it is given."""
    cdef AugmentSpec spec

    def __init__(self, bint flip, int shift, double noise, int C, int H, int W, uint64_t seed):
        if C < 1 or H < 1 or W < 1:
            raise ValueError(f"image shape ({C}, {H}, {W}) must have C, H, W >= 1")
        if not (0 <= shift <= 0xFFFF and noise >= 0):
            raise ValueError(f"augment needs 0 <= shift <= 65535 and noise >= 0, "
                             f"got {shift}, {noise}")
        self.spec.flip, self.spec.shift, self.spec.noise = flip, shift, noise
        self.spec.C, self.spec.H, self.spec.W = C, H, W
        self.spec.seed, self.spec.step = seed, 0

    @property
    def features(self) -> int:
        """C H W: the input width the augmentation fits."""
        return self.spec.C * self.spec.H * self.spec.W

    def __repr__(self):
        return (f"Augmentation(flip={bool(self.spec.flip)}, shift={self.spec.shift}, "
                f"noise={self.spec.noise}, shape=({self.spec.C}, {self.spec.H}, {self.spec.W}), "
                f"seed={self.spec.seed})")


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
                                uint64_t key, const double* mean, const floating* mean_hi,
                                const floating* mean_lo, const floating* scale,
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
                out[x] = _standardised(row[f - x], f - x, mean, mean_hi, mean_lo, scale)
        else:
            f = c * HW + sr * W - dx          # source feature f + x
            for x in range(a, b):
                out[x] = _standardised(row[f + x], f + x, mean, mean_hi, mean_lo, scale)
        j += x1 - x0
    if aug.noise > 0:
        key = _splitmix64(key)
        lo, hi = <uint32_t>key, <uint32_t>(key >> 32)
        for j in range(j0, j1):
            o[j] += <floating>(aug.noise * _normal(lo, hi, <uint32_t>j))


cdef int _gather_block(Py_ssize_t i0, Py_ssize_t i1, int n, int d, int j0, int j1,
                       const source_t* src, const int64_t* idx, const double* mean,
                       const floating* mean_hi, const floating* mean_lo,
                       const floating* scale, const AugmentSpec* aug,
                       floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - mean[j]) scale[j] for rows i0 <= i < i1 (of n) and
    columns j0 <= j < j1 (of d), on the calling thread; augmented per row i if ``aug``.
    The mean comes in the three forms of ``_split_shift``. Returns 1 if a value written is
    NaN or infinite, else 0."""
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
                                  mean, mean_hi, mean_lo, scale, o)
            bad |= _not_finite(j1 - j0, o + j0)
        else:
            bad |= _standardise(row + j0, mean + j0, mean_hi + j0, mean_lo + j0, scale + j0,
                                o + j0, j1 - j0, nxt)
    return bad


# Mixup: once a batch is gathered (and augmented), row i and its partner, row n - 1 - i
# (the batch reversed, as timm's Mixup pairs them), are mixed with each other in place, so the
# pass needs no buffer and no second read of the source.

cdef void _mix_pair(Py_ssize_t i, int n, int d, int j0, int j1, const double* mix,
                    floating* out) noexcept nogil:
    """Rows i and k = n - 1 - i of ``out`` (i < k), columns j0..j1-1, mixed with each other:
    row i := mix[i] row i + (1 - mix[i]) row k, row k := mix[k] row k + (1 - mix[k]) row i,
    both from the rows as gathered, in ``floating`` with mix and 1 - mix rounded to it."""
    cdef Py_ssize_t k = n - 1 - i, j
    cdef floating* a = out + i * d
    cdef floating* b = out + k * d
    cdef floating la = <floating>mix[i], ma = <floating>(1 - mix[i])
    cdef floating lb = <floating>mix[k], mb = <floating>(1 - mix[k])
    cdef floating u, v
    for j in range(j0, j1):
        u = a[j]
        v = b[j]
        a[j] = la * u + ma * v
        b[j] = lb * v + mb * u


cdef int _gather(int n, int d, int j0, int j1, bint parallel, const source_t* src,
                 const int64_t* idx, const double* mean, const floating* mean_hi,
                 const floating* mean_lo, const floating* scale, const AugmentSpec* aug,
                 const double* mix, floating* out) noexcept nogil:
    """out[i, j] = (src[idx[i], j] - mean[j]) scale[j] for columns j0..j1-1: mini-batch rows
    straight from the stored images (uint8 or float), standardised on the fly, augmented if
    ``aug`` is not NULL, then mixed if ``mix`` is not NULL (``_mix_pair``: mix[i] is row i's
    share of itself, in [0, 1]; the middle row of an odd batch, its own partner, stays as
    it is); rows split over the threads if ``parallel``, else all on the calling thread.
    The mean comes in the three forms of ``_split_shift``. Returns 1 if a value gathered is
    NaN or infinite (a non-finite input, or one that overflows once standardised), else 0
    (mixing then makes no such value: it averages finite ones)."""
    cdef Py_ssize_t i
    cdef int bad = 0
    if not parallel:
        bad = _gather_block(0, n, n, d, j0, j1, src, idx, mean, mean_hi, mean_lo, scale, aug,
                            out)
        if mix != NULL and not bad:
            for i in range(n // 2):
                _mix_pair(i, n, d, j0, j1, mix, out)
        return bad
    for i in prange(n, num_threads=_threads(), schedule="static"):
        bad |= _gather_block(i, i + 1, n, d, j0, j1, src, idx, mean, mean_hi, mean_lo, scale,
                             aug, out)
    if mix != NULL and not bad:
        for i in prange(n // 2, num_threads=_threads(), schedule="static"):
            _mix_pair(i, n, d, j0, j1, mix, out)
    return bad


def gather_rows(const source_t[:, ::1] src, const int64_t[::1] idx, object shift,
                const floating[::1] scale, floating[:, ::1] out, Augmentation augment=None,
                int j0=0, j1=None, uint64_t step=0, const double[::1] mix=None):
    """shift: the per-feature mean, float64 or out's dtype (``_split_shift``). augment: None,
    or an ``Augmentation``, its draws keyed by ``step``. mix: None, or each row's share of
    itself in [0, 1] (one per row of idx; ``_gather``), checked by the caller. Columns
    j0..j1-1 only (default: all), on one thread when that is not all of them. Returns False
    if a value written is NaN or infinite."""
    cdef AugmentSpec spec
    cdef AugmentSpec* aug = NULL
    cdef const double* pmix = NULL
    cdef Py_ssize_t d = src.shape[1]
    cdef int end = d if j1 is None else j1
    cdef int bad
    cdef double* mean
    cdef floating* halves
    if not 0 <= j0 <= end <= d:
        raise ValueError(f"columns {j0}..{end} are not within the {d} of src")
    if scale.shape[0] < d or out.shape[1] != d:
        raise ValueError(f"scale and out must have the {d} columns of src")
    if augment is not None:
        if augment.features != d:
            raise ValueError(f"{augment!r} does not fit rows of {d} values")
        spec = augment.spec
        spec.step = step
        aug = &spec
    if mix is not None:
        if mix.shape[0] != idx.shape[0]:
            raise ValueError(f"mix has {mix.shape[0]} values for {idx.shape[0]} rows")
        pmix = &mix[0]
    mean = <double*>calloc(d, sizeof(double))
    halves = <floating*>calloc(2 * d, sizeof(floating))
    try:
        if mean == NULL or halves == NULL:
            raise MemoryError()
        _split_shift(shift, d, mean, halves, halves + d)
        with nogil:
            bad = _gather(idx.shape[0], d, j0, end, j0 == 0 and end == d, &src[0, 0], &idx[0],
                          mean, halves, halves + d, &scale[0], aug, pmix, &out[0, 0])
    finally:
        free(mean)
        free(halves)
    return not bad

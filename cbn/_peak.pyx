# cython: language_level=3
"""The machine's arithmetic peak, measured: register-only multiply-add loops on a team of threads.

Built with the package but never imported by ``import cbn`` (the benchmarks import it,
tests/bench_peak.py), so it costs the library nothing. It links no BLAS: each loop keeps its
accumulators in vector registers, with independent chains enough to cover the instruction's
latency on today's cores, so the loop runs at the throughput of the FMA (or dot-product)
units and reads no memory. Each loop is compiled for its own instruction set with a
per-function target attribute and picked at run time from what the CPU reports
(``__builtin_cpu_supports``), so one portable build measures the widest units the machine
has: AVX-512F, else AVX2 with FMA, else plain C (fp32); AVX512_BF16's ``vdpbf16ps`` (bf16).

``run(kind, iterations, threads)`` runs ``iterations`` passes of the loop on each of
``threads`` OpenMP threads at once and returns (wall seconds, floating-point operations done,
threads that ran). Calibration (how many iterations, how many repeats, the best rate) is
the caller's (tests/bench_peak.py).
"""

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define CBN_PEAK_X86 1
    #include <immintrin.h>
    /* AVX512_BF16's intrinsics and its __builtin_cpu_supports name: GCC 10, clang 9 */
    #if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10)
    #define CBN_PEAK_BF16 1
    #endif
    #endif

    /* Independent accumulator chains per loop: a latency of 4 to 6 cycles times 2 to 4
       units per core needs at most 24 in flight; more chains than needed cost nothing while
       they stay in registers (32 zmm, 16 ymm: two hold the operands). Each chain is a named
       variable, not an array element, so the compiler keeps it in a register. */
    #define CBN_R8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
    #define CBN_R12(M) CBN_R8(M) M(8) M(9) M(10) M(11)
    #define CBN_R24(M) CBN_R12(M) M(12) M(13) M(14) M(15) M(16) M(17) M(18) M(19) M(20) \\
                       M(21) M(22) M(23)
    #define CBN_CHAINS_512 24
    #define CBN_CHAINS_256 12
    #define CBN_CHAINS_C 8
    #define CBN_CAT(a, b) a##b
    #define CBN_ACC(c) CBN_CAT(acc, c)

    /* The multiplicands (a near 1, b small) keep every chain at a finite fixed point, far from
       overflow and subnormals, for any number of iterations. The sum of the chains is
       returned so the compiler must run them all. */
    #ifdef CBN_PEAK_X86
    #define CBN_DECL512(c) __m512 CBN_ACC(c) = _mm512_set1_ps((float)(c));
    #define CBN_SUM512(c) s = _mm512_add_ps(s, CBN_ACC(c));
    #define CBN_FMA512(c) CBN_ACC(c) = _mm512_fmadd_ps(CBN_ACC(c), a, b);
    __attribute__((target("avx512f")))
    static float cbn_fma_avx512(int64_t iterations) {
        const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
        CBN_R24(CBN_DECL512)
        for (int64_t i = 0; i < iterations; i++) { CBN_R24(CBN_FMA512) }
        __m512 s = _mm512_setzero_ps();
        CBN_R24(CBN_SUM512)
        return _mm512_reduce_add_ps(s);
    }

    #define CBN_DECL256(c) __m256 CBN_ACC(c) = _mm256_set1_ps((float)(c));
    #define CBN_SUM256(c) s = _mm256_add_ps(s, CBN_ACC(c));
    #define CBN_FMA256(c) CBN_ACC(c) = _mm256_fmadd_ps(CBN_ACC(c), a, b);
    __attribute__((target("avx2,fma")))
    static float cbn_fma_avx2(int64_t iterations) {
        const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
        CBN_R12(CBN_DECL256)
        for (int64_t i = 0; i < iterations; i++) { CBN_R12(CBN_FMA256) }
        __m256 s = _mm256_setzero_ps();
        CBN_R12(CBN_SUM256)
        float out[8];
        _mm256_storeu_ps(out, s);
        return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
    }

    /* vdpbf16ps: per fp32 lane, acc += a0*b0 + a1*b1 over a pair of bf16 values, 4 flops.
       Pairs (1, 1) and (x, -x), x = 0x3A83 (~1e-3): each pair adds exactly 0, so every
       chain keeps its value. */
    #ifdef CBN_PEAK_BF16
    #define CBN_DOT512(c) CBN_ACC(c) = _mm512_dpbf16_ps(CBN_ACC(c), a, b);
    __attribute__((target("avx512f,avx512bf16")))
    static float cbn_dot_bf16_avx512(int64_t iterations) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3F803F80);
        const __m512bh b = (__m512bh)_mm512_set1_epi32((int)0xBA833A83u);
        CBN_R24(CBN_DECL512)
        for (int64_t i = 0; i < iterations; i++) { CBN_R24(CBN_DOT512) }
        __m512 s = _mm512_setzero_ps();
        CBN_R24(CBN_SUM512)
        return _mm512_reduce_add_ps(s);
    }
    #endif
    #endif

    #define CBN_DECLC(c) float CBN_ACC(c) = (float)(c);
    #define CBN_SUMC(c) s += CBN_ACC(c);
    #define CBN_FMAC(c) CBN_ACC(c) = CBN_ACC(c) * a + b;
    static float cbn_fma_c(int64_t iterations) {
        const float a = 0.999f, b = 1e-3f;
        CBN_R8(CBN_DECLC)
        for (int64_t i = 0; i < iterations; i++) { CBN_R8(CBN_FMAC) }
        float s = 0.0f;
        CBN_R8(CBN_SUMC)
        return s;
    }

    typedef float (*cbn_peak_loop)(int64_t);

    /* The loop for kind 0 (fp32 multiply-add) or 1 (bf16 dot product) on this CPU, its
       floating-point operations per iteration and the name of its instruction set; a NULL
       loop where the CPU has none (bf16 without AVX512_BF16). */
    static cbn_peak_loop cbn_peak_pick(int kind, double* flops, const char** isa) {
    #ifdef CBN_PEAK_X86
        __builtin_cpu_init();
        if (kind == 1) {
    #ifdef CBN_PEAK_BF16
            if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) {
                *flops = 4.0 * 16 * CBN_CHAINS_512; *isa = "avx512_bf16";
                return cbn_dot_bf16_avx512;
            }
    #endif
            *flops = 0.0; *isa = ""; return 0;
        }
        if (__builtin_cpu_supports("avx512f")) {
            *flops = 2.0 * 16 * CBN_CHAINS_512; *isa = "avx512f"; return cbn_fma_avx512;
        }
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            *flops = 2.0 * 8 * CBN_CHAINS_256; *isa = "avx2+fma"; return cbn_fma_avx2;
        }
    #endif
        if (kind == 1) { *flops = 0.0; *isa = ""; return 0; }
        *flops = 2.0 * CBN_CHAINS_C; *isa = "c"; return cbn_fma_c;
    }

    static double cbn_peak_now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }

    /* The loop on a team of `threads` at once; the wall time from before the team starts to
       after its last member ends, the threads that ran (OpenMP may give fewer), and a sink
       for the results. Without OpenMP, one thread. */
    static double cbn_peak_team(cbn_peak_loop loop, int64_t iterations, int threads,
                                int* ran, volatile float* sink) {
        double start = cbn_peak_now();
        *ran = 1;
    #ifdef _OPENMP
        #pragma omp parallel num_threads(threads)
        {
            float r = loop(iterations);
            #pragma omp critical
            *sink += r;
            #pragma omp single
            *ran = omp_get_num_threads();
        }
    #else
        (void)threads;
        *sink += loop(iterations);
    #endif
        return cbn_peak_now() - start;
    }
    """
    ctypedef float (*cbn_peak_loop)(long long) noexcept nogil
    cbn_peak_loop cbn_peak_pick(int kind, double* flops, const char** isa) noexcept nogil
    double cbn_peak_team(cbn_peak_loop loop, long long iterations, int threads, int* ran,
                         float* sink) noexcept nogil

KINDS = ("fp32", "bf16")


def _kind(kind) -> int:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return KINDS.index(kind)


def isa(kind: str):
    """The instruction set the ``kind`` loop runs on this CPU ("avx512f", "avx2+fma" or
    "c" for fp32; "avx512_bf16" for bf16), or None where the CPU has no such instruction
    (for bf16 also where this build's compiler had none: before GCC 10 or clang 9)."""
    cdef double flops
    cdef const char* name
    loop = cbn_peak_pick(_kind(kind), &flops, &name)
    return None if loop == NULL else name.decode()


def run(kind: str, long long iterations, int threads):
    """(wall seconds, floating-point operations, threads that ran) of ``iterations`` passes of
    the ``kind`` loop ("fp32" or "bf16") on each of ``threads`` threads at once. ValueError
    where the CPU has no such instruction (``isa(kind)`` is None) or for a count below 1."""
    cdef double flops, seconds
    cdef const char* name
    cdef int ran = 0
    cdef float sink = 0
    cdef cbn_peak_loop loop = cbn_peak_pick(_kind(kind), &flops, &name)
    if loop == NULL:
        raise ValueError(f"this CPU has no {kind} dot-product instruction")
    if iterations < 1 or threads < 1:
        raise ValueError(f"iterations and threads must be at least 1, got {iterations} "
                         f"and {threads}")
    with nogil:
        seconds = cbn_peak_team(loop, iterations, threads, &ran, &sink)
    if not sink == sink:  # the loops' fixed points are finite: a NaN means a broken build
        raise RuntimeError(f"the {kind} peak loop returned NaN")
    return seconds, flops * iterations * ran, ran

# bf16-mixed precision: rounding to bfloat16 and the bf16 products (oneDNN, loaded at run
# time). Included by _ops.pyx before the ops, whose kernels round their outputs on the way.
#
# The products run in oneDNN's matmul (bf16 inputs, fp32 accumulation and output), which
# the optional extra ``cbn[bf16]`` installs (onednn-cpu-gomp: oneDNN on GNU OpenMP, the
# runtime cbn's own pool already is). Why oneDNN and not MKL or kernels of our own:
# docs/benchmarks.md, "bf16-mixed". The library is opened with dlopen by cbn.bf16, so cbn
# builds and runs without it; the functions are called through pointers, without the GIL.
#
# One matmul primitive per product and shape, created the first time a shape is run (the
# plan's capacity when it is built) and kept in a small per-product cache, with fixed data
# pointers (the plan's buffers never move) and one scratchpad per plan: a step allocates
# nothing.

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #if defined(__GNUC__) && __GNUC__ >= 6 && !defined(__clang__) && defined(__x86_64__) \
        && defined(__linux__) && defined(__GLIBC__)
    #define CBN_BF16_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CBN_BF16_VECTORS
    #endif

    /* float -> bfloat16, rounded to nearest even; a NaN stays a (quiet) NaN, which the
       carry of the rounding would otherwise turn into an infinity. */
    static inline uint16_t cbn_bf16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        return (uint16_t)(nan ? ((u >> 16) | 0x40u) : r);
    }
    static inline float cbn_bf16_float(uint16_t h) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    CBN_BF16_VECTORS static void cbn_round_bf16(const float* restrict x,
                                                uint16_t* restrict o, Py_ssize_t n) {
        for (Py_ssize_t k = 0; k < n; k++) o[k] = cbn_bf16(x[k]);
    }
    /* The fused SGD step of the weights: w := decay w - lr t, and its bf16 copy. */
    CBN_BF16_VECTORS static void cbn_step_bf16(float* restrict w, const float* restrict t,
                                               float decay, float lr,
                                               uint16_t* restrict o, Py_ssize_t n) {
        for (Py_ssize_t k = 0; k < n; k++) {
            float v = decay * w[k] - lr * t[k];
            w[k] = v;
            o[k] = cbn_bf16(v);
        }
    }

    /* oneDNN's C API (3.x, whose ABI is stable), declared here: the headers are not
       needed to build cbn. Handles are opaque pointers; enums are ints. */
    enum { CBN_DNNL_F32 = 3, CBN_DNNL_BF16 = 2, CBN_DNNL_CPU = 1, CBN_DNNL_IN_ORDER = 1,
           CBN_DNNL_SCRATCHPAD_USER = 1, CBN_DNNL_QUERY_SCRATCHPAD_MD = 136,
           CBN_DNNL_QUERY_IMPL_INFO_STR = 8, CBN_ARG_SRC = 1, CBN_ARG_DST = 17,
           CBN_ARG_WEIGHTS = 33, CBN_ARG_BIAS = 41, CBN_ARG_SCRATCHPAD = 80 };
    typedef struct { int arg; void* memory; } cbn_exec_arg;
    static struct {
        void* lib;
        void* engine;
        int (*engine_create)(void**, int, size_t);
        int (*stream_create)(void**, void*, unsigned);
        int (*stream_destroy)(void*);
        int (*md_create)(void**, int, const int64_t*, int, const int64_t*);
        int (*md_destroy)(void*);
        int (*attr_create)(void**);
        int (*attr_destroy)(void*);
        int (*attr_scratchpad)(void*, int);
        int (*attr_post_ops)(void*, const void*);
        int (*post_ops_create)(void**);
        int (*post_ops_destroy)(void*);
        int (*post_ops_sum)(void*, float, int32_t, int);
        int (*matmul_pd)(void**, void*, const void*, const void*, const void*, const void*,
                         const void*);
        int (*pd_destroy)(void*);
        const void* (*pd_query_md)(const void*, int, int);
        int (*pd_query)(const void*, int, int, void*);
        size_t (*md_size)(const void*);
        int (*prim_create)(void**, const void*);
        int (*prim_destroy)(void*);
        int (*mem_create)(void**, const void*, void*, void*);
        int (*mem_destroy)(void*);
        int (*mem_set)(void*, void*);
        int (*execute)(const void*, void*, int, const cbn_exec_arg*);
        int (*wait)(void*);
    } cbn_dnnl;

    /* Opens oneDNN at ``path``: 0, or 1 (see dlerror) if it or a function is missing, or
       2 + the status if its CPU engine cannot be made. */
    static int cbn_dnnl_open(const char* path) {
        void* lib;
        if (cbn_dnnl.lib) return 0;
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!lib) return 1;
        #define CBN_SYM(field, name) \
            if (!(*(void**)&cbn_dnnl.field = dlsym(lib, name))) { dlclose(lib); return 1; }
        CBN_SYM(engine_create, "dnnl_engine_create")
        CBN_SYM(stream_create, "dnnl_stream_create")
        CBN_SYM(stream_destroy, "dnnl_stream_destroy")
        CBN_SYM(md_create, "dnnl_memory_desc_create_with_strides")
        CBN_SYM(md_destroy, "dnnl_memory_desc_destroy")
        CBN_SYM(attr_create, "dnnl_primitive_attr_create")
        CBN_SYM(attr_destroy, "dnnl_primitive_attr_destroy")
        CBN_SYM(attr_scratchpad, "dnnl_primitive_attr_set_scratchpad_mode")
        CBN_SYM(attr_post_ops, "dnnl_primitive_attr_set_post_ops")
        CBN_SYM(post_ops_create, "dnnl_post_ops_create")
        CBN_SYM(post_ops_destroy, "dnnl_post_ops_destroy")
        CBN_SYM(post_ops_sum, "dnnl_post_ops_append_sum")
        CBN_SYM(matmul_pd, "dnnl_matmul_primitive_desc_create")
        CBN_SYM(pd_destroy, "dnnl_primitive_desc_destroy")
        CBN_SYM(pd_query_md, "dnnl_primitive_desc_query_md")
        CBN_SYM(pd_query, "dnnl_primitive_desc_query")
        CBN_SYM(md_size, "dnnl_memory_desc_get_size")
        CBN_SYM(prim_create, "dnnl_primitive_create")
        CBN_SYM(prim_destroy, "dnnl_primitive_destroy")
        CBN_SYM(mem_create, "dnnl_memory_create")
        CBN_SYM(mem_destroy, "dnnl_memory_destroy")
        CBN_SYM(mem_set, "dnnl_memory_set_data_handle")
        CBN_SYM(execute, "dnnl_primitive_execute")
        CBN_SYM(wait, "dnnl_stream_wait")
        #undef CBN_SYM
        int s = cbn_dnnl.engine_create(&cbn_dnnl.engine, CBN_DNNL_CPU, 0);
        if (s) { dlclose(lib); return 2 + s; }
        cbn_dnnl.lib = lib;
        return 0;
    }

    /* oneDNN sizes a primitive's work for the OpenMP thread count of the calling thread
       when it is made and runs it on that many: both are done at the count cbn's pool
       runs now, and the caller's own setting is put back. */
    static int cbn_omp_swap(int nthr) {
    #ifdef _OPENMP
        int old = omp_get_max_threads();
        if (old != nthr) omp_set_num_threads(nthr);
        return old;
    #else
        (void)nthr;
        return 1;
    #endif
    }
    static void cbn_omp_restore(int old, int nthr) {
    #ifdef _OPENMP
        if (old != nthr) omp_set_num_threads(old);
    #else
        (void)old; (void)nthr;
    #endif
    }

    /* One product C(M,N) (+)= op(A)(M,K) op(B)(K,N) [+ bias(N)]: A and B bf16 (A stored
       (K,M) when ta, B stored (N,K) when tb), C and bias float32, all row-major and dense. */
    typedef struct {
        int M, N, K, nthr;   /* the shape and threads it was made for; M == 0: empty */
        void* prim;
        void* mem[5];        /* src, weights, dst, bias (or NULL), scratchpad */
        const void* ptr[4];
        size_t scratch;      /* bytes of scratchpad it needs */
    } cbn_mm;
    #define CBN_MM_SLOTS 4   /* the capacity's shape (slot 0) and three others, in turn */
    typedef struct { cbn_mm slot[CBN_MM_SLOTS]; int next; } cbn_mm_cache;
    typedef struct { void* stream; void* buf; size_t size; } cbn_dnnl_ctx;

    static void cbn_mm_free(cbn_mm* mm) {
        int i;
        if (mm->prim) cbn_dnnl.prim_destroy(mm->prim);
        for (i = 0; i < 5; i++) if (mm->mem[i]) cbn_dnnl.mem_destroy(mm->mem[i]);
        memset(mm, 0, sizeof *mm);
    }
    static void cbn_mm_cache_free(cbn_mm_cache* c) {
        int i;
        if (!cbn_dnnl.lib) return;
        for (i = 0; i < CBN_MM_SLOTS; i++) cbn_mm_free(&c->slot[i]);
    }

    static int cbn_mm_make(cbn_mm* mm, int M, int N, int K, int ta, int tb, int acc,
                           const uint16_t* A, const uint16_t* B, float* C,
                           const float* bias, int nthr) {
        int64_t ad[12] = {M, K}, as[12] = {ta ? 1 : K, ta ? M : 1};
        int64_t bd[12] = {K, N}, bs[12] = {tb ? 1 : N, tb ? K : 1};
        int64_t cd[12] = {M, N}, cs[12] = {N, 1}, zd[12] = {1, N}, zs[12] = {N, 1};
        void *a = 0, *b = 0, *c = 0, *z = 0, *attr = 0, *ops = 0, *pd = 0;
        const void* smd;
        int s, old = cbn_omp_swap(nthr);
        memset(mm, 0, sizeof *mm);
        s = cbn_dnnl.md_create(&a, 2, ad, CBN_DNNL_BF16, as);
        if (!s) s = cbn_dnnl.md_create(&b, 2, bd, CBN_DNNL_BF16, bs);
        if (!s) s = cbn_dnnl.md_create(&c, 2, cd, CBN_DNNL_F32, cs);
        if (!s && bias) s = cbn_dnnl.md_create(&z, 2, zd, CBN_DNNL_F32, zs);
        if (!s) s = cbn_dnnl.attr_create(&attr);
        if (!s) s = cbn_dnnl.attr_scratchpad(attr, CBN_DNNL_SCRATCHPAD_USER);
        if (!s && acc) {
            s = cbn_dnnl.post_ops_create(&ops);
            if (!s) s = cbn_dnnl.post_ops_sum(ops, 1.0f, 0, 0);
            if (!s) s = cbn_dnnl.attr_post_ops(attr, ops);
        }
        if (!s) s = cbn_dnnl.matmul_pd(&pd, cbn_dnnl.engine, a, b, z, c, attr);
        if (!s) s = cbn_dnnl.prim_create(&mm->prim, pd);
        if (!s) s = cbn_dnnl.mem_create(&mm->mem[0], a, cbn_dnnl.engine, (void*)A);
        if (!s) s = cbn_dnnl.mem_create(&mm->mem[1], b, cbn_dnnl.engine, (void*)B);
        if (!s) s = cbn_dnnl.mem_create(&mm->mem[2], c, cbn_dnnl.engine, C);
        if (!s && bias) s = cbn_dnnl.mem_create(&mm->mem[3], z, cbn_dnnl.engine, (void*)bias);
        if (!s) {
            smd = cbn_dnnl.pd_query_md(pd, CBN_DNNL_QUERY_SCRATCHPAD_MD, 0);
            mm->scratch = smd ? cbn_dnnl.md_size(smd) : 0;
            if (mm->scratch) s = cbn_dnnl.mem_create(&mm->mem[4], smd, cbn_dnnl.engine, 0);
        }
        if (pd) cbn_dnnl.pd_destroy(pd);
        if (ops) cbn_dnnl.post_ops_destroy(ops);
        if (attr) cbn_dnnl.attr_destroy(attr);
        if (a) cbn_dnnl.md_destroy(a);
        if (b) cbn_dnnl.md_destroy(b);
        if (c) cbn_dnnl.md_destroy(c);
        if (z) cbn_dnnl.md_destroy(z);
        cbn_omp_restore(old, nthr);
        if (s) { cbn_mm_free(mm); return s; }
        mm->M = M; mm->N = N; mm->K = K; mm->nthr = nthr;
        mm->ptr[0] = A; mm->ptr[1] = B; mm->ptr[2] = C; mm->ptr[3] = bias;
        return 0;
    }

    /* The cache's primitive of this shape, made first if there is none (slot 0 holds the
       first shape made, the others rotate), with the context's scratchpad grown to fit it.
       Returns oneDNN's status, or -1 if the scratchpad cannot be grown. */
    static int cbn_prepare(cbn_dnnl_ctx* ctx, cbn_mm_cache* cache, cbn_mm** out, int M,
                           int N, int K, int ta, int tb, int acc, const uint16_t* A,
                           const uint16_t* B, float* C, const float* bias, int nthr) {
        cbn_mm* mm = 0;
        int i, s;
        for (i = 0; i < CBN_MM_SLOTS; i++) {
            cbn_mm* t = &cache->slot[i];
            if (t->M == M && t->N == N && t->K == K && t->nthr == nthr) { mm = t; break; }
        }
        if (!mm) {
            if (cache->slot[0].M == 0) mm = &cache->slot[0];
            else {
                mm = &cache->slot[1 + cache->next];
                cache->next = (cache->next + 1) % (CBN_MM_SLOTS - 1);
                cbn_mm_free(mm);
            }
            s = cbn_mm_make(mm, M, N, K, ta, tb, acc, A, B, C, bias, nthr);
            if (s) return s;
        }
        if (mm->scratch > ctx->size) {
            void* grown = realloc(ctx->buf, mm->scratch);
            if (!grown) return -1;
            ctx->buf = grown;
            ctx->size = mm->scratch;
        }
        *out = mm;
        return 0;
    }

    /* Runs the product C(M,N) (+)= op(A) op(B) [+ bias] (see cbn_mm) on nthr threads
       through the cache's primitive of its shape (cbn_prepare). Returns oneDNN's status. */
    static int cbn_product(cbn_dnnl_ctx* ctx, cbn_mm_cache* cache, int M, int N, int K,
                           int ta, int tb, int acc, const uint16_t* A, const uint16_t* B,
                           float* C, const float* bias, int nthr) {
        cbn_mm* mm;
        cbn_exec_arg args[5];
        int i, n = 0, s, old;
        if (M <= 0 || N <= 0) return 0;
        s = cbn_prepare(ctx, cache, &mm, M, N, K, ta, tb, acc, A, B, C, bias, nthr);
        if (s) return s;
        const void* now[4] = {A, B, C, bias};
        for (i = 0; i < 4; i++)
            if (mm->mem[i] && mm->ptr[i] != now[i]) {
                s = cbn_dnnl.mem_set(mm->mem[i], (void*)now[i]);
                if (s) return s;
                mm->ptr[i] = now[i];
            }
        if (mm->mem[4]) {
            s = cbn_dnnl.mem_set(mm->mem[4], ctx->buf);
            if (s) return s;
        }
        args[n].arg = CBN_ARG_SRC; args[n++].memory = mm->mem[0];
        args[n].arg = CBN_ARG_WEIGHTS; args[n++].memory = mm->mem[1];
        args[n].arg = CBN_ARG_DST; args[n++].memory = mm->mem[2];
        if (mm->mem[3]) { args[n].arg = CBN_ARG_BIAS; args[n++].memory = mm->mem[3]; }
        if (mm->mem[4]) { args[n].arg = CBN_ARG_SCRATCHPAD; args[n++].memory = mm->mem[4]; }
        old = cbn_omp_swap(nthr);
        s = cbn_dnnl.execute(mm->prim, ctx->stream, n, args);
        if (!s) s = cbn_dnnl.wait(ctx->stream);
        cbn_omp_restore(old, nthr);
        return s;
    }

    /* The name of the implementation oneDNN picks for a product of this shape, or "". */
    static const char* cbn_mm_impl(int M, int N, int K, int ta, int tb) {
        static char name[128];
        int64_t ad[12] = {M, K}, as[12] = {ta ? 1 : K, ta ? M : 1};
        int64_t bd[12] = {K, N}, bs[12] = {tb ? 1 : N, tb ? K : 1};
        int64_t cd[12] = {M, N}, cs[12] = {N, 1};
        void *a = 0, *b = 0, *c = 0, *pd = 0;
        const char* impl = "";
        name[0] = 0;
        if (!cbn_dnnl.lib) return name;
        if (!cbn_dnnl.md_create(&a, 2, ad, CBN_DNNL_BF16, as)
            && !cbn_dnnl.md_create(&b, 2, bd, CBN_DNNL_BF16, bs)
            && !cbn_dnnl.md_create(&c, 2, cd, CBN_DNNL_F32, cs)
            && !cbn_dnnl.matmul_pd(&pd, cbn_dnnl.engine, a, b, 0, c, 0)
            && !cbn_dnnl.pd_query(pd, CBN_DNNL_QUERY_IMPL_INFO_STR, 0, &impl) && impl)
            strncpy(name, impl, sizeof name - 1);
        if (pd) cbn_dnnl.pd_destroy(pd);
        if (a) cbn_dnnl.md_destroy(a);
        if (b) cbn_dnnl.md_destroy(b);
        if (c) cbn_dnnl.md_destroy(c);
        return name;
    }
    """
    uint16_t cbn_bf16(float f) nogil
    float cbn_bf16_float(uint16_t h) nogil
    void cbn_round_bf16(const float* x, uint16_t* o, Py_ssize_t n) nogil
    void cbn_step_bf16(float* w, const float* t, float decay, float lr, uint16_t* o,
                       Py_ssize_t n) nogil
    ctypedef struct cbn_mm_cache:
        pass
    ctypedef struct cbn_dnnl_ctx:
        void* stream
        void* buf
        size_t size
    struct _cbn_dnnl_api:
        void* lib
        void* engine
        int (*stream_create)(void**, void*, unsigned) nogil
        int (*stream_destroy)(void*) nogil
    _cbn_dnnl_api cbn_dnnl
    int CBN_DNNL_IN_ORDER
    int cbn_dnnl_open(const char* path) nogil
    void cbn_mm_cache_free(cbn_mm_cache* c) nogil
    ctypedef struct cbn_mm:
        pass
    int cbn_prepare(cbn_dnnl_ctx* ctx, cbn_mm_cache* cache, cbn_mm** out, int M, int N, int K,
                    int ta, int tb, int acc, const uint16_t* A, const uint16_t* B, float* C,
                    const float* bias, int nthr) nogil
    int cbn_product(cbn_dnnl_ctx* ctx, cbn_mm_cache* cache, int M, int N, int K, int ta,
                    int tb, int acc, const uint16_t* A, const uint16_t* B, float* C,
                    const float* bias, int nthr) nogil
    const char* cbn_mm_impl(int M, int N, int K, int ta, int tb) nogil
    char* dlerror() nogil


def dnnl_open(str path):
    """Open oneDNN from the file ``path`` (once per process; later calls return at once).
    Raises OSError naming the file and the cause when it cannot be used."""
    cdef bytes raw = path.encode()
    cdef int s = cbn_dnnl_open(raw)
    cdef char* why
    if s == 1:
        why = dlerror()
        raise OSError(f"{path}: {why.decode(errors='replace') if why != NULL else 'not usable'}")
    if s > 1:
        raise OSError(f"{path}: oneDNN made no CPU engine (status {s - 2})")


def dnnl_loaded():
    """True once ``dnnl_open`` succeeded in this process."""
    return cbn_dnnl.lib != NULL


def dnnl_impl(int M, int N, int K, bint ta=False, bint tb=False):
    """The implementation oneDNN picks for a bf16 product C(M,N) = op(A)(M,K) op(B)(K,N)
    (e.g. "brg:avx512_core_bf16"); "" if oneDNN is not loaded or refuses the shape."""
    return cbn_mm_impl(M, N, K, ta, tb).decode(errors="replace")


def round_bf16(const float[::1] x, uint16_t[::1] out):
    """out := x rounded to bfloat16 (round to nearest even, NaN kept): the bits of the
    upper half of a float32."""
    if out.shape[0] < x.shape[0]:
        raise ValueError(f"out holds {out.shape[0]} values, x has {x.shape[0]}")
    with nogil:
        cbn_round_bf16(&x[0] if x.shape[0] else NULL, &out[0] if out.shape[0] else NULL,
                       x.shape[0])


def bf16_product(const uint16_t[:, ::1] A, const uint16_t[:, ::1] B, float[:, ::1] C,
                 bint ta=False, bint tb=False, bint accumulate=False, int threads=0):
    """C (+)= op(A) op(B) in oneDNN's bf16 matmul (fp32 accumulation): A (M, K), or (K, M)
    with ``ta``; B (K, N), or (N, K) with ``tb``. For tests and benchmarks (allocates its
    primitive and scratchpad on each call); the plan keeps its own."""
    cdef int M = A.shape[1] if ta else A.shape[0], K = A.shape[0] if ta else A.shape[1]
    cdef int N = B.shape[0] if tb else B.shape[1]
    cdef int s, nthr = threads if threads > 0 else _threads()
    cdef cbn_mm_cache* cache
    cdef cbn_dnnl_ctx ctx
    if cbn_dnnl.lib == NULL:
        raise RuntimeError("oneDNN is not loaded (cbn.bf16.load)")
    if (B.shape[1] if tb else B.shape[0]) != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"shapes do not multiply: ({A.shape[0]}, {A.shape[1]}), "
                         f"({B.shape[0]}, {B.shape[1]}) into ({C.shape[0]}, {C.shape[1]})")
    cache = <cbn_mm_cache*>calloc(1, sizeof(cbn_mm_cache))
    ctx.buf, ctx.size, ctx.stream = NULL, 0, NULL
    if cache == NULL:
        raise MemoryError()
    try:
        s = cbn_dnnl.stream_create(&ctx.stream, cbn_dnnl.engine, CBN_DNNL_IN_ORDER)
        if s == 0:
            with nogil:
                s = cbn_product(&ctx, cache, M, N, K, ta, tb, accumulate, &A[0, 0], &B[0, 0],
                                &C[0, 0], NULL, nthr)
        if s != 0:
            raise RuntimeError(f"oneDNN's bf16 matmul failed (status {s})")
    finally:
        cbn_mm_cache_free(cache)
        free(cache)
        free(ctx.buf)
        if ctx.stream != NULL:
            cbn_dnnl.stream_destroy(ctx.stream)

# Threads: one OpenMP pool for OpenBLAS's parallel jobs and for our own parallel loops
# (why: the module docstring of _ops.pyx). Included by _ops.pyx after _blas.pxi.
#
# OpenBLAS's jobs wait for each other, so they must all run at once, one per thread: a team
# with fewer threads than jobs would leave them waiting forever. OpenMP gives fewer threads
# than a region asks for under dynamic team sizes (OMP_DYNAMIC, omp_set_dynamic), a thread
# limit (OMP_THREAD_LIMIT), no more active levels (OMP_MAX_ACTIVE_LEVELS,
# omp_set_max_active_levels, omp_set_nested; a call from inside an active region), however
# those are set, and in a forked child its pool is gone. So:
# - every batch of jobs checks its team once it has started (cbn_run_jobs_on_team) and, if
#   it is short, runs on threads started for it instead (cbn_run_jobs_on_new_threads);
# - cbn's own products also look at those settings first (_check_pool) and, where a team
#   may fall short, or once one did, leave the pool for good: OpenBLAS's own threads from
#   then on, and one thread for our loops. The loops are right on any team (static
#   schedules over iterations, never over thread numbers);
# - the pool is left at import when the environment already says so, and in a forked child.


cdef void _run_blas_jobs(int sync, openblas_dojob_callback dojob, int numjobs,
                         size_t jobdata_elsize, void* jobdata, int dojob_data) noexcept nogil:
    """cbn's OpenBLAS hands its parallel work here instead of to its own pthreads pool: job i
    on thread i of the pool, which the sliced first layer counts on (see
    ``_slice_products``), one batch at a time (``cbn_jobs_enter``). If OpenMP gives a short
    team, the batch runs on threads started for it and the pool is left for good. The
    region is plain C: a Cython prange here would release and retake the GIL when the caller
    holds it (SciPy's BLAS wrappers call with it held), and a thread waiting for the GIL
    while OpenBLAS holds its own lock for the product deadlocks against a thread holding the
    GIL that waits for that lock."""
    cbn_jobs_enter()
    if not cbn_run_jobs_on_team(dojob, numjobs, jobdata_elsize, jobdata, dojob_data):
        cbn_run_jobs_on_new_threads(dojob, numjobs, jobdata_elsize, jobdata, dojob_data)
        _leave_pool()
    cbn_jobs_leave()


cdef extern from *:
    """
    #include <pthread.h>
    #include <stdio.h>
    #include <stdlib.h>
    typedef void (*cbn_dojob)(int, void*, int);
    typedef struct { cbn_dojob dojob; int index; void* data; int arg; } cbn_job;
    static void* cbn_job_main(void* job) {
        cbn_job* j = (cbn_job*)job;
        j->dojob(j->index, j->data, j->arg);
        return NULL;
    }
    /* OpenBLAS jobs that must all run at once, where OpenMP cannot promise a full team: on
       threads started for them, job 0 on the caller's. Rare and slow (a thread start per
       job), but never a hang. */
    static void cbn_run_jobs_on_new_threads(cbn_dojob dojob, int numjobs, size_t elsize,
                                            void* jobdata, int arg) {
        pthread_t* threads = (pthread_t*)malloc(sizeof(pthread_t) * numjobs);
        cbn_job* jobs = (cbn_job*)malloc(sizeof(cbn_job) * numjobs);
        int i;
        if (!threads || !jobs) { fprintf(stderr, "cbn: out of memory for BLAS jobs\\n"); abort(); }
        for (i = 0; i < numjobs; i++) {
            jobs[i].dojob = dojob; jobs[i].index = i; jobs[i].arg = arg;
            jobs[i].data = (char*)jobdata + i * elsize;
        }
        for (i = 1; i < numjobs; i++)
            if (pthread_create(&threads[i], NULL, cbn_job_main, &jobs[i]) != 0) {
                fprintf(stderr, "cbn: cannot start a thread for a BLAS job\\n");
                abort();  /* the started jobs would wait for it forever */
            }
        cbn_job_main(&jobs[0]);
        for (i = 1; i < numjobs; i++) pthread_join(threads[i], NULL);
        free(threads); free(jobs);
    }
    #ifdef _OPENMP
    #include <omp.h>
    #define CBN_OPENMP 1
    /* One batch of OpenBLAS jobs at a time in the whole process: OpenBLAS's callback path
       is not safe for two batches at once (tests/test_reliability.py trains two networks
       in two Python threads). Each batch uses every thread anyway. */
    static omp_lock_t cbn_jobs_lock;
    static void cbn_jobs_init(void) { omp_init_lock(&cbn_jobs_lock); }
    static void cbn_jobs_enter(void) { omp_set_lock(&cbn_jobs_lock); }
    static void cbn_jobs_leave(void) { omp_unset_lock(&cbn_jobs_lock); }
    /* 1 if a parallel region of n threads (at least two: the pool is for teams, and other
       libraries' teams may be larger than ours) started now by this thread might get
       fewer: dynamic team sizes, a thread limit below n, or no active level left (a region
       at the deepest active level OpenMP allows runs on one thread). The settings as they
       are now: the environment's, or those set since through the OpenMP API. */
    static int cbn_team_may_fall_short(int n) {
        if (n < 2) n = 2;
        return omp_get_dynamic() || omp_get_thread_limit() < n
               || omp_get_active_level() >= omp_get_max_active_levels();
    }
    /* Job i on thread i of a team of numjobs, and 1; or, if OpenMP gave fewer threads than
       asked, no job at all, and 0 (the jobs would wait for the missing threads forever).
       Every member sees the same team size, so either all run their job or none does. */
    static int cbn_run_jobs_on_team(cbn_dojob dojob, int numjobs, size_t elsize,
                                    void* jobdata, int arg) {
        int full = 0;
        #pragma omp parallel num_threads(numjobs)
        {
            int i = omp_get_thread_num();
            if (omp_get_num_threads() == numjobs) {
                if (i == 0) full = 1;  /* read after the region's closing barrier */
                dojob(i, (char*)jobdata + i * elsize, arg);
            }
        }
        return full;
    }
    #else
    #define CBN_OPENMP 0
    static int cbn_team_may_fall_short(int n) { return 1; }
    static int cbn_run_jobs_on_team(cbn_dojob dojob, int numjobs, size_t elsize,
                                    void* jobdata, int arg) { return 0; }
    static void cbn_jobs_enter(void) {}
    static void cbn_jobs_leave(void) {}
    static void cbn_jobs_init(void) {}
    #endif
    /* In a forked child, GNU OpenMP's pool is gone but still looks alive, and the next
       parallel region would wait for it forever. pthread_atfork, not os.register_at_fork:
       a fork made by C code too (leave only stores pointers, as a child handler must). */
    static void cbn_leave_pool_in_forked_children(void (*leave)(void)) {
        pthread_atfork(NULL, NULL, leave);
    }
    """
    int CBN_OPENMP
    void cbn_run_jobs_on_new_threads(openblas_dojob_callback dojob, int numjobs,
                                     size_t elsize, void* jobdata, int arg) nogil
    int cbn_run_jobs_on_team(openblas_dojob_callback dojob, int numjobs, size_t elsize,
                             void* jobdata, int arg) nogil
    int cbn_team_may_fall_short(int n) nogil
    void cbn_jobs_enter() nogil
    void cbn_jobs_leave() nogil
    void cbn_jobs_init() nogil
    void cbn_leave_pool_in_forked_children(void (*leave)() noexcept nogil) nogil

OPENMP = bool(CBN_OPENMP)  # built with OpenMP: one shared pool; else OpenBLAS's own threads
cdef bint _pool = CBN_OPENMP  # our parallel loops and OpenBLAS's jobs run on the OpenMP pool


# Other OpenBLAS libraries handed this pool too (share_pool_with), by their callback setters.
ctypedef void (*threads_callback_setter)(openblas_threads_callback callback) noexcept nogil
cdef enum: _MAX_SHARED = 16
cdef threads_callback_setter _shared[_MAX_SHARED]
cdef int _n_shared = 0


cdef void _unshare_pool() noexcept nogil:
    global _n_shared
    cdef int i
    for i in range(_n_shared):
        _shared[i](NULL)
    _n_shared = 0


cdef void _leave_pool() noexcept nogil:
    """For good: every OpenBLAS back on its own threads, one thread for our loops. Only
    stores pointers and flags (it also runs in forked children, before anything else)."""
    global _pool
    _pool = False
    scipy_openblas_set_threads_callback_function(NULL)
    _unshare_pool()


cdef inline void _check_pool() noexcept nogil:
    """Leave the pool before a GEMM whose jobs OpenMP might not all run at once (a short
    team would leave OpenBLAS's jobs waiting for each other forever): O(1), a few reads of
    OpenMP's settings."""
    if _pool and cbn_team_may_fall_short(scipy_openblas_get_num_threads()):
        _leave_pool()


# ---------------------------------------------------------------------------------------
# Other OpenBLAS libraries in the process (NumPy's, SciPy's) on the same pool.
#
# Each OpenBLAS has its own pthreads pool, whose threads spin for a while after every
# product before they sleep. On a machine with as many busy threads as cores, NumPy's spinning
# threads take the cores our team waits for at every barrier (docs/benchmarks.md). Handing
# their jobs to our pool as well leaves one set of threads in the process (cbn.threads.share_pool finds the libraries). Their results do not
# change: OpenBLAS splits the work the same way, only the threads that run it differ.
# ---------------------------------------------------------------------------------------

cdef void _run_shared_jobs(int sync, openblas_dojob_callback dojob, int numjobs,
                           size_t jobdata_elsize, void* jobdata,
                           int dojob_data) noexcept nogil:
    """Another OpenBLAS's parallel work: on the pool, or, where OpenMP gives a short team
    (e.g. a call from inside the caller's own parallel region), on threads started for it.
    The pool stays: the cause may be the caller's, not cbn's."""
    cbn_jobs_enter()
    if not (_pool and cbn_run_jobs_on_team(dojob, numjobs, jobdata_elsize, jobdata,
                                           dojob_data)):
        cbn_run_jobs_on_new_threads(dojob, numjobs, jobdata_elsize, jobdata, dojob_data)
    cbn_jobs_leave()


def share_pool_with(size_t setter):
    """Hand the parallel jobs of another OpenBLAS to this pool, given the address of its
    ``openblas_set_threads_callback_function``. Without OpenMP, or once the pool is left
    (also now, where OpenMP's settings say a team may fall short: ``_check_pool``), nothing
    changes (returns False)."""
    global _n_shared
    cdef threads_callback_setter set_callback = <threads_callback_setter>setter
    cdef int i
    if not setter:
        raise ValueError("setter must be a function's address")
    _check_pool()
    if not _pool:
        return False
    for i in range(_n_shared):
        if _shared[i] == set_callback:
            return True
    if _n_shared == _MAX_SHARED:
        raise RuntimeError(f"at most {_MAX_SHARED} other OpenBLAS libraries can share the pool")
    _shared[_n_shared] = set_callback
    _n_shared += 1
    set_callback(_run_shared_jobs)
    return True


def unshare_pool():
    """Give every other OpenBLAS its own threads back."""
    _unshare_pool()


def shared_pool_count():
    """How many other OpenBLAS libraries run their jobs on this pool now."""
    return _n_shared


if OPENMP:
    cbn_jobs_init()
    scipy_openblas_set_threads_callback_function(_run_blas_jobs)
    cbn_leave_pool_in_forked_children(_leave_pool)
    _check_pool()  # OMP_DYNAMIC, OMP_THREAD_LIMIT, OMP_MAX_ACTIVE_LEVELS: never on the pool


cdef inline int _threads() noexcept nogil:
    """Threads for our parallel loops: OpenBLAS's count, which threadpoolctl controls."""
    return scipy_openblas_get_num_threads() if _pool else 1


cdef inline int _team(int work) noexcept nogil:
    """Threads for a loop over ``work`` pieces: as many as there are threads, at most one
    per piece."""
    cdef int t = _threads()
    return t if t < work else work


def threads():
    """How many threads the gather uses now (OpenBLAS's count; 1 without the pool)."""
    return _threads()


def set_threads(int n):
    """Set OpenBLAS's thread count (that of the products and of our parallel loops)."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    scipy_openblas_set_num_threads(n)


cdef int _held_slices = 0  # hold_slices: first-layer slices as for this many threads, or 0


def hold_slices(int threads):
    """Slice the first layer as for ``threads`` threads whatever the thread count (0: as many
    slices as threads again), so that changing threads changes no result (cbn.threads)."""
    global _held_slices
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _held_slices = threads


cdef inline int _slice_threads() noexcept nogil:
    """The thread count the first layer's slices are made for now: the held one, if any,
    else OpenBLAS's, on the pool or not, so that leaving the pool (an OpenMP setting, a
    fork) changes which threads run the slices, never the sums; 1 without OpenMP."""
    if _held_slices:
        return _held_slices
    return scipy_openblas_get_num_threads() if CBN_OPENMP else 1


def slice_threads():
    """The thread count the first layer's slices are made for now (``_slice_threads``)."""
    return _slice_threads()

# Inverted dropout and the counter-based hash it shares with augmentation. Included by _ops.pyx.

# Dropout masks come from a counter-based hash, so the forward and backward passes (and a
# gradient check holding the seed) regenerate the same mask without storing it. The key mixes
# (seed, step, layer) with splitmix64 once; each element then takes a 32-bit hash of its
# index, which the compiler vectorises (a 64-bit multiply per element would stay scalar).

cdef inline uint64_t _splitmix64(uint64_t x) noexcept nogil:
    """splitmix64's output function of x + golden gamma."""
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline uint64_t _dropout_key(uint64_t seed, uint64_t step, uint64_t layer) noexcept nogil:
    """One 64-bit key per (seed, step, layer)."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ layer)


cdef inline uint32_t _hash32(uint32_t x) noexcept nogil:
    """A 32-bit integer hash (lowbias32)."""
    x ^= x >> 16
    x *= 0x7FEB352DU
    x ^= x >> 15
    x *= 0x846CA68BU
    x ^= x >> 16
    return x


cdef void _dropout(Py_ssize_t size, uint64_t key, uint32_t threshold, floating scale,
                   const floating* A, floating* B) noexcept nogil:
    """B[k] = A[k] scale if hash(k, key) >= threshold, else A[k] 0 (NaN stays NaN), with
    hash(k, key) = h32(h32(k ^ lo(key)) ^ hi(key)) and h32 = ``_hash32``. The forward pass
    and the backward pass (A = dB, B = dA) are this one map. B may alias A."""
    cdef Py_ssize_t k
    cdef uint32_t lo = <uint32_t>key, hi = <uint32_t>(key >> 32)
    cdef floating keep
    for k in range(size):
        keep = scale if _hash32(_hash32(<uint32_t>k ^ lo) ^ hi) >= threshold else 0
        B[k] = A[k] * keep


# arg: the keep threshold (an element is kept if its hash >= this, p 2^32) and 1 / (1 - p).
cdef int _dropout_op(const OpContext* c, const floating* A, floating* out, floating** buf,
                     const double* arg) noexcept nogil:
    """Inverted dropout in place, in training steps that ask for it: forward and backward
    are the one map of ``_dropout``."""
    if c.dropout:
        _dropout(<Py_ssize_t>c.n * c.m, _dropout_key(c.drop_seed, c.drop_step, c.layer),
                 <uint32_t>arg[0], <floating>arg[1], A, out)
    return 0


cdef int _dropout_backward_op(const OpContext* c, floating* G, const floating* out,
                              floating** buf, const double* arg) noexcept nogil:
    return _dropout_op(c, G, G, buf, arg)


cdef OpKernels _DROPOUT = OpKernels(_dropout_op[float], _dropout_backward_op[float],
                                    _dropout_op[double], _dropout_backward_op[double])


def dropout_op(double p):
    """Inverted dropout in place, drop probability 0 <= p < 1, in training only."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    # Kept when a uniform 32-bit hash is >= p 2^32: probability 1 - p.
    return _op_spec("dropout", _DROPOUT, None, (),
                    (float(min(round(p * 2.0 ** 32), 2 ** 32 - 1)), 1.0 / (1.0 - p)),
                    False, False)


def dropout(const floating[:, ::1] A, floating[:, ::1] B, double p, uint64_t seed,
            uint64_t step, uint64_t layer):
    """B = A times the inverted-dropout mask of (seed, step, layer): forward and backward."""
    cdef uint32_t threshold = <uint32_t>min(round(p * 2.0 ** 32), 2 ** 32 - 1)
    with nogil:
        _dropout(<Py_ssize_t>A.shape[0] * A.shape[1], _dropout_key(seed, step, layer),
                 threshold, <floating>(1 / (1 - p)), &A[0, 0], &B[0, 0])

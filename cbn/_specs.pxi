# The op interface and the typed seam between cbn.network and Plan: OpContext, OpKernels,
# OpSpec and LayerSpec, and the checks on the buffers they hand over. Included by _ops.pyx
# before the op files, which build on it.

# A network is a sequence of blocks: a linear layer followed by up to MAX_OPS element-wise
# ops (the hidden blocks' norm, activation, dropout and residual; none after the output
# layer). Each op reads the previous op's output (the linear layer's S first) and writes its
# own ``out`` (or works in place); the backward pass runs the ops in reverse, in place on the
# block's S buffer, which then holds the gradient w.r.t. S.
#
# An op is one file: its kernels (fused over float and double), a forward and a backward
# function of the signatures below, one ``OpKernels`` line naming their float and double
# specialisations, and a ``def`` constructor returning its ``OpSpec`` (its arrays and
# scalars). The plan calls an op only through its two function pointers and hands it its own
# arrays in the order its spec lists them: it knows no op by name.

cdef enum: MAX_OPS = 4
cdef enum: MAX_BUFFERS = 12   # arrays of one op (batch norm has the most)
cdef enum: MAX_ARGS = 2       # scalars of one op


# What every op of one pass may read: the batch and block, the mode and the options.
cdef struct OpContext:
    int n, m, layer          # rows of the batch, width of the block, its index (0-based)
    bint training            # batch statistics (else running ones); dropout possible
    bint update_stats        # training: update running statistics
    bint first               # training: the first batch (running statistics are copied)
    bint dropout             # apply the dropout masks of (drop_seed, drop_step, layer)
    uint64_t drop_seed
    uint64_t drop_step
    double eps, alpha        # batch norm's eps (also layer norm's) and EMA factor
    double var_factor        # n / (n - 1) for an unbiased running variance, else 1
    bint update              # backward: parameters step by -lr times their gradient
    double lr


# forward(c, A, out, buf, arg): A (n, m) into out (n, m), which may be A itself; returns 1
# if something went non-finite that the loss may not show (a statistic, an input to a ReLU).
# backward(c, G, out, buf, arg): G (n, m) holds the gradient w.r.t. the op's output and
# receives the one w.r.t. its input; ``out`` is what the forward pass wrote. Returns 1 if
# an updated parameter is not finite.
ctypedef int (*OpForward32)(const OpContext* c, const float* A, float* out, float** buf,
                            const double* arg) noexcept nogil
ctypedef int (*OpBackward32)(const OpContext* c, float* G, const float* out, float** buf,
                             const double* arg) noexcept nogil
ctypedef int (*OpForward64)(const OpContext* c, const double* A, double* out, double** buf,
                            const double* arg) noexcept nogil
ctypedef int (*OpBackward64)(const OpContext* c, double* G, const double* out, double** buf,
                             const double* arg) noexcept nogil


cdef struct OpKernels:
    OpForward32 forward32
    OpBackward32 backward32
    OpForward64 forward64
    OpBackward64 backward64


cdef size_t _addr(object a) except 0:
    if a is None:
        raise ValueError("missing buffer")
    return <size_t>a.__array_interface__['data'][0]


cdef size_t _buffer(str name, object a, object dtype, Py_ssize_t size,
                    bint writeable=True) except 0:
    """The address of ``a`` after checking it can hold ``size`` values of ``dtype``,
    contiguous (and writeable when the plan writes it): the kernels trust these pointers."""
    if a is None:
        raise ValueError(f"{name}: missing buffer")
    if not hasattr(a, "__array_interface__") or a.dtype != dtype:
        raise TypeError(f"{name} must be a {dtype} array, got {type(a).__name__} "
                        f"{getattr(a, 'dtype', '')}")
    if not a.flags.c_contiguous or a.size < size or (writeable and not a.flags.writeable):
        raise ValueError(f"{name} must be a C-contiguous{' writeable' if writeable else ''} "
                         f"array of at least {size} values, got shape {a.shape}")
    return _addr(a)


# The sizes an op's array may have, in units of the plan: (cap, m), (m,) or (cap,).
BATCH, FEATURE, SAMPLE = "batch", "feature", "sample"


cdef class OpSpec:
    """One element-wise op of a hidden block and the arrays it works on: the typed seam
    between ``cbn.architecture`` (which allocates) and ``Plan`` (which runs). Made by the ops'
    constructors (``relu_op``, ``batch_norm_op``, ...); Plan checks every array's dtype and
    size against the block's width and its batch capacity.

    name: the op's name; out: its (cap, m) output, or None to work in place on its input;
    buffers: (name, array or None, size) per array, size one of BATCH, FEATURE, SAMPLE, in
    the order the op's kernels index them (None: a NULL pointer, where the op allows it);
    args: its scalars; kinks: its output > 0 marks the units past a ReLU's kink;
    feeds_input_grad: its backward pass writes into the gradient w.r.t. the block's input,
    to which the linear layer's product then adds."""
    cdef readonly str name
    cdef readonly object out
    cdef readonly tuple buffers
    cdef readonly tuple args
    cdef readonly bint kinks
    cdef readonly bint feeds_input_grad
    cdef OpKernels kernels

    @property
    def is_relu(self):
        """True if the op ends in a ReLU (its output > 0 marks the active units)."""
        return self.kinks

    def array(self, str name):
        """The array the op calls ``name``."""
        for key, a, _ in self.buffers:
            if key == name:
                return a
        raise KeyError(name)


cdef OpSpec _op_spec(str name, OpKernels kernels, object out, tuple buffers, tuple args,
                     bint kinks, bint feeds_input_grad):
    """An ``OpSpec`` (for the ops' constructors)."""
    if len(buffers) > MAX_BUFFERS or len(args) > MAX_ARGS:
        raise ValueError(f"an op has at most {MAX_BUFFERS} arrays and {MAX_ARGS} scalars")
    cdef OpSpec op = OpSpec()
    op.name, op.kernels, op.out, op.buffers, op.args = name, kernels, out, buffers, args
    op.kinks, op.feeds_input_grad = kinks, feeds_input_grad
    return op


cdef class LayerSpec:
    """A linear layer S = A W + b (W (d_in, d_out), S (cap, d_out)) with its gradients dW, db,
    the optional transposed-product workspace WT, and the ops that follow it (none after the
    output layer)."""
    cdef readonly object W, b, dW, db, S, WT
    cdef readonly tuple ops

    def __init__(self, W, b, dW, db, S, WT=None, ops=()):
        self.W, self.b, self.dW, self.db, self.S, self.WT = W, b, dW, db, S, WT
        self.ops = tuple(ops)
        if len(self.ops) > MAX_OPS or not all(isinstance(op, OpSpec) for op in self.ops):
            raise ValueError(f"ops must be at most {MAX_OPS} OpSpec, got {self.ops!r}")
        if len(W.shape) != 2:
            raise ValueError(f"W must be 2-D, got shape {W.shape}")

    @property
    def d_in(self):
        return self.W.shape[0]

    @property
    def d_out(self):
        return self.W.shape[1]

    @property
    def output(self):
        """The block's output: its last op's ``out`` (in-place ops keep their input), else S."""
        for op in reversed(self.ops):
            if op.out is not None:
                return op.out
        return self.S

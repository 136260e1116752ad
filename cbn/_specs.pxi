# The typed seam between cbn.network and Plan: OpSpec and LayerSpec, and the checks on the
# buffers they hand over. Included by _ops.pyx before _plan.pxi.

# A network is a sequence of blocks: a linear layer followed by up to MAX_OPS element-wise
# ops (the hidden blocks' activations; none after the output layer). Each op reads the
# previous op's output (the linear layer's S first) and writes its own ``out``; the backward
# pass runs the ops in reverse, in place on the block's S buffer, which then holds the
# gradient w.r.t. S. Adding an op: a kernel pair, an OpKind, its two cases in
# _op_forward/_op_backward and a constructor on OpSpec.

cdef enum OpKind:
    OP_BN_RELU = 0   # batch norm then ReLU, fused (the course's block)
    OP_RELU = 1
    OP_BN = 2
    OP_DROPOUT = 3   # inverted dropout, in place on its input; training only

cdef enum: MAX_OPS = 4


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


cdef class OpSpec:
    """One element-wise op of a hidden block and the arrays it works on: the typed seam
    between ``cbn.network`` (which allocates) and ``Plan`` (which runs). Made by the
    constructors ``relu``, ``batch_norm`` and ``dropout``; Plan checks every array's dtype
    and size against the block's width and its batch capacity."""
    cdef readonly int kind
    cdef readonly object out, Shat, gamma, beta, dgamma, dbeta, rmean, rvar
    cdef readonly object mean, var, inv_std, escale, eshift
    cdef readonly double p

    @staticmethod
    def relu(out):
        """H = max(0, A); ``out`` (cap, m) receives H."""
        cdef OpSpec op = OpSpec()
        op.kind, op.out = OP_RELU, out
        return op

    @staticmethod
    def batch_norm(*, out, Shat, gamma, beta, dgamma, dbeta, rmean, rvar, mean, var, inv_std,
                   escale, eshift, bint relu=False):
        """Z = gamma (A - mean) / sqrt(var + eps) + beta, then max(0, Z) with ``relu`` (one
        fused kernel). ``out`` and ``Shat`` are (cap, m) workspaces, the rest (m,) vectors."""
        cdef OpSpec op = OpSpec()
        op.kind = OP_BN_RELU if relu else OP_BN
        op.out, op.Shat, op.gamma, op.beta = out, Shat, gamma, beta
        op.dgamma, op.dbeta = dgamma, dbeta
        op.rmean, op.rvar, op.mean, op.var, op.inv_std = rmean, rvar, mean, var, inv_std
        op.escale, op.eshift = escale, eshift
        return op

    @staticmethod
    def dropout(double p):
        """Inverted dropout in place, drop probability 0 <= p < 1, in training only."""
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        cdef OpSpec op = OpSpec()
        op.kind, op.p = OP_DROPOUT, p
        return op

    @property
    def is_relu(self):
        """True if the op ends in a ReLU (its output > 0 marks the active units)."""
        return self.kind in (OP_RELU, OP_BN_RELU)


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
        """The block's output: its last op's ``out`` (dropout works in place), else S."""
        for op in reversed(self.ops):
            if op.out is not None:
                return op.out
        return self.S

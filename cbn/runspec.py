"""fit's arguments, validated once: the network, the prepared data, the step count, the
schedule and the update rule; and the signature a checkpoint must match to continue the run."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import zlib
from typing import Optional

import numpy as np

from . import _ops
from . import _validate as check
from . import inputs, losses, optim
from .augment import Augment, Mixup
from .augment import mixup as as_mixup
from .ema import EMA
from .ema import ema as as_ema
from .network import Network
from .schedule import ConstantLR, CyclicLR

OPTIMIZER_METHODS = ("bind", "step", "state_dict", "load_state_dict")


def steps_per_epoch(n: int, batch_size: int, batch_norm: bool) -> int:
    """Mini-batches per epoch: the full batches plus the remainder, except a remainder of
    one sample with batch norm (its batch statistics are undefined), which is dropped."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= (2 if batch_norm else 1) else 0)


def _checksum(*arrays: Optional[np.ndarray]) -> str:
    """CRC-32 of the arrays' shapes, dtypes and bytes."""
    crc = 0
    for a in arrays:
        if a is None:
            crc = zlib.crc32(b"None", crc)
            continue
        crc = zlib.crc32(f"{a.shape}{a.dtype.str}".encode(), crc)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return f"{crc:08x}"


class RunSpec:
    """fit's arguments, validated: the network, the prepared data, the step count, the
    schedule and the update rule. ``signature()`` is what a checkpoint must match.
    ``normalization`` is the one the run uses: the given one, else the network's own
    (``cbn.inputs.resolve``)."""

    def __init__(self, net, X, y, X_val, y_val, lam, batch_size, schedule, cycles, epochs,
                 seed, normalization, momentum, eval_every, eval_train, optimizer,
                 augment=None, loss="cross_entropy", label_smoothing=0.0,
                 sample_weight=None, mixup=None, ema=None) -> None:
        if not isinstance(net, Network):
            raise TypeError(f"net must be a cbn.Network, got {type(net).__name__}")
        if not all(np.isfinite(v).all() for v in (net.flat_params, *net.running_stats.values())):
            # Divergence recovery restores a snapshot of the starting state: it must be good.
            raise ValueError("net holds NaN or inf in its parameters or running statistics")
        self.net = net
        self.lam = check.real("lam", lam, low=0.0)
        self.batch_size = check.integer("batch_size", batch_size, low=1)
        self.momentum = check.real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if isinstance(schedule, numbers.Real) and not isinstance(schedule, (bool, np.bool_)):
            schedule = ConstantLR(schedule)  # any real number, numpy's float32 included
        if not (callable(getattr(schedule, "lr", None))
                and callable(getattr(schedule, "state_dict", None))):
            raise TypeError("schedule must be a CyclicLR, ConstantLR, another schedule of "
                            f"cbn.schedule or a number, got {schedule!r}")
        self.schedule = schedule
        self.optimizer = optimizer
        self.fused_momentum: Optional[float] = self.momentum
        if optimizer is not None:
            missing = [m for m in OPTIMIZER_METHODS if not callable(getattr(optimizer, m, None))]
            if missing or not hasattr(optimizer, "fused_momentum"):
                raise TypeError(f"optimizer must be an optimizer of cbn.optim, got {optimizer!r}")
            if self.momentum:
                raise ValueError("momentum= sets the built-in SGD; with optimizer= give the "
                                 "momentum to the optimizer")
            optim.bind_network(optimizer, net)
            self.fused_momentum = optimizer.fused_momentum
            if self.fused_momentum is not None:
                self.fused_momentum = check.real("optimizer.fused_momentum",
                                                 self.fused_momentum, low=0.0, high=1.0,
                                                 high_open=True)
        # The network's own normalization when none is passed (False: X as it is).
        normalization = inputs.resolve(X, normalization, net.normalization, net.input_dim)
        self.normalization = normalization
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment must be a cbn.Augment or None, got {augment!r}")
        self.augment: Optional[Augment] = augment if augment is not None and augment.active \
            else None
        if self.augment is not None:
            self.augment.shape_for(net.input_dim, net.dtype)
        self.mixup: Optional[Mixup] = as_mixup(mixup)
        self.ema: Optional[EMA] = as_ema(ema)
        if self.ema is not None and self.ema.precise_bn and not net.batch_norm:
            raise ValueError("ema's precise_bn recomputes batch-norm statistics; the network "
                             "has none")
        self.src, self.shift, self.scale = net.prepare_input(X, normalization)
        self.n = n = self.src.shape[0]
        # Training steps score the (weighted) loss; evaluations the unweighted one.
        self.targets = losses.targets(y, n, net.num_classes, net.dtype, loss=loss,
                                      label_smoothing=label_smoothing,
                                      sample_weight=sample_weight)
        self.y = self.targets.labels
        if self.mixup is not None and self.targets.loss != "cross_entropy":
            raise ValueError(f"mixup mixes cross-entropy targets; loss={loss!r} has none")
        self.eval_targets = dataclasses.replace(self.targets, weights=None)
        if net.batch_norm and min(n, self.batch_size) < 2:
            raise ValueError("batch norm needs mini-batches of at least 2 samples; got "
                             f"batch_size={batch_size} with {n} training rows")
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        self.val_src = self.y_val = None
        if X_val is not None:
            self.val_src, _, _ = net.prepare_input(X_val, normalization, name="X_val")
            # Checked now rather than at the first evaluation, an epoch later.
            if self.val_src.dtype.kind == "f" and not _ops.all_finite(self.val_src.reshape(-1)):
                raise check.non_finite_input("X_val", self.val_src, range(len(self.val_src)))
            self.y_val = losses.targets(y_val, self.val_src.shape[0], net.num_classes,
                                        net.dtype, loss=self.targets.loss,
                                        label_smoothing=self.targets.label_smoothing,
                                        name="y_val")
        self.eval_every = (None if eval_every is None
                           else check.integer("eval_every", eval_every, low=1))
        self.eval_train = bool(eval_train)
        self.seed = None if seed is None else check.integer("seed", seed, low=0)

        self.per_epoch = steps_per_epoch(n, self.batch_size, net.batch_norm)
        if (cycles is None) == (epochs is None):
            raise ValueError("give exactly one of cycles= and epochs=")
        if cycles is not None:
            if not isinstance(schedule, CyclicLR):
                raise ValueError("cycles= needs a CyclicLR schedule; use epochs= otherwise")
            cycles = check.real("cycles", cycles, low=0.0, low_open=True)
            steps = cycles * schedule.cycle_length
            if not math.isfinite(steps):
                raise ValueError(f"cycles={cycles} makes more steps than a float can count")
            self.total = int(round(steps))
        else:
            self.total = check.integer("epochs", epochs, low=1) * self.per_epoch
        if self.total < 1:
            raise ValueError("the run has no steps; raise cycles or epochs")
        self._signature: Optional[dict] = None

    @property
    def fused(self) -> bool:
        """True if the update runs inside the compiled step (the built-in SGD)."""
        return self.fused_momentum is not None

    def signature(self) -> dict:
        """What must match for a checkpoint to continue this run (JSON-ready)."""
        if self._signature is None:
            schedule = [type(self.schedule).__name__, self.schedule.state_dict()]
            optimizer = None
            if self.optimizer is not None:  # its name and hyper-parameters, not its buffers
                optimizer = {k: v for k, v in self.optimizer.state_dict().items()
                             if not isinstance(v, np.ndarray) and k != "step"}
            with np.errstate(over="ignore"):  # a float64 mean beyond float32 hashes as inf
                shift = self.shift.astype(self.net.dtype)
            self._signature = json.loads(json.dumps(dict(
                n=self.n, batch_size=self.batch_size, lam=self.lam, momentum=self.momentum,
                schedule=schedule, total=self.total, seed=self.seed,
                eval_every=self.eval_every, eval_train=self.eval_train,
                # The shift in the network's dtype: the form the checkpoints' signatures hold.
                data=_checksum(self.src, self.y, self.val_src,
                               None if self.y_val is None else self.y_val.labels, shift,
                               self.scale), **({} if optimizer is None else
                                               dict(optimizer=optimizer)),
                **self._loss_signature(),
                **({} if self.augment is None else dict(augment=self.augment.config())),
                **({} if self.mixup is None else dict(mixup=self.mixup.config())),
                **({} if self.ema is None else dict(ema=self.ema.config()))),
                default=lambda value: value.item()))
        return self._signature

    def _loss_signature(self) -> dict:
        """The loss options, when not plain cross-entropy (which adds nothing, so a plain run's
        signature is the same with or without these options in cbn)."""
        t = self.targets
        if t.loss == "cross_entropy" and not t.label_smoothing and t.weights is None:
            return {}
        val = None if self.y_val is None else self.y_val.values
        return dict(loss=t.loss, label_smoothing=t.label_smoothing,
                    targets=_checksum(t.values, t.weights, val))

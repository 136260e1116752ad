"""Peak resident memory and wall time of a whole training run on the full data set, in one process.

    python scripts/peak_memory.py --data /path/to/cifar-10-batches-py            # 1 epoch
    python scripts/peak_memory.py --data /path/to/cifar-10-batches-py --epochs 20

Loads CIFAR-10 (train 45,000, validation 5,000, test 10,000 images, kept as uint8), trains
the course's 3-layer BN network [50, 50] (He init, batch 100, lambda 0.005, cyclical eta
1e-5..1e-1 with n_s 2250) in float32 by default, recording cost, loss and accuracy on the
whole training and validation sets after every epoch, then prints the fit time, the test
accuracy and the process's peak resident set size (Linux ``ru_maxrss``), which includes
the interpreter and imports. ``--synthetic`` uses random uint8 images of the same shapes
instead of CIFAR-10 (for machines without the data; accuracies then mean nothing).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Optional, Sequence

import numpy as np


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic():
    """Random uint8 images and labels of CIFAR-10's full-protocol shapes, with a
    normalisation fitted on the training part, as a cbn.data.CIFAR10-like namespace."""
    from cbn.data import Normalization
    rng = np.random.default_rng(0)

    def split(n):
        return argparse.Namespace(images=rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                  labels=rng.integers(0, 10, n).astype(np.int64))

    train, val, test = split(45000), split(5000), split(10000)
    return argparse.Namespace(train=train, val=val, test=test,
                              normalization=Normalization.fit(train.images), source="synthetic")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data", help="cifar-10-batches-py folder (default: cbn.data's search)")
    where.add_argument("--synthetic", action="store_true", help="random images, real shapes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    import cbn
    from cbn.data import load_cifar10
    after_imports = rss_mib()
    data = synthetic() if args.synthetic else load_cifar10(args.data)
    after_load = rss_mib()
    norm = data.normalization
    net = cbn.Network(3072, [50, 50], 10, dtype=np.dtype(args.dtype), seed=0)
    started = time.perf_counter()
    history = cbn.fit(net, data.train.images, data.train.labels, X_val=data.val.images,
                      y_val=data.val.labels, lam=0.005, batch_size=100,
                      schedule=cbn.CyclicLR(1e-5, 1e-1, 2250), epochs=args.epochs, seed=0,
                      normalization=norm, progress=False, eval_train=True)
    fit_seconds = time.perf_counter() - started
    test_accuracy = net.accuracy(data.test.images, data.test.labels, normalization=norm)
    result = {
        "data": str(getattr(data, "source", args.data)), "dtype": args.dtype,
        "epochs": args.epochs, "evaluations": len(history),
        "fit_seconds": round(fit_seconds, 3),
        "train_accuracy": round(history.train_accuracy[-1], 4),
        "val_accuracy": round(history.val_accuracy[-1], 4),
        "test_accuracy": round(test_accuracy, 4),
        "rss_mib_after_imports": round(after_imports, 1),
        "rss_mib_after_loading": round(after_load, 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

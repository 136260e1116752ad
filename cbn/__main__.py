"""``cbn`` (or ``python -m cbn``): train the course's 3-layer batch-norm network and print its scores.

Uses the CIFAR-10 folder given by --data (or found in the usual places), else the sample
that ships with the package, so it runs anywhere straight after ``pip install .``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .data import load_or_sample
from .experiment import RunConfig, run


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cbn", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a cifar-10-batches-py folder (default: search, then the shipped sample)")
    parser.add_argument("--protocol", choices=("full", "seed"), default="full")
    parser.add_argument("--hidden", type=int, nargs="*", default=[50, 50], help="hidden widths")
    parser.add_argument("--no-bn", action="store_true", help="train without batch normalization")
    parser.add_argument("--lam", type=float, default=0.005)
    parser.add_argument("--cycles", type=float, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the trained network to this .npz file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    data = load_or_sample(args.data, protocol=args.protocol)
    config = RunConfig(hidden=tuple(args.hidden), batch_norm=not args.no_bn, lam=args.lam,
                       cycles=args.cycles, dtype=args.dtype)
    print(f"data: {data.source} ({len(data.train)} train / {len(data.val)} val / "
          f"{len(data.test)} test); network: {config.hidden}, "
          f"{'BN' if config.batch_norm else 'no BN'}, {args.dtype}", file=sys.stderr)
    result = run(data, config, seed=args.seed, progress=not args.no_progress)
    if args.save:
        result.net.save(args.save)
    print(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

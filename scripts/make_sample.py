"""Make cbn/sample_data/cifar10_sample.npz (and its README) from the real CIFAR-10 folder.

    python scripts/make_sample.py --source /path/to/cifar-10-batches-py

The sample is class-balanced and deterministic: for each class c = 0..9 in turn, one
``numpy.random.default_rng(seed)`` draws train+val images without replacement from the
training images of class c (global official indices 0..49999 over data_batch_1..5), the first
``--train-per-class`` going to train and the rest to val; then, class by class again, it draws
``--test-per-class`` test images from test_batch. Each split is sorted by official index. The
npz is written with fixed zip timestamps, so the same inputs give the same bytes (for the
same zlib).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "cbn" / "sample_data" / "cifar10_sample.npz"
MAX_BYTES = 10_000_000


def select(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Official indices of the sample: {"train", "val", "test"} -> sorted int64 arrays."""
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        draw = rng.choice(np.flatnonzero(train_labels == c), size=n_train + n_val, replace=False)
        picked["train"].append(draw[:n_train])
        picked["val"].append(draw[n_train:])
    for c in range(10):
        picked["test"].append(
            rng.choice(np.flatnonzero(test_labels == c), size=n_test, replace=False)
        )
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in picked.items()}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


README = """# Shipped CIFAR-10 sample

`cifar10_sample.npz` is a small class-balanced sample of the real CIFAR-10 images, shipped
so that cbn's examples and tests run without the 163 MiB data set. Load it with
`cbn.data.load_sample()` (no pickle involved: `np.load(..., allow_pickle=False)`).

## Provenance

* Source: the CIFAR-10 python-version files (`data_batch_1..5`, `test_batch`,
  `batches.meta`) of Krizhevsky, Nair and Hinton, *Learning Multiple Layers of Features from
  Tiny Images*, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html). Pixels and labels are
  unchanged.
* Made by `python scripts/make_sample.py --source DIR` (DIR: the `cifar-10-batches-py`
  folder), with `--train-per-class {n_train} --val-per-class {n_val} --test-per-class {n_test}
  --seed {seed}`.
* Selection rule: `numpy.random.default_rng({seed})`; for each class c = 0..9 in turn, draw
  {n_train_val} training images of class c without replacement from the 50,000 official
  training images (global index 0..49999 = 10000*(k-1) + row in `data_batch_k`); the first
  {n_train} go to train, the other {n_val} to val (so train and val are disjoint). Then, class
  by class, draw {n_test} images of class c from `test_batch`. Each split is sorted by
  official index.

Files read (sha256):

{source_files}
{source_note}
## Contents

| split | images | per class | drawn from |
| --- | --- | --- | --- |
| train | {train_total} | {n_train} | data_batch_1..5 |
| val | {val_total} | {n_val} | data_batch_1..5 (disjoint from train) |
| test | {test_total} | {n_test} | test_batch |

Arrays: `{{train,val,test}}_images` uint8 (n, 3072) in the official row layout (1024 red,
1024 green, 1024 blue, each 32x32 row-major); `{{split}}_labels` int64 (n,) in 0..9;
`{{split}}_indices` int64 (n,), the official index of each row (training: global index over
the five batches; test: row in `test_batch`); `label_names` str (10,).

File size: {size} bytes. sha256: `{sha256}`

The npz is written with fixed zip timestamps, so rerunning the script on the same files
reproduces these bytes (given the same zlib).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, type=Path, help="the cifar-10-batches-py folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--source-note",
        default="",
        help="a sentence on where the source copy came from, for the README",
    )
    args = parser.parse_args(argv)

    from cbn import data  # the installed cbn (pip install .) reads the official files
    batches = [data.read_batch(args.source / name) for name in data.TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in batches])
    train_labels = np.concatenate([labels for _, labels in batches])
    del batches
    test_images, test_labels = data.read_batch(args.source / data.TEST_FILE)
    if len(train_labels) != 50_000 or len(test_labels) != 10_000:
        parser.error(
            f"{args.source} is not the full CIFAR-10 "
            f"(train {len(train_labels)}, test {len(test_labels)})"
        )

    indices = select(
        train_labels,
        test_labels,
        args.train_per_class,
        args.val_per_class,
        args.test_per_class,
        args.seed,
    )
    arrays: dict[str, np.ndarray] = {"label_names": np.array(data.LABEL_NAMES)}
    for name, (images, labels) in {
        "train": (train_images, train_labels),
        "val": (train_images, train_labels),
        "test": (test_images, test_labels),
    }.items():
        arrays[f"{name}_images"] = images[indices[name]]
        arrays[f"{name}_labels"] = labels[indices[name]]
        arrays[f"{name}_indices"] = indices[name]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.out, arrays)
    blob = args.out.read_bytes()
    size, sha256 = len(blob), hashlib.sha256(blob).hexdigest()
    if size > MAX_BYTES:
        args.out.unlink()
        parser.error(f"sample would be {size} bytes > {MAX_BYTES}; draw fewer images per class")
    source_files = "\n".join(
        f"* `{name}`: `{hashlib.sha256((args.source / name).read_bytes()).hexdigest()}`"
        for name in (*data.TRAIN_FILES, data.TEST_FILE)
    )
    (args.out.parent / "README.md").write_text(
        README.format(
            source_files=source_files,
            source_note=f"\n{args.source_note}\n" if args.source_note else "",
            n_train=args.train_per_class,
            n_val=args.val_per_class,
            n_test=args.test_per_class,
            n_train_val=args.train_per_class + args.val_per_class,
            seed=args.seed,
            train_total=len(indices["train"]),
            val_total=len(indices["val"]),
            test_total=len(indices["test"]),
            size=size,
            sha256=sha256,
        )
    )
    print(
        f"wrote {args.out} ({size} bytes, sha256 {sha256}): "
        + ", ".join(f"{name} {len(idx)}" for name, idx in indices.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

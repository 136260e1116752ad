"""Kill a training run with SIGKILL mid-way (several times), resume it from its checkpoint
each time, and check that the result equals a run that was never interrupted: the same
parameters and the same history (wall_time aside), compared exactly.

    python scripts/kill_resume_demo.py                 # the shipped CIFAR-10 sample
    python scripts/kill_resume_demo.py --data synthetic --steps 3000 --kills 5

Every run is a subprocess (``--worker``) calling ``cbn.fit(..., checkpoint=PATH,
checkpoint_every=N, resume=True)``, so each kill is a real SIGKILL of a real process: no
handler runs, whatever the process was doing (including writing a checkpoint) is cut off.
The driver waits until a checkpoint at a chosen step has appeared, kills the worker, and
starts it again. Exit status 0 when the resumed result is identical, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

try:
    import cbn  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # a source checkout with the extension built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbn  # noqa: E402
from cbn import CyclicLR, Network, fit  # noqa: E402
from cbn._files import atomic_savez  # noqa: E402
from cbn.checkpoint import CheckpointError, load_checkpoint  # noqa: E402


def build(config: dict):
    """The data and untrained network a run starts from, made the same way in every process."""
    if config["data"] == "sample":
        from cbn.data import load_sample
        sample = load_sample()
        X, y, norm = sample.train.images, sample.train.labels, sample.normalization
        X_val, y_val = sample.val.images, sample.val.labels
    else:
        rng = np.random.default_rng(0)
        n, d, k = 600, 40, 5
        y = np.arange(n) % k
        X = (rng.standard_normal((n, d)) + rng.standard_normal((k, d))[y]).astype(np.float32)
        X_val, y_val, norm = X[:100], y[:100], None
    net = Network(X.shape[1], config["hidden"], 10 if config["data"] == "sample" else 5,
                  dtype=np.float32, seed=1)
    return net, X, y, X_val, y_val, norm


def train(config: dict, checkpoint: str, out: str) -> None:
    """Worker: train (resuming from ``checkpoint`` if it exists), then save the result."""
    net, X, y, X_val, y_val, norm = build(config)
    batch = config["batch_size"]
    per_epoch = X.shape[0] // batch
    schedule = CyclicLR(1e-5, 0.1, max(1, config["steps"] // 4))
    history = fit(net, X, y, X_val=X_val, y_val=y_val, lam=0.005, batch_size=batch,
                  schedule=schedule, cycles=2, seed=7, momentum=0.5, normalization=norm,
                  progress=False, eval_every=max(1, per_epoch // 2),
                  checkpoint=checkpoint, checkpoint_every=config["checkpoint_every"],
                  resume=True)
    atomic_savez(out, params=net.flat_params, code=np.array(_code_fingerprint()),
                 history=np.array(json.dumps({k: v for k, v in history.as_dict().items()
                                              if k != "wall_time"})))


def _code_fingerprint() -> str:
    """SHA-256 of the cbn package's files (sources and compiled extension): runs compared
    bit for bit must run the same code, which a checkout being edited may not."""
    h = hashlib.sha256()
    for path in sorted(Path(cbn.__file__).resolve().parent.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".so", ".pyd"):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _worker(config: dict, checkpoint: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
           "--config", json.dumps(config), "--checkpoint", str(checkpoint), "--out", str(out)]
    # Workers import the very cbn this process runs (installed or from the source tree).
    package_parent = str(Path(cbn.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    if config.get("blas_threads"):  # the same count in every run: results depend on it
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(config["blas_threads"])
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, cwd=checkpoint.parent)


def _checkpoint_step(path: Path, full: bool = False) -> int:
    """Step of the checkpoint at ``path`` (-1 if there is none yet). Readable at any moment,
    because checkpoints are replaced atomically. ``full`` parses and checks the whole file;
    otherwise only the step is read (cheap enough to poll)."""
    try:
        if full:
            return load_checkpoint(path).step
        with np.load(path, allow_pickle=False) as f:
            return int(f["step"])
    except FileNotFoundError:
        return -1
    except Exception as exc:  # a torn or partial file: what atomic writes must prevent
        raise CheckpointError(f"{path}: unreadable: {exc}") from exc


def _result(path: Path):
    with np.load(path, allow_pickle=False) as f:
        return f["params"].copy(), json.loads(str(f["history"])), str(f["code"])


def run_demo(config: dict, kills: int, folder: Path, timeout: float = 300.0) -> Dict:
    """Reference run, then a run killed ``kills`` times and resumed; return the comparison."""
    reference = _worker(config, folder / "reference.ckpt.npz", folder / "reference.out.npz")
    if reference.wait(timeout) != 0:
        raise RuntimeError(f"the reference run failed with exit status {reference.returncode}")

    checkpoint, out = folder / "run.ckpt.npz", folder / "run.out.npz"
    total = 2 * 2 * max(1, config["steps"] // 4)  # cycles=2 of a CyclicLR with step_size steps/4
    killed_at: List[int] = []
    unreadable = 0
    rng = np.random.default_rng(0)
    for i in range(kills):
        target = total * (i + 1) // (kills + 1)  # kill points spread over the run
        worker = _worker(config, checkpoint, out)
        deadline = time.monotonic() + timeout
        step = -1
        while worker.poll() is None and time.monotonic() < deadline:
            try:
                step = _checkpoint_step(checkpoint)
            except CheckpointError:  # would mean a torn checkpoint: counted, must stay 0
                unreadable += 1
            if step >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere, also mid-write or between checkpoints
        if worker.poll() is not None:
            break  # finished before the kill point: nothing more to kill
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        try:
            killed_at.append(_checkpoint_step(checkpoint, full=True))
        except CheckpointError:
            unreadable += 1
    final = _worker(config, checkpoint, out)
    if final.wait(timeout) != 0:
        raise RuntimeError(f"the resumed run failed with exit status {final.returncode}")

    ref_params, ref_history, ref_code = _result(folder / "reference.out.npz")
    params, history, code = _result(out)
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
    return dict(same_code=code == ref_code == _code_fingerprint(),
                total_steps=total, kills=len(killed_at), checkpoint_steps_at_kills=killed_at,
                unreadable_checkpoints=unreadable, stray_temp_files=leftovers,
                params_equal=bool(np.array_equal(params, ref_params)),
                history_equal=history == ref_history, history_points=len(history["step"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["sample", "synthetic"], default="sample")
    parser.add_argument("--steps", type=int, default=2000, help="total training steps")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="BLAS threads of every run (default: the environment's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        train(json.loads(args.config), args.checkpoint, args.out)
        return 0
    config = dict(data=args.data, steps=args.steps, hidden=[50, 50], batch_size=100,
                  checkpoint_every=args.checkpoint_every, blas_threads=args.blas_threads)
    with tempfile.TemporaryDirectory() as folder:
        report = run_demo(config, args.kills, Path(folder))
    print(json.dumps(report, indent=2))
    ok = report["params_equal"] and report["history_equal"] and not report["unreadable_checkpoints"]
    print("resumed run identical to the uninterrupted one" if ok else
          "MISMATCH" + ("" if report["same_code"] else " (cbn's files changed during the demo)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

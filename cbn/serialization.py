"""cbn's network files and checkpoints are read and written here only: a network to and from
named arrays and ``.npz`` files (its configuration as JSON, its state as arrays, a checksum
on disk; no pickle), and the members a training checkpoint adds around it (their content:
:mod:`cbn.checkpoint`). Every read goes through the guarded reader of :mod:`cbn.npz`
(``read_network_file``), every write through the atomic writer of :mod:`cbn._files`
(``write_arrays``)."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _validate as check
from ._files import PathLike, atomic_savez
from .npz import (MAX_TEXT_BYTES, CheckpointError, Member, member_version, parse_json, read_npz,
                  verified, with_checksum)

# ``Network`` is passed in as ``build`` (the network imports this module, not the reverse);
# ``net`` is a cbn.Network.
Net = Any

FORMAT_VERSION = 1
# The input normalization a network keeps (Network.normalization), saved beside its state.
INPUT_MEMBERS = ("input_mean", "input_std")
NETWORK_MEMBERS = ("network_config", "format_version", "checksum", "stats_seen")
CHECKPOINT_FORMAT = "cbn.fit checkpoint"
CHECKPOINT_VERSION = 2   # 2 added the optimizer state and the dropout key; 1 is still read
HISTORY_PREFIX = "history_"
OPTIMIZER_PREFIX = "optimizer_"
# The format versions a file may declare, and the newest this cbn reads (1 is the oldest).
VERSIONS = {"format_version": FORMAT_VERSION, "checkpoint_version": CHECKPOINT_VERSION}
CHECKPOINT_MEMBERS = ("checkpoint_format", "checkpoint_version", "velocity", "step",
                      "epoch_start", "order", "rng_state", "batch_loss_sum", "batch_count",
                      "elapsed", "run", "optimizer", "dropout_key", "ema")


def to_arrays(net: Net) -> Dict[str, np.ndarray]:
    """``network_config`` (JSON string), ``format_version`` and ``net.state_dict()`` (with
    ``input_mean``/``input_std`` when the network has a normalization)."""
    return dict(network_config=np.array(json.dumps(net.config())),
                format_version=np.array(FORMAT_VERSION), **net.state_dict())


def save(net: Net, path: PathLike) -> None:
    """``to_arrays(net)`` with its checksum, written atomically to ``path``."""
    write_arrays(path, with_checksum(to_arrays(net)))


def write_arrays(path: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays (a network's, or a checkpoint's with its network's, checksum
    included) to ``path`` as ``.npz``, atomically: the one way cbn writes these files."""
    atomic_savez(path, **arrays)


def load_network(path: PathLike, build: Callable[..., Net]) -> Net:
    """The network saved in ``path`` by ``Network.save`` (or inside a ``fit`` checkpoint),
    every error a ``CheckpointError`` naming the file; ``build(**config)`` is ``Network``.
    A file without a checksum loads as it is."""
    path = os.fspath(path)
    net, arrays = read_network_file(path, build)
    arrays = verified(arrays, lambda message: CheckpointError(f"{path}: {message}"),
                      required=False)
    try:
        names = set(net.state_dict()) | set(INPUT_MEMBERS)
        net.load_state_dict({name: arrays[name] for name in names if name in arrays})
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return net


def read_network_file(path: str, build: Callable[..., Net]) -> Tuple[Net, Dict[str, np.ndarray]]:
    """An empty network built from the stored configuration, and every array of the file.

    The configuration is read first and matched to the stored weights' shapes; only then is
    the network built (so a doctored file cannot make it allocate more than the file holds),
    and every member must be one the network (or a training checkpoint) has, with the shape
    the network expects, before any other array is read."""
    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{path}: {message}")

    made = {}

    def expect(members: Dict[str, Member], read) -> None:
        # First the versions: a newer cbn's file may differ in anything checked below.
        for key, newest in VERSIONS.items():
            if key in members:
                member_version({key: read(key)}, key, newest, fail)
        made["net"] = net = _empty_network(members, read, build, fail)
        shapes = {name: value.shape for name, value in net.state_dict().items()}
        shapes.update({name: (net.input_dim,) for name in INPUT_MEMBERS})
        allowed = set(shapes) | set(NETWORK_MEMBERS)
        if "checkpoint_format" in members:
            allowed |= set(CHECKPOINT_MEMBERS)
            allowed |= {name for name in members
                        if name.startswith((HISTORY_PREFIX, OPTIMIZER_PREFIX))}
        unknown = sorted(set(members) - allowed)
        if unknown:
            raise fail(f"holds arrays a cbn network does not have: {unknown[:5]}")
        for name, shape in shapes.items():
            if name in members and members[name].shape != shape:
                raise fail(f"{name} has shape {members[name].shape}, expected {shape}")

    arrays = read_npz(path, expect)
    return made["net"], arrays


def _empty_network(members: Dict[str, Member], read, build, fail):
    if "network_config" not in members:
        raise fail("holds no cbn network (no 'network_config')")
    config_member = members["network_config"]
    if config_member.shape != () or config_member.dtype.kind != "U" or \
            config_member.dtype.itemsize > MAX_TEXT_BYTES:
        raise fail(f"'network_config' must be a 0-d string of at most {MAX_TEXT_BYTES} bytes, "
                   f"got {config_member.dtype} {config_member.shape}")
    config = parse_json(str(read("network_config")), "network_config", fail)
    # before building anything: sizes as the weights say
    check_config_fits(config, lambda name: members[name].shape if name in members else None,
                      fail)
    try:
        return build(**config)
    except (TypeError, ValueError) as exc:
        raise fail(f"network_config does not describe a network: {exc}") from None


def from_arrays(build: Callable[..., Net], arrays: Mapping[str, np.ndarray],
                source: str = "arrays") -> Net:
    """Rebuild a network from ``to_arrays``' output (``build(**config)`` is ``Network``), its
    input normalization included when stored (extra arrays, e.g. a checkpoint's, are
    ignored)."""
    if "network_config" not in arrays:
        raise ValueError(f"{source} holds no cbn network (no 'network_config')")
    if "format_version" in arrays:  # cbn's files have it; hand-made arrays may not
        member_version(arrays, "format_version", FORMAT_VERSION,
                       lambda message: ValueError(f"{source}: {message}"))
    try:
        config = json.loads(str(arrays["network_config"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: network_config is not valid JSON: {exc}") from None
    check_config_fits(config, lambda name: np.shape(arrays[name]) if name in arrays else None,
                      lambda message: ValueError(f"{source}: {message}"))
    net = build(**config)
    names = set(net.params) | set(net.running_stats) | {"stats_seen"} | set(INPUT_MEMBERS)
    net.load_state_dict({k: v for k, v in arrays.items() if k in names})
    return net


def check_state(state: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> None:
    """Check that ``state`` (as ``Network.state_dict`` makes it) fits a network whose
    parameters and running statistics are ``arrays``: the same names (plus ``stats_seen``
    and optionally ``INPUT_MEMBERS``), the same shapes, finite floats, variances >= 0.
    Raises ValueError naming the first misfit; nothing is copied."""
    expected = set(arrays) | {"stats_seen"}
    missing = expected - set(state)
    extra = set(state) - expected - set(INPUT_MEMBERS)
    if missing or extra:
        raise ValueError(f"state does not fit this network: missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)}")
    seen = np.asarray(state["stats_seen"])
    if seen.shape != () or seen.dtype.kind not in "biu" or seen not in (0, 1):
        raise ValueError(f"stats_seen must be a 0-d bool, got {seen.dtype} {seen.shape}")
    for name, target in arrays.items():
        value = np.asarray(state[name])
        if value.shape != target.shape:
            raise ValueError(f"{name} has shape {value.shape}, expected {target.shape}")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"{name} must be finite floating-point values")
        check.running_stat(name, value)


def check_config_fits(config, shape_of: Callable[[str], Optional[Tuple[int, ...]]],
                      fail: Callable[[str], Exception]) -> None:
    """Check a stored config's layer sizes against the stored weights' shapes
    (``shape_of(name)``, None if missing) before building anything, so a doctored file
    cannot make a reader allocate a huge network; ``fail(message)`` makes the error."""
    if not isinstance(config, dict):
        raise fail(f"network_config must be a JSON object, got {type(config).__name__}")
    hidden = config.get("hidden")
    if not isinstance(hidden, list):
        raise fail(f"network_config['hidden'] must be a list, got {type(hidden).__name__}")
    dims = [config.get("input_dim"), *hidden, config.get("num_classes")]
    expansion = config.get("expansion")
    if expansion is not None:  # pre-norm blocks: their widths are computed, from integers only
        if (type(expansion) is not int or expansion < 1 or not hidden
                or not all(type(w) is int for w in hidden)):
            raise fail(f"network_config's expansion {check.short_repr(expansion)} needs to be a "
                       "positive integer, with integer hidden widths")
        dims = [config.get("input_dim"), hidden[0],
                *(expansion * hidden[0], hidden[0]) * (len(hidden) - 1),
                config.get("num_classes")]
    for l in range(1, len(dims)):
        shape = shape_of(f"W{l}")
        if shape != (dims[l - 1], dims[l]):
            raise fail(f"W{l} has shape {shape} but network_config says "
                       f"({str(dims[l - 1])[:20]}, {str(dims[l])[:20]})")

"""A network to and from named arrays (``.npz`` files, checkpoints): its configuration as
JSON, its state as arrays, a checksum on disk; no pickle."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Tuple, Type

import numpy as np

from . import _validate as check
from ._files import PathLike, atomic_savez
from .npz import member_version, with_checksum

if TYPE_CHECKING:
    from .network import Network

FORMAT_VERSION = 1
# The input normalization a network keeps (Network.normalization), saved beside its state.
INPUT_MEMBERS = ("input_mean", "input_std")


def to_arrays(net: "Network") -> Dict[str, np.ndarray]:
    """``network_config`` (JSON string), ``format_version`` and ``net.state_dict()`` (with
    ``input_mean``/``input_std`` when the network has a normalization)."""
    return dict(network_config=np.array(json.dumps(net.config())),
                format_version=np.array(FORMAT_VERSION), **net.state_dict())


def save(net: "Network", path: PathLike) -> None:
    """``to_arrays(net)`` with its checksum, written atomically to ``path``."""
    atomic_savez(path, **with_checksum(to_arrays(net)))


def load(cls: Type["Network"], path: PathLike) -> "Network":
    """The network in ``path``, read by ``cbn.checkpoint.load_network``: every member's size
    checked before any array is read, its checksum verified (files without one load as they
    are), anything wrong a ``CheckpointError`` naming the file."""
    from .checkpoint import load_network
    return load_network(path, cls)


def from_arrays(cls: Type["Network"], arrays: Mapping[str, np.ndarray],
                source: str = "arrays") -> "Network":
    """Rebuild a network from ``to_arrays``' output, its input normalization included when
    stored (extra arrays, e.g. a checkpoint's, are ignored)."""
    if "network_config" not in arrays:
        raise ValueError(f"{source} holds no cbn network (no 'network_config')")
    if "format_version" in arrays:  # files have always had it; hand-made arrays may not
        member_version(arrays, "format_version", FORMAT_VERSION,
                       lambda message: ValueError(f"{source}: {message}"))
    try:
        config = json.loads(str(arrays["network_config"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: network_config is not valid JSON: {exc}") from None
    check_config_fits(config, lambda name: np.shape(arrays[name]) if name in arrays else None,
                      lambda message: ValueError(f"{source}: {message}"))
    net = cls(**config)
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

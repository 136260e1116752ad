"""A network to and from named arrays (``.npz`` files, checkpoints): its configuration as
JSON, its state as arrays, a checksum on disk; no pickle."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Dict, Mapping, Type, Union

import numpy as np

from .checkpoint import INPUT_MEMBERS

if TYPE_CHECKING:
    from .network import Network

FORMAT_VERSION = 1


def to_arrays(net: "Network") -> Dict[str, np.ndarray]:
    """``network_config`` (JSON string), ``format_version`` and ``net.state_dict()`` (with
    ``input_mean``/``input_std`` when the network has a normalization)."""
    return dict(network_config=np.array(json.dumps(net.config())),
                format_version=np.array(FORMAT_VERSION), **net.state_dict())


def save(net: "Network", path: Union[str, os.PathLike]) -> None:
    """``to_arrays(net)`` with its checksum, written atomically to ``path``."""
    from .checkpoint import atomic_savez, with_checksum
    atomic_savez(path, **with_checksum(to_arrays(net)))


def load(cls: Type["Network"], path: Union[str, os.PathLike]) -> "Network":
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
    try:
        config = json.loads(str(arrays["network_config"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: network_config is not valid JSON: {exc}") from None
    _check_config_fits(config, arrays, source)
    net = cls(**config)
    names = set(net.params) | set(net.running_stats) | {"stats_seen"} | set(INPUT_MEMBERS)
    net.load_state_dict({k: v for k, v in arrays.items() if k in names})
    return net


def _check_config_fits(config, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Check a stored config's layer sizes against the stored weights before building
    anything, so a doctored file cannot make ``from_arrays`` allocate a huge network."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: network_config must be a JSON object, got {config!r:.80}")
    hidden = config.get("hidden")
    if not isinstance(hidden, list):
        raise ValueError(f"{source}: network_config['hidden'] must be a list, got {hidden!r:.80}")
    dims = [config.get("input_dim"), *hidden, config.get("num_classes")]
    for l in range(1, len(dims)):
        W = arrays.get(f"W{l}")
        shape = None if W is None else np.shape(W)
        if shape != (dims[l - 1], dims[l]):
            raise ValueError(f"{source}: W{l} has shape {shape} but network_config says "
                             f"({dims[l - 1]}, {dims[l]})")

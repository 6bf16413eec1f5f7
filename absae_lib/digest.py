"""Content digests for cache keys: a result computed from these inputs is reused only when all of them are equal.

A cached result (chapter 4's held-out scores, a dataset's activations at a hook) is keyed by the SHA-256 of
everything it was computed from: the tensors' bytes, the model's weights, the SAE's weights and config, and the
source of the code that computed it, so editing that code invalidates the cache instead of serving stale numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_PACKAGE = Path(__file__).resolve().parent


def _update(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    # bf16 has no numpy dtype: hash its bits through a same-width integer view
    flat = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    elif t.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    h.update(flat.numpy().tobytes())


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 (hex) of the tensors' dtypes, shapes and every byte, in order."""
    h = hashlib.sha256()
    for t in tensors:
        _update(h, t)
    return h.hexdigest()


def module_digest(module: torch.nn.Module, sample: int | None = None) -> str:
    """SHA-256 of a module's parameters and buffers (names included, in ``state_dict`` order).

    ``sample``: hash only every n-th element of each tensor, with n chosen so that about ``sample`` elements of
    each remain (a language model's 135M weights take seconds to hash; any retraining or conversion change moves
    far more than the skipped elements).  None hashes every byte.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        if sample is not None and t.numel() > sample:
            t = t.detach().reshape(-1)[:: t.numel() // sample]
        _update(h, t)
    return h.hexdigest()


def source_digest(*modules: str) -> str:
    """SHA-256 of the source files of absae_lib modules, e.g. ``source_digest("metrics", "sae")``."""
    h = hashlib.sha256()
    for name in modules:
        path = _PACKAGE / f"{name.replace('.', '/')}.py"
        if not path.exists():
            raise ValueError(f"no module absae_lib.{name} ({path}); name a module of the package")
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; what ``json.dumps(default=str)`` makes of it)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

"""Content digests for cache keys: a result computed from these inputs is reused only when all of them are equal.

A cached result (chapter 4's held-out scores, a dataset's activations at a hook) is keyed by the SHA-256 of
everything it was computed from: the tensors' bytes, the model's weights, the SAE's weights and config, the device,
the library versions, and the source of the code that computed it (read when that code was imported, so editing it
invalidates the cache instead of serving stale numbers under the new code's name).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_PACKAGE = Path(__file__).resolve().parent
# module -> (what its tensors were, their digest); weak, so a new module never inherits a dead one's entry
_MODULE_MEMO: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _update(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    flat = t.reshape(-1)
    if t.dtype == torch.bfloat16:  # no numpy dtype: hash its bits through a same-width integer view
        flat = flat.view(torch.int16)
    elif t.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    h.update(memoryview(flat.numpy()).cast("B"))  # the bytes, without a copy


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 (hex) of the tensors' dtypes, shapes and every byte, in order."""
    h = hashlib.sha256()
    for t in tensors:
        _update(h, t)
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every byte of a module's parameters and buffers (names included, in ``state_dict`` order).

    A language model's ~0.5 GB takes about a second, so the digest is remembered per module and recomputed when any
    of its tensors was replaced or changed in place (torch counts in-place writes in ``Tensor._version``).
    """
    state = module.state_dict(keep_vars=True)
    stamp = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in state.items())
    memo = _MODULE_MEMO.get(module)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        _update(h, t)
    _MODULE_MEMO[module] = (stamp, h.hexdigest())
    return _MODULE_MEMO[module][1]


def source_digest(*modules: str) -> str:
    """SHA-256 of the source files of absae_lib modules as they are now, e.g. ``source_digest("metrics", "sae")``.
    Call it at import time (a module constant) to key results by the code that is running."""
    h = hashlib.sha256()
    for name in modules:
        path = _PACKAGE / f"{name.replace('.', '/')}.py"
        if not path.exists():
            raise ValueError(f"no module absae_lib.{name} ({path}); name a module of the package")
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """The versions of the libraries whose numerics a cached result depends on."""
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"torch": torch.__version__, "transformer_lens": installed("transformer-lens")}


def json_digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; what ``json.dumps(default=str)`` makes of it)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

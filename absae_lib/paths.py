"""Where absae keeps what it computes: converted model weights, corpora, activations, trained SAEs.

Everything lives under one cache folder, outside git: ``$ABSAE_CACHE`` if set, else ``~/.cache/absae``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a sub-folder of it, created on demand)."""
    root = Path(os.environ.get("ABSAE_CACHE", Path.home() / ".cache" / "absae")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Remove papermill's ``injected-parameters`` cells from notebooks, keeping every output.

    python scripts/strip_injected.py notebooks/*.ipynb

`make notebooks` executes the chapters in place with ``-p profile cpu``; papermill then adds a cell that sets
``profile = "cpu"``.  Left in, that cell would override ``$ABSAE_PROFILE`` when CI runs the committed notebooks with
``pytest --nbmake`` (smoke profile), so it is removed after each run.  The outputs still show the profile used.
"""

from __future__ import annotations

import sys

import nbformat


def strip(path: str) -> bool:
    nb = nbformat.read(path, as_version=4)
    kept = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    if len(kept) == len(nb.cells):
        return False
    nb.cells = kept
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    for notebook in sys.argv[1:]:
        if strip(notebook):
            print(f"removed papermill's injected parameters from {notebook}")

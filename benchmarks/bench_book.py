"""Minutes per chapter: execute every notebook at one profile (papermill) and print a table of wall times.

    python benchmarks/bench_book.py --profile smoke            # what CI runs
    python benchmarks/bench_book.py --profile cpu --cold       # the book's default, with an empty artifact cache

The executed copies go to a temporary folder (the committed notebooks are not touched) and so do the recorded
numbers.  Activations and trained SAEs come from ``$ABSAE_CACHE``: a warm cache makes a second run much faster, so
``--cold`` points the run at a fresh cache folder (the model and corpus are linked in, not recomputed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke", help="smoke, cpu or gpu")
    parser.add_argument("--cold", action="store_true", help="start from an empty activation/SAE cache")
    parser.add_argument("notebooks", nargs="*", help="default: every notebooks/[0-9]*.ipynb")
    args = parser.parse_args()
    notebooks = [Path(n) for n in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    out = Path(tempfile.mkdtemp(prefix=f"absae-book-{args.profile}-"))
    env = dict(os.environ, ABSAE_RESULTS=str(out / "results"))
    if args.cold:
        from absae_lib.paths import cache_dir

        warm, cold = cache_dir(), out / "cache"
        cold.mkdir()
        for shared in ("models", "corpora"):  # inputs, not artifacts: link them
            if (warm / shared).exists():
                (cold / shared).symlink_to(warm / shared)
        env["ABSAE_CACHE"] = str(cold)
    rows = []
    for notebook in notebooks:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "papermill", notebook.name, str(out / notebook.name), "-p", "profile", args.profile,
             "--cwd", ".", "--no-progress-bar"],
            cwd=notebook.parent, env=env, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
        rows.append((notebook.stem, minutes, "ok" if result.returncode == 0 else "FAILED"))
        print(f"{notebook.stem:<32} {minutes:6.2f} min  {rows[-1][2]}", flush=True)
    total = sum(m for _, m, _ in rows)
    print(f"\n| chapter | minutes ({args.profile}{', cold cache' if args.cold else ''}) |\n|---|---:|")
    for name, minutes, status in rows:
        print(f"| {name} | {minutes:.2f}{'' if status == 'ok' else ' (failed)'} |")
    print(f"| **total** | **{total:.2f}** |")
    print(f"(load average {os.getloadavg()[0]:.2f}; executed copies in {out})")


if __name__ == "__main__":
    main()

"""Minutes per stage of the main job (harvest, training, evaluation per chapter), as ``make main`` runs it.

    python benchmarks/bench_book.py --profile smoke --cold --twice     # what `make bench` runs (≈ 25 minutes)
    python benchmarks/bench_book.py --profile cpu --cold --twice       # the book's default (over an hour on 2 cores)
    python benchmarks/bench_book.py --profile smoke 03_train_saes      # one chapter, with the artifact cache as it is

The stages run in ``make main``'s order: the harvest of the profile's activations, ``python -m absae_lib.compare``
(trains TopK and AbsTopK, then evaluates them), then every chapter through papermill.  The executed copies and the
recorded numbers go to a temporary folder (the committed notebooks are not touched).  ``--cold`` points the run at
an empty artifact cache (the model and corpus, inputs rather than artifacts, are linked in).  ``--twice`` runs every
stage a second time on the now warm cache: that run only evaluates (every activation and SAE is read back), so the
difference between the two runs is the stage's harvesting and training.
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
HARVEST = "from absae_lib import book, pipeline; pipeline.activation_store(book.settings({profile!r}))"


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} cores"


def stages(profile: str, notebooks: list[Path], out: Path) -> list[tuple[str, list[str], Path]]:
    """(name, command, working folder) of each stage, in make main's order."""
    runs = [("harvest", [sys.executable, "-c", HARVEST.format(profile=profile)], ROOT),
            ("absae_lib.compare", [sys.executable, "-m", "absae_lib.compare", "--profile", profile], ROOT)]
    for notebook in notebooks:
        runs.append((notebook.stem, [sys.executable, "-m", "papermill", notebook.name, str(out / notebook.name),
                                     "-p", "profile", profile, "--cwd", ".", "--no-progress-bar"], notebook.parent))
    return runs


def run_all(runs: list[tuple[str, list[str], Path]], env: dict[str, str], label: str) -> dict[str, tuple[float, bool]]:
    """Minutes and success of each stage."""
    minutes: dict[str, tuple[float, bool]] = {}
    for name, command, cwd in runs:
        start = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        minutes[name] = ((time.perf_counter() - start) / 60, result.returncode == 0)
        print(f"{label:5} {name:<32} {minutes[name][0]:6.2f} min  {'ok' if result.returncode == 0 else 'FAILED'}",
              flush=True)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke", help="smoke, cpu or gpu")
    parser.add_argument("--cold", action="store_true", help="start from an empty activation/SAE cache")
    parser.add_argument("--twice", action="store_true", help="run every stage again on the warm cache")
    parser.add_argument("notebooks", nargs="*", help="only these chapters, and no harvest/compare stage "
                                                     "(default: every notebooks/[0-9]*.ipynb and both stages)")
    args = parser.parse_args()
    notebooks = [Path(n).resolve() for n in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
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
    runs = stages(args.profile, notebooks, out)
    if args.notebooks:
        runs = runs[2:]
    print(f"profile {args.profile}, {'empty' if args.cold else 'existing'} artifact cache; {load_note()}", flush=True)
    first = run_all(runs, env, "first")
    second = run_all(runs, env, "again") if args.twice else {}

    cache = "cold cache" if args.cold else "cache as found"
    if second:
        print(f"\n| stage | first run ({cache}) | second run (warm: evaluation only) | difference (harvest, training) |"
              "\n|---|---:|---:|---:|")
    else:
        print(f"\n| stage | minutes ({args.profile}, {cache}) |\n|---|---:|")
    for name, (minutes, ok) in first.items():
        flag = "" if ok else " (failed)"
        if second:
            again, ok_again = second[name]
            print(f"| {name} | {minutes:.2f}{flag} | {again:.2f}{'' if ok_again else ' (failed)'} "
                  f"| {max(0.0, minutes - again):.2f} |")
        else:
            print(f"| {name} | {minutes:.2f}{flag} |")
    total = sum(m for m, _ in first.values())
    if second:
        total_again = sum(m for m, _ in second.values())
        print(f"| **total** | **{total:.2f}** | **{total_again:.2f}** | **{max(0.0, total - total_again):.2f}** |")
    else:
        print(f"| **total** | **{total:.2f}** |")
    print(f"\n(profile {args.profile}; at the end: {load_note()}; executed copies in {out})")


if __name__ == "__main__":
    main()

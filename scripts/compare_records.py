"""Do two runs of the book record the same numbers?  ``python scripts/compare_records.py A B [--profile cpu]``.

A and B are folders of chapter records (``notebooks/results`` of two checkouts, or an ``ABSAE_RESULTS`` folder).
Every value of every ``<chapter>.<profile>.json`` in A is compared with B's, exactly (NaN equals NaN); keys that are
timings (their name holds "runtime", "seconds", "_time", "elapsed" or " ms") are left out, since they differ from
run to run by design.  Prints one line per record and exits 1 if any number differs or a record is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

TIMING_MARKS = ("runtime", "seconds", "_time", "elapsed", " ms")


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as "path: a vs b" lines (timing keys skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if any(mark in str(key) for mark in TIMING_MARKS):
                continue
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'B' if key not in a else 'A'}")
            else:
                out += differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} vs {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args(argv)
    records = sorted(args.a.glob(f"*.{args.profile}.json"))
    if not records:
        parser.error(f"no *.{args.profile}.json records in {args.a}")
    failed = False
    for record in records:
        other = args.b / record.name
        if not other.exists():
            print(f"{record.name}: missing in {args.b}")
            failed = True
            continue
        found = differences(json.loads(record.read_text()), json.loads(other.read_text()))
        failed |= bool(found)
        print(f"{record.name}: " + ("every number equal" if not found else
                                    f"{len(found)} differences, e.g. " + "; ".join(found[:5])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

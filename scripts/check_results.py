"""Regression checks on the numbers each chapter recorded (CI runs every chapter at the smoke profile first).

    python scripts/check_results.py _build/smoke-results [profile]

Each check is a claim a chapter makes, with a floor loose enough for the smoke profile's tiny runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

Check = tuple[str, Callable[[dict[str, Any]], bool]]

CHECKS: dict[str, list[Check]] = {
    "01_prox": [
        ("one ISTA step equals the SAE encoder", lambda r: r["ista_vs_encoder_max_diff"] < 1e-5),
        ("FISTA ends closer to the optimum than ISTA", lambda r: r["fista_gap"] <= r["ista_gap"]),
    ],
    "02_toy": [
        ("AbsTopK NMSE below TopK's on signed atoms", lambda r: r["nmse"]["abstopk"] < r["nmse"]["topk"]),
        ("TopK splits atoms into antipodal pairs more than AbsTopK",
         lambda r: r["antipodal_pairs"]["topk"] > r["antipodal_pairs"]["abstopk"]),
    ],
}


def main(folder: str, profile: str = "smoke") -> int:
    folder_path = Path(folder)
    failed = passed = 0
    for chapter, checks in CHECKS.items():
        path = folder_path / f"{chapter}.{profile}.json"
        if not path.exists():
            print(f"FAIL {chapter}: no recorded numbers ({path} missing: did the chapter run?)")
            failed += 1
            continue
        record = json.loads(path.read_text())
        for description, check in checks:
            try:
                ok = bool(check(record))
            except (KeyError, TypeError) as err:
                ok, description = False, f"{description} (missing number: {err})"
            print(f"{'ok  ' if ok else 'FAIL'} {chapter}: {description}")
            passed += ok
            failed += not ok
    print(f"results: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

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
    "03_train_saes": [
        ("TopK and AbsTopK keep exactly k latents", lambda r: r["l0"]["topk"] == r["l0"]["abstopk"] == r["settings"]["k"]),
        ("BatchTopK keeps about k latents at inference", lambda r: 0.5 <= r["l0"]["batchtopk"] / r["settings"]["k"] <= 2),
        ("every variant reconstructs (0 < NMSE < 1)", lambda r: all(0 < v < 1 for v in r["nmse"].values())),
        ("k-sparse SAEs explain typical tokens", lambda r: all(r["nmse_typical"][v] < 0.5 for v in ("topk", "batchtopk", "abstopk"))),
        ("only AbsTopK has negative codes", lambda r: 0.2 <= r["fraction_negative"]["abstopk"] <= 0.8
         and all(r["fraction_negative"][v] == 0 for v in ("standard", "jumprelu", "topk", "batchtopk"))),
        ("SAELens reads our folders with identical codes", lambda r: r["saelens_codes_match"] is True),
        ("position 0 is an outlier (why it is dropped)", lambda r: r["position0_norm_ratio"] > 10),
    ],
    "04_reconstruction": [
        ("k-sparse SAEs recover most of the loss", lambda r: all(r["loss_recovered_at_k"][v] > 0.5 for v in ("topk", "batchtopk", "abstopk"))),
        ("zero-ablation hurts", lambda r: r["ce_zero"] > r["ce_clean"]),
        ("a bigger k reconstructs better (TopK, AbsTopK)", lambda r: all(
            r["sweep"][v][f"k{max(r['settings']['k_sweep'])}"]["nmse_typical"] < r["sweep"][v][f"k{min(r['settings']['k_sweep'])}"]["nmse_typical"]
            for v in ("topk", "abstopk"))),
        ("every sweep point is sane", lambda r: all(0 < p["nmse"] < 1 and 0 < p["loss_recovered"] <= 1
                                                   for points in r["sweep"].values() for p in points.values())),
        ("all five variants in the sweep", lambda r: set(r["sweep"]) == {"standard", "jumprelu", "topk", "batchtopk", "abstopk"}),
    ],
    "05_bidirectional_features": [
        ("AbsTopK uses both signs on many latents", lambda r: 0.2 <= r["share_both_signs"] <= 0.9),
        ("a real share of AbsTopK codes is negative", lambda r: 0.2 <= r["fraction_negative"] <= 0.8),
        ("Brown tags align with the cached tokens", lambda r: r["tagged_fraction"] >= 0.9),
        ("AbsTopK needs no more antipodal pairs than TopK",
         lambda r: r["antipodal_pairs_abstopk"] <= r["antipodal_pairs_topk"]),
        ("three distinct example latents", lambda r: len(set(r["example_latents"])) == 3),
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

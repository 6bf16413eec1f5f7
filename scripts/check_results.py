"""Regression checks on the numbers each chapter recorded (CI runs every chapter at the smoke profile first).

    python scripts/check_results.py _build/smoke-results [profile]

Each check is a claim a chapter makes, with a floor loose enough for the smoke profile's tiny runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

Check = tuple[str, Callable[[dict[str, Any]], bool]]


def _study_steps(settings: dict[str, Any], architecture: str) -> int:
    """A study SAE's steps from a record's settings (book.Settings.study_steps_for, on the JSON form)."""
    factor = dict((a, f) for a, f in settings.get("study_step_factors", [])).get(architecture, 1.0)
    return max(1, round(settings["study_steps"] * factor))


def _axis_verdict(axis: dict[str, Any]) -> str:
    """Chapter 5's verdict for one axis, recomputed from the recorded numbers (absae_lib.bidirectional)."""
    from absae_lib.bidirectional import axis_verdict

    return axis_verdict(axis)

def _seeded_probe_verdict(d: dict[str, Any]) -> str:
    """Chapter 6's seeded rule (accuracy_stats.seeded_difference): a win needs both intervals on the same side."""
    if d["seed_low"] > 0 and d["low"] > 0:
        return "AbsTopK better"
    if d["seed_high"] < 0 and d["high"] < 0:
        return "TopK better"
    return "tie (within noise)"


def _reconstruction_verdict(c: dict[str, Any]) -> str:
    """Chapter 4's rule (absae_lib.study.compare_seeded), recomputed from a recorded comparison of AbsTopK − rival."""
    l0_a, l0_b = c["l0"]
    if abs(l0_b / l0_a - 1) > 0.1:
        return "not comparable"
    better_if_positive = c["metric"] in ("loss_recovered", "explained_variance")

    def side(lo: float, hi: float) -> str:
        if lo > 0 or hi < 0:
            return "reproduced" if (lo > 0) == better_if_positive else "contradicted"
        return "tie (within noise)"

    outcomes = {side(*c["seed_ci"])} | ({side(*c["sequence_ci"])} if "sequence_ci" in c else set())
    return outcomes.pop() if len(outcomes) == 1 else "tie (within noise)"


def _moves_both_ways(r: dict[str, Any], axis: dict[str, Any], method: str) -> bool:
    """Chapter 7's rule, recomputed from the recorded per-prompt shifts (absae_lib.steering.sweeps)."""
    from absae_lib.steering import mean_interval

    def moved(sign: int) -> bool:
        return any(min(v * sign for v in mean_interval(axis["prompt_shift"][method][i])) > 0
                   for i, a in enumerate(r["alphas"])
                   if a * sign > 0 and axis["perplexity"][method][i] <= r["budget"] * r["base_perplexity"])

    return moved(1) and moved(-1)


CHECKS: dict[str, list[Check]] = {
    "01_prox": [
        ("one ISTA step equals the SAE encoder", lambda r: r["ista_vs_encoder_max_diff"] < 1e-5),
        ("FISTA ends closer to the optimum than ISTA", lambda r: r["fista_gap"] <= r["ista_gap"]),
    ],
    "02_toy": [
        ("AbsTopK NMSE below TopK's on signed atoms", lambda r: r["nmse"]["abstopk"] < r["nmse"]["topk"]),
        ("TopK splits atoms into antipodal pairs more than AbsTopK",
         lambda r: r["antipodal_pairs"]["topk"] > r["antipodal_pairs"]["abstopk"]),
        ("AbsTopK recovers most atoms", lambda r: r["atoms_recovered"]["abstopk"] >= 0.75 * r["n_atoms"]),
        ("AbsTopK writes an atom with fewer latents than TopK",
         lambda r: r["latents_per_atom"]["abstopk"] < r["latents_per_atom"]["topk"]),
        ("AbsTopK's code sign follows the atom's sign", lambda r: r["abstopk_sign_follows"] > 0.95),
        ("with one latent per atom AbsTopK reconstructs better than TopK",
         lambda r: r["sweep"]["abstopk"]["x1"]["nmse"] < r["sweep"]["topk"]["x1"]["nmse"]),
        ("over seeds: one value per seed, verdicts follow from the seed intervals (lower is better)", lambda r: all(
            len(d["abstopk"]) == len(d["topk"]) == len(r["seeds"]) >= 2
            and d["verdict"] == ("reproduced" if d["seed_ci"][1] < 0 else "contradicted" if d["seed_ci"][0] > 0
                                 else "tie (within noise)")
            for d in r["seeded"].values())),
    ],
    "03_train_saes": [
        ("TopK and AbsTopK keep exactly k latents", lambda r: r["l0"]["topk"] == r["l0"]["abstopk"] == r["settings"]["k"]),
        ("BatchTopK keeps k latents at inference (±10%: its threshold set from the final weights)",
         lambda r: abs(r["l0"]["batchtopk"] / r["settings"]["k"] - 1) <= 0.1),
        ("every variant reconstructs (0 < NMSE < 1)", lambda r: all(0 < v < 1 for v in r["nmse"].values())),
        ("k-sparse SAEs explain typical tokens", lambda r: all(r["nmse_typical"][v] < 0.5 for v in ("topk", "batchtopk", "abstopk"))),
        ("only AbsTopK has negative codes", lambda r: 0.2 <= r["fraction_negative"]["abstopk"] <= 0.8
         and all(r["fraction_negative"][v] == 0 for v in ("standard", "jumprelu", "topk", "batchtopk"))),
        ("SAELens reads our folders with identical codes", lambda r: r["saelens_codes_match"] is True),
        ("position 0 is an outlier (why it is dropped)", lambda r: r["position0_norm_ratio"] > 10),
        ("the study's SAEs ran their steps, with a held-out curve that falls", lambda r: all(
            r["n_steps"][v] == _study_steps(r["settings"], v) and len(r["heldout_curve"][v]) >= 8
            and r["heldout_curve"][v][-1][1] < r["heldout_curve"][v][0][1] for v in r["n_steps"])),
        ("passes = steps × batch / tokens", lambda r: all(
            abs(r["epochs"][v] - r["n_steps"][v] * r["settings"]["batch_size"] / r["settings"]["n_tokens"]) < 1e-9
            for v in r["n_steps"])),
        ("train/held-out gap recorded and finite", lambda r: all(math.isfinite(g) for g in r["train_heldout_gap"].values())),
    ],
    "04_reconstruction": [
        ("several seeds at the headline k", lambda r: len(r["seeds"]) >= 2 and all(
            r["headline"][v]["n_seeds"] == len(r["seeds"]) for v in ("topk", "abstopk", "jumprelu"))),
        ("headline metrics finite, with a seed std and a loss interval", lambda r: all(
            math.isfinite(h[m]) and f"{m}_std" in h for h in r["headline"].values()
            for m in ("l0", "nmse", "nmse_typical", "nmse_per_token", "loss_recovered", "delta_ce", "kl"))
         and all(h["loss_recovered_ci"][0] <= h["loss_recovered_ci"][1] for h in r["headline"].values())),
        ("k-sparse SAEs recover most of the loss", lambda r: all(
            r["headline"][v]["loss_recovered"] > 0.5 for v in ("topk", "batchtopk", "abstopk"))),
        ("zero-ablation hurts", lambda r: r["ce_zero"] > r["ce_clean"]),
        ("TopK and AbsTopK keep exactly k; BatchTopK's calibrated threshold within 10% of k", lambda r: all(
            abs(p["l0"] - int(k[1:])) < 1e-6 for v in ("topk", "abstopk") for k, p in r["sweep"][v].items())
         and all(abs(p["l0"] / int(k[1:]) - 1) <= 0.1 for k, p in r["sweep"]["batchtopk"].items())),
        ("at the cpu profile every SAE lands within 10% of its target L0",
         lambda r: r["settings"]["profile"] != "cpu" or r["l0_matched"] is True),
        ("a bigger k reconstructs better (TopK, AbsTopK; per-token NMSE)", lambda r: all(
            r["sweep"][v][f"k{max(r['settings']['k_sweep'])}"]["nmse_per_token"]
            < r["sweep"][v][f"k{min(r['settings']['k_sweep'])}"]["nmse_per_token"] for v in ("topk", "abstopk"))),
        ("every sweep point is sane", lambda r: all(0 < p["nmse_per_token"] < 1 and 0 < p["loss_recovered"] <= 1
                                                   for points in r["sweep"].values() for p in points.values())),
        ("all five variants in the sweep", lambda r: set(r["sweep"]) == {"standard", "jumprelu", "topk", "batchtopk", "abstopk"}),
        ("each verdict follows from its recorded intervals and L0", lambda r: all(
            c["verdict"] == _reconstruction_verdict(c) for by_m in r["claims"].values() for c in by_m.values())),
        ("the normalisation follows the book's rule", lambda r: r["normalisation_comparison"]["chosen"] == (
            "global" if all(r["normalisation_comparison"][v]["delta_ce_per_token_minus_global_ci"][0] > 0
                            for v in ("topk", "abstopk")) else "per_token")),
        ("the plateau rule read for every study SAE (met = last-20% gain < 2%)", lambda r: len(r["plateau"]) >= 10
         and all(math.isfinite(p["improvement"]) and p["reached"] == (p["improvement"] < 0.02)
                 for p in r["plateau"].values())),
        ("unrolled encoders scored at the headline k", lambda r: len(r["unrolled"]) >= 2 and all(
            0 < u["nmse_per_token"] < 1 and abs(u["l0"] - r["headline_k"]) < 1e-6 for u in r["unrolled"].values())),
    ],
    "05_bidirectional_features": [
        ("AbsTopK uses both signs on many latents", lambda r: 0.2 <= r["share_both_signs"] <= 0.9),
        ("a real share of AbsTopK codes is negative", lambda r: 0.2 <= r["fraction_negative"] <= 0.8),
        ("Brown tags align with the cached tokens", lambda r: r["tagged_fraction"] >= 0.9),
        ("AbsTopK needs no more antipodal pairs than TopK",
         lambda r: r["antipodal_pairs_abstopk"] <= r["antipodal_pairs_topk"]),
        ("every labelled axis tested (sentiment, number, tense, gender)", lambda r:
         {"sentiment", "number", "tense", "gender"} <= set(r["axes"])),
        ("held-out accuracies are fractions (nan: the latent never fired)", lambda r: all(
            not a[key] == a[key] or 0 <= a[key] <= 1 for a in r["axes"].values()
            for key in ("abstopk_sign_accuracy", "abstopk_sign_latent_accuracy", "topk_pair_accuracy"))),
        ("shuffled-label nulls sit near chance", lambda r: all(
            0.3 <= a[key]["all_mean"] <= 0.7 for a in r["axes"].values()
            for key in ("abstopk_sign_null", "abstopk_sign_latent_null"))),
        ("random-dictionary null at its closed form sqrt(2 ln(2 d_sae) / d)", lambda r: all(
            abs(a["null_best_cosine"] / (2 * math.log(2 * r["n_latents"]) / r["d_model"]) ** 0.5 - 1) < 0.3
            for a in r["axes"].values())),
        ("TopK's pair: one row towards +d, one towards -d", lambda r: all(
            a["topk_pair_cosines"][0] > 0 > a["topk_pair_cosines"][1] for a in r["axes"].values())),
        ("each verdict follows from its recorded numbers and nulls", lambda r: all(
            a["verdict"] == _axis_verdict(a) for a in r["axes"].values())),
        ("splitting counts cover every latent of each group", lambda r: all(
            g["two"] + g["plus only"] + g["minus only"] + g["none"] == g["n"]
            for g in r["splitting"].values() if isinstance(g, dict))),
        ("splitting with the study's seeds: counts cover the two-signed latents, other seed and null present", lambda r: all(
            g["two"] + g["plus only"] + g["minus only"] + g["none"] == g["n"] == r["splitting_seeds"]["n_both_signs"]
            for g in r["splitting_seeds"].values() if isinstance(g, dict))
            and sum(isinstance(g, dict) for g in r["splitting_seeds"].values()) == 3),
        ("antipodal structure beside a random dictionary", lambda r: all(
            -1 <= c["null"]["median_most_negative"] < 0 for c in r["antipodal_calibration"].values())),
    ],
    "06_probing": [
        ("all five SAEs probed on every task", lambda r: all(
            set(r["sparse_probe"][t]) == {"standard", "jumprelu", "topk", "batchtopk", "abstopk"} for t in r["tasks"])),
        ("the dense probe reads every concept (> 0.6)", lambda r: all(r["dense_accuracy"][t] > 0.6 for t in r["tasks"])),
        ("DiM reads number (> 0.7)", lambda r: r["dim_accuracy"]["number"] > 0.7),
        ("the best 20-sparse SAE probe is above chance on every task (> 0.6)", lambda r: all(
            max(acc[str(max(r["probe_ks"]))] for acc in r["sparse_probe"][t].values()) > 0.6 for t in r["tasks"])),
        ("more latents probe better (mean over tasks and SAEs, largest k vs k = 1)", lambda r: sum(
            acc[str(max(r["probe_ks"]))] - acc[str(min(r["probe_ks"]))]
            for t in r["tasks"] for acc in r["sparse_probe"][t].values()) > 0),
        ("AbsTopK through NonNegView reconstructs and encodes identically", lambda r: r["adapter_max_difference"] < 1e-5),
        ("NonNegView: codes >= 0, at most k active, same best single-latent train accuracy", lambda r: all(
            a["nonneg"] and a["max_active"] <= r["settings"]["k"] and abs(a["single_train_difference"]) < 1e-9
            for a in r["adapter"].values())),
        ("the letter probe reads first letters (> 0.2)", lambda r: r["letter_probe_accuracy"] > 0.2),
        ("absorption rate <= false-negative rate <= 1", lambda r: all(
            0 <= a["absorption_rate"] <= a["false_negative_rate"] <= 1 for a in r["absorption"].values())),
        ("like-for-like verdicts follow from their paired intervals (tie iff the interval holds 0)", lambda r: all(
            (c["verdict"] == "tie (within noise)") == (c["low"] <= 0 <= c["high"]) and c["low"] <= c["high"]
            for by_v in r["like_for_like"].values() for pair in by_v.values() for c in pair.values())),
        ("every interval holds its accuracy", lambda r: all(
            iv["low"] - 1e-9 <= iv["accuracy"] <= iv["high"] + 1e-9
            for t in r["intervals"].values() for key, x in t.items()
            for iv in ([x] if key in ("dim", "dense") else x.values()))),
        ("shuffled-label nulls stay near chance (max of the shuffles < 0.8)", lambda r: all(
            n["max"] < 0.8 for t in r["shuffled_null"].values() for key, x in t.items()
            for n in ([x] if key in ("dim", "dense") else x.values()))),
        ("seeded AbsTopK vs TopK: one accuracy per seed, verdicts follow from both intervals", lambda r: all(
            len(d["a"]) == len(d["b"]) == len(r["seeds"]) >= 2
            and abs(d["difference"] - (sum(d["a"]) - sum(d["b"])) / len(d["a"])) < 1e-9
            and d["seed_low"] <= d["difference"] + 1e-9 <= d["seed_high"] + 2e-9
            and d["verdict"] == _seeded_probe_verdict(d)
            for t in r["tasks"] for d in r["abstopk_vs_topk_seeds"][t].values())),
    ],
    "06b_removal_and_facts": [
        ("SCR: the oracle genre probe beats the biased one", lambda r: r["scr_acc_oracle"] > r["scr_acc_biased"]),
        ("SCR: projecting out gender's DiM direction helps the biased probe (score > 0)", lambda r: r["scr_score_dim"] > 0),
        ("SCR scores finite and in [-1, 2] for every SAE and n", lambda r: all(
            -1 <= s <= 2 for scores in r["scr_score"].values() for s in scores.values())),
        ("TPP: clean probes read their concepts (> 0.6)", lambda r: all(a > 0.6 for a in r["tpp_acc"].values())),
        ("TPP: DiM ablation is targeted (score > 0)", lambda r: r["tpp_score_dim"] > 0),
        ("TPP scores finite and in [-1, 1]", lambda r: all(
            -1 <= s <= 1 for scores in r["tpp_score"].values() for s in scores.values())),
        ("SCR and TPP are labelled SAEBench-style on offline substitutes", lambda r: all(
            "SAEBench-style on offline substitutes" in r[key] for key in ("scr_label", "tpp_label"))),
        ("TPP: AbsTopK's sign-aware score recorded beside SAEBench's, in [-1, 1]", lambda r: set(
            r["tpp_score_sign_aware"]) == {"abstopk"} and all(
            -1 <= s <= 1 for s in r["tpp_score_sign_aware"]["abstopk"].values())),
        ("RAVEL: an SAE is patched only where it reconstructs the country token (FVU < max_fvu)", lambda r: all(
            (v in r["ravel_measurable"]) == (f < r["ravel_max_fvu"]) for v, f in r["ravel_country_fvu"].items())
         and set(r["ravel_not_measurable"]).isdisjoint(r["ravel_measurable"]) and all(
            set(t["methods"]) <= set(r["ravel_measurable"]) | {"full", "dim"} for t in r["ravel"].values())),
        ("facts: accuracy recorded for capital, continent and language", lambda r: set(r["fact_accuracy"]) ==
         {"capital", "continent", "language"} and all(0 <= a <= 1 for a in r["fact_accuracy"].values())),
        ("facts: tested + skipped attributes cover all three, by the threshold", lambda r:
         sorted(r["fact_attributes_tested"] + r["fact_attributes_skipped"]) == ["capital", "continent", "language"]
         and all(r["fact_accuracy"][a] >= r["fact_min_accuracy"] for a in r["fact_attributes_tested"])),
        ("RAVEL: the whole-residual patch causes the source's answer (> 0.5) for every tested attribute", lambda r: all(
            t["methods"]["full"]["all"]["cause"] > 0.5 for t in r["ravel"].values() if t["n_pairs"] > 0)),
        ("RAVEL: cause and isolation are fractions", lambda r: all(
            0 <= s[key] <= 1 for t in r["ravel"].values() for by_n in t["methods"].values() for s in by_n.values()
            for key in ("cause", "isolation", "score"))),
        ("unlearning: scored for every SAE in [0, 1], or skipped with the reason", lambda r:
         (r["unlearning"]["skipped"] is None and len(r["unlearning"]["scores"]) == 5
          and all(0 <= v <= 1 for v in r["unlearning"]["scores"].values()))
         or (len(r["unlearning"]["skipped"]) > 20 and r["unlearning"]["scores"] == {})),
    ],
    "07_steering": [
        ("DiM steering moves the sentiment judge with the sign of α", lambda r: all(
            (s > 0) if a > 0 else (s < 0) for a, s in zip(r["alphas"], r["logprob_shift"]["dim"]) if a != 0)),
        ("a larger DiM push moves the judge further (both signs)", lambda r:
         r["logprob_shift"]["dim"][-1] > r["logprob_shift"]["dim"][r["alphas"].index(0.0) + 1]
         and r["logprob_shift"]["dim"][0] < r["logprob_shift"]["dim"][r["alphas"].index(0.0) - 1]),
        ("perplexity rises with |α| for DiM (both signs)", lambda r: all(
            r["perplexity"]["dim"][end] > r["perplexity"]["dim"][r["alphas"].index(0.0) + step]
            > 0.99 * r["base_perplexity"] for end, step in ((-1, 1), (0, -1)))),
        ("every method's largest pushes cost perplexity", lambda r: all(
            min(p[0], p[-1]) > r["base_perplexity"] for p in r["perplexity"].values())),
        ("AbsTopK steers both poles with one latent (sentiment and gender)", lambda r: all(
            axis["latents"]["abstopk"]["positive"][0] == axis["latents"]["abstopk"]["negative"][0]
            for axis in (r, r["gender"]))),
        ("an add hook pushes exactly |α|·n (push_norm); α = 0 pushes nothing", lambda r: all(
            abs(norm - abs(a) * r["residual_norm"]) <= 1e-3 * max(1.0, abs(a) * r["residual_norm"])
            for axis in (r, r["gender"]) for m, norms in axis["push_norm"].items() if not m.endswith("clamp")
            for a, norm in zip(r["alphas"], norms))),
        ("'moves both ways' follows from the per-prompt shifts: a positive push up, a negative push down "
         "(95% intervals), within the budget", lambda r: all(
            axis["moves_both_ways"][m] == _moves_both_ways(r, axis, m)
            for axis in (r, r["gender"]) for m in axis["moves_both_ways"])),
        ("refusal measured: rates are fractions, harmful base rate included", lambda r:
         "harmful, unsteered" in r["refusal_rate"] and all(0 <= v <= 1 for v in r["refusal_rate"].values())),
        ("generations scored by VADER in [-1, 1]", lambda r: len(r["vader"]) == 7
         and all(-1 <= v <= 1 for v in r["vader"].values())),
        ("gender axis: a small DiM push moves the judge with the sign of α", lambda r: all(
            (s > 0) if a > 0 else (s < 0) for a, s in zip(r["alphas"], r["gender"]["logprob_shift"]["dim"])
            if 0 < abs(a) <= 0.2)),
        ("fact questions: the unsteered model answers every kept one; accuracies are fractions", lambda r:
         0 < r["n_fact_questions"] <= r["n_fact_questions_asked"] and all(
             acc[r["alphas"].index(0.0)] == 1.0 and all(0 <= a <= 1 for a in acc)
             for axis in (r, r["gender"]) for acc in axis["fact_accuracy"].values())),
    ],
    "08_summary": [
        ("every chapter recorded its numbers before the summary", lambda r: r["missing_chapters"] == []),
        ("every claim got a verdict", lambda r: r["n_not_run"] == 0 and len(r["verdicts"]) >= 10),
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

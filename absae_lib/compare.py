"""``python -m absae_lib.compare``: chapter 4's headline comparison, TopK, AbsTopK and JumpReLU side by side.

At the ``cpu`` profile: SmolLM2-135M-Instruct, layer-15 residual stream, 1M Brown-corpus training tokens; the study's
SAEs (``absae_lib.study``: d_sae 1152, k 32, trained until the held-out curve is flat (six passes, twelve for
JumpReLU, whose L0 weight is matched to L0 = k), per-token input normalisation) over every seed of ``S.seeds``.
Held-out activations give the mean per-token NMSE (the book's headline reconstruction metric), the all-token and
typical-token NMSE and L0; held-out sequences give the loss recovered with the SAE spliced in and its 95% bootstrap
interval.  Then AbsTopK against each other architecture by chapter 4's rule (``study.compare_seeded``: a verdict only
when the intervals over seeds, and for the loss over held-out sequences, exclude 0).  Everything is cached, and the
numbers are the ones chapter 4 records.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from absae_lib import book, metrics, pipeline, study
from absae_lib.atomic import write_json

VERDICT_METRICS = ("nmse_per_token", "nmse", "loss_recovered", "delta_ce")


def seed_scores(s: book.Settings, architectures: list[str]) -> dict[str, list[dict]]:
    """{architecture: [held-out scores of each seed of ``s.seeds``, in that order]} (``study.score``)."""
    x_eval = pipeline.eval_activations(s)
    typical = metrics.typical_mask(x_eval)
    tokens = pipeline.eval_tokens(s)
    saes = {(a, seed): study.sae(s, a, seed=seed).sae for a in architectures for seed in s.seeds}
    # one call: the clean and zero-ablated runs are shared by every SAE (an SAE's scores do not depend on which
    # others share the call)
    scores = study.score(s, saes, x_eval, typical, pipeline.model(s), tokens)
    return {a: [scores[(a, seed)] for seed in s.seeds] for a in architectures}


def table(scores: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per architecture: mean ± std over seeds of the headline metrics, and the loss's 95% interval."""
    rows = []
    for architecture, by_seed in scores.items():
        summary = study.summarize(by_seed)
        lo, hi = summary["loss_recovered_ci"]
        pm = lambda m: f"{summary[m]:.4f} ± {summary[m + '_std']:.4f}"  # noqa: E731
        rows.append({"architecture": architecture, "per-token NMSE": pm("nmse_per_token"),
                     "NMSE (all tokens)": pm("nmse"), "NMSE (typical)": pm("nmse_typical"),
                     "L0": f"{summary['l0']:.1f}", "loss recovered": pm("loss_recovered"),
                     "loss recovered 95% CI": f"[{lo:.4f}, {hi:.4f}]", "Δ CE (nats)": pm("delta_ce")})
    return pd.DataFrame(rows).set_index("architecture")


def verdicts(scores: dict[str, list[dict]], subject: str = "abstopk") -> dict[str, dict[str, dict]]:
    """{rival: {metric: study.compare_seeded(subject, rival, metric)}} for every other architecture in ``scores``."""
    return {rival: {m: study.compare_seeded(scores[subject], scores[rival], m) for m in VERDICT_METRICS}
            for rival in scores if rival != subject}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (see absae_lib.book)")
    parser.add_argument("--architectures", nargs="+", default=["topk", "abstopk", "jumprelu"])
    args = parser.parse_args(argv)
    if "abstopk" not in args.architectures:
        parser.error("--architectures must include abstopk: the verdicts compare it with the others")
    s = book.settings(args.profile)
    print(f"{s.model_name} {s.hook_name}: {s.n_tokens:,} training tokens, d_sae {s.study_d_sae}, k {s.k}, "
          "steps " + ", ".join(f"{a} {s.study_steps_for(a)}" for a in args.architectures)
          + f", {s.study_normalization} input normalisation, seeds {list(s.seeds)}; "
          f"{s.n_eval_tokens:,} held-out tokens, {s.ce_sequences} held-out sequences for the loss", flush=True)
    start = time.perf_counter()
    scores = seed_scores(s, args.architectures)
    shown = table(scores)
    print(shown.to_markdown())
    found = verdicts(scores)
    for rival, by_metric in found.items():
        print(f"AbsTopK vs {rival}: " + "; ".join(
            f"{m} {c['difference']:+.4f} ({c['verdict']})" for m, c in by_metric.items()))
    out = pipeline.cache_dir("results") / f"compare.{s.profile}.json"
    write_json(out, {"table": shown.reset_index().to_dict(orient="records"), "verdicts": found}, indent=2)
    print(f"({time.perf_counter() - start:.0f} s; also written to {out})")


if __name__ == "__main__":
    main()

"""``python -m absae_lib.compare``: chapter 4's headline comparison, TopK vs AbsTopK, printed side by side.

At the ``cpu`` profile: SmolLM2-135M-Instruct, layer-15 residual stream, 1M Brown-corpus training tokens; the study's
SAEs (``absae_lib.study``: d_sae 1152, k 32, three passes, per-token input normalisation) over every seed of
``S.seeds``.  Held-out activations give the mean per-token NMSE (the book's headline reconstruction metric), the
all-token and typical-token NMSE and L0; held-out sequences give the loss recovered with the SAE spliced in and its
95% bootstrap interval.  Everything is cached, and the numbers are the ones chapter 4 records.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from absae_lib import book, metrics, pipeline, study
from absae_lib.atomic import write_json


def compare(s: book.Settings, architectures: list[str]) -> pd.DataFrame:
    """One row per architecture: mean ± std over ``s.seeds`` of the headline metrics."""
    x_eval = pipeline.eval_activations(s)
    typical = metrics.typical_mask(x_eval)
    tokens = pipeline.eval_tokens(s)
    rows = []
    for architecture in architectures:
        start = time.time()
        saes = {seed: study.sae(s, architecture, seed=seed).sae for seed in s.seeds}
        scores = study.score(s, saes, x_eval, typical, pipeline.model(s), tokens)
        summary = study.summarize(list(scores.values()))
        lo, hi = summary["loss_recovered_ci"]
        rows.append({
            "architecture": architecture,
            "per-token NMSE": f"{summary['nmse_per_token']:.4f} ± {summary['nmse_per_token_std']:.4f}",
            "NMSE (all tokens)": f"{summary['nmse']:.4f} ± {summary['nmse_std']:.4f}",
            "NMSE (typical)": f"{summary['nmse_typical']:.4f} ± {summary['nmse_typical_std']:.4f}",
            "L0": f"{summary['l0']:.1f}",
            "loss recovered": f"{summary['loss_recovered']:.4f} ± {summary['loss_recovered_std']:.4f}",
            "loss recovered 95% CI": f"[{lo:.4f}, {hi:.4f}]",
            "Δ CE (nats)": f"{summary['delta_ce']:.4f} ± {summary['delta_ce_std']:.4f}",
            "seconds": round(time.time() - start, 1),
        })
    return pd.DataFrame(rows).set_index("architecture")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (see absae_lib.book)")
    parser.add_argument("--architectures", nargs="+", default=["topk", "abstopk"])
    args = parser.parse_args(argv)
    s = book.settings(args.profile)
    print(f"{s.model_name} {s.hook_name}: {s.n_tokens:,} training tokens, d_sae {s.study_d_sae}, k {s.k}, "
          "steps " + ", ".join(f"{a} {s.study_steps_for(a)}" for a in args.architectures)
          + f", {s.study_normalization} input normalisation, seeds {list(s.seeds)}; "
          f"{s.n_eval_tokens:,} held-out tokens, {s.ce_sequences} held-out sequences for the loss")
    table = compare(s, args.architectures)
    print(table.to_markdown())
    out = pipeline.cache_dir("results") / f"compare.{s.profile}.json"
    write_json(out, table.reset_index().to_dict(orient="records"), indent=2)
    print(f"(also written to {out})")


if __name__ == "__main__":
    main()

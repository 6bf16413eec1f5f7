"""``python -m absae_lib.compare``: train TopK and AbsTopK SAEs on the embedded model and print their metrics side by side.

At the ``cpu`` profile: SmolLM2-135M-Instruct, layer-15 residual stream, 1M Brown-corpus tokens, d_sae 4608, k 32.
Held-out activations give NMSE, L0 and the dead fraction; held-out sequences give the loss recovered with the SAE
spliced into the model.  Everything is cached, so the chapters reuse these SAEs.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from absae_lib import book, metrics, pipeline


def compare(s: book.Settings, architectures: list[str]) -> pd.DataFrame:
    rows = []
    for architecture in architectures:
        start = time.time()
        sae = pipeline.sae(s, architecture)
        reconstruction = metrics.evaluate_reconstruction(sae, pipeline.eval_activations(s))
        downstream = metrics.spliced_loss(pipeline.model(s), sae, pipeline.eval_tokens(s), s.hook_name)
        rows.append({
            "architecture": architecture,
            "NMSE": reconstruction["nmse"],
            "explained variance": reconstruction["explained_variance"],
            "L0": reconstruction["l0"],
            "dead fraction": reconstruction["dead_fraction"],
            "negative codes": reconstruction["fraction_negative"],
            "loss recovered": downstream["loss_recovered"],
            "Δ CE loss": downstream["delta_loss"],
            "seconds": round(time.time() - start, 1),
        })
    return pd.DataFrame(rows).set_index("architecture")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (see absae_lib.book)")
    parser.add_argument("--architectures", nargs="+", default=["topk", "abstopk"])
    args = parser.parse_args(argv)
    s = book.settings(args.profile)
    print(f"{s.model_name} {s.hook_name}: {s.n_tokens:,} training tokens, d_sae {s.d_sae}, k {s.k}, "
          f"{s.n_eval_tokens:,} held-out tokens, {s.ce_sequences} held-out sequences for the loss")
    table = compare(s, args.architectures)
    print(table.to_markdown(floatfmt=".4f"))
    out = pipeline.cache_dir("results") / f"compare.{s.profile}.json"
    out.write_text(json.dumps(table.reset_index().to_dict(orient="records"), indent=2))
    print(f"(also written to {out})")


if __name__ == "__main__":
    main()

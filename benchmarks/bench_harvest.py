"""Harvesting speed: absae's ``harvest`` against a bare ``run_with_cache(..., stop_at_layer=...)`` of the same model.

    python benchmarks/bench_harvest.py [--batches 6] [--batch-size 16] [--layer 15] [--threads N]

Both run on the same Brown token rows, alternating, so machine load hits both alike; prints tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from absae_lib import data
from absae_lib.activations import harvest
from absae_lib.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model()
    hook = f"blocks.{args.layer}.hook_resid_post"
    tokens = data.token_sequences(model.tokenizer, data.brown_texts(unit="doc", seed=0), seq_len=args.seq_len,
                                  max_tokens=args.batches * args.batch_size * args.seq_len)
    batches = tokens.split(args.batch_size)

    def bare(batch: torch.Tensor) -> None:
        with torch.inference_mode():
            _, cache = model.run_with_cache(batch, names_filter=hook, stop_at_layer=args.layer + 1)
            cache[hook][:, 1:].reshape(-1, model.cfg.d_model).float().cpu()

    def ours(batch: torch.Tensor) -> None:
        harvest(model, hook, batch, batch_size=args.batch_size, progress=False)

    bare(batches[0]), ours(batches[0])  # warm-up
    times = {"run_with_cache (bare)": [], "absae harvest": []}
    for batch in batches:
        for name, fn in (("run_with_cache (bare)", bare), ("absae harvest", ours)):
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    n_tok = args.batch_size * (args.seq_len - 1)
    print(f"SmolLM2-135M, {hook}, batch {args.batch_size}x{args.seq_len}, {torch.get_num_threads()} threads, "
          f"median of {len(batches)} batches")
    print("| method | tokens/s |\n|---|---|")
    rates = {name: n_tok / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")
    print(f"absae harvest / bare = {rates['absae harvest'] / rates['run_with_cache (bare)']:.2f}")


if __name__ == "__main__":
    main()

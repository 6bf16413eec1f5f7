"""Harvesting speed: absae's ``harvest`` against a bare ``run_with_cache(..., stop_at_layer=...)`` of the same model.

    python benchmarks/bench_harvest.py [--batches 6] [--batch-size 16] [--seq-len 128] [--layer 15] [--threads 2]
    python benchmarks/bench_harvest.py --scaling        # also tokens/s vs batch size and vs sequence length

The bare forwards run in fp32 and under bf16 autocast (the latter only where bf16 is fast: on a CPU without
AVX512-BF16/AMX it is emulated, many times slower than fp32, and absae's harvest stays in fp32 there).  All
methods run on the same Brown token rows, alternating batch by batch, so machine load hits them alike.  Tokens/s
counts the harvested positions (position 0, the attention sink, is left out by every method).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

from absae_lib import data
from absae_lib.activations import harvest, resolve_compute_dtype
from absae_lib.device import bf16_is_fast
from absae_lib.models import load_model


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} cores"


def bare_forward(model, hook: str, layer: int, amp: torch.dtype | None) -> Callable[[torch.Tensor], None]:
    """run_with_cache of the one hook, stopping after its layer; [batch, pos] -> nothing (the fp32 copy is made)."""
    def run(batch: torch.Tensor) -> None:
        with torch.inference_mode(), torch.autocast(batch.device.type, dtype=amp or torch.float32,
                                                     enabled=amp is not None):
            _, cache = model.run_with_cache(batch, names_filter=hook, stop_at_layer=layer + 1)
            cache[hook][:, 1:].reshape(-1, model.cfg.d_model).float().cpu()
    return run


def tokens_per_second(fns: dict[str, Callable[[torch.Tensor], None]], batches: list[torch.Tensor]) -> dict[str, float]:
    """Median tokens/s of each method over ``batches`` (after one warm-up batch each), alternating per batch."""
    for fn in fns.values():
        fn(batches[0])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for batch in batches:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    n_tok = batches[0].shape[0] * (batches[0].shape[1] - 1)
    return {name: n_tok / statistics.median(t) for name, t in times.items()}


def rows(model, seq_len: int, n_rows: int) -> torch.Tensor:
    return data.token_sequences(model.tokenizer, data.brown_texts(unit="doc", seed=0), seq_len=seq_len,
                                max_tokens=n_rows * seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scaling", action="store_true", help="also tokens/s vs batch size and sequence length")
    parser.add_argument("--scaling-tokens", type=int, default=8192,
                        help="tokens per point of the scaling tables (after a warm-up batch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    device = next(model.parameters()).device
    hook = f"blocks.{args.layer}.hook_resid_post"
    ours_dtype = resolve_compute_dtype(torch.float32, device)

    def ours(batch: torch.Tensor) -> None:
        harvest(model, hook, batch, batch_size=batch.shape[0], progress=False)

    fns = {"bare fp32": bare_forward(model, hook, args.layer, None)}
    if bf16_is_fast(device):
        fns["bare bf16 autocast"] = bare_forward(model, hook, args.layer, torch.bfloat16)
    fns["absae harvest"] = ours
    tokens = rows(model, args.seq_len, args.batches * args.batch_size)
    rates = tokens_per_second(fns, list(tokens.split(args.batch_size)))
    print(f"SmolLM2-135M, {hook}, batch {args.batch_size}×{args.seq_len}, {torch.get_num_threads()} threads, "
          f"{device}, median of {args.batches} batches; absae harvest computes in {ours_dtype} here; {load_note()}")
    if not bf16_is_fast(device):
        print(f"(no bf16 row: bf16 is not fast on this {device}, see absae_lib.device.bf16_is_fast)")
    print("\n| method | tokens/s | absae harvest / this |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rates['absae harvest'] / rate:.2f} |")

    if args.scaling:
        for label, shapes in (("batch size", [(b, args.seq_len) for b in (1, 4, 16, 64)]),
                              ("sequence length", [(args.batch_size, s) for s in (32, 64, 128, 256, 512)])):
            print(f"\nabsae harvest vs {label} ({ours_dtype}; ≈{args.scaling_tokens} tokens per point):\n\n"
                  "| batch | seq_len | tokens/s | bare fp32 tokens/s |\n|---:|---:|---:|---:|")
            for batch_size, seq_len in shapes:
                n_batches = max(2, -(-args.scaling_tokens // (batch_size * seq_len)))
                batches = list(rows(model, seq_len, n_batches * batch_size).split(batch_size))
                point = tokens_per_second({"ours": ours, "bare": fns["bare fp32"]}, batches)
                print(f"| {batch_size} | {seq_len} | {point['ours']:,.0f} | {point['bare']:,.0f} |", flush=True)
    print(f"\n(at the end: {load_note()})")


if __name__ == "__main__":
    main()

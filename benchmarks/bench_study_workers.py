"""Two study SAEs at once on one thread each, against one at a time on every thread: time per step, and the bits.

    python benchmarks/bench_study_workers.py [--profile cpu] [--steps 120] [--architectures topk abstopk]

Trains the first architecture's study SAE (``pipeline.study_config``, ``--steps`` steps, held-out evaluations
included, nothing cached) alone on all threads, alone on one thread, and then two SAEs (one of each architecture)
at once, each in its own process on one thread: what ``python -m absae_lib.study --workers 2`` does on two cores.
Prints ms per step of each run, the throughput of the pair against one SAE at a time on all threads, and whether
the first architecture's SAE has the same weights in every run (SHA-256 of its parameters).  Needs the profile's
activations in the cache (any chapter, or ``python -m absae_lib.study``, harvests them).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import time


def train(profile: str, architecture: str, steps: int, threads: int) -> tuple[float, str]:
    """(seconds, SHA-256 prefix of the parameters) of one study SAE trained on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    from absae_lib import book, pipeline
    from absae_lib.train import train_sae

    s = book.settings(profile)
    x, held_out = pipeline.train_activations(s), pipeline.eval_activations(s)
    config = pipeline.study_config(s, architecture, n_steps=steps)
    start = time.perf_counter()
    sae, _ = train_sae(x, config, eval_data=held_out)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(b"".join(p.detach().contiguous().numpy().tobytes() for p in sae.parameters()))
    return seconds, digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--architectures", nargs=2, default=["topk", "abstopk"])
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    first, second = args.architectures
    context = multiprocessing.get_context("spawn")  # a fresh process per run: nothing warm carried over
    with context.Pool(1) as pool:
        alone_all = pool.apply(train, (args.profile, first, args.steps, cores))
    with context.Pool(1) as pool:
        alone_one = pool.apply(train, (args.profile, first, args.steps, 1))
    with context.Pool(2) as pool:
        pair = pool.starmap(train, [(args.profile, first, args.steps, 1), (args.profile, second, args.steps, 1)])
    ms = lambda seconds: 1000 * seconds / args.steps  # noqa: E731
    print(f"{args.profile} study SAE, {args.steps} steps each, {cores} cores")
    print(f"  {first} alone on {cores} threads: {ms(alone_all[0]):.0f} ms/step   [{alone_all[1]}]")
    print(f"  {first} alone on 1 thread:  {ms(alone_one[0]):.0f} ms/step   [{alone_one[1]}]")
    for architecture, (seconds, digest) in zip(args.architectures, pair):
        print(f"  {architecture} beside the other, 1 thread: {ms(seconds):.0f} ms/step   [{digest}]")
    pair_rate = 2 * args.steps / max(seconds for seconds, _ in pair)
    print(f"  two at once: {pair_rate / (args.steps / alone_all[0]):.2f}× the steps per second of one at a time")
    same = alone_all[1] == alone_one[1] == pair[0][1]
    print(f"  {first}'s weights the same bits in all three runs: {same}")


if __name__ == "__main__":
    main()

"""Where absae's training step spends its time: torch.profiler over a few steps, grouped by operator.

    python benchmarks/profile_step.py [--d-sae 4608] [--k 32] [--mode abstopk] [--dead 0.05] [--dtype fp32]
                                      [--loop-adam] [--steps 3] [--rows 25]

Runs the step that ``bench_step.py`` times as ``absae`` (``absae_lib.train``'s loop body on the fast path) and prints
the operators by self CPU time (the sparse kernels' backward shows as ``_SparseDecodeBackward`` and
``_SparseEncodeBackward``, Adam as ``Optimizer.step``), with the floor (encoder matmul + top-k) profiled alongside, so
that a step much slower than the floor shows what to fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import absae_step, floor_step, load_note  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--mode", default="abstopk", choices=["topk", "abstopk"])
    parser.add_argument("--dead", type=float, default=0.05)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--loop-adam", action="store_true", help="the for-loop Adam instead of the fused one")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    dead = (torch.rand(args.d_sae, generator=torch.Generator().manual_seed(1)) < args.dead) if args.dead > 0 else None
    step = absae_step(x, args.d_sae, args.k, args.mode, amp, dead, loop_adam=args.loop_adam)
    floor = floor_step(x, args.d_sae, args.k, args.mode, amp)
    for _ in range(2):
        step(), floor()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            with record_function("absae step"):
                step()
            with record_function("floor"):
                floor()
    print(f"{args.mode}, d_sae {args.d_sae}, k {args.k}, B {args.batch}, {args.dtype}, dead {args.dead}, "
          f"{'for-loop' if args.loop_adam else 'fused'} Adam, {args.steps} steps; {load_note()}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

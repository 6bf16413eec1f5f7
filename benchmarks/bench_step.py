"""Time one k-sparse SAE training step (forward + backward + Adam): dense autograd vs absae_lib.sparse vs the floor.

    python benchmarks/bench_step.py --quick            # d_sae 4608, k 32, B 4096 (about a minute on 2 cores)
    python benchmarks/bench_step.py                    # d_sae 4608 … 36864, k 32 and 64 (many minutes)
    python benchmarks/bench_step.py --saelens          # adds SAELens's TopKTrainingSAE step (topk, abstopk modes;
                                                       # SAELens has no AbsTopK, so its TopK step stands in)

Each step is timed after warm-up; the variants run round-robin, ``--reps`` times each, and the table shows the
median and the minimum (the minimum is the best guess of the time on an idle machine).  "floor" is the part no
k-sparse step can skip: the encoder matmul plus the top-k over its [B, d_sae] output (no backward, no Adam).
All variants train the same unit-norm-decoder SAE with the same Adam; timings on a shared CPU are noisy, so
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from absae_lib.device import bf16_is_fast  # noqa: E402
from absae_lib.sparse import Workspace, fast_step, normalize_rows_, remove_parallel_grad_  # noqa: E402


def make_params(d_in: int, d_sae: int, device: torch.device) -> list[torch.Tensor]:
    W_dec = torch.randn(d_sae, d_in, device=device)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = [W_dec.T.clone(), torch.zeros(d_sae, device=device), W_dec, torch.zeros(d_in, device=device)]
    return [p.requires_grad_() for p in params]  # W_enc, b_enc, W_dec, b_dec


def dense_codes(pre: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """The dense reference activation: top-k, then scatter into a [B, d_sae] tensor."""
    if mode == "abstopk":
        idx = pre.abs().topk(k, dim=-1, sorted=False).indices
        return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
    relu = torch.relu(pre)
    if mode == "topk":
        idx = relu.topk(k, dim=-1, sorted=False).indices
        return torch.zeros_like(pre).scatter(-1, idx, relu.gather(-1, idx))
    flat = relu.reshape(-1)
    idx = flat.topk(k * pre.shape[0], sorted=False).indices
    return torch.zeros_like(flat).scatter(0, idx, flat[idx]).reshape(pre.shape)


def dense_step(params, optimizer, x, k, mode):
    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc + b_enc
    recon = dense_codes(pre, k, mode) @ W_dec + b_dec
    loss = (x - recon).pow(2).sum(-1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    remove_parallel_grad_(W_dec)
    optimizer.step()
    normalize_rows_(W_dec)


def floor_step(params, x, k, mode, buffers):
    """Encoder matmul + row-wise top-k (of |pre| for abstopk), into reused buffers: what no k-sparse step avoids."""
    W_enc, b_enc, _, b_dec = params
    with torch.no_grad():
        if not buffers:
            buffers.extend([torch.empty(x.shape[0], W_enc.shape[1], device=x.device) for _ in range(2)])
        if torch.is_autocast_enabled(x.device.type):  # bf16 floor: autocast skips ops that write into out=
            pre = torch.addmm(b_enc, x - b_dec, W_enc)
            (pre.abs() if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False)
            return
        pre = torch.addmm(b_enc, x - b_dec, W_enc, out=buffers[0])
        (torch.abs(pre, out=buffers[1]) if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False)


def saelens_step_fn(d_in, d_sae, k, device, x):
    """SAELens 6's TopKTrainingSAE: its training_forward_pass, backward, Adam (its trainer's inner loop)."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step():
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step


def timed(fns: dict[str, Callable[[], None]], reps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Wall times in ms of each step function, run round-robin so that a change in the machine's load hits
    every variant alike (the CPU is shared)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only d_sae 4608, k 32, abstopk")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 9216, 18432, 36864])
    parser.add_argument("--k", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--modes", nargs="+", default=["abstopk"], choices=["topk", "batchtopk", "abstopk"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also time the steps under bf16 autocast")
    parser.add_argument("--auxk", type=float, default=0.0,
                        help="also time the fast step with AuxK (k_aux = d_in/2) and this fraction of latents dead")
    parser.add_argument("--no-dense", action="store_true", help="skip the (slow) dense reference")
    parser.add_argument("--saelens", action="store_true", help="also time SAELens's TopK training step")
    parser.add_argument("--adam", choices=["fused", "default"], default="fused",
                        help="Adam for floor/fast/dense (SAELens keeps its own default Adam); on CPU the fused one "
                             "is ~5× quicker than the default for-loop one")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.quick:
        args.d_sae, args.k = [4608], [32]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = [None]
    if args.bf16 and not bf16_is_fast(device):
        # On CPUs without AVX512-BF16/AMX the bf16 matmul is emulated: ≈20 s for the d_sae 4608 encoder on the
        # 2-core EPYC this was written on, against 0.25 s in fp32.
        print(f"skipping bf16: it is not fast on {device} (absae_lib.device.bf16_is_fast)")
    elif args.bf16:
        dtypes.append(torch.bfloat16)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)

    print(f"device {device}, threads {torch.get_num_threads()}, B {args.batch}, d_in {args.d_in}, {args.adam} Adam, "
          f"load average {os.getloadavg()[0]:.2f} (of {os.cpu_count()} cores)")
    header = (f"{'mode':9} {'d_sae':>6} {'k':>3} {'dtype':5} {'step':8} {'median ms':>9} {'min ms':>9} {'tok/s':>9} "
              f"{'× floor':>8} {'vs dense':>9} {'vs SAELens':>10}")
    print(header)
    print("-" * len(header))
    for mode in args.modes:
        for d_sae in args.d_sae:
            for k in args.k:
                for amp in dtypes:
                    params = make_params(args.d_in, d_sae, device)
                    optimizer = torch.optim.Adam(params, lr=1e-4, fused=args.adam == "fused" or None)
                    dead = None
                    if args.auxk > 0:
                        dead = torch.rand(d_sae, device=device) < args.auxk
                    def under_autocast(fn):
                        def wrapped():
                            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                                fn()
                        return wrapped

                    buffers: list[torch.Tensor] = []
                    workspace = Workspace()
                    fns = {
                        "floor": lambda: floor_step(params, x, k, mode, buffers),
                        "fast": lambda: fast_step(*params, optimizer, x, k, mode, workspace=workspace),
                    }
                    if dead is not None:
                        fns["fast+aux"] = lambda: fast_step(*params, optimizer, x, k, mode, dead_mask=dead,
                                                            k_aux=args.d_in // 2, workspace=workspace)
                    if not args.no_dense:
                        fns["dense"] = lambda: dense_step(params, optimizer, x, k, mode)
                    if args.saelens and mode in ("topk", "abstopk") and amp is None:
                        # SAELens has no AbsTopK: its TopK step (same shapes, same top-k work) is the reference.
                        fns["saelens"] = saelens_step_fn(args.d_in, d_sae, k, device, x)
                    fns = {name: under_autocast(fn) for name, fn in fns.items()}
                    times = timed(fns, args.reps, args.warmup, device)
                    median = {name: statistics.median(t) for name, t in times.items()}
                    for name, t in times.items():
                        vs_dense = f"{median['dense'] / median[name]:8.2f}×" if "dense" in median else ""
                        vs_saelens = f"{median['saelens'] / median[name]:8.2f}×" if "saelens" in median else ""
                        dtype = "bf16" if amp is not None else "fp32"
                        print(f"{mode:9} {d_sae:6d} {k:3d} {dtype:5} {name:8} {median[name]:9.1f} {min(t):9.1f} "
                              f"{args.batch / median[name] * 1e3:9.0f} {median[name] / median['floor']:8.2f} "
                              f"{vs_dense:>9} {vs_saelens:>10}", flush=True)
                    del params, optimizer, workspace, buffers
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

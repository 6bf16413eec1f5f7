"""Time one k-sparse SAE training step (forward + backward + Adam): dense autograd vs absae_lib.sparse vs the floor.

    python benchmarks/bench_step.py --quick            # d_sae 4608, k 32, B 4096 (about a minute on 2 cores)
    python benchmarks/bench_step.py                    # d_sae 4608 … 36864, k 32 and 64 (many minutes)
    python benchmarks/bench_step.py --saelens          # adds SAELens's TopKTrainingSAE step (topk mode only)

Each step is timed after warm-up; the table shows the median of ``--reps`` runs.  "floor" is the part no
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
from absae_lib.sparse import fast_step, normalize_rows_, remove_parallel_grad_  # noqa: E402


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


def floor_step(params, x, k, mode):
    W_enc, b_enc, _, b_dec = params
    with torch.no_grad():
        pre = torch.addmm(b_enc, x - b_dec, W_enc)
        (pre.abs() if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False)


def saelens_step_fn(d_in, d_sae, k, device):
    """SAELens 6's TopKTrainingSAE: its training_forward_pass, backward, Adam (its trainer's inner loop)."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=str(device)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(x):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step


def timed(fn: Callable[[], None], reps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
    parser.add_argument("--auxk", type=float, default=0.0, help="fraction of latents marked dead for AuxK (fast step)")
    parser.add_argument("--no-dense", action="store_true", help="skip the (slow) dense reference")
    parser.add_argument("--saelens", action="store_true", help="also time SAELens's TopK training step")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.quick:
        args.d_sae, args.k = [4608], [32]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = [None, torch.bfloat16] if args.bf16 else [None]
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)

    print(f"device {device}, threads {torch.get_num_threads()}, B {args.batch}, d_in {args.d_in}, "
          f"load average {os.getloadavg()[0]:.2f} (of {os.cpu_count()} cores)")
    header = f"{'mode':9} {'d_sae':>6} {'k':>3} {'dtype':5} {'step':9} {'ms/step':>9} {'tok/s':>9} {'× floor':>8} {'vs dense':>9}"
    print(header)
    print("-" * len(header))
    for mode in args.modes:
        for d_sae in args.d_sae:
            for k in args.k:
                for amp in dtypes:
                    params = make_params(args.d_in, d_sae, device)
                    optimizer = torch.optim.Adam(params, lr=1e-4)
                    dead = None
                    if args.auxk > 0:
                        dead = torch.rand(d_sae, device=device) < args.auxk
                    ctx = lambda: torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)  # noqa: E731

                    def run(fn):
                        def wrapped():
                            with ctx():
                                fn()
                        return timed(wrapped, args.reps, args.warmup, device)

                    rows = {"floor": run(lambda: floor_step(params, x, k, mode))}
                    rows["fast"] = run(lambda: fast_step(*params, optimizer, x, k, mode, dead_mask=dead,
                                                         k_aux=None if dead is None else args.d_in // 2))
                    if not args.no_dense:
                        rows["dense"] = run(lambda: dense_step(params, optimizer, x, k, mode))
                    if args.saelens and mode == "topk" and amp is None:
                        rows["saelens"] = run(lambda s=saelens_step_fn(args.d_in, d_sae, k, device): s(x))
                    for name, ms in rows.items():
                        ratio = ms / rows["floor"]
                        vs_dense = f"{rows['dense'] / ms:8.2f}×" if "dense" in rows else ""
                        dtype = "bf16" if amp is not None else "fp32"
                        print(f"{mode:9} {d_sae:6d} {k:3d} {dtype:5} {name:9} {ms:9.1f} {args.batch / ms * 1e3:9.0f} "
                              f"{ratio:8.2f} {vs_dense:>9}", flush=True)
                    del params, optimizer
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Time one ReLU / JumpReLU SAE training step: absae's sparse step, the same maths dense, and SAELens's.

    python benchmarks/bench_threshold_step.py                       # d_sae 1152 and 4608, L0 ≈ 32, batch 4096
    python benchmarks/bench_threshold_step.py --d-sae 1152 --l0 16 32 64 --reps 7

Every step trains on the same [B, d_in] batch from weights that fire on about ``--l0`` latents per token there (the
trainer's ``init_l0`` start, so the support is what a calibrated run sees); within one (architecture, d_sae, L0)
group the steps run round-robin, ``--reps`` times each after ``--warmup`` calls, so a change in the machine's load
hits every step alike.  fp32, ``--threads`` CPU threads.  What one call does:

- ``absae``: ``absae_lib.train.train_sae``'s loop body on CPU: ``sparse_threshold.threshold_forward`` (the sparse
  step), loss = MSE + c·penalty, backward, the decoder gradient's along-row part removed, fused Adam, decoder rows
  renormalised, JumpReLU's θ clamped.
- ``absae-dense``: the same with ``SAE.forward`` + ``SAE.penalty`` through autograd (``TrainConfig(sparse_step=
  False)``: dense [B, d_sae] codes and a dense decoder).
- ``saelens``: SAELens's ``SAETrainer._train_step`` on its ``JumpReLUTrainingSAE`` (L0 loss "step", its default
  bandwidth 0.05) or ``StandardTrainingSAE`` (L1 weighted by decoder norms), weights copied from absae's: forward
  with its losses, backward, ``clip_grad_norm_(1.0)``, ``torch.optim.Adam``, zero_grad, LR and coefficient
  schedulers.  Its codes and decoder are dense.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from absae_lib import SAE  # noqa: E402
from absae_lib.sparse import batch_mse, normalize_rows_, remove_parallel_grad_  # noqa: E402
from absae_lib.sparse_threshold import threshold_forward  # noqa: E402
from absae_lib.train import _init_firing_rate_, adam  # noqa: E402

Step = Callable[[], None]
COEFFICIENT = {"standard": 1.6, "jumprelu": 0.5}  # the study's calibrated order of magnitude (pipeline.CALIBRATION)


def started_sae(x: torch.Tensor, architecture: str, d_sae: int, l0: float) -> SAE:
    """An absae SAE whose latents each fire on about l0 / d_sae of x (the trainer's init_l0 start)."""
    torch.manual_seed(0)
    sae = SAE(x.shape[1], d_sae, architecture, jumprelu_bandwidth=0.001 * math.sqrt(x.shape[1]))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    _init_firing_rate_(sae, x, l0)
    return sae


def absae_step(x: torch.Tensor, sae: SAE, sparse: bool) -> Step:
    architecture = sae.cfg.architecture
    jump = architecture == "jumprelu"
    optimizer = adam(list(sae.parameters()), 1e-4, (0.9, 0.999))

    def step() -> None:
        out = threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, architecture,
                                sae.threshold if jump else None, sae.cfg.jumprelu_bandwidth if jump else None,
                                max_density=1.0) if sparse else None
        if out is None:
            dense = sae(x)
            recon, penalty = dense.recon, sae.penalty(dense)
        else:
            recon, penalty = out.recon, out.penalty
        loss = batch_mse(x, recon) + COEFFICIENT[architecture] * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_grad_(sae.W_dec)
        optimizer.step()
        normalize_rows_(sae.W_dec)
        if jump:
            with torch.no_grad():
                sae.threshold.clamp_(min=1e-6)

    return step


def saelens_step(x: torch.Tensor, ours: SAE) -> Step:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    B, d_in = x.shape
    d_sae, architecture = ours.cfg.d_sae, ours.cfg.architecture
    if architecture == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device="cpu",
                                                            l0_coefficient=COEFFICIENT["jumprelu"]))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device="cpu",
                                                            l1_coefficient=COEFFICIENT["standard"]))
    with torch.no_grad():  # the same start as absae's
        for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if architecture == "jumprelu" else ()):
            getattr(sae, name).copy_(getattr(ours, name))
    cfg = SAETrainerConfig(total_training_samples=B * 1_000_000, train_batch_size_samples=B, device="cpu",
                           lr=1e-4, lr_end=1e-5, autocast=False, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    return lambda: trainer._train_step(sae=sae, sae_in=x)


def timed(steps: dict[str, Step], reps: int, warmup: int) -> dict[str, list[float]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():  # round-robin: a load change hits every step alike
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[1152, 4608])
    parser.add_argument("--l0", type=float, nargs="+", default=[32.0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--arch", nargs="+", default=["jumprelu", "standard"], choices=["jumprelu", "standard"])
    parser.add_argument("--steps", nargs="+", default=["absae", "absae-dense", "saelens"],
                        choices=["absae", "absae-dense", "saelens"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=g)
    x = x / x.norm(dim=-1, keepdim=True) * math.sqrt(args.d_in)  # the trainer's per-token scale
    print(f"batch {args.batch}, d_in {args.d_in}, fp32, {args.threads} threads; ms per step: median [min–max]")
    print(f"{'architecture':>12} {'d_sae':>6} {'L0':>5} " + "".join(f"{name:>24}" for name in args.steps)
          + "   absae vs saelens")
    for architecture in args.arch:
        for d_sae in args.d_sae:
            for l0 in args.l0:
                makers = {"absae": lambda: absae_step(x, started_sae(x, architecture, d_sae, l0), True),
                          "absae-dense": lambda: absae_step(x, started_sae(x, architecture, d_sae, l0), False),
                          "saelens": lambda: saelens_step(x, started_sae(x, architecture, d_sae, l0))}
                steps = {}
                for name in args.steps:
                    try:
                        steps[name] = makers[name]()
                    except ImportError as err:
                        print(f"  ({name} skipped: {err})")
                times = timed(steps, args.reps, args.warmup)
                med = {name: statistics.median(t) for name, t in times.items()}
                cells = "".join(f"{med[n]:>9.0f} [{min(times[n]):.0f}–{max(times[n]):.0f}]".rjust(24) for n in times)
                speedup = (f"   {med['saelens'] / med['absae']:.1f}× faster" if {"absae", "saelens"} <= set(med)
                           else "")
                print(f"{architecture:>12} {d_sae:>6} {l0:>5.0f} {cells}{speedup}", flush=True)


if __name__ == "__main__":
    main()

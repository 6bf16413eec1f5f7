"""Time one k-sparse SAE training step: absae against SAELens (AbsTopK and TopK) and EleutherAI's sparsify (TopK).

    python benchmarks/bench_step.py --quick                                  # d_sae 4608, k 32 (a few minutes)
    python benchmarks/bench_step.py --d-sae 4608 18432 --k 32 64             # the main table of RESULTS.md
    python benchmarks/bench_step.py --steps floor absae sparsify --modes abstopk --d-sae 4608 9216 18432 36864
                                                                              # cost vs d_sae (or vary --k)

The peers are optional (`make bench-setup` installs them); a step whose library is missing is skipped with a note.
Every step trains on the same [B, d_in] batch; within one (d_sae, k) group all steps run round-robin, ``--reps``
times each after ``--warmup`` calls, so a change in the machine's load hits every step alike (the CPU is shared).
The table gives the median, the min–max and tokens/s; ``× floor`` divides by the floor of the same mode and dtype.

What one call of each step does (read off the installed sources; RESULTS.md says the same):

- ``floor``: the encoder matmul (x − b_dec) @ W_enc + b_enc and the row-wise top-k (of |pre| for AbsTopK), no
  gradient: what no k-sparse step can skip.
- ``absae``: the body of ``absae_lib.train.train_sae``'s loop on its fast path: ``sparse.sparse_forward`` with
  AuxK over a fixed set of dead latents (``--dead``), loss = MSE + AuxK/32, backward, the decoder gradient's
  along-row part removed, Adam as ``train_sae`` builds it (``absae_lib.train.adam``: the fused kernel), decoder rows
  renormalised, the dead-latent counters updated (left out: the row loader, the finiteness check and the
  GradScaler, which is a no-op without fp16, all O(B·d_in) or less).  ``absae-noaux``: the same with no dead latent (so no AuxK);
  ``absae-loopadam``: the same with ``torch.optim.Adam``'s default on CPU, the for-loop implementation (what
  ``train_sae`` used before it took the fused kernel).
- ``saelens``: SAELens's own per-batch step, ``SAETrainer._train_step``, on its ``AbsTopKTrainingSAE`` or
  ``TopKTrainingSAE`` (default configs: dense [B, d_sae] codes, ``rescale_acts_by_decoder_norm`` instead of a
  renormalised decoder): training_forward_pass with the dead-neuron mask (so its AuxK runs), firing statistics,
  backward, ``clip_grad_norm_(1.0)``, ``torch.optim.Adam``, zero_grad, LR scheduler.  bf16 is SAELens's own
  ``autocast=True`` trainer option.  ``saelens-sparse``: TopK with ``use_sparse_activations=True`` (a COO code
  tensor and ``torch.sparse.mm``; SAELens's docs call it worthwhile in fp32 without autocast, so fp32 only) and
  ``rescale_acts_by_decoder_norm=False`` (with True its backward fails on CPU).
- ``sparsify``: one batch of ``sparsify.Trainer.fit`` for one SAE, ``SparseCoder`` TopK: decoder renormalised,
  forward with the dead mask (its AuxK), loss = FVU + AuxK/32, backward, ``remove_gradient_parallel_to_decoder_
  directions``, ``torch.optim.Adam`` (its trainer's ``optimizer="adam"`` without bitsandbytes), zero_grad, firing
  mask update.  On CPU its decoder is the eager ``F.embedding_bag`` (no Triton).  bf16: ``torch.autocast`` around
  its forward, which is what its own decorator does on CUDA (the decorator is CUDA-only).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from absae_lib.device import bf16_is_fast  # noqa: E402
from absae_lib.sparse import Workspace, batch_mse, normalize_rows_, remove_parallel_grad_, sparse_forward  # noqa: E402
from absae_lib.train import adam  # noqa: E402

STEPS = ("floor", "absae", "absae-noaux", "absae-loopadam", "saelens", "saelens-sparse", "sparsify", "dense")
MODE_NAMES = {"topk": "TopK", "abstopk": "AbsTopK"}
AUX_COEFFICIENT = 1 / 32  # absae's default (train.TrainConfig.aux_coefficient); used for sparsify too
Step = Callable[[], None]


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} cores"


# --- the steps ------------------------------------------------------------------------------------------------------


def make_params(d_in: int, d_sae: int, device: torch.device) -> list[torch.Tensor]:
    """absae's SAE initialisation: unit-norm decoder rows, W_enc = W_decᵀ, zero biases.  [W_enc, b_enc, W_dec, b_dec]"""
    W_dec = torch.randn(d_sae, d_in, device=device)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = [W_dec.T.clone(), torch.zeros(d_sae, device=device), W_dec, torch.zeros(d_in, device=device)]
    return [p.requires_grad_() for p in params]


def autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


def floor_step(x: torch.Tensor, d_sae: int, k: int, mode: str, amp: torch.dtype | None) -> Step:
    """Encoder matmul + row-wise top-k, into reused buffers in fp32 (autocast skips ops that write into out=)."""
    W_enc, b_enc, _, b_dec = [p.detach() for p in make_params(x.shape[1], d_sae, x.device)]
    buffers = [torch.empty(x.shape[0], d_sae, device=x.device) for _ in range(2)] if amp is None else []

    @torch.no_grad()
    def step() -> None:
        if amp is not None:
            with autocast(x.device, amp):
                pre = torch.addmm(b_enc, x - b_dec, W_enc)
            (pre.abs() if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False)
            return
        pre = torch.addmm(b_enc, x - b_dec, W_enc, out=buffers[0])
        (torch.abs(pre, out=buffers[1]) if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False)

    return step


def absae_step(x: torch.Tensor, d_sae: int, k: int, mode: str, amp: torch.dtype | None, dead: torch.Tensor | None,
               loop_adam: bool = False) -> Step:
    """The loop body of absae_lib.train.train_sae on the fast k-sparse path (see the module docstring)."""
    B, d_in = x.shape
    W_enc, b_enc, W_dec, b_dec = params = make_params(d_in, d_sae, x.device)
    optimizer = torch.optim.Adam(params, lr=1e-4) if loop_adam else adam(params, 1e-4, (0.9, 0.999))
    workspace = Workspace()
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=x.device)
    k_aux = d_in // 2

    def step() -> None:
        with autocast(x.device, amp):
            out = sparse_forward(x, W_enc, b_enc, W_dec, b_dec, k, mode, dead_mask=dead,
                                 k_aux=k_aux if dead is not None else None, workspace=workspace)
            mse = batch_mse(x, out.recon.float())
            loss = mse + AUX_COEFFICIENT * out.aux_loss if dead is not None else mse
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_grad_(W_dec)
        optimizer.step()
        normalize_rows_(W_dec)
        with torch.no_grad():
            tokens_since_fired.add_(B)
            tokens_since_fired[out.fired(d_sae)] = 0

    return step


def dense_step(x: torch.Tensor, d_sae: int, k: int, mode: str, amp: torch.dtype | None) -> Step:
    """The same maths as absae's step through plain autograd (dense [B, d_sae] codes, z @ W_dec), no AuxK."""
    W_enc, b_enc, W_dec, b_dec = params = make_params(x.shape[1], d_sae, x.device)
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        with autocast(x.device, amp):
            pre = (x - b_dec) @ W_enc + b_enc
            acts = pre if mode == "abstopk" else torch.relu(pre)
            idx = (pre.abs() if mode == "abstopk" else pre).topk(k, dim=-1, sorted=False).indices
            z = torch.zeros_like(acts).scatter(-1, idx, acts.gather(-1, idx))
            loss = (x - (z @ W_dec + b_dec).float()).pow(2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_grad_(W_dec)
        optimizer.step()
        normalize_rows_(W_dec)

    return step


def saelens_step(x: torch.Tensor, d_sae: int, k: int, mode: str, amp: torch.dtype | None, dead: torch.Tensor | None,
                 sparse_acts: bool = False) -> Step:
    """SAELens's SAETrainer._train_step on its AbsTopK/TopK training SAE (see the module docstring)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.abstopk_sae import AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    B, d_in = x.shape
    device = str(x.device)
    if mode == "abstopk":
        sae = AbsTopKTrainingSAE(AbsTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device))
    else:
        # With sparse codes the default rescale_acts_by_decoder_norm=True fails in backward (torch 2.13, CPU:
        # "Could not run 'aten::view' with arguments from the 'SparseCPU' backend"), so that variant turns it off.
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device,
                                                    use_sparse_activations=sparse_acts,
                                                    rescale_acts_by_decoder_norm=not sparse_acts))
    if amp not in (None, torch.bfloat16):
        raise ValueError("SAELens's trainer autocasts to bf16 only")
    # lr and lr_end as SAELens's runner config defaults them (lr_end = lr / 10; the default scheduler is constant).
    cfg = SAETrainerConfig(total_training_samples=B * 1_000_000, train_batch_size_samples=B, device=device,
                           lr=3e-4, lr_end=3e-5, autocast=amp is not None, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    # The trainer's dead mask is "forward passes since fired > dead_feature_window": pin it to ``dead``.
    since_fired = (dead.float() * (cfg.dead_feature_window + 1)) if dead is not None else None

    def step() -> None:
        if since_fired is not None:
            trainer.n_forward_passes_since_fired.copy_(since_fired)
        trainer._train_step(sae=sae, sae_in=x)

    return step


def sparsify_step(x: torch.Tensor, d_sae: int, k: int, amp: torch.dtype | None, dead: torch.Tensor | None) -> Step:
    """One batch of sparsify's Trainer.fit for one TopK SparseCoder (see the module docstring)."""
    from sparsify import SparseCoder, SparseCoderConfig

    B, d_in = x.shape
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=x.device, dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    did_fire = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
    num_tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=x.device)

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        with autocast(x.device, amp):
            out = sae(x, x, dead_mask=dead, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + AUX_COEFFICIENT * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            num_tokens_since_fired.add_(B)
            num_tokens_since_fired[did_fire] = 0
            did_fire.zero_()

    return step


def bf16_probe(batch: int, d_in: int, d_sae: int, device: torch.device) -> None:
    """Time one [batch, d_in] @ [d_in, d_sae] matmul in fp32 and in bf16 (one call each, after a small warm-up)."""
    a, w = torch.randn(batch, d_in, device=device), torch.randn(d_in, d_sae, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        a_, w_ = a.to(dtype), w.to(dtype)
        a_[:64] @ w_  # warm-up
        start = time.perf_counter()
        a_ @ w_
        print(f"  encoder matmul [{batch}, {d_in}] @ [{d_in}, {d_sae}] in {str(dtype).removeprefix('torch.')}: "
              f"{1e3 * (time.perf_counter() - start):,.0f} ms", flush=True)


def build_steps(names: list[str], modes: list[str], amps: list[torch.dtype | None], x: torch.Tensor, d_sae: int,
                k: int, dead: torch.Tensor | None, skipped: set[str]) -> dict[tuple[str, str, str], Step]:
    """(step, mode, dtype) -> step function, for every combination that exists (sparsify: TopK only)."""
    steps: dict[tuple[str, str, str], Step] = {}
    for amp in amps:
        dtype = "bf16" if amp is not None else "fp32"
        for name in names:
            step_modes = ["topk"] if name in ("sparsify", "saelens-sparse") else modes
            if name == "saelens-sparse" and amp is not None:
                continue
            for mode in step_modes:
                try:
                    if name == "floor":
                        fn = floor_step(x, d_sae, k, mode, amp)
                    elif name == "absae":
                        fn = absae_step(x, d_sae, k, mode, amp, dead)
                    elif name == "absae-noaux":
                        fn = absae_step(x, d_sae, k, mode, amp, None)
                    elif name == "absae-loopadam":
                        fn = absae_step(x, d_sae, k, mode, amp, dead, loop_adam=True)
                    elif name == "dense":
                        fn = dense_step(x, d_sae, k, mode, amp)
                    elif name in ("saelens", "saelens-sparse"):
                        fn = saelens_step(x, d_sae, k, mode, amp, dead, sparse_acts=name == "saelens-sparse")
                    elif name == "sparsify":
                        fn = sparsify_step(x, d_sae, k, amp, dead)
                    else:
                        raise ValueError(f"unknown step {name!r}; choose from {', '.join(STEPS)}")
                except ImportError as error:
                    if name not in skipped:
                        print(f"skipping {name}: {error} (run `make bench-setup` to install the peers)")
                        skipped.add(name)
                    continue
                steps[(name, mode, dtype)] = fn
    return steps


def timed(fns: dict, reps: int, warmup: int, device: torch.device) -> dict:
    """Wall times in ms of each step function, run round-robin so that load changes hit every step alike."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(1e3 * (time.perf_counter() - start))
    return times


# --- the tables -----------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def goal(value: float | None, target: float, at_most: bool = False) -> str:
    if value is None:
        return "–"
    met = value <= target if at_most else value >= target
    return f"{value:.2f}× {'✓' if met else '✗'}"


def print_goals(rows: list[dict]) -> None:
    """absae's AbsTopK step against SAELens's AbsTopK (fp32 ≥ 4×, bf16 ≥ 2×), sparsify's TopK (≥ 1.5×), the floor."""
    med = {(r["d_sae"], r["k"], r["step"], r["mode"], r["dtype"]): r["median"] for r in rows}
    groups = sorted({(r["d_sae"], r["k"]) for r in rows})
    print("\n| d_sae | k | dtype | absae AbsTopK ms | vs SAELens AbsTopK | vs SAELens TopK | vs sparsify TopK "
          "| absae-noaux × floor |\n|---:|---:|---|---:|---:|---:|---:|---:|")
    for d_sae, k in groups:
        for dtype in ("fp32", "bf16"):
            ours = med.get((d_sae, k, "absae", "abstopk", dtype))
            if ours is None:
                continue
            sl = med.get((d_sae, k, "saelens", "abstopk", dtype))
            sl_topk = med.get((d_sae, k, "saelens", "topk", dtype))
            sp = med.get((d_sae, k, "sparsify", "topk", dtype))
            noaux = med.get((d_sae, k, "absae-noaux", "abstopk", dtype))
            floor = med.get((d_sae, k, "floor", "abstopk", dtype))
            print(f"| {d_sae} | {k} | {dtype} | {ours:.1f} "
                  f"| {goal(sl / ours if sl else None, 4.0 if dtype == 'fp32' else 2.0)} "
                  f"| {ratio(sl_topk, ours)} | {goal(sp / ours if sp else None, 1.5)} "
                  f"| {goal(noaux / floor if noaux and floor else None, 1.3, at_most=True)} |")
    print("(goals: ≥ 4× SAELens AbsTopK in fp32, ≥ 2× with bf16 autocast, ≥ 1.5× sparsify, absae-noaux ≤ 1.3× floor)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only d_sae 4608, k 32")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--k", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--modes", nargs="+", default=["topk", "abstopk"], choices=list(MODE_NAMES))
    parser.add_argument("--steps", nargs="+", default=["floor", "absae", "absae-noaux", "saelens", "sparsify"],
                        choices=STEPS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="bf16 = bf16 autocast with fp32 master weights (skipped where bf16 is not fast)")
    parser.add_argument("--dead", type=float, default=0.05,
                        help="fraction of latents marked dead, so that every step runs its AuxK (0: none)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-goals", action="store_true", help="skip the goals table")
    parser.add_argument("--bf16-probe", action="store_true",
                        help="where bf16 is skipped, time one encoder matmul in fp32 and in bf16 to show why")
    args = parser.parse_args()
    if args.quick:
        args.d_sae, args.k = [4608], [32]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amps: list[torch.dtype | None] = []
    for dtype in args.dtypes:
        if dtype == "fp32":
            amps.append(None)
        elif bf16_is_fast(device):
            amps.append(torch.bfloat16)
        else:
            # Without AVX512-BF16/AMX the bf16 matmul is emulated (≈20 s for the d_sae 4608 encoder on a 2-core
            # AVX2 EPYC, against 0.25 s in fp32): not a setting anyone would train with.
            print(f"skipping bf16: it is not fast on {device} (absae_lib.device.bf16_is_fast)")
            if args.bf16_probe:
                bf16_probe(args.batch, args.d_in, min(args.d_sae), device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=device)

    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, B {args.batch}, "
          f"d_in {args.d_in}, dead fraction {args.dead}, median of {args.reps} after {args.warmup} warm-up; "
          f"{load_note()}")
    print("\n| d_sae | k | dtype | step | median ms | min–max ms | tok/s | × floor |\n|---:|---:|---|---|---:|---:|---:|---:|",
          flush=True)
    rows: list[dict] = []
    skipped: set[str] = set()
    for d_sae in args.d_sae:
        for k in args.k:
            generator = torch.Generator().manual_seed(1)
            dead = (torch.rand(d_sae, generator=generator) < args.dead).to(device) if args.dead > 0 else None
            steps = build_steps(args.steps, args.modes, amps, x, d_sae, k, dead, skipped)
            times = timed(steps, args.reps, args.warmup, device)
            median = {key: statistics.median(t) for key, t in times.items()}
            for (name, mode, dtype), t in times.items():
                # (sparsify has TopK only: beside AbsTopK alone it is set against the AbsTopK floor)
                floor = median.get(("floor", mode, dtype)) or median.get(("floor", "abstopk", dtype))
                m = median[(name, mode, dtype)]
                rows.append(dict(d_sae=d_sae, k=k, step=name, mode=mode, dtype=dtype, median=m))
                print(f"| {d_sae} | {k} | {dtype} | {name} {MODE_NAMES[mode]} | {m:.1f} | {min(t):.0f}–{max(t):.0f} "
                      f"| {args.batch / m * 1e3:,.0f} | {ratio(m, floor)} |", flush=True)
            del steps
            gc.collect()
    if not args.no_goals:
        print_goals(rows)
    print(f"\n(at the end: {load_note()})")


if __name__ == "__main__":
    main()

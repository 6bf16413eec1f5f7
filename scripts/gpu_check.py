"""The GPU check: what CI cannot run.  Self-contained (PyTorch and this repo; no network), a few minutes on one GPU.

    python scripts/gpu_check.py                          # on a CUDA machine: writes gpu_check.json
    python scripts/gpu_check.py --device cpu --quick     # the same code paths at toy sizes (a smoke test)

Sections (each is recorded, pass or fail, and a failure does not stop the others):

1. ``environment``: the GPU, its compute capability, and what absae's precision rule picks there (bf16 only with
   capability ≥ 8; ``torch.cuda.is_bf16_supported()`` is shown for contrast).
2. ``sparse_vs_dense``: the fast k-sparse step (``absae_lib.sparse.sparse_forward``) on the device against the dense
   reference (``prox`` activations + ``z @ W_dec`` through autograd): reconstruction and all four gradients, fp32
   and under bf16 autocast, for TopK, BatchTopK and AbsTopK.
   ``unrolled_vs_dense``: the sparse unrolled (ISTA) step (``absae_lib.sparse_unrolled``) against dense autograd
   through ``SAE.forward``, fp32, T = 2 and 3 tied and T = 2 untied: reconstruction and every gradient.
3. ``row_loader``: pinned, non-blocking host-to-device batches (``device.RowLoader``) equal plain indexing, over many
   batches in flight (a staging buffer reused too early would corrupt one).
4. ``step_time``: one training step (sparse forward, MSE, backward, decoder-parallel gradient removed, Adam,
   decoder renormalised) for TopK and AbsTopK at d_in 768 and 2304, 16× dictionaries, k 64 and 230, batch 4096,
   bf16 autocast; against the encoder matmul [B, d_in] @ [d_in, d_sae] alone (the roofline no k-sparse step can
   beat) and the GPU's measured bf16 matmul peak.  CUDA-event timing, median of ``--reps`` after warm-up.
5. ``train_sae``: ``train_sae`` from host activations (the RowLoader path, autocast "auto"), its time per step and
   final NMSE.
6. ``pipeline``: a random-weight GPT-2-shaped TransformerLens model on the device: harvest → train → spliced loss,
   and an SAE saved and read back (on the CPU) following the model's device.  Needs ``transformer_lens``; where it
   is not installed the section is skipped with that reason.
7. ``streaming``: ``train_sae`` from an ``ActivationStream`` on the same kind of model (harvested into a bf16
   shuffle buffer on the device while training): tokens per second and held-out NMSE.

Results go to ``--out`` (JSON) and a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from absae_lib import device as dev  # noqa: E402
from absae_lib import prox, sparse  # noqa: E402
from absae_lib.train import TrainConfig, train_sae  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, reps: int, warmup: int = 3) -> dict:
    """Median and min of ``reps`` timed calls of ``fn`` (CUDA events on a GPU, perf_counter elsewhere), in ms."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


# --- 1 ----------------------------------------------------------------------------------------------------------
def check_environment(device: torch.device, args) -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "bf16_is_fast": dev.bf16_is_fast(device), "autocast_dtype": str(dev.autocast_dtype(device))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=list(torch.cuda.get_device_capability(device)),
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   is_bf16_supported=torch.cuda.is_bf16_supported())
        ok = dev.bf16_is_fast(device) == (torch.cuda.get_device_capability(device) >= (8, 0))
    else:
        ok = True
    return {"ok": ok, **out}


# --- 2 ----------------------------------------------------------------------------------------------------------
def _params(d_in: int, d_sae: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.T.clone() + 0.1 * torch.randn(d_in, d_sae, generator=g)
    b_enc, b_dec = 0.1 * torch.randn(d_sae, generator=g), 0.1 * torch.randn(d_in, generator=g)
    return [p.to(device).requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]


def _dense_reference(x, W_enc, b_enc, W_dec, b_dec, k: int, mode: str) -> torch.Tensor:
    pre = (x - b_dec) @ W_enc + b_enc
    act = {"topk": prox.topk, "abstopk": prox.abs_topk, "batchtopk": prox.batch_topk}[mode]
    return act(pre, k) @ W_dec + b_dec


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_sparse_vs_dense(device: torch.device, args) -> dict:
    d_in, d_sae, k, batch = (32, 256, 8, 64) if args.quick else (768, 12288, 64, 1024)
    cases, ok = [], True
    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(1)).to(device)
    act = {"topk": prox.topk, "abstopk": prox.abs_topk, "batchtopk": prox.batch_topk}
    for mode in ("topk", "batchtopk", "abstopk"):
        for amp in (None, torch.bfloat16):
            params = _params(d_in, d_sae, device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = sparse.sparse_forward(x, *params, k, mode)
            ref = _dense_reference(x, *params, k, mode)  # fp32, dense
            errors = {"recon_vs_fp32_dense": _relative_error(out.recon, ref)}
            grads_fast = torch.autograd.grad((x - out.recon.float()).pow(2).sum(-1).mean(), params)
            grads_ref = torch.autograd.grad((x - ref).pow(2).sum(-1).mean(), params)
            errors.update({f"grad_{name}": _relative_error(a, b) for name, a, b in
                           zip(("W_enc", "b_enc", "W_dec", "b_dec"), grads_fast, grads_ref)})
            if amp is None:  # fp32: the same sums in another order
                checked, tolerance = max(errors.values()), 1e-4
            else:
                # bf16 rounds the encoder matmul, so a near-tie at the k-th value may pick another latent than fp32
                # does (the errors against fp32 above are recorded, not judged).  Judged: the kept latents are the
                # top ones of the device's own pre-activations, and the reconstruction decodes them exactly.
                codes = out.codes
                score = out.pre.float().abs() if mode == "abstopk" else out.pre.float()
                kept = score[codes.rows, codes.cols]  # [N]
                if mode == "batchtopk":
                    kth = score.flatten().kthvalue(score.numel() - len(kept) + 1).values.expand(len(kept))
                else:
                    kth = score.topk(k, dim=-1).values[:, -1][codes.rows]
                errors["selection_violations"] = float((kept < kth).sum())
                dense_codes = codes.dense(d_sae).float()
                errors["recon_vs_decoded_codes"] = _relative_error(out.recon, dense_codes @ params[2] + params[3])
                checked = max(errors["selection_violations"], errors["recon_vs_decoded_codes"])
                tolerance = 1e-4
            passed = checked < tolerance
            ok &= passed
            cases.append({"mode": mode, "autocast": str(amp), "ok": passed, "tolerance": tolerance, **errors})
    return {"ok": ok, "sizes": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch}, "cases": cases}


def check_unrolled_vs_dense(device: torch.device, args) -> dict:
    """The sparse unrolled (ISTA) step (absae_lib.sparse_unrolled) against dense autograd through SAE.forward, fp32."""
    from absae_lib import SAE
    from absae_lib.sparse_unrolled import unrolled_forward

    d_in, d_sae, k, batch = (32, 256, 8, 64) if args.quick else (768, 6144, 64, 1024)
    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(2)).to(device)
    cases, ok = [], True
    for n_steps, tied in ((2, True), (3, True), (2, False)):
        torch.manual_seed(0)
        sae = SAE(d_in, d_sae, "unrolled", k, unrolled_steps=n_steps, unrolled_tied=tied).to(device)
        params = list(sae.parameters())
        ref = sae(x).recon
        grads_ref = torch.autograd.grad((x - ref).pow(2).sum(-1).mean(), params)
        out = unrolled_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.step, k, "abstopk", n_steps, tied)
        grads_fast = torch.autograd.grad((x - out.recon).pow(2).sum(-1).mean(), params)
        errors = {"recon": _relative_error(out.recon, ref)}
        errors.update({f"grad_{name}": _relative_error(a, b) for (name, _), a, b in
                       zip(sae.named_parameters(), grads_fast, grads_ref)})
        passed = max(errors.values()) < 1e-4
        ok &= passed
        cases.append({"unrolled_steps": n_steps, "tied": tied, "ok": passed, **errors})
    return {"ok": ok, "sizes": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch}, "cases": cases}


# --- 3 ----------------------------------------------------------------------------------------------------------
def check_row_loader(device: torch.device, args) -> dict:
    n, d, batch, n_batches = (1000, 16, 64, 20) if args.quick else (200_000, 768, 4096, 100)
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    loader = dev.RowLoader(data, device, batch)
    g = torch.Generator().manual_seed(3)
    indices = [torch.randint(0, n, (batch,), generator=g) for _ in range(n_batches)]
    outs = [loader.rows(i) for i in indices]  # all in flight before any is checked
    _sync(device)
    ok = all(torch.equal(o.cpu(), data[i]) and o.device.type == device.type for o, i in zip(outs, indices))
    plain = time_ms(lambda: data[indices[0]].to(device), device, reps=10)
    staged = time_ms(lambda: loader.rows(indices[0]), device, reps=10)
    return {"ok": ok, "pinned": loader.pinned, "batches": n_batches, "rows": batch, "d": d,
            "plain_copy_ms": plain["median_ms"], "row_loader_ms": staged["median_ms"]}


# --- 4 ----------------------------------------------------------------------------------------------------------
def _matmul_peak_tflops(device: torch.device, args, dtype: torch.dtype) -> float:
    size = 1024 if args.quick else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t = time_ms(lambda: a @ b, device, reps=args.reps)["median_ms"]
    return 2 * size**3 / (t / 1000) / 1e12


def check_step_time(device: torch.device, args) -> dict:
    d_ins, ks, batch = ((32,), (4,), 256) if args.quick else ((768, 2304), (64, 230), 4096)
    # The dtype training autocasts to there: bf16 where native (compute capability ≥ 8), fp16 on a T4, else fp32.
    amp = dev.autocast_dtype(device)
    peak = _matmul_peak_tflops(device, args, amp) if amp else float("nan")
    rows = []
    for d_in in d_ins:
        d_sae = 16 * d_in
        x = torch.randn(batch, d_in, device=device)
        for mode in ("topk", "abstopk"):
            for k in ks:
                W_enc, b_enc, W_dec, b_dec = params = _params(d_in, d_sae, device)
                optimizer = torch.optim.Adam(params, lr=1e-4)
                workspace = sparse.Workspace()

                def step():
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        out = sparse.sparse_forward(x, W_enc, b_enc, W_dec, b_dec, k, mode, workspace=workspace)
                        loss = (x - out.recon.float()).pow(2).sum(-1).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    sparse.remove_parallel_grad_(W_dec)
                    optimizer.step()
                    sparse.normalize_rows_(W_dec)

                def encoder():
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        return (x - b_dec) @ W_enc + b_enc

                step_t = time_ms(step, device, reps=args.reps)
                matmul_t = time_ms(encoder, device, reps=args.reps)
                flops = 2 * batch * d_in * d_sae
                rows.append({"mode": mode, "d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch,
                             "autocast": str(amp), "step_ms": step_t["median_ms"], "step_min_ms": step_t["min_ms"],
                             "encoder_matmul_ms": matmul_t["median_ms"],
                             "step_over_matmul": step_t["median_ms"] / matmul_t["median_ms"],
                             "matmul_tflops": flops / (matmul_t["median_ms"] / 1000) / 1e12,
                             "roofline_ms_at_peak": flops / (peak * 1e12) * 1000 if peak == peak else None,
                             "tokens_per_s": batch / (step_t["median_ms"] / 1000)})
                del params, optimizer, workspace
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"ok": all(math.isfinite(r["step_ms"]) for r in rows), "matmul_peak_tflops": peak, "autocast": str(amp), "rows": rows}


# --- 5 ----------------------------------------------------------------------------------------------------------
def check_train_sae(device: torch.device, args) -> dict:
    n, d_in, d_sae, k, batch, steps = (2048, 32, 256, 8, 256, 20) if args.quick else (262_144, 768, 12288, 64, 4096, 200)
    g = torch.Generator().manual_seed(4)
    features = torch.randn(4 * d_in, d_in, generator=g)
    codes = torch.rand(n, 4 * d_in, generator=g).pow(8)  # sparse-ish non-negative mixtures
    data = codes @ features  # on the host: the pinned staging path
    config = TrainConfig(architecture="abstopk", d_sae=d_sae, k=k, batch_size=batch, n_steps=steps,
                         device=str(device), progress=False, log_every=max(1, steps // 4))
    _sync(device)
    t0 = time.perf_counter()
    sae, history = train_sae(data, config)
    _sync(device)
    seconds = time.perf_counter() - t0
    final = history[-1]
    ok = math.isfinite(final["loss"]) and final["nmse"] < history[0]["nmse"] and sae.W_dec.device.type == device.type
    return {"ok": ok, "steps": steps, "seconds": seconds, "ms_per_step": 1000 * seconds / steps,
            "autocast": str(dev.autocast_dtype(device)), "nmse_first": history[0]["nmse"], "nmse_last": final["nmse"],
            "l0_last": final["l0"]}


# --- 6 ----------------------------------------------------------------------------------------------------------
def _random_gpt2(device: torch.device, quick: bool, HookedTransformer, HookedTransformerConfig):
    """A random-weight GPT-2-shaped model on ``device``, its middle hook, token rows, and an SAE size for it."""
    if quick:
        shape = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=512)
        n_seq, seq_len, d_sae, k = 32, 32, 256, 8
    else:  # GPT-2 small's shape, random weights
        shape = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257)
        n_seq, seq_len, d_sae, k = 512, 128, 12288, 64
    cfg = HookedTransformerConfig(act_fn="gelu_new", normalization_type="LN", device=str(device), seed=0, **shape)
    model = HookedTransformer(cfg).eval()
    hook = f"blocks.{shape['n_layers'] // 2}.hook_resid_post"
    tokens = torch.randint(0, shape["d_vocab"], (n_seq, seq_len), generator=torch.Generator().manual_seed(5))
    return model, shape, hook, tokens, d_sae, k


def check_streaming(device: torch.device, args) -> dict:
    """train_sae from an ActivationStream (harvest into a bf16 shuffle buffer on the device while training)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        return {"ok": None, "skipped": f"transformer_lens is not installed ({err}); carry it as wheels to run this"}
    from absae_lib.activations import harvest
    from absae_lib.streaming import ActivationStream

    model, shape, hook, tokens, d_sae, k = _random_gpt2(device, args.quick, HookedTransformer, HookedTransformerConfig)
    held_out = harvest(model, hook, tokens[-8:], batch_size=8, progress=False)
    rows = (len(tokens) - 8) * (tokens.shape[1] - 1)
    stream = ActivationStream(model, hook, tokens[:-8], buffer_rows=min(65_536, rows), storage_dtype=torch.bfloat16)
    batch = min(4096, stream.buffer_rows // 2)
    n_steps = 100 if not args.quick else 10
    config = TrainConfig(architecture="abstopk", d_sae=d_sae, k=k, batch_size=batch, n_steps=n_steps,
                         device=str(device), progress=False)
    _sync(device)
    t0 = time.perf_counter()
    sae, history = train_sae(stream, config)
    _sync(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        x = held_out.to(device)
        nmse = ((sae(x).recon - x).pow(2).sum() / x.pow(2).sum()).item()
    on_device = dev.module_device(sae).type == device.type
    ok = on_device and math.isfinite(nmse) and nmse < 1.0
    return {"ok": ok, "steps": n_steps, "batch": batch, "train_s": seconds,
            "train_tokens_per_s": n_steps * batch / seconds, "rows_harvested": stream.rows_harvested,
            "refills": stream.refills, "heldout_nmse": nmse, "sae_on_device": on_device}


def check_pipeline(device: torch.device, args) -> dict:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        return {"ok": None, "skipped": f"transformer_lens is not installed ({err}); carry it as wheels to run this"}
    from absae_lib import metrics
    from absae_lib.activations import harvest
    from absae_lib.sae import SAE

    model, shape, hook, tokens, d_sae, k = _random_gpt2(device, args.quick, HookedTransformer, HookedTransformerConfig)
    n_seq = tokens.shape[0]
    t0 = time.perf_counter()
    acts = harvest(model, hook, tokens, batch_size=32, progress=False)  # [n_seq·(seq_len − 1), d_model]
    harvest_s = time.perf_counter() - t0
    config = TrainConfig(architecture="abstopk", d_sae=d_sae, k=k, batch_size=min(4096, len(acts)),
                         n_steps=100 if not args.quick else 10, device=str(device), progress=False)
    t0 = time.perf_counter()
    sae, _ = train_sae(acts, config)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as folder:  # read back on the CPU, as a cache read gives it
        sae.save(folder)
        loaded = SAE.load(folder)
    dev.follow(loaded, model)  # the device rule: the SAE follows the model
    follows = dev.module_device(loaded).type == device.type
    t0 = time.perf_counter()
    loss = metrics.spliced_loss(model, loaded, tokens[: min(64, n_seq)], hook, batch_size=16, progress=False)
    spliced_s = time.perf_counter() - t0
    ok = follows and all(math.isfinite(loss[key]) for key in ("ce_clean", "ce_spliced", "ce_zero"))
    return {"ok": ok, "model": shape, "hook": hook, "activations": list(acts.shape), "activations_dtype": str(acts.dtype),
            "harvest_s": harvest_s, "harvest_tokens_per_s": acts.shape[0] / harvest_s, "train_s": train_s,
            "spliced_s": spliced_s, "sae_follows_model": follows,
            **{key: loss[key] for key in ("ce_clean", "ce_spliced", "ce_zero", "loss_recovered")}}


CHECKS = {"environment": check_environment, "sparse_vs_dense": check_sparse_vs_dense,
          "unrolled_vs_dense": check_unrolled_vs_dense, "row_loader": check_row_loader,
          "step_time": check_step_time, "train_sae": check_train_sae, "pipeline": check_pipeline,
          "streaming": check_streaming}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="toy sizes (a smoke test of this script)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run only these sections")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else dev.default_device()
    if device.type != "cuda" and not args.quick:
        print(f"note: running on {device}; the sizes are a GPU's (use --quick for a smoke test)", file=sys.stderr)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick}
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = check(device, args)
        except Exception as err:  # record it and go on: one broken section must not hide the others' figures
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        status = {True: "ok", False: "FAIL", None: "skipped"}[results[name].get("ok")]
        print(f"{name:16s} {status:8s} {results[name]['seconds']:7.1f} s", flush=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))  # after every section: a timeout keeps some
    for row in results.get("step_time", {}).get("rows", []):
        print(f"  {row['mode']:8s} d_in {row['d_in']:5d} d_sae {row['d_sae']:6d} k {row['k']:4d}: "
              f"step {row['step_ms']:8.2f} ms, encoder matmul {row['encoder_matmul_ms']:7.2f} ms "
              f"(×{row['step_over_matmul']:.1f}), {row['tokens_per_s']:,.0f} tok/s")
    failed = [name for name, r in results.items() if isinstance(r, dict) and r.get("ok") is False]
    print(f"wrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

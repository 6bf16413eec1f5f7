"""One trainer for every SAE variant.

    loss = ‖x − x̂‖² + c(t)·penalty(z) + α·AuxK

on inputs scaled so that E‖x‖ = √d_in.  Adam with a linear LR warm-up and a linear decay at the end; decoder rows
kept unit-norm (the gradient component along each row removed before the step, the row renormalised after);
W_enc starts as W_decᵀ and b_dec as the data mean (or geometric median).  ReLU and JumpReLU get their sparsity
coefficient c(t) warmed up from 0; the k-sparse variants (TopK, BatchTopK, AbsTopK) need no penalty but get the
AuxK loss of Gao et al. (2024), which lets latents that have not fired for a while explain the residual.

Training is deterministic given the seed, checkpoints every ``checkpoint_every`` steps, and resumes exactly: the
batch order is a function of (seed, step), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib import sparse
from absae_lib.device import compute_dtype, default_device
from absae_lib.sae import K_SPARSE, SAE

STATE_FILENAME = "train_state.pt"


@dataclass
class TrainConfig:
    """How to train.  The defaults follow the AbsTopK paper's recipe where it has one (Adam, unit-norm decoder)."""

    architecture: str = "abstopk"
    d_sae: int = 4608
    k: int | None = 32  # active latents (k-sparse variants and unrolled)
    batch_size: int = 4096
    n_steps: int | None = None  # default: one pass over the data
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20
    decay_fraction: float = 0.2  # the LR decays linearly to 0 over this last fraction of training
    sparsity_coefficient: float = 0.0  # L1 weight (standard) or L0 weight (jumprelu); ignored by k-sparse variants
    sparsity_warmup_fraction: float = 0.1
    init_l0: float | None = None  # ReLU/JumpReLU: start each latent firing on init_l0 / d_sae of the tokens (see below)
    aux_k: int | None = None  # AuxK latents; default d_in // 2 (Gao et al.)
    aux_coefficient: float = 1 / 32
    dead_window_tokens: int = 200_000  # a latent silent for this many training tokens counts as dead
    normalize_inputs: bool = True
    b_dec_init: str = "mean"  # "mean", "median" (geometric) or "zero"
    sparse_step: bool = True  # the fast k-sparse step for topk/batchtopk/abstopk (absae_lib.sparse)
    autocast: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16", or "off"
    seed: int = 0
    device: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    progress: bool = True
    sae_kwargs: dict[str, Any] | None = None  # extra SAEConfig fields (e.g. unrolled_steps)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change what is computed (a checkpoint from another fingerprint cannot be resumed)."""
        d = asdict(self)
        for key in ("device", "checkpoint_dir", "checkpoint_every", "log_every", "progress"):
            d.pop(key)
        d["betas"] = list(d["betas"])
        return d


def _as_tensor(data: Any) -> Tensor:
    if hasattr(data, "tensor"):  # an activations.ActivationStore
        data = data.tensor()
    if not isinstance(data, Tensor):
        data = torch.as_tensor(data)
    if data.dim() != 2:
        raise ValueError(f"training data must be [n_tokens, d_in], got shape {tuple(data.shape)}")
    if not data.is_floating_point():
        raise ValueError(f"training data must be floating point, got {data.dtype}")
    return data


def _check_finite(data: Tensor, rows: int = 100_000) -> None:
    step = max(1, data.shape[0] // rows)
    sample = data[::step].float()
    if not torch.isfinite(sample).all():
        raise ValueError("training data contains NaN or Inf values; re-harvest the activations or filter those rows")


def input_scale(data: Tensor, n: int = 100_000) -> float:
    """s such that E‖s·x‖ = √d_in on (up to n rows of) the data."""
    sample = data[:: max(1, data.shape[0] // n)].float()
    return math.sqrt(data.shape[1]) / sample.norm(dim=-1).mean().item()


def geometric_median(x: Tensor, n_iter: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of x [n, d] -> [d]."""
    median = x.mean(0)
    for _ in range(n_iter):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> Tensor:
    """The rows of batch ``step``: a stream of per-epoch permutations, each seeded by (seed, epoch).  [batch_size]."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n, positions % n
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=generator)
        mask = epochs == epoch
        out[mask] = perm[offsets[mask]]
    return out


def lr_factor(step: int, n_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Linear warm-up, constant, linear decay to 0 over the last ``decay_fraction`` of the run."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = int(n_steps * (1 - decay_fraction))
    if step >= decay_start and n_steps > decay_start:
        return max(0.0, (n_steps - step) / (n_steps - decay_start))
    return 1.0


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.autocast == "off":
        return None
    if config.autocast == "bf16":
        return torch.bfloat16
    if config.autocast == "auto":
        return torch.bfloat16 if compute_dtype(device) == torch.bfloat16 else None
    raise ValueError(f"autocast must be 'auto', 'bf16' or 'off', got {config.autocast!r}")


class _Forward(NamedTuple):
    """One training forward pass: dense (any variant) or through the fast k-sparse path."""

    recon: Tensor  # [B, d_in]
    pre: Tensor  # [B, d_sae]
    codes: Tensor | None  # [B, d_sae] dense codes (dense path)
    fast: sparse.SparseForward | None  # the k-sparse codes and the AuxK loss (fast path)

    def fired_latents(self) -> Tensor:
        """[d_sae] bool: latents that fired in this batch."""
        return self.fast.fired(self.pre.shape[-1]) if self.fast else (self.codes != 0).any(0)

    def l0(self) -> float:
        return self.fast.l0().item() if self.fast else (self.codes != 0).float().sum(-1).mean().item()

    def smallest_positive(self) -> Tensor:
        if self.fast:
            return self.fast.min_positive()
        positive = self.codes[self.codes > 0]
        return positive.min() if positive.numel() else self.codes.new_zeros(())


def _forward(sae: SAE, x: Tensor, fast: bool, dead: Tensor | None, k_aux: int, workspace: sparse.Workspace) -> _Forward:
    if fast:
        out = sparse.sparse_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k, sae.cfg.architecture,
                                    dead_mask=dead, k_aux=k_aux if dead is not None else None, workspace=workspace)
        return _Forward(recon=out.recon, pre=out.pre, codes=None, fast=out)
    out = sae(x)
    return _Forward(recon=out.recon, pre=out.pre, codes=out.codes, fast=None)


def _init_firing_rate_(sae: SAE, rows: Tensor, target_l0: float) -> None:
    """Shift each latent's threshold so it fires on ``target_l0 / d_sae`` of ``rows`` [n, d_in] (ReLU, JumpReLU).

    A ReLU or JumpReLU SAE starts with about half its latents active, and its penalty pulls L0 down only as fast as
    Adam moves a bias or threshold (≈ lr per step): a short run ends far from its equilibrium.  Starting each latent
    at the target firing rate (b_enc for ReLU, the threshold θ for JumpReLU) removes that transient; the penalty
    then holds or moves the sparsity from there.
    """
    arch, d_sae = sae.cfg.architecture, sae.cfg.d_sae
    if arch not in ("standard", "jumprelu"):
        raise ValueError(f"init_l0 applies to 'standard' and 'jumprelu' SAEs, not {arch!r}; the k-sparse ones have k")
    if not 0 < target_l0 < d_sae:
        raise ValueError(f"init_l0 must be in (0, d_sae = {d_sae}), got {target_l0}")
    with torch.no_grad():
        pre = sae.pre_activation(rows)  # [n, d_sae]
        n = pre.shape[0]
        keep = max(1, round(n * target_l0 / d_sae))  # tokens on which each latent fires
        cut = pre.kthvalue(n - keep, dim=0).values  # [d_sae]: the (n − keep)-th smallest pre-activation
        if arch == "standard":
            sae.b_enc.sub_(cut)
        else:
            sae.threshold.copy_(cut.clamp(min=1e-3))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def train_sae(data: Any, config: TrainConfig, metadata: dict[str, Any] | None = None) -> tuple[SAE, list[dict]]:
    """Train an SAE on ``data`` ([n_tokens, d_in] tensor or an ActivationStore).

    Returns the trained SAE (taking raw, unnormalised activations: the input scale is folded into its weights)
    and the metrics history, one dict per ``log_every`` steps (``pandas.DataFrame(history)`` reads it).
    """
    data = _as_tensor(data)
    _check_finite(data)
    n, d_in = data.shape
    device = torch.device(config.device) if config.device else default_device()
    n_steps = config.n_steps or max(1, n // config.batch_size)
    if config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({n} rows); lower it or add data")
    torch.manual_seed(config.seed)
    sae = SAE(d_in, config.d_sae, config.architecture, config.k, **(config.sae_kwargs or {})).to(device)
    sae.cfg.metadata.update(metadata or {})
    k_sparse = config.architecture in K_SPARSE
    aux_k = min(config.aux_k or d_in // 2, config.d_sae)

    scale = input_scale(data) if config.normalize_inputs else 1.0
    init_rows = data[batch_indices(0, min(n, 32_768), n, config.seed)].float().to(device) * scale
    with torch.no_grad():
        if config.b_dec_init == "mean":
            sae.b_dec.copy_(init_rows.mean(0))
        elif config.b_dec_init == "median":
            sae.b_dec.copy_(geometric_median(init_rows))
        elif config.b_dec_init != "zero":
            raise ValueError(f"b_dec_init must be 'mean', 'median' or 'zero', got {config.b_dec_init!r}")
    if config.init_l0 is not None:
        _init_firing_rate_(sae, init_rows[:8192], config.init_l0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=config.betas)
    tokens_since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    history: list[dict] = []
    start = 0

    state_path = Path(config.checkpoint_dir) / STATE_FILENAME if config.checkpoint_dir else None
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["config"] != config.fingerprint() or state["data_shape"] != [n, d_in]:
            raise ValueError(
                f"{state_path} is a checkpoint from another training config or dataset; "
                "delete it or point checkpoint_dir elsewhere to start afresh"
            )
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        tokens_since_fired = state["tokens_since_fired"].to(device)
        history, start, scale = state["history"], state["step"], state["scale"]

    amp_dtype = _autocast_dtype(config, device)
    fast = k_sparse and config.sparse_step
    workspace = sparse.Workspace()  # the fast path reuses its [B, d_sae] buffers from step to step
    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, desc=f"train {config.architecture}",
               disable=not config.progress)
    for step in bar:
        x = data[batch_indices(step, config.batch_size, n, config.seed)].to(device, torch.float32) * scale
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, n_steps, config.warmup_steps, config.decay_fraction)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            dead = tokens_since_fired >= config.dead_window_tokens if k_sparse and config.aux_coefficient > 0 else None
            out = _forward(sae, x, fast, dead, aux_k, workspace)
            mse = (x - out.recon.float()).pow(2).sum(-1).mean()
            loss = mse
            penalty = torch.zeros((), device=device)
            aux = torch.zeros((), device=device)
            if sae.variant.penalty is not None:
                coefficient = config.sparsity_coefficient * min(1.0, step / max(1, config.sparsity_warmup_fraction * n_steps))
                penalty = sae.penalty(out)  # dense path: out.pre and out.codes are what the penalty reads
                loss = loss + coefficient * penalty
            if dead is not None:
                # AuxK (Gao et al. 2024): the top-k_aux dead latents try to explain the residual x − x̂.
                aux = out.fast.aux_loss if fast else sparse.auxk_loss(
                    out.pre, dead, (x - out.recon).detach(), sae.W_dec, aux_k, signed=sae.cfg.signed)
                loss = loss + config.aux_coefficient * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad_()
        optimizer.step()
        sae.normalize_decoder_()
        with torch.no_grad():
            fired = out.fired_latents()
            tokens_since_fired += config.batch_size
            tokens_since_fired[fired] = 0
            if sae.cfg.architecture == "jumprelu":
                sae.threshold.clamp_(min=1e-6)
            if sae.cfg.architecture == "batchtopk":
                # Running mean of the smallest kept activation: the inference threshold (Bussmann et al. 2024).
                smallest = out.smallest_positive()
                sae.threshold.copy_(smallest if step == 0 else 0.99 * sae.threshold + 0.01 * smallest)

        if step % config.log_every == 0 or step == n_steps - 1:
            with torch.no_grad():
                err = (x - out.recon.float()).pow(2).sum()
                row = {
                    "step": step,
                    "tokens": (step + 1) * config.batch_size,
                    "loss": loss.item(),
                    "mse": mse.item(),
                    "nmse": (err / x.pow(2).sum()).item(),
                    "fvu": (err / (x - x.mean(0)).pow(2).sum()).item(),
                    "l0": out.l0(),
                    "penalty": penalty.item(),
                    "aux_loss": aux.item(),
                    "dead_fraction": (tokens_since_fired >= config.dead_window_tokens).float().mean().item(),
                    "lr": optimizer.param_groups[0]["lr"],
                }
            history.append(row)
            bar.set_postfix(nmse=f"{row['nmse']:.3f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_fraction']:.2f}")
        if state_path is not None and ((step + 1) % config.checkpoint_every == 0 or step == n_steps - 1):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            _save_state(state_path, {
                "config": config.fingerprint(), "data_shape": [n, d_in], "step": step + 1, "scale": scale,
                "sae": sae.state_dict(), "optimizer": optimizer.state_dict(),
                "tokens_since_fired": tokens_since_fired, "history": history,
            })

    sae.eval()
    sae.fold_input_scale_(scale)
    sae.cfg.metadata.update(training=json.loads(json.dumps(config.fingerprint())), n_train_tokens=n_steps * config.batch_size)
    return sae, history

"""One trainer for every SAE variant.

    loss = ‖x − x̂‖² + c(t)·penalty(z) + α·AuxK

on inputs scaled so that E‖x‖ = √d_in.  Adam with a linear LR warm-up and a linear decay at the end; decoder rows
kept unit-norm (the gradient component along each row removed before the step, the row renormalised after);
W_enc starts as W_decᵀ and b_dec as the data mean (or geometric median).  ReLU and JumpReLU get their sparsity
coefficient c(t) warmed up from 0; the k-sparse variants (TopK, BatchTopK, AbsTopK) need no penalty but get the
AuxK loss of Gao et al. (2024), which lets latents that have not fired for a while explain the residual.  The step
is sparse wherever it can be (only the encoder matmul then scales with d_sae): the k-sparse SAEs
(absae_lib.sparse), the ISTA unrolled encoder (sparse_unrolled), ReLU and JumpReLU on CPU (sparse_threshold).

Training is deterministic given the seed, checkpoints every ``checkpoint_every`` steps, and resumes exactly: the
batch order is a function of (seed, step), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib import atomic, distributed, sparse
from absae_lib.device import RowLoader, autocast_dtype, default_device
from absae_lib.sparse_threshold import threshold_forward
from absae_lib.sparse_unrolled import unrolled_forward
from absae_lib import calibrate, convergence
from absae_lib.sae import K_SPARSE, SAE, token_norm_coefficient
from absae_lib.streaming import ActivationStream

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
    sparse_step: bool = True  # the sparse step where there is one (absae_lib.sparse, sparse_unrolled, sparse_threshold)
    autocast: str = "auto"  # "auto" (bf16 where native, fp16 on older GPUs, else off), "bf16", "fp16" or "off"
    seed: int = 0
    device: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    progress: bool = True
    sae_kwargs: dict[str, Any] | None = None  # extra SAEConfig fields (e.g. unrolled_steps)
    # "global": every token times one scale s (normalize_inputs), folded into the weights after training.
    # "per_token": every token scaled to norm √d_in before the SAE, and back after decoding, in training and at
    # inference (SAELens's normalize_activations="constant_norm_rescale"); the loss then weighs every token alike.
    input_normalization: str = "global"
    eval_every: int | None = None  # held-out NMSE/L0 every N steps into the history (train_sae(eval_data=...)); off
    eval_tokens: int = 8192  # held-out rows evaluated (and as many training rows, for the train/held-out gap)
    calibrate_batchtopk: bool = False  # BatchTopK: set the inference threshold from the final weights (calibrate.py)
    # JumpReLU: the width ε of the straight-through rectangle kernel that gives θ its gradient, in the trainer's units
    # (E‖x‖ = √d_in).  None: 0.001·√d_in, Rajamanoharan et al.'s ε = 0.001 at unit-norm inputs (SAELens's default
    # 0.05 is the same rule at d_in 2304).  Too narrow a kernel starves θ: at ε = 0.001 here (d_in 576) a latent saw
    # 0.17 tokens per 4096-row batch inside it, θ barely learned and L0 drifted away from what the L0 weight asks.
    jumprelu_bandwidth: float | None = None

    def __post_init__(self) -> None:
        """Refuse values that would be misread or fail late (0 steps, empty batches, fractions outside [0, 1])."""
        from absae_lib.sae import ARCHITECTURES

        def count(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                none = " or None" if optional else ""
                raise ValueError(f"TrainConfig.{name} must be an int ≥ {minimum}{none}, got {value!r}")

        def number(name: str, value: Any, low: float, high: float = math.inf, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                span = f"in [{low}, {high}]" if high < math.inf else f"≥ {low}"
                raise ValueError(f"TrainConfig.{name} must be a number {span}, got {value!r}")

        def choice(name: str, value: Any, options: tuple) -> None:
            if value not in options:
                raise ValueError(f"TrainConfig.{name} must be one of {', '.join(map(repr, options))}, got {value!r}")

        choice("architecture", self.architecture, ARCHITECTURES)
        count("d_sae", self.d_sae)
        count("k", self.k, optional=True)
        count("batch_size", self.batch_size)
        count("n_steps", self.n_steps, optional=True)  # None = one pass over the data; 0 is not "one pass"
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        count("warmup_steps", self.warmup_steps, minimum=0)
        for name in ("decay_fraction", "sparsity_warmup_fraction"):
            number(name, getattr(self, name), 0.0, 1.0)
        number("sparsity_coefficient", self.sparsity_coefficient, 0.0)
        number("aux_coefficient", self.aux_coefficient, 0.0)
        if self.init_l0 is not None:
            number("init_l0", self.init_l0, 0.0)
            if self.init_l0 == 0:
                raise ValueError("TrainConfig.init_l0 must be positive (latents firing per token), got 0")
        if self.jumprelu_bandwidth is not None:
            number("jumprelu_bandwidth", self.jumprelu_bandwidth, 0.0)
            if self.jumprelu_bandwidth == 0:
                raise ValueError("TrainConfig.jumprelu_bandwidth must be positive (None: 0.001·√d_in), got 0")
        in_kwargs = (self.sae_kwargs or {}).get("jumprelu_bandwidth")
        if in_kwargs is not None and self.jumprelu_bandwidth is not None and in_kwargs != self.jumprelu_bandwidth:
            raise ValueError(f"two JumpReLU kernel widths: jumprelu_bandwidth={self.jumprelu_bandwidth} and "
                             f"sae_kwargs['jumprelu_bandwidth']={in_kwargs}; set one (TrainConfig.jumprelu_bandwidth)")
        count("aux_k", self.aux_k, optional=True)
        count("dead_window_tokens", self.dead_window_tokens)
        choice("b_dec_init", self.b_dec_init, ("mean", "median", "zero"))
        choice("autocast", self.autocast, ("auto", "bf16", "fp16", "off"))
        count("seed", self.seed, minimum=0)
        count("checkpoint_every", self.checkpoint_every)
        count("log_every", self.log_every)
        choice("input_normalization", self.input_normalization, ("global", "per_token"))
        count("eval_every", self.eval_every, optional=True)
        count("eval_tokens", self.eval_tokens)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change what is computed (a checkpoint from another fingerprint cannot be resumed)."""
        d = asdict(self)
        for key in ("device", "checkpoint_dir", "checkpoint_every", "log_every", "progress"):
            d.pop(key)
        for key, default in _LATER_FIELDS.items():  # added later: in the fingerprint only when set, so the cache
            if d[key] == default:  # keys (and checkpoints) of runs that do not use them stay what they were
                d.pop(key)
        # JumpReLU runs trained before the kernel width was a field all had ε = 0.001: only that width keeps their
        # keys; any other (the default, 0.001·√d_in, included) gives a new one.  The other architectures never read it.
        bandwidth = d.pop("jumprelu_bandwidth")
        in_kwargs = (self.sae_kwargs or {}).get("jumprelu_bandwidth")  # then sae_kwargs (in the key) carries it
        if self.architecture == "jumprelu" and in_kwargs is None and bandwidth != OLD_JUMPRELU_BANDWIDTH:
            d["jumprelu_bandwidth"] = "0.001*sqrt(d_in)" if bandwidth is None else bandwidth
        d["betas"] = list(d["betas"])
        return d


OLD_JUMPRELU_BANDWIDTH = 0.001  # what every JumpReLU run had before TrainConfig.jumprelu_bandwidth existed
_LATER_FIELDS = {"input_normalization": "global", "eval_every": None, "eval_tokens": 8192, "calibrate_batchtopk": False}


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
    """An early look at up to ``rows`` evenly spaced rows; the trainer checks every batch it reads (_FiniteCheck)."""
    step = max(1, data.shape[0] // rows)
    _check_rows_finite(data[::step], torch.arange(0, data.shape[0], step)[: len(data[::step])], "training data")


def _check_rows_finite(x: Tensor, rows: Tensor, what: str) -> None:
    """Raise naming the data rows of ``x`` [b, d] (``rows`` [b]: their indices in the data) that hold NaN or Inf."""
    bad = ~torch.isfinite(x).all(-1)
    if bad.any():
        raise ValueError(f"{what} contains NaN or Inf in data rows {_row_list(rows[bad.cpu()])}; re-harvest the "
                         "activations or filter those rows")


def _row_list(rows: Tensor, n: int = 5) -> str:
    rows = sorted(rows.tolist())
    return ", ".join(map(str, rows[:n])) + (f" (and {len(rows) - n} more)" if len(rows) > n else "")


class _FiniteCheck:
    """Every batch the trainer reads and its loss must be finite; a NaN stops training, naming the step and rows.

    The test runs on the device each step and only its verdict is read back: every step on CPU, every
    ``every`` steps (and before a checkpoint or the end) on a GPU, where reading it back would stall the queue.
    """

    def __init__(self, device: torch.device, every: int = 16):
        self.every = 1 if device.type == "cpu" else every
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, step: int, x: Tensor, loss: Tensor) -> None:
        bad = ~(torch.isfinite(x).all() & torch.isfinite(loss.detach()))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def raise_if_bad(self, step: int, rows_of_step, data: Tensor | None, force: bool = False) -> None:
        """Raise if any step so far was not finite; ``data`` None (a stream) names no rows."""
        if not force and (step + 1) % self.every:
            return
        # Under torchrun every rank must stop at the same step: a rank that raised alone would leave the others
        # waiting forever in the next all-reduce.  So the earliest bad step over all ranks decides, for all.
        none = torch.iinfo(torch.long).max
        bad_step = int(distributed.min_over_ranks(torch.where(self.first_bad < 0, none, self.first_bad)))
        if bad_step == none:
            return
        if data is None:  # streamed: iter_activations refuses non-finite activations, so the loss diverged
            raise ValueError(f"the loss became NaN or Inf at step {bad_step}: training diverged; lower lr, or try "
                             "autocast='off'")
        rows = rows_of_step(bad_step)  # [B] the data rows that step read (on every rank)
        x = data[rows.to(data.device)].float()
        bad = ~torch.isfinite(x).all(-1)
        if bad.any():
            raise ValueError(f"training data row(s) {_row_list(rows[bad.cpu()])} hold NaN or Inf (read at step "
                             f"{bad_step}, a batch of data rows {int(rows.min())}..{int(rows.max())}); re-harvest "
                             "the activations or filter those rows")
        raise ValueError(f"the loss became NaN or Inf at step {bad_step} though its batch was finite: training "
                         "diverged; lower lr, or try autocast='off'")


def input_scale(data: Tensor, n: int = 100_000) -> float:
    """s such that E‖s·x‖ = √d_in on (up to n rows of) the data."""
    sample = data[:: max(1, data.shape[0] // n)].float()
    mean_norm = sample.norm(dim=-1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise ValueError(f"cannot normalise the training data: the mean row norm of {len(sample):,} sampled rows is "
                         f"{mean_norm} (all-zero or non-finite data?); check the activations, or pass "
                         "normalize_inputs=False")
    return math.sqrt(data.shape[1]) / mean_norm


def data_fingerprint(data: Tensor, n_sample: int = 256) -> dict[str, Any]:
    """What a checkpoint remembers of its data: the shape and a SHA-256 of ``n_sample`` evenly spaced rows."""
    n = data.shape[0]
    rows = torch.linspace(0, n - 1, min(n, n_sample)).round().long().unique()
    sample = data[rows.to(data.device)].float().contiguous().cpu()
    return {"shape": list(data.shape), "sample_sha256": hashlib.sha256(sample.numpy().tobytes()).hexdigest()}


def _load_state(path: Path, device: torch.device, config: "TrainConfig", data_print: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused (saying which field differs) if it is not from this run's config and data."""
    fix = f"delete {path} (or the folder {path.parent}) to start training afresh"
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError ...: a truncated or foreign file
        raise ValueError(f"The checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is corrupt or "
                         f"truncated: {fix}") from err
    needed = ("config", "step", "scale", "sae", "optimizer", "tokens_since_fired", "history")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise ValueError(f"The checkpoint {path} is not a train_sae checkpoint (fields missing): {fix}")
    saved = state["config"]
    now = config.fingerprint()
    differ = [f"{key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r}"
              for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if differ:
        raise ValueError(f"The checkpoint {path} is from another training config ({'; '.join(differ)}): {fix}, "
                         "or point checkpoint_dir elsewhere")
    saved_data = state.get("data")
    if saved_data is None:
        raise ValueError(f"The checkpoint {path} does not record which data it was trained on (an older absae): {fix}")
    for key, what in (("shape", "data shape"), ("sample_sha256", "data (same shape, different rows)")):
        if saved_data.get(key) != data_print[key]:
            raise ValueError(f"The checkpoint {path} was trained on other data ({what}: checkpoint "
                             f"{saved_data.get(key)}, now {data_print[key]}): {fix}, or point checkpoint_dir elsewhere")
    return state


def geometric_median(x: Tensor, n_iter: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of x [n, d] -> [d]."""
    median = x.mean(0)
    for _ in range(n_iter):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


@lru_cache(maxsize=2)  # the current epoch and the next: a batch may straddle the two
def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The row order of one epoch, seeded by (seed, epoch) [n]; drawn once (randperm of 8M rows takes ~0.2 s)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> Tensor:
    """The rows of batch ``step``: a stream of per-epoch permutations, each seeded by (seed, epoch).  [batch_size]."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n, positions % n
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = epoch_permutation(n, seed, epoch)
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
    if config.autocast == "fp16":
        return torch.float16
    if config.autocast == "auto":
        return autocast_dtype(device)  # bf16 only where native; fp16 (with a gradient scaler) on older GPUs
    raise ValueError(f"autocast must be 'auto', 'bf16', 'fp16' or 'off', got {config.autocast!r}")


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
    if fast and sae.cfg.architecture in ("standard", "jumprelu"):
        jump = sae.cfg.architecture == "jumprelu"
        out = threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.architecture,
                                sae.threshold if jump else None, sae.cfg.jumprelu_bandwidth if jump else None,
                                workspace)
        if out is not None:
            return _Forward(recon=out.recon, pre=out.pre, codes=None, fast=out)
        fast = False  # too many codes this step to gain from sparse products
    if fast and sae.cfg.architecture == "unrolled":
        out = unrolled_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.step, sae.cfg.k, sae.cfg.unrolled_prox,
                               sae.cfg.unrolled_steps, sae.cfg.unrolled_tied, workspace)
        return _Forward(recon=out.recon, pre=out.pre, codes=None, fast=out)
    if fast:
        out = sparse.sparse_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k, sae.cfg.architecture,
                                    dead_mask=dead, k_aux=k_aux if dead is not None else None, workspace=workspace)
        return _Forward(recon=out.recon, pre=out.pre, codes=None, fast=out)
    out = sae(x)
    return _Forward(recon=out.recon, pre=out.pre, codes=out.codes, fast=None)


def jumprelu_bandwidth(config: TrainConfig, d_in: int) -> float:
    """The JumpReLU kernel width ε the trainer uses: ``config.jumprelu_bandwidth``, else one given as an SAEConfig
    field in ``config.sae_kwargs``, else 0.001·√d_in (the paper's ε = 0.001 for unit-norm inputs, at the trainer's
    input scale E‖x‖ = √d_in)."""
    if config.jumprelu_bandwidth is not None:
        return config.jumprelu_bandwidth
    in_kwargs = (config.sae_kwargs or {}).get("jumprelu_bandwidth")
    return in_kwargs if in_kwargs is not None else 0.001 * math.sqrt(d_in)


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


def _eval_samples(data: Tensor, eval_data: Any, config: TrainConfig) -> tuple[Tensor | None, Tensor | None]:
    """Held-out rows (up to eval_tokens) and as many fixed training rows, or (None, None) when not evaluating."""
    if eval_data is None and config.eval_every is None:
        return None, None
    if eval_data is None or config.eval_every is None:
        raise ValueError("held-out evaluation needs both train_sae(..., eval_data=rows) and TrainConfig.eval_every = N")
    if not isinstance(config.eval_every, int) or config.eval_every < 1:
        raise ValueError(f"eval_every must be a positive int (steps), got {config.eval_every!r}")
    eval_data = _as_tensor(eval_data)
    if eval_data.shape[1] != data.shape[1]:
        raise ValueError(f"eval_data has width {eval_data.shape[1]} but the training data {data.shape[1]}: "
                         "held-out rows must come from the same hook")
    m = min(config.eval_tokens, eval_data.shape[0], data.shape[0])
    # A generator of its own: drawing from torch's global RNG would change the run being measured.
    generator = torch.Generator().manual_seed(config.seed + 7919)
    train_rows = data[torch.randperm(data.shape[0], generator=generator)[:m]]
    return eval_data[:m].float(), train_rows.float()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    # A unique temporary name, then rename: an interrupted save never leaves a half-written checkpoint.
    with atomic.replacing(path) as tmp:
        torch.save(state, tmp)


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, with PyTorch's fused kernel where it has one for the parameters' device (CUDA; CPU from torch 2.4).

    The fused kernel updates each parameter in one pass instead of a chain of elementwise ops: on the 2-core CPU
    here it cut the optimizer's time in a 4608-latent step from 11.5 to 7.0 ms (``benchmarks/profile_step.py``,
    against ``--loop-adam``).  The update is Adam's either way; the two differ only by float rounding.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except RuntimeError:  # a device (or dtype) without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


def train_sae(data: Any, config: TrainConfig, metadata: dict[str, Any] | None = None,
              eval_data: Any = None) -> tuple[SAE, list[dict]]:
    """Train an SAE on ``data``: a [n_tokens, d_in] tensor, an ActivationStore, or an ActivationStream.

    An ``absae_lib.streaming.ActivationStream`` harvests as training goes (no on-disk cache); one step is one
    ``stream.next_batch``, n_steps defaults to one pass over its token rows, and it trains on one process.

    Returns the trained SAE (taking raw, unnormalised activations: the input scale is folded into its weights)
    and the metrics history, one dict per ``log_every`` steps (``pandas.DataFrame(history)`` reads it).
    With ``eval_data`` (held-out rows [m, d_in]) and ``config.eval_every``, every eval_every steps' row also holds
    heldout_nmse, heldout_nmse_per_token, heldout_l0, train_sample_nmse and train_sample_nmse_per_token
    (absae_lib.convergence).
    """
    stream = data if isinstance(data, ActivationStream) else None
    device = torch.device(config.device) if config.device else default_device()
    device = distributed.setup(device) or device  # under torchrun: join the group; cuda -> cuda:LOCAL_RANK
    if stream is None:
        data = _as_tensor(data)
        _check_finite(data)
        setup_rows = data  # the rows the input scale, b_dec and the held-out comparison are drawn from
    else:
        if distributed.is_distributed():
            raise ValueError("an ActivationStream trains on one process; under torchrun, harvest into the on-disk "
                             "cache (activations.get_activations) and train from it")
        setup_rows = stream.sample()  # the first buffer fill (harvested now), shuffled
    n, d_in = (len(stream), stream.d_in) if stream is not None else data.shape
    distributed.local_rows(torch.empty(config.batch_size))  # fails early if the batch does not split over the ranks
    n_steps = config.n_steps or max(1, n // config.batch_size)
    if config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({n} rows); lower it or add data")
    torch.manual_seed(config.seed)
    sae_kwargs = dict(config.sae_kwargs or {})
    if config.architecture == "jumprelu":
        sae_kwargs["jumprelu_bandwidth"] = jumprelu_bandwidth(config, d_in)
    sae = SAE(d_in, config.d_sae, config.architecture, config.k, **sae_kwargs).to(device)
    sae.cfg.metadata.update(metadata or {})
    k_sparse = config.architecture in K_SPARSE
    aux_k = min(config.aux_k or d_in // 2, config.d_sae)

    if config.input_normalization not in ("global", "per_token"):
        raise ValueError(f"input_normalization must be 'global' or 'per_token', got {config.input_normalization!r}")
    per_token = config.input_normalization == "per_token"  # then no global scale: each token is rescaled anyway
    scale = input_scale(setup_rows) if config.normalize_inputs and not per_token else 1.0
    if stream is None:
        init_indices = batch_indices(0, min(n, 32_768), n, config.seed)
    else:  # the sample is shuffled already
        init_indices = torch.arange(min(len(setup_rows), 32_768))
    init_rows = setup_rows[init_indices.to(setup_rows.device)].float().to(device) * scale
    _check_rows_finite(init_rows, init_indices, "training data (rows that initialise b_dec)")
    if per_token:
        init_rows = init_rows * token_norm_coefficient(init_rows)
    with torch.no_grad():
        if config.b_dec_init == "mean":
            sae.b_dec.copy_(init_rows.mean(0))
        elif config.b_dec_init == "median":
            sae.b_dec.copy_(geometric_median(init_rows))
        elif config.b_dec_init != "zero":
            raise ValueError(f"b_dec_init must be 'mean', 'median' or 'zero', got {config.b_dec_init!r}")
    if config.init_l0 is not None:
        _init_firing_rate_(sae, init_rows[:8192], config.init_l0)
    optimizer = adam(sae.parameters(), config.lr, config.betas)
    tokens_since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    history: list[dict] = []
    start = 0

    state_path = Path(config.checkpoint_dir) / STATE_FILENAME if config.checkpoint_dir else None
    data_print = None
    if state_path is not None:
        data_print = stream.fingerprint() if stream is not None else data_fingerprint(data)
    if state_path is not None and state_path.exists():
        state = _load_state(state_path, device, config, data_print)
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        tokens_since_fired = state["tokens_since_fired"].to(device)
        history, start, scale = state["history"], state["step"], state["scale"]
        if stream is not None:
            stream.skip_to(start * config.batch_size)  # new rows from where the interrupted run had got to
    distributed.broadcast_parameters_(sae)  # every rank starts from rank 0's weights (the same seed gives them anyway)

    amp_dtype = _autocast_dtype(config, device)
    # fp16's narrow range needs loss scaling; disabled, the scaler passes everything through unchanged.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if start and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    loader = None if stream is not None else RowLoader(
        data, device, distributed.local_rows(torch.empty(config.batch_size)).numel())
    # The sparse step: the k-sparse SAEs (absae_lib.sparse), the ISTA unrolled encoder (absae_lib.sparse_unrolled),
    # and on CPU ReLU and JumpReLU (absae_lib.sparse_threshold: it lists its support with a host sync, free on CPU
    # but a stall on a GPU, whose dense decoder is cheap anyway; a step with a dense support takes the dense path).
    fast = config.sparse_step and (k_sparse or (config.architecture in ("standard", "jumprelu") and device.type == "cpu")
                                   or (config.architecture == "unrolled" and sae.cfg.unrolled_solver == "ista"))
    workspace = sparse.Workspace()  # the fast path reuses its [B, d_sae] buffers from step to step
    eval_rows, train_rows = _eval_samples(setup_rows, eval_data, config)

    def to_sae_input(rows: Tensor) -> tuple[Tensor, Tensor | float]:  # raw rows -> what the SAE sees, and the factor
        factor = token_norm_coefficient(rows) if per_token else scale
        return rows * factor, factor

    finite = _FiniteCheck(device)
    rows_of_step = lambda step: batch_indices(step, config.batch_size, n, config.seed)  # noqa: E731  (all ranks' rows)
    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, desc=f"train {config.architecture}",
               disable=not config.progress or not distributed.is_main())
    for step in bar:
        if stream is None:
            rows = distributed.local_rows(batch_indices(step, config.batch_size, n, config.seed))  # this rank's slice
            x = loader.rows(rows).to(torch.float32) * scale
        else:
            x = stream.next_batch(config.batch_size).to(device) * scale
        if per_token:
            x = x * token_norm_coefficient(x)  # [B, d_in], each row of norm √d_in (the SAE does the same at inference)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, n_steps, config.warmup_steps, config.decay_fraction)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            dead = tokens_since_fired >= config.dead_window_tokens if k_sparse and config.aux_coefficient > 0 else None
            out = _forward(sae, x, fast, dead, aux_k, workspace)
            mse = sparse.batch_mse(x, out.recon.float())
            loss = mse
            penalty = torch.zeros((), device=device)
            aux = torch.zeros((), device=device)
            if sae.variant.penalty is not None:
                coefficient = config.sparsity_coefficient * min(1.0, step / max(1, config.sparsity_warmup_fraction * n_steps))
                # the sparse step computed it; the dense one reads out.pre and out.codes
                penalty = out.fast.penalty if out.fast is not None else sae.penalty(out)
                loss = loss + coefficient * penalty
            if dead is not None:
                # AuxK (Gao et al. 2024): the top-k_aux dead latents try to explain the residual x − x̂.
                aux = out.fast.aux_loss if fast else sparse.auxk_loss(
                    out.pre, dead, (x - out.recon).detach(), sae.W_dec, aux_k, signed=sae.cfg.signed)
                loss = loss + config.aux_coefficient * aux
        finite.update(step, x, loss)
        finite.raise_if_bad(step, rows_of_step, data if stream is None else None,
                            force=step == n_steps - 1 or (step + 1) % config.checkpoint_every == 0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        distributed.average_gradients_(sae.parameters())  # the mean over ranks: the whole batch's gradient
        scaler.unscale_(optimizer)
        sae.remove_parallel_grad_()
        scaler.step(optimizer)
        scaler.update()
        sae.normalize_decoder_()
        with torch.no_grad():
            fired = distributed.any_rank_(out.fired_latents())
            tokens_since_fired += config.batch_size
            tokens_since_fired[fired] = 0
            if sae.cfg.architecture == "jumprelu":
                sae.threshold.clamp_(min=1e-6)
            if sae.cfg.architecture == "batchtopk":
                # Running mean of the smallest kept activation: the inference threshold (Bussmann et al. 2024).
                smallest = distributed.min_over_ranks(out.smallest_positive())
                sae.threshold.copy_(smallest if step == 0 else 0.99 * sae.threshold + 0.01 * smallest)

        evaluate_now = eval_rows is not None and (step % config.eval_every == 0 or step == n_steps - 1)
        if step % config.log_every == 0 or step == n_steps - 1 or evaluate_now:
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
            per_rank = {key: value for key, value in row.items() if key not in ("step", "tokens", "lr")}
            row.update(distributed.mean_over_ranks(per_rank, device))  # one process: unchanged
            if evaluate_now:  # no_grad, eval mode, no random draws: the trajectory is the same without it
                row.update(convergence.heldout_row(sae, eval_rows, to_sae_input, config.batch_size))
                train_side = convergence.heldout_row(sae, train_rows, to_sae_input, config.batch_size, "train_sample_")
                row["train_sample_nmse"] = train_side["train_sample_nmse"]
                row["train_sample_nmse_per_token"] = train_side["train_sample_nmse_per_token"]
            history.append(row)
            bar.set_postfix(nmse=f"{row['nmse']:.3f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_fraction']:.2f}")
        checkpoint_now = (step + 1) % config.checkpoint_every == 0 or step == n_steps - 1
        if state_path is not None and distributed.is_main() and checkpoint_now:  # rank 0 alone writes
            state_path.parent.mkdir(parents=True, exist_ok=True)
            _save_state(state_path, {
                "config": config.fingerprint(), "data": data_print, "step": step + 1, "scale": scale,
                "sae": sae.state_dict(), "optimizer": optimizer.state_dict(),
                "tokens_since_fired": tokens_since_fired, "history": history, "scaler": scaler.state_dict(),
            })

    distributed.barrier()  # the final checkpoint is on disk before any rank returns
    sae.eval()
    sae.fold_input_scale_(scale)
    if per_token:
        sae.cfg.normalize_activations = "constant_norm_rescale"  # the SAE now normalises raw tokens itself
    if config.calibrate_batchtopk and config.architecture == "batchtopk":
        sae.cfg.metadata["running_threshold"] = sae.threshold[0].item()
        if stream is None:
            calibration_rows = data[batch_indices(0, min(n, 8 * config.batch_size), n, config.seed + 1)]
        else:  # eight more batches from the stream: rows the final weights were not trained on
            calibration_rows = torch.cat([stream.next_batch(config.batch_size) for _ in range(8)])
        calibrate.recalibrate_batchtopk_(sae, calibration_rows, config.batch_size)
    sae.cfg.metadata.update(training=json.loads(json.dumps(config.fingerprint())), n_train_tokens=n_steps * config.batch_size)
    return sae, history

"""One sparse autoencoder, whose activation is a proximal operator.

    pre   = (x − b_dec) @ W_enc + b_enc          [..., d_sae]   one proximal-gradient step from z = 0
    codes = activation(pre)                      [..., d_sae]   prox_{λR}: which R is the architecture
    recon = codes @ W_dec + b_dec                [..., d_in]

A variant is its activation (the prox of its regularizer) plus its training penalty, nothing else:

    architecture   activation                                     penalty (weighted by the trainer)
    standard       ReLU                      (L1 + z ≥ 0)         Σ_i z_i ‖W_dec[i]‖  (L1, decoder-norm weighted)
    jumprelu       z·1[z > θ_i], θ learned   (L0 + z ≥ 0)         Σ_i 1[z_i > θ_i]    (L0, straight-through)
    topk           k largest of ReLU(pre)    (‖z‖₀ ≤ k, z ≥ 0)     none: the budget is the constraint
    batchtopk      k·B largest over a batch  (batch budget)       none; at inference a global threshold
    abstopk        k largest |pre|, signed   (‖z‖₀ ≤ k)           none
    unrolled       T ISTA/FISTA steps of the abstopk (or topk) prox, beyond the paper

Saved folders follow SAELens (``cfg.json`` + ``sae_weights.safetensors``, same parameter names), so
``sae_lens.SAE.load_from_disk`` reads the standard, jumprelu, topk and abstopk ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from absae_lib import prox

ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk", "abstopk", "unrolled")
K_SPARSE = ("topk", "batchtopk", "abstopk")
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE.  Field names follow SAELens's ``cfg.json`` where one exists."""

    d_in: int
    d_sae: int
    architecture: str = "abstopk"
    k: int | None = None  # active latents per token (topk, batchtopk, abstopk, unrolled)
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001  # width of the straight-through rectangle kernel
    unrolled_steps: int = 3  # T proximal steps (unrolled)
    unrolled_solver: str = "ista"  # "ista" or "fista"
    unrolled_prox: str = "abstopk"  # "abstopk" or "topk"
    unrolled_tied: bool = True  # later steps use Dᵀ = W_decᵀ (True) or share W_enc (False, LISTA-style)
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)  # model_name, hook_name, input_scale, training info

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.architecture in K_SPARSE + ("unrolled",):
            if self.k is None:
                raise ValueError(f"architecture {self.architecture!r} needs k (the number of active latents)")
            if not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"k must be a positive int, got {self.k!r}")
            if self.k > self.d_sae:
                raise ValueError(f"k = {self.k} is larger than the dictionary (d_sae = {self.d_sae}); use k ≤ d_sae")
        if self.unrolled_solver not in ("ista", "fista"):
            raise ValueError(f"unrolled_solver must be 'ista' or 'fista', got {self.unrolled_solver!r}")
        if self.unrolled_prox not in ("abstopk", "topk"):
            raise ValueError(f"unrolled_prox must be 'abstopk' or 'topk', got {self.unrolled_prox!r}")

    @property
    def signed(self) -> bool:
        """Whether codes can be negative (one latent, two poles)."""
        return self.architecture == "abstopk" or (self.architecture == "unrolled" and self.unrolled_prox == "abstopk")

    def to_dict(self) -> dict[str, Any]:
        """The SAELens-style cfg.json: its own keys plus ours (SAELens ignores unknown keys)."""
        d = asdict(self)
        d.update(apply_b_dec_to_input=True, normalize_activations="none", reshape_activations="none", device="cpu")
        if self.architecture == "topk" or self.architecture == "abstopk":
            d["rescale_acts_by_decoder_norm"] = False
        d["metadata"] = dict(self.metadata, absae=True)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        kwargs = {key: value for key, value in d.items() if key in names}
        kwargs["metadata"] = {key: value for key, value in d.get("metadata", {}).items() if key != "absae"}
        return cls(**kwargs)


class SAEOutput(NamedTuple):
    recon: Tensor  # [..., d_in]
    codes: Tensor  # [..., d_sae]
    pre: Tensor  # [..., d_sae] pre-activations (for penalties and AuxK)


# --- straight-through estimators for JumpReLU (Rajamanoharan et al. 2024) -------------------------------------------
# The step 1[z > θ] has zero gradient w.r.t. θ almost everywhere; a rectangle kernel of width ε around θ gives
# the threshold a pseudo-gradient so it can learn.  The input gets the ordinary gradient of the jump function.


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = (pre > threshold) * grad_out
        grad_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad_out
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad_out
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


# --- the variants: activation (prox) + penalty ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    activation: Callable[["SAE", Tensor], Tensor]  # (sae, pre [..., d_sae]) -> codes [..., d_sae]
    penalty: Callable[["SAE", Tensor, Tensor], Tensor] | None  # (sae, pre, codes) -> mean sparsity penalty, scalar


def _batchtopk_activation(sae: "SAE", pre: Tensor) -> Tensor:
    if sae.training:
        return prox.batch_topk(pre.reshape(-1, pre.shape[-1]), sae.cfg.k).reshape(pre.shape)
    # At inference one token must not depend on its batch-mates: Bussmann et al. replace the batch budget by
    # one global threshold, the average smallest kept activation seen in training.
    return prox.jumprelu(torch.relu(pre), sae.threshold)


VARIANTS: dict[str, Variant] = {
    "standard": Variant(
        activation=lambda sae, pre: torch.relu(pre),
        penalty=lambda sae, pre, codes: (codes * sae.W_dec.norm(dim=-1)).sum(-1).mean(),
    ),
    "jumprelu": Variant(
        activation=lambda sae, pre: _JumpReLU.apply(pre, sae.threshold, sae.cfg.jumprelu_bandwidth),
        penalty=lambda sae, pre, codes: _Step.apply(pre, sae.threshold, sae.cfg.jumprelu_bandwidth).sum(-1).mean(),
    ),
    "topk": Variant(activation=lambda sae, pre: prox.topk(pre, sae.cfg.k), penalty=None),
    "batchtopk": Variant(activation=_batchtopk_activation, penalty=None),
    "abstopk": Variant(activation=lambda sae, pre: prox.abs_topk(pre, sae.cfg.k), penalty=None),
    # unrolled: its activation is step 1's prox; SAE.encode runs the remaining steps, which need x.
    "unrolled": Variant(
        activation=lambda sae, pre: (prox.abs_topk if sae.cfg.unrolled_prox == "abstopk" else prox.topk)(pre, sae.cfg.k),
        penalty=None,
    ),
}


class SAE(nn.Module):
    """A sparse autoencoder.  ``SAE(d_in, d_sae, architecture, k=...)`` or ``SAE.from_config(SAEConfig(...))``.

    Parameters: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] (unit-norm rows), b_dec [d_in];
    ``threshold`` [d_sae] for jumprelu (learned) and batchtopk (a buffer, set during training);
    ``step`` (scalar) for unrolled.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "abstopk", k: int | None = None, **kwargs: Any):
        super().__init__()
        self.cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, **kwargs)
        self.variant = VARIANTS[architecture]
        dtype = getattr(torch, self.cfg.dtype)
        # Decoder rows start as random unit vectors and the encoder as their transpose (Gao et al. 2024):
        # at initialisation the encoder is then exactly one ISTA step on the dictionary.
        W_dec = torch.randn(d_sae, d_in, dtype=dtype)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((d_sae,), self.cfg.jumprelu_init_threshold, dtype=dtype))
        if architecture == "batchtopk":
            self.register_buffer("threshold", torch.zeros((), dtype=dtype))
        if architecture == "unrolled":
            # A step below 1/‖D‖₂² is always safe, but a learned step can do better: start from 1/√(d_sae/d_in),
            # roughly 1/‖D‖₂ for random unit atoms, and let training adjust it.
            self.step = nn.Parameter(torch.tensor(1.0 / math.sqrt(max(d_sae / d_in, 1.0)), dtype=dtype))

    @classmethod
    def from_config(cls, cfg: SAEConfig) -> "SAE":
        kwargs = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("d_in", "d_sae", "architecture", "k")}
        return cls(cfg.d_in, cfg.d_sae, cfg.architecture, cfg.k, **kwargs)

    # --- the forward pass -------------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(f"{what} must have last dimension {width}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")

    def pre_activation(self, x: Tensor) -> Tensor:
        """(x − b_dec) @ W_enc + b_enc.  [..., d_in] -> [..., d_sae]."""
        self._check_input(x, self.cfg.d_in, "x")
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """The architecture's proximal operator.  [..., d_sae] -> [..., d_sae]."""
        return self.variant.activation(self, pre)

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes.  [..., d_in] -> [..., d_sae]."""
        return self._codes(x, self.pre_activation(x))

    def _codes(self, x: Tensor, pre: Tensor) -> Tensor:
        codes = self.activation(pre)
        if self.cfg.architecture == "unrolled" and self.cfg.unrolled_steps > 1:
            codes = self._unrolled_steps(x.to(pre.dtype), codes)
        return codes

    def decode(self, codes: Tensor) -> Tensor:
        """codes @ W_dec + b_dec.  [..., d_sae] -> [..., d_in]."""
        self._check_input(codes, self.cfg.d_sae, "codes")
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> SAEOutput:
        pre = self.pre_activation(x)
        codes = self._codes(x, pre)
        return SAEOutput(recon=self.decode(codes), codes=codes, pre=pre)

    def penalty(self, out: "SAEOutput") -> Tensor:
        """The variant's sparsity penalty (unweighted), 0 for the k-sparse ones.  Scalar."""
        if self.variant.penalty is None:
            return out.pre.new_zeros(())
        return self.variant.penalty(self, out.pre, out.codes)

    def _unrolled_steps(self, x: Tensor, codes: Tensor) -> Tensor:
        """Steps 2..T of proximal gradient on ½‖x − (z W_dec + b_dec)‖² s.t. ‖z‖₀ ≤ k.  [..., d_sae] -> [..., d_sae].

        Step 1 is the ordinary SAE encoder (from z = 0 with μ = 1).  Each later step moves along the residual's
        gradient, ``z + μ (x − decode(z)) Dᵀ`` with Dᵀ = W_decᵀ (tied: true ISTA) or W_enc (untied: LISTA-style),
        then projects back onto the k-sparse set.  FISTA adds Nesterov momentum.
        """
        project = prox.abs_topk if self.cfg.unrolled_prox == "abstopk" else prox.topk
        D_T = self.W_dec.T if self.cfg.unrolled_tied else self.W_enc
        y, t = codes, 1.0
        for _ in range(self.cfg.unrolled_steps - 1):
            z_next = project(y + self.step * ((x - self.decode(y)) @ D_T), self.cfg.k)
            if self.cfg.unrolled_solver == "fista":
                t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
                y = z_next + ((t - 1) / t_next) * (z_next - codes)
                t = t_next
            else:
                y = z_next
            codes = z_next
        return codes

    # --- decoder geometry (the trainer keeps rows unit-norm) ----------------------------------------------------------

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of W_dec's gradient along each row: with unit-norm rows it would only change the norm."""
        if self.W_dec.grad is None:
            return
        rows = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec.grad -= (self.W_dec.grad * rows).sum(-1, keepdim=True) * rows

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Fold an input normalisation x ↦ s·x into the weights, so the SAE takes raw activations.

        Trained on s·x: pre = (s·x − b_dec) W_enc + b_enc and recon_raw = (z W_dec + b_dec)/s.  Both are the same
        affine maps of raw x with W_enc ← s·W_enc, b_dec ← b_dec/s, W_dec ← W_dec/s, so codes are unchanged and
        reconstructions come out in raw units.  (Decoder rows then have norm 1/s.)
        """
        self.W_enc *= scale
        self.b_dec /= scale
        self.W_dec /= scale
        if self.cfg.architecture == "unrolled" and self.cfg.unrolled_tied:
            # The later steps compute μ (x − x̂) W_decᵀ: both factors shrank by 1/s, so μ grows by s².
            self.step *= scale**2
        self.cfg.metadata["input_scale_folded"] = float(scale)

    # --- save / load (SAELens layout) --------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` to ``folder`` (created), SAELens's layout."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILENAME))
        (folder / CFG_FILENAME).write_text(json.dumps(self.cfg.to_dict(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "SAE":
        """Read a folder written by :meth:`save`.  Fails clearly on a missing, foreign or corrupt folder."""
        folder = Path(folder)
        cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
        if not cfg_path.exists() or not weights_path.exists():
            raise FileNotFoundError(
                f"{folder} is not a saved SAE: it needs {CFG_FILENAME} and {WEIGHTS_FILENAME} (write one with sae.save())"
            )
        try:
            cfg_dict = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_path} is not valid JSON ({err}); the folder is corrupt, save the SAE again") from err
        if cfg_dict.get("architecture") not in ARCHITECTURES:
            raise ValueError(
                f"{cfg_path} describes architecture {cfg_dict.get('architecture')!r}, which absae cannot load; "
                f"it knows {', '.join(ARCHITECTURES)}"
            )
        sae = cls.from_config(SAEConfig.from_dict(cfg_dict))
        try:
            tensors = load_file(str(weights_path))
        except Exception as err:  # safetensors raises its own error types for truncated or foreign files
            raise ValueError(f"{weights_path} could not be read ({err}); the file is corrupt, save the SAE again") from err
        expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if expected != found:
            raise ValueError(
                f"{weights_path} does not match its cfg.json (a checkpoint from another config?): "
                f"expected tensors {expected}, found {found}"
            )
        sae.load_state_dict(tensors)
        sae.eval()  # a loaded SAE is for use: BatchTopK must use its inference threshold, not the batch budget
        return sae.to(device) if device is not None else sae

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        return f"{self.cfg.architecture}: d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}"

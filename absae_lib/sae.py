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
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from absae_lib import atomic, prox, sparse

ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk", "abstopk", "unrolled")
K_SPARSE = ("topk", "batchtopk", "abstopk")
# SAELens's names for an input normalisation applied inside the SAE: "constant_norm_rescale" scales every token to
# norm √d_in before encoding and undoes that scale after decoding (sae_lens.saes.sae._setup_activation_normalization).
NORMALIZATIONS = ("none", "constant_norm_rescale")
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
    normalize_activations: str = "none"  # or "constant_norm_rescale": each token scaled to norm √d_in inside the SAE
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
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize_activations!r}"
            )

    @property
    def signed(self) -> bool:
        """Whether codes can be negative (one latent, two poles)."""
        return self.architecture == "abstopk" or (self.architecture == "unrolled" and self.unrolled_prox == "abstopk")

    def to_dict(self) -> dict[str, Any]:
        """The SAELens-style cfg.json: its own keys plus ours (SAELens ignores unknown keys).

        A BatchTopK SAE is written the way SAELens saves one for inference: as a JumpReLU SAE whose threshold is the
        global inference threshold in every latent (``architecture: "jumprelu"``); ``absae_architecture`` keeps
        "batchtopk" so that absae reads it back as BatchTopK (k and the training-mode batch budget included).
        """
        d = asdict(self)
        d.update(apply_b_dec_to_input=True, reshape_activations="none", device="cpu")
        if self.architecture == "topk" or self.architecture == "abstopk":
            d["rescale_acts_by_decoder_norm"] = False
        if self.architecture == "batchtopk":
            d.update(architecture="jumprelu", absae_architecture="batchtopk")
        d["metadata"] = dict(self.metadata, absae=True)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        if not isinstance(d, dict):
            raise ValueError(f"an SAE config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kwargs = {key: value for key, value in d.items() if key in names}
        if "absae_architecture" in d:  # a BatchTopK SAE saved as SAELens's JumpReLU (see to_dict)
            kwargs["architecture"] = d["absae_architecture"]
        # A cfg.json is user-editable: say what is wrong with it rather than fail inside the dataclass.
        missing = [name for name in ("d_in", "d_sae") if name not in d]
        if missing:
            raise ValueError(f"the config lacks {', '.join(missing)} (every saved SAE has d_in and d_sae)")
        metadata = d.get("metadata") or {}  # SAELens writes null for "no metadata"
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(metadata).__name__}")
        kwargs["metadata"] = {key: value for key, value in metadata.items() if key != "absae"}
        return cls(**kwargs)


def token_norm_coefficient(x: Tensor) -> Tensor:
    """SAELens's ``x_norm_coeff`` √d_in / ‖x‖ of every token.  x [..., d_in] -> [..., 1].

    ``x * coeff`` has norm √d_in per token (constant_norm_rescale).  A zero token gets a huge finite factor instead of
    SAELens's inf, so it maps to 0 rather than NaN; every other token gets exactly SAELens's number.
    """
    return (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


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
    ``threshold`` [d_sae] for jumprelu (learned) and batchtopk (a buffer, set during training, one value repeated:
    the layout of SAELens's JumpReLU, so a saved BatchTopK SAE is a JumpReLU one); ``step`` (scalar) for unrolled.

    With ``normalize_activations="constant_norm_rescale"`` every token x is scaled to norm √d_in before the encoder
    and the reconstruction is scaled back by ‖x‖/√d_in (SAELens's semantics): ``forward`` and ``encode`` take raw x;
    ``decode(codes, norms=x.norm(dim=-1))`` needs the tokens' norms to return raw units.
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
            self.register_buffer("threshold", torch.zeros(d_sae, dtype=dtype))
        if architecture == "unrolled":
            # A step below 1/‖D‖₂² is always safe, but a learned step can do better: start from 1/√(d_sae/d_in),
            # roughly 1/‖D‖₂ for random unit atoms, and let training adjust it.
            self.step = nn.Parameter(torch.tensor(1.0 / math.sqrt(max(d_sae / d_in, 1.0)), dtype=dtype))

    @classmethod
    def from_config(cls, cfg: SAEConfig) -> "SAE":
        kwargs = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("d_in", "d_sae", "architecture", "k")}
        return cls(cfg.d_in, cfg.d_sae, cfg.architecture, cfg.k, **kwargs)

    # --- the forward pass -------------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor, width: int, what: str) -> Tensor:
        """``x`` as a tensor (a numpy array is converted, onto the SAE's device), checked to be [..., width] floats."""
        if not isinstance(x, Tensor):
            if not hasattr(x, "__array__"):
                raise ValueError(f"{what} must be a tensor (or numpy array) [..., {width}], got {type(x).__name__}")
            x = torch.as_tensor(x, device=self.W_enc.device)
        if x.dim() == 0:
            raise ValueError(f"{what} must be a tensor [..., {width}] (one row per token), got a 0-D tensor (a scalar)")
        if x.shape[-1] != width:
            raise ValueError(f"{what} must have last dimension {width}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchTopK folders saved before the threshold became [d_sae] hold one scalar: repeat it in every latent.
        key = prefix + "threshold"
        if self.cfg.architecture == "batchtopk" and key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].expand(self.cfg.d_sae).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def per_token_normalized(self) -> bool:
        """Whether the SAE scales each token to norm √d_in inside (``normalize_activations="constant_norm_rescale"``)."""
        return self.cfg.normalize_activations == "constant_norm_rescale"

    def _sae_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x [..., d_in] in the SAE's dtype, normalised if the SAE normalises, and the factor used [..., 1] (or None)."""
        x = self._check_input(x, self.cfg.d_in, "x")
        x = x.to(self.W_enc.dtype)
        if not self.per_token_normalized:
            return x, None
        coeff = token_norm_coefficient(x)
        return x * coeff, coeff

    def _pre(self, x_in: Tensor) -> Tensor:
        return (x_in - self.b_dec) @ self.W_enc + self.b_enc

    def pre_activation(self, x: Tensor) -> Tensor:
        """(x' − b_dec) @ W_enc + b_enc, x' = x (or x·√d_in/‖x‖ when per-token normalised).  [..., d_in] -> [..., d_sae]."""
        return self._pre(self._sae_input(x)[0])

    def activation(self, pre: Tensor) -> Tensor:
        """The architecture's proximal operator.  [..., d_sae] -> [..., d_sae]."""
        return self.variant.activation(self, pre)

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes of raw activations.  [..., d_in] -> [..., d_sae]."""
        x_in, _ = self._sae_input(x)
        return self._codes(x_in, self._pre(x_in))

    def _codes(self, x: Tensor, pre: Tensor) -> Tensor:
        codes = self.activation(pre)
        if self.cfg.architecture == "unrolled" and self.cfg.unrolled_steps > 1:
            codes = self._unrolled_steps(x.to(pre.dtype), codes)
        return codes

    def _decode_in(self, codes: Tensor) -> Tensor:
        """codes @ W_dec + b_dec, in the SAE's (possibly normalised) input space.  [..., d_sae] -> [..., d_in]."""
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode(self, codes: Tensor, norms: Tensor | None = None) -> Tensor:
        """codes @ W_dec + b_dec, in raw units.  codes [..., d_sae] -> [..., d_in].

        A per-token-normalised SAE (``normalize_activations="constant_norm_rescale"``) reconstructs each token at
        norm ~√d_in and scales it back by ‖x‖/√d_in: pass ``norms`` = ``x.norm(dim=-1)`` [...] (or [..., 1]) of the
        tokens the codes came from.  ``forward`` does this for you.
        """
        codes = self._check_input(codes, self.cfg.d_sae, "codes")
        out = self._decode_in(codes)
        if not self.per_token_normalized:
            if norms is not None:
                raise ValueError("norms are only used by a per-token-normalised SAE; this one takes x as it is: drop them")
            return out
        if norms is None:
            raise ValueError(
                "this SAE normalises every token to norm √d_in (normalize_activations='constant_norm_rescale'): "
                "decode(codes, norms=x.norm(dim=-1)) needs the tokens' norms to return raw units, or use sae(x).recon"
            )
        norms = torch.as_tensor(norms, device=out.device).to(out.dtype)
        if norms.shape != out.shape[:-1] + (1,):
            norms = norms.unsqueeze(-1)
        coeff = (self.cfg.d_in**0.5) / norms.clamp_min(torch.finfo(out.dtype).tiny)
        return out / coeff

    def forward(self, x: Tensor) -> SAEOutput:
        """recon [..., d_in] (raw units), codes [..., d_sae], pre [..., d_sae] of raw activations x [..., d_in]."""
        x_in, coeff = self._sae_input(x)
        pre = self._pre(x_in)
        codes = self._codes(x_in, pre)
        recon = self._decode_in(codes)
        if coeff is not None:
            recon = recon / coeff
        return SAEOutput(recon=recon, codes=codes, pre=pre)

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
            z_next = project(y + self.step * ((x - self._decode_in(y)) @ D_T), self.cfg.k)
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
        sparse.normalize_rows_(self.W_dec)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of W_dec's gradient along each row: with unit-norm rows it would only change the norm."""
        sparse.remove_parallel_grad_(self.W_dec)

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

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` to ``folder`` (created), SAELens's layout.

        Both files land together: they are written into a staging folder inside ``folder``, marked committed, then
        renamed into place; a save killed at any point leaves the old SAE or the new one (``load`` finishes a
        committed save that was cut short). The weights' safetensors metadata records the architecture and a save
        id that ``cfg.json`` repeats, so ``load`` notices files from two different saves. A folder that already
        holds an SAE is refused unless ``overwrite``; other files in it (a ``checkpoint/``, notes) are left alone.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.file_lock(folder / SAVE_LOCK, what=f"the SAE in {folder}"):
            _finish_interrupted_save(folder)
            existing = [name for name in (CFG_FILENAME, WEIGHTS_FILENAME) if (folder / name).exists()]
            if existing and not overwrite:
                raise FileExistsError(
                    f"{folder} already holds a saved SAE ({', '.join(existing)}); pass overwrite=True to replace it, "
                    "or save to another folder"
                )
            save_id = uuid.uuid4().hex
            cfg = dict(self.cfg.to_dict(), absae_save_id=save_id)
            tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
            staging = Path(tempfile.mkdtemp(prefix=SAVE_STAGING, dir=folder))
            try:
                save_file(tensors, str(staging / WEIGHTS_FILENAME), metadata=_weights_metadata(self.cfg, save_id))
                (staging / CFG_FILENAME).write_text(json.dumps(cfg, indent=2))
                for name in (WEIGHTS_FILENAME, CFG_FILENAME):
                    atomic.fsync_file(staging / name)
                atomic.write_text(staging / COMMITTED, save_id)  # from here on, the new SAE is the saved one
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _move_into_place(staging, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "SAE":
        """Read a folder written by :meth:`save`.  Fails clearly, naming the file, on a missing, foreign or corrupt
        folder, or on a cfg.json and weights that do not belong together."""
        folder = Path(folder)
        if any(folder.glob(SAVE_STAGING + "*")):  # a save was cut short (or is running): finish or drop it first
            with atomic.file_lock(folder / SAVE_LOCK, what=f"the SAE in {folder}"):
                _finish_interrupted_save(folder)
        cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
        if not cfg_path.exists() or not weights_path.exists():
            raise FileNotFoundError(
                f"{folder} is not a saved SAE: it needs {CFG_FILENAME} and {WEIGHTS_FILENAME} (write one with sae.save())"
            )
        cfg_dict = atomic.read_json(cfg_path, "SAE config", "the folder is corrupt, save the SAE again")
        if not isinstance(cfg_dict, dict):
            raise ValueError(f"{cfg_path} must hold a JSON object, got {type(cfg_dict).__name__}; save the SAE again")
        architecture = cfg_dict.get("absae_architecture", cfg_dict.get("architecture"))
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"{cfg_path} describes architecture {architecture!r}, which absae cannot load; "
                f"it knows {', '.join(ARCHITECTURES)}"
            )
        try:
            cfg = SAEConfig.from_dict(cfg_dict)
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{cfg_path} is not a valid SAE config: {err}") from err
        sae = cls.from_config(cfg)
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                weights_metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # safetensors raises its own error types for truncated or foreign files
            raise ValueError(f"{weights_path} could not be read ({err}); the file is corrupt, save the SAE again") from err
        _check_same_sae(cfg_path, cfg_dict, cfg, weights_path, weights_metadata)
        if cfg.architecture == "batchtopk" and "threshold" in tensors and tensors["threshold"].dim() == 0:
            tensors["threshold"] = tensors["threshold"].expand(cfg.d_sae).clone()  # saved before it became [d_sae]
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


# --- saving both files together ----------------------------------------------------------------------------------------

SAVE_LOCK = ".sae"  # lock file .sae.lock in the SAE's folder
SAVE_STAGING = ".save.tmp-"  # staging folders inside the SAE's folder
COMMITTED = "COMMITTED"  # in a staging folder: both files are complete, the save must be finished


def _weights_metadata(cfg: SAEConfig, save_id: str) -> dict[str, str]:
    """What the safetensors header records of the SAE (strings only), checked against cfg.json on load."""
    meta = {"absae_architecture": cfg.architecture, "absae_save_id": save_id, "d_in": str(cfg.d_in),
            "d_sae": str(cfg.d_sae), "k": str(cfg.k)}
    if cfg.architecture == "unrolled":
        meta["unrolled_prox"] = cfg.unrolled_prox
    return meta


def _check_same_sae(cfg_path: Path, cfg_dict: dict, cfg: SAEConfig, weights_path: Path, meta: dict[str, str]) -> None:
    """Refuse a cfg.json and weights from different SAEs whose tensor shapes happen to agree (e.g. TopK vs AbsTopK)."""
    if not meta.get("absae_architecture"):
        return  # saved by an older absae, or by another library: only the shapes can be checked
    said = {"architecture": cfg.architecture, "k": str(cfg.k)}
    held = {"architecture": meta["absae_architecture"], "k": meta.get("k", said["k"])}
    if cfg.architecture == "unrolled" and "unrolled_prox" in meta:
        said["unrolled_prox"], held["unrolled_prox"] = cfg.unrolled_prox, meta["unrolled_prox"]
    differ = {key: (said[key], held[key]) for key in said if said[key] != held[key]}
    if differ:
        lines = ", ".join(f"{key} {a} in cfg.json but {b} in the weights" for key, (a, b) in differ.items())
        raise ValueError(
            f"{cfg_path} and {weights_path} describe different SAEs ({lines}): the files were mixed (copied by hand, "
            "or from an older interrupted save); save the SAE again"
        )
    cfg_id, weights_id = cfg_dict.get("absae_save_id"), meta.get("absae_save_id")
    if cfg_id and weights_id and cfg_id != weights_id:
        raise ValueError(
            f"{cfg_path} and {weights_path} come from two different saves (save ids {cfg_id} and {weights_id}); "
            "save the SAE again"
        )


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename a committed staging folder's files into ``folder`` (weights, then cfg), then remove it."""
    for name in (WEIGHTS_FILENAME, CFG_FILENAME):
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    shutil.rmtree(staging, ignore_errors=True)


def _finish_interrupted_save(folder: Path) -> None:
    """Finish the committed saves cut short in ``folder`` and drop the uncommitted ones (caller holds the lock)."""
    for staging in sorted(folder.glob(SAVE_STAGING + "*")):
        if (staging / COMMITTED).exists():
            _move_into_place(staging, folder)
        else:
            shutil.rmtree(staging, ignore_errors=True)

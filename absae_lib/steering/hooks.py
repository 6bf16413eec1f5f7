"""Steering hooks: push a concept into the residual stream at one hook.

    steering_hook(d, α)            x' = x + α·d                     activation addition (DiM: d = mean difference)
    clamp_latent_hook(sae, i, c)   x' = x + (c − z_i(x))·D_i         the paper's method: set one SAE latent to c
    axis_hook(sae, poles, α, n)    either of them along an SAE's pole of a concept axis (``concept_poles``)

Every hook leaves position 0 alone: in these models the first token is an attention sink whose residual norm is
~100× the others' (the SAEs never trained on it), so a push there measures nothing but damage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

Positions = str | slice  # "all", "last", or a slice of positions
HookFn = Callable[[Tensor, object], Tensor]


def _check_positions(positions: Positions) -> None:
    if not (positions in ("all", "last") or isinstance(positions, slice)):
        raise ValueError(f"positions must be 'all', 'last' or a slice, got {positions!r}")


def _where(activation: Tensor, positions: Positions) -> tuple | None:
    """Index (batch, position mask) of the positions to change in a [batch, pos, d] activation, or None for none.

    "all": every position of every pass. "last": the last position of every pass: the last prompt token, then each
    generated token (with a KV cache each new token is a pass of its own). A slice: those positions of a multi-token
    pass (the prompt); single-token passes (cached generation steps) are left alone. In a multi-token pass position
    0 is never changed (the attention sink, see the module docstring); rows must then start at index 0, as in
    right-padded or unpadded batches (``generate_steered`` batches prompts of equal length for this reason).
    """
    n = activation.shape[1]
    if n == 1:  # a cached generation step: never the sequence's first token
        return None if isinstance(positions, slice) else (slice(None), slice(None))
    # The mask depends only on n: build and test it on the CPU (no device sync), then send it along.
    mask = torch.zeros(n, dtype=torch.bool)
    if positions == "all":
        mask[:] = True
    elif positions == "last":
        mask[-1] = True
    else:
        mask[positions] = True
    mask[0] = False
    return (slice(None), mask.to(activation.device)) if bool(mask.any()) else None


def push_norm(hook_fn: HookFn, activation: Tensor, lengths: Tensor | None = None) -> float:
    """Mean ‖hook(x) − x‖ over the positions a hook actually changes or could change: every real token but the first.

    activation [batch, pos, d]; lengths [batch] real tokens per row (right padding), None for all. For an *add*
    hook this is |α|·‖d‖; a clamp adds (c − z_i(x))·D_i, which is larger where the latent fires with the other sign.
    """
    delta = (hook_fn(activation, None) - activation).float().norm(dim=-1)  # [batch, pos]
    pos = torch.arange(activation.shape[1], device=activation.device)
    keep = (pos[None, :] >= 1).expand_as(delta)
    if lengths is not None:
        keep = keep & (pos[None, :] < lengths.to(activation.device)[:, None])
    if not bool(keep.any()):
        raise ValueError("push_norm needs rows of at least two tokens (position 0 is never steered)")
    return delta[keep].mean().item()


def steering_hook(direction: Tensor, alpha: float, positions: Positions = "all") -> HookFn:
    """A TransformerLens hook that adds ``alpha * direction`` to the residual stream.

    Args:
        direction: [d_model], used as given (not normalised): pass a unit vector for α in residual-stream units, or
            the raw DiM vector for α in multiples of the class-mean gap.
        alpha: scale; 0 leaves the activation unchanged.
        positions: "all", "last" or a slice (see ``_where``).

    Returns:
        hook(activation [batch, pos, d_model], hook) -> activation, for ``model.hooks(fwd_hooks=[(name, hook)])``.
    """
    if direction.dim() != 1:
        raise ValueError(f"direction must be 1-D [d_model], got shape {tuple(direction.shape)}")
    _check_positions(positions)
    direction = direction.detach()

    def hook(activation: Tensor, hook=None) -> Tensor:
        if activation.shape[-1] != direction.shape[0]:
            raise ValueError(f"direction has {direction.shape[0]} dims, the activation {activation.shape[-1]}")
        where = _where(activation, positions)
        if where is None or alpha == 0:
            return activation
        activation = activation.clone()  # never write into a tensor someone else may hold
        activation[where] += alpha * direction.to(activation.device, activation.dtype)
        return activation

    return hook


def clamp_latent_hook(sae, latent: int, value: float, positions: Positions = "all") -> HookFn:
    """A hook that clamps SAE latent ``latent`` to ``value``, keeping the SAE's reconstruction error.

    x' = x + (value − z_latent(x))·W_dec[latent], where z = sae.encode(x): exactly decode(z with z_latent = value)
    + (x − decode(z)). Every other latent's contribution, and whatever the SAE fails to reconstruct, stays.

    Args:
        sae: an SAE (or ``signed_to_nonneg`` view) on the hook's activations, on the model's device.
        latent: the latent id.
        value: the code it is clamped to (negative values are meaningful for a signed SAE).
        positions: "all", "last" or a slice (see ``_where``).
    """
    d_sae = sae.cfg.d_sae
    if not 0 <= latent < d_sae:
        raise ValueError(f"latent must lie in 0..{d_sae - 1}, got {latent}")
    if sae.cfg.architecture == "batchtopk" and sae.training:
        # In training mode BatchTopK shares its budget across the batch: a token's codes would depend on the
        # other prompts being steered with it. In eval mode it uses its fixed threshold.
        raise ValueError("a BatchTopK SAE must be in eval mode for steering: call sae.eval() first")
    _check_positions(positions)

    def hook(activation: Tensor, hook=None) -> Tensor:
        where = _where(activation, positions)
        if where is None:
            return activation
        x = activation[where]
        with torch.no_grad():  # the SAE may live on another device or dtype than the model: compute in its own
            x_sae = x.to(sae.W_dec.device, sae.W_dec.dtype)
            z = sae.encode(x_sae)[..., latent]  # [batch, pos]
            delta = (value - z).unsqueeze(-1) * sae.W_dec[latent]  # [batch, pos, d_model]
            if getattr(sae, "per_token_normalized", False):
                # such an SAE decodes in units of √d_in / ‖x‖ per token (SAELens's constant_norm_rescale)
                delta = delta * x_sae.norm(dim=-1, keepdim=True) / math.sqrt(sae.cfg.d_in)
        activation = activation.clone()
        activation[where] = x + delta.to(activation.device, activation.dtype)
        return activation

    return hook


def identity_hook(activation: Tensor, hook=None) -> Tensor:
    """A hook that changes nothing (the unsteered condition, where a hook is required)."""
    return activation


def stacked_hooks(hook_fns: Sequence[HookFn | None], group_size: int) -> HookFn:
    """One hook for a batch made of ``len(hook_fns)`` groups of ``group_size`` consecutive rows.

    Group g (rows g·group_size … (g+1)·group_size − 1) goes through ``hook_fns[g]``; None leaves it unchanged.
    This is how several steering conditions share one batched forward pass or one ``generate`` call: repeat the
    prompts once per condition. The batch must have exactly ``len(hook_fns) * group_size`` rows.
    """
    hook_fns = list(hook_fns)
    if not hook_fns or group_size < 1:
        raise ValueError(f"need at least one hook and group_size ≥ 1, got {len(hook_fns)} hooks, "
                         f"group_size {group_size}")

    def hook(activation: Tensor, hook=None) -> Tensor:
        n_rows = len(hook_fns) * group_size
        if activation.shape[0] != n_rows:
            raise ValueError(f"stacked_hooks expects {len(hook_fns)} groups × {group_size} rows = {n_rows} rows, "
                             f"the batch has {activation.shape[0]}")
        parts = []
        for g, fn in enumerate(hook_fns):
            part = activation[g * group_size:(g + 1) * group_size]
            parts.append(part if fn is None else fn(part, hook))
        return torch.cat(parts)

    return hook


@dataclass(frozen=True)
class Poles:
    """The latent an SAE offers for each end of a concept axis, with the sign of its code there.

    ``positive = (latent, sign)``: pushing towards label 1 means adding sign·W_dec[latent] (or clamping the latent
    to a code of that sign). A signed (AbsTopK) SAE gives one latent with opposite signs; a non-negative SAE gives two
    latents, both with sign +1 (it can only say "more of" a direction).
    """

    positive: tuple[int, int]
    negative: tuple[int, int]
    mean_diff: tuple[float, float]  # mean code on label 1 − on label 0, for the positive and the negative latent

    @property
    def single(self) -> bool:
        """Whether one latent serves both ends."""
        return self.positive[0] == self.negative[0]


def concept_poles(codes: Tensor, labels: Tensor, signed: bool) -> Poles:
    """Pick the latent(s) to steer a binary concept with, by the gap between class-mean codes (train split only).

    Signed SAE: the latent with the largest |mean code on label 1 − on label 0|; its sign says which code sign marks
    label 1 (the other sign is the other pole). Non-negative SAE: the latent with the most positive gap (it fires
    for label 1) and the one with the most negative gap (it fires for label 0), ranked as in
    ``probing.select_latents``.

    Args:
        codes: [n, d_sae] codes of the labelled examples; labels: [n] 0/1.
        signed: whether the SAE's codes may be negative.
    """
    from absae_lib.probing import mean_code_difference

    if not signed and (codes < 0).any():
        raise ValueError("codes have negative entries but signed=False; pass signed=True for an AbsTopK SAE")
    diff = mean_code_difference(codes, labels)
    if signed:
        i = int(diff.abs().argmax())
        sign = 1 if diff[i] >= 0 else -1
        return Poles((i, sign), (i, -sign), (diff[i].item(), diff[i].item()))
    i_pos, i_neg = int(diff.argmax()), int(diff.argmin())
    if not diff[i_pos] > 0 > diff[i_neg]:
        raise ValueError("no latent fires more on one class than on the other for both classes; "
                         f"the largest gaps are {diff[i_pos]:.3g} and {diff[i_neg]:.3g}")
    return Poles((i_pos, 1), (i_neg, 1), (diff[i_pos].item(), diff[i_neg].item()))


def axis_hook(sae, poles: Poles, alpha: float, scale: float, mode: str = "add",
              positions: Positions = "all") -> HookFn:
    """Steer along a concept axis with an SAE: α > 0 towards label 1, α < 0 towards label 0.

    The pole for α's sign is (latent, sign) from ``poles``; ``|α|·scale`` is the size of the push in residual units:

    - "add": x + |α|·scale · sign·D/‖D‖ (activation addition along the decoder row, D = W_dec[latent]);
    - "clamp": set the latent's code to c = sign·|α|·scale/‖D‖ (``clamp_latent_hook``), which adds the same
      vector where the latent is silent, less where it already fires with c's sign and more where it fires with
      the other sign. For an SAE with per-token input normalisation the push is c‖D‖·‖x‖/√d_in instead: the
      code is relative to the token's norm.

    α = 0 gives ``identity_hook``.
    """
    if mode not in ("add", "clamp"):
        raise ValueError(f"mode must be 'add' or 'clamp', got {mode!r}")
    if alpha == 0:
        return identity_hook
    latent, sign = poles.positive if alpha > 0 else poles.negative
    row = sae.W_dec[latent].detach().float()
    size = abs(alpha) * scale
    if mode == "add":
        return steering_hook(sign * row / row.norm(), size, positions)
    return clamp_latent_hook(sae, latent, sign * size / row.norm().item(), positions)


def model_hooks(model, hook_name: str | None, hook_fn: HookFn | None):
    """``model.hooks`` with one forward hook, or a no-op context when there is none."""
    if (hook_name is None) != (hook_fn is None):
        raise ValueError("give both hook_name and hook_fn, or neither")
    if hook_name is None:
        return nullcontext()
    from absae_lib.models import validate_hook

    validate_hook(model, hook_name)
    return model.hooks(fwd_hooks=[(hook_name, hook_fn)])



"""Proximal operators of sparsity regularizers, and the unrolled ISTA / FISTA solvers built from them.

An SAE encoder is one step of proximal gradient descent on the sparse-coding problem

    min_z  ½‖x − (D z + b)‖² + λ R(z)

taken from z = 0 with step 1:  z = prox_{λR}(Dᵀ(x − b)).  Untie the encoder (W_e instead of Dᵀ, plus a bias b_e)
and you have z = prox_{λR}(W_eᵀ(x − b) + b_e).  The regularizer R decides the activation function:

    R(z)                          prox_{λR}(v)                                  SAE
    ‖z‖₁                          sign(v)·max(|v| − λ, 0)       soft_threshold      (signed L1)
    ‖z‖₁ + ι(z ≥ 0)               max(v − λ, 0)                 nonneg_soft_...     ReLU
    ‖z‖₀                          v·1[|v| > √(2λ)]              hard_threshold      (signed L0)
    ‖z‖₀ + ι(z ≥ 0)               v·1[v > √(2λ)]                nonneg_hard_...     JumpReLU
    ι(‖z‖₀ ≤ k) + ι(z ≥ 0)        k largest positive entries    topk                TopK
    ι(‖z‖₀ ≤ k)                   k largest |v|, signs kept     abs_topk            AbsTopK

ι(C) is 0 where C holds and +∞ elsewhere.  Every operator acts on the last dimension of ``v`` ([..., n] in,
[..., n] out); the batch forms spend one budget k·B on a whole batch [B, n].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Prox = Callable[[Tensor], Tensor]


def _check_lam(lam: float | Tensor) -> None:
    if isinstance(lam, Tensor):
        if (lam < 0).any():
            raise ValueError("λ must be ≥ 0 (it is a penalty weight); got a negative entry")
    elif lam < 0:
        raise ValueError(f"λ must be ≥ 0 (it is a penalty weight); got {lam}")


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1 (the number of active latents), got {k}")
    if k > n:
        raise ValueError(f"k = {k} is larger than the dictionary size {n}; use k ≤ {n}")


# --- L1 ---------------------------------------------------------------------------------------------------------------


def soft_threshold(v: Tensor, lam: float | Tensor) -> Tensor:
    """prox of λ‖z‖₁: shrink every entry towards 0 by λ.  [..., n] -> [..., n]."""
    _check_lam(lam)
    return torch.sign(v) * torch.clamp(v.abs() - lam, min=0)


def nonneg_soft_threshold(v: Tensor, lam: float | Tensor) -> Tensor:
    """prox of λ‖z‖₁ + ι(z ≥ 0): ReLU(v − λ), the ReLU SAE (its encoder bias absorbs −λ).  [..., n] -> [..., n]."""
    _check_lam(lam)
    return torch.clamp(v - lam, min=0)


# --- L0 ---------------------------------------------------------------------------------------------------------------


def hard_threshold(v: Tensor, lam: float | Tensor) -> Tensor:
    """prox of λ‖z‖₀: keep v_i where ½v_i² > λ, i.e. |v_i| > √(2λ).  [..., n] -> [..., n]."""
    _check_lam(lam)
    theta = torch.sqrt(2 * torch.as_tensor(lam, dtype=v.dtype, device=v.device))
    return v * (v.abs() > theta)


def nonneg_hard_threshold(v: Tensor, lam: float | Tensor) -> Tensor:
    """prox of λ‖z‖₀ + ι(z ≥ 0): v·1[v > √(2λ)], the JumpReLU with threshold θ = √(2λ).  [..., n] -> [..., n]."""
    _check_lam(lam)
    theta = torch.sqrt(2 * torch.as_tensor(lam, dtype=v.dtype, device=v.device))
    return v * (v > theta)


def jumprelu(v: Tensor, threshold: Tensor | float) -> Tensor:
    """JumpReLU parametrised by its threshold θ (= √(2λ)): v·1[v > θ].  [..., n] -> [..., n]."""
    return v * (v > threshold)


# --- L0 budget (k-sparse projections) ---------------------------------------------------------------------------------


def _keep(v: Tensor, scores: Tensor, k: int) -> Tensor:
    """Zero all but the k entries of ``v`` with the largest ``scores`` along the last dim."""
    idx = scores.topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(v).scatter(-1, idx, v.gather(-1, idx))


def topk(v: Tensor, k: int) -> Tensor:
    """prox of ι(‖z‖₀ ≤ k) + ι(z ≥ 0): the k largest entries of ReLU(v), the TopK SAE.  [..., n] -> [..., n].

    Fewer than k entries survive when v has fewer than k positive entries: a negative v_i is clipped to 0 first.
    """
    _check_k(k, v.shape[-1])
    relu_v = torch.relu(v)
    return _keep(relu_v, relu_v, k)


def abs_topk(v: Tensor, k: int) -> Tensor:
    """prox of ι(‖z‖₀ ≤ k): the k entries of largest |v|, signs kept, the AbsTopK SAE.  [..., n] -> [..., n].

    This is the Euclidean projection onto the L0 ball: keeping the k largest |v_i| loses the least ½‖z − v‖².
    """
    _check_k(k, v.shape[-1])
    return _keep(v, v.abs(), k)


def _batch_keep(v: Tensor, scores: Tensor, k: int) -> Tensor:
    # topk ranks NaN above every number, so one NaN row would take the whole batch's budget and zero every other
    # row. Rank NaN last instead; the NaN row's output stays NaN, so the bad input is not hidden either.
    nan_rows = scores.isnan().any(-1, keepdim=True)  # [B, 1]
    flat_v, flat_s = v.reshape(-1), scores.nan_to_num(nan=-torch.inf).reshape(-1)
    idx = flat_s.topk(k * v.shape[0], sorted=False).indices
    kept = torch.zeros_like(flat_v).scatter(0, idx, flat_v[idx]).reshape(v.shape)
    return torch.where(nan_rows, torch.full_like(kept, torch.nan), kept)


def batch_topk(v: Tensor, k: int) -> Tensor:
    """BatchTopK: keep the k·B largest entries of ReLU(v) over the whole batch.  [B, n] -> [B, n].

    The prox of ι(Σ_b ‖z_b‖₀ ≤ k·B) + ι(z ≥ 0): rows share one budget, so a hard row may use more than k latents.
    """
    if v.dim() != 2:
        raise ValueError(f"batch_topk expects a [B, n] batch, got shape {tuple(v.shape)}")
    _check_k(k, v.shape[-1])
    relu_v = torch.relu(v)
    return _batch_keep(relu_v, relu_v, k)


def batch_abs_topk(v: Tensor, k: int) -> Tensor:
    """BatchAbsTopK: keep the k·B entries of largest |v| over the whole batch, signs kept.  [B, n] -> [B, n]."""
    if v.dim() != 2:
        raise ValueError(f"batch_abs_topk expects a [B, n] batch, got shape {tuple(v.shape)}")
    _check_k(k, v.shape[-1])
    return _batch_keep(v, v.abs(), k)


# --- unrolled proximal gradient ---------------------------------------------------------------------------------------


@dataclass
class SolverResult:
    """Codes after the last step and the objective ½‖x − (Dz + b)‖² + λR(z) after every step (mean over the batch)."""

    codes: Tensor  # [B, n]
    objective: Tensor  # [n_steps + 1]: index 0 is the objective at z = 0


def spectral_step(D: Tensor) -> float:
    """The safe step size 1/‖D‖₂² (1 / the Lipschitz constant of the smooth part's gradient)."""
    return 1.0 / torch.linalg.matrix_norm(D.double(), ord=2).item() ** 2


def _check_dictionary(x: Tensor, D: Tensor) -> None:
    if D.dim() != 2:
        raise ValueError(f"the dictionary D must be [d, n] (atoms as columns), got shape {tuple(D.shape)}")
    if x.shape[-1] != D.shape[0]:
        raise ValueError(f"x has last dim {x.shape[-1]} but D has {D.shape[0]} rows; D must be [d_in, n_atoms]")


def _objective(x: Tensor, D: Tensor, b: Tensor, z: Tensor, penalty: Callable[[Tensor], Tensor]) -> Tensor:
    residual = x - (z @ D.T + b)
    return (0.5 * residual.pow(2).sum(-1) + penalty(z)).mean()


def ista(
    x: Tensor,
    D: Tensor,
    prox: Prox,
    n_steps: int,
    b: Tensor | None = None,
    step: float | None = None,
    penalty: Callable[[Tensor], Tensor] | None = None,
    z0: Tensor | None = None,
) -> SolverResult:
    """ISTA: z ← prox(z − μ Dᵀ(Dz + b − x)), ``n_steps`` times from ``z0`` (default 0).

    Args:
        x: [B, d] data.  D: [d, n] dictionary, atoms as columns.  b: [d] bias (default 0).
        prox: the proximal operator of μ·λR, e.g. ``lambda v: soft_threshold(v, step * lam)``
            (the k-sparse projections need no scaling: ι is unchanged by μ).
        step: μ, default 1/‖D‖₂².  penalty: λR(z) per row, for the objective (default 0: pure least squares
            or a constraint, where ι is 0 on feasible codes).
    """
    _check_dictionary(x, D)
    b = torch.zeros(D.shape[0], dtype=x.dtype, device=x.device) if b is None else b
    step = spectral_step(D) if step is None else step
    penalty = penalty or (lambda z: torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device))
    z = torch.zeros(*x.shape[:-1], D.shape[1], dtype=x.dtype, device=x.device) if z0 is None else z0
    objective = [_objective(x, D, b, z, penalty)]
    for _ in range(n_steps):
        grad = (z @ D.T + b - x) @ D
        z = prox(z - step * grad)
        objective.append(_objective(x, D, b, z, penalty))
    return SolverResult(codes=z, objective=torch.stack(objective))


def fista(
    x: Tensor,
    D: Tensor,
    prox: Prox,
    n_steps: int,
    b: Tensor | None = None,
    step: float | None = None,
    penalty: Callable[[Tensor], Tensor] | None = None,
    z0: Tensor | None = None,
) -> SolverResult:
    """FISTA (Beck & Teboulle 2009): ISTA with Nesterov momentum; same arguments as :func:`ista`.

    The objective converges at rate O(1/t²) for convex R (L1), against ISTA's O(1/t).
    """
    _check_dictionary(x, D)
    b = torch.zeros(D.shape[0], dtype=x.dtype, device=x.device) if b is None else b
    step = spectral_step(D) if step is None else step
    penalty = penalty or (lambda z: torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device))
    z = torch.zeros(*x.shape[:-1], D.shape[1], dtype=x.dtype, device=x.device) if z0 is None else z0
    y, t = z, 1.0
    objective = [_objective(x, D, b, z, penalty)]
    for _ in range(n_steps):
        z_next = prox(y - step * ((y @ D.T + b - x) @ D))
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = z_next + ((t - 1) / t_next) * (z_next - z)
        z, t = z_next, t_next
        objective.append(_objective(x, D, b, z, penalty))
    return SolverResult(codes=z, objective=torch.stack(objective))

"""A fast training step for the unrolled encoder (``architecture="unrolled"``, ISTA): T proximal steps, all sparse.

Step 1 is the k-sparse SAE encoder (:func:`absae_lib.sparse.sparse_forward`).  Each later step is

    z ← prox(z + μ (x − (z W_dec + b_dec)) Dᵀ)        Dᵀ = W_decᵀ (tied, true ISTA) or W_enc (untied, LISTA-style)

and the dense autograd of that pays, per step, for a [B, d_sae] × d_in decoder matmul and four more in the backward.
But z has k non-zeros per row, so only one product per step still scales with d_sae, the forward ``r Dᵀ`` of the
residual r = x − x̂ (to choose the next support):

    forward    x̂[b]        = Σ_j z[b,j] W_dec[i[b,j]] + b_dec              (the sparse decode, as in absae_lib.sparse)
               z'[b,j']    = z[b, i'[b,j']] + μ ⟨r[b], Dᵀ[:, i'[b,j']]⟩     (carried code + one gathered dot product)
    backward   ∂r[b]       = μ Σ_j' ∂z'[b,j'] Dᵀ[:, i'[b,j']]               (a bucket sum over the row's k entries)
               ∂Dᵀ[:, n]   = μ Σ_{(b,j'): i'=n} ∂z'[b,j'] r[b]              (the encoder's weight gradient, on r)

which :class:`absae_lib.sparse._SparseEncode` already computes with r in place of x − b_dec.  The support i' is
piecewise constant in the weights (no gradient), as in the k-sparse step.  FISTA's momentum mixes two supports, so
it keeps the dense path.  ``tests/test_sparse_unrolled.py`` checks the loss and every gradient against the dense
``SAE.forward``; ``benchmarks/profile_step.py``-style timings are in benchmarks/RESULTS.md §6.
"""

from __future__ import annotations

import torch
from torch import Tensor

from absae_lib import sparse


def _carried(values: Tensor, cols: Tensor, new_cols: Tensor, k: int) -> Tensor:
    """z[b, i'[b,j']]: the previous step's code at each newly kept latent (0 where it was not kept).

    values, cols [B·k] (k per row), new_cols [B·k] -> [B·k]; differentiable in ``values``.  A [B, k, k] comparison
    rather than a dense [B, d_sae] scatter: nothing here scales with d_sae.
    """
    same = new_cols.view(-1, k, 1) == cols.view(-1, 1, k)  # [B, k', k]
    return (same.to(values.dtype) * values.view(-1, 1, k)).sum(-1).reshape(-1)


def unrolled_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, step: Tensor, k: int,
                     prox: str, n_steps: int, tied: bool,
                     workspace: sparse.Workspace | None = None) -> sparse.SparseForward:
    """The unrolled (ISTA) encoder's forward pass with a sparse backward.  x [B, d_in] -> SparseForward.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], step μ (scalar tensor); prox "abstopk"
    or "topk"; n_steps T ≥ 1.  Same loss and gradients as ``SAE.forward`` of an ISTA unrolled SAE, but only the
    T matmuls that choose the supports scale with d_sae.  ``pre`` in the result is step 1's; ``aux_loss`` is 0 (the
    trainer gives unrolled SAEs no AuxK).
    """
    if prox not in ("abstopk", "topk"):
        raise ValueError(f"prox must be 'abstopk' or 'topk', got {prox!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}")
    first = sparse.sparse_forward(x, W_enc, b_enc, W_dec, b_dec, k, prox, workspace=workspace)
    values, cols, rows, offsets = first.codes
    recon = first.recon
    d_in, d_sae = W_enc.shape
    D_T = W_dec.T if tied else W_enc  # [d_in, d_sae]
    no_bias = (W_enc.new_zeros(d_sae), W_enc.new_zeros(d_in))
    for _ in range(n_steps - 1):
        residual = x - recon  # [B, d_in], differentiable through the decode
        with torch.no_grad():
            moved = residual @ D_T  # [B, d_sae]: picks the next support
            target = moved * step
            target.view(-1).index_add_(0, rows * d_sae + cols, values.detach().to(target.dtype))  # + z
        new_cols, new_rows, new_offsets = sparse.select(target, k, prox, workspace)
        gathered = sparse._encode(residual, D_T, *no_bias, moved, new_cols, new_rows)  # ⟨r[b], Dᵀ[:, i']⟩
        new_values = _carried(values, cols, new_cols, k) + step * gathered
        if prox == "topk":
            new_values = torch.relu(new_values)
        recon = sparse._decode(new_values, W_dec, new_cols, new_rows, new_offsets) + b_dec
        values, cols, rows, offsets = new_values, new_cols, new_rows, new_offsets
    return sparse.SparseForward(recon=recon, codes=sparse.Codes(values, cols, rows, offsets), pre=first.pre,
                                aux_loss=recon.new_zeros(()))

"""A fast training step for the thresholded SAEs (ReLU, JumpReLU): their codes are sparse too, just not k per row.

A ReLU or JumpReLU SAE trained to L0 ≈ 32 of 1152 latents keeps ~3% of its pre-activations, yet the dense step pays
for the full [B, d_sae] × d_in decoder matmul and its gradients, as the k-sparse SAEs did before
:mod:`absae_lib.sparse`.  Here the support S = {(b, i): pre[b,i] > θ_i} (θ = 0 for ReLU) is listed once per step
(a host sync, as on CPU it costs nothing) and everything after the encoder matmul is a sparse product over S, with
the same kernels as the k-sparse step:

    forward    z[b,i] = pre[b,i] on S                       recon = Σ_S z W_dec[i] + b_dec
    ReLU       penalty = Σ_S z[b,i] ‖W_dec[i]‖ / B           (the L1 penalty, decoder-norm weighted, as SAE.penalty)
    JumpReLU   penalty = |S| / B                             (the L0 penalty)

JumpReLU's thresholds learn through the straight-through estimator of Rajamanoharan et al. (2024), which is non-zero
only on the window W = {(b, i): |pre[b,i] − θ_i| < ε/2}, mostly latents just below their threshold.  For the
reconstruction, ∂θ_i gets −(θ_i/ε) ∂L/∂z[b,i] over W, and ∂L/∂z[b,i] = ⟨∂recon[b], W_dec[i]⟩ needs the decoder row
of a latent that may not fire: each window entry enters the decode as a code that is 0 in the forward pass,
−(θ_i/ε)(θ_i − sg(θ_i)) (sg: stop-gradient), whose gradient is exactly that.  The L0 penalty's pseudo-gradient
−(1/ε)/B per window entry enters the same way.  Loss and gradients equal the dense ``SAE.forward`` +
``SAE.penalty`` (``tests/test_sparse_threshold.py``).

A step whose support is dense (early in a run that did not start at its target L0) is no cheaper sparse:
:func:`threshold_forward` then returns None and the trainer takes the dense step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from absae_lib import sparse

# Above this fraction of [B, d_sae] non-zero, take the dense step.  A guess, not a measured crossover: an
# embedding_bag gather does ~4× fewer multiply-adds per second than a GEMM here (absae_lib.sparse), so the sparse
# products lose well before half the codes fire; at the study's L0 ≈ 32 of 1152 (3%) they win 3× (RESULTS.md §7).
MAX_DENSITY = 1 / 8


def _zero_valued(scale: Tensor, theta: Tensor) -> Tensor:
    """scale · (θ − sg(θ)): 0 in the forward pass, ``scale`` times θ's gradient in the backward."""
    return scale * (theta - theta.detach())


def threshold_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, architecture: str,
                      threshold: Tensor | None = None, bandwidth: float | None = None,
                      workspace: sparse.Workspace | None = None,
                      max_density: float = MAX_DENSITY) -> sparse.SparseForward | None:
    """ReLU ("standard") or JumpReLU forward pass with a sparse backward, or None when the support is too dense.

    x [B, d_in]; W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; JumpReLU also ``threshold``
    θ [d_sae] and the kernel width ``bandwidth`` ε.  The result's ``penalty`` is the variant's unweighted sparsity
    penalty (``SAE.penalty``), ``aux_loss`` 0.
    """
    if architecture not in ("standard", "jumprelu"):
        raise ValueError(f"threshold_forward is for 'standard' (ReLU) or 'jumprelu', got {architecture!r}")
    jump = architecture == "jumprelu"
    if jump and (threshold is None or bandwidth is None or not bandwidth > 0):
        raise ValueError("a JumpReLU forward needs its threshold θ [d_sae] and a bandwidth ε > 0")
    B, d_sae = x.shape[0], W_enc.shape[1]
    pre = sparse.encoder_matmul(x, W_enc, b_enc, b_dec, workspace)  # [B, d_sae], no gradient
    with torch.no_grad():
        cut = threshold.detach().to(pre.dtype) if jump else 0.0
        rows, cols = (pre > cut).nonzero(as_tuple=True)  # row by row: grouped as the kernels need
        if rows.numel() > max_density * B * d_sae:
            return None
        offsets = sparse._starts(rows, B)
    values = sparse._encode(x, W_enc, b_enc, b_dec, pre, cols, rows)  # pre on S, with its gradients
    recon = sparse._decode(values, W_dec, cols, rows, offsets) + b_dec
    if jump:
        with torch.no_grad():
            w_rows, w_cols = ((pre - cut).abs() < bandwidth / 2).nonzero(as_tuple=True)
            w_offsets = sparse._starts(w_rows, B)
        theta = threshold[w_cols]
        # the reconstruction's pseudo-gradient for θ, through zero-valued codes on the window
        recon = recon + sparse._decode(_zero_valued(-theta.detach() / bandwidth, theta), W_dec, w_cols, w_rows,
                                       w_offsets)
        penalty = rows.numel() / B + _zero_valued(torch.full_like(theta, -1.0 / bandwidth), theta).sum() / B
    else:
        penalty = (values * W_dec.norm(dim=-1)[cols]).sum() / B
    codes = sparse.Codes(values, cols, rows, offsets)
    return sparse.SparseForward(recon=recon, codes=codes, pre=pre, aux_loss=recon.new_zeros(()), penalty=penalty)

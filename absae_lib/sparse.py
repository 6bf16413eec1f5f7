"""A fast training step for the k-sparse SAEs (TopK, BatchTopK, AbsTopK).

A dense step pays for six [B, d_sae] × d_in matmuls: the encoder, the decoder ``z @ W_dec`` and their four
gradients.  But z has only k non-zeros per row, so everything after the encoder matmul and the top-k is a
*sparse* product costing O(B·k·d_in), not O(B·d_sae·d_in):

    forward    recon[b]        = Σ_j v[b,j] W_dec[i[b,j]] + b_dec           (embedding_bag: gather + weighted sum)
    backward   ∂v[b,j]         = ⟨∂recon[b], W_dec[i[b,j]]⟩                  (one gathered dot product per code)
               ∂W_dec[n]       = Σ_{(b,j): i[b,j]=n} v[b,j] ∂recon[b]        (embedding_bag, transposed pattern)
               ∂W_enc[:, n]    = Σ_{(b,j): i[b,j]=n} ∂v[b,j] (x[b] − b_dec)  (the same, with the inputs)
               ∂b_enc[n]       = Σ_{(b,j): i[b,j]=n} ∂v[b,j]
               ∂b_dec (encoder) = −W_enc ∂b_enc                              (one [d_in, d_sae] matvec)

The selection (which k latents) is piecewise constant in the weights, so its gradient is zero; each kept value
is just pre[b, i] (through a ReLU for TopK/BatchTopK), exactly what autograd through ``topk`` + ``scatter``
into a dense z gives.  Only the encoder matmul (and the top-k over it) still scales with d_sae.

A batch of codes is stored as a flat COO list sorted by row (CSR-like): ``cols`` [N] latent ids, ``values`` [N],
``offsets`` [B] where each row starts, ``rows`` [N] the row of each entry.  TopK and AbsTopK have N = B·k and
``offsets = 0, k, 2k, …``; BatchTopK has N = B·k entries spread unevenly over the rows.

Everything here works on plain tensors (no module), on CPU and CUDA.  On CUDA the step never synchronises with
the host (no ``.item()``, no ``nonzero``, no ``bincount``).  On CPU, where a sync costs nothing, two choices
use one because it is faster there: BatchTopK finds its batch threshold from a sample (``_largest_flat``), and
AuxK lists the dead latents (``aux_method``).

Measured on the 2-core AMD EPYC (AVX2) VM this was written on, d_in 576, d_sae 4608, k 32, B 4096, fp32, at a
moderate load from other jobs: floor (encoder matmul + top-k) ≈ 215 ms, this step ≈ 270 ms, a dense autograd
step ≈ 1,160 ms, SAELens 6's TopK step ≈ 1,410 ms.  ``benchmarks/bench_step.py`` re-measures.

What did not pay off (measured, same sizes): gathering the k decoder rows ``W_dec[idx]`` and a batched matmul
(≈6× the embedding_bag kernels used here); ``torch.sparse.mm`` with COO codes (≈4× the embedding_bag decode);
the weight gradient of ``embedding_bag`` itself (a slow dense backward, ≈15×); ``index_add_`` of scaled rows (≈4×;
it materialises [B·k, d_in]); folding b_enc into the matmul as an extra input column (slower); bf16 on this CPU
(no AVX512-BF16: the bf16 encoder matmul took ≈20 s against 0.25 s in fp32).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("topk", "batchtopk", "abstopk")


# --- reusable buffers -----------------------------------------------------------------------------------------------


class Workspace:
    """Buffers for the big [B, d_sae] intermediates (pre-activations, |pre|, masks), reused from step to step.

    Why: on CPU a fresh tensor of tens of MB is a fresh ``mmap``, and touching it page-faults on every 4 KiB page.
    On the 2-core VM this was written on, writing |pre| ([4096, 4608] fp32) into a fresh tensor took 93 ms and
    into a reused one 16 ms.  A tensor taken from a workspace is overwritten by the next call that uses it.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``, backed by the buffer ``name`` (grown when too small)."""
        numel = 1
        for size in shape:
            numel *= size
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


def _take(workspace: Workspace | None, name: str, shape: tuple[int, ...], like: Tensor,
          dtype: torch.dtype | None = None) -> Tensor | None:
    if workspace is None:
        return None
    return workspace.take(name, shape, dtype or like.dtype, like.device)


# --- the sparse pattern of a batch of codes -------------------------------------------------------------------------


class Codes(NamedTuple):
    """A batch of B sparse code vectors over d_sae latents, as a flat list grouped by row."""

    values: Tensor  # [N] the kept values (differentiable)
    cols: Tensor  # [N] long, latent id of each value
    rows: Tensor  # [N] long, batch row of each value (non-decreasing)
    offsets: Tensor  # [B] long, index in ``cols`` where each row's entries start

    def dense(self, d_sae: int) -> Tensor:
        """The codes as a dense [B, d_sae] tensor (for logging and tests; it costs a [B, d_sae] write)."""
        z = self.values.new_zeros(self.offsets.shape[0], d_sae)
        return z.index_put((self.rows, self.cols), self.values, accumulate=True)


def _uniform_pattern(indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, k] latent ids -> (cols [B·k], rows [B·k], offsets [B]) for k entries in every row."""
    B, k = indices.shape
    rows = torch.arange(B, device=indices.device).repeat_interleave(k)
    offsets = torch.arange(0, B * k, k, device=indices.device)
    return indices.reshape(-1), rows, offsets


def _starts(sorted_ids: Tensor, n: int) -> Tensor:
    """Where each of the n groups starts in a list sorted by group id (empty groups included).  [N] -> [n]

    (``searchsorted`` rather than ``bincount``: on CUDA, bincount reads its input's max back to the host.)
    """
    return torch.searchsorted(sorted_ids, torch.arange(n, device=sorted_ids.device, dtype=sorted_ids.dtype))


def _by_latent(cols: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """The transposed pattern: ``order`` [N] listing the entries latent by latent, ``latent_offsets`` [d_sae].

    Sorted as int32: PyTorch's CPU sort of int64 keys is a parallel radix sort that stalls badly when the cores
    are shared (measured 2 ms alone, 300 ms beside other jobs); the int32 sort does not.
    """
    order = torch.argsort(cols.to(torch.int32))
    return order, _starts(cols.index_select(0, order), d_sae)


def _scatter_rows(order: Tensor, latent_offsets: Tensor, rows: Tensor, weights: Tensor, dense: Tensor) -> Tensor:
    """out[n] = Σ_{e: cols[e]=n} weights[e] · dense[rows[e]].   rows, weights [N], dense [B, d] -> [d_sae, d]

    Summing rows of ``dense`` into latent buckets is an embedding_bag over the entries listed latent by latent
    (``order``, ``latent_offsets`` from ``_by_latent``); it never builds the [N, d] block of scaled rows that
    ``index_add_`` would need.
    """
    return F.embedding_bag(rows.index_select(0, order), dense, latent_offsets,
                           per_sample_weights=weights.index_select(0, order), mode="sum")


def _gather_dot(cols: Tensor, rows: Tensor, offsets: Tensor, a: Tensor, table: Tensor) -> Tensor:
    """out[e] = ⟨a[rows[e]], table[cols[e]]⟩.   a [B, d], table [d_sae, d] -> [N]   (entries grouped by row)

    This is the gradient of embedding_bag with respect to its per-sample weights, so we call that kernel: it
    reads each table row once per use and never materialises the gathered [N, d] block.
    """
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(a, table, cols, offsets, rows, 0)


def _no_autocast(t: Tensor):
    """A context with autocast off on ``t``'s device: the sparse parts are cheap, so they stay in full precision."""
    return torch.autocast(t.device.type, enabled=False)


# --- the two autograd Functions -------------------------------------------------------------------------------------


class _SparseDecode(torch.autograd.Function):
    """recon [B, d_in] = Σ_e values[e] W_dec[cols[e]] summed per row (entries grouped by row)."""

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, cols: Tensor, rows: Tensor, offsets: Tensor, order: Tensor,
                latent_offsets: Tensor) -> Tensor:
        ctx.save_for_backward(values, W_dec, cols, rows, offsets, order, latent_offsets)
        with _no_autocast(W_dec):
            return F.embedding_bag(cols, W_dec, offsets, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec, cols, rows, offsets, order, latent_offsets = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = grad_W_dec = None
        with _no_autocast(W_dec):
            if ctx.needs_input_grad[0]:
                grad_values = _gather_dot(cols, rows, offsets, grad_out, W_dec)
            if ctx.needs_input_grad[1]:
                grad_W_dec = _scatter_rows(order, latent_offsets, rows, values, grad_out)
        return grad_values, grad_W_dec, None, None, None, None, None


class _SparseEncode(torch.autograd.Function):
    """values[e] = pre[rows[e], cols[e]] with pre = (x − b_dec) @ W_enc + b_enc, given ``pre`` already computed.

    The forward only gathers; the backward touches only the N selected entries of ∂pre.  Entries may come in
    any order (``order``/``latent_offsets`` list them latent by latent).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, cols: Tensor,
                rows: Tensor, order: Tensor, latent_offsets: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, cols, rows, order, latent_offsets)
        # A flat index_select: much quicker on CPU than the 2-D advanced indexing pre[rows, cols].
        return pre.reshape(-1).index_select(0, rows * pre.shape[1] + cols).to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x, W_enc, b_dec, cols, rows, order, latent_offsets = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        grad_values = grad_values.to(W_enc.dtype)
        d_sae = W_enc.shape[1]
        grad_x = grad_W_enc = grad_b_enc = grad_b_dec = None
        with _no_autocast(W_enc):
            if need_W:
                x_centered = x.to(W_enc.dtype) - b_dec
                # Built as [d_sae, d_in] rows and handed back transposed; autograd copies it into W_enc's layout.
                grad_W_enc = _scatter_rows(order, latent_offsets, rows, grad_values, x_centered).T
            if need_b_enc or need_b_dec:
                grad_b_enc = torch.zeros(d_sae, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, cols, grad_values)
            if need_b_dec:
                # pre[b] depends on b_dec through −b_dec @ W_enc, so ∂b_dec = −W_enc Σ_b ∂pre[b] = −W_enc ∂b_enc:
                # one matvec instead of the [B, d_in] gradient of the centred input.
                grad_b_dec = -(W_enc @ grad_b_enc)
            if need_x:
                # ∂x[b] = Σ_e ∂v[e] W_enc[:, cols[e]] over the row's entries: the same bucket sum with the roles of
                # rows and latents swapped (only needed when x itself is learned).
                by_row, row_offsets = _by_latent(rows, x.shape[0])
                grad_x = _scatter_rows(by_row, row_offsets, cols, grad_values, W_enc.T.contiguous()).to(x.dtype)
        return grad_x, grad_W_enc, grad_b_enc if need_b_enc else None, grad_b_dec, None, None, None, None, None


def _decode(values: Tensor, W_dec: Tensor, cols: Tensor, rows: Tensor, offsets: Tensor) -> Tensor:
    order, latent_offsets = _by_latent(cols, W_dec.shape[0])
    return _SparseDecode.apply(values.to(W_dec.dtype), W_dec, cols, rows, offsets, order, latent_offsets)


def _encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
    order, latent_offsets = _by_latent(cols, W_enc.shape[1])
    return _SparseEncode.apply(x, W_enc, b_enc, b_dec, pre.detach(), cols, rows, order, latent_offsets)


# --- public building blocks -----------------------------------------------------------------------------------------


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Σ_j values[b, j] · W_dec[indices[b, j]]: the decoder applied to sparse codes, without b_dec.

    indices [B, k] long and values [B, k]; or flat [N] lists grouped by row with ``offsets`` [B] (where each row
    starts).  W_dec [d_sae, d_in].  Returns [B, d_in].  Differentiable in values and W_dec at O(B·k·d_in) cost
    both ways; equal to ``dense_z @ W_dec`` with dense_z the codes scattered into [B, d_sae].
    """
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be [d_sae, d_in], got shape {tuple(W_dec.shape)}")
    if indices.dtype != torch.long:
        raise ValueError(f"indices must be a long tensor, got {indices.dtype}")
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must have the same shape")
    if offsets is None:
        if indices.dim() != 2:
            raise ValueError(f"without offsets, indices must be [B, k]; got shape {tuple(indices.shape)}")
        cols, rows, offsets = _uniform_pattern(indices)
        return _decode(values.reshape(-1), W_dec, cols, rows, offsets)
    if indices.dim() != 1 or offsets.dim() != 1:
        raise ValueError(f"with offsets, indices and offsets must be flat lists; got shapes "
                         f"{tuple(indices.shape)} and {tuple(offsets.shape)}")
    counts = torch.diff(offsets, append=offsets.new_tensor([indices.shape[0]]))
    # output_size spares CUDA a host sync to learn the length.
    rows = torch.repeat_interleave(torch.arange(offsets.shape[0], device=offsets.device), counts,
                                   output_size=indices.shape[0])
    return _decode(values, W_dec, indices, rows, offsets)


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, indices: Tensor,
                  pre: Tensor | None = None) -> Tensor:
    """pre[b, indices[b, j]] for pre = (x − b_dec) @ W_enc + b_enc, with a backward that costs O(B·k·d_in).

    x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in], indices [B, k] long.  ``pre`` [B, d_sae]
    (detached, any float dtype) is the pre-activation if already computed; it is recomputed otherwise.
    Returns [B, k], differentiable in x, W_enc, b_enc and b_dec.
    """
    if pre is None:
        pre = encoder_matmul(x, W_enc, b_enc, b_dec)
    cols, rows, _ = _uniform_pattern(indices)
    return _encode(x, W_enc, b_enc, b_dec, pre, cols, rows).reshape(indices.shape)


def encoder_matmul(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                   workspace: Workspace | None = None) -> Tensor:
    """pre = (x − b_dec) @ W_enc + b_enc, outside autograd.  [B, d_in] -> [B, d_sae]

    Under ``torch.autocast`` it runs in the autocast dtype (bf16 where that is fast); with a ``workspace`` the
    result lands in a reused buffer.
    """
    device_type = W_enc.device.type
    with torch.no_grad():
        x_centered = x.to(W_enc.dtype) - b_dec
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x_centered, W, b = x_centered.to(dtype), W_enc.to(dtype), b_enc.to(dtype)
        else:
            W, b = W_enc, b_enc
        out = _take(workspace, "pre", (x.shape[0], W.shape[1]), W)
        with _no_autocast(W):
            return torch.addmm(b, x_centered, W, out=out) if out is not None else torch.addmm(b, x_centered, W)


# --- selection ------------------------------------------------------------------------------------------------------


def _check_k(k: int, d_sae: int, what: str = "k") -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
        raise ValueError(f"{what} must be an int in [1, d_sae = {d_sae}], got {k!r}")


def _largest_flat(pre: Tensor, n: int, workspace: Workspace | None) -> Tensor:
    """Flat positions (ascending) of the n largest entries of pre [B, d_sae], ties broken by position.  [n]

    A full ``topk`` over all B·d_sae entries is slow on CPU (about 7× a row-wise top-k), so on CPU we guess a
    threshold a little below the n-th largest value from a fixed sample of entries, keep the entries above it
    (one compare pass), and finish exactly on those few candidates.  Too high a guess is detected and retried
    lower.  This needs host syncs, which are free on CPU; on CUDA the plain ``topk`` is fast and sync-free.
    """
    flat = pre.reshape(-1)
    total = flat.numel()
    if pre.device.type != "cpu" or n * 4 > total:
        return flat.topk(n, sorted=False).indices.sort().values
    generator = torch.Generator().manual_seed(0)  # a fixed sample: no draw from the caller's random stream
    sample = flat[torch.randint(0, total, (min(total, 1 << 17),), generator=generator)]
    margin = 1.2
    while True:
        # the threshold the sample puts just below the top n·margin entries
        above = min(sample.numel(), int(sample.numel() * n * margin / total) + 1)
        threshold = sample.kthvalue(sample.numel() - above + 1).values if above < sample.numel() else None
        if threshold is None:
            candidates = torch.arange(total)
            break
        mask = _take(workspace, "mask", (total,), flat, torch.bool)
        mask = torch.ge(flat, threshold, out=mask) if mask is not None else flat >= threshold
        candidates = mask.nonzero().squeeze(1)
        if candidates.numel() >= n:
            break
        margin *= 4
    values = flat[candidates]
    kth = values.kthvalue(values.numel() - n + 1).values  # the n-th largest value
    above, tied = values > kth, values == kth
    keep = above | (tied & (torch.cumsum(tied, 0) <= n - above.sum()))
    return candidates[keep]


def select(pre: Tensor, k: int, mode: str, workspace: Workspace | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Which latents each row keeps: (cols [N], rows [N], offsets [B]) grouped by row, no gradient.

    topk: the k largest pre per row (a kept non-positive value becomes 0 after the ReLU, like a dropped one);
    abstopk: the k largest |pre| per row; batchtopk: the N = B·k largest pre over the whole batch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pre.dim() != 2:
        raise ValueError(f"pre must be [B, d_sae], got shape {tuple(pre.shape)}")
    B, d_sae = pre.shape
    _check_k(k, d_sae)
    with torch.no_grad():
        if mode == "topk":
            indices = pre.topk(k, dim=-1, sorted=False).indices
        elif mode == "abstopk":
            scores = _take(workspace, "scores", pre.shape, pre)
            scores = torch.abs(pre, out=scores) if scores is not None else pre.abs()
            indices = scores.topk(k, dim=-1, sorted=False).indices
        else:
            # ReLU is monotone, so ranking pre ranks ReLU(pre).  Ascending flat positions are grouped by row.
            flat = _largest_flat(pre, B * k, workspace)
            rows, cols = flat // d_sae, flat % d_sae
            return cols, rows, _starts(rows, B)
        return _uniform_pattern(indices)


# --- AuxK -----------------------------------------------------------------------------------------------------------

AUX_METHODS = ("auto", "columns", "sparse", "masked")
# "columns" (dense GEMMs over the dead columns) beats "sparse" (gathers over the k_aux picks) until about this many
# dead latents per AuxK pick: measured at d_in 576, k_aux 288, B 4096, a step grew by 100 ms vs 245 ms (46 dead),
# 100 ms vs 700 ms (203 dead), and the two were even at 1161 dead.  (A GEMM does ~4× more multiply-adds per
# second than an embedding_bag gather here.)
COLUMNS_PER_PICK = 4


def _check_dead_mask(dead_mask: Tensor, d_sae: int) -> None:
    if dead_mask.shape != (d_sae,) or dead_mask.dtype != torch.bool:
        raise ValueError(f"dead_mask must be a bool tensor of shape ({d_sae},), "
                         f"got {dead_mask.dtype} {tuple(dead_mask.shape)}")


def _aux_picks_compact(pre: Tensor, dead_ids: Tensor, k_aux: int, signed: bool,
                       workspace: Workspace | None) -> tuple[Tensor, Tensor]:
    B = pre.shape[0]
    m = min(k_aux, dead_ids.numel())
    if m == 0:
        return torch.zeros(B, 0, dtype=torch.long, device=pre.device), pre.new_zeros(B, 0)
    sub = _take(workspace, "dead", (B, dead_ids.numel()), pre)
    sub = torch.index_select(pre, 1, dead_ids, out=sub) if sub is not None else pre.index_select(1, dead_ids)
    picked = (sub.abs_() if signed else sub).topk(m, dim=-1, sorted=False).indices
    return dead_ids[picked], pre.new_ones(B, m)


def _aux_picks_masked(pre: Tensor, dead_mask: Tensor, k_aux: int, signed: bool) -> tuple[Tensor, Tensor]:
    scores = (pre.abs() if signed else pre).masked_fill(~dead_mask, float("-inf"))
    indices = scores.topk(k_aux, dim=-1, sorted=False).indices
    return indices, dead_mask[indices].to(pre.dtype)


def auxk_select(pre: Tensor, dead_mask: Tensor, k_aux: int, signed: bool, compact: bool | None = None,
                workspace: Workspace | None = None) -> tuple[Tensor, Tensor]:
    """The top-k_aux dead latents of each row: (indices [B, m] long, keep [B, m] 0/1 of pre's dtype), no gradient.

    Dead latents compete by |pre| when ``signed`` (AbsTopK) and by pre (i.e. ReLU(pre)) otherwise.  ``keep`` is 0
    where a row ran out of dead latents (fewer than k_aux are dead), so those picks contribute nothing.
    ``compact`` (default: on CPU) gathers the dead columns first, m = min(k_aux, n_dead): cheaper when few are
    dead, but it needs a host sync, free on CPU.  Otherwise a mask keeps the step sync-free (m = k_aux).
    """
    _check_dead_mask(dead_mask, pre.shape[1])
    _check_k(k_aux, pre.shape[1], "k_aux")
    with torch.no_grad():
        if compact if compact is not None else pre.device.type == "cpu":
            return _aux_picks_compact(pre, dead_mask.nonzero().squeeze(1), k_aux, signed, workspace)
        return _aux_picks_masked(pre, dead_mask, k_aux, signed)


def _normalized_error(e: Tensor, e_hat: Tensor) -> Tensor:
    return (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss_from_codes(indices: Tensor, values: Tensor, residual: Tensor, W_dec: Tensor) -> Tensor:
    """‖e − ê‖² / ‖e − ē‖², ê = sparse_decode(indices, values, W_dec) (no b_dec), e = ``residual`` [B, d_in].

    indices, values [B, m].  The normalisation by the residual's own spread (sums over the batch; ē is its
    batch mean) is the ``normalized_mse`` of Gao et al.'s code: the loss is 1 for ê = ē, whatever the residual's
    scale.  Returns 0 when no latent was picked (m = 0).
    """
    e = residual.detach()
    if indices.shape[-1] == 0:
        return e.new_zeros(())
    return _normalized_error(e, sparse_decode(indices, values, W_dec))


def auxk_loss(pre: Tensor, dead_mask: Tensor, residual: Tensor, W_dec: Tensor, k_aux: int, signed: bool) -> Tensor:
    """AuxK (Gao et al. 2024): the top-k_aux *dead* latents of each row try to reconstruct the residual.

    pre [B, d_sae] (its gradient flows through the picked entries), dead_mask [d_sae] bool, residual [B, d_in]
    (x − recon, detached here), W_dec [d_sae, d_in].  Values are pre (signed) or ReLU(pre).  Returns the scalar
    ‖e − ê‖² / ‖e − ē‖² (see ``auxk_loss_from_codes``), 0 when no latent is dead.
    """
    indices, keep = auxk_select(pre.detach(), dead_mask, k_aux, signed)
    values = pre.gather(-1, indices)
    values = (values if signed else torch.relu(values)) * keep
    return auxk_loss_from_codes(indices, values, residual, W_dec) * dead_mask.any()  # 0 if none dead, no sync


class _DeadColumns(torch.autograd.Function):
    """pre[:, dead_ids] read from the encoder matmul's output, differentiable in W_enc, b_enc and b_dec.  [B, n_dead]

    Plain autograd through ``(x − b_dec) @ W_enc[:, dead_ids]`` would spend two [B, n_dead] × d_in products that
    are not needed: recomputing the columns (they are in ``pre`` already) and the gradient of the centred input
    (∂b_dec is −W_enc[:, dead] Σ_b ∂pre[b], one matvec, as in ``_SparseEncode``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, dead_ids: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, dead_ids)
        return pre.index_select(1, dead_ids).to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad_cols: Tensor):
        x, W_enc, b_dec, dead_ids = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        grad_cols = grad_cols.to(W_enc.dtype)
        grad_x = grad_W_enc = grad_b_enc = grad_b_dec = None
        with _no_autocast(W_enc):
            if need_x:  # only when x itself is learned; in training it is data
                grad_x = (grad_cols @ W_enc.index_select(1, dead_ids).T).to(x.dtype)
            if need_W:
                grad_W_enc = torch.zeros_like(W_enc).index_copy_(1, dead_ids, (x.to(W_enc.dtype) - b_dec).T @ grad_cols)
            column_sums = grad_cols.sum(0)
            if need_b_enc:
                grad_b_enc = torch.zeros(W_enc.shape[1], dtype=W_enc.dtype, device=W_enc.device)
                grad_b_enc.index_copy_(0, dead_ids, column_sums)
            if need_b_dec:
                grad_b_dec = -(W_enc.index_select(1, dead_ids) @ column_sums)
        return grad_x, grad_W_enc, grad_b_enc, grad_b_dec, None, None


def _auxk_on_dead_columns(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, pre: Tensor,
                          dead_ids: Tensor, k_aux: int, signed: bool, residual: Tensor) -> Tensor:
    """AuxK as a small dense SAE over the dead latents only: [B, n_dead] GEMMs on the decoder side.  Scalar.

    ``pre`` [B, d_sae] is the encoder matmul's output (detached); the dead columns are read from it.
    """
    dead_pre = _DeadColumns.apply(x, W_enc, b_enc, b_dec, pre, dead_ids)
    codes = dead_pre if signed else torch.relu(dead_pre)
    if k_aux < dead_ids.numel():
        idx = (codes.abs() if signed else codes).detach().topk(k_aux, dim=-1, sorted=False).indices
        codes = torch.zeros_like(codes).scatter(1, idx, codes.gather(1, idx))
    e_hat = codes @ W_dec.index_select(0, dead_ids)
    return _normalized_error(residual.detach(), e_hat.to(residual.dtype))


# --- the whole forward pass -----------------------------------------------------------------------------------------


class SparseForward(NamedTuple):
    recon: Tensor  # [B, d_in]
    codes: Codes  # the kept codes (values differentiable)
    pre: Tensor  # [B, d_sae] pre-activations, detached (a workspace buffer when one was given)
    aux_loss: Tensor  # scalar AuxK loss (0 without a dead mask)
    penalty: Tensor | None = None  # ReLU / JumpReLU (absae_lib.sparse_threshold): the unweighted sparsity penalty

    def fired(self, d_sae: int) -> Tensor:
        """[d_sae] bool: latents with a non-zero code somewhere in the batch."""
        nonzero = (self.codes.values != 0).float()
        return torch.zeros(d_sae, device=nonzero.device).index_add_(0, self.codes.cols, nonzero) > 0

    def l0(self) -> Tensor:
        """Mean number of non-zero codes per row (a scalar tensor)."""
        return (self.codes.values != 0).sum() / self.codes.offsets.shape[0]

    def min_positive(self) -> Tensor:
        """The smallest positive code in the batch, 0 if there is none (a scalar tensor; BatchTopK's threshold)."""
        values = self.codes.values.detach()
        smallest = torch.where(values > 0, values, torch.full_like(values, float("inf"))).min()
        return torch.where(torch.isinf(smallest), torch.zeros_like(smallest), smallest)


def sparse_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int, mode: str,
                   dead_mask: Tensor | None = None, k_aux: int | None = None, workspace: Workspace | None = None,
                   aux_method: str = "auto") -> SparseForward:
    """The k-sparse SAE forward pass with a sparse backward.  x [B, d_in] -> SparseForward.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; mode "topk", "batchtopk" or
    "abstopk".  Gradients reach all four parameters exactly as through the dense ``scatter`` + ``z @ W_dec``,
    but only the encoder matmul and the top-k scale with d_sae.  Under ``torch.autocast`` the encoder matmul
    runs in the autocast dtype; the sparse parts stay in the parameters' dtype.  Pass a ``Workspace`` (kept
    across steps) to reuse the [B, d_sae] buffers; ``pre`` is then overwritten by the next call.

    With ``dead_mask`` [d_sae] bool and ``k_aux``, also computes the AuxK loss (see ``auxk_loss``) on the
    detached residual x − recon.  ``aux_method`` picks how; all give the same loss and gradients:
    "columns" a dense SAE over the dead columns (best when few are dead), "sparse" the k_aux picks through the
    sparse Functions (best when many are dead), both after a host sync to list the dead latents; "masked" the
    sparse route without any sync (m = k_aux picks, live ones zeroed); "auto" = masked on CUDA, and on CPU
    columns when n_dead ≤ COLUMNS_PER_PICK·k_aux, else sparse.
    """
    if x.dim() != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"x must be [B, d_in = {W_enc.shape[0]}], got shape {tuple(x.shape)}")
    if W_dec.shape != W_enc.T.shape:
        raise ValueError(f"W_dec must be [d_sae, d_in] = {tuple(W_enc.T.shape)}, got {tuple(W_dec.shape)}")
    if (dead_mask is None) != (k_aux is None):
        raise ValueError("pass both dead_mask and k_aux for AuxK, or neither")
    if aux_method not in AUX_METHODS:
        raise ValueError(f"aux_method must be one of {', '.join(AUX_METHODS)}, got {aux_method!r}")
    d_sae = W_enc.shape[1]
    signed = mode == "abstopk"
    pre = encoder_matmul(x, W_enc, b_enc, b_dec, workspace)
    cols, rows, offsets = select(pre, k, mode, workspace)
    order, latent_offsets = _by_latent(cols, d_sae)

    # AuxK: decide how, and for the sparse routes pick the latents now (they share the encoder backward).
    aux_indices = dead_ids = None
    if dead_mask is not None:
        _check_dead_mask(dead_mask, d_sae)
        _check_k(k_aux, d_sae, "k_aux")
        if aux_method == "auto" and pre.device.type != "cpu":
            aux_method = "masked"
        with torch.no_grad():
            if aux_method == "masked":
                aux_indices, keep = _aux_picks_masked(pre, dead_mask, k_aux, signed)
            else:
                dead_ids = dead_mask.nonzero().squeeze(1)  # a host sync
                if dead_ids.numel() > 0 and (aux_method == "sparse" or
                                             (aux_method == "auto" and dead_ids.numel() > COLUMNS_PER_PICK * k_aux)):
                    aux_indices, keep = _aux_picks_compact(pre, dead_ids, k_aux, signed, workspace)

    if aux_indices is None:
        all_values = _SparseEncode.apply(x, W_enc, b_enc, b_dec, pre, cols, rows, order, latent_offsets)
    else:
        aux_cols, aux_rows, _ = _uniform_pattern(aux_indices)
        # One encoder backward for both sets of picks: concatenate them.
        all_values = _encode(x, W_enc, b_enc, b_dec, pre, torch.cat([cols, aux_cols]), torch.cat([rows, aux_rows]))
    if not signed:
        all_values = torch.relu(all_values)
    n_main = cols.shape[0]
    values = all_values if aux_indices is None else all_values[:n_main]
    recon = _SparseDecode.apply(values, W_dec, cols, rows, offsets, order, latent_offsets) + b_dec

    aux = recon.new_zeros(())
    if aux_indices is not None:
        aux_values = (all_values[n_main:] * keep.reshape(-1)).reshape(aux_indices.shape)
        aux = auxk_loss_from_codes(aux_indices, aux_values, x - recon, W_dec) * dead_mask.any()
    elif aux_indices is None and dead_ids is not None and dead_ids.numel() > 0:
        aux = _auxk_on_dead_columns(x, W_enc, b_enc, W_dec, b_dec, pre, dead_ids, k_aux, signed, x - recon)
    return SparseForward(recon=recon, codes=Codes(values, cols, rows, offsets), pre=pre, aux_loss=aux)


# --- one training step ----------------------------------------------------------------------------------------------


def batch_mse(x: Tensor, recon: Tensor) -> Tensor:
    """‖x − recon‖² summed over d_in and averaged over the batch.  [B, d_in], [B, d_in] -> scalar

    ``F.mse_loss`` is one kernel each way; sub + pow + sum + mean and their backward took 3× as long on the 2-core
    CPU here (8.3 against 2.7 ms at [4096, 576]).
    """
    return F.mse_loss(recon, x, reduction="sum") / x.shape[0]


@torch.no_grad()
def remove_parallel_grad_(W_dec: Tensor) -> None:
    """Drop the part of each decoder row's gradient along the row (it would only change the row's norm).

    g ← g − (⟨g, w⟩ / ‖w‖²) w row by row, in place, without [d_sae, d_in] temporaries (3 against 12 ms at
    [4608, 576] on the CPU here).
    """
    if W_dec.grad is None:
        return
    squared_norms = torch.linalg.vector_norm(W_dec, dim=-1).square_().clamp_min_(1e-16)
    along = torch.einsum("ij,ij->i", W_dec.grad, W_dec).div_(squared_norms)
    W_dec.grad.addcmul_(along.unsqueeze(-1), W_dec, value=-1)


@torch.no_grad()
def normalize_rows_(W_dec: Tensor) -> None:
    """Rescale every decoder row to unit norm, in place."""
    W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def fast_step(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, optimizer: torch.optim.Optimizer,
              x: Tensor, k: int, mode: str, dead_mask: Tensor | None = None, k_aux: int | None = None,
              aux_coefficient: float = 1 / 32, unit_norm_decoder: bool = True,
              workspace: Workspace | None = None, aux_method: str = "auto") -> dict[str, Tensor]:
    """One optimizer step on ‖x − recon‖² (summed over d_in, averaged over the batch) + aux_coefficient·AuxK.

    The four parameters are the leaf tensors ``optimizer`` updates.  With ``unit_norm_decoder`` the decoder's
    gradient loses its along-row part before the step and the rows are renormalised after it.  Returns scalar
    tensors (no host sync): loss, mse, aux, l0; and ``fired`` [d_sae] bool.
    """
    out = sparse_forward(x, W_enc, b_enc, W_dec, b_dec, k, mode, dead_mask, k_aux, workspace, aux_method)
    mse = batch_mse(x, out.recon)
    loss = mse + aux_coefficient * out.aux_loss if dead_mask is not None else mse
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if unit_norm_decoder:
        remove_parallel_grad_(W_dec)
    optimizer.step()
    if unit_norm_decoder:
        normalize_rows_(W_dec)
    return {"loss": loss.detach(), "mse": mse.detach(), "aux": out.aux_loss.detach(), "l0": out.l0(),
            "fired": out.fired(W_enc.shape[1])}

"""What one latent means: the tokens it fires on (with each sign), the tokens its decoder row promotes, its twin.

A TopK latent has one meaning: "more of direction d".  An AbsTopK latent has two: +d when its code is positive and
−d when it is negative.  To read both we look at each sign separately:

    scan_latents            one pass over the activations: per latent, firings of each sign, the top-n rows of
                            each sign, and (optionally) which word classes each sign fires on
    latent_sign_stats       just the per-latent counts of positive / negative firings
    top_activations         the top-n rows of one latent and one sign (a pass of its own)
    top_activating_contexts the same, as text with the firing token marked
    logit_lens              the tokens that +d and −d push up (in absae_lib.lens; re-exported here)
    decoder_antipodal_pairs decoder rows with cosine < −0.9: one axis split over two non-negative latents
    most_negative_cosine    each latent's most antipodal partner
    activation_tags         the Brown part-of-speech class of the token behind every activation row
    pole_signature          do the two poles fire on different words?  (these three live in
    chance_signature        absae_lib.word_classes and are re-exported here)

The semantic test of bidirectionality on labelled concept axes is :mod:`absae_lib.bidirectional`.

Shapes: ``n`` activation rows, model width ``d`` (= the SAE's d_in), dictionary ``d_sae``, ``C`` word classes.
Nothing here holds the [n, d_sae] codes: activations are encoded a batch at a time and only running sums, counts and
top-n buffers are kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib.activations import ActivationStore
from absae_lib.lens import LogitLens, lens_directions, logit_lens, whole_word_ids  # noqa: F401 (re-exported)
from absae_lib.sae import SAE
from absae_lib.word_classes import (  # noqa: F401 (re-exported)
    GRAMMATICAL_AXES, WORD_CLASSES, PoleSignature, activation_tags, chance_signature, pole_signature, word_class,
)

Positions = tuple[Tensor, Tensor]  # (token row [n], position in that row [n]) of each activation row

# ----------------------------------------------------------------------------------------------------------------
# Encoding activations a batch at a time


def _as_rows(acts: Tensor | np.ndarray | ActivationStore) -> Tensor | np.ndarray:
    """An indexable [n, d] view of ``acts`` (an ActivationStore is memory-mapped, never read whole)."""
    if isinstance(acts, ActivationStore):
        return acts.tensor()
    if not isinstance(acts, (Tensor, np.ndarray)):
        raise ValueError(f"acts must be a tensor, a numpy array or an ActivationStore, got {type(acts).__name__}")
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"acts must be a non-empty 2-D array [n, d], got shape {tuple(acts.shape)}")
    return acts


def iter_codes(
    sae: SAE, acts: Tensor | np.ndarray | ActivationStore, batch_size: int = 4096, progress: bool = True
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first_row, codes)`` per batch, codes [b, d_sae] fp32 on the SAE's device (eval mode, no grad).

    ``acts`` [n, d_in]: a tensor (any dtype, e.g. a bf16 memmap), a numpy array or an ActivationStore.
    """
    rows = _as_rows(acts)
    if rows.shape[1] != sae.cfg.d_in:
        raise ValueError(
            f"acts have width {rows.shape[1]} but the SAE expects d_in = {sae.cfg.d_in} (another hook or model?)"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = sae.W_enc.device
    was_training = sae.training
    sae.eval()  # BatchTopK uses its inference threshold in eval mode
    try:
        # no_grad, not inference_mode: the callers keep running sums that must stay ordinary tensors.
        with torch.no_grad():
            for start in tqdm(range(0, rows.shape[0], batch_size), desc="encode", disable=not progress, leave=False):
                x = rows[start:start + batch_size]
                x = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x
                yield start, sae.encode(x.to(device, torch.float32)).float()
    finally:
        sae.train(was_training)


# ----------------------------------------------------------------------------------------------------------------
# One pass: sign counts, top rows of each sign, word classes of each sign


class SignStats(NamedTuple):
    """How often each latent fires with each sign."""

    n_positive: Tensor  # [d_sae] int64: tokens where the code is > 0
    n_negative: Tensor  # [d_sae] int64: tokens where the code is < 0
    n_tokens: int

    @property
    def n_firings(self) -> Tensor:
        """[d_sae] tokens where the latent is non-zero."""
        return self.n_positive + self.n_negative

    @property
    def share_negative(self) -> Tensor:
        """[d_sae] share of a latent's firings that are negative (nan for a latent that never fires)."""
        total = self.n_firings.double()
        return torch.where(total > 0, self.n_negative.double() / total.clamp_min(1), torch.full_like(total, torch.nan))

    def both_signs(self, min_share: float = 0.1, min_count: int = 20) -> Tensor:
        """[d_sae] bool: latents used substantially with both signs.

        The rarer sign must carry at least ``min_share`` of the latent's firings and at least ``min_count`` of them
        (so that a handful of near-zero negative codes does not make a latent "bidirectional").
        """
        if not 0 <= min_share <= 0.5:
            raise ValueError(f"min_share is the rarer sign's share of the firings, in [0, 0.5]; got {min_share}")
        rarer = torch.minimum(self.n_positive, self.n_negative)
        return (rarer >= min_count) & (rarer.double() >= min_share * self.n_firings.double()) & (rarer > 0)


class LatentScan(NamedTuple):
    """Everything :func:`scan_latents` gathered in its pass.  Rows index the scanned activations (0 .. n − 1)."""

    n_positive: Tensor  # [d_sae] int64
    n_negative: Tensor  # [d_sae] int64
    sum_positive: Tensor  # [d_sae] float64: Σ of the positive codes
    sum_negative: Tensor  # [d_sae] float64: Σ of the negative codes (≤ 0)
    top_positive: Tensor  # [d_sae, top_n] largest positive codes, descending (0 where fewer fired)
    top_positive_rows: Tensor  # [d_sae, top_n] their rows (−1 where fewer fired)
    top_negative: Tensor  # [d_sae, top_n] most negative codes, ascending (0 where fewer fired)
    top_negative_rows: Tensor  # [d_sae, top_n] their rows (−1 where fewer fired)
    positive_labels: Tensor | None  # [d_sae, C] int64: positive firings per label class (None without labels)
    negative_labels: Tensor | None  # [d_sae, C] int64: negative firings per label class
    n_tokens: int

    @property
    def signs(self) -> SignStats:
        return SignStats(self.n_positive, self.n_negative, self.n_tokens)

    @property
    def mean_positive(self) -> Tensor:
        """[d_sae] mean positive code (nan where the latent never fired positively)."""
        return self.sum_positive / self.n_positive.double().where(self.n_positive > 0, torch.nan)

    @property
    def mean_negative(self) -> Tensor:
        """[d_sae] mean negative code (nan where the latent never fired negatively)."""
        return self.sum_negative / self.n_negative.double().where(self.n_negative > 0, torch.nan)

    def top(self, latent: int, sign: int = 1) -> tuple[Tensor, Tensor]:
        """(values [m], rows [m]) of ``latent``'s top firings with ``sign``, strongest first; m ≤ top_n."""
        _check_sign(sign)
        if sign > 0:
            values, rows = self.top_positive, self.top_positive_rows
        else:
            values, rows = self.top_negative, self.top_negative_rows
        keep = rows[latent] >= 0
        return values[latent][keep], rows[latent][keep]


def _check_sign(sign: int) -> None:
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (positive codes) or -1 (negative codes), got {sign!r}")


def _merge_top(best_v: Tensor, best_r: Tensor, v: Tensor, r: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Keep the n largest of two [d_sae, ·] candidate sets (values and rows), sorted descending."""
    values = torch.cat([best_v, v], dim=1)
    rows = torch.cat([best_r, r], dim=1)
    top_v, j = values.topk(n, dim=1)
    return top_v, rows.gather(1, j)


def _top_per_latent(latent: Tensor, value: Tensor, row: Tensor, d_sae: int, n: int) -> tuple[Tensor, Tensor]:
    """The n largest ``value`` of each latent among sparse entries (latent [m], value [m] > 0, row [m]).

    Returns ([d_sae, n] values descending, 0-padded; [d_sae, n] rows, −1-padded).  Sorting the m non-zero entries
    is much cheaper than a top-n over a dense [d_sae, batch] matrix when codes are sparse.
    """
    order = value.argsort(descending=True)
    latent, value, row = latent[order], value[order], row[order]
    order = latent.argsort(stable=True)  # group by latent, keeping the descending order inside each group
    latent, value, row = latent[order], value[order], row[order]
    counts = torch.bincount(latent, minlength=d_sae)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(latent), device=latent.device) - starts[latent]
    keep = rank < n
    values = torch.zeros(d_sae, n, device=value.device, dtype=value.dtype)
    rows = torch.full((d_sae, n), -1, dtype=torch.int64, device=row.device)
    values[latent[keep], rank[keep]] = value[keep]
    rows[latent[keep], rank[keep]] = row[keep]
    return values, rows


def scan_latents(
    sae: SAE,
    acts: Tensor | np.ndarray | ActivationStore,
    top_n: int = 10,
    labels: Tensor | None = None,
    n_labels: int | None = None,
    batch_size: int = 4096,
    progress: bool = True,
) -> LatentScan:
    """One pass over ``acts`` [n, d_in]: per latent, sign counts and sums, its ``top_n`` rows of each sign and,
    with ``labels`` [n] (class ids in 0 .. n_labels − 1, or −1 for "no label"), its firings per class and sign.

    Memory: O(d_sae · (top_n + n_labels)) plus one batch of codes [batch_size, d_sae]; never [n, d_sae].
    Work per batch is one encode plus O(nnz log nnz) on the batch's non-zero codes.
    """
    if not isinstance(top_n, int) or top_n < 0:
        raise ValueError(f"top_n must be a non-negative int, got {top_n!r}")
    n_rows = _as_rows(acts).shape[0]
    d_sae, device = sae.cfg.d_sae, sae.W_enc.device
    if labels is not None:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (n_rows,):
            raise ValueError(f"labels must be [n] = [{n_rows}] (one class id per activation row), "
                             f"got {tuple(labels.shape)}")
        n_labels = n_labels if n_labels is not None else int(labels.max()) + 1
        if int(labels.max()) >= n_labels or int(labels.min()) < -1:
            raise ValueError(f"labels must lie in -1 .. {n_labels - 1} (-1: no label)")
        labels = labels.to(device)
        label_counts = {1: torch.zeros(d_sae * n_labels, dtype=torch.int64, device=device),
                        -1: torch.zeros(d_sae * n_labels, dtype=torch.int64, device=device)}
    counts = {s: torch.zeros(d_sae, dtype=torch.int64, device=device) for s in (1, -1)}
    sums = {s: torch.zeros(d_sae, dtype=torch.float64, device=device) for s in (1, -1)}
    # Top buffers hold |code| (so "largest" works for both signs), 0 with row −1 where nothing fired yet.
    top = {s: (torch.zeros(d_sae, top_n, device=device),
               torch.full((d_sae, top_n), -1, dtype=torch.int64, device=device)) for s in (1, -1)}

    for start, codes in iter_codes(sae, acts, batch_size, progress):
        row, latent = codes.nonzero(as_tuple=True)  # the k-sparse codes: work on the non-zeros only
        value = codes[row, latent]
        for sign in (1, -1):
            mask = value > 0 if sign > 0 else value < 0
            lat, val, r = latent[mask], value[mask], row[mask]
            counts[sign] += torch.bincount(lat, minlength=d_sae)
            sums[sign] += torch.bincount(lat, weights=val.double(), minlength=d_sae)
            if top_n:
                v, rr = _top_per_latent(lat, val.abs(), r + start, d_sae, top_n)
                top[sign] = _merge_top(*top[sign], v, rr, top_n)
            if labels is not None:
                lab = labels[start + r]
                has = lab >= 0
                label_counts[sign] += torch.bincount(lat[has] * n_labels + lab[has], minlength=d_sae * n_labels)

    def cpu(t: Tensor) -> Tensor:
        return t.cpu()

    (pos_v, pos_r), (neg_v, neg_r) = top[1], top[-1]
    return LatentScan(
        n_positive=cpu(counts[1]), n_negative=cpu(counts[-1]), sum_positive=cpu(sums[1]), sum_negative=cpu(sums[-1]),
        top_positive=cpu(pos_v), top_positive_rows=cpu(pos_r), top_negative=cpu(-neg_v), top_negative_rows=cpu(neg_r),
        positive_labels=cpu(label_counts[1].view(d_sae, n_labels)) if labels is not None else None,
        negative_labels=cpu(label_counts[-1].view(d_sae, n_labels)) if labels is not None else None,
        n_tokens=n_rows,
    )


def latent_sign_stats(
    sae: SAE, acts: Tensor | np.ndarray | ActivationStore, batch_size: int = 4096, progress: bool = True
) -> SignStats:
    """Per-latent counts of positive and negative firings on ``acts`` [n, d_in] (all 0 negatives for TopK)."""
    return scan_latents(sae, acts, top_n=0, batch_size=batch_size, progress=progress).signs


def top_activations(
    sae: SAE,
    acts: Tensor | np.ndarray | ActivationStore,
    latent: int,
    sign: int = 1,
    n: int = 10,
    batch_size: int = 4096,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """The ``n`` rows of ``acts`` [n_rows, d_in] where ``latent``'s code is largest (``sign=+1``) or most negative
    (``sign=-1``): (values [m], rows [m]), strongest first, m ≤ n (only rows where it fired with that sign)."""
    _check_sign(sign)
    if not 0 <= latent < sae.cfg.d_sae:
        raise ValueError(f"latent must lie in 0 .. {sae.cfg.d_sae - 1}, got {latent}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    best_v, best_r = torch.zeros(1, n), torch.full((1, n), -1, dtype=torch.int64)
    for start, codes in iter_codes(sae, acts, batch_size, progress):
        column = sign * codes[:, latent].cpu()  # [b], larger = stronger firing with this sign
        v, i = column.topk(min(n, len(column)))
        best_v, best_r = _merge_top(best_v, best_r, v[None], i[None] + start, n)
    keep = best_v[0] > 0
    return sign * best_v[0][keep], best_r[0][keep]


# ----------------------------------------------------------------------------------------------------------------
# Rows -> text


def context(
    tokens: Tensor, seq: int, pos: int, tokenizer, window: int = 12, after: int = 4
) -> tuple[str, str, str]:
    """(text before, the token, text after) around ``tokens[seq, pos]``: ``window`` tokens before, ``after`` after.

    tokens [n_seq, seq_len].  Line breaks are shown as "↵" so that a context stays on one line, and the token's
    leading space goes to the text before, so that a marked token reads "it «is»", not "it« is»".
    """
    row = tokens[seq].tolist()

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids).replace("\n", "↵") if ids else ""

    before, token = text(row[max(0, pos - window):pos]), text([row[pos]])
    word = token.lstrip(" ")
    if word:
        before, token = before + token[:len(token) - len(word)], word
    return before, token, text(row[pos + 1:pos + 1 + after])


def contexts_for_rows(
    rows: Tensor | Sequence[int],
    values: Tensor | Sequence[float],
    tokens: Tensor,
    positions: Positions,
    tokenizer,
    window: int = 12,
    after: int = 4,
) -> list[tuple[str, float]]:
    """[(context with the firing token marked «like this», value)] for activation ``rows``.

    ``positions`` = (token row [n], position [n]) of every activation row, e.g. ``ActivationStore.positions()``;
    ``tokens`` [n_seq, seq_len] the token rows they index, e.g. ``ActivationStore.tokens()``.
    """
    seqs, pos = positions
    out = []
    for row, value in zip(torch.as_tensor(rows).tolist(), torch.as_tensor(values).tolist()):
        before, token, rest = context(tokens, int(seqs[row]), int(pos[row]), tokenizer, window, after)
        out.append((f"{before}«{token}»{rest}", float(value)))
    return out


def top_activating_contexts(
    sae: SAE,
    store_or_acts: ActivationStore | Tensor | np.ndarray,
    tokens: Tensor | None,
    positions: Positions | None,
    latent: int,
    sign: int = 1,
    n: int = 10,
    window: int = 12,
    *,
    tokenizer,
    after: int = 4,
    batch_size: int = 4096,
) -> list[tuple[str, float]]:
    """The top ``n`` firings of ``latent`` with ``sign`` as [(text with the token marked «…», code value)].

    Scans ``store_or_acts`` [n_rows, d_in] in batches (one pass; use :func:`scan_latents` to look at many latents).
    With an ActivationStore, ``tokens`` and ``positions`` may be None: the store's own are used.
    ``tokenizer``: anything with ``decode(list[int]) -> str`` (``model.tokenizer``).
    """
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise ValueError("top_activating_contexts needs tokenizer= (e.g. model.tokenizer) to turn tokens into text")
    if isinstance(store_or_acts, ActivationStore):
        tokens = store_or_acts.tokens() if tokens is None else tokens
        positions = store_or_acts.positions() if positions is None else positions
    if tokens is None or positions is None:
        raise ValueError("pass tokens [n_seq, seq_len] and positions (token row [n], position [n]) for raw activations")
    if len(positions[0]) != _as_rows(store_or_acts).shape[0]:
        raise ValueError(
            f"positions describe {len(positions[0])} rows but the activations have {_as_rows(store_or_acts).shape[0]}: "
            "slice them together (ActivationStore(folder, start, stop).positions())"
        )
    values, rows = top_activations(sae, store_or_acts, latent, sign, n, batch_size)
    return contexts_for_rows(rows, values, tokens, positions, tokenizer, window, after)


# ----------------------------------------------------------------------------------------------------------------
# Decoder geometry: antipodal rows


def decoder_antipodal_pairs(
    W_dec: Tensor | SAE, threshold: float = -0.9, block_size: int = 2048
) -> list[tuple[int, int, float]]:
    """[(i, j, cosine)], i < j, for decoder rows with cosine < ``threshold``.  W_dec [d_sae, d] (or an SAE).

    A non-negative SAE needs such a pair for every axis it represents (one latent per pole); see
    :func:`absae_lib.probing.antipodal_pairs`, which this calls.
    """
    from absae_lib.probing import antipodal_pairs

    return antipodal_pairs(W_dec.W_dec if isinstance(W_dec, SAE) else W_dec, threshold, block_size)


@torch.no_grad()
def most_negative_cosine(W_dec: Tensor | SAE, block_size: int = 2048) -> tuple[Tensor, Tensor]:
    """Each decoder row's most antipodal partner: (cosine [d_sae], partner [d_sae]).  W_dec [d_sae, d].

    Compared a block of rows at a time (memory block_size × d_sae).  A row is never its own partner.
    """
    W = W_dec.W_dec if isinstance(W_dec, SAE) else W_dec
    if W.dim() != 2 or W.shape[0] < 2:
        raise ValueError(f"W_dec must be 2-D [d_sae, d] with at least 2 rows, got shape {tuple(W.shape)}")
    rows = W.detach().float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos_min = torch.empty(rows.shape[0], device=rows.device)
    partner = torch.empty(rows.shape[0], dtype=torch.int64, device=rows.device)
    for s in range(0, rows.shape[0], block_size):
        cos = rows[s:s + block_size] @ rows.T  # [b, d_sae]
        idx = torch.arange(cos.shape[0], device=rows.device)
        cos[idx, idx + s] = 2.0  # not its own partner
        cos_min[s:s + block_size], partner[s:s + block_size] = cos.min(dim=1)
    return cos_min.cpu(), partner.cpu()

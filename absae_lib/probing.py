"""Probing SAE latents for a concept, and the adapters that let signed (AbsTopK) SAEs be scored like the others.

The rule that keeps these numbers honest: **split first, then select**. Latents are chosen, thresholds set and
probes fitted on the train split only; the test split is touched once, to score.

    select_latents        rank latents by the gap between the class means of their codes (train split)
    sparse_probe          logistic regression on the k best latents            (SAEBench-style k-sparse probing)
    single_latent_accuracy  the best single latent with a threshold set on train
    dense_probe           logistic regression on the raw activations          (the ceiling)
    signed_to_nonneg      an AbsTopK SAE seen as a 2×-wide non-negative SAE: decoder [D; −D], codes ReLU([z, −z])
    nonneg_view_check     the view reconstructs and encodes exactly like the SAE; what probes see through it
    antipodal_pairs       decoder rows pointing in opposite directions (one axis split into two latents)
    probe_task            all of the above for one labelled task and several SAEs, plus the DiM and dense baselines

Shapes: ``n`` examples, ``d_sae`` latents, ``d`` model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from absae_lib.sae import SAE, SAEOutput

PROBE_KS = (1, 2, 5, 10, 20)


def _binary_labels(labels: Tensor | np.ndarray, n: int, what: str) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != n:
        raise ValueError(f"{what} must be 1-D with one label per row ({n}), got shape {tuple(labels.shape)}")
    values = set(labels.unique().tolist())
    if values != {0, 1}:
        raise ValueError(f"{what} must hold both classes 0 and 1 (binary), got values {sorted(values)}")
    return labels.long()


def _check_codes(codes: Tensor, what: str) -> Tensor:
    if codes.dim() != 2:
        raise ValueError(f"{what} must be 2-D [n, d_sae], got shape {tuple(codes.shape)}")
    return codes.float()


@torch.no_grad()
def encode_all(sae, acts: Tensor, batch_size: int = 4096) -> Tensor:
    """``sae.encode`` over ``acts`` [n, d_in] in batches, on the SAE's device.  -> codes [n, d_sae] fp32 on the CPU.

    The SAE should be in eval mode (BatchTopK uses its inference threshold there).
    """
    device = next(sae.parameters()).device
    parts = [sae.encode(acts[s:s + batch_size].to(device).float()).float().cpu() for s in range(0, len(acts), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, sae.cfg.d_sae)


# ----------------------------------------------------------------------------------------------------------------
# Latent selection


class LatentSelection(NamedTuple):
    indices: Tensor  # LongTensor [k], best first
    mean_diff: Tensor  # [k] mean code on label 1 − mean code on label 0 (its sign says which class the latent marks)


def mean_code_difference(codes: Tensor, labels: Tensor) -> Tensor:
    """mean(codes | label 1) − mean(codes | label 0) per latent.  codes [n, d_sae], labels [n] 0/1 -> [d_sae]."""
    codes = _check_codes(codes, "codes")
    pos = _binary_labels(labels, len(codes), "labels").bool().to(codes.device)
    return codes[pos].mean(0) - codes[~pos].mean(0)


def select_latents(codes_train: Tensor, labels: Tensor, k: int, signed: bool) -> LatentSelection:
    """The k latents whose codes differ most between the classes, on the train split.

    Both kinds of SAE are ranked by |mean code on label 1 − mean code on label 0|:

    - signed (AbsTopK): one latent can take +a on one class and −a on the other, a gap of 2a; both poles of the
      axis count for the same latent.
    - non-negative (ReLU, TopK, JumpReLU): a latent that fires for the *negative* class has a negative difference
      and is just as informative, so it is ranked by the absolute value too. The sign in ``mean_diff`` tells the
      two kinds apart; a concept axis typically needs one latent of each sign here.

    ``signed`` states what the codes are: with ``signed=False`` negative codes are an error (AbsTopK codes passed
    as if they came from a ReLU SAE; use :func:`signed_to_nonneg` to view them that way).

    Args:
        codes_train: [n_train, d_sae] codes of the train split.
        labels: [n_train] 0/1.
        k: how many latents.
        signed: whether the SAE's codes may be negative.

    Returns:
        LatentSelection(indices [k] best first, mean_diff [k]).
    """
    codes_train = _check_codes(codes_train, "codes_train")
    if not 1 <= k <= codes_train.shape[1]:
        raise ValueError(f"k must be between 1 and d_sae = {codes_train.shape[1]}, got {k}")
    if not signed and (codes_train < 0).any():
        raise ValueError("codes_train has negative entries but signed=False; pass signed=True for an AbsTopK SAE "
                         "(or view it with signed_to_nonneg)")
    diff = mean_code_difference(codes_train, labels)
    order = diff.abs().argsort(descending=True, stable=True)[:k]  # stable: ties keep latent order (deterministic)
    return LatentSelection(order.cpu(), diff[order].cpu())


# ----------------------------------------------------------------------------------------------------------------
# Probes


def _logistic_regression(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                         C: float, max_iter: int) -> dict[str, float]:
    # Standardise first: codes and residual coordinates have wildly different scales, and L2-regularised logistic
    # regression is not scale-invariant.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(X_train, y_train)
    correct = probe.predict(X_test) == y_test
    return {"accuracy": float(correct.mean()), "train_accuracy": float(probe.score(X_train, y_train)),
            "correct": correct}


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def sparse_probe(
    codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, k: int, signed: bool | None = None,
    C: float = 1.0, max_iter: int = 1000,
) -> dict[str, Any]:
    """k-sparse probe: logistic regression on the k latents chosen by :func:`select_latents` on the train split.

    Args:
        codes_train: [n_train, d_sae]; y_train: [n_train] 0/1.
        codes_test: [n_test, d_sae]; y_test: [n_test] 0/1.
        k: number of latents.
        signed: whether codes may be negative; None = read it off the train codes.
        C: inverse L2 strength of the logistic regression (on standardised latents).

    Returns:
        {"k", "accuracy" (test), "train_accuracy", "correct" (bool [n_test] per test row), "latents" (list of
        ids, best first), "mean_diff" (their signed mean differences)}.
    """
    codes_train, codes_test = _check_codes(codes_train, "codes_train"), _check_codes(codes_test, "codes_test")
    if codes_test.shape[1] != codes_train.shape[1]:
        raise ValueError(f"codes_train and codes_test must have the same d_sae, got {codes_train.shape[1]} and "
                         f"{codes_test.shape[1]}")
    y_train = _binary_labels(y_train, len(codes_train), "y_train")
    y_test = torch.as_tensor(y_test).long()
    if signed is None:
        signed = bool((codes_train < 0).any())
    selection = select_latents(codes_train, y_train, k, signed)
    idx = selection.indices.to(codes_train.device)
    X_train, X_test = _numpy(codes_train[:, idx]), _numpy(codes_test[:, idx.to(codes_test.device)])
    scores = _logistic_regression(X_train, y_train.numpy(), X_test, y_test.numpy(), C, max_iter)
    return {"k": k, **scores, "latents": selection.indices.tolist(), "mean_diff": selection.mean_diff.tolist()}


def sparse_probe_sweep(
    codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, ks: tuple[int, ...] = PROBE_KS,
    signed: bool | None = None,
) -> list[dict[str, Any]]:
    """:func:`sparse_probe` for every k in ``ks`` (k larger than d_sae is skipped). One dict per k."""
    return [sparse_probe(codes_train, y_train, codes_test, y_test, k, signed) for k in ks if k <= codes_train.shape[1]]


def _best_thresholds(values: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best train accuracy of a one-latent threshold classifier, for every column of ``values``.

    values [n, m], labels [n] 0/1 -> (accuracy [m], threshold [m], direction [m] = +1 predict 1 above, −1 below).
    Sort each column; a cut after sorted row i predicts label 0 for rows ≤ i and 1 above, with accuracy
    (#label-0 in rows ≤ i + #label-1 above) / n. Cuts between two equal values are not real cuts and are skipped.
    """
    n = values.shape[0]
    sorted_vals, order = values.sort(dim=0)
    y = labels.float()[order]  # [n, m] labels in sorted order
    neg_below = torch.cumsum(1 - y, dim=0)  # label-0 rows at or below i
    pos_above = y.sum(0, keepdim=True) - torch.cumsum(y, dim=0)  # label-1 rows above i
    acc = (neg_below + pos_above) / n  # [n, m]; cut after row i (row n-1: predict all 0)
    all_pos = y.mean(0, keepdim=True)  # cut below every row: predict all 1
    acc = torch.cat([all_pos, acc], dim=0)  # [n + 1, m]; row c = cut after c rows
    valid = torch.ones_like(acc, dtype=torch.bool)
    valid[1:n] = sorted_vals[1:] > sorted_vals[:-1]  # a cut between two rows needs them to differ
    acc_up = torch.where(valid, acc, torch.full_like(acc, -1.0))
    acc_down = torch.where(valid, 1 - acc, torch.full_like(acc, -1.0))  # the same cut, predicting 1 below
    best_up, cut_up = acc_up.max(0)
    best_down, cut_down = acc_down.max(0)
    direction = torch.where(best_down > best_up, -1, 1)
    cut = torch.where(direction > 0, cut_up, cut_down)
    # Threshold halfway between the rows around the cut (below the minimum / above the maximum at the ends).
    padded = torch.cat([sorted_vals[:1] - 1, sorted_vals, sorted_vals[-1:] + 1], dim=0)  # [n + 2, m]
    cols = torch.arange(values.shape[1], device=values.device)
    threshold = (padded[cut, cols] + padded[cut + 1, cols]) / 2
    return torch.maximum(best_up, best_down), threshold, direction


def single_latent_accuracy(
    codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, latents: Tensor | list[int] | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """The best single latent as a classifier: latent, threshold and direction all chosen on the train split.

    Every candidate latent (all of them, or ``latents``) gets its best train threshold; the latent with the best
    train accuracy wins (lowest id on ties) and is then scored on test.

    Args:
        codes_train: [n_train, d_sae]; y_train: [n_train] 0/1.
        codes_test: [n_test, d_sae]; y_test: [n_test] 0/1.
        latents: candidate latent ids; None = all.
        chunk: latents scored at a time (memory: n_train × chunk).

    Returns:
        {"latent", "threshold", "direction" (+1: predict label 1 above the threshold), "train_accuracy",
        "accuracy" (test), "correct" (bool [n_test] per test row)}.
    """
    codes_train, codes_test = _check_codes(codes_train, "codes_train"), _check_codes(codes_test, "codes_test")
    y_train = _binary_labels(y_train, len(codes_train), "y_train").to(codes_train.device)
    candidates = torch.arange(codes_train.shape[1]) if latents is None else torch.as_tensor(latents).long().cpu()
    best: tuple[float, int, float, int] | None = None
    for s in range(0, len(candidates), chunk):
        ids = candidates[s:s + chunk]
        acc, thr, direction = _best_thresholds(codes_train[:, ids.to(codes_train.device)], y_train)
        j = int(acc.argmax())  # first maximum: lowest position on ties
        if best is None or acc[j].item() > best[0]:
            best = (acc[j].item(), int(ids[j]), thr[j].item(), int(direction[j]))
    train_acc, latent, threshold, direction = best
    y_test = torch.as_tensor(y_test).long().to(codes_test.device)
    values = codes_test[:, latent]
    predicted = values > threshold if direction > 0 else values <= threshold
    correct = (predicted.long() == y_test).cpu().numpy()
    return {"latent": latent, "threshold": threshold, "direction": direction, "train_accuracy": train_acc,
            "accuracy": float(correct.mean()), "correct": correct}


def dense_probe(acts_train: Tensor, y_train: Tensor, acts_test: Tensor, y_test: Tensor, C: float = 1.0,
                max_iter: int = 2000) -> dict[str, float]:
    """Logistic regression on the raw activations: what any linear read-out of this layer reaches (the ceiling).

    acts_train [n_train, d], acts_test [n_test, d], labels class ids.
    Returns {"accuracy", "train_accuracy", "correct" (bool [n_test])}.
    """
    if acts_train.dim() != 2 or acts_test.dim() != 2:
        raise ValueError(f"acts must be 2-D [n, d], got {tuple(acts_train.shape)} and {tuple(acts_test.shape)}")
    return _logistic_regression(_numpy(acts_train), torch.as_tensor(y_train).numpy(), _numpy(acts_test),
                                torch.as_tensor(y_test).numpy(), C, max_iter)


# ----------------------------------------------------------------------------------------------------------------
# A signed SAE seen as a non-negative one


@dataclass
class NonNegViewConfig:
    """The cfg fields tools read from an SAE (SAELens names)."""

    d_in: int
    d_sae: int
    architecture: str
    k: int | None
    metadata: dict[str, Any] = field(default_factory=dict)


class NonNegView(nn.Module):
    """A signed SAE presented as a non-negative SAE twice as wide.

    Latent i < d_sae is the positive pole of the original latent i (decoder row +D_i, code ReLU(z_i)); latent
    d_sae + i is its negative pole (row −D_i, code ReLU(−z_i)). Since z_i = ReLU(z_i) − ReLU(−z_i), decoding
    gives the same reconstruction, and at most k of the 2·d_sae codes are non-zero, all ≥ 0: tools that assume
    non-negative codes (SAEBench-style evals) can score it.

    The weights are views of the wrapped SAE's, computed on each access, so they follow it (device, training).
    """

    def __init__(self, sae: SAE):
        super().__init__()
        self.sae = sae
        self.cfg = NonNegViewConfig(d_in=sae.cfg.d_in, d_sae=2 * sae.cfg.d_sae,
                                    architecture=f"{sae.cfg.architecture}-as-nonneg", k=sae.cfg.k,
                                    metadata=dict(sae.cfg.metadata))

    # --- weights ([D; −D] and friends) ---

    @property
    def W_dec(self) -> Tensor:
        """[2·d_sae, d_in] = [W_dec; −W_dec]."""
        return torch.cat([self.sae.W_dec, -self.sae.W_dec], dim=0)

    @property
    def W_enc(self) -> Tensor:
        """[d_in, 2·d_sae] = [W_enc, −W_enc] (the pre-activations of the two poles)."""
        return torch.cat([self.sae.W_enc, -self.sae.W_enc], dim=1)

    @property
    def b_enc(self) -> Tensor:
        return torch.cat([self.sae.b_enc, -self.sae.b_enc])

    @property
    def b_dec(self) -> Tensor:
        return self.sae.b_dec

    @property
    def device(self) -> torch.device:
        return self.sae.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype

    # --- forward ---

    @staticmethod
    def split_codes(z: Tensor) -> Tensor:
        """Signed codes [..., d_sae] -> non-negative [..., 2·d_sae] = ReLU([z, −z])."""
        return torch.cat([torch.relu(z), torch.relu(-z)], dim=-1)

    @staticmethod
    def merge_codes(codes: Tensor) -> Tensor:
        """Non-negative [..., 2·d_sae] -> signed [..., d_sae] = positive pole − negative pole."""
        half = codes.shape[-1] // 2
        return codes[..., :half] - codes[..., half:]

    def original_latent(self, i: int) -> tuple[int, int]:
        """Adapter latent i -> (latent of the signed SAE, sign of its pole: +1 or −1)."""
        half = self.sae.cfg.d_sae
        if not 0 <= i < 2 * half:
            raise ValueError(f"latent must lie in 0..{2 * half - 1}, got {i}")
        return (i, 1) if i < half else (i - half, -1)

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., 2·d_sae], non-negative, at most k non-zero."""
        # The original's encoder decides which k latents survive; the two poles only re-express its codes.
        return self.split_codes(self.sae.encode(x))

    def decode(self, codes: Tensor) -> Tensor:
        """[..., 2·d_sae] -> [..., d_in]; equals the original's decode of merge_codes(codes)."""
        if codes.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"codes must have last dimension {self.cfg.d_sae}, got shape {tuple(codes.shape)}")
        return codes.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> SAEOutput:
        out = self.sae(x)
        return SAEOutput(recon=self.decode(self.split_codes(out.codes)), codes=self.split_codes(out.codes),
                         pre=torch.cat([out.pre, -out.pre], dim=-1))


def signed_to_nonneg(sae: SAE) -> NonNegView:
    """View a signed (AbsTopK) SAE as a 2×-wide non-negative SAE: decoder [D; −D], codes ReLU([z, −z])."""
    if not isinstance(sae, SAE):
        raise ValueError(f"signed_to_nonneg needs an absae SAE, got {type(sae).__name__}")
    return NonNegView(sae)


# ----------------------------------------------------------------------------------------------------------------
# Antipodal decoder rows


@torch.no_grad()
def antipodal_pairs(W_dec: Tensor, threshold: float = -0.9, block_size: int = 2048,
                    progress: bool = False) -> list[tuple[int, int, float]]:
    """Pairs of decoder rows pointing in (nearly) opposite directions: cosine < ``threshold``.

    In a non-negative SAE such a pair is one axis split into two latents (the paper's complaint); an AbsTopK SAE
    should need few. Rows are compared a block at a time, so memory stays at block_size × d_sae (d_sae = 18432:
    151 MB in fp32, never the 1.4 GB full matrix).

    Args:
        W_dec: [d_sae, d] decoder rows (any norms; normalised here).
        threshold: cosine below which a pair counts, in [−1, 1).

    Returns:
        [(i, j, cosine)] with i < j, sorted by i then j.
    """
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be 2-D [d_sae, d], got shape {tuple(W_dec.shape)}")
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1), got {threshold}")
    rows = W_dec.detach().float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = rows.shape[0]
    pairs: list[tuple[int, int, float]] = []
    for s in tqdm(range(0, n, block_size), desc="antipodal pairs", disable=not progress):
        # Only columns j > i are needed: rows s.. against rows s.. (the upper triangle, block by block).
        cos = rows[s:s + block_size] @ rows[s:].T  # [b, n - s]
        a, b = (cos < threshold).nonzero(as_tuple=True)
        upper = b > a  # column b is row s + b: keep j > i only
        a, b = a[upper], b[upper]
        pairs.extend(zip((a + s).tolist(), (b + s).tolist(), cos[a, b].tolist()))
    pairs.sort()
    return pairs


@torch.no_grad()
def nonneg_view_check(
    sae: SAE, acts_train: Tensor, y_train: Tensor, acts_test: Tensor, y_test: Tensor, ks: tuple[int, ...] = PROBE_KS,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """An AbsTopK SAE used directly and through :class:`NonNegView`, on one task.

    What must agree exactly (up to float rounding): the reconstructions, and the signed codes recovered from the
    view's non-negative ones (z = ReLU(z) − ReLU(−z)). The best single-latent *train* accuracy agrees too: a threshold
    on z_i at t ≥ 0 is a threshold on the positive pole, one at t ≤ 0 a threshold on the negative pole, so the view
    offers exactly the same cuts. Its test accuracy can differ only by where the threshold sits between two train
    values and by which of two equally good latents wins a tie. The k-sparse probes differ by design: through the view
    each pole is a separate latent, ranked on its own, so an axis held by one signed latent costs two of the k slots.

    Args:
        sae: a signed SAE (``sae.cfg.signed``).
        acts_train, acts_test: [n, d_in] activations; y_train, y_test: [n] 0/1.
        ks: the k of the sparse probes.

    Returns:
        {"max_recon_difference" (largest |Δ| of a coordinate), "max_recon_relative_difference" (largest
        ‖Δ recon‖ / ‖recon‖ of a row: float rounding of the two summation orders, ~1e-7), "max_code_difference",
        "max_difference" (the larger of the relative reconstruction and the code difference),
        "nonneg" (view codes all ≥ 0), "max_active" (most non-zero view codes on a row),
        "single_train_difference", "single_test_difference" (view − direct),
        "sparse_direct" {k: acc}, "sparse_view" {k: acc}, "single_direct", "single_view" (test accuracies)}.
    """
    if not sae.cfg.signed:
        raise ValueError(f"nonneg_view_check needs a signed SAE, got architecture {sae.cfg.architecture!r}")
    view = signed_to_nonneg(sae)
    device = next(sae.parameters()).device
    recon_diff = recon_rel = code_diff = 0.0
    nonneg, max_active = True, 0
    for acts in (acts_train, acts_test):
        for s in range(0, len(acts), batch_size):
            x = acts[s:s + batch_size].to(device).float()
            direct, through = sae(x), view(x)
            delta = direct.recon - through.recon
            recon_diff = max(recon_diff, delta.abs().max().item())
            recon_rel = max(recon_rel, (delta.norm(dim=-1) / direct.recon.norm(dim=-1).clamp_min(1e-12)).max().item())
            code_diff = max(code_diff, (view.merge_codes(through.codes) - direct.codes).abs().max().item())
            nonneg = nonneg and bool((through.codes >= 0).all())
            max_active = max(max_active, int((through.codes != 0).sum(-1).max()))
    codes = {name: (encode_all(m, acts_train, batch_size), encode_all(m, acts_test, batch_size))
             for name, m in (("direct", sae), ("view", view))}
    out: dict[str, Any] = {"max_recon_difference": recon_diff, "max_recon_relative_difference": recon_rel,
                           "max_code_difference": code_diff, "max_difference": max(recon_rel, code_diff),
                           "nonneg": nonneg, "max_active": max_active}
    singles = {}
    for name, (ctr, cte) in codes.items():
        sweep = sparse_probe_sweep(ctr, y_train, cte, y_test, ks, signed=name == "direct")
        out[f"sparse_{name}"] = {r["k"]: r["accuracy"] for r in sweep}
        singles[name] = single_latent_accuracy(ctr, y_train, cte, y_test)
        out[f"single_{name}"] = singles[name]["accuracy"]
    # Compared as counts of correct train rows: the two accuracies are float32 sums taken in different orders.
    n = len(acts_train)
    out["single_train_difference"] = (round(singles["view"]["train_accuracy"] * n)
                                      - round(singles["direct"]["train_accuracy"] * n)) / n
    out["single_test_difference"] = singles["view"]["accuracy"] - singles["direct"]["accuracy"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# One task, several SAEs


def probe_task(
    saes: dict[str, Any], acts_train: Tensor, y_train: Tensor, acts_test: Tensor, y_test: Tensor,
    ks: tuple[int, ...] = PROBE_KS, batch_size: int = 4096, n_boot: int = 2000, n_shuffles: int = 5, seed: int = 0,
) -> dict[str, Any]:
    """Every probe of chapter 6 on one binary task: baselines on the raw activations, then each SAE's latents.

    Selection, thresholds, probe weights and the DiM direction all come from the train split; the test split is only
    scored. Comparisons are made like for like: one latent against the one DiM direction (both a threshold on one
    number), the largest-k sparse probe against the dense probe (both logistic regressions), each with a paired
    bootstrap interval over the test examples (:mod:`absae_lib.accuracy_stats`) and a shuffled-label null.

    Args:
        saes: {name: SAE}; signed SAEs (``cfg.signed``) have their latents ranked with both poles counted.
        acts_train: [n_train, d] activations at the label tokens; y_train: [n_train] 0/1.
        acts_test: [n_test, d]; y_test: [n_test] 0/1.
        ks: the k of the k-sparse probes (k > d_sae is skipped).
        n_boot: bootstrap resamples of the test examples; n_shuffles: label shuffles for the null.

    Returns:
        {"n_train", "n_test",
         "dim_accuracy": DiM projection accuracy (test), "dense_accuracy" / "dense_train_accuracy": logistic
         regression on the activations, "dim_correct" / "dense_correct": bool [n_test],
         "intervals": {"dim", "dense": bootstrap_interval dicts}, "null": {"dim", "dense": shuffled_null dicts},
         "variants": {name: {"sparse": {k: test acc}, "sparse_train": {k: train acc}, "sparse_correct": {k: bool
                             [n_test]}, "latents": the max-k selection (best first), "mean_diff": their signed mean
                             code differences, "single": :func:`single_latent_accuracy`'s dict plus "dim_cosine"
                             (its decoder row vs DiM), "dim": :func:`absae_lib.dim.dim_alignment`,
                             "nmse": reconstruction error of the test activations (‖x − x̂‖² / ‖x − x̄‖²),
                             "intervals": {"single", "sparse_kmax"}, "null": {"single", "sparse_kmax"},
                             "like_for_like": {"single_vs_dim", "sparse_kmax_vs_dense": paired_difference
                             dicts, A = the SAE}}},
         "k_max": the k of "sparse_kmax"}.
    """
    from absae_lib.accuracy_stats import bootstrap_interval, paired_difference, shuffled_null
    from absae_lib.dim import diff_in_means, dim_alignment, dim_cosines, dim_projection_correct

    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    dense = dense_probe(acts_train, y_train, acts_test, y_test)
    direction = diff_in_means(acts_train, y_train)
    dim_correct = dim_projection_correct(acts_train, y_train, acts_test, y_test).numpy()
    boot = {"n_boot": n_boot, "seed": seed}
    out: dict[str, Any] = {
        "n_train": len(acts_train), "n_test": len(acts_test),
        "dim_accuracy": float(dim_correct.mean()), "dim_correct": dim_correct,
        "dense_accuracy": dense["accuracy"], "dense_train_accuracy": dense["train_accuracy"],
        "dense_correct": dense["correct"],
        "intervals": {"dim": bootstrap_interval(dim_correct, **boot), "dense": bootstrap_interval(dense["correct"], **boot)},
        "null": {
            "dim": shuffled_null(lambda a, b: dim_projection_correct(acts_train, a, acts_test, b).float().mean().item(),
                                 y_train, y_test, n_shuffles, seed),
            "dense": shuffled_null(lambda a, b: dense_probe(acts_train, a, acts_test, b)["accuracy"],
                                   y_train, y_test, n_shuffles, seed)},
        "variants": {},
    }
    centred = acts_test.float() - acts_test.float().mean(0)
    for name, sae in saes.items():
        signed = bool(getattr(sae.cfg, "signed", False))
        ctr, cte = encode_all(sae, acts_train, batch_size), encode_all(sae, acts_test, batch_size)
        sweep = sparse_probe_sweep(ctr, y_train, cte, y_test, ks, signed=signed)
        single = single_latent_accuracy(ctr, y_train, cte, y_test)
        single["dim_cosine"] = dim_cosines(direction, sae.W_dec[single["latent"]][None])[0].item()
        with torch.no_grad():
            device = next(sae.parameters()).device
            recon = torch.cat([sae.decode(cte[s:s + batch_size].to(device)).float().cpu()
                               for s in range(0, len(cte), batch_size)])
        nmse = ((acts_test.float() - recon).pow(2).sum() / centred.pow(2).sum()).item()
        top = sweep[-1]
        k_max = top["k"]
        out["k_max"] = k_max
        out["variants"][name] = {
            "sparse": {r["k"]: r["accuracy"] for r in sweep},
            "sparse_train": {r["k"]: r["train_accuracy"] for r in sweep},
            "sparse_correct": {r["k"]: r["correct"] for r in sweep},
            "latents": top["latents"], "mean_diff": top["mean_diff"],
            "single": single, "dim": dim_alignment(direction, sae.W_dec), "nmse": nmse,
            "intervals": {"single": bootstrap_interval(single["correct"], **boot),
                          "sparse_kmax": bootstrap_interval(top["correct"], **boot)},
            "null": {
                "single": shuffled_null(lambda a, b: single_latent_accuracy(ctr, a, cte, b)["accuracy"],
                                        y_train, y_test, n_shuffles, seed),
                "sparse_kmax": shuffled_null(lambda a, b: sparse_probe(ctr, a, cte, b, k_max, signed)["accuracy"],
                                             y_train, y_test, n_shuffles, seed)},
            "like_for_like": {
                "single_vs_dim": paired_difference(single["correct"], dim_correct, names=(name, "DiM"), **boot),
                "sparse_kmax_vs_dense": paired_difference(top["correct"], dense["correct"],
                                                          names=(name, "dense probe"), **boot)},
        }
    return out

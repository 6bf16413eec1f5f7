"""Difference-in-Means (DiM): the supervised direction SAE latents are measured against.

    d = mean(x | y = 1) − mean(x | y = 0)                                  [d_model]

DiM is the simplest linear read-out of a binary concept and a strong baseline for both probing (project on d,
threshold) and steering (add α·d to the residual stream): Arditi et al. (2024) steer refusal with it, and in
AxBench (Wu et al. 2025) it beat SAE latents. The AbsTopK paper asks whether a single signed latent matches it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_binary(acts: Tensor, labels: Tensor, what: str = "acts") -> Tensor:
    if acts.dim() != 2:
        raise ValueError(f"{what} must be a 2-D tensor [n, d], got shape {tuple(acts.shape)}")
    labels = torch.as_tensor(labels, device=acts.device)
    if labels.dim() != 1 or len(labels) != len(acts):
        raise ValueError(
            f"labels must be 1-D with one label per row of {what} ({len(acts)}), got {tuple(labels.shape)}"
        )
    values = set(labels.unique().tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be binary 0/1, got values {sorted(values)}")
    if values != {0, 1}:
        raise ValueError(f"labels must contain both classes 0 and 1, got only {sorted(values)}")
    return labels.bool()


def class_means(acts: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean of the label-0 rows, mean of the label-1 rows), each [d], in fp32.  acts [n, d], labels [n] 0/1."""
    pos = _check_binary(acts, labels)
    acts = acts.float()
    return acts[~pos].mean(0), acts[pos].mean(0)


def diff_in_means(acts: Tensor, labels: Tensor) -> Tensor:
    """mean(acts | label 1) − mean(acts | label 0).  acts [n, d], labels [n] 0/1 -> [d] (fp32, not normalised)."""
    mean_neg, mean_pos = class_means(acts, labels)
    return mean_pos - mean_neg


def dim_cosines(direction: Tensor, W_dec: Tensor) -> Tensor:
    """Cosine similarity of ``direction`` with every decoder row.  direction [d], W_dec [d_sae, d] -> [d_sae].

    Rows are normalised here, so decoders with a folded input scale (row norm 1/s) compare fairly. For a signed
    (AbsTopK) latent a cosine near −1 is as good as +1: the latent's negative pole points along the direction.
    """
    if direction.dim() != 1 or W_dec.dim() != 2 or W_dec.shape[1] != direction.shape[0]:
        raise ValueError(
            f"need direction [d] and W_dec [d_sae, d]; got {tuple(direction.shape)} and {tuple(W_dec.shape)}"
        )
    d = direction.float().to(W_dec.device)
    d = d / d.norm().clamp_min(1e-12)
    rows = W_dec.detach().float()
    return (rows @ d) / rows.norm(dim=1).clamp_min(1e-12)


def dim_projection_accuracy(train_acts: Tensor, train_labels: Tensor, test_acts: Tensor, test_labels: Tensor) -> float:
    """Accuracy of the DiM classifier (fit on train, score on test): the mean of :func:`dim_projection_correct`."""
    return dim_projection_correct(train_acts, train_labels, test_acts, test_labels).float().mean().item()


def dim_projection_correct(train_acts: Tensor, train_labels: Tensor, test_acts: Tensor,
                           test_labels: Tensor) -> Tensor:
    """Which test rows the DiM classifier gets right: fit on train, score on test.

    The direction d and the threshold both come from the train split: project on d and predict label 1 where the
    projection exceeds the midpoint of the two class means' projections, ((μ₀ + μ₁)/2)·d.

    Args:
        train_acts: [n_train, d]; train_labels: [n_train] 0/1.
        test_acts: [n_test, d]; test_labels: [n_test] 0/1.

    Returns:
        bool tensor [n_test]: True where the row is classified correctly (paired bootstraps need the rows).
    """
    mean_neg, mean_pos = class_means(train_acts, train_labels)
    direction = mean_pos - mean_neg
    threshold = ((mean_neg + mean_pos) / 2) @ direction
    if test_acts.dim() != 2 or test_acts.shape[1] != direction.shape[0]:
        raise ValueError(f"test_acts must be [n_test, {direction.shape[0]}], got {tuple(test_acts.shape)}")
    test_labels = torch.as_tensor(test_labels, device=test_acts.device)
    if test_labels.shape != (len(test_acts),):
        raise ValueError(f"test_labels must be [n_test] = [{len(test_acts)}], got {tuple(test_labels.shape)}")
    predicted = (test_acts.float() @ direction.to(test_acts.device)) > threshold.to(test_acts.device)
    return (predicted == test_labels.bool()).cpu()


def dim_alignment(direction: Tensor, W_dec: Tensor) -> dict[str, float | int]:
    """How well a dictionary's decoder rows line up with a DiM direction.  direction [d], W_dec [d_sae, d].

    A non-negative SAE can hold the axis only as two latents, one per pole: a row along +direction (fires for
    label 1) and one along −direction (fires for label 0). A signed SAE can hold it in one row with either sign.

    Returns:
        best_latent / best_cosine: the row with the largest |cosine| (the cosine keeps its sign);
        max_latent / max_cosine: the most positive row; min_latent / min_cosine: the most negative row;
        pair_cosine: cosine of the direction with d̂_max − d̂_min, the axis the best pair of one-sided rows spans.
    """
    cos = dim_cosines(direction, W_dec)
    best = int(cos.abs().argmax())
    i_max, i_min = int(cos.argmax()), int(cos.argmin())
    rows = W_dec.detach().float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pair = rows[i_max] - rows[i_min]
    d = direction.float().to(rows.device)
    pair_cosine = (pair @ d / (pair.norm() * d.norm()).clamp_min(1e-12)).item()
    return {"best_latent": best, "best_cosine": cos[best].item(), "max_latent": i_max, "max_cosine": cos[i_max].item(),
            "min_latent": i_min, "min_cosine": cos[i_min].item(), "pair_cosine": pair_cosine}

"""A semantic test of bidirectionality: does one AbsTopK latent carry both poles of a labelled concept axis?

For a binary concept (negative ↔ positive sentiment, singular ↔ plural, ...) with a train and a held-out split:

    axis_test               the DiM direction d (train); the AbsTopK latent whose decoder row aligns best with ±d;
                            on held-out text, whether its sign separates the poles (both poles fire, sign → label);
                            TopK's best pair (one latent per pole) and how close its rows are to +d and −d;
                            every cosine beside a random dictionary of the same shape and a shuffled-label DiM,
                            every accuracy beside the same accuracy with the held-out labels shuffled
    sign_separation         the held-out part for one latent: pole counts, sign accuracy, coverage
    best_sign_latent        the latent whose sign agrees most with the labels (chosen on train)
    splitting               for each AbsTopK row u, the best TopK match of +u and of −u (does TopK need two?)
    antipodal_calibration   antipodal-pair counts and most-negative cosines beside a random dictionary
    encode                  an SAE's codes for a batch of activations (eval mode, no gradients, on the CPU)

A random dictionary's rows are Gaussian (isotropic) and normalised: the cosine any direction reaches with *some* row of
it by chance, about sqrt(2 ln(2 d_sae) / d) for d_sae rows in d dimensions (0.18 for 4608 rows in 576).

Shapes: ``n`` examples, model width ``d``, dictionary ``d_sae``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from absae_lib.dim import diff_in_means
from absae_lib.sae import SAE


def unit_rows(W: Tensor) -> Tensor:
    """W [m, d] with every row scaled to unit length (fp32; a zero row stays zero)."""
    if W.dim() != 2:
        raise ValueError(f"expected a 2-D matrix [m, d], got shape {tuple(W.shape)}")
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


# Null dictionaries draw from their own stream: an SAE initialised with torch.manual_seed(seed) and the same shape
# would otherwise *be* the "random" dictionary (its initial rows are the same normalised Gaussians).
NULL_SEED_OFFSET = 7_919_000


def random_dictionary(d_sae: int, d: int, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
    """[d_sae, d] unit rows drawn uniformly on the sphere (normalised Gaussians): the null dictionary.

    Drawn from seed ``NULL_SEED_OFFSET + seed``, never from the seeds the SAEs are initialised with.
    """
    generator = torch.Generator().manual_seed(NULL_SEED_OFFSET + seed)
    return unit_rows(torch.randn(d_sae, d, generator=generator)).to(device)


def encode(sae: SAE, acts: Tensor, batch_size: int = 4096) -> Tensor:
    """sae.encode(acts) for acts [n, d_in] -> codes [n, d_sae] fp32 on the CPU, in eval mode without gradients."""
    was_training = sae.training
    sae.eval()
    device = sae.W_enc.device
    try:
        with torch.no_grad():
            return torch.cat([sae.encode(acts[s:s + batch_size].to(device, torch.float32)).float().cpu()
                              for s in range(0, len(acts), batch_size)])
    finally:
        sae.train(was_training)


# ----------------------------------------------------------------------------------------------------------------
# The held-out half: does one latent's sign separate the poles?


def sign_separation(code: Tensor, labels: Tensor, orientation: int = 1, min_pole: int = 5,
                    min_pole_share: float = 0.1) -> dict[str, Any]:
    """How one latent's sign reads a binary label.  code [n] (its code on each example), labels [n] 0/1.

    ``orientation`` +1: a positive code means label 1 (the latent's row points along +d); −1: the reverse.
    Returns:
        fire_rate: share of examples where the code is non-zero;
        sign_accuracy: among those, the share whose sign (times orientation) gives the label;
        sign_accuracy_all: the same over all examples, a silent latent counting as a coin flip (0.5);
        poles: counts {"label1_on_pole", "label0_on_pole", "label1_off_pole", "label0_off_pole"}: label-1
            examples firing with the label-1 sign, label-0 examples with the label-0 sign, and the wrong-sign ones;
        both_poles_fire: each class fires with its own sign on at least ``min_pole`` examples and at least
            ``min_pole_share`` of that class (one latent, used with both signs for the two poles).
    """
    code, labels = torch.as_tensor(code).float().flatten(), torch.as_tensor(labels).long().flatten()
    if code.shape != labels.shape or len(code) == 0:
        raise ValueError(f"code and labels must be [n] with n > 0, got {tuple(code.shape)} and {tuple(labels.shape)}")
    if orientation not in (1, -1):
        raise ValueError(f"orientation must be +1 or -1, got {orientation!r}")
    signed = orientation * code
    fired = signed != 0
    says_one = signed > 0
    correct = fired & (says_one == (labels == 1))
    poles = {"label1_on_pole": int(((labels == 1) & (signed > 0)).sum()),
             "label0_on_pole": int(((labels == 0) & (signed < 0)).sum()),
             "label1_off_pole": int(((labels == 1) & (signed < 0)).sum()),
             "label0_off_pole": int(((labels == 0) & (signed > 0)).sum())}
    n_class = [int((labels == c).sum()) for c in (0, 1)]
    both = all(poles[f"label{c}_on_pole"] >= max(min_pole, min_pole_share * n_class[c]) for c in (0, 1))
    n_fired = int(fired.sum())
    return {
        "fire_rate": n_fired / len(code),
        "sign_accuracy": float(correct.sum()) / n_fired if n_fired else float("nan"),
        "sign_accuracy_all": (float(correct.sum()) + 0.5 * (len(code) - n_fired)) / len(code),
        "poles": poles,
        "both_poles_fire": bool(both),
    }


def shuffled_accuracy(code: Tensor, labels: Tensor, orientation: int = 1, n_shuffles: int = 200,
                      seed: int = 0) -> dict[str, float]:
    """The null of :func:`sign_separation`'s accuracies: the same latent and codes, the labels permuted.

    Returns {"mean", "q95"} of ``sign_accuracy`` (over firing examples) and {"all_mean", "all_q95"} of
    ``sign_accuracy_all`` over ``n_shuffles`` permutations.  A real accuracy above q95 beats chance at 5%.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).long().flatten()
    fired_acc, all_acc = [], []
    for _ in range(n_shuffles):
        r = sign_separation(code, labels[torch.randperm(len(labels), generator=generator)], orientation)
        fired_acc.append(r["sign_accuracy"])
        all_acc.append(r["sign_accuracy_all"])
    fired_t, all_t = torch.tensor(fired_acc), torch.tensor(all_acc)
    return {"mean": fired_t.nanmean().item(), "q95": fired_t.nanquantile(0.95).item() if fired_t.isfinite().any()
            else float("nan"), "all_mean": all_t.mean().item(), "all_q95": all_t.quantile(0.95).item()}


def best_sign_latent(codes: Tensor, labels: Tensor) -> tuple[int, int]:
    """(latent, orientation) whose sign reads ``labels`` best on these (train) examples.  codes [n, d_sae].

    Scored by ``sign_accuracy_all`` (a silent latent is a coin flip), so a latent must fire *and* get the sign
    right; the orientation is whichever of ±1 scores higher.
    """
    labels = torch.as_tensor(labels).long().flatten()
    target = (2 * labels - 1).float()[:, None]  # +1 for label 1, −1 for label 0
    agreement = (codes.sign() * target).sum(0)  # [d_sae]: (right − wrong) firings with orientation +1
    latent = int(agreement.abs().argmax())
    return latent, 1 if agreement[latent] >= 0 else -1


# ----------------------------------------------------------------------------------------------------------------
# One axis, end to end


def _best_abs(cos: Tensor) -> tuple[int, float]:
    i = int(cos.abs().argmax())
    return i, cos[i].item()


def axis_test(
    abstopk: SAE, topk: SAE, train_acts: Tensor, train_labels: Tensor, test_acts: Tensor, test_labels: Tensor,
    n_null: int = 5, n_shuffles: int = 200, seed: int = 0,
) -> dict[str, Any]:
    """The semantic bidirectionality test on one concept axis.  acts [n, d] (the model's activations at the label
    tokens), labels [n] 0/1; the DiM direction and every choice come from train, every accuracy from test.

    Keys (cosines are of unit rows with the unit DiM direction d̂):
        abstopk_latent, abstopk_best_cosine: the AbsTopK row with the largest |cos| (the sign kept: −0.6 means its
            negative pole points along +d̂);
        abstopk_sign_accuracy, abstopk_sign_accuracy_all, abstopk_fire_rate, abstopk_poles, abstopk_both_poles_fire:
            :func:`sign_separation` of that latent on test, oriented by its cosine;
        abstopk_sign_null: :func:`shuffled_accuracy` of it;
        abstopk_sign_latent, abstopk_sign_latent_accuracy, ..._cosine, ..._both_poles_fire, ..._null: the same for
            the latent whose sign reads the train labels best (:func:`best_sign_latent`), whatever its row, and
            ..._orientation (+1: a positive code means label 1);
        topk_pair, topk_pair_cosines: TopK's rows most aligned with +d̂ and with −d̂, and their cosines with d̂
            [cos(+), cos(−)] (a perfect split: [1, −1]); topk_pair_row_cosine: the two rows' cosine with each other;
        topk_pair_accuracy, topk_pair_fire_rate: the pair as a classifier on test (z₊ − z₋ > 0 → label 1);
        null_best_cosine: the largest |cos| of d̂ with a random dictionary of AbsTopK's shape (mean of ``n_null``);
        null_pair_cosines: [max cos, min cos] of d̂ with a random dictionary of TopK's shape (mean of ``n_null``);
        shuffled_dim_best_cosine: the largest |cos| of a DiM fit on shuffled train labels with AbsTopK's rows (the
            noise direction of the same data, mean of ``n_null``);
        dim_norm, dim_accuracy: ‖d‖ and the DiM classifier's test accuracy (threshold at the train midpoint).
    """
    from absae_lib.dim import dim_projection_accuracy

    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    direction = diff_in_means(train_acts, train_labels)
    if direction.shape[0] != abstopk.cfg.d_in or topk.cfg.d_in != abstopk.cfg.d_in:
        raise ValueError(f"activations have width {direction.shape[0]}, the SAEs d_in = {abstopk.cfg.d_in} and "
                         f"{topk.cfg.d_in}: use the hook the SAEs were trained on")
    d_hat = direction / direction.norm().clamp_min(1e-12)
    abs_rows, top_rows = unit_rows(abstopk.W_dec).cpu(), unit_rows(topk.W_dec).cpu()
    abs_cos, top_cos = abs_rows @ d_hat, top_rows @ d_hat

    out: dict[str, Any] = {"dim_norm": direction.norm().item(),
                           "dim_accuracy": dim_projection_accuracy(train_acts, train_labels, test_acts, test_labels)}
    abs_test = encode(abstopk, test_acts)
    latent, cosine = _best_abs(abs_cos)
    orientation = 1 if cosine >= 0 else -1
    sep = sign_separation(abs_test[:, latent], test_labels, orientation)
    out.update({"abstopk_latent": latent, "abstopk_best_cosine": cosine,
                "abstopk_sign_accuracy": sep["sign_accuracy"], "abstopk_sign_accuracy_all": sep["sign_accuracy_all"],
                "abstopk_fire_rate": sep["fire_rate"], "abstopk_poles": sep["poles"],
                "abstopk_both_poles_fire": sep["both_poles_fire"],
                "abstopk_sign_null": shuffled_accuracy(abs_test[:, latent], test_labels, orientation, n_shuffles, seed)})

    sign_latent, sign_orientation = best_sign_latent(encode(abstopk, train_acts), train_labels)
    sep = sign_separation(abs_test[:, sign_latent], test_labels, sign_orientation)
    out.update({"abstopk_sign_latent": sign_latent, "abstopk_sign_latent_orientation": sign_orientation,
                "abstopk_sign_latent_cosine": abs_cos[sign_latent].item(),
                "abstopk_sign_latent_accuracy": sep["sign_accuracy"],
                "abstopk_sign_latent_accuracy_all": sep["sign_accuracy_all"],
                "abstopk_sign_latent_fire_rate": sep["fire_rate"], "abstopk_sign_latent_poles": sep["poles"],
                "abstopk_sign_latent_both_poles_fire": sep["both_poles_fire"],
                "abstopk_sign_latent_null": shuffled_accuracy(abs_test[:, sign_latent], test_labels, sign_orientation,
                                                              n_shuffles, seed)})

    plus, minus = int(top_cos.argmax()), int(top_cos.argmin())
    top_test = encode(topk, test_acts)
    score = top_test[:, plus] - top_test[:, minus]
    fired = score != 0
    out.update({"topk_pair": [plus, minus], "topk_pair_cosines": [top_cos[plus].item(), top_cos[minus].item()],
                "topk_pair_row_cosine": (top_rows[plus] @ top_rows[minus]).item(),
                "topk_pair_fire_rate": fired.float().mean().item(),
                "topk_pair_accuracy": (((score > 0) == (test_labels == 1)) & fired).sum().item()
                / max(int(fired.sum()), 1)})

    null_best, null_max, null_min, shuffled = [], [], [], []
    generator = torch.Generator().manual_seed(seed)
    for r in range(n_null):
        rand_abs = random_dictionary(abstopk.cfg.d_sae, abstopk.cfg.d_in, seed + 1000 + r) @ d_hat
        rand_top = random_dictionary(topk.cfg.d_sae, topk.cfg.d_in, seed + 2000 + r) @ d_hat
        null_best.append(rand_abs.abs().max().item())
        null_max.append(rand_top.max().item())
        null_min.append(rand_top.min().item())
        fake = diff_in_means(train_acts, train_labels[torch.randperm(len(train_labels), generator=generator)])
        shuffled.append((abs_rows @ (fake / fake.norm().clamp_min(1e-12))).abs().max().item())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out.update({"null_best_cosine": mean(null_best), "null_pair_cosines": [mean(null_max), mean(null_min)],
                "shuffled_dim_best_cosine": mean(shuffled)})
    return out


def axis_verdict(result: dict[str, Any]) -> str:
    """One word for an :func:`axis_test` result, from its numbers and nulls.

    Of the DiM-aligned AbsTopK latent and the best-sign latent, the best outcome counts:

    "one latent, both poles": it fires on both poles with the right signs (``both_poles_fire``), its held-out sign
        accuracy is above the shuffled-label q95, and its row is closer to ±d̂ than any row of a random dictionary
        (``null_best_cosine``).  The shuffled-label DiM is no floor here: on anisotropic data it points along the
        top-variance directions, which a trained dictionary covers whether or not it holds the concept;
    "both poles, row off the axis": the same, but the row is no closer to ±d̂ than a random row;
    "one pole only": accuracy above the null, but one class rarely fires with its sign (a one-sided detector,
        what a TopK latent could do as well);
    "no": neither latent's sign beats chance.
    """
    floor = result["null_best_cosine"]
    outcomes = []
    for prefix, cosine in (("abstopk", result["abstopk_best_cosine"]),
                           ("abstopk_sign_latent", result["abstopk_sign_latent_cosine"])):
        null = result["abstopk_sign_null" if prefix == "abstopk" else "abstopk_sign_latent_null"]
        accuracy = result["abstopk_sign_accuracy" if prefix == "abstopk" else "abstopk_sign_latent_accuracy"]
        if not accuracy > null["q95"]:
            continue
        if not result[f"{prefix}_both_poles_fire"]:
            outcomes.append(2)
        else:
            outcomes.append(0 if abs(cosine) > floor else 1)
    return VERDICTS[min(outcomes)] if outcomes else VERDICTS[3]


VERDICTS = ("one latent, both poles", "both poles, row off the axis", "one pole only", "no")


# ----------------------------------------------------------------------------------------------------------------
# Splitting: does TopK need two latents where AbsTopK uses one?


@torch.no_grad()
def splitting(W_abstopk: Tensor, W_topk: Tensor, block_size: int = 2048) -> dict[str, Tensor]:
    """For each AbsTopK row u, the TopK row closest to +u and the one closest to −u.  W [d_sae, d] (any norms).

    Returns {"plus_cosine", "plus_latent", "minus_cosine", "minus_latent"}, each [d_sae_abstopk]: the largest
    cosine of a TopK row with +u (and with −u) and which row it is.
    """
    if W_abstopk.dim() != 2 or W_topk.dim() != 2 or W_abstopk.shape[1] != W_topk.shape[1]:
        raise ValueError(f"need two decoders [m, d] of the same width, got {tuple(W_abstopk.shape)} and "
                         f"{tuple(W_topk.shape)}")
    A, T = unit_rows(W_abstopk), unit_rows(W_topk).to(W_abstopk.device)
    out = {key: [] for key in ("plus_cosine", "plus_latent", "minus_cosine", "minus_latent")}
    for s in range(0, A.shape[0], block_size):
        cos = A[s:s + block_size] @ T.T  # [b, d_sae_topk]
        v, i = cos.max(1)
        out["plus_cosine"].append(v.cpu())
        out["plus_latent"].append(i.cpu())
        v, i = (-cos).max(1)
        out["minus_cosine"].append(v.cpu())
        out["minus_latent"].append(i.cpu())
    return {key: torch.cat(parts) for key, parts in out.items()}


def splitting_counts(matches: dict[str, Tensor], threshold: float = 0.5, mask: Tensor | None = None
                     ) -> dict[str, int]:
    """How the AbsTopK rows (``mask`` [d_sae] bool selects some) are matched at cosine ≥ ``threshold``.

    "two": both +u and −u have a TopK match (two latents where AbsTopK uses one); "plus only", "minus only",
    "none"; "n": rows counted.
    """
    plus, minus = matches["plus_cosine"] >= threshold, matches["minus_cosine"] >= threshold
    if mask is not None:
        plus, minus = plus[mask], minus[mask]
    return {"two": int((plus & minus).sum()), "plus only": int((plus & ~minus).sum()),
            "minus only": int((~plus & minus).sum()), "none": int((~plus & ~minus).sum()), "n": int(len(plus))}


# ----------------------------------------------------------------------------------------------------------------
# Antipodal pairs, calibrated


def antipodal_calibration(W_dec: Tensor, thresholds: tuple[float, ...] = (-0.3, -0.5, -0.9), n_null: int = 1,
                          seed: int = 0) -> dict[str, Any]:
    """Antipodal structure of a decoder W_dec [d_sae, d] beside a random dictionary of the same shape.

    Returns {"median_most_negative", "min_most_negative", "latents_below": {t: rows whose most negative partner has
    cosine < t}} for the decoder and the same under "null" (mean over ``n_null`` random dictionaries).
    """
    from absae_lib.features import most_negative_cosine

    def summary(W: Tensor) -> dict[str, Any]:
        cos, _ = most_negative_cosine(W)
        return {"median_most_negative": cos.median().item(), "min_most_negative": cos.min().item(),
                "latents_below": {str(t): int((cos < t).sum()) for t in thresholds}}

    real = summary(W_dec)
    nulls = [summary(random_dictionary(*W_dec.shape, seed=seed + r, device=W_dec.device)) for r in range(n_null)]
    null = {"median_most_negative": sum(n["median_most_negative"] for n in nulls) / n_null,
            "min_most_negative": sum(n["min_most_negative"] for n in nulls) / n_null,
            "latents_below": {str(t): sum(n["latents_below"][str(t)] for n in nulls) / n_null for t in thresholds}}
    return {**real, "null": null}

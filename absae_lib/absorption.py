"""First-letter feature absorption (Chanin et al. 2024, "A is for Absorption"), fully offline.

The labels come from the tokenizer itself: a vocabulary token " word" (leading space, lower-case letters) starts
with the letter its first character says. A linear probe on the residual stream at that token recovers the letter
well, so the model represents it. An SAE ideally has a latent per letter ("starts with s") that fires on every s-word.
**Absorption** is the failure where that latent stays silent on some s-words because a more specific latent ("the
word *short*") fires instead and carries the s-direction in its own decoder row: the general latent's job is absorbed.

    first_letter_words     single-token lower-case words of the vocabulary, grouped by first letter
    first_letter_dataset   a ConceptDataset: "The word is" + " word", label = the letter (multi-class)
    letter_probe           multinomial logistic probe on the activations -> one direction per letter
    absorption_scores      per SAE: the main latent of each letter, its F1, and how often it is absorbed

The measurement follows SAEBench's simplified recipe with one main latent per letter (no ablation step):

1. Main latent of letter L: the latent *pole* whose mean code, ReLU(s·z_j) for s = +1 or (signed SAEs only) −1,
   exceeds its mean on the other words by the most, on the train split: the latent marks L with sign s. (A latent
   that fires on the *other* letters says nothing reliable about L, so the gap must be positive.)
2. On the test split, the main latent *fires* for a word when s·z > 0. Precision / recall / F1 score it as an
   L-detector.
3. Of the test L-words that the probe classifies correctly, a word is a **false negative** when the main latent does
   not fire, and **absorbed** when, in addition, the active latent contributing most to the probe's L-direction
   (largest z_j · (d_j · p̂_L)) has a sign-adjusted decoder row with cosine ≥ ``cos_threshold`` with p̂_L.

Rates are averaged over letters. Signed SAEs are handled throughout by using sign(z_j)·d_j as latent j's direction.
"""

from __future__ import annotations

import random
import string
from typing import Any

import numpy as np
import torch
from torch import Tensor

from absae_lib.concepts import ConceptDataset

FIRST_LETTER_TEMPLATE = "The word is{}"  # {} = the vocabulary token, leading space included: one token at the end
LETTERS = tuple(string.ascii_lowercase)


def first_letter_words(tokenizer, min_chars: int = 3) -> dict[str, list[tuple[str, int]]]:
    """Vocabulary tokens that are a whole lower-case ASCII word (≥ ``min_chars`` letters) with a leading space.

    Returns:
        {letter: sorted [(" word", token id)]} (leading space kept), letters with no word left out.
    """
    if min_chars < 1:
        raise ValueError(f"min_chars must be at least 1, got {min_chars}")
    words: dict[str, list[tuple[str, int]]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        word = text[1:]
        if (text.startswith(" ") and len(word) >= min_chars and word.isascii() and word.isalpha()
                and word.islower()):
            words.setdefault(word[0], []).append((text, token_id))
    return {letter: sorted(ws) for letter, ws in sorted(words.items())}


def first_letter_dataset(
    tokenizer, n_per_letter: int, seed: int = 0, min_chars: int = 3, template: str = FIRST_LETTER_TEMPLATE,
) -> ConceptDataset:
    """``n_per_letter`` random vocabulary words for every letter that has that many, in ``template``.

    Only words that stay one token at the end of the template are kept (byte-level BPE keeps " word" whole, but this
    is checked). Label = the letter's index in ``class_names`` (the letters used, alphabetical); the label token is
    the last one. ``meta`` holds the word and its token id.
    """
    if n_per_letter < 1:
        raise ValueError(f"n_per_letter must be positive, got {n_per_letter}")
    if template.count("{}") != 1 or not template.endswith("{}"):
        raise ValueError(f"template must end with one '{{}}' (the word), got {template!r}")
    rng = random.Random(seed)
    prefix_ids = tokenizer(template.format(""), add_special_tokens=False)["input_ids"]
    picked: dict[str, list[tuple[str, int]]] = {}
    for letter, words in first_letter_words(tokenizer, min_chars).items():
        words = list(words)
        rng.shuffle(words)
        keep: list[tuple[str, int]] = []
        for w, token_id in words:
            if tokenizer(template.format(w), add_special_tokens=False)["input_ids"] == prefix_ids + [token_id]:
                keep.append((w, token_id))
            if len(keep) == n_per_letter:
                break
        if len(keep) == n_per_letter:
            picked[letter] = keep
    if len(picked) < 2:
        raise ValueError(f"fewer than two letters have {n_per_letter} single-token words; lower n_per_letter")
    letters = tuple(sorted(picked))
    texts, labels, meta = [], [], []
    for r in range(n_per_letter):  # interleave: any prefix is balanced
        for label, letter in enumerate(letters):
            w, token_id = picked[letter][r]
            texts.append(template.format(w))
            labels.append(label)
            meta.append({"word": w.strip(), "token_id": token_id})
    return ConceptDataset("first_letter", texts, torch.tensor(labels), None, letters, None, meta)


def letter_probe(acts_train: Tensor, y_train: Tensor, acts_test: Tensor, y_test: Tensor, C: float = 1.0,
                 max_iter: int = 2000) -> dict[str, Any]:
    """Multinomial logistic regression on standardised activations; the weights mapped back to activation space.

    Returns:
        {"accuracy" (test), "train_accuracy", "directions" [n_classes, d] unit vectors in activation space,
        "predicted" LongTensor [n_test]}.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X_train, X_test = acts_train.float().numpy(), acts_test.float().numpy()
    scaler = StandardScaler().fit(X_train)
    probe = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(X_train), y_train.numpy())
    predicted = probe.predict(scaler.transform(X_test))
    # logit = w·(x − μ)/σ + b: the direction in activation space is w/σ
    weights = torch.as_tensor(probe.coef_ / scaler.scale_[None, :], dtype=torch.float32)
    if weights.shape[0] == 1:  # binary: sklearn keeps one row (class 1); class 0 is its negative
        weights = torch.cat([-weights, weights])
    directions = weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return {"accuracy": float((predicted == y_test.numpy()).mean()),
            "train_accuracy": float(probe.score(scaler.transform(X_train), y_train.numpy())),
            "directions": directions, "predicted": torch.as_tensor(predicted).long()}


@torch.no_grad()
def absorption_scores(
    codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, W_dec: Tensor, directions: Tensor,
    probe_predicted: Tensor, cos_threshold: float = 0.1,
) -> dict[str, Any]:
    """Main latent per class, its F1 as a detector, and its false-negative and absorption rates (see the module doc).

    Args:
        codes_train, codes_test: [n, d_sae] SAE codes (may be signed).
        y_train, y_test: [n] class ids.
        W_dec: [d_sae, d] decoder rows.
        directions: [n_classes, d] probe directions (unit), from :func:`letter_probe`.
        probe_predicted: [n_test] the probe's predictions on the test split.
        cos_threshold: the least cosine between an absorbing latent's (sign-adjusted) row and the probe direction.

    Returns:
        {"per_class": {class id: {"latent", "sign", "precision", "recall", "f1", "n_probe_correct",
        "false_negative_rate", "absorption_rate"}}, and their means over classes with a probe-correct example:
        "f1", "false_negative_rate", "absorption_rate"}.
    """
    codes_train, codes_test = codes_train.float(), codes_test.float()
    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    rows = W_dec.detach().float().cpu()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    directions = directions.float()
    n_classes = directions.shape[0]
    per_class: dict[int, dict[str, Any]] = {}
    for c in range(n_classes):
        is_c = y_train == c
        if not is_c.any() or is_c.all():
            continue
        poles = torch.stack([codes_train.clamp_min(0), (-codes_train).clamp_min(0)])  # [2, n, d_sae]: s = +1, −1
        diff = poles[:, is_c].mean(1) - poles[:, ~is_c].mean(1)  # [2, d_sae]
        best = int(diff.flatten().argmax())  # first maximum: the positive pole and the lowest latent on ties
        latent, sign = best % diff.shape[1], (1.0 if best < diff.shape[1] else -1.0)
        fires = sign * codes_test[:, latent] > 0
        truth = y_test == c
        tp = (fires & truth).sum().item()
        precision = tp / max(fires.sum().item(), 1)
        recall = tp / max(truth.sum().item(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        candidates = (truth & (probe_predicted == c)).nonzero().flatten()
        missed = candidates[~fires[candidates]]
        absorbed = 0
        if len(missed):
            z = codes_test[missed]  # [m, d_sae]
            cos = rows @ directions[c]  # [d_sae] cosine of each row with the probe direction
            push = W_dec.detach().float().cpu() @ directions[c]  # [d_sae] d_j · p̂
            contribution = z * push[None, :]  # z_j (d_j · p̂): the latent's push along the probe direction
            contribution[:, latent] = -float("inf")  # the main latent (firing with the wrong sign) cannot absorb
            j = contribution.argmax(dim=1)
            z_j = z[torch.arange(len(missed)), j]
            signed_cos = torch.sign(z_j) * cos[j]
            absorbed = int(((contribution.max(dim=1).values > 0) & (signed_cos >= cos_threshold)).sum())
        n_correct = len(candidates)
        per_class[c] = {"latent": latent, "sign": int(sign), "precision": precision, "recall": recall, "f1": f1,
                        "n_probe_correct": n_correct,
                        "false_negative_rate": len(missed) / n_correct if n_correct else float("nan"),
                        "absorption_rate": absorbed / n_correct if n_correct else float("nan")}
    scored = [v for v in per_class.values() if v["n_probe_correct"] > 0]
    mean = lambda key: float(np.mean([v[key] for v in scored])) if scored else float("nan")  # noqa: E731
    return {"per_class": per_class, "f1": mean("f1"), "false_negative_rate": mean("false_negative_rate"),
            "absorption_rate": mean("absorption_rate")}

"""How sure is a test accuracy? Bootstrap intervals, paired comparisons and a shuffled-label null.

A probe scored on a test set of a few hundred examples has an accuracy that would move by a few hundredths on
another draw of the same size. Chapter 6 calls a difference between two probes a win only when it survives that:

    bootstrap_interval   95% percentile interval of an accuracy, resampling the test examples
    paired_difference    the same for the difference of two classifiers scored on the *same* test examples
                         (paired: one resample for both), with a verdict: "A better", "B better" or
                         "tie (within noise)" when the interval contains 0
    shuffled_null        what the same procedure reaches when the labels are shuffled (train and test): the accuracy
                         a method gets from selection and fitting alone, with no concept to find
    seeded_difference    A − B over SAEs trained with several seeds: a Student-t interval over the seeds (training
                         noise) and a paired bootstrap over the test examples (test-set noise); a win needs both

Shapes: ``correct`` is a bool vector [n_test], one entry per test example (True: classified right).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from absae_lib.intervals import mean_interval, mean_std, seed_difference_ci

TIE = "tie (within noise)"


def _correct(correct: Tensor | np.ndarray | list[bool], what: str = "correct") -> np.ndarray:
    out = np.asarray(torch.as_tensor(correct).cpu().numpy() if isinstance(correct, Tensor) else correct)
    if out.ndim != 1 or len(out) == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector of per-example results, got shape {out.shape}")
    return out.astype(float)


def bootstrap_interval(correct, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Accuracy and its bootstrap percentile interval over the test examples.

    Args:
        correct: [n_test] bool, per test example.
        n_boot: bootstrap resamples.
        level: coverage of the interval.

    Returns:
        {"accuracy", "low", "high"}.
    """
    c = _correct(correct)
    low, high = mean_interval(c, level, n_boot, seed)
    return {"accuracy": float(c.mean()), "low": low, "high": high}


def paired_difference(correct_a, correct_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                      names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same test examples, with a paired bootstrap interval.

    Both vectors are resampled with the same rows, so the noise they share (hard examples both miss) cancels.

    Returns:
        {"difference", "low", "high", "verdict"}: verdict "<A> better" when the interval lies above 0, "<B> better"
        below 0, else "tie (within noise)".
    """
    a, b = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    if len(a) != len(b):
        raise ValueError(f"both classifiers must be scored on the same test examples, got {len(a)} and {len(b)}")
    low, high = mean_interval(a - b, level, n_boot, seed)
    verdict = f"{names[0]} better" if low > 0 else f"{names[1]} better" if high < 0 else TIE
    return {"difference": float(a.mean() - b.mean()), "low": low, "high": high, "verdict": verdict}


def shuffled_null(fit_and_score: Callable[[Tensor, Tensor], float], y_train: Tensor, y_test: Tensor,
                  n_shuffles: int = 5, seed: int = 0) -> dict[str, Any]:
    """The test accuracy the whole procedure reaches when train and test labels are both shuffled.

    Selection, thresholds and fits run as usual on labels that carry no concept, and are scored against test labels
    that carry none either: what is left is the accuracy that choosing the best of many latents (or fitting many
    weights) buys by chance on test sets of this size. Shuffling the train labels alone would not do: a strongly
    bimodal latent can still be picked, and its random sign then scores near 0 or near 1 against the real labels.

    Args:
        fit_and_score: (y_train, y_test) -> test accuracy (the method refitted on these train labels, scored on
            these test labels).
        y_train: [n_train], y_test: [n_test] the real labels (permuted here, ``n_shuffles`` times, seeded).

    Returns:
        {"mean", "max", "accuracies"}: a method whose real accuracy is not above "max" found nothing the null could not.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be positive, got {n_shuffles}")
    ytr, yte = torch.as_tensor(y_train), torch.as_tensor(y_test)
    g = torch.Generator().manual_seed(seed)
    accs = [float(fit_and_score(ytr[torch.randperm(len(ytr), generator=g)], yte[torch.randperm(len(yte), generator=g)]))
            for _ in range(n_shuffles)]
    return {"mean": float(np.mean(accs)), "max": float(np.max(accs)), "accuracies": accs}


def seeded_difference(correct_a: Sequence, correct_b: Sequence, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95, names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Accuracy of A minus B where each side is one SAE per training seed, all scored on the same test examples.

    Two sources of noise, one interval each: a Student-t interval of the per-seed differences (would another seed
    change the answer? :func:`absae_lib.intervals.seed_difference_ci`) and a paired bootstrap over the test
    examples of the seed-averaged results (would another test set?).  The verdict is "<A> better" or "<B> better"
    only when both intervals exclude 0 on the same side, else "tie (within noise)".

    Args:
        correct_a, correct_b: one bool vector [n_test] per seed, the seeds in the same order on both sides (≥ 2).

    Returns:
        {"a", "b": per-seed accuracies, "a_mean", "a_std", "b_mean", "b_std", "difference" (of the means),
         "seed_low", "seed_high", "low", "high" (the test-example interval), "verdict"}.
    """
    if len(correct_a) != len(correct_b) or len(correct_a) < 2:
        raise ValueError(f"need the same ≥ 2 seeds on both sides, got {len(correct_a)} and {len(correct_b)}")
    a, b = [_correct(c, "correct_a") for c in correct_a], [_correct(c, "correct_b") for c in correct_b]
    if len({len(c) for c in a + b}) != 1:
        raise ValueError(f"every seed of both sides must be scored on the same test examples, got lengths "
                         f"{[len(c) for c in a]} and {[len(c) for c in b]}")
    a, b = np.stack(a), np.stack(b)
    acc_a, acc_b = a.mean(1), b.mean(1)
    seed_low, seed_high = seed_difference_ci(acc_a, acc_b, level)
    low, high = mean_interval(a.mean(0) - b.mean(0), level, n_boot, seed)
    if seed_low > 0 and low > 0:
        verdict = f"{names[0]} better"
    elif seed_high < 0 and high < 0:
        verdict = f"{names[1]} better"
    else:
        verdict = TIE
    (a_mean, a_std), (b_mean, b_std) = mean_std(acc_a), mean_std(acc_b)
    return {"a": acc_a.tolist(), "b": acc_b.tolist(), "a_mean": a_mean, "a_std": a_std, "b_mean": b_mean,
            "b_std": b_std, "difference": a_mean - b_mean, "seed_low": seed_low, "seed_high": seed_high,
            "low": low, "high": high, "verdict": verdict}

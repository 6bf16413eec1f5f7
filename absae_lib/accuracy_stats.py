"""How sure is a test accuracy? Bootstrap intervals, paired comparisons and a shuffled-label null.

A probe scored on a test set of a few hundred examples has an accuracy that would move by a few hundredths on
another draw of the same size. Chapter 6 calls a difference between two probes a win only when it survives that:

    bootstrap_interval   95% percentile interval of an accuracy, resampling the test examples
    paired_difference    the same for the difference of two classifiers scored on the *same* test examples
                         (paired: one resample for both), with a verdict: "A better", "B better" or
                         "tie (within noise)" when the interval contains 0
    shuffled_null        what the same procedure reaches when the labels are shuffled (train and test): the accuracy
                         a method gets from selection and fitting alone, with no concept to find

Shapes: ``correct`` is a bool vector [n_test], one entry per test example (True: classified right).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from absae_lib.intervals import mean_interval

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

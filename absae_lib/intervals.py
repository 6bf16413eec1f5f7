"""Noise: bootstrap intervals over held-out sequences, mean ± std over seeds, and verdicts that respect both.

The downstream metrics are ratios of sums over tokens, and tokens of one sequence are not independent, so the
bootstrap resamples whole *sequences*: ``metrics.spliced_loss(..., per_sequence=True)["per_sequence"]`` holds each
sequence's sums (clean, spliced and zero NLL, KL, n_tokens), and a statistic is a function of those sums
(vectorised: every sum may be an array over bootstrap draws).  Two SAEs evaluated on the same sequences are
compared *paired* (the same draw for both), which removes the variation between sequences that they share.

    compare(a, b, ci)   "reproduced" when the interval of a − b excludes 0 on a's better side, "contradicted" when it
                        excludes 0 on b's better side, otherwise "tie (within noise)".
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

PerSequence = Mapping[str, np.ndarray]  # name -> [n_seq] sums over each sequence's predicted positions
Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]  # sums (scalars or [n_boot] arrays) -> value(s)

# spliced_loss's downstream metrics as functions of per-sequence sums (the records call delta_loss "delta_ce").
LOSS_STATISTICS: dict[str, Statistic] = {
    "loss_recovered": lambda s: (s["zero"] - s["spliced"]) / (s["zero"] - s["clean"]),
    "delta_loss": lambda s: (s["spliced"] - s["clean"]) / s["n_tokens"],
    "kl": lambda s: s["kl"] / s["n_tokens"],
}


def _check_per_sequence(per_sequence: PerSequence) -> int:
    lengths = {name: np.asarray(values).shape for name, values in per_sequence.items()}
    shapes = set(lengths.values())
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] == 0:
        raise ValueError(f"per-sequence values must be equally long non-empty 1-D arrays, got shapes {lengths}")
    return next(iter(shapes))[0]


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # [n_boot, n] sequence ids


def _sums(per_sequence: PerSequence, draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
    if draws is None:
        return {name: np.asarray(v, dtype=np.float64).sum() for name, v in per_sequence.items()}
    return {name: np.asarray(v, dtype=np.float64)[draws].sum(-1) for name, v in per_sequence.items()}


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level is a probability in (0, 1), got {level}")
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def mean_interval(values: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [n] (resampled with replacement, seeded).

    The one bootstrap of independent values the book uses: accuracies over test examples (``accuracy_stats``),
    steering shifts over judge prompts (``steering.sweeps``).  Equal values give a point.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_interval needs a non-empty 1-D sequence of values, got shape {x.shape}")
    return _interval(x[_draws(x.size, n_boot, seed)].mean(1), level)


def bootstrap_ci(per_sequence: PerSequence, statistic: Statistic | str, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over sequences.  per_sequence: name -> [n_seq] -> (lo, hi).

    ``statistic``: a function of the per-sequence sums, or a name in LOSS_STATISTICS.  Identical sequences give a
    point (lo == hi): resampling them changes nothing.
    """
    stat = LOSS_STATISTICS[statistic] if isinstance(statistic, str) else statistic
    draws = _draws(_check_per_sequence(per_sequence), n_boot, seed)
    return _interval(stat(_sums(per_sequence, draws)), level)


def loss_intervals(per_sequence: PerSequence, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Point value and bootstrap interval of loss_recovered, delta_loss and kl: {name: v, name + "_ci": [lo, hi]}."""
    draws = _draws(_check_per_sequence(per_sequence), n_boot, seed)
    drawn, full = _sums(per_sequence, draws), _sums(per_sequence)
    out: dict = {}
    for name, stat in LOSS_STATISTICS.items():
        out[name] = float(stat(full))
        out[f"{name}_ci"] = list(_interval(stat(drawn), level))
    return out


def paired_difference_ci(a: PerSequence, b: PerSequence, statistic: Statistic | str, n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Interval of statistic(a) − statistic(b) for two SAEs scored on the same sequences, one draw for both."""
    n = _check_per_sequence(a)
    if _check_per_sequence(b) != n:
        raise ValueError("a and b must be scored on the same sequences (same n_seq)")
    if "clean" in a and "clean" in b and not np.allclose(a["clean"], b["clean"], rtol=1e-6, atol=1e-6):
        raise ValueError("a and b have different clean losses per sequence: they were not scored on the same tokens")
    stat = LOSS_STATISTICS[statistic] if isinstance(statistic, str) else statistic
    draws = _draws(n, n_boot, seed)
    return _interval(stat(_sums(a, draws)) - stat(_sums(b, draws)), level)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) over seeds; the std of a single value is nan (unknown)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {array.shape}")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan


def summarize_seeds(runs: Sequence[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, float]:
    """One dict per seed -> {key: mean, key + "_std": std} for every numeric key present in all runs (or ``keys``)."""
    if not runs:
        raise ValueError("summarize_seeds needs at least one run")
    if keys is None:
        keys = [k for k, v in runs[0].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and all(k in r for r in runs)]
    out: dict[str, float] = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([run[key] for run in runs])
    return out


def seed_difference_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of a_i − b_i over seeds i (a and b trained with the same seeds, scored on
    the same data).  With n seeds it uses n − 1 degrees of freedom: 3 seeds give mean ± 4.30·sd/√3.  Needs ≥ 2."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size < 2:
        raise ValueError(f"a seed interval needs the same ≥ 2 seeds on both sides, got {np.shape(a)} and {np.shape(b)}")
    half = stats.t.ppf(0.5 + level / 2, diff.size - 1) * diff.std(ddof=1) / math.sqrt(diff.size)
    return float(diff.mean() - half), float(diff.mean() + half)


VERDICTS = ("reproduced", "contradicted", "tie (within noise)")


def compare(a: float, b: float, ci: Sequence[float], higher_is_better: bool = True) -> str:
    """Verdict on the claim "a is better than b", given ``ci`` = (lo, hi), an interval of the difference a − b.

    "reproduced" when the interval lies wholly on a's better side of 0, "contradicted" when wholly on b's, else
    "tie (within noise)" (an interval touching 0 does not exclude "no difference").  The point values a, b guard
    against a swapped interval: a − b must not lie far outside ci (more than its width away).
    """
    lo, hi = (float(v) for v in ci)
    if not lo <= hi:
        raise ValueError(f"ci must be (lo, hi) with lo ≤ hi, got {tuple(ci)}")
    diff = a - b
    width = hi - lo
    if not lo - width - 1e-12 <= diff <= hi + width + 1e-12:
        raise ValueError(f"a − b = {diff:.4g} lies far outside ci = ({lo:.4g}, {hi:.4g}): is ci the interval of b − a?")
    sign = 1.0 if higher_is_better else -1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "contradicted"
    return "tie (within noise)"

"""Bootstrap intervals, paired comparisons and the shuffled-label null (absae_lib.accuracy_stats)."""

import numpy as np
import pytest
import torch

from absae_lib import accuracy_stats
from absae_lib.dim import dim_projection_accuracy


def test_bootstrap_interval_matches_the_binomial_width():
    correct = np.arange(400) % 4 != 0  # accuracy 0.75 on 400 examples
    out = accuracy_stats.bootstrap_interval(correct, n_boot=4000, seed=1)
    assert out["accuracy"] == pytest.approx(0.75)
    half = 1.96 * np.sqrt(0.75 * 0.25 / 400)  # normal approximation: ±0.042
    assert out["low"] == pytest.approx(0.75 - half, abs=0.01)
    assert out["high"] == pytest.approx(0.75 + half, abs=0.01)
    assert accuracy_stats.bootstrap_interval(correct, seed=3) == accuracy_stats.bootstrap_interval(correct, seed=3)


def test_paired_difference_verdicts():
    rng = np.random.default_rng(0)
    b = rng.random(300) < 0.7
    same = accuracy_stats.paired_difference(b, b)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0
    assert same["verdict"] == accuracy_stats.TIE
    a = b.copy()
    a[~b] = True  # A also gets right every example B misses: +0.3
    better = accuracy_stats.paired_difference(a, b, names=("AbsTopK", "DiM"))
    assert better["difference"] == pytest.approx(1 - b.mean())
    assert better["verdict"] == "AbsTopK better"
    assert accuracy_stats.paired_difference(b, a, names=("AbsTopK", "DiM"))["verdict"] == "DiM better"
    c = b.copy()
    c[np.flatnonzero(~b)[:2]] = True  # two examples of 300: inside the noise
    assert accuracy_stats.paired_difference(c, b)["verdict"] == accuracy_stats.TIE
    with pytest.raises(ValueError, match="same test examples"):
        accuracy_stats.paired_difference(a[:10], b)


def test_shuffled_null_is_chance_for_a_real_signal():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 8, generator=g)
    x[:, 0] += 3 * (2.0 * y - 1)  # bimodal: with only the train labels shuffled, DiM could still find it by luck
    real = dim_projection_accuracy(x[:200], y[:200], x[200:], y[200:])
    null = accuracy_stats.shuffled_null(lambda a, b: dim_projection_accuracy(x[:200], a, x[200:], b),
                                        y[:200], y[200:], n_shuffles=8)
    assert real > 0.99
    assert abs(null["mean"] - 0.5) < 0.1 and null["max"] < 0.75 < real
    assert len(null["accuracies"]) == 8


def test_seeded_difference_needs_both_the_seeds_and_the_test_set_to_agree():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n) < 0.7
    # A: B's answers plus 40 more right answers, at every seed: a real, seed-stable win.
    better = base.copy()
    better[np.flatnonzero(~base)[:40]] = True
    a = [better.copy() for _ in range(3)]
    b = [base.copy() for _ in range(3)]
    a[1][np.flatnonzero(better)[:3]] = False  # a little seed noise
    out = accuracy_stats.seeded_difference(a, b, names=("A", "B"))
    assert out["verdict"] == "A better" and out["seed_low"] > 0 and out["low"] > 0
    assert out["difference"] == pytest.approx(np.mean([x.mean() for x in a]) - base.mean())
    flipped = accuracy_stats.seeded_difference(b, a, names=("B", "A"))
    assert flipped["verdict"] == "A better" and flipped["difference"] == pytest.approx(-out["difference"])
    # Seeds that disagree (A ahead at two seeds, behind at the third): a tie, however large the test set.
    worse = base.copy()
    worse[np.flatnonzero(base)[:40]] = False
    mixed = accuracy_stats.seeded_difference([better, better, worse], b, names=("A", "B"))
    assert mixed["verdict"] == accuracy_stats.TIE and mixed["seed_low"] < 0 < mixed["seed_high"]
    # The same classifier on both sides: a tie with both intervals at 0.
    same = accuracy_stats.seeded_difference(b, b)
    assert same["verdict"] == accuracy_stats.TIE and same["difference"] == 0


def test_seeded_difference_refuses_mismatched_inputs():
    one = [np.ones(10, bool), np.zeros(10, bool)]
    with pytest.raises(ValueError, match="same ≥ 2 seeds"):
        accuracy_stats.seeded_difference(one[:1], one[:1])
    with pytest.raises(ValueError, match="same test examples"):
        accuracy_stats.seeded_difference(one, [np.ones(10, bool), np.ones(9, bool)])

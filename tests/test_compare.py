"""absae_lib.compare: the README's first table and the verdicts printed under it, on scores made up here."""

import numpy as np
import pytest

from absae_lib import compare

N_SEQ = 40


def _scores(nmse_per_token: float, spliced_extra: float, seed: int, l0: float = 32.0) -> dict:
    """One seed's held-out scores: per-token NMSE as given; the spliced-in NLL of each sequence is the clean NLL plus
    ``spliced_extra`` per token (plus a little per-sequence noise), so its loss recovered falls as it grows."""
    rng = np.random.default_rng(seed)
    n_tokens = np.full(N_SEQ, 127.0)
    clean = 3.0 * n_tokens + np.random.default_rng(0).normal(0, 1, N_SEQ)  # the same held-out sequences for all
    zero = 9.0 * n_tokens
    spliced = clean + spliced_extra * n_tokens + rng.normal(0, 0.1, N_SEQ)
    per_sequence = {"clean": clean, "spliced": spliced, "zero": zero, "kl": spliced - clean, "n_tokens": n_tokens}
    total = {name: v.sum() for name, v in per_sequence.items()}
    jitter = 1e-4 * rng.normal()
    return {"l0": l0, "nmse": nmse_per_token / 2 + jitter, "nmse_typical": nmse_per_token + jitter,
            "nmse_per_token": nmse_per_token + jitter, "explained_variance": 1 - nmse_per_token,
            "dead_fraction": 0.0, "fraction_negative": 0.0,
            "loss_recovered": (total["zero"] - total["spliced"]) / (total["zero"] - total["clean"]),
            "delta_ce": (total["spliced"] - total["clean"]) / total["n_tokens"],
            "kl": total["kl"] / total["n_tokens"], "per_sequence": per_sequence}


def test_a_clear_winner_is_reproduced_and_a_clear_loser_contradicted():
    scores = {"topk": [_scores(0.10, 0.20, seed) for seed in range(3)],
              "abstopk": [_scores(0.08, 0.10, seed + 10) for seed in range(3)],
              "jumprelu": [_scores(0.12, 0.40, seed + 20) for seed in range(3)]}
    found = compare.verdicts(scores)
    assert set(found) == {"topk", "jumprelu"}
    assert all(c["verdict"] == "reproduced" for by_m in found.values() for c in by_m.values())
    flipped = compare.verdicts({"abstopk": scores["jumprelu"], "topk": scores["topk"]})
    assert all(c["verdict"] == "contradicted" for c in flipped["topk"].values())


def test_equal_architectures_tie_and_unmatched_sparsity_is_not_comparable():
    same = [_scores(0.10, 0.20, seed) for seed in range(3)]
    other_seeds = [_scores(0.10, 0.20, seed + 5) for seed in range(3)]
    found = compare.verdicts({"abstopk": same, "topk": other_seeds})
    assert {c["verdict"] for c in found["topk"].values()} == {"tie (within noise)"}
    sparser = [_scores(0.12, 0.40, seed, l0=20.0) for seed in range(3)]
    found = compare.verdicts({"abstopk": same, "jumprelu": sparser})
    assert {c["verdict"] for c in found["jumprelu"].values()} == {"not comparable"}


def test_table_shows_mean_and_spread_over_seeds():
    scores = {"abstopk": [_scores(v, 0.1, i) for i, v in enumerate((0.08, 0.10, 0.12))]}
    row = compare.table(scores).loc["abstopk"]
    mean, std = (float(part) for part in row["per-token NMSE"].split(" ± "))
    assert mean == pytest.approx(0.10, abs=2e-4) and std == pytest.approx(0.02, abs=2e-4)
    lo, hi = (float(v) for v in row["loss recovered 95% CI"].strip("[]").split(", "))
    assert lo <= float(row["loss recovered"].split(" ± ")[0]) <= hi

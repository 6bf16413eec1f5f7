"""The reconstruction study's statistics: seed intervals, the seeded comparison and its verdict rule, the
normalisation rule, the calibration search's first guess, and check_results recomputing the same verdicts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from absae_lib import SAE, calibrate, intervals, study
from absae_lib.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_results  # noqa: E402


def test_seed_interval_closed_form():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.302653 -> 2 ± 4.302653 / √3
    lo, hi = intervals.seed_difference_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert lo == pytest.approx(2 - half, rel=1e-9) and hi == pytest.approx(2 + half, rel=1e-9)
    with pytest.raises(ValueError, match="≥ 2 seeds"):
        intervals.seed_difference_ci([1.0], [0.0])


def per_sequence(spliced_excess: np.ndarray, n_tokens: int = 100, seed: int = 0) -> dict:
    """Per-sequence sums with clean NLL 3 nats/token, zero-ablation 10, the SAE ``spliced_excess`` nats above clean."""
    rng = np.random.default_rng(seed)
    n = len(spliced_excess)
    clean = 3.0 * n_tokens + rng.normal(0, 5, n)
    return {"clean": clean, "spliced": clean + spliced_excess * n_tokens, "zero": clean + 7.0 * n_tokens,
            "kl": spliced_excess * n_tokens * 1.2, "n_tokens": np.full(n, float(n_tokens))}


def scores(nmse: list[float], excess: float, l0: float = 32.0, noise: float = 0.01) -> list[dict]:
    """One score dict per seed, on the same 64 sequences (the clean losses do not depend on the SAE)."""
    out = []
    for seed, value in enumerate(nmse):
        ps = per_sequence(excess + noise * np.random.default_rng(100 + seed).normal(size=64))
        out.append({"nmse_per_token": value, "l0": l0, "per_sequence": ps,
                    "loss_recovered": intervals.LOSS_STATISTICS["loss_recovered"](
                        {k: v.sum() for k, v in ps.items()})})
    return out


@pytest.mark.parametrize("a_nmse, b_nmse, want", [
    ([0.090, 0.091, 0.089], [0.100, 0.101, 0.099], "reproduced"),    # a lower by 10 sds: better
    ([0.110, 0.111, 0.109], [0.100, 0.101, 0.099], "contradicted"),
    ([0.100, 0.102, 0.098], [0.101, 0.099, 0.100], "tie (within noise)"),
])
def test_compare_seeded_nmse(a_nmse, b_nmse, want):
    got = study.compare_seeded(scores(a_nmse, 0.2), scores(b_nmse, 0.2), "nmse_per_token")
    assert got["verdict"] == want
    assert got["difference"] == pytest.approx(np.mean(a_nmse) - np.mean(b_nmse))
    assert check_results._reconstruction_verdict(got) == want  # CI's recomputation agrees


def test_compare_seeded_loss_needs_both_intervals():
    # a's spliced loss 0.1 nat/token below b's on every sequence: both intervals agree, a is better
    a, b = scores([0.1] * 3, 0.2), scores([0.1] * 3, 0.3)
    got = study.compare_seeded(a, b, "loss_recovered")
    assert got["verdict"] == "reproduced" and got["sequence_ci"][0] > 0 and got["seed_ci"][0] > 0
    assert check_results._reconstruction_verdict(got) == "reproduced"
    # Sequence noise tiny, but the seeds disagree (one seed reverses the sign): the seed interval holds 0, a tie.
    mixed = scores([0.1] * 3, 0.2)
    mixed[2]["loss_recovered"] = b[2]["loss_recovered"] - 0.05
    got = study.compare_seeded(mixed, b, "loss_recovered")
    assert got["seed_ci"][0] < 0 < got["seed_ci"][1] and got["verdict"] == "tie (within noise)"
    assert check_results._reconstruction_verdict(got) == "tie (within noise)"


def test_compare_seeded_refuses_unmatched_sparsity():
    got = study.compare_seeded(scores([0.09] * 2 + [0.091], 0.2, l0=32),
                               scores([0.10] * 2 + [0.101], 0.2, l0=40), "nmse_per_token")
    assert got["verdict"] == "not comparable" and got["l0"] == [32.0, 40.0]
    assert check_results._reconstruction_verdict(got) == "not comparable"


def test_summarize_reports_seed_spread_and_a_loss_interval():
    runs = scores([0.09, 0.10, 0.11], 0.2)
    for run in runs:
        run |= {m: 0.5 for m in study.RECONSTRUCTION if m not in run} | {"nmse_typical": 0.1, "nmse": 0.05,
                                                                         "delta_ce": 0.2, "kl": 0.24}
    s = study.summarize(runs)
    assert s["nmse_per_token"] == pytest.approx(0.10) and s["nmse_per_token_std"] == pytest.approx(0.01)
    lo, hi = s["loss_recovered_ci"]
    assert lo < 1 - 0.2 / 7 < hi and s["n_seeds"] == 3  # (10 − 3.2) / 7 of the way: 0.9714


def test_normalisation_rule():
    better, worse = {"per_sequence": per_sequence(np.full(64, 0.2))}, {"per_sequence": per_sequence(np.full(64, 0.3))}
    # global (the rival) measurably better for both architectures: it wins; for only one: the default stays
    assert study.choose_normalization({"topk": [worse, better], "abstopk": [worse, better]}) == "global"
    assert study.choose_normalization({"topk": [worse, better], "abstopk": [better, worse]}) == "per_token"
    assert study.choose_normalization({"topk": [better, better], "abstopk": [worse, better]}) == "per_token"


def fixed_l0_trainer(d: int = 16):
    """train(config) -> an AbsTopK SAE whose every token has exactly round(64 / coefficient) active latents."""
    calls = []

    def train(config: TrainConfig):
        calls.append(config.sparsity_coefficient)
        k = max(1, min(d, round(64 / config.sparsity_coefficient)))
        torch.manual_seed(0)
        return SAE(8, d, "abstopk", k=k), []

    return train, calls


def test_calibration_first_guess_on_target_costs_one_trial():
    train, calls = fixed_l0_trainer()
    rows = torch.randn(256, 8)
    found = calibrate.calibrate_l0(None, rows, TrainConfig("standard", d_sae=16, k=None), 8.0, low=1.0, high=64.0,
                                   first=8.0, train=train)
    assert calls == [8.0] and found.l0 == 8.0 and found.within_tolerance


def test_calibration_from_a_wrong_first_guess_goes_the_right_way():
    train, calls = fixed_l0_trainer()
    rows = torch.randn(256, 8)
    # first = 16 gives L0 4, below the target 8: the coefficient must fall, so the next trial is the low end
    found = calibrate.calibrate_l0(None, rows, TrainConfig("standard", d_sae=16, k=None), 8.0, low=2.0, high=32.0,
                                   first=16.0, train=train, max_trials=6)
    assert calls[:2] == [16.0, 2.0]
    assert found.within_tolerance and abs(found.l0 - 8) <= 0.8
    with pytest.raises(ValueError, match="outside"):
        calibrate.calibrate_l0(None, rows, TrainConfig("standard", d_sae=16, k=None), 8.0, low=2.0, high=32.0,
                               first=40.0, train=train)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_study_steps_per_architecture_survive_the_record(profile):
    """check_results recomputes each study SAE's steps from the record's JSON settings as Settings does."""
    from dataclasses import asdict

    from absae_lib import book, pipeline

    s = book.settings(profile)
    plain = book._plain(asdict(s))
    for architecture in ("standard", "jumprelu", "topk", "batchtopk", "abstopk", "unrolled"):
        steps = s.study_steps_for(architecture)
        assert check_results._study_steps(plain, architecture) == steps
        if architecture != "unrolled":
            config = pipeline.study_config(s, architecture)
            assert (config.n_steps, config.eval_every) == (steps, max(1, steps // 16))
    longer = dict(s.study_step_factors)
    assert s.study_steps_for("batchtopk") == round(longer.get("batchtopk", 1.0) * s.study_steps)
    if profile == "cpu":  # the measured plateau (RESULTS.md §6-§7): six passes, nine for BatchTopK, twelve for JumpReLU
        assert (s.study_steps, s.study_steps_for("batchtopk"), s.study_steps_for("jumprelu")) == (1464, 2196, 2928)


def test_study_jumprelu_learns_its_thresholds_and_starts_at_k():
    """The study's JumpReLU uses the input-scaled kernel and starts at L0 = k; the chapter-3 SAEs keep theirs."""
    from absae_lib import book, pipeline

    s = book.settings("cpu")
    config = pipeline.study_config(s, "jumprelu", 16)
    assert config.jumprelu_bandwidth is None and config.init_l0 == 16
    assert pipeline.train_config(s, "jumprelu").jumprelu_bandwidth == pipeline.BOOK_JUMPRELU_BANDWIDTH
    assert pipeline.study_config(s, "standard", 16).init_l0 == 16

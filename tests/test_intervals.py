"""Bootstrap intervals over sequences, mean ± std over seeds, verdicts, and the per-token reconstruction metrics."""

import math

import numpy as np
import pytest
import torch

from absae_lib import SAE, intervals, metrics
from absae_lib.metrics import spliced_loss


def constant_sequences(n=10):
    return {"clean": np.full(n, 2.0), "spliced": np.full(n, 2.5), "zero": np.full(n, 7.0), "kl": np.full(n, 0.3),
            "n_tokens": np.full(n, 10.0)}


def test_interval_of_a_constant_is_a_point():
    out = intervals.loss_intervals(constant_sequences())
    assert out["loss_recovered"] == pytest.approx(0.9)  # (7 − 2.5) / (7 − 2)
    assert out["delta_loss"] == pytest.approx(0.05) and out["kl"] == pytest.approx(0.03)
    for name in intervals.LOSS_STATISTICS:
        lo, hi = out[f"{name}_ci"]
        assert lo == pytest.approx(hi) == pytest.approx(out[name])


def test_interval_of_a_mean_has_the_normal_width():
    """kl / n_tokens with one token per sequence is a plain mean: the 95% interval is ≈ ±1.96 σ/√n."""
    n = 400
    values = np.random.default_rng(3).normal(1.0, 1.0, n)
    per_seq = {"kl": values, "n_tokens": np.ones(n)}
    lo, hi = intervals.bootstrap_ci(per_seq, "kl", n_boot=4000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(n)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert lo < values.mean() < hi


def test_paired_difference_removes_what_two_saes_share():
    rng = np.random.default_rng(0)
    n = 50
    hard = rng.uniform(1, 10, n)  # how hard each sequence is: shared by both SAEs
    a = {"clean": hard, "spliced": hard + 0.10, "zero": hard + 5, "kl": np.full(n, 0.1), "n_tokens": np.full(n, 20.0)}
    b = dict(a, spliced=hard + 0.20)
    lo, hi = intervals.paired_difference_ci(a, b, "delta_loss")
    assert lo == pytest.approx(hi) == pytest.approx(-0.1 / 20)  # b is worse by exactly 0.1 nats per sequence
    assert intervals.paired_difference_ci(a, a, "loss_recovered") == (0.0, 0.0)
    with pytest.raises(ValueError, match="same tokens"):
        intervals.paired_difference_ci(a, dict(b, clean=hard + 1), "kl")
    with pytest.raises(ValueError, match="equally long"):
        intervals.bootstrap_ci({"kl": np.ones(3), "n_tokens": np.ones(4)}, "kl")


def test_compare_verdicts():
    assert intervals.compare(0.97, 0.96, (0.004, 0.016)) == "reproduced"
    assert intervals.compare(0.95, 0.96, (-0.016, -0.004)) == "contradicted"
    assert intervals.compare(0.965, 0.96, (-0.002, 0.012)) == "tie (within noise)"
    assert intervals.compare(0.96, 0.96, (0.0, 0.0)) == "tie (within noise)"  # touching 0 excludes nothing
    # lower is better (NMSE, ΔCE, KL): a smaller a is the claim
    assert intervals.compare(0.10, 0.12, (-0.03, -0.01), higher_is_better=False) == "reproduced"
    assert intervals.compare(0.12, 0.10, (0.01, 0.03), higher_is_better=False) == "contradicted"
    with pytest.raises(ValueError, match="b − a"):
        intervals.compare(0.97, 0.96, (-0.016, -0.014))  # an interval of b − a
    with pytest.raises(ValueError, match="lo ≤ hi"):
        intervals.compare(0.97, 0.96, (0.02, 0.01))


def test_mean_std_and_seed_summary():
    assert intervals.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = intervals.mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)
    summary = metrics.summarize_seeds([{"nmse": 0.1, "l0": 32, "name": "a"}, {"nmse": 0.3, "l0": 32, "name": "b"}])
    assert summary == pytest.approx({"nmse": 0.2, "nmse_std": math.sqrt(0.02), "l0": 32, "l0_std": 0.0})


def test_per_token_nmse_and_typical_mask():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [300.0, 400.0]])
    recon = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [300.0, 400.0]])
    # per token: 16/25, 0, (zero row left out), 0 -> mean 16/75; the all-token NMSE is dominated by the big row
    assert metrics.nmse_per_token(x, recon) == pytest.approx(16 / 75)
    assert metrics.nmse(x, recon) == pytest.approx(16 / (25 + 1 + 250000))
    assert metrics.typical_mask(x, factor=10).tolist() == [True, True, True, False]  # median norm 2.5 (lower median)


def test_evaluate_reconstruction_reports_per_token_nmse():
    torch.manual_seed(0)
    sae = SAE(8, 32, "abstopk", k=3).eval()
    x = torch.randn(100, 8) * torch.logspace(0, 2, 100)[:, None]
    with torch.no_grad():
        want = metrics.nmse_per_token(x, sae(x).recon)
    assert metrics.evaluate_reconstruction(sae, x, batch_size=7, progress=False)["nmse_per_token"] == pytest.approx(want)


def test_spliced_loss_per_sequence_sums_to_the_totals():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=50, act_fn="relu",
                                  normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50, (6, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    sae = SAE(16, 64, "abstopk", k=4).eval()
    plain = spliced_loss(model, sae, tokens, "blocks.0.hook_resid_post", batch_size=4, progress=False)
    r = spliced_loss(model, sae, tokens, "blocks.0.hook_resid_post", batch_size=4, progress=False, per_sequence=True)
    assert {k: v for k, v in r.items() if k != "per_sequence"} == plain  # the option changes no number
    per_seq = r["per_sequence"]
    assert per_seq["clean"].shape == (6,) and per_seq["n_tokens"].sum() == r["n_tokens"]
    point = intervals.loss_intervals(per_seq, n_boot=200)
    for name in ("loss_recovered", "delta_loss", "kl"):
        assert point[name] == pytest.approx(r[name], rel=1e-9, abs=1e-12)
        lo, hi = point[f"{name}_ci"]
        assert lo <= r[name] <= hi

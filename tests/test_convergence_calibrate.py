"""Held-out evaluation during training, the plateau test, matched sparsity (calibrate.py) and the unrolled encoder."""

from dataclasses import replace

import pytest
import torch

from absae_lib import SAE, calibrate, convergence
from absae_lib.metrics import evaluate_reconstruction
from absae_lib.train import TrainConfig, train_sae

D, D_SAE, K = 16, 64, 4


def synthetic(n, seed):
    """Rows that are 4-sparse combinations of 64 fixed atoms, plus a little noise.  [n, 16]."""
    atoms = torch.randn(D_SAE, D, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(n, D_SAE).scatter_(1, torch.randint(0, D_SAE, (n, 4), generator=g), 3 * torch.rand(n, 4, generator=g))
    return z @ atoms + 0.05 * torch.randn(n, D, generator=g)


@pytest.fixture(scope="module")
def data():
    return synthetic(1024, 1), synthetic(256, 2)


def config(architecture, **kwargs):
    base = dict(architecture=architecture, d_sae=D_SAE, k=K if architecture not in ("standard", "jumprelu") else None,
                batch_size=128, n_steps=20, progress=False, device="cpu",
                sparsity_coefficient=1e-2 if architecture in ("standard", "jumprelu") else 0.0)
    base.update(kwargs)
    return TrainConfig(**base)


# --- held-out evaluation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture,normalization", [
    ("topk", "global"), ("batchtopk", "global"), ("jumprelu", "global"), ("abstopk", "per_token"),
])
def test_evaluating_does_not_change_the_trajectory(data, architecture, normalization):
    x, heldout = data
    cfg = config(architecture, input_normalization=normalization)
    plain, history = train_sae(x, cfg)
    evaluated, evaluated_history = train_sae(x, replace(cfg, eval_every=8), eval_data=heldout)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, evaluated.state_dict()[name]), name
    assert [r["loss"] for r in history] == [r["loss"] for r in evaluated_history if r["step"] % cfg.log_every == 0
                                            or r["step"] == cfg.n_steps - 1]
    assert [r["step"] for r in evaluated_history if "heldout_nmse" in r] == [0, 8, 16, 19]


@pytest.mark.parametrize("normalization", ["global", "per_token"])
def test_last_heldout_row_is_the_final_sae_on_the_heldout_rows(data, normalization):
    """The evaluation inside the loop sees what the finished SAE sees: same NMSE, per-token NMSE and L0."""
    x, heldout = data
    sae, history = train_sae(x, config("topk", input_normalization=normalization, eval_every=8), eval_data=heldout)
    last = history[-1]
    final = evaluate_reconstruction(sae, heldout, progress=False)
    assert last["heldout_nmse"] == pytest.approx(final["nmse"], rel=1e-4)
    assert last["heldout_nmse_per_token"] == pytest.approx(final["nmse_per_token"], rel=1e-4)
    assert last["heldout_l0"] == final["l0"] == K
    assert convergence.train_heldout_gap(history) == pytest.approx(
        (last["heldout_nmse"] - last["train_sample_nmse"]) / last["train_sample_nmse"])


def test_heldout_needs_both_data_and_interval(data):
    x, heldout = data
    with pytest.raises(ValueError, match="needs both"):
        train_sae(x, config("topk"), eval_data=heldout)
    with pytest.raises(ValueError, match="needs both"):
        train_sae(x, config("topk", eval_every=5))
    with pytest.raises(ValueError, match="same hook"):
        train_sae(x, config("topk", eval_every=5), eval_data=heldout[:, :8])
    with pytest.raises(ValueError, match="input_normalization"):
        train_sae(x, config("topk", input_normalization="layer"))


def test_new_fields_at_their_defaults_leave_the_fingerprint_unchanged():
    """Cache keys of today's runs (pipeline.sae_folder hashes the fingerprint) must not move."""
    new = ("input_normalization", "eval_every", "eval_tokens", "calibrate_batchtopk")
    assert not set(new) & set(TrainConfig().fingerprint())
    changed = TrainConfig(input_normalization="per_token", eval_every=50, calibrate_batchtopk=True).fingerprint()
    assert changed["input_normalization"] == "per_token" and changed["eval_every"] == 50 and changed["calibrate_batchtopk"]


def test_plateau_closed_form():
    flat = convergence.plateau([[0, 1.0], [100, 0.5], [200, 0.495]])  # window starts at step 160: 0.497 by interpolation
    assert flat.reached and flat.improvement == pytest.approx((0.497 - 0.495) / 0.497)
    falling = convergence.plateau([[0, 1.0], [100, 0.5], [200, 0.0]], window=0.5)
    assert not falling.reached and falling.improvement == pytest.approx(1.0)
    history = [{"step": 0, "heldout_nmse": 1.0}, {"step": 5}, {"step": 10, "heldout_nmse": 0.99}]
    assert convergence.heldout_curve(history) == [[0, 1.0], [10, 0.99]]
    assert convergence.plateau(history).reached
    with pytest.raises(ValueError, match="at least 2"):
        convergence.plateau([[0, 1.0]])
    with pytest.raises(ValueError, match="window"):
        convergence.plateau([[0, 1.0], [1, 0.5]], window=1.5)


# --- matched sparsity -------------------------------------------------------------------------------------------------


def test_batchtopk_threshold_closed_form():
    """pre = x (identity encoder, zero biases): the threshold is the mean over batches of the (B·k)-th largest entry."""
    sae = SAE(4, 4, "batchtopk", k=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.b_dec.zero_()
    rows = torch.tensor([[4.0, 3, 0, 0], [2, 1, 0, 0], [9, 8, 7, -1], [6, 0, 0, 0]])
    # batch 1: entries 4, 3, 2, 1 -> 2nd largest 3; batch 2: 9, 8, 7, 6 -> 8 (negative entries are cut by the ReLU)
    assert calibrate.batchtopk_threshold(sae, rows, batch_size=2) == pytest.approx(5.5)
    assert calibrate.recalibrate_batchtopk_(sae, rows, batch_size=4) == pytest.approx(6.0)  # 4th largest of all 16
    assert torch.all(sae.threshold == 6.0)
    with pytest.raises(ValueError, match="BatchTopK"):
        calibrate.batchtopk_threshold(SAE(4, 4, "topk", k=1), rows)


def test_calibrated_batchtopk_lands_on_k(data):
    x, heldout = data
    cfg = config("batchtopk", n_steps=40)
    running, _ = train_sae(x, cfg)
    calibrated, _ = train_sae(x, replace(cfg, calibrate_batchtopk=True))
    l0 = calibrate.heldout_l0(calibrated, heldout)
    assert abs(l0 / K - 1) <= 0.1, l0
    assert abs(l0 / K - 1) < abs(calibrate.heldout_l0(running, heldout) / K - 1)  # the running mean lags behind
    assert calibrated.cfg.metadata["calibrated_threshold"] == pytest.approx(calibrated.threshold[0].item())


@pytest.mark.parametrize("architecture,knob,low,high", [
    ("standard", "sparsity_coefficient", 0.1, 30.0), ("jumprelu", "init_l0", 1.0, 40.0),
])
def test_calibrate_l0_lands_within_ten_percent(data, architecture, knob, low, high):
    x, heldout = data
    cfg = config(architecture, n_steps=50, lr=1e-2, init_l0=20.0 if knob == "sparsity_coefficient" else None)
    if knob == "sparsity_coefficient":
        cfg = replace(cfg, init_l0=None)
    result = calibrate.calibrate_l0(x, heldout, cfg, target_l0=8.0, knob=knob, low=low, high=high, max_trials=7)
    assert result.within_tolerance, result.trials
    assert abs(result.l0 / 8.0 - 1) <= 0.1 and len(result.trials) <= 7
    assert calibrate.heldout_l0(result.sae, heldout) == result.l0  # the SAE returned is the one measured


def test_calibrate_l0_says_when_the_range_misses(data):
    x, heldout = data
    cfg = config("jumprelu", n_steps=10)
    result = calibrate.calibrate_l0(x, heldout, cfg, target_l0=0.01, knob="init_l0", low=20.0, high=30.0)
    assert not result.within_tolerance and len(result.trials) == 2
    with pytest.raises(ValueError, match="l0_falls"):
        calibrate.calibrate_l0(x, heldout, cfg, 8.0, knob="lr", low=1e-4, high=1e-2)


# --- the unrolled encoder (issue 9 item 5) ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("tied", [True, False])
def test_unrolled_abstopk_trains(data, steps, tied, tmp_path):
    x, heldout = data
    cfg = config("unrolled", n_steps=30, sae_kwargs={"unrolled_steps": steps, "unrolled_tied": tied,
                                                     "unrolled_prox": "abstopk"}, eval_every=29)
    sae, history = train_sae(x, cfg, eval_data=heldout)
    assert sae.cfg.unrolled_steps == steps and sae.cfg.unrolled_tied == tied
    assert history[-1]["heldout_nmse"] < 0.9 * history[0]["heldout_nmse"]  # it learned
    final = evaluate_reconstruction(sae, heldout, progress=False)
    assert final["l0"] <= K and final["fraction_negative"] > 0  # k-sparse, both signs
    assert final["nmse"] == pytest.approx(history[-1]["heldout_nmse"], rel=1e-4)  # the folded scale is exact
    sae.save(tmp_path / "u")
    assert torch.allclose(SAE.load(tmp_path / "u").encode(heldout), sae.encode(heldout))


def test_final_gap_is_zero_on_the_same_rows_and_positive_on_harder_ones():
    # An identity AbsTopK (W_enc = W_dec = I, k = 4 of 8): rows with 4 large coordinates and a little noise are
    # almost exact; dense Gaussian rows lose their 4 smallest coordinates.
    sae = SAE(8, 8, "abstopk", k=4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8))
        sae.W_dec.copy_(torch.eye(8))
    g = torch.Generator().manual_seed(0)
    sparse_rows = 0.01 * torch.randn(512, 8, generator=g)
    sparse_rows[:, :4] += 5.0
    dense_rows = torch.randn(512, 8, generator=g)
    assert convergence.final_gap(sae, dense_rows, dense_rows) == 0.0
    assert convergence.final_gap(sae, sparse_rows, dense_rows) > 100  # training rows fit, held-out ones do not
    assert convergence.final_gap(sae, dense_rows, sparse_rows) < 0

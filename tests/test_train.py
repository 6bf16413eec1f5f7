"""The trainer: every variant learns, penalties do what they say, checkpoints resume exactly, bad data is refused."""

import math

import pytest
import torch

from absae_lib import TrainConfig, train
from absae_lib.train import batch_indices, geometric_median, input_scale, lr_factor, train_sae


def signed_atoms(n=12_000, d=24, n_atoms=48, active=3, seed=0):
    """Each sample: `active` random atoms with random signs and magnitudes, plus a little noise."""
    atoms = torch.randn(n_atoms, d, generator=torch.Generator().manual_seed(1234))  # one dictionary for every seed
    atoms /= atoms.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, n_atoms, generator=g).argsort(-1)[:, :active]
    codes = torch.zeros(n, n_atoms).scatter(1, idx, (1 + torch.rand(n, active, generator=g)) * torch.sign(torch.randn(n, active, generator=g)))
    return codes @ atoms + 0.01 * torch.randn(n, d, generator=g) + 0.5


def quick(architecture, **kwargs):
    base = dict(architecture=architecture, d_sae=96, k=3, batch_size=256, n_steps=400, lr=1e-2, progress=False,
                dead_window_tokens=8192, log_every=10, autocast="off")  # fp32: tests compare exact maths
    base.update(kwargs)
    return TrainConfig(**base)


def nmse(sae, x):
    with torch.no_grad():
        return ((sae(x).recon - x).pow(2).sum() / x.pow(2).sum()).item()


def test_abstopk_beats_topk_on_signed_atoms():
    # Signed atoms are AbsTopK's home ground: TopK must spend two latents (±d) per atom.
    x = signed_atoms()
    held_out = signed_atoms(n=2000, seed=1)
    errors = {arch: nmse(train_sae(x, quick(arch))[0], held_out) for arch in ("abstopk", "topk")}
    assert errors["abstopk"] < 0.8 * errors["topk"], errors


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "batchtopk", "abstopk", "unrolled"])
def test_every_variant_learns(architecture):
    x = signed_atoms()
    config = quick(architecture, sparsity_coefficient=0.02 if architecture in ("standard", "jumprelu") else 0.0)
    sae, history = train_sae(x, config)
    assert history[-1]["nmse"] < 0.5 * history[0]["nmse"]
    assert nmse(sae, x[:2000]) < 0.2
    assert {"step", "tokens", "loss", "nmse", "fvu", "l0", "dead_fraction", "lr"} <= set(history[0])
    # rows are unit norm in normalised space; the folded input scale s makes them 1/s in raw space
    s = sae.cfg.metadata["input_scale_folded"]
    assert torch.allclose(sae.W_dec.norm(dim=-1) * s, torch.ones(96), atol=1e-4)


def test_batchtopk_inference_threshold_keeps_about_k():
    x = signed_atoms()
    sae, _ = train_sae(x, quick("batchtopk"))
    with torch.no_grad():
        l0 = (sae.encode(x[:2000]) != 0).float().sum(-1).mean().item()
    assert 1.5 < l0 < 6  # k = 3 on average at inference, from one global threshold


def test_sparsity_coefficient_controls_l0():
    x = signed_atoms()
    for architecture in ("standard", "jumprelu"):
        l0 = [train_sae(x, quick(architecture, sparsity_coefficient=c))[1][-1]["l0"] for c in (0.003, 0.3)]
        assert l0[1] < 0.7 * l0[0], (architecture, l0)


def test_resume_is_exact(tmp_path, monkeypatch):
    x = signed_atoms(n=4000)
    config = quick("abstopk", n_steps=50, batch_size=128, checkpoint_every=20)
    reference, ref_history = train_sae(x, quick("abstopk", n_steps=50, batch_size=128))

    crash_at = 33
    real_lr_factor = train.lr_factor

    def crashing(step, *args):
        if step == crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return real_lr_factor(step, *args)

    monkeypatch.setattr(train, "lr_factor", crashing)
    interrupted = TrainConfig(**{**config.__dict__, "checkpoint_dir": str(tmp_path)})
    with pytest.raises(KeyboardInterrupt):
        train_sae(x, interrupted)
    monkeypatch.setattr(train, "lr_factor", real_lr_factor)
    resumed, history = train_sae(x, interrupted)  # picks up at step 20
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert [row["step"] for row in history] == [row["step"] for row in ref_history]

    with pytest.raises(ValueError, match="another training config"):
        train_sae(x, TrainConfig(**{**interrupted.__dict__, "k": 4}))


def test_bad_data_is_refused():
    x = signed_atoms(n=1000)
    x[17, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        train_sae(x, quick("topk"))
    with pytest.raises(ValueError, match=r"\[n_tokens, d_in\]"):
        train_sae(torch.randn(10, 4, 4), quick("topk"))
    with pytest.raises(ValueError, match="larger than the data"):
        train_sae(torch.randn(100, 8), quick("topk"))
    with pytest.raises(ValueError, match="larger than the dictionary"):
        train_sae(torch.randn(1000, 8), quick("topk", k=200))


def test_batch_order_is_a_permutation_stream():
    n, batch = 10, 4
    rows = torch.cat([batch_indices(step, batch, n, seed=0) for step in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10].tolist()) == list(range(10)) and sorted(rows[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, batch, n, seed=0), batch_indices(3, batch, n, seed=0))
    assert not torch.equal(batch_indices(0, batch, n, seed=0), batch_indices(0, batch, n, seed=1))


def test_helpers():
    x = torch.randn(5000, 16) * 7
    assert (input_scale(x) * x).norm(dim=-1).mean().item() == pytest.approx(4.0, rel=1e-4)
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    median = geometric_median(pts, n_iter=500)
    assert median.norm() < 1.0  # unlike the mean (25, 25), the median ignores the outlier
    assert lr_factor(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, 0.2) == 1.0
    assert lr_factor(90, 100, 10, 0.2) == pytest.approx(0.5)
    assert math.isclose(lr_factor(99, 100, 10, 0.2), 0.05)


@pytest.mark.parametrize("architecture", ["topk", "abstopk", "batchtopk"])
def test_fast_sparse_step_trains_like_the_dense_one(architecture):
    x = signed_atoms()
    held_out = signed_atoms(n=2000, seed=1)
    fast, fast_history = train_sae(x, quick(architecture, n_steps=150))
    dense, dense_history = train_sae(x, quick(architecture, n_steps=150, sparse_step=False))
    # The same maths in another order: the first steps agree to float rounding, the end to a small tolerance.
    assert fast_history[0]["loss"] == pytest.approx(dense_history[0]["loss"], rel=1e-4)
    assert nmse(fast, held_out) == pytest.approx(nmse(dense, held_out), abs=0.02)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_init_l0_starts_at_the_target_sparsity(architecture):
    # With init_l0 the first logged step (before any update has moved b_enc or θ) fires on ~init_l0 latents per token.
    x = signed_atoms(n=8192)
    _, history = train_sae(x, quick(architecture, k=None, d_sae=96, init_l0=6, n_steps=1, log_every=1))
    assert abs(history[0]["l0"] - 6) < 1.5, history[0]["l0"]
    _, dense_start = train_sae(x, quick(architecture, k=None, d_sae=96, n_steps=1, log_every=1))
    assert dense_start[0]["l0"] > 20  # without it, about half the latents fire at step 0


def test_init_l0_is_refused_where_it_means_nothing():
    x = signed_atoms(n=2048)
    with pytest.raises(ValueError, match="init_l0 applies"):
        train_sae(x, quick("topk", init_l0=3, n_steps=1))
    with pytest.raises(ValueError, match=r"init_l0 must be in \(0, d_sae"):
        train_sae(x, quick("standard", k=None, init_l0=500, n_steps=1))


# --- nothing silently wrong (issue 13) ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_row", [1, 150_001, 299_999])
def test_one_nan_row_in_300k_is_caught(bad_row):
    # The old check sampled every 3rd row of 300k and missed these three; training ended with NaN weights.
    x = torch.randn(300_000, 8)
    x[bad_row, 5] = float("nan")
    config = quick("topk", d_sae=16, k=2, batch_size=16_384, n_steps=None, log_every=1000, sparse_step=False)
    with pytest.raises(ValueError, match=rf"row\(?s?\)? .*{bad_row}.*NaN or Inf|rows {bad_row}.*NaN or Inf") as err:
        train_sae(x, config)
    message = str(err.value)
    assert str(bad_row) in message and ("step" in message or "b_dec" in message), message


def test_inf_row_is_caught_at_its_step_before_the_weights_see_it(monkeypatch):
    x = signed_atoms(n=4096)
    x[777] = float("inf")
    # Skip the early looks (a sample, and the rows that initialise b_dec): the per-batch check alone must hold.
    monkeypatch.setattr(train, "_check_finite", lambda data: None)
    monkeypatch.setattr(train, "_check_rows_finite", lambda *args: None)
    steps = [s for s in range(16) if 777 in batch_indices(s, 256, 4096, 0).tolist()]
    with pytest.raises(ValueError, match=rf"row\(s\) 777 hold NaN or Inf \(read at step {steps[0]}"):
        train_sae(x, quick("abstopk", batch_size=256, n_steps=16, b_dec_init="zero", normalize_inputs=False))


def test_diverging_loss_stops_training():
    x = signed_atoms(n=2048)
    with pytest.raises(ValueError, match="loss became NaN or Inf at step"):
        train_sae(x * 1e30, quick("topk", n_steps=5, normalize_inputs=False))


def test_checkpoint_from_other_data_of_the_same_shape_is_refused(tmp_path):
    x = signed_atoms(n=2000)
    config = quick("abstopk", n_steps=10, batch_size=128, checkpoint_every=5, checkpoint_dir=str(tmp_path))
    train_sae(x, config)
    other = signed_atoms(n=2000, seed=7)  # same shape, other rows
    with pytest.raises(ValueError, match=r"other data \(data \(same shape, different rows\)"):
        train_sae(other, config)
    with pytest.raises(ValueError, match=r"another training config \(k: checkpoint 3, now 4\)"):
        train_sae(x, quick("abstopk", n_steps=10, batch_size=128, k=4, checkpoint_dir=str(tmp_path)))
    resumed, _ = train_sae(x, config)  # the same data is still resumed
    assert resumed.cfg.d_sae == 96


@pytest.mark.parametrize("content", [b"", b"\x80\x02truncated", None])
def test_corrupt_checkpoint_names_its_path(tmp_path, content):
    x = signed_atoms(n=2000)
    config = quick("abstopk", n_steps=4, batch_size=128, checkpoint_dir=str(tmp_path))
    state = tmp_path / train.STATE_FILENAME
    if content is None:
        train_sae(x, config)
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # cut short
    else:
        state.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt or truncated: delete") as err:
        train_sae(x, config)
    assert str(state) in str(err.value)


def test_checkpoint_write_leaves_no_temporary(tmp_path):
    x = signed_atoms(n=2000)
    train_sae(x, quick("abstopk", n_steps=6, batch_size=128, checkpoint_every=2, checkpoint_dir=str(tmp_path)))
    assert [p.name for p in tmp_path.iterdir()] == [train.STATE_FILENAME]


@pytest.mark.parametrize("field, value, message", [
    ("n_steps", 0, "n_steps must be an int ≥ 1 or None"),
    ("n_steps", -5, "n_steps must be an int ≥ 1 or None"),
    ("batch_size", 0, "batch_size must be an int ≥ 1"),
    ("checkpoint_every", 0, "checkpoint_every must be an int ≥ 1"),
    ("log_every", 0, "log_every must be an int ≥ 1"),
    ("decay_fraction", 2, r"decay_fraction must be a number in \[0.0, 1.0\]"),
    ("sparsity_warmup_fraction", -0.1, r"sparsity_warmup_fraction must be a number in \[0.0, 1.0\]"),
    ("lr", 0, "lr must be a positive number"),
    ("autocast", "fp8", "autocast must be one of"),
    ("b_dec_init", "mode", "b_dec_init must be one of"),
    ("architecture", "gated", "architecture must be one of"),
    ("k", 0, "k must be an int ≥ 1 or None"),
    ("batch_size", True, "batch_size must be an int"),
])
def test_train_config_refuses_bad_values_when_made(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_all_zero_data_is_refused():
    with pytest.raises(ValueError, match="mean row norm .* is 0.0 .*normalize_inputs=False"):
        train_sae(torch.zeros(1000, 8), quick("topk", d_sae=16, k=2, batch_size=100))
    with pytest.raises(ValueError, match="mean row norm"):
        input_scale(torch.zeros(10, 4))


def test_numpy_data_trains():
    x = signed_atoms(n=2048)
    sae, _ = train_sae(x.numpy(), quick("abstopk", n_steps=3))
    assert sae.encode(x[:4].numpy()).shape == (4, 96)


def test_adam_fused_takes_the_same_steps_as_the_for_loop_adam():
    # train_sae takes the fused kernel where torch has one; it must be Adam with the given lr and betas.
    target = torch.linspace(-2, 2, 50)
    params = [torch.zeros(50, requires_grad=True), torch.zeros(50, requires_grad=True)]
    fused, loop = train.adam([params[0]], 0.05, (0.8, 0.99)), torch.optim.Adam([params[1]], lr=0.05, betas=(0.8, 0.99))
    for _ in range(40):
        for p, opt in zip(params, (fused, loop)):
            opt.zero_grad()
            ((p - target) ** 2 * torch.arange(1, 51)).sum().backward()
            opt.step()
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)
    assert (params[0] - target).abs().max() < (target).abs().max()  # and it did move towards the minimum


# --- JumpReLU's straight-through kernel ---------------------------------------------------------------------------


def _thresholds_with_a_gradient(bandwidth: float, d_in: int = 576, d_sae: int = 1152, batch: int = 4096) -> float:
    """Fraction of a JumpReLU SAE's thresholds whose L0 pseudo-gradient is non-zero on one batch, at the trainer's
    input scale (every token of norm √d_in) and a firing rate of 32 / d_sae: chapter 4's study's sizes."""
    from absae_lib.sae import SAE

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, d_in, generator=g)
    x = x / x.norm(dim=-1, keepdim=True) * math.sqrt(d_in)
    torch.manual_seed(0)
    sae = SAE(d_in, d_sae, "jumprelu", jumprelu_bandwidth=bandwidth)
    train._init_firing_rate_(sae, x[:batch], 32)  # θ sits on one of these rows: measure on the others
    sae.penalty(sae(x[batch:])).backward()
    return (sae.threshold.grad != 0).float().mean().item()


def test_default_jumprelu_kernel_reaches_most_thresholds_on_every_batch():
    # The bug this guards: ε = 0.001 (the paper's width for unit-norm inputs) at inputs of norm √576 = 24 caught
    # ~0.2 tokens per latent per batch, so θ barely learned and the L0 weight could not hold L0 (RESULTS.md §6).
    default = train.jumprelu_bandwidth(TrainConfig(architecture="jumprelu", k=None), 576)
    assert default == pytest.approx(0.001 * 24)
    assert _thresholds_with_a_gradient(default) > 0.9
    assert _thresholds_with_a_gradient(train.OLD_JUMPRELU_BANDWIDTH) < 0.3
    assert train.jumprelu_bandwidth(TrainConfig(architecture="jumprelu", k=None, jumprelu_bandwidth=0.05), 576) == 0.05


def test_jumprelu_kernel_width_reaches_the_sae_and_its_cache_key():
    x = signed_atoms(n=2048, d=24)
    sae, _ = train_sae(x, quick("jumprelu", k=None, n_steps=2, sparsity_coefficient=0.01))
    assert sae.cfg.jumprelu_bandwidth == pytest.approx(0.001 * math.sqrt(24))
    old = TrainConfig(architecture="jumprelu", k=None, jumprelu_bandwidth=train.OLD_JUMPRELU_BANDWIDTH)
    assert "jumprelu_bandwidth" not in old.fingerprint()  # runs from before the field keep their cache keys
    assert TrainConfig(architecture="jumprelu", k=None).fingerprint()["jumprelu_bandwidth"] == "0.001*sqrt(d_in)"
    assert TrainConfig(architecture="jumprelu", k=None, jumprelu_bandwidth=0.02).fingerprint()["jumprelu_bandwidth"] == 0.02
    assert "jumprelu_bandwidth" not in TrainConfig(architecture="topk").fingerprint()  # never read there
    with pytest.raises(ValueError, match="jumprelu_bandwidth must be positive"):
        TrainConfig(architecture="jumprelu", k=None, jumprelu_bandwidth=0)
    with pytest.raises(ValueError, match="two JumpReLU kernel widths"):
        TrainConfig(architecture="jumprelu", k=None, jumprelu_bandwidth=0.05, sae_kwargs={"jumprelu_bandwidth": 0.1})
    # an SAEConfig field in sae_kwargs (chapter 2's toy SAEs) is honoured, and keyed through sae_kwargs
    as_field = TrainConfig(architecture="jumprelu", k=None, sae_kwargs={"jumprelu_bandwidth": 0.1})
    assert train.jumprelu_bandwidth(as_field, 24) == 0.1 and "jumprelu_bandwidth" not in as_field.fingerprint()
    sae, _ = train_sae(x, quick("jumprelu", k=None, n_steps=2, sparsity_coefficient=0.01,
                                sae_kwargs={"jumprelu_bandwidth": 0.1}))
    assert sae.cfg.jumprelu_bandwidth == 0.1

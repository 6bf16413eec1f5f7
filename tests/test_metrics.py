"""Metrics: closed-form answers on hand-made arrays, streaming == one-shot, and the spliced loss against a naive
reference on a tiny random transformer, plus one check on the real model."""

import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from absae_lib import SAE, metrics
from absae_lib.metrics import (
    dead_fraction,
    dense_fraction,
    density_histogram,
    evaluate_reconstruction,
    explained_variance,
    feature_density,
    fraction_negative,
    fvu,
    l0,
    mean_abs_code,
    nmse,
    spliced_loss,
    spliced_losses,
)

# --- reconstruction: closed forms ----------------------------------------------------------------------------------


def test_nmse_fvu_known_values():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    recon = torch.tensor([[3.0, 3.0], [1.0, 1.0]])
    # Σ‖x − x̂‖² = 1 + 1 = 2;  Σ‖x‖² = 25 + 1 = 26;  x̄ = (2, 2), Σ‖x − x̄‖² = (1 + 4) + (1 + 4) = 10
    assert nmse(x, recon) == pytest.approx(2 / 26)
    assert fvu(x, recon) == pytest.approx(0.2)
    assert explained_variance(x, recon) == pytest.approx(0.8)


def test_perfect_mean_and_zero_reconstructions():
    torch.manual_seed(0)
    x = torch.randn(50, 7) + 3.0
    assert nmse(x, x) == 0 and fvu(x, x) == 0 and explained_variance(x, x) == 1
    mean = x.mean(0, keepdim=True).expand_as(x)
    assert fvu(x, mean) == pytest.approx(1.0, abs=1e-6)  # fp32 mean, float64 inside fvu
    assert explained_variance(x, mean) == pytest.approx(0.0, abs=1e-6)
    assert nmse(x, torch.zeros_like(x)) == pytest.approx(1.0)
    # Leading dims are flattened into tokens.
    assert fvu(x.reshape(5, 10, 7), (x + 1).reshape(5, 10, 7)) == pytest.approx(fvu(x, x + 1))


def test_reconstruction_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        nmse(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="floating-point"):
        fvu(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))
    assert math.isnan(fvu(torch.ones(1, 4), torch.zeros(1, 4)))  # one token has no variance


# --- sparsity: a hand-written code matrix --------------------------------------------------------------------------

CODES = torch.tensor(
    [
        [1.0, 0.0, -2.0, 0.0, 0.0],
        [0.5, 0.0, 0.0, 0.0, 0.0],
        [3.0, 0.0, -1.0, 0.0, 4.0],
        [2.0, 0.0, 0.0, 0.0, 0.0],
    ]
)  # non-zeros per row 2, 1, 3, 1; latent densities 1, 0, 0.5, 0, 0.25


def test_sparsity_statistics():
    assert l0(CODES) == 7 / 4
    assert mean_abs_code(CODES) == pytest.approx(13.5 / 7)
    assert fraction_negative(CODES) == pytest.approx(2 / 7)
    assert fraction_negative(CODES.abs()) == 0
    assert torch.equal(feature_density(CODES), torch.tensor([1.0, 0.0, 0.5, 0.0, 0.25], dtype=torch.float64))
    assert dead_fraction(CODES) == pytest.approx(2 / 5)
    assert dense_fraction(CODES) == pytest.approx(3 / 5)  # > 0.1
    assert dense_fraction(CODES, threshold=0.3) == pytest.approx(2 / 5)
    assert dense_fraction(CODES, threshold=0.5) == pytest.approx(1 / 5)  # strictly more than half the tokens
    assert math.isnan(fraction_negative(torch.zeros(3, 4)))


def test_density_histogram():
    # live log10 densities: 0, −0.301, −0.602; two dead latents reported apart.
    h = density_histogram(CODES, bins=[-1.0, -0.5, 0.0])
    assert h.counts.tolist() == [1, 2] and h.n_dead == 2  # the last bin includes log10(1) = 0
    h = density_histogram(CODES, bins=3)  # equal bins from log10(1/4) (the rarest possible) to 0
    assert h.log10_edges[0].item() == pytest.approx(math.log10(0.25)) and h.log10_edges[-1].item() == 0
    assert h.counts.tolist() == [1, 1, 1] and h.n_dead == 2
    h2 = density_histogram(density=feature_density(CODES), bins=3)
    assert torch.equal(h2.counts, h.counts) and torch.allclose(h2.log10_edges, h.log10_edges)
    with pytest.raises(ValueError, match="exactly one"):
        density_histogram()


# --- streaming evaluation -----------------------------------------------------------------------------------------


def one_shot(sae, x, dense_threshold=0.1):
    sae.eval()
    with torch.no_grad():
        out = sae(x)
    return {
        "nmse": nmse(x, out.recon),
        "fvu": fvu(x, out.recon),
        "explained_variance": explained_variance(x, out.recon),
        "l0": l0(out.codes),
        "mean_abs_code": mean_abs_code(out.codes),
        "dead_fraction": dead_fraction(out.codes),
        "dense_fraction": dense_fraction(out.codes, dense_threshold),
        "fraction_negative": fraction_negative(out.codes),
        "nmse_per_token": metrics.nmse_per_token(x, out.recon),
        "n_tokens": x.shape[0],
    }, out.codes


@pytest.mark.parametrize("architecture", ["abstopk", "batchtopk"])
def test_streaming_equals_one_shot(architecture):
    torch.manual_seed(0)
    sae = SAE(8, 32, architecture, k=3)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if architecture == "batchtopk":
            sae.threshold.fill_(0.3)
    # A large mean makes the streamed Σ‖x − x̄‖² merge matter (and Σ‖x‖² − n‖x̄‖² would cancel badly).
    x = torch.randn(103, 8) * 2 + 50.0
    expected, codes = one_shot(sae, x)
    sae.train()  # evaluate_reconstruction must switch to eval (BatchTopK's threshold) and switch back
    for batch_size in (1, 7, 50, 4096):
        got = evaluate_reconstruction(sae, x, batch_size=batch_size, return_density=True, progress=False)
        assert sae.training
        assert torch.equal(got.pop("feature_density"), feature_density(codes))
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (batch_size, key)
    if architecture == "abstopk":
        assert expected["fraction_negative"] > 0  # signed codes
    else:
        assert expected["fraction_negative"] == 0


def test_evaluate_identity_and_memmap(tmp_path):
    # A ReLU SAE with W_enc = [I, −I], W_dec = [I; −I] reconstructs exactly: relu(x) − relu(−x) = x.
    d = 6
    sae = SAE(d, 2 * d, "standard")
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.randn(40, d)
    np.save(tmp_path / "acts.npy", x.numpy())
    memmap = np.load(tmp_path / "acts.npy", mmap_mode="r")  # how activations.py hands over its cache
    got = evaluate_reconstruction(sae, memmap, batch_size=16, progress=False)
    assert got["nmse"] == 0 and got["fvu"] == 0 and got["explained_variance"] == 1
    assert got["l0"] == d and got["dead_fraction"] == 0 and got["fraction_negative"] == 0
    with pytest.raises(ValueError, match="d_in = 6"):
        evaluate_reconstruction(sae, torch.randn(5, 7), progress=False)


# --- spliced loss on a tiny random transformer ---------------------------------------------------------------------


def tiny_model(dtype=torch.float32):
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=50, act_fn="relu", normalization_type="LN",
        seed=0, dtype=dtype,
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (6, 20), generator=torch.Generator().manual_seed(0))


def identity_sae(d):
    """AbsTopK with W_enc = W_dec = I and k = d keeps every coordinate with its sign: recon == x bit for bit."""
    sae = SAE(d, d, "abstopk", k=d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae


def zero_sae(d):
    sae = SAE(d, 2 * d, "abstopk", k=2)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


HOOK = "blocks.0.hook_resid_post"


def test_identity_sae_recovers_everything(tiny, tokens):
    r = spliced_loss(tiny, identity_sae(16), tokens, HOOK, batch_size=4, progress=False)
    assert abs(r["ce_zero"] - r["ce_clean"]) > 1e-2  # zero-ablation matters, so the ratio is meaningful
    assert r["ce_spliced"] == r["ce_clean"] and r["delta_loss"] == 0
    assert r["loss_recovered"] == 1.0 and r["kl"] == pytest.approx(0.0, abs=1e-7)
    assert r["n_tokens"] == 6 * 19
    # The clean CE is TransformerLens's own loss: the mean over all predicted positions.
    assert r["ce_clean"] == pytest.approx(tiny(tokens, return_type="loss").item(), abs=1e-5)


def test_zero_sae_equals_zero_ablation(tiny, tokens):
    r = spliced_loss(tiny, zero_sae(16), tokens, HOOK, batch_size=4, progress=False)
    assert r["ce_spliced"] == pytest.approx(r["ce_zero"], abs=1e-6)
    assert r["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert r["kl"] > 0


def naive_spliced_loss(model, sae, tokens, hook_name):
    """Reference: three full forward passes on all sequences at once, TransformerLens computing the loss."""

    def splice(act, hook):
        return torch.cat([act[:, :1], sae(act[:, 1:]).recon], dim=1)

    def zero(act, hook):
        return torch.cat([act[:, :1], torch.zeros_like(act[:, 1:])], dim=1)

    with torch.no_grad():
        clean_logits = model(tokens)
        spliced_logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice)])
        ce = {
            "ce_clean": model.loss_fn(clean_logits, tokens).item(),
            "ce_spliced": model.loss_fn(spliced_logits, tokens).item(),
            "ce_zero": model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, zero)]).item(),
        }
        p = clean_logits[:, :-1].log_softmax(-1)
        q = spliced_logits[:, :-1].log_softmax(-1)
        ce["kl"] = (p.exp() * (p - q)).sum(-1).mean().item()
    return ce


# Hooks inside a block (shared prefix), after the last block, and in the embedding (three full passes).
@pytest.mark.parametrize(
    "hook_name", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "ln_final.hook_normalized", "hook_embed"]
)
def test_matches_naive_reference(tiny, tokens, hook_name):
    torch.manual_seed(1)
    sae = SAE(16, 64, "abstopk", k=4).eval()
    got = spliced_loss(tiny, sae, tokens, hook_name, batch_size=4, progress=False)  # batches of 4 + 2
    want = naive_spliced_loss(tiny, sae, tokens, hook_name)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    denominator = want["ce_zero"] - want["ce_clean"]
    if abs(denominator) > 0.05:  # near 0 (zeroing the embedding of a random model) the ratio is ill-conditioned
        assert got["loss_recovered"] == pytest.approx((want["ce_zero"] - want["ce_spliced"]) / denominator, rel=1e-3)


def test_several_saes_at_once_equal_one_at_a_time(tiny, tokens):
    # spliced_losses shares the clean and zero-ablated runs between SAEs; each SAE's numbers (and per-sequence sums)
    # must be the ones spliced_loss gives it alone, and the identity SAE must still recover everything.
    torch.manual_seed(3)
    saes = {"random": SAE(16, 64, "abstopk", k=4), "identity": identity_sae(16), "zero": zero_sae(16)}
    together = spliced_losses(tiny, saes, tokens, HOOK, batch_size=4, progress=False, per_sequence=True)
    assert set(together) == set(saes)
    for name, sae in saes.items():
        alone = spliced_loss(tiny, sae, tokens, HOOK, batch_size=4, progress=False, per_sequence=True)
        for key in ("ce_clean", "ce_spliced", "ce_zero", "kl", "delta_loss"):
            assert together[name][key] == pytest.approx(alone[key], abs=1e-6), (name, key)
        for key, rows in alone["per_sequence"].items():
            np.testing.assert_allclose(together[name]["per_sequence"][key], rows, atol=1e-6)
    assert together["identity"]["loss_recovered"] == 1.0
    assert together["zero"]["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least one SAE"):
        spliced_losses(tiny, {}, tokens, HOOK)


def test_position_zero_is_never_replaced(tiny):
    # With two tokens the only prediction is made at position 0, which attends only to itself: if position 0 is
    # left alone, even a random SAE and zero-ablation change nothing.
    tokens = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(2))
    r = spliced_loss(tiny, SAE(16, 64, "abstopk", k=4), tokens, HOOK, progress=False)
    assert r["ce_spliced"] == r["ce_clean"] == r["ce_zero"] and r["kl"] == 0
    assert math.isnan(r["loss_recovered"])


def test_bf16_model_with_fp32_sae(tokens):
    model = tiny_model(torch.bfloat16)
    sae = identity_sae(16)  # fp32: bf16 -> fp32 -> bf16 is exact, so the identity stays exact
    sae.train()
    r = spliced_loss(model, sae, tokens, HOOK, batch_size=8, progress=False)
    assert r["ce_spliced"] == r["ce_clean"] and r["loss_recovered"] == 1.0
    assert sae.training  # mode restored


def test_spliced_loss_input_errors(tiny, tokens):
    sae = identity_sae(16)
    with pytest.raises(ValueError, match=r"include \[.blocks\.0\."):  # lists valid names
        spliced_loss(tiny, sae, tokens, "blocks.0.resid_post", progress=False)
    with pytest.raises(ValueError, match="valid layers"):
        spliced_loss(tiny, sae, tokens, "blocks.7.hook_resid_post", progress=False)
    with pytest.raises(ValueError, match=r"tokens\[None\]"):
        spliced_loss(tiny, sae, tokens[0], HOOK, progress=False)
    with pytest.raises(ValueError, match="integer"):
        spliced_loss(tiny, sae, tokens.float(), HOOK, progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        spliced_loss(tiny, sae, tokens + 50, HOOK, progress=False)
    with pytest.raises(ValueError, match="d_in = 8"):
        spliced_loss(tiny, identity_sae(8), tokens, HOOK, progress=False)


# --- the real model -------------------------------------------------------------------------------------------------

TEXT = [
    "The old man walked slowly down the road towards the village, where the church bell was ringing.",
    "In 1961 the committee reported that the budget for public schools had grown faster than the state.",
]


def test_real_model_identity_and_random_sae(model):
    tokens = torch.stack([model.to_tokens(text, prepend_bos=False)[0, :16] for text in TEXT])
    hook_name = "blocks.15.hook_resid_post"
    d = model.cfg.d_model
    r = spliced_loss(model, identity_sae(d), tokens, hook_name, progress=False)
    assert 1.0 < r["ce_clean"] < 6.0  # English text: a 135M model is far better than uniform (log 49152 ≈ 10.8)
    assert r["ce_zero"] > r["ce_clean"] + 1.0  # wiping a middle layer's residual stream wrecks the model
    assert r["loss_recovered"] == pytest.approx(1.0, abs=1e-4) and r["kl"] == pytest.approx(0.0, abs=1e-4)
    torch.manual_seed(0)
    r = spliced_loss(model, SAE(d, 8 * d, "abstopk", k=32), tokens, hook_name, progress=False)
    assert r["loss_recovered"] < 0.8 and r["kl"] > 0.5  # an untrained dictionary loses much of the model

"""Per-token input normalisation (SAELens's constant_norm_rescale) and the SAELens-readable BatchTopK export."""

import json

import pytest
import torch
from safetensors.torch import save_file

from absae_lib import SAE
from absae_lib.metrics import spliced_loss
from absae_lib.sae import ARCHITECTURES
from absae_lib.train import TrainConfig, train_sae

D_IN, D_SAE, K = 12, 48, 4
PER_TOKEN = "constant_norm_rescale"


def make(architecture, seed=0, **kwargs):
    torch.manual_seed(seed)
    k = None if architecture in ("standard", "jumprelu") else K
    sae = SAE(D_IN, D_SAE, architecture, k=k, **kwargs)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if architecture in ("jumprelu", "batchtopk"):
            sae.threshold.fill_(0.05)
    return sae.eval()


def rows(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    # norms spread over three orders of magnitude, like the residual stream's massive tokens
    return torch.randn(n, D_IN, generator=g) * torch.logspace(-1, 2, n)[:, None]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_per_token_equals_normalise_then_plain_sae_then_undo(architecture):
    plain = make(architecture)
    normed = make(architecture, normalize_activations=PER_TOKEN)
    x = rows()
    norms = x.norm(dim=-1, keepdim=True)
    x_n = x * (D_IN**0.5 / norms)
    out, ref = normed(x), plain(x_n)
    assert torch.allclose(out.codes, ref.codes, atol=1e-5)
    assert torch.allclose(out.recon, ref.recon * norms / D_IN**0.5, rtol=1e-5, atol=1e-5)
    assert torch.allclose(normed.encode(x), out.codes)
    assert torch.allclose(normed.decode(out.codes, norms=x.norm(dim=-1)), out.recon)  # [n] or [n, 1] norms
    assert torch.allclose(normed.decode(out.codes, norms=norms), out.recon)


def test_per_token_codes_ignore_each_tokens_scale():
    sae = make("abstopk", normalize_activations=PER_TOKEN)
    x = rows()
    c = 2.0 ** torch.randint(-4, 5, (x.shape[0], 1)).float()  # powers of two: the rescaling is exact in floats
    assert torch.equal(sae.encode(c * x), sae.encode(x))
    assert torch.equal(sae(c * x).recon, c * sae(x).recon)


def test_decode_needs_norms_exactly_when_per_token():
    sae = make("topk", normalize_activations=PER_TOKEN)
    z = sae.encode(rows())
    with pytest.raises(ValueError, match="norms"):
        sae.decode(z)
    with pytest.raises(ValueError, match="only used by a per-token"):
        make("topk").decode(z, norms=torch.ones(z.shape[0]))
    with pytest.raises(ValueError, match="normalize_activations must be one of"):
        SAE(D_IN, D_SAE, "topk", k=K, normalize_activations="layer_norm")


def test_zero_token_maps_to_zero_not_nan():
    sae = make("abstopk", normalize_activations=PER_TOKEN)
    out = sae(torch.zeros(2, D_IN))
    assert torch.isfinite(out.recon).all() and torch.isfinite(out.codes).all()


@pytest.mark.parametrize("normalize", ["none", PER_TOKEN])
@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "batchtopk", "abstopk"])
def test_sae_lens_reads_every_variant_with_the_same_outputs(architecture, normalize, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = make(architecture, normalize_activations=normalize)
    sae.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    # BatchTopK is saved for inference the way SAELens saves its own: a JumpReLU SAE, its threshold in every latent.
    assert theirs.cfg.architecture() == ("jumprelu" if architecture == "batchtopk" else architecture)
    assert theirs.cfg.normalize_activations == normalize
    x = rows()
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(theirs(x), sae(x).recon, rtol=1e-6, atol=1e-5)


def test_absae_reads_the_batchtopk_export_back_as_batchtopk(tmp_path):
    sae = make("batchtopk", normalize_activations=PER_TOKEN)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae/cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["absae_architecture"] == "batchtopk"
    back = SAE.load(tmp_path / "sae")
    assert back.cfg.architecture == "batchtopk" and back.cfg.k == K and back.per_token_normalized
    x = rows()
    assert torch.equal(back.encode(x), sae.encode(x))
    back.train()  # still a BatchTopK SAE: in training mode the batch budget k·B applies
    assert (back.encode(x) != 0).sum() <= K * x.shape[0]


def test_old_batchtopk_folder_with_a_scalar_threshold_still_loads(tmp_path):
    sae = make("batchtopk")
    tensors = {name: t.detach().contiguous().clone() for name, t in sae.state_dict().items()}
    tensors["threshold"] = torch.tensor(0.05)  # the layout before the threshold became [d_sae]
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = sae.cfg.to_dict()
    cfg.pop("absae_architecture")
    cfg["architecture"] = "batchtopk"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    back = SAE.load(folder)
    assert back.threshold.shape == (D_SAE,) and torch.all(back.threshold == 0.05)
    assert torch.equal(back.encode(rows()), sae.encode(rows()))


def synthetic(n=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(32, D_IN, generator=g)
    z = torch.zeros(n, 32).scatter_(1, torch.randint(0, 32, (n, 3), generator=g), torch.rand(n, 3, generator=g))
    return (z @ atoms) * torch.logspace(0, 2, n)[torch.randperm(n, generator=g)][:, None]


def test_trainer_per_token_is_blind_to_each_tokens_scale():
    """Trained per-token, the SAE sees x·√d/‖x‖ only: rescaling rows by powers of two changes no weight, not a bit."""
    x = synthetic()
    c = 2.0 ** torch.randint(-3, 4, (x.shape[0], 1), generator=torch.Generator().manual_seed(5)).float()
    cfg = TrainConfig(architecture="topk", d_sae=D_SAE, k=K, batch_size=256, n_steps=15, progress=False,
                      device="cpu", input_normalization="per_token")
    a, _ = train_sae(x, cfg)
    b, _ = train_sae(c * x, cfg)
    assert a.cfg.normalize_activations == PER_TOKEN
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    default, _ = train_sae(x, TrainConfig(architecture="topk", d_sae=D_SAE, k=K, batch_size=256, n_steps=2,
                                          progress=False, device="cpu"))
    assert default.cfg.normalize_activations == "none"  # the default is today's global scale


def test_spliced_loss_hook_undoes_the_normalisation():
    """An SAE that reconstructs its normalised input exactly must give back the clean model (loss recovered 1)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=50, act_fn="relu",
                                  normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    sae = SAE(16, 16, "abstopk", k=16, normalize_activations=PER_TOKEN)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(16))
        sae.W_dec.copy_(torch.eye(16))
    r = spliced_loss(model, sae, tokens, "blocks.0.hook_resid_post", progress=False)
    assert abs(r["ce_zero"] - r["ce_clean"]) > 1e-2
    assert r["loss_recovered"] == pytest.approx(1.0, abs=1e-5) and r["kl"] == pytest.approx(0.0, abs=1e-6)

"""The sparse ReLU / JumpReLU step must compute what dense autograd through ``SAE.forward`` + ``SAE.penalty`` does."""

import pytest
import torch

from absae_lib import SAE, TrainConfig
from absae_lib.sparse import batch_mse
from absae_lib.sparse_threshold import threshold_forward
from absae_lib.train import train_sae


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def thresholded_sae(architecture: str, d_in: int = 16, d_sae: int = 64, bandwidth: float = 0.3) -> SAE:
    torch.manual_seed(0)
    sae = SAE(d_in, d_sae, architecture, dtype="float64", jumprelu_bandwidth=bandwidth)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
        sae.W_dec.mul_(1 + 0.2 * torch.rand(d_sae, 1, dtype=torch.float64))  # rows off unit norm: the L1 weights
        sae.b_enc.copy_(0.2 * torch.randn_like(sae.b_enc) - 1.2)  # sparse: a few latents per row fire
        sae.b_dec.copy_(0.1 * torch.randn_like(sae.b_dec))
        if architecture == "jumprelu":
            sae.threshold.copy_(0.3 + 0.4 * torch.rand(d_sae, dtype=torch.float64))
    return sae


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_sparse_threshold_step_matches_dense_loss_penalty_and_gradients(architecture):
    sae = thresholded_sae(architecture)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coefficient = 0.7

    dense = sae(x)
    dense_penalty = sae.penalty(dense)
    (batch_mse(x, dense.recon) + coefficient * dense_penalty).backward()
    want = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()

    jump = architecture == "jumprelu"
    fast = threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, architecture,
                             sae.threshold if jump else None, sae.cfg.jumprelu_bandwidth if jump else None,
                             max_density=1.0)
    (batch_mse(x, fast.recon) + coefficient * fast.penalty).backward()
    assert torch.allclose(fast.recon, dense.recon, atol=1e-10)
    assert torch.allclose(fast.codes.dense(64), dense.codes, atol=1e-10)
    assert fast.penalty.item() == pytest.approx(dense_penalty.item(), rel=1e-10)
    assert 0 < fast.l0().item() < 16  # the test is about a sparse support
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, want[name], atol=1e-9), name
    if jump:  # the window caught some thresholds: the straight-through gradient is exercised
        assert (want["threshold"] != 0).sum().item() >= 10


def test_a_dense_support_falls_back_and_bad_calls_are_refused():
    sae = thresholded_sae("standard")
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every latent fires
    x = torch.randn(32, 16, dtype=torch.float64)
    assert threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, "standard") is None
    with pytest.raises(ValueError, match="'standard' \\(ReLU\\) or 'jumprelu'"):
        threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, "topk")
    with pytest.raises(ValueError, match="needs its threshold"):
        threshold_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, "jumprelu")


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_trainer_takes_the_sparse_threshold_step_and_trains_like_the_dense_one(architecture):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=g)
    idx = torch.rand(4096, 32, generator=g).argsort(-1)[:, :3]
    x = torch.zeros(4096, 32).scatter(1, idx, torch.rand(4096, 3, generator=g) + 0.5) @ atoms
    base = dict(architecture=architecture, d_sae=64, k=None, batch_size=256, n_steps=60, lr=3e-3, progress=False,
                autocast="off", sparsity_coefficient=0.05, init_l0=4, jumprelu_bandwidth=0.1)
    fast_sae, fast = train_sae(x, TrainConfig(**base))
    dense_sae, dense = train_sae(x, TrainConfig(**base, sparse_step=False))
    assert fast[-1]["nmse"] == pytest.approx(dense[-1]["nmse"], rel=1e-3)
    assert fast[-1]["l0"] == pytest.approx(dense[-1]["l0"], rel=1e-2)
    assert fast[-1]["penalty"] == pytest.approx(dense[-1]["penalty"], rel=1e-2)
    assert torch.allclose(fast_sae.W_dec, dense_sae.W_dec, atol=1e-4)

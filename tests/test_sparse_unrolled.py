"""The sparse unrolled (ISTA) step must compute what dense autograd through ``SAE.forward`` computes."""

import pytest
import torch

from absae_lib import SAE, TrainConfig
from absae_lib.sparse import batch_mse
from absae_lib.sparse_unrolled import unrolled_forward
from absae_lib.train import train_sae


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def unrolled_sae(prox: str, n_steps: int, tied: bool, d_in: int = 16, d_sae: int = 64, k: int = 4) -> SAE:
    torch.manual_seed(0)
    sae = SAE(d_in, d_sae, "unrolled", k, unrolled_steps=n_steps, unrolled_prox=prox, unrolled_tied=tied,
              dtype="float64")
    with torch.no_grad():  # away from the tied initialisation, so that tied and untied differ
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
        sae.b_enc.copy_(0.1 * torch.randn_like(sae.b_enc))
        sae.b_dec.copy_(0.1 * torch.randn_like(sae.b_dec))
    return sae


@pytest.mark.parametrize("prox", ["abstopk", "topk"])
@pytest.mark.parametrize("n_steps, tied", [(1, True), (2, True), (3, True), (2, False), (3, False)])
def test_sparse_unrolled_matches_dense_loss_codes_and_gradients(prox, n_steps, tied):
    sae = unrolled_sae(prox, n_steps, tied)
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3

    dense = sae(x)
    batch_mse(x, dense.recon).backward()
    grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # noqa: E731  (μ at T = 1)
    want = {name: grad(p) for name, p in sae.named_parameters()}
    sae.zero_grad()

    fast = unrolled_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.step, 4, prox, n_steps, tied)
    batch_mse(x, fast.recon).backward()
    assert torch.allclose(fast.recon, dense.recon, atol=1e-10)
    assert torch.allclose(fast.codes.dense(64), dense.codes, atol=1e-10)
    assert (fast.codes.values != 0).sum(-1).item() <= 48 * 4
    for name, p in sae.named_parameters():
        assert torch.allclose(grad(p), want[name], atol=1e-9), name
    if n_steps > 1:  # the learned step size gets its gradient only from the later steps
        assert want["step"].abs().item() > 0


def test_sparse_unrolled_refuses_bad_arguments():
    sae = unrolled_sae("abstopk", 2, True)
    x = torch.randn(8, 16, dtype=torch.float64)
    args = (x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.step, 4)
    with pytest.raises(ValueError, match="prox must be 'abstopk' or 'topk'"):
        unrolled_forward(*args, "batchtopk", 2, True)
    with pytest.raises(ValueError, match="n_steps must be ≥ 1"):
        unrolled_forward(*args, "abstopk", 0, True)


@pytest.mark.parametrize("tied", [True, False])
def test_trainer_takes_the_sparse_unrolled_step_and_trains_like_the_dense_one(tied):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=g)
    idx = torch.rand(4096, 32, generator=g).argsort(-1)[:, :3]
    x = torch.zeros(4096, 32).scatter(1, idx, torch.randn(4096, 3, generator=g)) @ atoms
    base = dict(architecture="unrolled", d_sae=64, k=3, batch_size=256, n_steps=60, lr=3e-3, progress=False,
                autocast="off", sae_kwargs=dict(unrolled_steps=2, unrolled_tied=tied))
    fast_sae, fast = train_sae(x, TrainConfig(**base))
    dense_sae, dense = train_sae(x, TrainConfig(**base, sparse_step=False))
    # the same trajectory up to float rounding (fp32 sums in another order)
    assert fast[-1]["nmse"] == pytest.approx(dense[-1]["nmse"], rel=1e-3)
    assert fast[-1]["nmse"] < 0.5 * fast[0]["nmse"]
    assert torch.allclose(fast_sae.W_dec, dense_sae.W_dec, atol=1e-4)

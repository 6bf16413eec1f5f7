"""The sparse k-sparse SAE step must compute exactly what dense autograd through scatter + z @ W_dec computes."""

import pytest
import torch

from absae_lib import prox
from absae_lib.sparse import (
    AUX_METHODS,
    MODES,
    Workspace,
    _largest_flat,
    auxk_loss,
    auxk_loss_from_codes,
    auxk_select,
    batch_mse,
    fast_step,
    remove_parallel_grad_,
    select,
    sparse_decode,
    sparse_encode,
    sparse_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def make_params(d_in, d_sae, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=dtype)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.T.clone() + 0.1 * torch.randn(d_in, d_sae, generator=g, dtype=dtype)
    b_enc = 0.1 * torch.randn(d_sae, generator=g, dtype=dtype)
    b_dec = 0.1 * torch.randn(d_in, generator=g, dtype=dtype)
    return [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]


def dense_codes(pre, k, mode):
    """The reference activations of absae_lib.prox (the ones the SAE module uses)."""
    if mode == "topk":
        return prox.topk(pre, k)
    if mode == "abstopk":
        return prox.abs_topk(pre, k)
    return prox.batch_topk(pre, k)


def dense_forward(x, W_enc, b_enc, W_dec, b_dec, k, mode):
    pre = (x - b_dec) @ W_enc + b_enc
    z = dense_codes(pre, k, mode)
    return z @ W_dec + b_dec, z, pre


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d_sae,k", [(64, 5), (64, 64), (48, 1)])
def test_forward_and_gradients_match_dense(mode, d_sae, k):
    d_in, B = 12, 9
    params = make_params(d_in, d_sae)
    x = torch.randn(B, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    recon_ref, z_ref, _ = dense_forward(x, *params, k, mode)
    out = sparse_forward(x, *params, k, mode)
    torch.testing.assert_close(out.recon, recon_ref)
    torch.testing.assert_close(out.codes.dense(d_sae), z_ref)
    assert out.codes.values.shape[0] == B * k  # every mode keeps B·k entries in all
    # A loss that weights every output differently, so each gradient entry is tested.
    w = torch.randn(B, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g_ref = grads(((x - recon_ref).pow(2) * w).sum(), params)
    g_fast = grads(((x - out.recon).pow(2) * w).sum(), params)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), g_fast, g_ref):
        torch.testing.assert_close(a, b, msg=lambda m: f"{mode} d_sae={d_sae} k={k} grad {name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_summaries_match_the_dense_codes(mode):
    params = make_params(12, 64)
    x = torch.randn(9, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    _, z, _ = dense_forward(x, *params, 5, mode)
    out = sparse_forward(x, *params, 5, mode)
    assert torch.equal(out.fired(64), (z != 0).any(0))
    assert out.l0().item() == pytest.approx((z != 0).sum(-1).double().mean().item())
    assert out.min_positive().item() == z[z > 0].min().item()
    none_positive = sparse_forward(x, params[0], params[1] - 100, params[2], params[3], 5, mode)
    assert none_positive.min_positive().item() == 0.0


def test_float32_matches_dense_at_moderate_size():
    d_in, d_sae, k, B = 64, 512, 16, 256
    params = make_params(d_in, d_sae, dtype=torch.float32)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(3))
    for mode in MODES:
        recon_ref, _, _ = dense_forward(x, *params, k, mode)
        out = sparse_forward(x, *params, k, mode)
        torch.testing.assert_close(out.recon, recon_ref, atol=1e-5, rtol=1e-4)
        g_ref = grads((x - recon_ref).pow(2).sum(-1).mean(), params)
        g_fast = grads((x - out.recon).pow(2).sum(-1).mean(), params)
        for a, b in zip(g_fast, g_ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_batchtopk_rows_have_uneven_counts():
    # One row with a large norm takes far more than k of the batch budget: the flat layout must handle it.
    d_in, d_sae, k, B = 8, 32, 3, 6
    params = make_params(d_in, d_sae)
    x = torch.randn(B, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[0] *= 20
    out = sparse_forward(x, *params, k, "batchtopk")
    counts = torch.bincount(out.codes.rows, minlength=B)
    assert counts.sum() == B * k and counts[0] > k and (counts == 0).any()
    recon_ref, _, _ = dense_forward(x, *params, k, "batchtopk")
    torch.testing.assert_close(out.recon, recon_ref)


def test_gradcheck_sparse_decode():
    g = torch.Generator().manual_seed(5)
    indices = torch.stack([torch.randperm(7, generator=g)[:3] for _ in range(4)])
    values = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    W_dec = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(indices, v, W), (values, W_dec))
    # The flat form with uneven rows (one row empty).
    flat_idx = torch.tensor([0, 3, 6, 1, 2, 4, 5])
    offsets = torch.tensor([0, 1, 1, 4])
    flat_values = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(flat_idx, v, W, offsets), (flat_values, W_dec))
    dense = torch.zeros(4, 7, dtype=torch.float64)
    dense[torch.tensor([0, 2, 2, 2, 3, 3, 3]), flat_idx] = flat_values.detach()
    torch.testing.assert_close(sparse_decode(flat_idx, flat_values, W_dec, offsets), dense @ W_dec)


def test_gradcheck_sparse_encode():
    g = torch.Generator().manual_seed(6)
    B, d_in, d_sae = 4, 5, 7
    indices = torch.stack([torch.randperm(d_sae, generator=g)[:3] for _ in range(B)])
    x = torch.randn(B, d_in, dtype=torch.float64, generator=g, requires_grad=True)
    W_enc = torch.randn(d_in, d_sae, dtype=torch.float64, generator=g, requires_grad=True)
    b_enc = torch.randn(d_sae, dtype=torch.float64, generator=g, requires_grad=True)
    b_dec = torch.randn(d_in, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: sparse_encode(*a, indices), (x, W_enc, b_enc, b_dec))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_sparse_forward(mode):
    # Random float64 data has no ties, so the selection stays fixed under gradcheck's tiny perturbations.
    params = make_params(5, 11, seed=7)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert torch.autograd.gradcheck(lambda *p: sparse_forward(x, *p, 3, mode).recon, tuple(params))


def dense_auxk(pre, dead, residual, W_dec, k_aux, signed):
    """Gao et al.'s AuxK written densely: mask the live latents, top-k_aux, decode, normalised MSE."""
    scores = (pre.abs() if signed else torch.relu(pre)).masked_fill(~dead, -1.0)
    idx = scores.topk(min(k_aux, int(dead.sum())), dim=-1).indices
    vals = pre.gather(-1, idx)
    z = torch.zeros_like(pre).scatter(-1, idx, vals if signed else torch.relu(vals))
    e = residual.detach()
    return (e - z @ W_dec).pow(2).sum() / (e - e.mean(0)).pow(2).sum()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("compact", [False, True])
def test_auxk_loss_matches_dense(signed, compact):
    B, d_in, d_sae, k_aux = 6, 8, 40, 5
    g = torch.Generator().manual_seed(9)
    pre = torch.randn(B, d_sae, dtype=torch.float64, generator=g, requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, dtype=torch.float64, generator=g, requires_grad=True)
    residual = torch.randn(B, d_in, dtype=torch.float64, generator=g)
    for n_dead in (12, 3):  # more dead latents than k_aux, and fewer
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[torch.randperm(d_sae, generator=g)[:n_dead]] = True
        indices, keep = auxk_select(pre.detach(), dead, k_aux, signed, compact=compact)
        values = pre.gather(-1, indices)
        values = (values if signed else torch.relu(values)) * keep
        loss = auxk_loss_from_codes(indices, values, residual, W_dec)
        ref = dense_auxk(pre, dead, residual, W_dec, k_aux, signed)
        torch.testing.assert_close(loss, ref)
        for a, b in zip(torch.autograd.grad(loss, (pre, W_dec)), torch.autograd.grad(ref, (pre, W_dec))):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(auxk_loss(pre, dead, residual, W_dec, k_aux, signed), ref)
    nothing_dead = torch.zeros(d_sae, dtype=torch.bool)
    assert auxk_loss(pre, nothing_dead, residual, W_dec, k_aux, signed).item() == 0.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aux_method", AUX_METHODS)
@pytest.mark.parametrize("dead_every", [1, 4, 30])  # 50, 13 and 2 dead latents: more, and fewer, than k_aux = 6
def test_sparse_forward_auxk_gradients_match_dense(mode, aux_method, dead_every):
    B, d_in, d_sae, k, k_aux = 7, 10, 50, 3, 6
    params = make_params(d_in, d_sae, seed=10)
    x = torch.randn(B, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    dead = torch.arange(d_sae) % dead_every == 0
    out = sparse_forward(x, *params, k, mode, dead_mask=dead, k_aux=k_aux, aux_method=aux_method)
    recon_ref, _, pre_ref = dense_forward(x, *params, k, mode)
    aux_ref = dense_auxk(pre_ref, dead, x - recon_ref, params[2], k_aux, signed=mode == "abstopk")
    torch.testing.assert_close(out.aux_loss, aux_ref)
    loss = (x - out.recon).pow(2).sum(-1).mean() + 0.5 * out.aux_loss
    loss_ref = (x - recon_ref).pow(2).sum(-1).mean() + 0.5 * aux_ref
    for a, b in zip(grads(loss, params), grads(loss_ref, params)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("aux_method", AUX_METHODS)
def test_sparse_forward_auxk_gradient_in_the_input_matches_dense(aux_method):
    # The AuxK routes skip ∂x in training (x is data); when x does require a gradient it must still be right.
    B, d_in, d_sae, k, k_aux = 6, 8, 40, 3, 5
    params = make_params(d_in, d_sae, seed=20)
    x = torch.randn(B, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(21)).requires_grad_()
    dead = torch.arange(d_sae) % 3 == 0
    out = sparse_forward(x, *params, k, "abstopk", dead_mask=dead, k_aux=k_aux, aux_method=aux_method)
    recon_ref, _, pre_ref = dense_forward(x, *params, k, "abstopk")
    aux_ref = dense_auxk(pre_ref, dead, (x - recon_ref).detach(), params[2], k_aux, signed=True)
    (grad,) = torch.autograd.grad(out.aux_loss, (x,))
    (grad_ref,) = torch.autograd.grad(aux_ref, (x,))
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("aux_method", AUX_METHODS)
def test_sparse_forward_auxk_is_zero_when_nothing_is_dead(aux_method):
    params = make_params(6, 20)
    x = torch.randn(5, 6, dtype=torch.float64)
    dead = torch.zeros(20, dtype=torch.bool)
    out = sparse_forward(x, *params, 2, "abstopk", dead_mask=dead, k_aux=3, aux_method=aux_method)
    assert out.aux_loss.item() == 0.0


def test_autocast_bf16_keeps_parameters_and_gradients_fp32():
    params = make_params(16, 64, dtype=torch.float32)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_forward(x, *params, 4, "abstopk")
    assert out.pre.dtype == torch.bfloat16 and out.recon.dtype == torch.float32
    recon_ref, _, _ = dense_forward(x, *params, 4, "abstopk")
    assert (out.recon - recon_ref).norm() / recon_ref.norm() < 0.05  # bf16 pre, rare selection flips
    loss = (x - out.recon).pow(2).sum()
    assert all(g.dtype == torch.float32 for g in grads(loss, params))


def test_bad_input_raises_clear_errors():
    params = make_params(4, 8)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode"):
        sparse_forward(x, *params, 2, "relu")
    with pytest.raises(ValueError, match="k must be"):
        sparse_forward(x, *params, 9, "topk")
    with pytest.raises(ValueError, match="x must be"):
        sparse_forward(x[:, :3], *params, 2, "topk")
    with pytest.raises(ValueError, match="aux_method"):
        sparse_forward(x, *params, 2, "topk", dead_mask=torch.zeros(8, dtype=torch.bool), k_aux=2, aux_method="x")
    with pytest.raises(ValueError, match="dead_mask and k_aux"):
        sparse_forward(x, *params, 2, "topk", dead_mask=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="long"):
        sparse_decode(torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2, 2), torch.zeros(8, 4))
    with pytest.raises(ValueError, match="dead_mask"):
        auxk_select(torch.zeros(2, 8), torch.zeros(7, dtype=torch.bool), 2, True)


def test_select_keeps_the_right_latents():
    pre = torch.tensor([[0.5, -3.0, 2.0, -0.1], [1.0, 0.2, -0.3, 4.0]])
    cols, rows, offsets = select(pre, 2, "abstopk")
    assert sorted(cols[:2].tolist()) == [1, 2] and sorted(cols[2:].tolist()) == [0, 3]
    cols, rows, offsets = select(pre, 2, "batchtopk")  # 4 largest of the batch: 4.0, 2.0, 1.0, 0.5
    assert rows.tolist() == [0, 0, 1, 1] and offsets.tolist() == [0, 2]
    assert cols.tolist() == [0, 2, 0, 3]


@pytest.mark.parametrize("use_workspace", [False, True])
def test_largest_flat_is_an_exact_top_n_even_with_ties(use_workspace):
    g = torch.Generator().manual_seed(16)
    workspace = Workspace() if use_workspace else None
    for pre in (torch.randn(64, 300, generator=g),
                torch.randint(-20, 20, (64, 300), generator=g).float(),  # heavy ties, like bf16 values
                torch.full((8, 50), -1.0)):  # everything tied
        n = 64 * 5 if pre.shape[0] == 64 else 40
        pos = _largest_flat(pre, n, workspace)
        assert pos.numel() == n and bool((pos[1:] > pos[:-1]).all())  # n distinct positions, ascending
        flat = pre.reshape(-1)
        torch.testing.assert_close(flat[pos].sort().values, flat.topk(n).values.sort().values)


def test_workspace_reuse_gives_the_same_results():
    params = make_params(16, 96, dtype=torch.float32)
    workspace = Workspace()
    for mode in MODES:
        for B in (40, 24, 40):  # shrinking and growing batches reuse or regrow the buffers
            x = torch.randn(B, 16, generator=torch.Generator().manual_seed(B))
            dead = torch.arange(96) % 3 == 0
            a = sparse_forward(x, *params, 4, mode, dead_mask=dead, k_aux=8, workspace=workspace)
            b = sparse_forward(x, *params, 4, mode, dead_mask=dead, k_aux=8)
            torch.testing.assert_close(a.recon, b.recon)
            torch.testing.assert_close(a.aux_loss, b.aux_loss)
            torch.testing.assert_close(a.pre, b.pre)


def synthetic_data(n, d_in, n_features, k_true, seed):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_features, d_in, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(n_features, generator=g)[:k_true] for _ in range(n)])
    coeff = torch.zeros(n, n_features).scatter(1, idx, torch.rand(n, k_true, generator=g) + 0.5)
    return coeff @ D + 0.01 * torch.randn(n, d_in, generator=g)


def train(x, mode, sparse, steps=200, d_sae=128, k=4, batch=256):
    torch.manual_seed(0)
    params = [p.detach().float().requires_grad_() for p in make_params(x.shape[1], d_sae, seed=13)]
    with torch.no_grad():
        params[3].copy_(x.mean(0))
    optimizer = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(14)
    for _ in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        if sparse:
            fast_step(*params, optimizer, xb, k, mode)
        else:
            recon, _, _ = dense_forward(xb, *params, k, mode)
            loss = (xb - recon).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            W_dec = params[2]
            with torch.no_grad():  # the same unit-norm decoder handling as fast_step
                rows = W_dec / W_dec.norm(dim=-1, keepdim=True)
                W_dec.grad -= (W_dec.grad * rows).sum(-1, keepdim=True) * rows
            optimizer.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        recon = (sparse_forward(x, *params, k, mode).recon)
        return ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


@pytest.mark.parametrize("mode", MODES)
def test_training_with_fast_step_matches_dense_training(mode):
    x = synthetic_data(2048, 32, 96, 3, seed=15)
    fvu_dense = train(x, mode, sparse=False)
    fvu_fast = train(x, mode, sparse=True)
    assert fvu_dense < 0.5  # it learned something
    assert abs(fvu_fast - fvu_dense) < 0.02 * fvu_dense + 1e-3, (fvu_fast, fvu_dense)


def test_remove_parallel_grad_keeps_only_the_perpendicular_part():
    # Rows of different norms (not yet renormalised): the update must use w/‖w‖, and leave the rest of g alone.
    g = torch.Generator().manual_seed(30)
    W_dec = (torch.randn(9, 5, dtype=torch.float64, generator=g) * torch.linspace(0.5, 3.0, 9)[:, None])
    W_dec.requires_grad_()
    before = torch.randn(9, 5, dtype=torch.float64, generator=g)
    W_dec.grad = before.clone()
    remove_parallel_grad_(W_dec)
    after, w = W_dec.grad, W_dec.detach()
    torch.testing.assert_close((after * w).sum(-1), torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    removed = before - after  # must be a multiple of each row: c·w with c = ⟨g, w⟩ / ‖w‖²
    c = (before * w).sum(-1) / (w * w).sum(-1)
    torch.testing.assert_close(removed, c[:, None] * w)


def test_batch_mse_is_the_squared_error_summed_over_features_averaged_over_rows():
    x = torch.zeros(4, 3)
    recon = torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 0]])
    assert batch_mse(x, recon).item() == pytest.approx((1 + 2 + 3 + 4) / 4)

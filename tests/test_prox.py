"""Each proximal operator is the true argmin of ½‖z − v‖² + λR(z); the unrolled solvers converge."""

import itertools

import pytest
import torch

from absae_lib import SAE, prox



@pytest.fixture(autouse=True)
def float64():
    # Brute-force argmins compare to ~1e-12: work in float64 here, and give other test files their float32 back.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def objective(z, v, penalty):
    return 0.5 * (z - v).pow(2).sum(-1) + penalty(z)


# --- separable operators: compare with a fine grid search per coordinate ---------------------------------------------

SEPARABLE = {
    "soft": (prox.soft_threshold, lambda z, lam: lam * z.abs(), False),
    "nonneg_soft": (prox.nonneg_soft_threshold, lambda z, lam: lam * z.abs(), True),
    "hard": (prox.hard_threshold, lambda z, lam: lam * (z != 0).to(z.dtype), False),
    "nonneg_hard": (prox.nonneg_hard_threshold, lambda z, lam: lam * (z != 0).to(z.dtype), True),
}


@pytest.mark.parametrize("name", SEPARABLE)
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.2])
def test_separable_prox_is_argmin(name, lam):
    op, penalty, nonneg = SEPARABLE[name]
    v = torch.linspace(-3, 3, 61)  # includes 0 and both signs
    z = op(v, lam)
    # candidates: a fine grid plus 0 and v itself (the L0 minimisers sit exactly there)
    grid = torch.cat([torch.linspace(-4, 4, 8001), torch.tensor([0.0])])
    cand = torch.cat([grid[None, :].expand(len(v), -1), v[:, None]], dim=1)  # [61, n_cand]
    if nonneg:
        cand = cand.clamp(min=0)  # outside the constraint the objective is +∞
    per_cand = 0.5 * (cand - v[:, None]) ** 2 + penalty(cand, lam)
    best = per_cand.min(dim=1).values
    achieved = 0.5 * (z - v) ** 2 + penalty(z, lam)
    assert torch.all(achieved <= best + 1e-6)
    if nonneg:
        assert torch.all(z >= 0)


def test_closed_forms():
    v = torch.tensor([-2.0, -0.5, 0.0, 0.4, 1.5])
    assert torch.allclose(prox.soft_threshold(v, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(prox.nonneg_soft_threshold(v, 0.5), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))
    # hard threshold at √(2λ) = 1 for λ = 0.5
    assert torch.allclose(prox.hard_threshold(v, 0.5), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.allclose(prox.nonneg_hard_threshold(v, 0.5), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.allclose(prox.jumprelu(v, 1.0), prox.nonneg_hard_threshold(v, 0.5))


def test_negative_lambda_rejected():
    with pytest.raises(ValueError, match="λ must be ≥ 0"):
        prox.soft_threshold(torch.zeros(3), -1.0)


# --- k-sparse projections: brute force over every support ------------------------------------------------------------


def brute_force_k_sparse(v, k, nonneg):
    """min over supports S with |S| ≤ k of ½‖z − v‖², z = v on S (clipped at 0 if nonneg)."""
    n = v.shape[-1]
    best = float("inf")
    for size in range(k + 1):
        for support in itertools.combinations(range(n), size):
            z = torch.zeros_like(v)
            idx = list(support)
            z[idx] = v[idx].clamp(min=0) if nonneg else v[idx]
            best = min(best, objective(z, v, lambda z: 0.0).item())
    return best


@pytest.mark.parametrize("n", [1, 5, 8])
@pytest.mark.parametrize("seed", range(3))
def test_k_sparse_projections_are_argmin(n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g)
    for k in range(1, n + 1):
        for op, nonneg in ((prox.abs_topk, False), (prox.topk, True)):
            z = op(v, k)
            assert (z != 0).sum() <= k
            assert objective(z, v, lambda z: 0.0).item() == pytest.approx(brute_force_k_sparse(v, k, nonneg), abs=1e-12)
            if nonneg:
                assert torch.all(z >= 0)


def test_abs_topk_keeps_signs_and_topk_does_not():
    v = torch.tensor([-5.0, 1.0, 0.5, -0.1])
    assert torch.equal(prox.abs_topk(v, 2), torch.tensor([-5.0, 1.0, 0.0, 0.0]))
    assert torch.equal(prox.topk(v, 2), torch.tensor([0.0, 1.0, 0.5, 0.0]))


def test_ties_and_full_budget():
    v = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5])
    z = prox.abs_topk(v, 2)
    assert (z != 0).sum() == 2 and set(z[z != 0].abs().tolist()) == {1.0}
    assert torch.equal(prox.abs_topk(v, 5), v)  # k = n: the projection is the identity
    assert torch.equal(prox.topk(v, 5), torch.relu(v))
    with pytest.raises(ValueError, match="larger than the dictionary"):
        prox.abs_topk(v, 6)
    with pytest.raises(ValueError, match="k must be ≥ 1"):
        prox.topk(v, 0)


def test_batched_over_leading_dims():
    v = torch.randn(3, 4, 10)
    z = prox.abs_topk(v, 3)
    assert z.shape == v.shape and torch.all((z != 0).sum(-1) == 3)
    for i, j in itertools.product(range(3), range(4)):
        assert torch.equal(z[i, j], prox.abs_topk(v[i, j], 3))


@pytest.mark.parametrize("seed", range(3))
def test_batch_forms_are_argmin(seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(2, 4, generator=g)  # 8 entries, budget k·B
    for k in (1, 2, 3):
        for op, nonneg in ((prox.batch_abs_topk, False), (prox.batch_topk, True)):
            z = op(v, k)
            assert (z != 0).sum() <= k * 2
            best = brute_force_k_sparse(v.flatten(), k * 2, nonneg)
            assert objective(z.flatten(), v.flatten(), lambda z: 0.0).item() == pytest.approx(best, abs=1e-12)
    # the batch budget can give one row more than k
    v = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.0, 0.0]])
    assert (prox.batch_topk(v, 1)[0] != 0).sum() == 2
    with pytest.raises(ValueError, match="\\[B, n\\]"):
        prox.batch_topk(torch.zeros(3), 1)


# --- unrolled solvers ------------------------------------------------------------------------------------------------


def lasso_problem(seed=0, d=20, n=40, B=8):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d, n, generator=g) / d**0.5
    x = torch.randn(B, d, generator=g)
    b = 0.1 * torch.randn(d, generator=g)
    return x, D, b


def test_fista_converges_to_ista_optimum():
    x, D, b = lasso_problem()
    lam = 0.1
    step = prox.spectral_step(D)
    kwargs = dict(b=b, step=step, penalty=lambda z: lam * z.abs().sum(-1))
    optimum = prox.ista(x, D, lambda v: prox.soft_threshold(v, step * lam), 5000, **kwargs).objective[-1]
    fast = prox.fista(x, D, lambda v: prox.soft_threshold(v, step * lam), 600, **kwargs)
    slow = prox.ista(x, D, lambda v: prox.soft_threshold(v, step * lam), 600, **kwargs)
    assert fast.objective[-1].item() == pytest.approx(optimum.item(), rel=1e-5)
    assert fast.objective[-1] <= slow.objective[-1] + 1e-12  # FISTA is at least as far along after 600 steps
    # ISTA's objective never increases (monotone descent with step 1/L)
    assert torch.all(slow.objective[1:] <= slow.objective[:-1] + 1e-12)
    # KKT conditions at the optimum: |Dᵀ(x − Dz − b)| ≤ λ, with equality (and matching sign) on the support
    z = prox.fista(x, D, lambda v: prox.soft_threshold(v, step * lam), 3000, **kwargs).codes
    corr = (x - z @ D.T - b) @ D
    assert torch.all(corr.abs() <= lam + 1e-6)
    on = z != 0
    assert torch.allclose(corr[on], lam * torch.sign(z[on]), atol=1e-6)


def test_iht_with_abs_topk_decreases():
    x, D, b = lasso_problem(seed=1)
    result = prox.ista(x, D, lambda v: prox.abs_topk(v, 5), 200, b=b)
    assert result.objective[-1] < result.objective[1] < result.objective[0]
    assert torch.all((result.codes != 0).sum(-1) <= 5)


@pytest.mark.parametrize("architecture,op", [
    ("abstopk", lambda v: prox.abs_topk(v, 3)),
    ("topk", lambda v: prox.topk(v, 3)),
    ("standard", torch.relu),
])
def test_one_ista_step_is_an_sae_encoder(architecture, op):
    x, D, b = lasso_problem(seed=2)
    sae = SAE(D.shape[0], D.shape[1], architecture, k=3 if architecture != "standard" else None, dtype="float64")
    with torch.no_grad():
        sae.W_enc.copy_(D)  # W_e = D, so W_eᵀ(x − b) = Dᵀ(x − b)
        sae.W_dec.copy_(D.T)
        sae.b_dec.copy_(b)
        sae.b_enc.zero_()
    one_step = prox.ista(x, D, op, n_steps=1, b=b, step=1.0).codes
    assert torch.allclose(sae.encode(x), one_step, atol=1e-12)


def test_solver_shape_errors():
    x, D, b = lasso_problem()
    with pytest.raises(ValueError, match="rows"):
        prox.ista(x[:, :5], D, torch.relu, 1)

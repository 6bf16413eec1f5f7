"""SCR, TPP and RAVEL-style helpers (absae_lib.saebench) on tiny synthetic tensors: closed forms, no model."""

import math

import numpy as np
import pytest
import torch

from absae_lib import saebench
from absae_lib.concepts import ConceptDataset
from absae_lib.sae import SAE


def identity_sae(d: int) -> SAE:
    """An AbsTopK SAE with k = d, W_enc = W_dec = I and no biases: its codes are the coordinates themselves."""
    sae = SAE(d, d, "abstopk", k=d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def random_sae(d: int = 8, d_sae: int = 24, k: int = 4, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(d, d_sae, "topk", k=k)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae.eval()


# ----------------------------------------------------------------------------------------------------------------
# Ablation


def test_ablation_removes_exactly_the_chosen_decoder_contributions():
    sae = random_sae()
    x = torch.randn(32, 8)
    codes = sae.encode(x).detach()
    latents = [3, 7, 11]
    expected = x - codes[:, latents] @ sae.W_dec.detach()[latents]
    assert torch.allclose(saebench.ablate_latents(sae, x, latents), expected, atol=1e-5)
    assert torch.allclose(saebench.ablate_latents(sae, x, []), x)  # nothing chosen: nothing changes
    # Ablating every latent leaves x minus (reconstruction − b_dec): the error and the bias stay.
    everything = saebench.ablate_latents(sae, x, list(range(24)))
    recon = sae.decode(codes).detach()
    assert torch.allclose(everything, x - (recon - sae.b_dec.detach()), atol=1e-5)


def test_ablation_with_identity_sae_zeroes_coordinates():
    x = torch.randn(10, 5)
    out = saebench.ablate_latents(identity_sae(5), x, [1, 3])
    assert torch.allclose(out[:, [1, 3]], torch.zeros(10, 2), atol=1e-6)
    assert torch.allclose(out[:, [0, 2, 4]], x[:, [0, 2, 4]])


def test_project_out_is_orthogonal_and_idempotent():
    x, d = torch.randn(20, 6), torch.randn(6)
    y = saebench.project_out(x, 3 * d)
    assert torch.allclose(y @ (d / d.norm()), torch.zeros(20), atol=1e-5)
    assert torch.allclose(saebench.project_out(y, d), y, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# SCR


def test_normalized_score_closed_form():
    assert saebench.normalized_score(0.9, 0.6, 0.9) == pytest.approx(1.0)
    assert saebench.normalized_score(0.6, 0.6, 0.9) == pytest.approx(0.0)
    assert saebench.normalized_score(0.75, 0.6, 0.9) == pytest.approx(0.5)
    # SAEBench's rule: no gap to recover (< 0.001) scores 0, not NaN.
    assert saebench.normalized_score(0.7, 0.8, 0.8) == 0.0
    assert saebench.normalized_score(0.7, 0.8, 0.8005) == 0.0


def test_probe_weight_is_the_gradient_of_the_fitted_logit():
    """SAEBench dots decoder rows with a raw-space probe weight; ours standardise first, so the weight is coef/scale."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([0.1, 1.0, 10.0, 3.0, 0.5])
    y = (x[:, 2] + 20 * x[:, 0] > 0).long()
    probe = saebench.fit_probe(x, y)
    w = saebench.probe_weight(probe)
    a, b = x[:50].numpy(), x[50:100].numpy()
    gap = probe.decision_function(a) - probe.decision_function(b)
    assert np.allclose(gap, ((x[:50] - x[50:100]) @ w).numpy(), atol=1e-4)


def test_probe_attribution_closed_form_and_tpp_clamp():
    """Latent 0 marks label 1 with its positive pole, latent 1 with its negative pole (a signed latent)."""
    codes = torch.tensor([[2.0, -3.0, 0.0], [2.0, -3.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1, 0, 0])  # mean_diff = [2, −3, 0]
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = torch.tensor([0.5, -2.0])  # dots: [0.5, −2, −1.5]
    scr = saebench.probe_attribution(codes, labels, W_dec, w, "scr")
    assert torch.allclose(scr, torch.tensor([1.0, 6.0, 0.0]))
    tpp = saebench.probe_attribution(codes, labels, W_dec, w, "tpp")
    assert torch.allclose(tpp, torch.tensor([1.0, 0.0, 0.0]))  # the clamp drops the negative pole
    signed = saebench.probe_attribution(codes, labels, W_dec, w, "tpp_sign_aware")
    assert torch.allclose(signed, torch.tensor([1.0, 6.0, 0.0]))  # (−3)·(−2): it pushes the probe to label 1
    assert saebench.top_latents(signed, 5) == [1, 0]  # only non-zero effects, as SAEBench
    assert saebench.top_latents(tpp, 5) == [0]
    with pytest.raises(ValueError, match="mode"):
        saebench.probe_attribution(codes, labels, W_dec, w, "abs")


def scr_data(n: int, seed: int, biased: bool):
    """Coordinate 0 carries A weakly (±1 + noise), coordinate 1 carries B cleanly (±3), the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(n) % 2
    b = a.clone() if biased else (torch.arange(n) // 2) % 2
    x = torch.randn(n, 4, generator=g) * 0.3
    x[:, 0] += 2.0 * a - 1 + 0.8 * torch.randn(n, generator=g)
    x[:, 1] += 3.0 * (2.0 * b - 1)
    return x, a, b


def test_scr_ablating_the_spurious_latent_recovers_the_oracle():
    saes = {"id": identity_sae(4)}
    xb, ab, _ = scr_data(400, 0, biased=True)
    xs, as_, bs = scr_data(400, 1, biased=False)
    xt, at, bt = scr_data(400, 2, biased=False)
    pooled = {name: saebench.pooled_from_acts(saes, x) for name, x in (("b", xb), ("s", xs), ("t", xt))}
    out = saebench.scr(saes, (pooled["b"], ab), (pooled["s"], as_, bs), (pooled["t"], at, bt), ns=(1, 2))
    assert out["acc_oracle"] > out["acc_biased"] + 0.1  # the biased probe leans on B
    assert out["chosen"] == "A"  # it is worse on A than on B, so SAEBench reports "ablate B, score A"
    assert out["directions"]["B"]["acc_biased"] > out["acc_biased"]
    assert out["variants"]["id"]["latents"][0] == 1  # B's latent ranks first by probe attribution
    assert out["directions"]["B"]["variants"]["id"]["latents"][0] == 0  # the other way: A's latent
    assert out["variants"]["id"]["score"][1] > 0.8
    assert out["score_dim"] > 0.8  # B's DiM direction is coordinate 1 too
    assert "SAEBench-style on offline substitutes" in out["label"]


# ----------------------------------------------------------------------------------------------------------------
# TPP


def test_tpp_score_closed_form():
    drops = np.full((3, 3), 0.1)
    np.fill_diagonal(drops, 0.4)
    score, per = saebench.tpp_score(drops)
    assert score == pytest.approx(0.3)
    assert np.allclose(per, 0.3)
    assert saebench.tpp_score(np.zeros((2, 2)))[0] == 0.0
    with pytest.raises(ValueError):
        saebench.tpp_score(np.zeros((1, 1)))


def tpp_tasks(sign: float = 1.0):
    """Concept c lives on coordinate c only (label 1 at +1 for c0; at ``sign`` for c1)."""
    g = torch.Generator().manual_seed(0)

    def task(c: int, n: int):
        y = torch.arange(n) % 2
        x = torch.randn(n, 3, generator=g) * 0.2
        x[:, c] += (sign if c == 1 else 1.0) * (2.0 * y - 1)
        return x, y

    return {f"c{c}": (*task(c, 200), *task(c, 200)) for c in (0, 1)}


def test_tpp_one_latent_per_concept_is_targeted():
    """Ablating concept c's latent breaks probe c and leaves the other probe alone."""
    saes = {"id": identity_sae(3)}
    tasks = {c: (saebench.pooled_from_acts(saes, xtr), ytr, saebench.pooled_from_acts(saes, xte), yte)
             for c, (xtr, ytr, xte, yte) in tpp_tasks().items()}
    out = saebench.tpp(saes, tasks, ns=(1,))
    assert all(a > 0.95 for a in out["acc"].values())
    drops = np.array(out["variants"]["id"]["drops"][1])
    assert drops[0, 0] > 0.3 and drops[1, 1] > 0.3
    assert abs(drops[0, 1]) < 0.05 and abs(drops[1, 0]) < 0.05
    assert out["variants"]["id"]["score"][1] > 0.3
    assert out["dim"]["score"] > 0.3


def test_tpp_clamp_misses_a_negative_pole_that_the_sign_aware_ranking_finds():
    """Concept c1's label 1 sits at −1 on coordinate 1: a signed latent marks it with its negative pole. SAEBench's
    clamp(mean_diff, 0) gives it no effect, so TPP ablates nothing there; the sign-aware ranking ablates it."""
    saes = {"id": identity_sae(3)}
    tasks = {c: (saebench.pooled_from_acts(saes, xtr), ytr, saebench.pooled_from_acts(saes, xte), yte)
             for c, (xtr, ytr, xte, yte) in tpp_tasks(sign=-1.0).items()}
    res = saebench.tpp(saes, tasks, ns=(1,))["variants"]["id"]
    assert 1 not in res["latents"]["c1"]  # clamped away
    assert res["latents_sign_aware"]["c1"][0] == 1
    assert res["drops"][1][1][1] < 0.05 < 0.3 < res["drops_sign_aware"][1][1][1]
    assert res["score_sign_aware"][1] > res["score"][1] + 0.2


def test_pooled_features_mean_over_tokens_after_the_first(model):
    """Pooled acts and codes equal the per-token mean (token 0 skipped) computed on each text alone: padding in the
    batch leaks nothing, and pooling codes then ablating equals ablating per token then pooling."""
    from absae_lib.concepts import token_ids

    texts = ["The cat sat on the mat today.", "Rain.", "A much longer sentence, with commas, clauses and more words."]
    torch.manual_seed(0)
    sae = SAE(model.cfg.d_model, 64, "abstopk", k=8).eval()
    hook = "blocks.3.hook_resid_post"
    pooled = saebench.pooled_features(model, texts, hook, {"a": sae}, batch_size=3)
    for i, text in enumerate(texts):
        ids = torch.tensor([token_ids(model.tokenizer, [text])[0]])
        _, cache = model.run_with_cache(ids, names_filter=hook, stop_at_layer=4)
        x = cache[hook][0, 1:].float()
        assert torch.allclose(pooled.acts[i], x.mean(0), atol=1e-4)
        z = sae.encode(x).detach()
        assert torch.allclose(pooled.codes["a"][i], z.mean(0), atol=1e-4)
        L = [0, 5, 9]
        per_token = (x - z[:, L] @ sae.W_dec.detach()[L]).mean(0)
        pooled_first = pooled.acts[i] - saebench.latent_contribution(pooled.codes["a"][i:i + 1], sae.W_dec, L)[0]
        assert torch.allclose(per_token, pooled_first, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# SCR splits (synthetic dataset: no corpus needed)


def test_scr_splits_are_biased_balanced_and_document_disjoint():
    texts, labels, groups, meta = [], [], [], []
    for f in range(40):
        genre = f % 2
        for i in range(12):
            texts.append(f"doc{f} sentence {i}")
            labels.append(genre)
            groups.append(f"c{'ak'[genre]}{f:02d}")
            meta.append({"gender": i % 2})
    ds = ConceptDataset("toy", texts, torch.tensor(labels), None, ("press", "fiction"), groups, meta)
    parts = saebench.scr_splits(ds, n_biased=20, n_cell=10, seed=0)
    biased = parts["biased"]
    assert torch.equal(biased.labels, saebench.gender_labels(biased))  # A == B everywhere
    for name in ("selection", "test"):
        cells = list(zip(parts[name].labels.tolist(), saebench.gender_labels(parts[name]).tolist()))
        assert all(cells.count(c) == 10 for c in [(0, 0), (0, 1), (1, 0), (1, 1)])
    files = {name: set(p.groups) for name, p in parts.items()}
    assert not files["biased"] & files["selection"] and not files["biased"] & files["test"]
    assert not files["selection"] & files["test"]
    with pytest.raises(ValueError):
        saebench.scr_splits(ds, n_biased=1000, n_cell=10)


# ----------------------------------------------------------------------------------------------------------------
# RAVEL helpers


def test_country_facts_are_well_formed():
    countries = [f[0] for f in saebench.COUNTRY_FACTS]
    assert len(countries) == len(set(countries)) >= 30
    assert all(len(f) == 4 for f in saebench.COUNTRY_FACTS)
    assert {f[2] for f in saebench.COUNTRY_FACTS} <= {"Europe", "Africa", "Asia", "North America", "South America"}
    assert all("{}" in t for t in saebench.FACT_TEMPLATES.values())
    assert set(saebench.FACT_TEMPLATES) == set(saebench.ATTRIBUTES)


def test_between_class_variance_closed_form():
    X = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 5.0], [6.0, 5.0]])
    v = saebench.between_class_variance(X, ["a", "a", "b", "b"])
    # class means (1, 1) and (5, 5), overall mean (3, 3): 2·4 + 2·4 over 4 rows = 4 in both columns
    assert torch.allclose(v, torch.tensor([4.0, 4.0]))
    assert torch.allclose(saebench.between_class_variance(X, ["a", "b", "a", "b"]), torch.tensor([1.0, 0.0]))


def test_between_class_basis_spans_the_class_means():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, generator=g) * 5
    classes = [0, 1, 2] * 10
    X = means[classes] + 0.01 * torch.randn(30, 6, generator=g)
    B = saebench.between_class_basis(X, classes, 10)
    assert B.shape == (6, 2)  # three class means span two directions once centred
    assert torch.allclose(B.T @ B, torch.eye(2), atol=1e-5)
    centred = means - means.mean(0)
    assert torch.allclose(centred @ B @ B.T, centred, atol=0.1)


def test_patch_delta_closed_forms():
    base, source = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(saebench.patch_delta(base, source, "full"), source - base)
    delta = saebench.patch_delta(base, source, "latents", sae=identity_sae(4), latents=[2])
    expected = torch.zeros(5, 4)
    expected[:, 2] = source[:, 2] - base[:, 2]
    assert torch.allclose(delta, expected, atol=1e-6)
    basis = torch.eye(4)[:, :1]
    sub = saebench.patch_delta(base, source, "subspace", basis=basis)
    assert torch.allclose(sub[:, 0], source[:, 0] - base[:, 0]) and torch.allclose(sub[:, 1:], torch.zeros(5, 3))
    with pytest.raises(ValueError):
        saebench.patch_delta(base, source, "nope")


def test_ravel_pairs_differ_on_both_attributes():
    facts = saebench.COUNTRY_FACTS
    pairs = saebench.ravel_pairs(range(len(facts)), facts, "capital", "continent", max_pairs=50, seed=0)
    assert len(pairs) == 50 and len(set(pairs)) == 50
    assert all(facts[a][1] != facts[b][1] and facts[a][2] != facts[b][2] for a, b in pairs)


def fake_known(d: int = 4, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {a: {"acts": torch.randn(n, d, generator=g), "correct": [True] * n} for a in saebench.ATTRIBUTES}


def test_ravel_skips_with_a_reason_when_no_fact_is_known():
    """Issue 12: with no attribute above fact_min_accuracy, RAVEL crashed in torch.cat; now it says why it skipped."""
    from types import SimpleNamespace

    out = saebench.ravel(SimpleNamespace(tokenizer=None), "blocks.0.hook_resid_post", {"id": identity_sae(4)},
                         fake_known(), attributes=[])
    assert out["targets"] == {} and "no attribute" in out["skipped"]
    one = saebench.ravel(SimpleNamespace(tokenizer=None), "blocks.0.hook_resid_post", {"id": identity_sae(4)},
                         fake_known(), attributes=["capital"])
    assert "isolation needs a second" in one["skipped"]


def test_ravel_gates_saes_that_do_not_reconstruct_the_country_token():
    from types import SimpleNamespace

    known = fake_known()
    saes = {"id": identity_sae(4), "random": random_sae(d=4, d_sae=6, k=1)}
    fvu = saebench.country_token_fvu(saes, known, saebench.ATTRIBUTES)
    assert fvu["id"] < 1e-6 and fvu["random"] > 0.5
    out = saebench.ravel(SimpleNamespace(tokenizer=None), "blocks.0.hook_resid_post", saes, known, attributes=[])
    assert list(out["not_measurable"]) == ["random"] and "FVU" in out["not_measurable"]["random"]

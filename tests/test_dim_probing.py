"""Difference-in-Means, latent selection and probes (train-only selection), the signed->non-negative adapter, and
antipodal decoder pairs."""

import pytest
import torch

from absae_lib.dim import diff_in_means, dim_alignment, dim_cosines, dim_projection_accuracy
from absae_lib.probing import (
    _best_thresholds,
    antipodal_pairs,
    dense_probe,
    encode_all,
    nonneg_view_check,
    probe_task,
    select_latents,
    signed_to_nonneg,
    single_latent_accuracy,
    sparse_probe,
    sparse_probe_sweep,
)
from absae_lib.sae import SAE


def blobs(n: int, d: int, gap: float, seed: int):
    """Two Gaussian classes whose means differ by ``gap`` along a random unit direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    x = torch.randn(n, d, generator=g) + gap * labels[:, None] * direction
    return x, labels, direction


# --- DiM ------------------------------------------------------------------------------------------------------------


def test_diff_in_means_closed_form():
    acts = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 1.0], [4.0, 3.0]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    # mean(label 1) = (2, 1); mean(label 0) = (2, 3)
    torch.testing.assert_close(diff_in_means(acts, labels), torch.tensor([0.0, -2.0]))
    with pytest.raises(ValueError, match="both classes"):
        diff_in_means(acts, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="binary"):
        diff_in_means(acts, torch.tensor([0, 1, 2, 0, 1]))


def test_dim_cosines_normalise_rows():
    direction = torch.tensor([3.0, 0.0, 0.0])
    W_dec = torch.tensor([[0.5, 0.0, 0.0], [-7.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(dim_cosines(direction, W_dec), torch.tensor([1.0, -1.0, 0.0, 2**-0.5]))


def test_dim_projection_accuracy_separable_and_shuffled():
    x, y, _ = blobs(2000, 16, gap=40.0, seed=0)
    assert dim_projection_accuracy(x[:1000], y[:1000], x[1000:], y[1000:]) == 1.0
    shuffled = y[torch.randperm(2000, generator=torch.Generator().manual_seed(1))]
    acc = dim_projection_accuracy(x[:1000], shuffled[:1000], x[1000:], shuffled[1000:])
    assert abs(acc - 0.5) < 0.07



def test_dim_alignment_single_row_and_pair():
    direction = torch.tensor([1.0, 0.0, 0.0])
    # row 2 is the axis with a negative sign; rows 0 and 3 are the two one-sided halves of a tilted axis
    W_dec = torch.tensor([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [-3.0, 0.0, 0.0], [-0.8, 0.6, 0.0]])
    a = dim_alignment(direction, W_dec)
    assert a["best_latent"] == 2 and a["best_cosine"] == pytest.approx(-1.0)
    assert a["max_latent"] == 0 and a["max_cosine"] == pytest.approx(0.8)
    assert a["min_latent"] == 2 and a["min_cosine"] == pytest.approx(-1.0)
    assert a["pair_cosine"] == pytest.approx((1.8) / (0.6**2 + 1.8**2) ** 0.5)
    b = dim_alignment(direction, W_dec[[0, 1, 3]])  # without the axis row, the pair (0, 3) spans it exactly
    assert (b["max_latent"], b["min_latent"]) == (0, 2) and b["pair_cosine"] == pytest.approx(1.0)

# --- latent selection and probes ------------------------------------------------------------------------------------


def planted_codes(n: int = 400, d_sae: int = 50, seed: int = 0):
    """Sparse non-negative noise codes with latent 7 equal to the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    codes = torch.rand(n, d_sae, generator=g) * (torch.rand(n, d_sae, generator=g) < 0.1)
    codes[:, 7] = labels.float()
    return codes, labels


def test_planted_latent_is_selected_first_and_probes_perfectly():
    codes, labels = planted_codes()
    sel = select_latents(codes[:300], labels[:300], k=3, signed=False)
    assert sel.indices[0] == 7 and sel.mean_diff[0] == pytest.approx(1.0)
    result = sparse_probe(codes[:300], labels[:300], codes[300:], labels[300:], k=1)
    assert result["latents"] == [7] and result["accuracy"] == 1.0
    single = single_latent_accuracy(codes[:300], labels[:300], codes[300:], labels[300:])
    assert single["latent"] == 7 and single["direction"] == 1 and single["accuracy"] == 1.0
    assert 0.0 < single["threshold"] < 1.0
    sweep = sparse_probe_sweep(codes[:300], labels[:300], codes[300:], labels[300:], ks=(1, 2, 5, 100))
    assert [r["k"] for r in sweep] == [1, 2, 5]  # k > d_sae skipped
    assert all(r["accuracy"] == 1.0 for r in sweep)


def test_negative_class_latents_rank_by_absolute_difference():
    codes, labels = planted_codes()
    codes[:, 7] = 0.0
    codes[:, 3] = 1.0 - labels.float()  # fires for the negative class only
    sel = select_latents(codes, labels, k=1, signed=False)
    assert sel.indices.tolist() == [3] and sel.mean_diff[0] == pytest.approx(-1.0)
    single = single_latent_accuracy(codes, labels, codes, labels)
    assert single["latent"] == 3 and single["direction"] == -1 and single["accuracy"] == 1.0


def test_signed_latent_counts_both_poles():
    codes, labels = planted_codes()
    codes[:, 7] = 0.0
    codes[:, 11] = 2.0 * labels.float() - 1.0  # +1 on one class, -1 on the other: a gap of 2
    codes[:, 12] = 1.5 * labels.float()  # a one-sided latent with a smaller gap
    with pytest.raises(ValueError, match="signed=False"):
        select_latents(codes, labels, k=2, signed=False)
    sel = select_latents(codes, labels, k=2, signed=True)
    assert sel.indices.tolist() == [11, 12]
    torch.testing.assert_close(sel.mean_diff, torch.tensor([2.0, 1.5]))


def test_selection_uses_the_train_split_only():
    """Latent 0 separates the classes perfectly on the test rows but is noise on the train rows; latent 1 is
    weakly informative on train. Selection and thresholds must come from train: leaking test rows would pick 0."""
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 200, 200
    y_train, y_test = torch.arange(n_train) % 2, torch.arange(n_test) % 2
    codes_train = torch.rand(n_train, 20, generator=g) * 0.1
    codes_test = torch.rand(n_test, 20, generator=g) * 0.1
    codes_test[:, 0] = 5.0 * y_test.float()  # informative on test only
    codes_train[:, 1] += 0.3 * y_train.float()  # informative on train
    codes_test[:, 1] += 0.3 * y_test.float()
    all_codes, all_y = torch.cat([codes_train, codes_test]), torch.cat([y_train, y_test])
    assert select_latents(all_codes, all_y, 1, signed=False).indices.tolist() == [0]  # what leaking would choose
    assert select_latents(codes_train, y_train, 1, signed=False).indices.tolist() == [1]
    assert sparse_probe(codes_train, y_train, codes_test, y_test, k=1)["latents"] == [1]
    assert single_latent_accuracy(codes_train, y_train, codes_test, y_test)["latent"] == 1


def test_best_thresholds_match_brute_force():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (30, 6), generator=g).float()  # many ties
    labels = torch.randint(0, 2, (30,), generator=g)
    acc, thr, direction = _best_thresholds(values, labels)
    for j in range(values.shape[1]):
        candidates = torch.cat([values[:, j].unique() - 0.5, values[:, j].max()[None] + 0.5])
        best = max(
            max(((values[:, j] > t).long() == labels).float().mean().item(),
                ((values[:, j] <= t).long() == labels).float().mean().item())
            for t in candidates
        )
        assert acc[j].item() == pytest.approx(best)
        predicted = values[:, j] > thr[j] if direction[j] > 0 else values[:, j] <= thr[j]
        assert (predicted.long() == labels).float().mean().item() == pytest.approx(best)


def test_dense_probe_on_separable_blobs():
    x, y, _ = blobs(400, 16, gap=20.0, seed=2)
    result = dense_probe(x[:300], y[:300], x[300:], y[300:])
    assert result["accuracy"] == 1.0 and result["train_accuracy"] == 1.0


# --- signed -> non-negative adapter ---------------------------------------------------------------------------------


def test_nonneg_view_reconstructs_exactly_like_the_signed_sae():
    torch.manual_seed(0)
    sae = SAE(16, 32, "abstopk", k=4)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    view = signed_to_nonneg(sae)
    assert view.cfg.d_sae == 64 and view.cfg.d_in == 16 and view.W_dec.shape == (64, 16)
    x = torch.randn(50, 16)
    z = sae.encode(x)
    assert (z < 0).any()  # the test is only meaningful with negative codes
    codes = view.encode(x)
    assert codes.shape == (50, 64) and (codes >= 0).all()
    assert ((codes != 0).sum(-1) <= 4).all()
    torch.testing.assert_close(view.decode(codes), sae.decode(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(view(x).recon, sae(x).recon, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(view.merge_codes(codes), z)
    torch.testing.assert_close(encode_all(view, x, batch_size=7), codes)  # batched encode, any SAE-like module
    # The pre-activations of the two poles are W_enc / −W_enc: the view's encoder weights are consistent.
    torch.testing.assert_close((x - view.b_dec) @ view.W_enc + view.b_enc, view(x).pre)
    assert view.original_latent(3) == (3, 1) and view.original_latent(35) == (3, -1)
    with pytest.raises(ValueError, match="last dimension"):
        view.decode(z)


# --- antipodal pairs ------------------------------------------------------------------------------------------------


def test_antipodal_pairs_finds_planted_pairs_across_blocks():
    torch.manual_seed(0)
    W = torch.randn(300, 64)
    assert antipodal_pairs(W, threshold=-0.9, block_size=64) == []
    W[250] = -2.5 * W[10]  # across blocks, different norm
    W[40] = -0.3 * W[33] + 1e-3 * torch.randn(64)  # inside one block, nearly antipodal
    pairs = antipodal_pairs(W, threshold=-0.9, block_size=64)
    assert [(i, j) for i, j, _ in pairs] == [(10, 250), (33, 40)]
    assert pairs[0][2] == pytest.approx(-1.0, abs=1e-5) and pairs[1][2] < -0.99
    other = antipodal_pairs(W, block_size=7)  # block size does not change the answer (up to float rounding)
    assert [p[:2] for p in other] == [p[:2] for p in pairs]
    assert [p[2] for p in other] == pytest.approx([p[2] for p in pairs], abs=1e-5)



def signed_blob_sae(seed: int = 0):
    """Blobs in 16-d and an AbsTopK SAE (k = 4, 32 latents) whose latent 5 reads and writes the class axis."""
    x, y, direction = blobs(400, 16, gap=6.0, seed=seed)
    x = x - 3.0 * direction  # classes at −3 and +3 along the axis: a signed latent sees both poles
    torch.manual_seed(seed + 100)  # not the blobs' seed: the first random decoder row would *be* the direction
    sae = SAE(16, 32, "abstopk", k=4)
    with torch.no_grad():
        sae.W_enc[:, 5] = 3.0 * direction
        sae.W_dec[5] = direction
        sae.b_dec.zero_()
    return sae, x, y, direction


def test_nonneg_view_check_on_a_signed_axis():
    sae, x, y, _ = signed_blob_sae()
    check = nonneg_view_check(sae, x[:300], y[:300], x[300:], y[300:], ks=(1, 2))
    assert check["max_difference"] < 1e-5 and check["max_recon_difference"] < 1e-5 and check["max_code_difference"] == 0
    assert check["nonneg"] and check["max_active"] <= 4
    assert check["single_train_difference"] == 0.0
    assert check["single_direct"] > 0.9 and abs(check["single_test_difference"]) <= 0.05
    assert set(check["sparse_direct"]) == set(check["sparse_view"]) == {1, 2}
    assert check["sparse_direct"][1] > 0.9
    with pytest.raises(ValueError, match="signed"):
        nonneg_view_check(SAE(16, 32, "topk", k=4), x[:300], y[:300], x[300:], y[300:])


def test_probe_task_finds_the_planted_axis():
    sae, x, y, direction = signed_blob_sae()
    topk = SAE(16, 32, "topk", k=4)
    with torch.no_grad():  # the same axis split into two one-sided latents, 3 (label 1) and 9 (label 0)
        topk.W_enc[:, 3], topk.W_enc[:, 9] = 3.0 * direction, -3.0 * direction
        topk.W_dec[3], topk.W_dec[9] = direction, -direction
        topk.b_dec.zero_()
    result = probe_task({"abstopk": sae, "topk": topk}, x[:300], y[:300], x[300:], y[300:], ks=(1, 2, 64))
    assert result["n_train"] == 300 and result["n_test"] == 100
    assert result["dim_accuracy"] > 0.9 and result["dense_accuracy"] > 0.9
    signed, split = result["variants"]["abstopk"], result["variants"]["topk"]
    assert set(signed["sparse"]) == {1, 2}  # k > d_sae skipped
    assert signed["latents"][0] == 5 and signed["single"]["latent"] == 5 and signed["single"]["accuracy"] > 0.9
    assert signed["dim"]["best_latent"] == 5 and abs(signed["dim"]["best_cosine"]) > 0.95
    assert abs(signed["single"]["dim_cosine"]) > 0.95
    assert set(split["latents"]) == {3, 9} and split["single"]["latent"] in (3, 9)
    assert split["dim"]["max_latent"] == 3 and split["dim"]["min_latent"] == 9 and split["dim"]["pair_cosine"] > 0.95
    assert all(0 < v["nmse"] for v in result["variants"].values())
    # Like for like, with intervals and a null: the one signed latent and the one DiM direction both hold the axis.
    assert signed["like_for_like"]["single_vs_dim"]["verdict"] == "tie (within noise)"
    iv = signed["intervals"]["single"]
    assert iv["low"] <= signed["single"]["accuracy"] <= iv["high"] < 1.0 + 1e-9
    assert signed["null"]["single"]["max"] < 0.75 < signed["single"]["accuracy"]  # shuffled labels: near chance
    assert result["null"]["dim"]["max"] < 0.75 and result["null"]["dense"]["max"] < 0.75
    assert result["k_max"] == 2 and set(signed["sparse_correct"]) == {1, 2}
    assert signed["like_for_like"]["sparse_kmax_vs_dense"]["verdict"] in (
        "tie (within noise)", "abstopk better", "dense probe better")

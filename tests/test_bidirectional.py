"""The semantic bidirectionality test: planted concept axes with known answers, nulls at their closed-form level."""

import math

import pytest
import torch

from absae_lib import bidirectional as bd
from absae_lib.lens import brown_vocabulary, logit_lens, whole_word_ids
from absae_lib.sae import SAE

D, D_SAE = 16, 32
AXIS = 5  # the AbsTopK latent planted on the concept axis e_0
PLUS, MINUS = 2, 7  # the TopK latents planted on +e_0 and −e_0


def planted_saes() -> tuple[SAE, SAE]:
    """AbsTopK whose latent AXIS reads and writes e_0; TopK whose latents PLUS / MINUS write +e_0 / −e_0.

    Every other row is a random direction orthogonal to e_0, so only the planted latents see the concept.
    """
    g = torch.Generator().manual_seed(0)
    rest = torch.randn(D_SAE, D, generator=g)
    rest[:, 0] = 0.0
    rest = rest / rest.norm(dim=1, keepdim=True)
    e0 = torch.zeros(D)
    e0[0] = 1.0
    abs_rows, top_rows = rest.clone(), rest.clone()
    abs_rows[AXIS] = e0
    top_rows[PLUS], top_rows[MINUS] = e0, -e0
    saes = []
    for arch, rows in (("abstopk", abs_rows), ("topk", top_rows)):
        sae = SAE(D, D_SAE, arch, k=1)
        with torch.no_grad():
            sae.W_dec.copy_(rows)
            sae.W_enc.copy_(rows.T)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        saes.append(sae)
    return saes[0], saes[1]


def planted_axis(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """acts [n, D]: label 1 at +3·e_0, label 0 at −3·e_0, plus noise of norm ~0.4; labels [n] alternate."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    acts = 0.1 * torch.randn(n, D, generator=g)
    acts[:, 0] += 3.0 * (2 * labels - 1)
    return acts, labels


def test_planted_axis_one_abstopk_latent_both_poles():
    abstopk, topk = planted_saes()
    train, test = planted_axis(200, 0), planted_axis(100, 1)
    r = bd.axis_test(abstopk, topk, *train, *test, n_null=3, n_shuffles=50)
    assert r["abstopk_latent"] == AXIS and r["abstopk_best_cosine"] == pytest.approx(1.0, abs=0.01)
    assert r["abstopk_sign_accuracy"] == 1.0 and r["abstopk_fire_rate"] == 1.0 and r["abstopk_both_poles_fire"]
    assert r["abstopk_poles"] == {"label1_on_pole": 50, "label0_on_pole": 50, "label1_off_pole": 0,
                                  "label0_off_pole": 0}
    assert r["abstopk_sign_latent"] == AXIS and r["abstopk_sign_latent_accuracy"] == 1.0
    assert abs(r["abstopk_sign_null"]["mean"] - 0.5) < 0.1 and r["abstopk_sign_null"]["q95"] < 0.7
    assert r["topk_pair"] == [PLUS, MINUS]
    assert r["topk_pair_cosines"] == pytest.approx([1.0, -1.0], abs=0.01)
    assert r["topk_pair_row_cosine"] == pytest.approx(-1.0) and r["topk_pair_accuracy"] == 1.0
    # A random 32-row dictionary in 16 dimensions reaches well below 1, but far above 0.
    assert 0.3 < r["null_best_cosine"] < 0.9 and r["null_pair_cosines"][0] > 0 > r["null_pair_cosines"][1]
    # Shuffled labels: the DiM of noise follows the data's largest variance (here e_0 itself), so it is context.
    assert 0 < r["shuffled_dim_best_cosine"] <= 1.0 + 1e-6 and r["dim_accuracy"] == 1.0
    assert bd.axis_verdict(r) == "one latent, both poles"


def test_axis_nobody_reads_is_no():
    """Labels independent of the activations: no latent's sign beats the shuffled null."""
    abstopk, topk = planted_saes()
    (train_acts, _), (test_acts, _) = planted_axis(200, 0), planted_axis(200, 1)
    g = torch.Generator().manual_seed(3)
    train_labels, test_labels = torch.randint(0, 2, (200,), generator=g), torch.randint(0, 2, (200,), generator=g)
    r = bd.axis_test(abstopk, topk, train_acts, train_labels, test_acts, test_labels, n_null=2, n_shuffles=100)
    assert abs(r["abstopk_sign_accuracy"] - 0.5) < 0.15
    assert bd.axis_verdict(r) == "no"


def test_one_sided_latent_does_not_count_as_both_poles():
    """A latent that fires (positively) on label 1 only reads the label with its sign but uses one pole."""
    labels = torch.tensor([1] * 20 + [0] * 20)
    code = torch.cat([torch.full((20,), 2.0), torch.zeros(18), torch.full((2,), 1.0)])
    r = bd.sign_separation(code, labels)
    assert r["sign_accuracy"] == pytest.approx(20 / 22) and r["fire_rate"] == pytest.approx(22 / 40)
    assert r["sign_accuracy_all"] == pytest.approx((20 + 0.5 * 18) / 40)
    assert r["poles"]["label0_on_pole"] == 0 and not r["both_poles_fire"]
    flipped = bd.sign_separation(-code, labels, orientation=-1)
    assert flipped == r


def test_best_sign_latent_finds_the_reader_and_its_orientation():
    labels = torch.tensor([0, 1] * 10)
    codes = torch.zeros(20, 4)
    codes[:, 2] = 1.0 - 2.0 * labels  # negative on label 1: orientation −1
    codes[::3, 1] = 1.0  # a latent that fires at random-ish rows
    assert bd.best_sign_latent(codes, labels) == (2, -1)


def test_random_dictionary_null_matches_the_closed_form():
    """The largest |cos| of a direction with m random unit rows in d dims is about sqrt(2 ln(2m) / d)."""
    W = bd.random_dictionary(4608, 576, seed=0)
    assert torch.allclose(W.norm(dim=1), torch.ones(4608), atol=1e-5)
    d = torch.randn(576, generator=torch.Generator().manual_seed(1))
    best = (W @ (d / d.norm())).abs().max().item()
    assert best == pytest.approx(math.sqrt(2 * math.log(2 * 4608) / 576), rel=0.25)


def test_splitting_counts_two_latents_for_an_antipodal_topk_pair():
    abstopk, topk = planted_saes()
    matches = bd.splitting(abstopk.W_dec, topk.W_dec)
    assert matches["plus_latent"][AXIS] == PLUS and matches["minus_latent"][AXIS] == MINUS
    assert matches["plus_cosine"][AXIS] == pytest.approx(1.0) and matches["minus_cosine"][AXIS] == pytest.approx(1.0)
    # The other AbsTopK rows are TopK rows too (matched on + only), except rows PLUS and MINUS, which TopK replaced.
    counts = bd.splitting_counts(matches, threshold=0.9)
    assert counts == {"two": 1, "plus only": D_SAE - 3, "minus only": 0, "none": 2, "n": D_SAE}
    null = bd.splitting_counts(bd.splitting(abstopk.W_dec, bd.random_dictionary(D_SAE, D, seed=4)), threshold=0.9)
    assert null["two"] == 0
    mask = torch.zeros(D_SAE, dtype=torch.bool)
    mask[AXIS] = True
    assert bd.splitting_counts(matches, 0.9, mask)["two"] == 1


def test_antipodal_calibration_sees_a_planted_pair_and_not_the_null():
    _, topk = planted_saes()
    W = torch.cat([topk.W_dec.detach(), torch.randn(64, D)])  # the ±e_0 pair among random rows
    r = bd.antipodal_calibration(W, thresholds=(-0.99,), n_null=2)
    assert r["latents_below"]["-0.99"] == 2 and r["null"]["latents_below"]["-0.99"] == 0
    assert r["min_most_negative"] == pytest.approx(-1.0, abs=1e-5) and r["null"]["median_most_negative"] < 0


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="orientation"):
        bd.sign_separation(torch.ones(3), torch.ones(3), orientation=0)
    with pytest.raises(ValueError, match="code and labels"):
        bd.sign_separation(torch.ones(3), torch.ones(4))
    abstopk, topk = planted_saes()
    with pytest.raises(ValueError, match="width"):
        bd.axis_test(abstopk, topk, torch.randn(10, D + 1), torch.arange(10) % 2, torch.randn(4, D + 1),
                     torch.arange(4) % 2)


class Vocab:
    """Tokens: whole words, a fragment and punctuation."""

    pieces = [" king", " queen", " acknowled", "ountains", " the", ".", " x"]

    def __len__(self):
        return len(self.pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_whole_word_lens_ranks_only_whole_words():
    vocabulary = brown_vocabulary(["King", "queen", "the", "the", "the", "king", "king", "queen", "queen", "x"] * 2,
                                  min_count=3)
    assert vocabulary == {"king", "queen", "the"}
    ids = whole_word_ids(Vocab(), vocabulary)
    assert ids.tolist() == [0, 1, 4]  # " acknowled" is a fragment, "ountains" has no space, " x" too short
    W_U = torch.zeros(4, len(Vocab.pieces))
    W_U[0, 2], W_U[0, 0], W_U[0, 3], W_U[0, 1] = 5.0, 2.0, -6.0, -1.0  # the fragment wins the raw lens
    from types import SimpleNamespace

    model = SimpleNamespace(cfg=SimpleNamespace(d_model=4, normalization_type="RMSPre"), W_U=W_U, tokenizer=Vocab(),
                            ln_final=None)
    direction = torch.tensor([1.0, 0, 0, 0])
    assert logit_lens(model, direction, 1).positive[0][0] == " acknowled"
    lens = logit_lens(model, direction, 2, token_ids=ids)
    assert [t for t, _ in lens.positive] == [" king", " the"]
    assert lens.positive[0][1] == pytest.approx(2.0) and lens.negative[0] == (" queen", pytest.approx(1.0))
    with pytest.raises(ValueError, match="vocabulary is empty"):
        whole_word_ids(Vocab(), set())


def test_random_dictionary_is_not_an_sae_initialisation():
    """Regression: the null once drew torch.manual_seed(seed) Gaussians, exactly the rows an SAE starts from."""
    torch.manual_seed(0)
    init = bd.unit_rows(SAE(D, D_SAE, "topk", k=1).W_dec)
    null = bd.random_dictionary(D_SAE, D, seed=0)
    assert (init * null).sum(1).abs().max() < 0.9  # no row shared (a shared row has cosine 1)


def test_verdict_one_pole_only_for_a_one_sided_detector():
    """A latent that fires positively on label 1 and stays silent on label 0 beats chance but is one-sided."""
    base = {"null_best_cosine": 0.2, "abstopk_best_cosine": 0.5, "abstopk_sign_latent_cosine": 0.5,
            "abstopk_sign_accuracy": 0.9, "abstopk_sign_latent_accuracy": 0.9,
            "abstopk_sign_null": {"q95": 0.7}, "abstopk_sign_latent_null": {"q95": 0.7},
            "abstopk_both_poles_fire": False, "abstopk_sign_latent_both_poles_fire": False}
    assert bd.axis_verdict(base) == "one pole only"
    assert bd.axis_verdict({**base, "abstopk_sign_latent_both_poles_fire": True}) == "one latent, both poles"
    off_axis = {**base, "abstopk_sign_latent_both_poles_fire": True, "abstopk_sign_latent_cosine": 0.1}
    assert bd.axis_verdict(off_axis) == "both poles, row off the axis"
    assert bd.axis_verdict({**base, "abstopk_sign_accuracy": 0.6, "abstopk_sign_latent_accuracy": 0.6}) == "no"

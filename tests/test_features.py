"""Reading latents: top contexts of each sign, sign counts, logit lens, antipodal rows, Brown word classes, widgets.

Most tests use a tiny SAE whose encoder copies input coordinates into latents, so every code is known in advance.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from absae_lib import features, widgets
from absae_lib.activations import ActivationStore
from absae_lib.sae import SAE

D_IN, D_SAE, SEQ_LEN = 8, 6, 5  # activation rows come from token rows of SEQ_LEN tokens (position 0 dropped)
N_ROWS = 60
LATENT = 3
POSITIVE = {17: 5.0, 42: 4.0, 5: 3.0}  # row -> planted code of LATENT
NEGATIVE = {7: -6.0, 30: -2.0}


class WordTokenizer:
    """Token i decodes to " t<i>"."""

    eos_token_id = 0

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)


def identity_sae(architecture: str = "abstopk", k: int = 2) -> SAE:
    """An SAE whose pre-activations are the first D_SAE input coordinates (codes = prox of x[:, :D_SAE])."""
    sae = SAE(D_IN, D_SAE, architecture, k=k)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D_IN, D_SAE))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted_acts() -> torch.Tensor:
    """[N_ROWS, D_IN]: small noise everywhere, LATENT's coordinate planted on a few rows."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(N_ROWS, D_IN, generator=g)  # noise in [0, 0.1): positive, far below the planted values
    for row, value in {**POSITIVE, **NEGATIVE}.items():
        x[row, LATENT] = value
    return x


def token_layout():
    """Token rows and the (row, position) of each activation row, laid out like an ActivationStore."""
    n_seq = N_ROWS // (SEQ_LEN - 1)
    tokens = torch.arange(n_seq * SEQ_LEN).view(n_seq, SEQ_LEN) + 100  # every token id distinct
    rows = torch.arange(N_ROWS)
    return tokens, (rows // (SEQ_LEN - 1), rows % (SEQ_LEN - 1) + 1)


def fake_model(d_model: int = 64, d_vocab: int = 100, norm: str = "RMSPre"):
    g = torch.Generator().manual_seed(1)
    return SimpleNamespace(cfg=SimpleNamespace(d_model=d_model, normalization_type=norm),
                           W_U=torch.randn(d_model, d_vocab, generator=g), tokenizer=WordTokenizer(), ln_final=None)


# ----------------------------------------------------------------------------------------------------------------
# Top activations and sign statistics


@pytest.mark.parametrize("batch_size", [7, 4096])  # several batches must merge to the same answer as one
def test_top_activations_return_planted_rows_in_order(batch_size):
    sae, x = identity_sae(), planted_acts()
    values, rows = features.top_activations(sae, x, LATENT, sign=1, n=3, batch_size=batch_size)
    assert rows.tolist() == [17, 42, 5]
    assert values.tolist() == [5.0, 4.0, 3.0]
    values, rows = features.top_activations(sae, x, LATENT, sign=-1, n=5, batch_size=batch_size)
    assert rows.tolist() == [7, 30]  # only two negative firings exist: no padding rows come back
    assert values.tolist() == [-6.0, -2.0]


@pytest.mark.parametrize("batch_size", [7, 4096])
def test_scan_matches_a_direct_computation(batch_size):
    sae, x = identity_sae(), planted_acts()
    scan = features.scan_latents(sae, x, top_n=3, batch_size=batch_size, progress=False)
    codes = sae.encode(x).detach()
    assert torch.equal(scan.n_positive, (codes > 0).sum(0))
    assert torch.equal(scan.n_negative, (codes < 0).sum(0))
    assert scan.n_negative[LATENT] == 2 and scan.n_negative.sum() == 2
    torch.testing.assert_close(scan.sum_negative, codes.clamp_max(0).sum(0).double())
    values, rows = scan.top(LATENT, 1)
    assert rows.tolist() == [17, 42, 5] and values.tolist() == [5.0, 4.0, 3.0]
    values, rows = scan.top(LATENT, -1)
    assert rows.tolist() == [7, 30] and values.tolist() == [-6.0, -2.0]
    for latent in range(D_SAE):  # every latent's buffer holds its largest codes (0 where fewer fired)
        torch.testing.assert_close(scan.top_positive[latent], codes[:, latent].clamp_min(0).topk(3).values)
        most_negative = codes[:, latent].clamp_max(0).topk(3, largest=False).values
        torch.testing.assert_close(scan.top_negative[latent], most_negative)


def test_sign_stats_counts_and_both_signs():
    sae, x = identity_sae(), planted_acts()
    stats = features.latent_sign_stats(sae, x, progress=False)
    codes = sae.encode(x).detach()
    assert torch.equal(stats.n_positive, (codes > 0).sum(0)) and torch.equal(stats.n_negative, (codes < 0).sum(0))
    assert stats.n_tokens == N_ROWS
    share = stats.share_negative
    assert share[LATENT].item() == pytest.approx(2 / int((codes[:, LATENT] != 0).sum()))
    assert torch.isnan(share[stats.n_firings == 0]).all()
    # LATENT has 2 negative firings: "both signs" with a low bar, not with min_count above 2.
    assert stats.both_signs(min_share=0.0, min_count=2)[LATENT]
    assert not stats.both_signs(min_share=0.0, min_count=3)[LATENT]
    assert stats.both_signs(min_share=0.0, min_count=1).sum() == 1
    topk_stats = features.latent_sign_stats(identity_sae("topk"), x, progress=False)
    assert topk_stats.n_negative.sum() == 0 and not topk_stats.both_signs(0.0, 1).any()


def test_label_counts_per_sign():
    sae, x = identity_sae(), planted_acts()
    labels = torch.arange(N_ROWS) % 3
    labels[7] = -1  # unlabelled row: counted nowhere
    scan = features.scan_latents(sae, x, top_n=0, labels=labels, n_labels=3, progress=False)
    codes = sae.encode(x).detach()
    for c in range(3):
        assert torch.equal(scan.positive_labels[:, c], ((codes > 0) & (labels == c)[:, None]).sum(0))
        assert torch.equal(scan.negative_labels[:, c], ((codes < 0) & (labels == c)[:, None]).sum(0))
    assert scan.negative_labels[LATENT].tolist() == [1, 0, 0]  # row 30 (label 0); row 7 is unlabelled
    with pytest.raises(ValueError, match="labels must be"):
        features.scan_latents(sae, x, labels=labels[:-1], progress=False)


def test_bad_inputs_are_clear_errors():
    sae, x = identity_sae(), planted_acts()
    with pytest.raises(ValueError, match="d_in"):
        features.latent_sign_stats(sae, x[:, :4], progress=False)
    with pytest.raises(ValueError, match="sign"):
        features.top_activations(sae, x, LATENT, sign=0)
    with pytest.raises(ValueError, match="latent"):
        features.top_activations(sae, x, D_SAE)
    tokens, positions = token_layout()
    with pytest.raises(ValueError, match="tokenizer"):
        features.top_activating_contexts(sae, x, tokens, positions, LATENT, tokenizer=None)


# ----------------------------------------------------------------------------------------------------------------
# Contexts as text


def test_top_activating_contexts_mark_the_firing_token():
    sae, x = identity_sae(), planted_acts()
    tokens, positions = token_layout()
    out = features.top_activating_contexts(sae, x, tokens, positions, LATENT, sign=1, n=3, window=2,
                                           tokenizer=WordTokenizer(), after=1)
    assert [value for _, value in out] == [5.0, 4.0, 3.0]
    seq, pos = 17 // (SEQ_LEN - 1), 17 % (SEQ_LEN - 1) + 1  # row 17 -> token row 4, position 2
    t = tokens[seq].tolist()
    assert out[0][0] == f" t{t[pos - 2]} t{t[pos - 1]} «t{t[pos]}» t{t[pos + 1]}"  # the space stays outside «»
    negative = features.top_activating_contexts(sae, x, tokens, positions, LATENT, sign=-1, n=3,
                                                tokenizer=WordTokenizer())
    assert [value for _, value in negative] == [-6.0, -2.0]
    assert f" «t{int(tokens[7 // 4, 7 % 4 + 1])}»" in negative[0][0]


def test_contexts_from_an_activation_store(tmp_path):
    x = planted_acts()
    tokens, _ = token_layout()
    folder = write_store(tmp_path, x.numpy(), tokens)
    store = ActivationStore(folder, 4, N_ROWS)  # a slice: rows 4.. of the cache; planted rows shift by 4
    out = features.top_activating_contexts(identity_sae(), store, None, None, LATENT, n=1, tokenizer=WordTokenizer())
    row = 17
    assert out[0][1] == 5.0 and f"«t{int(tokens[row // 4, row % 4 + 1])}»" in out[0][0]


def write_store(folder, acts: np.ndarray, tokens: torch.Tensor, corpus: str = "test", seed: int = 0):
    """A finished activation cache on disk, as activations.get_activations writes it."""
    np.save(folder / "activations.npy", acts.astype(np.float32))
    np.save(folder / "tokens.npy", tokens.numpy().astype(np.int32))
    manifest = {"complete": True, "d_model": acts.shape[1], "storage_dtype": "float32", "n_rows": acts.shape[0],
                "n_done": acts.shape[0], "seq_len": tokens.shape[1], "corpus": corpus, "seed": seed,
                "tokens_sha256": None, "model": "test", "hook": "test"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Logit lens


def test_logit_lens_finds_a_planted_unembedding_column():
    model = fake_model()
    lens = features.logit_lens(model, model.W_U[:, 7], n=5)
    assert lens.positive[0][0] == " t7"
    assert len(lens.positive) == len(lens.negative) == 5
    assert lens.positive[0][1] == pytest.approx(model.W_U[:, 7].norm().item(), rel=1e-5)  # unit d: |u|²/|u| = |u|
    lens = features.logit_lens(model, -model.W_U[:, 7], n=5)
    assert lens.negative[0][0] == " t7"  # −(−u₇) = u₇ promotes token 7
    scores = [s for _, s in lens.positive]
    assert scores == sorted(scores, reverse=True)


def test_logit_lens_through_the_final_norm():
    ln = fake_model(norm="LNPre")
    shifted = ln.W_U[:, 7] + 3.0  # LayerNorm centres its input: a constant shift of d changes nothing
    a = features.logit_lens(ln, shifted, n=3)
    b = features.logit_lens(ln, ln.W_U[:, 7] - ln.W_U[:, 7].mean(), n=3)
    for pole_a, pole_b in zip(a, b):
        assert [t for t, _ in pole_a] == [t for t, _ in pole_b]
        assert [s for _, s in pole_a] == pytest.approx([s for _, s in pole_b], rel=1e-5)
    rms = fake_model(norm="RMS")
    gain = torch.zeros(64)
    gain[:2] = 1.0  # an unfolded RMSNorm gain: only the first two coordinates reach W_U
    rms.ln_final = SimpleNamespace(w=gain)
    d = torch.zeros(64)
    d[5] = 1.0
    assert all(score == 0 for _, score in features.logit_lens(rms, d, n=3).positive)
    with pytest.raises(ValueError, match="d_model"):
        features.lens_directions(rms, torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------------------------
# Antipodal decoder rows


def test_antipodal_pairs_and_most_negative_cosine():
    g = torch.Generator().manual_seed(0)
    W = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:10]  # 10 orthonormal rows: cosines 0
    W[3] = -2.0 * W[0] + 0.01 * W[5]  # nearly antipodal to row 0 (and another norm)
    pairs = features.decoder_antipodal_pairs(W)
    assert [(i, j) for i, j, _ in pairs] == [(0, 3)] and pairs[0][2] < -0.99
    cos, partner = features.most_negative_cosine(W, block_size=4)
    assert partner[0] == 3 and partner[3] == 0
    assert cos[0] == pytest.approx(pairs[0][2], abs=1e-5)
    others = [i for i in range(10) if i not in (0, 3, 5)]
    assert cos[others].abs().max() < 1e-5 and (partner != torch.arange(10)).all()


# ----------------------------------------------------------------------------------------------------------------
# Word classes and the pole signature


@pytest.mark.parametrize("tag, name", [
    ("nn", "noun"), ("nns", "plural noun"), ("nns$", "plural noun"), ("nn$-tl", "noun"), ("np-hl", "proper noun"),
    ("vbd", "verb (past)"), ("vbz", "verb (3sg present)"), ("vb", "verb (base)"), ("vbn", "verb (participle)"),
    ("pps+bez", "pronoun"), ("md*", "auxiliary"), ("bedz", "auxiliary"), ("at", "determiner"), ("cd", "number"),
    ("in", "preposition"), ("to", "preposition"), ("cc", "conjunction"), ("wdt", "wh-word"), (".", "punctuation"),
    ("``", "punctuation"), ("*", "adverb"), ("fw-nn", "other"), ("uh", "other"), ("jjr", "adjective"),
])
def test_word_class(tag, name):
    assert features.word_class(tag) == name


def test_pole_signature():
    C = len(features.WORD_CLASSES)
    noun, plural, prep = (features.WORD_CLASSES.index(c) for c in ("noun", "plural noun", "preposition"))
    a, b = torch.zeros(4, C, dtype=torch.long), torch.zeros(4, C, dtype=torch.long)
    a[0, noun], b[0, plural] = 30, 30  # a grammatical axis
    a[1, prep], b[1, noun] = 30, 30  # distinct, not an axis
    a[2, noun], b[2, noun] = 30, 30  # same class
    a[3, noun], a[3, prep], b[3, plural] = 10, 20, 5  # pole b too small, pole a impure at purity 0.7
    sig = features.pole_signature(a, b, min_purity=0.7, min_count=20)
    assert sig.distinct.tolist() == [True, True, False, False]
    assert sig.axis.tolist() == [True, False, False, False]
    assert sig.same.tolist() == [False, False, True, False]
    assert sig.counts() == {"distinct": 2, "same": 1, "axis": 1}
    assert sig.purity_a[3].item() == pytest.approx(2 / 3) and sig.n_b[3] == 5
    chance = features.chance_signature(a, b, n_shuffles=5, seed=0, min_purity=0.7)
    assert chance == features.chance_signature(a, b, n_shuffles=5, seed=0, min_purity=0.7)  # deterministic
    assert 0 <= chance["distinct"] <= 3 and chance["same"] + chance["distinct"] <= 3


def test_activation_tags_follow_brown(tmp_path, model):
    from absae_lib.data import brown_texts, token_sequences

    tokenizer = model.tokenizer
    tokens = token_sequences(tokenizer, brown_texts(unit="doc", seed=0), seq_len=16, max_tokens=40 * 16)
    n_rows = 40 * 15
    folder = write_store(tmp_path, np.zeros((n_rows, 2)), tokens, corpus="brown", seed=0)
    store = ActivationStore(folder, 100, n_rows)
    tags = features.activation_tags(store, tokenizer, progress=False)
    assert tags.shape == (n_rows - 100,)
    assert (tags >= 0).float().mean() > 0.9  # nearly every token starts inside a Brown word
    seqs, pos = store.positions()
    words = [tokenizer.decode([int(tokens[s, p])]) for s, p in zip(seqs, pos)]
    classes = [features.WORD_CLASSES[t] if t >= 0 else None for t in tags.tolist()]
    the = [c for w, c in zip(words, classes) if w.strip().lower() == "the"]
    commas = [c for w, c in zip(words, classes) if w == ","]
    assert the and set(the) == {"determiner"}
    assert commas and set(commas) == {"punctuation"}
    # Tokens that are not the ones the cache was built from are refused.
    np.save(folder / "tokens.npy", (tokens.numpy() + 1).astype(np.int32))
    with pytest.raises(ValueError, match="does not reproduce"):
        features.activation_tags(ActivationStore(folder), tokenizer, progress=False)
    write_store(tmp_path, np.zeros((n_rows, 2)), tokens, corpus="hub:pile", seed=0)
    with pytest.raises(ValueError, match="Brown"):
        features.activation_tags(ActivationStore(folder), tokenizer, progress=False)


def test_word_class_rows_of_a_corpus_without_tags_are_brown_rows(tmp_path, monkeypatch, model):
    # The Colab rehearsal found chapter 5's word-class test all zeros on the gpu profile's Hub corpus (no tags, so
    # every token was "no class"): such a corpus now gets Brown rows harvested for the test, with their tags.
    from absae_lib import book, data, pipeline

    brown = data.fetch_brown()  # the real cache's copy, before the cache moves to tmp_path
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "brown").symlink_to(brown)
    monkeypatch.setattr(pipeline, "model", lambda s: model)
    s = book.settings("smoke", layer=1, n_eval_tokens=1024, corpus="hub:NeelNanda/pile-10k")
    tagged, tags = pipeline.word_class_rows(s, held_out=None)  # the held-out rows of a Hub corpus are not read
    assert tagged.manifest["corpus"] == "brown" and tagged.manifest["hook"] == s.hook_name
    assert len(tagged) == s.n_eval_tokens and tags.shape == (len(tagged),)
    assert (tags >= 0).float().mean() > 0.9
    # A Brown corpus: its own held-out rows, the very store passed in.
    tokens = data.token_sequences(model.tokenizer, data.brown_texts(unit="doc", seed=0), seq_len=16,
                                  max_tokens=40 * 16)
    folder = tmp_path / "brown-store"
    folder.mkdir()
    held_out = ActivationStore(write_store(folder, np.zeros((40 * 15, 2)), tokens, corpus="brown", seed=0), 100)
    same, same_tags = pipeline.word_class_rows(book.settings("smoke"), held_out)
    assert same is held_out and same_tags.shape == (len(held_out),) and (same_tags >= 0).float().mean() > 0.9


# ----------------------------------------------------------------------------------------------------------------
# Widgets


def test_card_table_and_explorer_build():
    sae, x = identity_sae(), planted_acts()
    tokens, positions = token_layout()
    model = fake_model(d_model=D_IN, d_vocab=20)
    scan = features.scan_latents(sae, x, top_n=4, progress=False)
    frame = widgets.contexts_frame(scan, LATENT, tokens, positions, WordTokenizer(), n=3, window=1)
    assert list(frame.columns) == ["+ context", "+ code", "− context", "− code"]
    assert frame["+ code"].tolist() == [5.0, 4.0, 3.0] and frame["− code"].tolist()[:2] == [-6.0, -2.0]
    assert frame["− context"].iloc[2] == ""  # only two negative firings
    card = widgets.latent_card_html(LATENT, scan, tokens, positions, WordTokenizer(), model=model, sae=sae)
    assert "Latent 3" in card and "+5.00" in card and "-6.00" in card and "logit lens" in card
    # With lens_ids the lens ranks only those tokens: the card lists no other token.
    allowed = torch.tensor([3, 11])
    restricted = widgets.latent_card_html(LATENT, scan, tokens, positions, WordTokenizer(), model=model, sae=sae,
                                          lens_ids=allowed, lens_n=5)
    lens_part = restricted.split("whole words it promotes")[1]
    assert "t3" in lens_part and "t11" in lens_part and " t4<" not in lens_part and ">t4<" not in lens_part
    only_positive = widgets.latent_card_html(LATENT, scan, tokens, positions, WordTokenizer(), sign=1)
    assert "+5.00" in only_positive and "-6.00" not in only_positive
    ui = widgets.latent_explorer(sae, model, x, tokens, positions, scan=scan, latent=LATENT)
    (controls, sign, card_widget) = ui.children
    box, slider = controls.children
    assert "+5.00" in card_widget.value
    box.value = 0  # a new latent: the slider follows and the card is redrawn
    assert slider.value == 0 and "Latent 0" in card_widget.value
    sign.value = -1
    assert "code &gt; 0" not in card_widget.value and "code &lt; 0" in card_widget.value
    built = widgets.latent_explorer(sae, model, x, tokens, positions)  # scans by itself
    assert "Latent 0" in built.children[2].value
    with pytest.raises(ValueError, match="latent"):
        widgets.latent_explorer(sae, model, x, tokens, positions, scan=scan, latent=D_SAE)

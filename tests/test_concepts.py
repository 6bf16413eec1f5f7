"""Concept datasets (labels checked against their sources), splits, caching, and activations at label tokens."""


import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from absae_lib import concepts
from absae_lib.concepts import ConceptDataset, activations_at, label_positions
from absae_lib.data import tagged_sentences

N = 40  # examples per class: enough to check the construction, fast to build


@pytest.fixture(scope="module")
def datasets():
    return {
        "sentiment": concepts.sentiment_dataset(N, seed=1, use_cache=False),
        "number": concepts.number_dataset(N, seed=1, use_cache=False),
        "tense": concepts.tense_dataset(N, seed=1, use_cache=False),
        "gender": concepts.gender_dataset(use_cache=False),
        "genre": concepts.genre_dataset(N, seed=1, use_cache=False),
    }


def test_classes_balanced_and_labels_valid(datasets):
    for name, ds in datasets.items():
        counts = ds.class_counts()
        assert len(counts) == 2 and counts[0] == counts[1] > 0, name
        assert len(ds.texts) == len(ds.labels) == len(ds.meta)
        assert all(t.strip() for t in ds.texts)
        assert len(set(ds.texts)) == len(ds.texts), f"{name} has duplicate texts"
    assert datasets["sentiment"].class_counts() == [N, N]


def test_sentiment_labels_agree_with_vader(datasets):
    analyzer = SentimentIntensityAnalyzer()
    ds = datasets["sentiment"]
    for text, label, meta in list(zip(ds.texts, ds.labels.tolist(), ds.meta))[:20]:
        score = analyzer.polarity_scores(text)["compound"]
        assert score == pytest.approx(meta["compound"])
        assert score >= 0.5 if label == 1 else score <= -0.5


@pytest.mark.parametrize("name, tags", [("number", ("nn", "nns")), ("tense", ("vbz", "vbd"))])
def test_word_labels_agree_with_brown_tags(datasets, name, tags):
    ds = datasets[name]
    assert ds.positions is None  # the labelled word is the last word of the prefix
    by_file: dict[str, list] = {}
    for text, label, meta in list(zip(ds.texts, ds.labels.tolist(), ds.meta))[:12]:
        assert meta["tag"] == tags[label]
        assert text.endswith(meta["word"])
        file_id = meta["file_id"]
        if file_id not in by_file:
            by_file[file_id] = [s for s in tagged_sentences(file_id[1]) if s.file_id == file_id]
        # The prefix is a real Brown sentence cut right after a word carrying that tag.
        matches = [s for s in by_file[file_id] if len(s.tokens) > meta["word_index"]
                   and s.text[: s.tokens[meta["word_index"]][1]] == text]
        assert matches and all(s.tokens[meta["word_index"]][2:] == (meta["word"], meta["tag"]) for s in matches)
    # Groups are the words: no word in both classes' groups by accident, and the split keeps words apart.
    train, test = ds.split(0.25, seed=0)
    assert not set(train.groups) & set(test.groups)


def test_gender_pairs_differ_only_in_the_word(datasets):
    ds = datasets["gender"]
    assert len(ds) > 400
    for i in range(0, len(ds), 2):
        male, female = ds.texts[i], ds.texts[i + 1]
        assert ds.labels[i] == 0 and ds.labels[i + 1] == 1
        m_word, f_word = ds.meta[i]["word"], ds.meta[i + 1]["word"]
        assert male.endswith(m_word) and female.endswith(f_word)
        assert male[: -len(m_word)] == female[: -len(f_word)]
        assert ds.groups[i] == ds.groups[i + 1] == f"{m_word}/{f_word}"


def test_genre_labels_are_brown_categories(datasets):
    ds = datasets["genre"]
    for label, meta in zip(ds.labels.tolist(), ds.meta):
        assert meta["file_id"][1] == ("a", "k")[label]
    assert ds.class_names == ("press: reportage", "fiction: general")
    assert len(set(ds.groups)) > 20  # snippets spread over many documents
    with pytest.raises(ValueError, match="category"):
        concepts.genre_dataset(10, cat_a="a", cat_b="a", use_cache=False)


def test_split_is_stratified_deterministic_and_grouped(datasets):
    for name, ds in datasets.items():
        train, test = ds.split(0.25, seed=3)
        again_train, again_test = ds.split(0.25, seed=3)
        assert train.texts == again_train.texts and test.texts == again_test.texts
        assert sorted(train.texts + test.texts) == sorted(ds.texts)
        assert 0.15 < len(test) / len(ds) < 0.35, name
        assert min(test.class_counts()) > 0 and min(train.class_counts()) > 0
        if ds.groups is not None:
            assert not set(train.groups) & set(test.groups), name
    plain = datasets["sentiment"]
    train, test = plain.split(0.25, seed=0)
    assert test.class_counts() == [10, 10]  # ungrouped: exactly stratified
    assert plain.split(0.25, seed=1)[1].texts != test.texts


def test_dataset_validation_and_json_cache(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="one label per text"):
        ConceptDataset("x", ["a", "b"], torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        ConceptDataset("x", ["a", "b"], torch.tensor([0, 2]))
    monkeypatch.setattr(concepts, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    built = concepts.gender_dataset()
    files = list((tmp_path / "concepts").glob("gender__*.json"))
    assert len(files) == 1
    loaded = concepts.gender_dataset()  # read back from the file
    assert loaded.texts == built.texts and torch.equal(loaded.labels, built.labels)
    assert loaded.groups == built.groups and loaded.class_names == built.class_names


def test_label_positions():
    ids = [[5, 6, 7], [8, 9]]
    assert label_positions(ids, None) == [2, 1]
    assert label_positions(ids, [1, -1]) == [1, 1]
    with pytest.raises(ValueError, match="attention sink"):
        label_positions(ids, [0, 1])
    with pytest.raises(ValueError, match="outside"):
        label_positions(ids, [3, 1])


def test_activations_at_matches_one_text_at_a_time(tiny_llama):
    model = tiny_llama
    hook = "blocks.0.hook_resid_post"
    texts = ["The old man walked", "A cat", "Several dogs barked loudly at the mailman today", "We met the queen"]
    ds = ConceptDataset("t", texts, torch.tensor([0, 1, 0, 1]), positions=[-1, 1, 3, -2])
    # fp32: the default compute dtype is bf16 on bf16-capable CPUs, and this test checks batching, not dtype
    acts = activations_at(model, ds, hook, batch_size=3, compute_dtype=torch.float32, progress=False)  # 2 batches
    assert acts.shape == (4, 32) and acts.dtype == torch.float32
    for i, text in enumerate(texts):
        tokens = model.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        pos = label_positions([tokens[0].tolist()], [ds.positions[i]])[0]
        torch.testing.assert_close(acts[i], cache[hook][0, pos], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layer 7"):
        activations_at(model, ds, "blocks.7.hook_resid_post", progress=False)


def test_prefix_gives_the_same_activation_as_the_full_sentence(model):
    """Real model: the activation at the last token of a gender prefix equals that token's inside the full
    template sentence (a causal model cannot see the rest), so prefix datasets lose nothing."""
    hook = "blocks.3.hook_resid_post"
    ds = concepts.gender_dataset(use_cache=False).subset([0, 1, 12, 13])
    acts = activations_at(model, ds, hook, batch_size=4, compute_dtype=torch.float32, progress=False)
    for i in range(len(ds)):
        full = ds.meta[i]["template"].format(ds.meta[i]["word"])
        prefix_ids = model.tokenizer(ds.texts[i], add_special_tokens=False)["input_ids"]
        full_ids = model.tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert full_ids[0, : len(prefix_ids)].tolist() == prefix_ids
        _, cache = model.run_with_cache(full_ids, names_filter=hook, stop_at_layer=4)
        torch.testing.assert_close(acts[i], cache[hook][0, len(prefix_ids) - 1], rtol=1e-4, atol=1e-4)


def test_build_dataset_by_name():
    ds = concepts.build_dataset("number", 8, seed=1, use_cache=False)
    assert ds.name == "number" and ds.class_counts() == [8, 8]
    assert concepts.build_dataset("gender", 8, use_cache=False).texts == concepts.gender_dataset(use_cache=False).texts
    with pytest.raises(ValueError, match="unknown concept dataset"):
        concepts.build_dataset("colour")

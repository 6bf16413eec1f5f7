"""A measurable "two meanings" test from part-of-speech tags: do a latent's two signs fire on different words?

    word_class              the coarse class (noun, plural noun, verb (past), ...) of a Brown tag
    activation_tags         the word class of the token behind every activation row of a Brown cache
    pole_signature          do the two poles fire on different word classes?
    chance_signature        the same test with the poles paired at random (its chance level)

Shapes: ``n`` activation rows, ``m`` latents (or pairs), ``C`` word classes.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib.activations import ActivationStore

# ----------------------------------------------------------------------------------------------------------------
# Word classes: the Brown tag behind each activation row

# Coarse classes of the Brown tag set: fine enough to keep the grammatical axes (noun ↔ plural noun, past ↔ present
# verb), coarse enough that every class has thousands of tokens.
WORD_CLASSES = (
    "noun", "plural noun", "proper noun", "adjective", "adverb", "verb (base)", "verb (past)", "verb (3sg present)",
    "verb (participle)", "verb (-ing)", "auxiliary", "pronoun", "determiner", "number", "preposition", "conjunction",
    "wh-word", "punctuation", "other",
)
# Pairs of classes that are two poles of one grammatical axis.
GRAMMATICAL_AXES = (("noun", "plural noun"), ("verb (past)", "verb (3sg present)"), ("verb (past)", "verb (base)"))

_PUNCTUATION = {".", ",", ":", "(", ")", "``", "''", "--", "'"}
_PREFIX_CLASSES = (  # first matching prefix wins, so longer prefixes come first
    ("nns", "plural noun"), ("nps", "proper noun"), ("np", "proper noun"), ("nn", "noun"), ("nr", "noun"),
    ("jj", "adjective"), ("rb", "adverb"), ("ql", "adverb"), ("rp", "adverb"), ("rn", "adverb"), ("*", "adverb"),
    ("vbd", "verb (past)"), ("vbz", "verb (3sg present)"), ("vbn", "verb (participle)"), ("vbg", "verb (-ing)"),
    ("vb", "verb (base)"), ("be", "auxiliary"), ("hv", "auxiliary"), ("do", "auxiliary"), ("md", "auxiliary"),
    ("pp", "pronoun"), ("pn", "pronoun"), ("ex", "pronoun"), ("w", "wh-word"),
    ("at", "determiner"), ("dt", "determiner"), ("ap", "determiner"), ("ab", "determiner"),
    ("cd", "number"), ("od", "number"), ("in", "preposition"), ("to", "preposition"), ("cc", "conjunction"),
    ("cs", "conjunction"),
)


def word_class(tag: str) -> str:
    """The coarse class (one of WORD_CLASSES) of a Brown tag: "nns" -> "plural noun", "vbd-tl" -> "verb (past)".

    Title/headline/cited suffixes are dropped, a compound ("pps+bez": he's) counts as its first part, a possessive
    ("nn$") as its noun and a negation ("md*") as its word; foreign words ("fw-nn") are "other".
    """
    from absae_lib.data import simple_tag

    t = simple_tag(tag.lower())
    if t.startswith("fw-"):
        return "other"
    t = t.split("+")[0]
    if t in _PUNCTUATION:
        return "punctuation"
    for prefix, name in _PREFIX_CLASSES:
        if t.startswith(prefix):
            return name
    return "other"


def _doc_words(doc) -> tuple[str, list[tuple[int, int, str]]]:
    """A Brown document as the text the corpus gives the model, and each word's (start, end, tag) in it."""
    from absae_lib import data

    pieces, words, offset = [], [], 0
    for paragraph in doc.paragraphs:
        # data.render_words is what paragraph_text uses; it also returns every word's span, which we need here.
        text, spans = data.render_words([[w for w, _ in s] for s in paragraph], [data.is_headline(s) for s in paragraph])
        for sentence, sentence_spans in zip(paragraph, spans):
            for (_, tag), span in zip(sentence, sentence_spans):
                if span is not None:
                    words.append((span[0] + offset, span[1] + offset, tag))
        pieces.append(text)
        offset += len(text) + 2  # documents join their paragraphs with "\n\n"
    return "\n\n".join(pieces), words


def activation_tags(store: ActivationStore, tokenizer, progress: bool = True) -> Tensor:
    """The word class (index into WORD_CLASSES, −1 for none) of the token behind each row of ``store``: [len(store)].

    Rebuilds the cache's token stream (Brown documents in the cache's shuffled order, each followed by EOS) with
    character offsets, tags every token with the Brown word it starts in (``data.token_word_index``), and checks
    the result against the cache's own ``tokens.npy`` before using it.  EOS and pure-space tokens get −1.
    ``tokenizer`` must be a fast Hugging Face tokenizer (offsets), the one that built the cache (``model.tokenizer``).
    """
    from absae_lib import data

    manifest = store.manifest
    corpus = manifest["corpus"]
    if not (corpus == "brown" or corpus.startswith("brown:")) or manifest.get("tokens_sha256"):
        raise ValueError(f"word classes come from Brown's tags; this cache holds corpus {corpus!r}, which has none")
    cached = store.tokens()  # [n_seq, seq_len]
    n_seq, seq_len = cached.shape
    categories = corpus.split(":", 1)[1] if ":" in corpus else None
    docs = data.load_brown(categories)
    random.Random(manifest["seed"]).shuffle(docs)  # the order data.brown_texts(..., seed=seed) gives the cache
    class_of = {name: i for i, name in enumerate(WORD_CLASSES)}
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    tags: list[int] = []
    bar = tqdm(total=n_seq * seq_len, desc="tag tokens", unit="tok", unit_scale=True, disable=not progress, leave=False)
    for doc in docs:
        if len(ids) >= n_seq * seq_len:
            break
        text, words = _doc_words(doc)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        word_of = data.token_word_index(encoded["offset_mapping"], words)
        ids.extend(encoded["input_ids"] + [eos])
        tags.extend([class_of[word_class(words[j][2])] if j >= 0 else -1 for j in word_of] + [-1])
        bar.update(len(encoded["input_ids"]) + 1)
    bar.close()
    if len(ids) < n_seq * seq_len or not torch.equal(torch.tensor(ids[:n_seq * seq_len]).view(n_seq, seq_len), cached):
        raise ValueError(
            f"re-tokenising Brown does not reproduce the token rows of {store.folder} (another tokenizer, corpus "
            "version or renderer?): pass the model.tokenizer that built the cache, or harvest it again"
        )
    tag_rows = torch.tensor(tags[:n_seq * seq_len]).view(n_seq, seq_len)
    seqs, pos = store.positions()
    return tag_rows[seqs, pos]


# ----------------------------------------------------------------------------------------------------------------
# A measurable "two meanings" test


class PoleSignature(NamedTuple):
    """Per latent (or pair): the dominant word class of each pole and how pure it is.  All tensors [m]."""

    class_a: Tensor  # int64: pole a's most frequent class (index into the columns of the counts)
    class_b: Tensor  # int64: pole b's most frequent class
    purity_a: Tensor  # float64: share of pole a's labelled firings in class_a
    purity_b: Tensor
    n_a: Tensor  # int64: labelled firings of pole a
    n_b: Tensor
    distinct: Tensor  # bool: both poles pure, with different classes ("the two signs fire on different words")
    same: Tensor  # bool: both poles pure, with the same class
    axis: Tensor  # bool: distinct, and the two classes are the poles of a grammatical axis (GRAMMATICAL_AXES)

    def counts(self) -> dict[str, int]:
        """{"distinct", "same", "axis"}: how many latents (pairs) have each signature."""
        return {"distinct": int(self.distinct.sum()), "same": int(self.same.sum()), "axis": int(self.axis.sum())}


def pole_signature(counts_a: Tensor, counts_b: Tensor, min_purity: float = 0.5, min_count: int = 20) -> PoleSignature:
    """Do two poles fire on different word classes?  counts_a, counts_b [m, C]: firings per class of each pole.

    For an AbsTopK latent the poles are its positive and negative firings (``scan.positive_labels[i]``,
    ``scan.negative_labels[i]``); for a TopK pair of antipodal latents (i, j), the firings of i and of j.

    A pole is *pure* if it has at least ``min_count`` labelled firings and its most frequent class holds at least
    ``min_purity`` of them (0.5 is well above any class's base rate; nouns, the commonest, are ~15-20% of tokens).
    ``distinct``: both poles pure and their classes differ; ``same``: both pure, same class; ``axis``: distinct
    along one of GRAMMATICAL_AXES (when the columns are WORD_CLASSES).
    """
    if counts_a.shape != counts_b.shape or counts_a.dim() != 2:
        raise ValueError(f"counts must both be [m, C], got {tuple(counts_a.shape)} and {tuple(counts_b.shape)}")
    if not 0 < min_purity <= 1:
        raise ValueError(f"min_purity is a share in (0, 1], got {min_purity}")

    def pole(counts: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        total = counts.sum(1)
        top, cls = counts.max(1)
        purity = top.double() / total.double().clamp_min(1)
        return cls, purity, total, (total >= min_count) & (purity >= min_purity)

    class_a, purity_a, n_a, pure_a = pole(counts_a)
    class_b, purity_b, n_b, pure_b = pole(counts_b)
    distinct = pure_a & pure_b & (class_a != class_b)
    same = pure_a & pure_b & (class_a == class_b)
    axis = torch.zeros_like(distinct)
    if counts_a.shape[1] == len(WORD_CLASSES):
        index = {name: i for i, name in enumerate(WORD_CLASSES)}
        for u, v in GRAMMATICAL_AXES:
            u, v = index[u], index[v]
            axis |= ((class_a == u) & (class_b == v)) | ((class_a == v) & (class_b == u))
        axis &= distinct
    return PoleSignature(class_a, class_b, purity_a, purity_b, n_a, n_b, distinct, same, axis)


def chance_signature(
    counts_a: Tensor, counts_b: Tensor, n_shuffles: int = 20, seed: int = 0, **kwargs
) -> dict[str, float]:
    """What :func:`pole_signature` counts when pole b comes from a *random other* latent: the chance level.

    counts_a, counts_b [m, C].  Pole b's rows are permuted ``n_shuffles`` times; returns the mean of
    ``PoleSignature.counts()`` over the shuffles.  A real count far from it says the two poles of one latent are
    related (more often the same class, or more often a different one) beyond what any two poles would be.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be positive, got {n_shuffles}")
    generator = torch.Generator().manual_seed(seed)
    totals = {"distinct": 0.0, "same": 0.0, "axis": 0.0}
    for _ in range(n_shuffles):
        perm = torch.randperm(counts_b.shape[0], generator=generator)
        for key, value in pole_signature(counts_a, counts_b[perm], **kwargs).counts().items():
            totals[key] += value / n_shuffles
    return totals

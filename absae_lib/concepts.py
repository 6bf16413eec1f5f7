"""Labelled concept datasets from real sources (offline).  The model's activations at their label tokens are in
:mod:`absae_lib.label_activations` (``concepts.activations_at`` still reads them).

A concept is a binary axis (negative ↔ positive sentiment, singular ↔ plural, present ↔ past, male ↔ female,
news ↔ fiction). Each dataset is a list of texts, one label per text and the token that carries the label:

    builder                 source                                          label 0 / label 1          label token
    sentiment_dataset       Brown sentences scored by VADER                 negative / positive        last (the '.')
    number_dataset          Brown nouns tagged nn / nns                     singular / plural          the noun
    tense_dataset           Brown verbs tagged vbz / vbd                    present / past             the verb
    gender_dataset          gendered English word pairs in templates        male / female              the word
    genre_dataset           Brown press reportage (a) / fiction (k)         category a / category b    last

For the word-level concepts the text is the sentence *prefix* up to and including the word, so the label token is
the last one. A causal model's activation at a token depends only on the tokens before it, so this is the same
activation as inside the whole sentence, and no tokenizer is needed to build a dataset.

Datasets carry ``groups`` where examples are not independent (the same noun, the same word pair, the same Brown
document): ``split`` keeps a group on one side, so a probe is tested on words or documents it never saw.

Built datasets are cached as JSON under ``cache_dir("concepts")``, keyed by the builder and its arguments.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from absae_lib.paths import cache_dir

# Bump when a builder changes what it produces: old cache files are then ignored.
CONCEPTS_VERSION = 1

# The Brown sentences we use: long enough to carry context, short enough for quick forward passes.
MIN_WORDS, MAX_WORDS = 6, 40
# A word-level example needs this many words before the labelled word (so the label token is never position 0).
MIN_CONTEXT_WORDS = 3

# VADER's own cut-offs are ±0.05; we keep only clearly polar sentences.
VADER_POSITIVE, VADER_NEGATIVE = 0.5, -0.5


# ----------------------------------------------------------------------------------------------------------------
# The dataset


@dataclass
class ConceptDataset:
    """Texts with one label each.

    Attributes:
        name: e.g. "sentiment".
        texts: n strings, fed to the model as they are (no BOS).
        labels: LongTensor [n], class ids into ``class_names`` (1 is the "positive" side of a DiM direction).
        positions: per text, the token index that carries the label (negative counts from the end), or None for
            the last token of every text.
        class_names: one name per class id, e.g. ("negative", "positive").
        groups: per text, a group id (a word, a word pair, a document) that ``split`` keeps together; None:
            every example is its own group.
        meta: per text, a dict of provenance (Brown file, tag, VADER score, ...); None if there is none.
    """

    name: str
    texts: list[str]
    labels: Tensor
    positions: list[int] | None = None
    class_names: tuple[str, ...] = ("negative", "positive")
    groups: list[str] | None = None
    meta: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels)
        self.class_names = tuple(self.class_names)
        n = len(self.texts)
        if not all(isinstance(t, str) for t in self.texts):
            raise ValueError("texts must be a list of strings")
        if self.labels.dim() != 1 or len(self.labels) != n:
            raise ValueError(
                f"labels must be a 1-D tensor with one label per text ({n}), got {tuple(self.labels.shape)}"
            )
        if self.labels.is_floating_point() or self.labels.dtype == torch.bool:
            if not torch.equal(self.labels.float(), self.labels.float().round()):
                raise ValueError("labels must be integer class ids")
        self.labels = self.labels.long()
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in 0..{len(self.class_names) - 1} (one per class name {self.class_names}), "
                f"got {self.labels.min().item()}..{self.labels.max().item()}"
            )
        for what in ("positions", "groups", "meta"):
            value = getattr(self, what)
            if value is not None and len(value) != n:
                raise ValueError(f"{what} must have one entry per text ({n}), got {len(value)}")

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {c}" for name, c in zip(self.class_names, self.class_counts()))
        return f"ConceptDataset({self.name!r}, n={len(self)}, {counts})"

    def class_counts(self) -> list[int]:
        """Examples per class id."""
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def subset(self, indices: Sequence[int] | Tensor) -> "ConceptDataset":
        """The examples at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return ConceptDataset(
            self.name, pick(self.texts), self.labels[idx] if idx else self.labels[:0], pick(self.positions),
            self.class_names, pick(self.groups), pick(self.meta),
        )

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple["ConceptDataset", "ConceptDataset"]:
        """(train, test): deterministic, stratified by label, groups kept on one side.

        Groups are stratified by their label make-up (a group of one class, or a balanced word pair), and in each
        stratum ``round(test_fraction * n_groups)`` shuffled groups go to test (at least one when the stratum has
        two or more). Without groups every example is its own group: an ordinary stratified split.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        groups = self.groups if self.groups is not None else [str(i) for i in range(len(self))]
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            members[g].append(i)
        strata: dict[tuple, list[str]] = defaultdict(list)
        for g, idx in members.items():
            counts = Counter(self.labels[idx].tolist())
            strata[tuple(sorted(counts.items()))].append(g)
        rng = random.Random(seed)
        test_idx: list[int] = []
        for key in sorted(strata):
            names = sorted(strata[key])
            rng.shuffle(names)
            n_test = round(test_fraction * len(names))
            if len(names) >= 2:
                n_test = min(max(n_test, 1), len(names) - 1)
            for g in names[:n_test]:
                test_idx.extend(members[g])
        test_set = set(test_idx)
        train_idx = [i for i in range(len(self)) if i not in test_set]
        return self.subset(train_idx), self.subset(sorted(test_idx))

    # --- JSON ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "texts": self.texts, "labels": self.labels.tolist(), "positions": self.positions,
            "class_names": list(self.class_names), "groups": self.groups, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConceptDataset":
        return cls(d["name"], d["texts"], torch.tensor(d["labels"], dtype=torch.long), d.get("positions"),
                   tuple(d["class_names"]), d.get("groups"), d.get("meta"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)  # atomic: never a half-written cache file
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ConceptDataset":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No concept dataset at {path}")
        return cls.from_dict(json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------------------------
# Caching


def _cache_path(builder: str, args: dict[str, Any]) -> Path:
    key = json.dumps({"builder": builder, "args": args, "version": CONCEPTS_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    readable = "_".join(f"{k}{v}" for k, v in sorted(args.items()))
    return cache_dir("concepts") / f"{builder}__{readable}__{digest}.json"


def _cached(builder: str, args: dict[str, Any], build: Callable[[], ConceptDataset], use_cache: bool) -> ConceptDataset:
    if not use_cache:
        return build()
    path = _cache_path(builder, args)
    if path.is_file():
        try:
            return ConceptDataset.load(path)
        except (ValueError, KeyError):  # a corrupt file is only a cache: build again
            pass
    dataset = build()
    dataset.save(path)
    return dataset


def _check_n(n_per_class: int) -> None:
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")


def _not_enough(name: str, found: list[int], n_per_class: int, class_names: Sequence[str]) -> ValueError:
    counts = ", ".join(f"{c}: {f}" for c, f in zip(class_names, found))
    return ValueError(f"{name}: asked for {n_per_class} examples per class but Brown gives only ({counts}); "
                      f"ask for at most {min(found)}")


# ----------------------------------------------------------------------------------------------------------------
# Brown sentences


def _brown_sentences(categories: str | None = None):
    """Tagged Brown sentences worth using: not headlines, MIN_WORDS..MAX_WORDS words."""
    from absae_lib.data import tagged_sentences

    out = []
    for s in tagged_sentences(categories):
        if not MIN_WORDS <= len(s.tokens) <= MAX_WORDS:
            continue
        if all("-hl" in tag for *_, tag in s.tokens):
            continue
        out.append(s)
    return out


def _shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def sentiment_dataset(n_per_class: int = 500, seed: int = 0, use_cache: bool = True) -> ConceptDataset:
    """Brown sentences that VADER scores clearly negative (compound ≤ −0.5, label 0) or positive (≥ 0.5, label 1).

    VADER (Hutto & Gilbert 2014; PyPI ``vaderSentiment``) scores a sentence from a lexicon of ~7,500 human-rated
    words plus rules for negation, intensifiers and punctuation. Sentences are scored in a seeded random order until
    both classes are full, so a larger ``n_per_class`` extends a smaller one. The label token is the last one (the
    sentence's final punctuation). Roughly 15% of Brown sentences pass the positive cut and 6% the negative one.

    Returns:
        ConceptDataset "sentiment", 2·n_per_class texts, ``meta`` holding each sentence's file and compound score.
    """
    _check_n(n_per_class)

    def build() -> ConceptDataset:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        analyzer = SentimentIntensityAnalyzer()
        picked: list[list[tuple[str, dict]]] = [[], []]
        seen = set()
        for s in _shuffled(_brown_sentences(), seed):
            if s.text in seen:
                continue
            seen.add(s.text)
            score = analyzer.polarity_scores(s.text)["compound"]
            label = 1 if score >= VADER_POSITIVE else 0 if score <= VADER_NEGATIVE else None
            if label is not None and len(picked[label]) < n_per_class:
                picked[label].append((s.text, {"file_id": s.file_id, "compound": score}))
            if all(len(p) == n_per_class for p in picked):
                break
        if not all(len(p) == n_per_class for p in picked):
            raise _not_enough("sentiment_dataset", [len(p) for p in picked], n_per_class, ("negative", "positive"))
        return _interleave("sentiment", picked, ("negative", "positive"), groups=False)

    return _cached("sentiment", {"n": n_per_class, "seed": seed}, build, use_cache)


def _interleave(name: str, picked: list[list[tuple]], class_names: tuple[str, ...], groups: bool) -> ConceptDataset:
    """One example of each class in turn (so any prefix of the dataset is balanced)."""
    texts, labels, metas, group_ids = [], [], [], []
    for row in zip(*picked):
        for label, item in enumerate(row):
            text, meta = item[0], item[1]
            texts.append(text)
            labels.append(label)
            metas.append(meta)
            if groups:
                group_ids.append(item[2])
    return ConceptDataset(name, texts, torch.tensor(labels), None, class_names, group_ids if groups else None, metas)


def _word_dataset(
    name: str, tags: tuple[str, str], class_names: tuple[str, str], n_per_class: int, seed: int, max_per_word: int
) -> ConceptDataset:
    """Prefixes of Brown sentences ending in a word tagged ``tags[0]`` (label 0) or ``tags[1]`` (label 1).

    Only plain lower-case alphabetic words with exactly that tag (no title/headline suffix, no compound tag), at
    least MIN_CONTEXT_WORDS words into the sentence. At most one example per sentence (the class with fewer
    examples so far gets it, so the common class does not use up the sentences) and at most ``max_per_word`` per
    word, so the dataset is not a handful of frequent words. Groups are the words: a split tests unseen words.
    """
    rng = random.Random(seed)
    picked: list[list[tuple[str, dict, str]]] = [[], []]
    per_word: Counter = Counter()
    seen = set()
    for s in _shuffled(_brown_sentences(), seed):
        candidates: list[list[int]] = [[], []]
        for j, (start, end, word, tag) in enumerate(s.tokens):
            if j < MIN_CONTEXT_WORDS or tag not in tags or not (word.isalpha() and word.islower()):
                continue
            if per_word[word] >= max_per_word:
                continue
            candidates[tags.index(tag)].append(j)
        open_classes = [c for c in (0, 1) if candidates[c] and len(picked[c]) < n_per_class]
        if not open_classes:
            if all(len(p) == n_per_class for p in picked):
                break
            continue
        label = min(open_classes, key=lambda c: len(picked[c]))
        j = rng.choice(candidates[label])
        start, end, word, tag = s.tokens[j]
        text = s.text[:end]
        if text in seen:
            continue
        seen.add(text)
        per_word[word] += 1
        picked[label].append((text, {"file_id": s.file_id, "word": word, "tag": tag, "word_index": j}, word))
    if not all(len(p) == n_per_class for p in picked):
        raise _not_enough(f"{name}_dataset", [len(p) for p in picked], n_per_class, class_names)
    return _interleave(name, picked, class_names, groups=True)


def number_dataset(
    n_per_class: int = 500, seed: int = 0, max_per_word: int = 10, use_cache: bool = True
) -> ConceptDataset:
    """Singular (Brown tag ``nn``, label 0) vs plural (``nns``, label 1) common nouns in real Brown sentences.

    Text = the sentence up to and including the noun; the label token is the last one (the noun's last token).
    Groups = the noun, so ``split`` tests on nouns the probe never saw.
    """
    _check_n(n_per_class)

    def build() -> ConceptDataset:
        return _word_dataset("number", ("nn", "nns"), ("singular", "plural"), n_per_class, seed, max_per_word)

    return _cached("number", {"n": n_per_class, "seed": seed, "max_per_word": max_per_word}, build, use_cache)


def tense_dataset(
    n_per_class: int = 500, seed: int = 0, max_per_word: int = 10, use_cache: bool = True
) -> ConceptDataset:
    """Present 3rd-person (Brown ``vbz``, label 0) vs past-tense (``vbd``, label 1) verbs in real Brown sentences.

    Built like :func:`number_dataset`. (Brown tags forms of *be*, *have* and *do* separately — ``bez``, ``hvz``,
    ``doz`` — so these are lexical verbs: "says" / "said".)
    """
    _check_n(n_per_class)

    def build() -> ConceptDataset:
        return _word_dataset("tense", ("vbz", "vbd"), ("present", "past"), n_per_class, seed, max_per_word)

    return _cached("tense", {"n": n_per_class, "seed": seed, "max_per_word": max_per_word}, build, use_cache)


def genre_dataset(
    n_per_class: int = 500, cat_a: str = "a", cat_b: str = "k", sentences_per_snippet: int = 2, seed: int = 0,
    use_cache: bool = True,
) -> ConceptDataset:
    """Snippets of ``sentences_per_snippet`` consecutive sentences from Brown category ``cat_a`` (label 0) or
    ``cat_b`` (label 1); default press reportage vs general fiction. Document-level label, read at the last token.

    Snippets are drawn round-robin over the category's documents (seeded), so every document contributes about
    equally. Groups = the Brown file: ``split`` tests on documents the probe never saw.
    """
    from absae_lib.data import CATEGORY_NAMES, load_brown, paragraph_text

    _check_n(n_per_class)
    if cat_a not in CATEGORY_NAMES or cat_b not in CATEGORY_NAMES or cat_a == cat_b:
        raise ValueError(f"cat_a and cat_b must be two different Brown category letters from {sorted(CATEGORY_NAMES)}, "
                         f"got {cat_a!r}, {cat_b!r}")
    if sentences_per_snippet < 1:
        raise ValueError(f"sentences_per_snippet must be at least 1, got {sentences_per_snippet}")
    class_names = (CATEGORY_NAMES[cat_a], CATEGORY_NAMES[cat_b])

    def snippets(category: str) -> list[tuple[str, dict, str]]:
        rng = random.Random(f"{seed}-{category}")
        per_doc = []
        for doc in load_brown(category):
            sents = [s for s in doc.sentences if MIN_WORDS <= len(s) <= MAX_WORDS and not all("-hl" in t for _, t in s)]
            starts = list(range(0, len(sents) - sentences_per_snippet + 1, sentences_per_snippet))  # non-overlapping
            rng.shuffle(starts)
            per_doc.append([(paragraph_text(sents[i:i + sentences_per_snippet]), {"file_id": doc.file_id}, doc.file_id)
                            for i in starts])
        out: list[tuple[str, dict, str]] = []
        for r in range(max((len(d) for d in per_doc), default=0)):  # round-robin over documents
            out.extend(d[r] for d in per_doc if r < len(d))
        return out[:n_per_class]

    def build() -> ConceptDataset:
        picked = [snippets(cat_a), snippets(cat_b)]
        if not all(len(p) == n_per_class for p in picked):
            raise _not_enough("genre_dataset", [len(p) for p in picked], n_per_class, class_names)
        return _interleave("genre", picked, class_names, groups=True)

    args = {"n": n_per_class, "a": cat_a, "b": cat_b, "sents": sentences_per_snippet, "seed": seed}
    return _cached("genre", args, build, use_cache)


# ----------------------------------------------------------------------------------------------------------------
# Gender: word pairs of the language in template sentences

# (male, female) pairs of English nouns. Facts of the language, written here.
GENDER_NOUN_PAIRS: tuple[tuple[str, str], ...] = (
    ("man", "woman"), ("boy", "girl"), ("king", "queen"), ("prince", "princess"), ("father", "mother"),
    ("son", "daughter"), ("brother", "sister"), ("husband", "wife"), ("uncle", "aunt"), ("nephew", "niece"),
    ("grandfather", "grandmother"), ("grandson", "granddaughter"), ("stepfather", "stepmother"),
    ("godfather", "godmother"), ("dad", "mom"), ("gentleman", "lady"), ("duke", "duchess"), ("emperor", "empress"),
    ("count", "countess"), ("baron", "baroness"), ("actor", "actress"), ("waiter", "waitress"), ("host", "hostess"),
    ("steward", "stewardess"), ("monk", "nun"), ("groom", "bride"), ("widower", "widow"), ("boyfriend", "girlfriend"),
    ("fiance", "fiancee"), ("headmaster", "headmistress"), ("policeman", "policewoman"),
    ("businessman", "businesswoman"), ("chairman", "chairwoman"), ("salesman", "saleswoman"),
    ("spokesman", "spokeswoman"), ("landlord", "landlady"), ("schoolboy", "schoolgirl"), ("hero", "heroine"),
    ("god", "goddess"), ("wizard", "witch"), ("lad", "lass"), ("bachelor", "spinster"), ("stallion", "mare"),
    ("rooster", "hen"),
)

# Templates: "{}" is the word; the text ends after it (the rest of the sentence cannot reach the word's token).
GENDER_NOUN_TEMPLATES: tuple[str, ...] = (
    "Yesterday the {} walked into the room and sat down.",
    "Everyone in the village agreed that the {} had been right.",
    "Early in the morning, the {} went to the market.",
    "We met the {} at the station after the long journey.",
    "According to the letter, the {} would arrive on Sunday.",
    "Nobody had expected that the {} would speak first.",
)

# (male, female) pronouns and the templates they fit.
GENDER_PRONOUN_PAIRS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("he", "she", ("When the meeting ended, {} went home.", "Everyone knew that {} was telling the truth.",
                   "After a long day at work, {} cooked dinner.")),
    ("him", "her", ("We waited for {} at the corner.", "The children gave {} a present.",
                    "Nobody in the office had seen {} since Monday.")),
    ("himself", "herself", ("After the accident, the driver blamed {} for everything.",
                            "The old teacher taught {} to play the piano.")),
    ("his", "her", ("The doctor finished {} coffee and left.", "The painter sold {} first picture last year.")),
)


def gender_dataset(use_cache: bool = True) -> ConceptDataset:
    """Male (label 0) vs female (label 1) words: every word pair in every template that fits it.

    Text = the template up to and including the word; the label token is the last one. Each (male, female) pair
    fills the same templates, so the two classes differ only in the word. Groups = the pair ("king/queen"): a
    split tests on pairs the probe never saw.
    """

    def build() -> ConceptDataset:
        picked: list[list[tuple[str, dict, str]]] = [[], []]
        items = [(m, f, GENDER_NOUN_TEMPLATES) for m, f in GENDER_NOUN_PAIRS] + list(GENDER_PRONOUN_PAIRS)
        for male, female, templates in items:
            for template in templates:
                for label, word in enumerate((male, female)):
                    sentence = template.format(word)
                    if sentence.startswith(word):
                        sentence = sentence[0].upper() + sentence[1:]
                    prefix = sentence[: template.index("{}") + len(word)]
                    picked[label].append((prefix, {"word": word, "template": template}, f"{male}/{female}"))
        return _interleave("gender", picked, ("male", "female"), groups=True)

    n_items = len(GENDER_NOUN_PAIRS) * len(GENDER_NOUN_TEMPLATES) + sum(len(t) for *_, t in GENDER_PRONOUN_PAIRS)
    return _cached("gender", {"n": n_items}, build, use_cache)


BUILDERS: dict[str, Callable[..., ConceptDataset]] = {
    "sentiment": sentiment_dataset,
    "number": number_dataset,
    "tense": tense_dataset,
    "gender": gender_dataset,
    "genre": genre_dataset,
}

# Builders whose size is fixed by their word lists (they take no n_per_class).
FIXED_SIZE = ("gender",)


def build_dataset(name: str, n_per_class: int = 500, seed: int = 0, use_cache: bool = True) -> ConceptDataset:
    """The dataset ``name`` (a key of ``BUILDERS``) at ``n_per_class`` examples per class.

    Fixed-size datasets (gender: every word pair in every template) ignore ``n_per_class`` and ``seed``.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown concept dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    if name in FIXED_SIZE:
        return BUILDERS[name](use_cache=use_cache)
    return BUILDERS[name](n_per_class, seed=seed, use_cache=use_cache)


# The model's activations at the label tokens live in absae_lib.label_activations; imported here so that
# ``concepts.activations_at`` (what the chapters call) keeps working.
from absae_lib.label_activations import activations_at, label_positions, token_ids  # noqa: E402, F401

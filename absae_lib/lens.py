"""The logit lens of a decoder row: which tokens +d and −d push up when written straight into the unembedding.

    lens_directions     what the final norm makes of residual directions, before W_U
    logit_lens          the n tokens each sign of a direction raises most (optionally only among whole words)
    whole_word_ids      the token ids that are a whole English word with its leading space (" king", " was")
    brown_vocabulary    the word list that decides "whole word": Brown words seen at least a few times

A raw lens over SmolLM2's 49k-token vocabulary is dominated by sub-word debris ('ountains', ' jsonify', '\\x0b'):
fragments whose unembedding columns are large or odd, not what a reader can check.  Restricting the ranking to
tokens that are whole words of a real corpus keeps the lens readable; the scores are the same numbers either way.

Shapes: model width ``d_model``, vocabulary ``d_vocab``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor


class LogitLens(NamedTuple):
    positive: list[tuple[str, float]]  # tokens pushed up most by +d: (token, logit change per unit ‖d‖)
    negative: list[tuple[str, float]]  # tokens pushed up most by −d: (token, logit change per unit ‖d‖)


def lens_directions(model, directions: Tensor) -> Tensor:
    """What the final norm makes of residual directions, before W_U.  directions [m, d_model] -> [m, d_model] fp32.

    Rows are normalised to unit length (after LayerNorm's centring), so scores are comparable across latents.
    Adding ε·d to a residual x changes the logits by ε·(d' @ W_U)/σ(x), up to a small correction along x itself
    (the norm's linearisation), where d' is d after what the norm does to *every* vector:

    - RMSNorm (Llama, SmolLM2): each coordinate times the gain w.  Our models are loaded with the gains folded into
      W_U (TransformerLens ``RMSPre``/``LNPre``), so d' = d; an unfolded norm's ``ln_final.w`` is applied here.
    - LayerNorm (GPT-2): also subtract d's mean over coordinates (LayerNorm centres every input).

    1/σ(x) is positive and differs per token: it rescales the logit changes but never reorders them, so the lens's
    ranking of tokens is the same in every context.
    """
    if directions.dim() != 2 or directions.shape[1] != model.cfg.d_model:
        raise ValueError(f"directions must be [m, d_model] = [m, {model.cfg.d_model}], got {tuple(directions.shape)}")
    d = directions.detach().to(model.W_U.device, torch.float32)
    norm_type = getattr(model.cfg, "normalization_type", None)
    if norm_type in ("LN", "LNPre"):
        d = d - d.mean(dim=1, keepdim=True)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gain = getattr(getattr(model, "ln_final", None), "w", None)
    if norm_type in ("LN", "RMS") and gain is not None:  # unfolded: the gain still multiplies every coordinate
        d = d * gain.detach().float()
    return d


@torch.no_grad()
def logit_lens(model, direction: Tensor, n: int = 10, token_ids: Tensor | None = None) -> LogitLens:
    """The ``n`` tokens whose logits +direction raises most, and the ``n`` that −direction raises most.

    direction [d_model] (e.g. a decoder row ``sae.W_dec[i]``; its length does not matter, it is normalised).
    token_ids [m] (optional): rank only these tokens, e.g. :func:`whole_word_ids` (the scores do not change).

    The map is the *direct path* to the logits, ``norm(x) @ W_U + b_U``, with the final norm linearised: the scores
    are ``d' @ W_U`` with d' from :func:`lens_directions` (for our RMSNorm models, whose gains are folded into W_U,
    that is W_U applied to the unit direction itself; the norm's 1/rms is a positive per-token factor that never
    changes the ranking).  b_U is the same for ±d and drops out.  This is only the direct effect: at a middle layer
    later blocks also read d, so the lens shows what d would say if it were written straight into the unembedding.
    """
    if direction.dim() != 1:
        raise ValueError(f"direction must be 1-D [d_model], got shape {tuple(direction.shape)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    scores = lens_directions(model, direction[None])[0] @ model.W_U.float()  # [d_vocab]
    ids = torch.arange(scores.shape[0], device=scores.device)
    if token_ids is not None:
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=scores.device).flatten()
        if len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= scores.shape[0]:
            raise ValueError(f"token_ids must be a non-empty list of ids in 0 .. {scores.shape[0] - 1}")
        scores = scores[ids]
    n = min(n, len(scores))
    tokenizer = getattr(model, "tokenizer", None)

    def named(values: Tensor, order: Tensor) -> list[tuple[str, float]]:
        chosen = ids[order].tolist()
        names = [tokenizer.decode([i]) if tokenizer is not None else str(i) for i in chosen]
        return list(zip(names, values.tolist()))

    up, down = scores.topk(n), (-scores).topk(n)
    return LogitLens(positive=named(up.values, up.indices), negative=named(down.values, down.indices))


_WORD = re.compile(r"^ ([A-Za-z]+)$")


def brown_vocabulary(words: Iterable[str], min_count: int = 3) -> set[str]:
    """The lower-cased alphabetic words seen at least ``min_count`` times in ``words`` (e.g. every Brown word)."""
    counts = Counter(w.lower() for w in words if w.isalpha())
    return {w for w, c in counts.items() if c >= min_count}


def whole_word_ids(tokenizer, vocabulary: set[str], min_letters: int = 2) -> Tensor:
    """[m] ids of the tokens that are one whole word: a leading space, then letters only, a word of ``vocabulary``.

    "whole" means the token is a word a corpus uses on its own (" king", " was"), not a fragment that merely starts
    a word (" acknowled", " streng"): the fragment is not in the vocabulary.  ``vocabulary``: lower-cased words,
    e.g. :func:`brown_vocabulary` of the Brown corpus.  Words shorter than ``min_letters`` are left out.
    """
    if not vocabulary:
        raise ValueError("vocabulary is empty: pass the lower-cased words that count as whole words")
    ids = []
    for i in range(len(tokenizer)):
        match = _WORD.match(tokenizer.decode([i]))
        if match and len(match.group(1)) >= min_letters and match.group(1).lower() in vocabulary:
            ids.append(i)
    if not ids:
        raise ValueError("no token of this tokenizer is a whole word of the vocabulary (another language?)")
    return torch.tensor(ids, dtype=torch.long)

"""Looking at latents in a notebook: static HTML cards (they survive in the built book) and a live explorer.

    contexts_frame      a latent's top contexts of each sign as a DataFrame (for prose-friendly tables)
    latent_card_html    one latent as an HTML card: top contexts of +d and −d, and the logit lens of each
    show_latent         the card, ready for ``display`` in an ordinary cell
    latent_explorer     an ipywidgets UI: a latent id (box + slider), a sign toggle, the card below

Widgets only work with a live kernel: in the static book an explorer is inert, so chapters also ``display`` a few
cards in ordinary cells.  Everything reads a :class:`absae_lib.features.LatentScan` (one pass over the activations),
so moving the slider costs a dictionary lookup, not a pass over the data.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from absae_lib.features import LatentScan, Positions, context, logit_lens, scan_latents
from absae_lib.sae import SAE

# Pole colours: the same in every chapter (positive green, negative red).
POSITIVE_COLOUR, NEGATIVE_COLOUR = "#1a9850", "#d73027"


def _rows(scan: LatentScan, latent: int, sign: int, n: int) -> list[tuple[int, float]]:
    if not 0 <= latent < scan.n_positive.shape[0]:
        raise ValueError(f"latent must lie in 0 .. {scan.n_positive.shape[0] - 1}, got {latent}")
    values, rows = scan.top(latent, sign)
    return list(zip(rows[:n].tolist(), values[:n].tolist()))


def contexts_frame(
    scan: LatentScan, latent: int, tokens: Tensor, positions: Positions, tokenizer, n: int = 5, window: int = 10,
    after: int = 4,
) -> pd.DataFrame:
    """A latent's top ``n`` contexts of each sign side by side.

    Columns "+ context", "+ code", "− context", "− code" (blank where a sign fired fewer than ``n`` times).

    The firing token is marked «like this».  tokens [n_seq, seq_len] and positions (token row [n], position [n])
    map the scanned rows to text (``ActivationStore.tokens()`` / ``.positions()``).
    """
    seqs, pos = positions
    columns = {}
    for sign, mark in ((1, "+"), (-1, "−")):
        texts, codes = [], []
        for row, value in _rows(scan, latent, sign, n):
            before, token, rest = context(tokens, int(seqs[row]), int(pos[row]), tokenizer, window, after)
            texts.append(f"{before}«{token}»{rest}")
            codes.append(round(value, 2))
        texts += [""] * (n - len(texts))
        codes += [None] * (n - len(codes))
        columns[f"{mark} context"], columns[f"{mark} code"] = texts, codes
    frame = pd.DataFrame(columns)
    frame.index = pd.RangeIndex(1, n + 1, name="rank")
    return frame


def _context_html(tokens: Tensor, seq: int, pos: int, tokenizer, window: int, after: int, colour: str) -> str:
    before, token, rest = context(tokens, seq, pos, tokenizer, window, after)
    return (f"{html.escape(before)}<span style='background:{colour}33;border-bottom:2px solid {colour};"
            f"font-weight:bold'>{html.escape(token)}</span>{html.escape(rest)}")


def _lens_html(pairs: Sequence[tuple[str, float]], colour: str) -> str:
    chips = [f"<span style='border:1px solid {colour};border-radius:3px;padding:0 3px;margin:1px;"
             f"display:inline-block;font-family:monospace'>{html.escape(repr(t)[1:-1])}</span>" for t, _ in pairs]
    return " ".join(chips)


def latent_card_html(
    latent: int,
    scan: LatentScan,
    tokens: Tensor,
    positions: Positions,
    tokenizer,
    model=None,
    sae: SAE | None = None,
    sign: int = 0,
    n: int = 6,
    window: int = 12,
    after: int = 4,
    lens_n: int = 8,
    title: str | None = None,
    lens_ids: Tensor | None = None,
) -> str:
    """One latent as an HTML card: firing counts, top contexts of each sign, and (with ``model`` and ``sae``) the
    logit-lens tokens of +d and −d (d = ``sae.W_dec[latent]``).

    ``sign``: 0 shows both poles, +1 only the positive one, −1 only the negative one.
    ``lens_ids`` [m]: rank the lens over these token ids only (e.g. ``lens.whole_word_ids``; None: every token).
    """
    if sign not in (0, 1, -1):
        raise ValueError(f"sign must be 0 (both), 1 or -1, got {sign!r}")
    if not 0 <= latent < scan.n_positive.shape[0]:
        raise ValueError(f"latent must lie in 0 .. {scan.n_positive.shape[0] - 1}, got {latent}")
    seqs, pos = positions
    n_pos, n_neg = int(scan.n_positive[latent]), int(scan.n_negative[latent])
    mean_pos, mean_neg = scan.mean_positive[latent].item(), scan.mean_negative[latent].item()
    lens = (logit_lens(model, sae.W_dec[latent], lens_n, token_ids=lens_ids)
            if model is not None and sae is not None else None)
    lens_what = "whole words" if lens_ids is not None else "tokens"
    both_poles = ((1, POSITIVE_COLOUR, "+d (code > 0)"), (-1, NEGATIVE_COLOUR, "−d (code < 0)"))
    poles = [(s, c, label) for s, c, label in both_poles if sign in (0, s)]
    cells = []
    for s, colour, label in poles:
        count, mean = (n_pos, mean_pos) if s > 0 else (n_neg, mean_neg)
        head = f"<div style='color:{colour};font-weight:bold'>{html.escape(label)}: {count:,} firings"
        head += f", mean {mean:+.2f}</div>" if count else "</div>"
        lines = [f"<div style='margin:2px 0'><code style='color:{colour}'>{value:+.2f}</code> "
                 f"{_context_html(tokens, int(seqs[row]), int(pos[row]), tokenizer, window, after, colour)}</div>"
                 for row, value in _rows(scan, latent, s, n)]
        if not lines:
            lines = ["<div style='color:#777'><i>never fires with this sign on these tokens</i></div>"]
        if lens is not None:
            lines.append(f"<div style='margin-top:4px'><small>logit lens of {label.split()[0]}, "
                         f"{lens_what} it promotes:</small> "
                         f"{_lens_html(lens.positive if s > 0 else lens.negative, colour)}</div>")
        style = f"vertical-align:top;padding:4px 8px;width:{100 // len(poles)}%"
        cells.append(f"<td style='{style}'>{head}{''.join(lines)}</td>")
    heading = html.escape(title) if title else f"Latent {latent}"
    return (f"<div style='border:1px solid #bbb;border-radius:4px;padding:6px;margin:6px 0;font-size:13px'>"
            f"<div style='font-weight:bold;font-size:14px'>{heading}</div>"
            f"<table style='width:100%;border-collapse:collapse'><tr>{''.join(cells)}</tr></table></div>")


def show_latent(latent: int, scan: LatentScan, tokens: Tensor, positions: Positions, tokenizer, **kwargs):
    """:func:`latent_card_html` as an ``IPython.display.HTML`` object (renders in Jupyter and in the built book)."""
    from IPython.display import HTML

    return HTML(latent_card_html(latent, scan, tokens, positions, tokenizer, **kwargs))


def latent_explorer(
    sae: SAE,
    model,
    acts,
    tokens: Tensor,
    positions: Positions,
    *,
    scan: LatentScan | None = None,
    latent: int = 0,
    n: int = 8,
    window: int = 12,
    lens_n: int = 8,
    lens_ids: Tensor | None = None,
):
    """An ipywidgets explorer: pick a latent (number box or slider) and a sign; see its top contexts and logit lens.

    Args:
        sae: the SAE whose latents to explore.
        model: the HookedTransformer (its tokenizer writes the contexts, its W_U gives the logit lens).
        acts: activations [n_rows, d_in] (tensor or ActivationStore), scanned once unless ``scan`` is given.
        tokens, positions: ``store.tokens()`` and ``store.positions()`` for those rows.
        scan: a :func:`absae_lib.features.scan_latents` result for ``sae`` on ``acts`` (saves the pass).
        latent: the latent shown first.
        lens_ids: token ids the logit lens ranks (e.g. ``lens.whole_word_ids``); None: every token.

    Returns:
        an ``ipywidgets.VBox``; display it (it is the cell's last expression).
    """
    import ipywidgets as widgets

    d_sae = sae.cfg.d_sae
    if not 0 <= latent < d_sae:
        raise ValueError(f"latent must lie in 0 .. {d_sae - 1}, got {latent}")
    if scan is None:
        scan = scan_latents(sae, acts, top_n=n)
    elif scan.n_positive.shape[0] != d_sae:
        raise ValueError(f"scan covers {scan.n_positive.shape[0]} latents but the SAE has d_sae = {d_sae}")
    tokenizer = model.tokenizer
    box = widgets.BoundedIntText(value=latent, min=0, max=d_sae - 1, description="latent")
    slider = widgets.IntSlider(value=latent, min=0, max=d_sae - 1, continuous_update=False, readout=False,
                               layout=widgets.Layout(width="50%"))
    widgets.link((box, "value"), (slider, "value"))
    signs = [("both", 0), ("+ only", 1), ("− only", -1)] if sae.cfg.signed else [("+ (TopK codes are ≥ 0)", 1)]
    sign = widgets.ToggleButtons(options=signs, value=signs[0][1], description="sign")
    card = widgets.HTML()

    def update(_=None) -> None:
        card.value = latent_card_html(box.value, scan, tokens, positions, tokenizer, model=model, sae=sae,
                                      sign=sign.value, n=n, window=window, lens_n=lens_n, lens_ids=lens_ids)

    box.observe(update, names="value")
    sign.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([box, slider]), sign, card])

"""A latent browser that works in the static book: a data file, a little JavaScript, no kernel.

:func:`write` picks the few hundred most interesting latents of each SAE and writes, into one folder,

    latents.js   the data: ``window.ABSAE_LATENTS = {...}`` (JSON; a script, not a .json file, because a page
                 opened from disk may not ``fetch`` a file beside it, but it may load a script)
    browser.js   the page's code: pick an SAE and a latent, see both poles
    index.html   a page of its own that loads the two (the book's page, book/latent_browser.md, loads them too)

For each latent: how often it fires with each sign, its top contexts of each sign (the firing token marked), the
tokens each sign of its decoder row promotes (logit lens, with a model), and its decoder-row neighbours: the most
similar and the most opposite rows of the same SAE, and the nearest rows (by |cosine|) of every other SAE.

"Interesting": for a signed SAE (AbsTopK) half the latents are those used most with *both* signs (the larger the
rarer sign's count, the better), for an unsigned one (TopK) half are those with the most antipodal partner (the
pair that splits one axis over two latents); the rest are the most frequently firing latents.

Why not SAELens's visualiser ``sae-dashboard`` (0.8.0): it ranks a latent's activations by signed value (its top
group is ``k_largest_indices(feat_acts)``, its quantile groups span ``0 .. max``), so an AbsTopK latent's negative
pole never appears; its logit-effect tables count only ``feat_acts > 0``; and it pins ``transformer-lens<3`` and
``transformers<4.57``, which this project's model code cannot use.

Shapes: ``n`` scanned activation rows, model width ``d``, dictionary ``d_sae``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from absae_lib import atomic, plotting
from absae_lib.features import LatentScan, Positions, context, logit_lens, most_negative_cosine, scan_latents
from absae_lib.sae import SAE

DATA_FILE, SCRIPT_FILE, PAGE_FILE = "latents.js", "browser.js", "index.html"
DATA_VARIABLE = "ABSAE_LATENTS"


# ----------------------------------------------------------------------------------------------------------------
# Which latents


def select_latents(sae: SAE, scan: LatentScan, n: int) -> list[int]:
    """The ``n`` most interesting latents of ``sae`` (ids, best first; fewer if fewer ever fired).

    Half by two-pole use: for a signed SAE the count of its rarer sign, for an unsigned one how antipodal its most
    opposite decoder row is (cosine, the lower the better); the rest by how often the latent fires.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (latents per SAE), got {n!r}")
    if scan.n_positive.shape[0] != sae.cfg.d_sae:
        raise ValueError(f"the scan covers {scan.n_positive.shape[0]} latents but the SAE has d_sae = {sae.cfg.d_sae}:"
                         " pass the scan of this SAE")
    fires = scan.n_positive + scan.n_negative
    if sae.cfg.signed:
        two_pole = torch.minimum(scan.n_positive, scan.n_negative).double()
        two_pole[two_pole == 0] = -1.0
    else:
        two_pole = -most_negative_cosine(sae)[0].double()  # blocked: never the [d_sae, d_sae] matrix at once
    two_pole[fires == 0] = -float("inf")
    chosen: list[int] = []
    for score, quota in ((two_pole, n // 2), (fires.double(), n)):
        for latent in score.argsort(descending=True, stable=True).tolist():
            if len(chosen) >= quota or score[latent] <= (-1.0 if score is two_pole else 0.0):
                break
            if latent not in chosen:
                chosen.append(latent)
    return chosen


def decoder_cosines(rows: Tensor, W_dec: Tensor) -> Tensor:
    """Cosine of every row of ``rows`` [m, d] with every row of ``W_dec`` [d_sae, d]: [m, d_sae]."""
    a = rows.detach().float()
    b = W_dec.detach().float().to(a.device)
    return (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)).T


# ----------------------------------------------------------------------------------------------------------------
# One latent's record


def _round(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _pole_contexts(scan: LatentScan, latent: int, sign: int, tokens: Tensor, positions: Positions, tokenizer,
                   n: int, window: int, after: int) -> list[list]:
    """[[text before, token, text after, code], ...]: the latent's top ``n`` firings with ``sign``."""
    seqs, pos = positions
    values, rows = scan.top(latent, sign)
    out = []
    for row, value in zip(rows[:n].tolist(), values[:n].tolist()):
        before, token, rest = context(tokens, int(seqs[row]), int(pos[row]), tokenizer, window, after)
        out.append([before, token, rest, _round(value)])
    return out


def _neighbours(cos: Tensor, n: int, largest: bool, skip: int | None = None) -> list[list]:
    """[[latent, cosine], ...]: the ``n`` highest (or lowest) cosines of one row [d_sae], ``skip`` left out."""
    cos = cos.clone()
    if skip is not None:
        cos[skip] = -float("inf") if largest else float("inf")
    values, ids = cos.topk(min(n, cos.numel() - (skip is not None)), largest=largest)
    return [[int(i), _round(float(v), 2)] for v, i in zip(values, ids)]


def browser_data(
    saes: Mapping[str, SAE],
    scans: Mapping[str, LatentScan] | None,
    tokens: Tensor,
    positions: Positions,
    tokenizer,
    *,
    acts=None,
    model=None,
    n_latents: int = 150,
    n_contexts: int = 8,
    n_neighbours: int = 5,
    lens_n: int = 8,
    window: int = 12,
    after: int = 4,
) -> dict[str, Any]:
    """The browser's data for ``saes`` ({name: SAE}, e.g. {"topk": ..., "abstopk": ...}).

    ``scans`` {name: :func:`absae_lib.features.scan_latents` result with top_n ≥ ``n_contexts``} on the same rows;
    without it (None, or a name missing) each SAE is scanned once on ``acts`` [n, d].  ``tokens`` [n_seq, seq_len]
    and ``positions`` (token row [n], position [n]) map the scanned rows to text; ``tokenizer.decode`` writes it.
    With ``model`` (a HookedTransformer) each latent also carries its logit lens, both signs.
    """
    if not saes:
        raise ValueError("saes is empty: pass {name: SAE}, e.g. {'topk': topk_sae, 'abstopk': abstopk_sae}")
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise ValueError("pass tokenizer= (e.g. model.tokenizer): it turns the top contexts into text")
    d_in = {sae.cfg.d_in for sae in saes.values()}
    if len(d_in) != 1:
        raise ValueError(f"the SAEs read different widths {sorted(d_in)}: they must share one hook point")
    scans = dict(scans or {})
    for name, sae in saes.items():
        if name not in scans:
            if acts is None:
                raise ValueError(f"no scan for {name!r}: pass scans={{name: scan_latents(...)}} or acts=")
            scans[name] = scan_latents(sae, acts, top_n=n_contexts, progress=False)
        if len(positions[0]) != scans[name].n_tokens:
            raise ValueError(f"positions describe {len(positions[0])} rows but {name!r} was scanned on "
                             f"{scans[name].n_tokens}: pass the positions of the scanned rows")

    chosen = {name: select_latents(sae, scans[name], n_latents) for name, sae in saes.items()}
    out: dict[str, Any] = {"n_tokens": next(iter(scans.values())).n_tokens, "saes": {}}
    for name, sae in saes.items():
        scan, ids = scans[name], chosen[name]
        rows = sae.W_dec[ids]
        own = decoder_cosines(rows, sae.W_dec)  # [m, d_sae]
        others = {other: decoder_cosines(rows, o.W_dec) for other, o in saes.items() if other != name}
        latents = []
        for j, latent in enumerate(ids):
            record: dict[str, Any] = {
                "id": latent,
                "n_pos": int(scan.n_positive[latent]), "n_neg": int(scan.n_negative[latent]),
                "pos": _pole_contexts(scan, latent, 1, tokens, positions, tokenizer, n_contexts, window, after),
                "neg": _pole_contexts(scan, latent, -1, tokens, positions, tokenizer, n_contexts, window, after),
                "similar": _neighbours(own[j], n_neighbours, largest=True, skip=latent),
                "opposite": _neighbours(own[j], n_neighbours, largest=False, skip=latent),
                "nearest": {other: _neighbours(cos[j].abs(), n_neighbours, largest=True) for other, cos in
                            others.items()},
            }
            for other, near in record["nearest"].items():  # keep the sign of the cosine
                for pair in near:
                    pair[1] = _round(float(others[other][j, pair[0]]), 2)
            if model is not None:
                lens = logit_lens(model, sae.W_dec[latent], lens_n)
                record["lens_pos"] = [t for t, _ in lens.positive]
                record["lens_neg"] = [t for t, _ in lens.negative]
            latents.append(record)
        out["saes"][name] = {
            "label": plotting.name(sae.cfg.architecture), "colour": plotting.color(sae.cfg.architecture),
            "architecture": sae.cfg.architecture, "signed": bool(sae.cfg.signed), "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k, "latents": latents,
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Files


def _write_atomic(path: Path, text: str) -> None:
    atomic.write_text(path, text)  # a unique temp name beside it, then rename


def write(folder: str | Path, saes: Mapping[str, SAE], scans: Mapping[str, LatentScan] | None, tokens: Tensor,
          positions: Positions, tokenizer, **kwargs: Any) -> Path:
    """Write latents.js, browser.js and index.html into ``folder`` (created); returns the data file's path.

    Arguments as for :func:`browser_data`.  Every file is written to a temporary name and renamed into place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = browser_data(saes, scans, tokens, positions, tokenizer, **kwargs)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    _write_atomic(folder / DATA_FILE, f"window.{DATA_VARIABLE} = {text};\n")
    _write_atomic(folder / SCRIPT_FILE, BROWSER_JS)
    _write_atomic(folder / PAGE_FILE, PAGE_HTML)
    return folder / DATA_FILE


def read(folder: str | Path) -> dict[str, Any]:
    """The data :func:`write` wrote into ``folder`` (for tests and notebooks)."""
    text = (Path(folder) / DATA_FILE).read_text(encoding="utf-8")
    prefix = f"window.{DATA_VARIABLE} = "
    if not text.startswith(prefix):
        raise ValueError(f"{folder}/{DATA_FILE} is not a latent-browser data file (it should start {prefix!r})")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


PAGE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Latent browser</title></head>
<body style="font-family:sans-serif;max-width:1100px;margin:1em auto">
<h1>Latent browser</h1>
<div id="absae-latent-browser">This page needs JavaScript.</div>
<script src="latents.js"></script>
<script src="browser.js"></script>
</body></html>
"""

# The page: an SAE picker, a sortable list of latents, and one latent's card.  No libraries, no network.
BROWSER_JS = r"""// absae latent browser: reads window.ABSAE_LATENTS (latents.js), draws into #absae-latent-browser.
// (Not #latent-browser: a page titled "Latent browser" already has a section with that id.)
(function () {
  "use strict";
  const POS = "#1a9850", NEG = "#d73027";
  const root = document.getElementById("absae-latent-browser");
  const data = window.ABSAE_LATENTS;
  if (!root) return;
  if (!data) {
    root.textContent = "No latent data: run chapter 5 at the cpu profile (it writes latents.js).";
    return;
  }
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "style") e.style.cssText = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return e;
  };
  const names = Object.keys(data.saes);
  const byId = {};
  for (const name of names) {
    byId[name] = {};
    for (const lat of data.saes[name].latents) byId[name][lat.id] = lat;
  }
  const state = {sae: names.includes("abstopk") ? "abstopk" : names[0], latent: null, sort: "two"};

  const saeSelect = el("select", {"aria-label": "SAE", onchange: () => { state.sae = saeSelect.value;
    state.latent = null; draw(); }});
  for (const name of names) saeSelect.append(el("option", {value: name}, data.saes[name].label));
  const sortSelect = el("select", {"aria-label": "order", onchange: () => { state.sort = sortSelect.value; draw(); }},
    el("option", {value: "two"}, "both poles first"), el("option", {value: "fires"}, "most firings first"),
    el("option", {value: "id"}, "by id"));
  const search = el("input", {type: "search", placeholder: "word in a context…", "aria-label": "search",
    style: "width:14em", oninput: () => draw()});
  const list = el("select", {size: "18", "aria-label": "latent", style: "width:100%;font-family:monospace",
    onchange: () => { state.latent = Number(list.value); drawCard(); }});
  const card = el("div", {style: "flex:1;min-width:0"});
  root.replaceChildren(
    el("p", {}, el("label", {}, "SAE ", saeSelect), "  ", el("label", {}, "order ", sortSelect), "  ", search),
    el("div", {style: "display:flex;gap:1em;align-items:flex-start"},
      el("div", {style: "width:13em;flex:none"}, list), card));

  const text = lat => [...lat.pos, ...lat.neg].map(c => c[0] + c[1] + c[2]).join(" ").toLowerCase();
  function sorted() {
    const sae = data.saes[state.sae];
    const q = search.value.trim().toLowerCase();
    const lats = sae.latents.filter(lat => !q || text(lat).includes(q));
    if (state.sort === "fires") lats.sort((a, b) => (b.n_pos + b.n_neg) - (a.n_pos + a.n_neg));
    else if (state.sort === "id") lats.sort((a, b) => a.id - b.id);
    return lats;  // "two": the order they were chosen in (both poles first)
  }
  function draw() {
    const lats = sorted();
    list.replaceChildren(...lats.map(lat => el("option", {value: lat.id},
      `#${lat.id}  +${lat.n_pos}` + (data.saes[state.sae].signed ? ` −${lat.n_neg}` : ""))));
    if (state.latent === null || !byId[state.sae][state.latent]) state.latent = lats.length ? lats[0].id : null;
    if (state.latent !== null) list.value = String(state.latent);
    drawCard();
  }
  function go(name, id) {
    state.sae = name; state.latent = id; saeSelect.value = name; search.value = ""; draw();
  }
  function neighbours(title, name, pairs) {
    const items = pairs.map(([id, cos]) => {
      const label = `#${id} (${cos >= 0 ? "+" : "−"}${Math.abs(cos).toFixed(2)})`;
      return byId[name][id] ? el("button", {type: "button", class: "lb-link", title: "show this latent",
          style: "border:none;background:none;color:#0645ad;cursor:pointer;padding:0 .3em;text-decoration:underline",
          onclick: () => go(name, id)}, label) : el("span", {style: "padding:0 .3em"}, label);
    });
    return el("div", {style: "margin:.2em 0"}, el("b", {}, title + ": "), ...items);
  }
  function pole(lat, sign) {
    const sae = data.saes[state.sae];
    const colour = sign > 0 ? POS : NEG;
    const contexts = sign > 0 ? lat.pos : lat.neg;
    const count = sign > 0 ? lat.n_pos : lat.n_neg;
    const head = el("div", {style: `font-weight:bold;color:${colour}`},
      `${sign > 0 ? "+d" : "−d"}: ${count.toLocaleString()} firings` + (sign > 0 ? " (code > 0)" : " (code < 0)"));
    const box = el("td", {style: `vertical-align:top;width:50%;padding:4px;border-top:3px solid ${colour}`}, head);
    if (!sae.signed && sign < 0) {
      box.append(el("p", {}, `${sae.label} codes are never negative: the opposite direction, if the SAE learned it,
        is another latent (see “most opposite” below).`));
      return box;
    }
    if (!contexts.length) box.append(el("p", {}, "never fired with this sign"));
    for (const [before, token, after, value] of contexts) {
      box.append(el("div", {style: "font-size:13px;margin:2px 0;overflow-wrap:anywhere"},
        el("span", {style: "font-family:monospace;color:#555"}, value.toFixed(2) + " "), before,
        el("mark", {style: `background:${colour}33;border-bottom:2px solid ${colour};font-weight:bold`}, token),
        after));
    }
    const lens = sign > 0 ? lat.lens_pos : lat.lens_neg;
    if (lens) box.append(el("div", {style: "margin-top:.4em;font-size:13px"}, el("b", {}, "promotes: "),
      ...lens.map(t => el("code", {style: `border:1px solid ${colour};margin:1px;padding:0 2px;display:inline-block`},
        JSON.stringify(t).slice(1, -1)))));
    return box;
  }
  function drawCard() {
    const lat = byId[state.sae][state.latent];
    if (!lat) { card.replaceChildren(el("p", {}, "no latent matches")); return; }
    const sae = data.saes[state.sae];
    const rows = [neighbours("most similar rows", state.sae, lat.similar),
                  neighbours("most opposite rows", state.sae, lat.opposite)];
    for (const [other, pairs] of Object.entries(lat.nearest))
      rows.push(neighbours(`nearest ${data.saes[other].label} rows`, other, pairs));
    card.replaceChildren(
      el("h3", {style: "margin:.2em 0"}, `${sae.label} latent #${lat.id}`),
      el("table", {style: "width:100%;border-collapse:collapse;table-layout:fixed"},
        el("tr", {}, pole(lat, 1), pole(lat, -1))),
      el("div", {style: "margin-top:.6em;font-size:14px"}, el("div", {}, "Decoder-row neighbours (cosine):"),
        ...rows));
    try { history.replaceState(null, "", `#${state.sae}-${lat.id}`); } catch (e) { /* a file: page may refuse */ }
  }
  const m = /^#([a-z_]+)-(\d+)$/.exec(location.hash);
  if (m && byId[m[1]] && byId[m[1]][Number(m[2])]) { state.sae = m[1]; state.latent = Number(m[2]); }
  saeSelect.value = state.sae;
  draw();
})();
"""

// absae latent browser: reads window.ABSAE_LATENTS (latents.js), draws into #absae-latent-browser.
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

"""Offline stand-ins for three SAEBench tasks (Karvonen et al. 2025): SCR, TPP and RAVEL.

All three ask the same question from different sides: if we *remove* (or swap) a handful of SAE latents, does exactly
the concept we aimed at change, and nothing else?

    ablate_latents        x − Σ_{j∈L} z_j d_j: remove chosen latents' decoder contributions, keep everything else
                          (including the SAE's reconstruction error)
    project_out           x − (x·d̂) d̂: the DiM baseline's ablation
    pooled_features       residual and codes averaged over each text's tokens (what SAEBench's SCR/TPP probe)
    probe_attribution     SAEBench's latent ranking mean_diff · (w_probe · d_j): |·| for SCR, mean_diff clamped at 0
                          for TPP, and the sign-aware TPP ranking for signed codes beside it
    scr                   spurious correlation removal (Marks et al. 2024): a probe for attribute A trained where A and B
                          are perfectly correlated leans on B; ablating B's latents should recover its accuracy on
                          balanced data. Score (acc_ablated − acc_biased) / (acc_oracle − acc_biased)
    tpp                   targeted probe perturbation: ablating concept i's latents should hurt probe i and no other
    ravel_*               RAVEL-style facts (Huang et al. 2024): patch the latents tied to one attribute (a country's
                          capital) from country B into country A's run; the model should now give B's capital (cause)
                          while another attribute (the continent) stays A's (isolation)

Shapes: ``n`` examples, ``d`` model width, ``d_sae`` latents. The datasets are built from offline sources only:
Brown sentences (non-fiction vs fiction × he/she pronouns) and a list of country facts written here. SCR and TPP
follow SAEBench's code (``sae_bench/evals/scr_and_tpp/main.py``): mean-pooled tokens, probe-attribution ranking,
zero ablation with the SAE error kept, SAEBench's score formulas; the data are offline substitutes for its
Bias-in-Bios and Amazon reviews, so every number is "SAEBench-style on offline substitutes", not SAEBench's.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from absae_lib.concepts import ConceptDataset
from absae_lib.probing import encode_all, mean_code_difference

ABLATION_NS = (2, 5, 10, 20)


# ----------------------------------------------------------------------------------------------------------------
# Ablations


def latent_contribution(codes: Tensor, W_dec: Tensor, latents: Sequence[int] | Tensor) -> Tensor:
    """Σ_{j∈latents} z_j d_j per row.  codes [n, d_sae], W_dec [d_sae, d] -> [n, d] (float32, codes' device)."""
    idx = torch.as_tensor(list(latents) if not isinstance(latents, Tensor) else latents, dtype=torch.long)
    if codes.dim() != 2 or W_dec.dim() != 2 or codes.shape[1] != W_dec.shape[0]:
        raise ValueError(f"need codes [n, d_sae] and W_dec [d_sae, d], got {tuple(codes.shape)}, {tuple(W_dec.shape)}")
    if len(idx) == 0:
        return codes.new_zeros(codes.shape[0], W_dec.shape[1]).float()
    W = W_dec.detach().float().to(codes.device)
    return codes[:, idx.to(codes.device)].float() @ W[idx.to(codes.device)]


@torch.no_grad()
def ablate_latents(sae, acts: Tensor, latents: Sequence[int] | Tensor, batch_size: int = 4096) -> Tensor:
    """Zero-ablate ``latents`` in ``acts`` [n, d]: x − Σ_{j∈latents} z_j(x) d_j (fp32, CPU).

    Only the chosen latents' decoder contributions leave; the other latents, the decoder bias and the SAE's
    reconstruction error stay, so an empty list returns ``acts`` unchanged (not the reconstruction).
    """
    acts = acts.float().cpu()
    codes = encode_all(sae, acts, batch_size)
    return acts - latent_contribution(codes, sae.W_dec.cpu(), latents)


def project_out(acts: Tensor, direction: Tensor) -> Tensor:
    """x − (x·d̂) d̂ for every row.  acts [n, d], direction [d] -> [n, d] fp32."""
    d = direction.float().to(acts.device)
    d = d / d.norm().clamp_min(1e-12)
    acts = acts.float()
    return acts - (acts @ d)[:, None] * d


# ----------------------------------------------------------------------------------------------------------------
# Mean-pooled features, as SAEBench's SCR and TPP use them


class Pooled(NamedTuple):
    """Per-text features: the residual and every SAE's codes, each averaged over the text's tokens."""

    acts: Tensor  # [n, d] mean over tokens of the residual at the hook
    codes: dict[str, Tensor]  # {SAE name: [n, d_sae]} mean over the same tokens of the per-token codes


@torch.no_grad()
def pooled_features(model, texts: Sequence[str], hook_name: str, saes: dict[str, Any], batch_size: int = 32,
                    skip_first: bool = True) -> Pooled:
    """Mean-pool the residual and each SAE's codes over every text's tokens, as SAEBench's SCR/TPP do.

    SAEBench encodes every token, averages the codes over the text's real tokens (pads and BOS masked) and trains
    its probes on the averaged residual. Here texts carry no BOS, and token 0 (the attention sink, ~100× the norm of
    the others, left out of SAE training) is skipped when ``skip_first`` — the role BOS plays in SAEBench. Because
    ablation is linear, the mean over tokens of x − Σ_{j∈L} z_j d_j is pooled x − Σ_{j∈L} (pooled z_j) d_j, so
    scoring an ablation needs only these averages.

    Returns:
        Pooled(acts [n, d] fp32 CPU, codes {name: [n, d_sae] fp32 CPU}), row i for ``texts[i]``.
    """
    from absae_lib.activations import resolve_compute_dtype, stop_layer
    from absae_lib.concepts import token_ids
    from absae_lib.models import validate_hook

    validate_hook(model, hook_name)
    ids = token_ids(model.tokenizer, texts)
    first = 1 if skip_first else 0
    short = [i for i, r in enumerate(ids) if len(r) <= first]
    if short:
        raise ValueError(f"{len(short)} texts have no token to pool after skipping token 0 (e.g. {texts[short[0]]!r}); "
                         "drop them or pass skip_first=False")
    param = next(model.parameters())
    compute_dtype = resolve_compute_dtype(param.dtype, param.device)
    autocast = (torch.autocast(device_type=param.device.type, dtype=compute_dtype) if compute_dtype != param.dtype
                else nullcontext())
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    acts = torch.empty(len(ids), model.cfg.d_model)
    codes = {name: torch.empty(len(ids), sae.cfg.d_sae) for name, sae in saes.items()}
    saved: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        saved["act"] = activation

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for s in range(0, len(order), batch_size):
        batch = order[s:s + batch_size]
        tokens = torch.full((len(batch), len(ids[batch[0]])), pad, dtype=torch.long)
        mask = torch.zeros(tokens.shape)
        for r, i in enumerate(batch):
            tokens[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, first: len(ids[i])] = 1.0
        with autocast:
            model.run_with_hooks(tokens.to(param.device), fwd_hooks=[(hook_name, keep)],
                                 stop_at_layer=stop_layer(hook_name))
        x = saved.pop("act").float().cpu()  # [b, L, d]
        weights = mask / mask.sum(1, keepdim=True)  # [b, L]: 1/n_tokens on the pooled tokens, 0 elsewhere
        acts[batch] = torch.einsum("bl,bld->bd", weights, x)
        flat = x[mask.bool()]  # [tokens, d]: only the pooled tokens are encoded
        row_of = torch.arange(len(batch))[:, None].expand_as(mask)[mask.bool()]
        for name, sae in saes.items():
            z = encode_all(sae, flat)  # [tokens, d_sae]
            pooled = torch.zeros(len(batch), z.shape[1]).index_add_(0, row_of, z)
            codes[name][batch] = pooled / mask.sum(1, keepdim=True)
    return Pooled(acts, codes)


def pooled_from_acts(saes: dict[str, Any], acts: Tensor) -> Pooled:
    """Pooled features of one-token texts: ``acts`` [n, d] and each SAE's codes of it (tests, single-token data)."""
    return Pooled(acts.float().cpu(), {name: encode_all(sae, acts.float()) for name, sae in saes.items()})


# ----------------------------------------------------------------------------------------------------------------
# Probes with a fixed fit (the scored object is the *trained* probe, applied to edited activations)


def fit_probe(X: Tensor, y: Tensor, C: float = 1.0, max_iter: int = 2000):
    """Standardised L2 logistic regression on X [n, d] -> a fitted sklearn pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(X.float().cpu().numpy(), torch.as_tensor(y).cpu().numpy())
    return probe


def probe_accuracy(probe, X: Tensor, y: Tensor) -> float:
    return float(probe.score(X.float().cpu().numpy(), torch.as_tensor(y).cpu().numpy()))


def probe_weight(probe) -> Tensor:
    """The fitted probe's weight in raw activation coordinates, [d]: ∂ logit / ∂x = coef / scale of the scaler.

    SAEBench's probes are plain linear layers on the raw activations; ours standardise first, so the weight that a
    decoder row is dotted with (the probe attribution) is the logistic coefficient divided by the feature scale.
    """
    scaler, logistic = probe[0], probe[-1]
    return torch.as_tensor(logistic.coef_[0] / scaler.scale_, dtype=torch.float32)


ATTRIBUTION_MODES = ("scr", "tpp", "tpp_sign_aware")


def probe_attribution(codes: Tensor, labels: Tensor, W_dec: Tensor, weight: Tensor, mode: str) -> Tensor:
    """SAEBench's latent ranking: effect_j = mean_diff_j · (w · d_j), per latent.  -> [d_sae].

    mean_diff = mean pooled code on label 1 − on label 0 (codes [n, d_sae]); d_j the decoder rows (W_dec [d_sae, d]);
    w the probe's weight [d]. ``mode``:

    - "scr": |effect| (SAEBench's SCR);
    - "tpp": clamp(mean_diff, min=0) · (w · d_j) (SAEBench's TPP: latents that fire more on the positive class and
      push the probe towards it). The clamp assumes codes ≥ 0: a signed latent whose *negative* pole marks the
      positive class has mean_diff < 0 and is dropped, however much the probe uses it;
    - "tpp_sign_aware": mean_diff · (w · d_j) without the clamp, so either pole counts when its contribution
      z_j (w · d_j) pushes the probe towards the positive class (for codes ≥ 0 it only adds latents that fire on the
      negative class and pull the probe towards it).
    """
    if mode not in ATTRIBUTION_MODES:
        raise ValueError(f"mode must be one of {ATTRIBUTION_MODES}, got {mode!r}")
    mean_diff = mean_code_difference(codes, labels)
    dot = W_dec.detach().float().cpu() @ weight.float().cpu()
    if mode == "tpp":
        mean_diff = mean_diff.clamp(min=0)
    effect = mean_diff.cpu() * dot
    return effect.abs() if mode == "scr" else effect


def top_latents(effects: Tensor, n: int) -> list[int]:
    """The n latents with the largest effect, as SAEBench's ``select_top_n_features``: only non-zero effects count,
    so fewer than n come back when fewer are non-zero. Ties keep the lower latent id."""
    nonzero = (effects != 0).nonzero().flatten()
    order = effects[nonzero].argsort(descending=True, stable=True)
    return nonzero[order][:n].tolist()


def normalized_score(acc_ablated: float, acc_biased: float, acc_oracle: float, min_gap: float = 0.001) -> float:
    """SAEBench's SCR score (acc_ablated − acc_biased) / (acc_oracle − acc_biased): 1 = the ablation recovers the
    oracle, 0 = no change. 0 when the oracle is not above the biased probe by ``min_gap`` (SAEBench's rule)."""
    gap = acc_oracle - acc_biased
    if gap < min_gap:
        return 0.0
    return (acc_ablated - acc_biased) / gap


# ----------------------------------------------------------------------------------------------------------------
# SCR

SCR_LABEL = "SCR (SAEBench-style on offline substitutes)"
TPP_LABEL = "TPP (SAEBench-style on offline substitutes)"


def scr(
    saes: dict[str, Any], biased: tuple[Pooled, Tensor], selection: tuple[Pooled, Tensor, Tensor],
    test: tuple[Pooled, Tensor, Tensor], ns: Sequence[int] = ABLATION_NS, min_gap: float = 0.001,
    names: tuple[str, str] = ("A", "B"),
) -> dict[str, Any]:
    """Spurious correlation removal, SAEBench-style: mean-pooled features, latents ranked by probe attribution.

    The biased probe is trained where A == B. Like SAEBench, both directions are scored — ablate B's latents and
    score the biased probe on A's labels, or ablate A's and score on B's — and the one reported ("chosen") is where
    the biased probe is *worse* before ablation (the attribute it does not lean on).

    Args:
        saes: {name: SAE}; their codes must be in every Pooled's ``codes``.
        biased: (features, labels of A) where A == B on every row: the biased probe's training set.
        selection: (features, labels of A, labels of B), all four (A, B) cells: trains the skyline probes for A and
            for B; the latents to ablate are ranked there by |mean_diff · (w_probe · d_j)| (SAEBench's SCR
            attribution) with the probe and labels of the attribute being removed.
        test: (features, labels of A, labels of B), balanced: where every probe is scored.
        ns: how many latents to zero-ablate (SAEBench: the error term and the other latents stay).
        min_gap: a direction scores 0 when its skyline beats the biased probe by less (SAEBench: 0.001).
        names: display names of A and B.

    Returns:
        {"label", "chosen": "A" or "B" (the attribute scored: "A" means B's latents were ablated),
         "direction": a sentence, and for the chosen direction "acc_biased", "acc_oracle" (skyline), "acc_dim",
         "score_dim", "variants": {name: {"acc": {n}, "score": {n}, "latents"}}; "directions": {"A": {...},
         "B": {...}} the same for both}.
    """
    from absae_lib.dim import diff_in_means

    (Fb, yb), (Fs, yAs, yBs), (Ft, yAt, yBt) = biased, selection, test
    probe = fit_probe(Fb.acts, yb)
    labels = {"A": (yAs, yAt), "B": (yBs, yBt)}
    skyline = {c: fit_probe(Fs.acts, ys) for c, (ys, _) in labels.items()}
    directions: dict[str, Any] = {}
    for scored, removed in (("A", "B"), ("B", "A")):
        ys_rm, (_, yt) = labels[removed][0], labels[scored]
        acc_biased = probe_accuracy(probe, Ft.acts, yt)
        acc_oracle = probe_accuracy(skyline[scored], Ft.acts, yt)
        acc_dim = probe_accuracy(probe, project_out(Ft.acts, diff_in_means(Fs.acts, ys_rm)), yt)
        w = probe_weight(skyline[removed])
        d: dict[str, Any] = {"acc_biased": acc_biased, "acc_oracle": acc_oracle, "acc_dim": acc_dim,
                             "score_dim": normalized_score(acc_dim, acc_biased, acc_oracle, min_gap),
                             "direction": f"ablate {names[removed == 'B']}, score the biased probe on "
                                          f"{names[scored == 'B']}", "variants": {}}
        for name, sae in saes.items():
            W = sae.W_dec.detach().float().cpu()
            ranked = top_latents(probe_attribution(Fs.codes[name], ys_rm, W, w, "scr"), max(ns))
            acc = {n: probe_accuracy(probe, Ft.acts - latent_contribution(Ft.codes[name], W, ranked[:n]), yt)
                   for n in ns}
            d["variants"][name] = {"acc": acc, "latents": ranked,
                                   "score": {n: normalized_score(a, acc_biased, acc_oracle, min_gap)
                                             for n, a in acc.items()}}
        directions[scored] = d
    chosen = "A" if directions["A"]["acc_biased"] < directions["B"]["acc_biased"] else "B"
    return {"label": SCR_LABEL, "chosen": chosen, **directions[chosen], "directions": directions}


# ----------------------------------------------------------------------------------------------------------------
# TPP


def tpp_score(drops: np.ndarray) -> tuple[float, np.ndarray]:
    """drops[i, j] = accuracy lost by probe j when concept i's latents are ablated.

    Per concept: drops[i, i] − mean_{j≠i} drops[i, j]; the score is their mean.  -> (score, per-concept [m]).
    """
    drops = np.asarray(drops, dtype=float)
    m = drops.shape[0]
    if drops.shape != (m, m) or m < 2:
        raise ValueError(f"drops must be a square matrix of at least 2 concepts, got shape {drops.shape}")
    own = np.diag(drops)
    others = (drops.sum(1) - own) / (m - 1)
    per = own - others
    return float(per.mean()), per


def tpp(
    saes: dict[str, Any], tasks: dict[str, tuple[Pooled, Tensor, Pooled, Tensor]], ns: Sequence[int] = ABLATION_NS,
) -> dict[str, Any]:
    """Targeted probe perturbation over several binary concepts, SAEBench-style (mean-pooled, probe attribution).

    Args:
        saes: {name: SAE}.
        tasks: {concept: (train features, y_train, test features, y_test)}; a probe per concept is trained on its
            train split, and concept i's latents are ranked there by clamp(mean_diff, 0) · (w_i · d_j) (SAEBench).
            For a signed SAE the sign-aware ranking mean_diff · (w_i · d_j) is scored as well.
        ns: how many latents to ablate per concept.

    Returns:
        {"label", "concepts", "acc": {concept: clean test accuracy},
         "dim": {"drops": [[...]], "score", "per_concept"} (concept i's DiM direction projected out),
         "variants": {name: {"drops": {n: [[...]]}, "score": {n}, "per_concept": {n: [...]}, "latents",
                             and for signed SAEs "score_sign_aware": {n}, "drops_sign_aware": {n: [[...]]}}}}.
    """
    from absae_lib.dim import diff_in_means

    names = list(tasks)
    probes = {c: fit_probe(tr.acts, ytr) for c, (tr, ytr, _, _) in tasks.items()}
    weights = {c: probe_weight(p) for c, p in probes.items()}
    clean = {c: probe_accuracy(probes[c], te.acts, yte) for c, (_, _, te, yte) in tasks.items()}

    def drops_for(edit) -> np.ndarray:
        """edit(concept i, concept j, test features of j) -> edited acts; returns the drop matrix."""
        D = np.zeros((len(names), len(names)))
        for i, ci in enumerate(names):
            for j, cj in enumerate(names):
                _, _, te, yte = tasks[cj]
                D[i, j] = clean[cj] - probe_accuracy(probes[cj], edit(ci, cj, te), yte)
        return D

    directions = {c: diff_in_means(tr.acts, ytr) for c, (tr, ytr, _, _) in tasks.items()}
    D = drops_for(lambda ci, cj, te: project_out(te.acts, directions[ci]))
    score, per = tpp_score(D)
    out: dict[str, Any] = {"label": TPP_LABEL, "concepts": names, "acc": clean,
                           "dim": {"drops": D.tolist(), "score": score, "per_concept": per.tolist()}, "variants": {}}
    for name, sae in saes.items():
        W = sae.W_dec.detach().float().cpu()
        modes = ["tpp", "tpp_sign_aware"] if getattr(sae.cfg, "signed", False) else ["tpp"]
        res: dict[str, Any] = {}
        for mode in modes:
            suffix = "" if mode == "tpp" else "_sign_aware"
            ranked = {c: top_latents(probe_attribution(tr.codes[name], ytr, W, weights[c], mode), max(ns))
                      for c, (tr, ytr, _, _) in tasks.items()}
            res.update({f"drops{suffix}": {}, f"score{suffix}": {}, f"per_concept{suffix}": {},
                        f"latents{suffix}": ranked})
            for n in ns:
                D = drops_for(lambda ci, cj, te: te.acts - latent_contribution(te.codes[name], W, ranked[ci][:n]))
                s_, p_ = tpp_score(D)
                res[f"drops{suffix}"][n], res[f"score{suffix}"][n] = D.tolist(), s_
                res[f"per_concept{suffix}"][n] = p_.tolist()
        out["variants"][name] = res
    return out


# ----------------------------------------------------------------------------------------------------------------
# SCR data: Brown press vs fiction × male vs female pronouns

MALE_WORDS = frozenset({"he", "him", "his", "himself"})
FEMALE_WORDS = frozenset({"she", "her", "hers", "herself"})
# Non-fiction: press reportage, editorial, reviews, popular lore, belles-lettres; fiction: general, mystery, adventure,
# romance. (Press alone has too few sentences with female pronouns: 235 in all.)
NONFICTION, FICTION = "abcfg", "klnp"


def genre_gender_dataset(seed: int = 0, nonfiction: str = NONFICTION, fiction: str = FICTION,
                         min_context: int = 8) -> ConceptDataset:
    """Brown sentences of ``nonfiction`` (genre 0) or ``fiction`` (genre 1) categories whose gendered pronouns are all
    male (gender 0) or all female (gender 1), cut right after the last such pronoun (at least ``min_context`` words
    before it, so the context says something about the genre). ``labels`` = genre, ``meta[i]["gender"]`` = gender, groups = the Brown file; the label token is the pronoun.

    Read at the pronoun, gender is nearly certain (the token itself) while genre must come from the context: the
    spurious attribute is the easy one, as gender is in Bias-in-Bios. Shuffled (seeded).
    """
    from absae_lib.concepts import _brown_sentences

    texts, labels, groups, meta = [], [], [], []
    for s in sorted(_brown_sentences(nonfiction + fiction), key=lambda s: (s.file_id, s.text)):
        words = [w.lower() for _, _, w, _ in s.tokens]
        male, female = bool(MALE_WORDS.intersection(words)), bool(FEMALE_WORDS.intersection(words))
        if male == female:
            continue
        hits = [j for j, w in enumerate(words) if j >= min_context and w in (FEMALE_WORDS if female else MALE_WORDS)]
        if not hits:
            continue
        texts.append(s.text[: s.tokens[hits[-1]][1]])
        labels.append(int(s.file_id[1] in fiction))
        groups.append(s.file_id)
        meta.append({"file_id": s.file_id, "gender": int(female), "pronoun": words[hits[-1]]})
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return ConceptDataset("genre×gender", [texts[i] for i in order], torch.tensor([labels[i] for i in order]), None,
                          ("non-fiction", "fiction"), [groups[i] for i in order], [meta[i] for i in order])


def scr_splits(
    ds: ConceptDataset, n_biased: int, n_cell: int, seed: int = 0, parts: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> dict[str, ConceptDataset]:
    """Split ``ds`` by document into biased train / balanced selection / balanced test.

    Brown files go to the three parts in the proportions ``parts`` (seeded, per genre), so no document is in two
    parts. biased: ``n_biased`` examples of (genre 0, gender 0) and of (genre 1, gender 1) — genre and gender
    perfectly correlated. selection and test: ``n_cell`` examples of each of the four (genre, gender) cells.
    """
    gender = [m["gender"] for m in ds.meta]
    files_by_genre: dict[int, list[str]] = defaultdict(list)
    for g, y in zip(ds.groups, ds.labels.tolist()):
        if g not in files_by_genre[y]:
            files_by_genre[y].append(g)
    rng = random.Random(seed)
    part_of: dict[str, int] = {}
    for y in sorted(files_by_genre):
        files = sorted(files_by_genre[y])
        rng.shuffle(files)
        cuts = np.cumsum([round(p * len(files)) for p in parts[:-1]])
        for r, f in enumerate(files):
            part_of[f] = int(np.searchsorted(cuts, r, side="right"))
    cells: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (g, y, s) in enumerate(zip(ds.groups, ds.labels.tolist(), gender)):
        cells[(part_of[g], y, s)].append(i)

    def take(part: int, wanted: list[tuple[int, int]], n: int, name: str) -> ConceptDataset:
        idx = []
        for y, s in wanted:
            have = cells[(part, y, s)]
            if len(have) < n:
                raise ValueError(f"{name}: only {len(have)} sentences of (genre {y}, gender {s}), asked for {n}")
            idx.extend(have[:n])
        return ds.subset(idx)

    return {"biased": take(0, [(0, 0), (1, 1)], n_biased, "biased"),
            "selection": take(1, [(0, 0), (0, 1), (1, 0), (1, 1)], n_cell, "selection"),
            "test": take(2, [(0, 0), (0, 1), (1, 0), (1, 1)], n_cell, "test")}


def gender_labels(ds: ConceptDataset) -> Tensor:
    return torch.tensor([m["gender"] for m in ds.meta])


# ----------------------------------------------------------------------------------------------------------------
# RAVEL-style facts

# (country, capital, continent, language): established facts, the language being the main official one. Countries
# whose continent, capital or language is commonly given two ways (Russia, Turkey, Australia, Belgium, Switzerland,
# Bolivia, ...) are left out; a second accepted spelling is given after a "|".
COUNTRY_FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("France", "Paris", "Europe", "French"), ("Germany", "Berlin", "Europe", "German"),
    ("Italy", "Rome", "Europe", "Italian"), ("Spain", "Madrid", "Europe", "Spanish"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"), ("Greece", "Athens", "Europe", "Greek"),
    ("Poland", "Warsaw", "Europe", "Polish"), ("Netherlands", "Amsterdam", "Europe", "Dutch"),
    ("Sweden", "Stockholm", "Europe", "Swedish"), ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Finland", "Helsinki", "Europe", "Finnish"), ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Hungary", "Budapest", "Europe", "Hungarian"), ("Austria", "Vienna", "Europe", "German"),
    ("Ireland", "Dublin", "Europe", "English"), ("Romania", "Bucharest", "Europe", "Romanian"),
    ("Egypt", "Cairo", "Africa", "Arabic"), ("Nigeria", "Abuja", "Africa", "English"),
    ("Ghana", "Accra", "Africa", "English"), ("Morocco", "Rabat", "Africa", "Arabic"),
    ("Ethiopia", "Addis Ababa", "Africa", "Amharic"), ("Senegal", "Dakar", "Africa", "French"),
    ("Algeria", "Algiers", "Africa", "Arabic"), ("Sudan", "Khartoum", "Africa", "Arabic"),
    ("China", "Beijing", "Asia", "Chinese|Mandarin"), ("India", "New Delhi|Delhi", "Asia", "Hindi"),
    ("Thailand", "Bangkok", "Asia", "Thai"), ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Indonesia", "Jakarta", "Asia", "Indonesian"), ("South Korea", "Seoul", "Asia", "Korean"),
    ("Iran", "Tehran", "Asia", "Persian|Farsi"), ("Iraq", "Baghdad", "Asia", "Arabic"),
    ("Saudi Arabia", "Riyadh", "Asia", "Arabic"), ("Pakistan", "Islamabad", "Asia", "Urdu"),
    ("Bangladesh", "Dhaka", "Asia", "Bengali|Bangla"), ("Nepal", "Kathmandu", "Asia", "Nepali"),
    ("Canada", "Ottawa", "North America", "English"), ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Cuba", "Havana", "North America", "Spanish"), ("Jamaica", "Kingston", "North America", "English"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"), ("Chile", "Santiago", "South America", "Spanish"),
    ("Colombia", "Bogota", "South America", "Spanish"), ("Venezuela", "Caracas", "South America", "Spanish"),
    ("Brazil", "Brasilia", "South America", "Portuguese"), ("Uruguay", "Montevideo", "South America", "Spanish"),
    ("Ecuador", "Quito", "South America", "Spanish"),
)
ATTRIBUTES = ("capital", "continent", "language")

# Two-shot prompts; the demonstration countries (Japan, Peru) are not in COUNTRY_FACTS.
FACT_TEMPLATES: dict[str, str] = {
    "capital": "The capital of Japan is Tokyo. The capital of Peru is Lima. The capital of {} is",
    "continent": "Japan is in Asia. Peru is in South America. {} is in",
    "language": "In Japan, people speak Japanese. In Peru, people speak Spanish. In {}, people speak",
}


def answer_first_tokens(tokenizer, answer: str) -> set[int]:
    """First token id of " answer" for every accepted spelling ("New Delhi|Delhi")."""
    return {tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in answer.split("|")}


def fact_prompts(tokenizer, attribute: str, countries: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Token ids of the attribute's prompt for each country, and the position of the country's last token."""
    template = FACT_TEMPLATES[attribute]
    ids, positions = [], []
    for c in countries:
        text = template.format(c)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        head = tokenizer(text[: template.index("{}") + len(c)], add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head:
            raise ValueError(f"the country {c!r} does not end on a token boundary in {text!r}")
        ids.append(full)
        positions.append(len(head) - 1)
    return ids, positions


def _resid_post_layer(hook_name: str) -> int:
    import re

    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name)
    if not match:
        raise ValueError(f"the RAVEL patch runs the model from the hook on, so it needs a resid_post hook; got {hook_name!r}")
    return int(match.group(1))


def _padded(model, ids: Sequence[Sequence[int]]) -> Tensor:
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(ids), max(len(r) for r in ids)), pad, dtype=torch.long)
    for r, row in enumerate(ids):
        tokens[r, : len(row)] = torch.tensor(row)
    return tokens


@torch.no_grad()
def prompt_resid(model, ids: Sequence[Sequence[int]], hook_name: str, batch_size: int = 64) -> list[Tensor]:
    """The residual stream at ``hook_name`` (a resid_post) on every token of each prompt: [len_i, d] each (fp32, CPU).

    Computed once per prompt; every patch then runs only the blocks after the hook (:func:`finish_prompts`).
    """
    layer = _resid_post_layer(hook_name)
    device = next(model.parameters()).device
    out: list[Tensor] = []
    for s in range(0, len(ids), batch_size):
        rows = ids[s:s + batch_size]
        resid = model(_padded(model, rows).to(device), stop_at_layer=layer + 1).float().cpu()
        out.extend(resid[r, : len(row)] for r, row in enumerate(rows))
    return out


@torch.no_grad()
def finish_prompts(
    model, resid: Sequence[Tensor], hook_name: str, positions: Sequence[int] | None = None,
    deltas: Tensor | None = None, batch_size: int = 64,
) -> Tensor:
    """Greedy next token of each prompt, run from the residual stream after ``hook_name`` to the logits.

    With ``deltas`` [n, d], ``deltas[i]`` is added to prompt i's residual at token ``positions[i]`` first (a patch).
    Prompts are right-padded (causal: the pads never reach a real token).  -> next-token ids [n].
    """
    layer = _resid_post_layer(hook_name)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    preds = torch.empty(len(resid), dtype=torch.long)
    for s in range(0, len(resid), batch_size):
        rows = list(range(s, min(s + batch_size, len(resid))))
        width = max(len(resid[i]) for i in rows)
        x = torch.zeros(len(rows), width, resid[rows[0]].shape[-1])
        for r, i in enumerate(rows):
            x[r, : len(resid[i])] = resid[i]
            if deltas is not None:
                x[r, positions[i]] += deltas[i].float()
        logits = model(x.to(device, dtype), start_at_layer=layer + 1)
        last = torch.tensor([len(resid[i]) - 1 for i in rows], device=logits.device)
        preds[rows] = logits[torch.arange(len(rows), device=logits.device), last].argmax(-1).cpu()
    return preds


def fact_accuracy(model, hook_name: str, facts: Sequence[tuple[str, ...]] = COUNTRY_FACTS,
                  batch_size: int = 64) -> dict[str, Any]:
    """The model's own knowledge: greedy next token vs the answer's first token, per attribute.

    Returns {attribute: {"correct": [bool per country], "accuracy", "predicted": [token strings],
    "acts": [n, d] activations at the country token, "resid": per prompt [len, d], "positions"}}.
    """
    tok = model.tokenizer
    out = {}
    for a, attribute in enumerate(ATTRIBUTES, start=1):
        ids, positions = fact_prompts(tok, attribute, [f[0] for f in facts])
        resid = prompt_resid(model, ids, hook_name, batch_size)
        preds = finish_prompts(model, resid, hook_name, batch_size=batch_size)
        correct = [int(p) in answer_first_tokens(tok, f[a]) for p, f in zip(preds, facts)]
        acts = torch.stack([r[p] for r, p in zip(resid, positions)])
        out[attribute] = {"correct": correct, "accuracy": float(np.mean(correct)), "acts": acts, "resid": resid,
                          "positions": positions, "predicted": [tok.decode([int(p)]) for p in preds]}
    return out


def between_class_variance(X: Tensor, classes: Sequence[Any]) -> Tensor:
    """Σ_c n_c ‖μ_c − μ‖² / n per column: how much of each column the class explains.  X [n, m] -> [m]."""
    X = X.float()
    mu = X.mean(0)
    total = torch.zeros(X.shape[1])
    for c in sorted(set(classes), key=str):
        rows = [i for i, k in enumerate(classes) if k == c]
        total += len(rows) * (X[rows].mean(0) - mu).pow(2)
    return total / len(X)


def between_class_basis(X: Tensor, classes: Sequence[Any], n: int) -> Tensor:
    """The top-n directions of the class means' spread (PCA of the centred class means), a multi-class DiM.
    X [n_rows, d] -> orthonormal columns [d, min(n, rank)]."""
    X = X.float()
    means = torch.stack([X[[i for i, k in enumerate(classes) if k == c]].mean(0) for c in sorted(set(classes), key=str)])
    means = means - X.mean(0)
    _, S, Vh = torch.linalg.svd(means, full_matrices=False)
    rank = int((S > S[0] * 1e-6).sum()) if len(S) else 0
    return Vh[: min(n, rank)].T


def patch_delta(base: Tensor, source: Tensor, method: str, sae=None, latents: Sequence[int] = (),
                basis: Tensor | None = None) -> Tensor:
    """What to add to the base activations [n, d] to carry part of the source's [n, d] over.

    "latents": (z_src − z_base) on ``latents`` through the decoder (the base keeps everything else, its reconstruction
    error included); "subspace": the difference projected on ``basis`` [d, r]; "full": source − base.
    """
    if method == "full":
        return source.float() - base.float()
    if method == "subspace":
        B = basis.float()
        return (source.float() - base.float()) @ B @ B.T
    if method == "latents":
        zb, zs = encode_all(sae, base.float()), encode_all(sae, source.float())
        return latent_contribution(zs - zb, sae.W_dec.cpu(), latents)
    raise ValueError(f"unknown patch method {method!r}")


def ravel_pairs(countries: Sequence[int], facts: Sequence[tuple[str, ...]], attribute: str, other: str,
                max_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """Ordered pairs (base, source) of country indices whose ``attribute`` and ``other`` answers both differ.

    Both must differ so that "now says the source's capital" and "still says the base's continent" are different
    outcomes from "copied the whole country". At most ``max_pairs`` (seeded sample)."""
    a, o = 1 + ATTRIBUTES.index(attribute), 1 + ATTRIBUTES.index(other)
    pairs = [(i, j) for i in countries for j in countries
             if i != j and facts[i][a] != facts[j][a] and facts[i][o] != facts[j][o]]
    random.Random(seed).shuffle(pairs)
    return sorted(pairs[:max_pairs])


RAVEL_MAX_FVU = 0.5  # an SAE must explain at least half the variance at the country token to be patched


@torch.no_grad()
def country_token_fvu(saes: dict[str, Any], known: dict[str, Any], attributes: Sequence[str]) -> dict[str, float]:
    """FVU Σ‖x − x̂‖² / Σ‖x − x̄‖² of each SAE on the country-token activations of the attributes' prompts."""
    from absae_lib.metrics import fvu

    x = torch.cat([known[a]["acts"] for a in attributes])  # [n_countries · n_attributes, d]
    out = {}
    for name, sae in saes.items():
        recon = sae(x.to(next(sae.parameters()).device).float()).recon.float().cpu()
        out[name] = fvu(x, recon)
    return out


# Which other attribute must stay put when one is patched.
ISOLATION_PARTNER = {"capital": "continent", "continent": "capital", "language": "continent"}


def ravel(
    model, hook_name: str, saes: dict[str, Any], known: dict[str, Any], attributes: Sequence[str],
    facts: Sequence[tuple[str, ...]] = COUNTRY_FACTS, ns: Sequence[int] = (8,), max_pairs: int = 20, seed: int = 0,
    batch_size: int = 64, targets: Sequence[str] | None = None, max_fvu: float = RAVEL_MAX_FVU,
) -> dict[str, Any]:
    """RAVEL-style cause / isolation scores for the SAEs, a multi-class DiM subspace and the whole residual.

    A latent patch can only carry what the SAE reconstructs: whatever sits in its error stays with the base country.
    So an SAE is patched only where it reconstructs the country token, FVU < ``max_fvu`` at that token and layer
    (:func:`country_token_fvu`); the others are listed under "not_measurable" with their FVU, not scored. With no
    known attribute, or only one (isolation needs a second), nothing is patched and "skipped" says why.

    Only countries the model answers correctly on every attribute in ``attributes`` are used; they are split in two
    halves (seeded): the first selects, the second is patched. Selection for attribute t: codes at the country token
    in the prompts of every attribute (so a latent must track t across contexts), and the latents with the largest
    :func:`between_class_variance` for t's values (capital: one class per country). The DiM-like baseline patches the
    top-n directions spanned by the class means (:func:`between_class_basis`); "full" copies the whole residual at
    the country token (cause should be high, isolation low: it moves the whole country). Every SAE is also patched on
*all* its latents ("all": the whole reconstruction moves, the base keeps only its SAE error), the most any selection
of latents can do.

    For a pair (base A, source B) whose t answers and whose partner-attribute answers differ, the patch is applied at
    A's country token in t's prompt (cause: does the model now give B's t?) and in the partner's prompt
    (isolation: does it still give A's partner answer?). Score = (cause + isolation) / 2.

    Args:
        known: :func:`fact_accuracy`'s output.
        attributes: the attributes the model knows well enough to test.
        targets: the attributes to patch (default: all of ``attributes``); isolation may use any of ``attributes``.

    Returns:
        {"select_countries", "eval_countries", "skipped" (None, or why nothing was patched), "max_fvu",
         "fvu": {name: FVU at the country token}, "not_measurable": {name: reason},
         "targets": {t: {"partner", "n_pairs", "methods": {method: {n or "all": {"cause", "isolation", "score"}}}}}}.
    """
    tok = model.tokenizer
    attributes = list(attributes)
    fvu = country_token_fvu(saes, known, attributes or ATTRIBUTES)
    not_measurable = {name: f"the SAE does not reconstruct the country token (FVU {f:.2f} ≥ {max_fvu} at "
                            f"{hook_name}): a latent patch would leave most of the country in the error term"
                      for name, f in fvu.items() if not f < max_fvu}
    saes = {name: sae for name, sae in saes.items() if name not in not_measurable}
    out: dict[str, Any] = {"select_countries": [], "eval_countries": [], "skipped": None, "max_fvu": max_fvu,
                           "fvu": fvu, "not_measurable": not_measurable, "targets": {}}
    if len(attributes) < 2:
        out["skipped"] = ("the model knows no attribute well enough to test" if not attributes else
                          f"the model knows only one attribute ({attributes[0]}) well enough; isolation needs a second")
        return out
    col = {a: 1 + ATTRIBUTES.index(a) for a in ATTRIBUTES}
    ok = [i for i in range(len(facts)) if all(known[a]["correct"][i] for a in attributes)]
    random.Random(seed).shuffle(ok)
    select, evaluate = sorted(ok[: len(ok) // 2]), sorted(ok[len(ok) // 2:])
    out["select_countries"] = [facts[i][0] for i in select]
    out["eval_countries"] = [facts[i][0] for i in evaluate]
    if len(select) < 2 or len(evaluate) < 2:
        out["skipped"] = f"only {len(ok)} countries are known on every tested attribute; RAVEL needs at least 4"
        return out
    X_sel = torch.cat([known[a]["acts"][select] for a in attributes])
    answers = {(i, a): answer_first_tokens(tok, facts[i][col[a]]) for i in range(len(facts)) for a in ATTRIBUTES}
    codes_sel = {name: encode_all(sae, X_sel) for name, sae in saes.items()}
    for t in (attributes if targets is None else [a for a in targets if a in attributes]):
        partner = ISOLATION_PARTNER[t] if ISOLATION_PARTNER[t] in attributes else next(
            (a for a in attributes if a != t), None)
        if partner is None:
            continue
        classes = [facts[i][col[t]] for i in select] * len(attributes)
        pairs = [(a, b) for a, b in ravel_pairs(evaluate, facts, t, partner, max_pairs, seed)
                 if not answers[(a, t)] & answers[(b, t)] and not answers[(a, partner)] & answers[(b, partner)]]
        if not pairs:
            out["targets"][t] = {"partner": partner, "n_pairs": 0, "methods": {}}
            continue
        ranked = {name: between_class_variance(c, classes).argsort(descending=True).tolist()
                  for name, c in codes_sel.items()}

        def evaluate_patch(method: str, **kw) -> dict[str, float]:
            scores = {}
            for attribute, want in ((t, "source"), (partner, "base")):
                k = known[attribute]
                base = torch.stack([k["acts"][a] for a, _ in pairs])
                source = torch.stack([k["acts"][b] for _, b in pairs])
                delta = patch_delta(base, source, method, **kw)
                preds = finish_prompts(model, [k["resid"][a] for a, _ in pairs], hook_name,
                                       [k["positions"][a] for a, _ in pairs], delta, batch_size)
                hits = [int(p) in answers[(b if want == "source" else a, attribute)] for p, (a, b) in zip(preds, pairs)]
                scores["cause" if want == "source" else "isolation"] = float(np.mean(hits))
            scores["score"] = (scores["cause"] + scores["isolation"]) / 2
            return scores

        methods: dict[str, dict[Any, dict[str, float]]] = {"full": {"all": evaluate_patch("full")}, "dim": {}}
        for n in ns:
            methods["dim"][n] = evaluate_patch("subspace", basis=between_class_basis(X_sel, classes, n))
        for name, sae in saes.items():
            methods[name] = {n: evaluate_patch("latents", sae=sae, latents=ranked[name][:n]) for n in ns}
            methods[name]["all"] = evaluate_patch("latents", sae=sae, latents=range(sae.cfg.d_sae))
        out["targets"][t] = {"partner": partner, "n_pairs": len(pairs), "methods": methods}
    return out

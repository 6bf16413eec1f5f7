"""Chapter 4's reconstruction study: which SAEs it trains, in the order that matters most.

Every SAE is a :func:`absae_lib.pipeline.study_config` run (``s.study_d_sae`` latents, ``s.study_steps`` steps,
held-out curve in its history), cached like every other SAE of the book:

    headline      at k = s.k, seeds s.seeds: TopK, AbsTopK and JumpReLU (the paper's three); ReLU and BatchTopK on
                  the first seed.  ReLU and JumpReLU are calibrated to L0 = k (pipeline.matched_sae), BatchTopK's
                  threshold is set from its final weights.
    normalisation TopK and AbsTopK, first seed, under both input normalisations ("global", "per_token").
    sweep         TopK and AbsTopK at every k in s.k_sweep (first seed; the headline seeds give the noise band).
                  ReLU, JumpReLU and BatchTopK only at the headline k (SWEPT says why).
    unrolled      the AbsTopK prox unrolled T = 2 and 3 times (tied), and T = 2 untied, at k = s.k: beyond the paper.

``python -m absae_lib.study --profile cpu`` trains them all (chapters 3 and 4 then only read the cache).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from absae_lib import atomic, book, digest, intervals, metrics, pipeline
from absae_lib.paths import cache_dir
from absae_lib.sae import SAE

SEEDED = ("topk", "abstopk", "jumprelu")
HEADLINE = ("standard", "jumprelu", "topk", "batchtopk", "abstopk")
# The sweep is the claim's two (BatchTopK sits at the headline k only): on two CPU cores each sweep SAE costs ~3-4
# minutes and the cold `make main` has to fit in about two hours (benchmarks/RESULTS.md §8).
SWEPT = ("topk", "abstopk")
NORMALISATIONS = ("global", "per_token")
UNROLLED = {  # display name -> SAEConfig fields (the AbsTopK prox, ISTA steps)
    "unrolled T=2 tied": dict(unrolled_steps=2, unrolled_tied=True),
    "unrolled T=3 tied": dict(unrolled_steps=3, unrolled_tied=True),
    "unrolled T=2 untied": dict(unrolled_steps=2, unrolled_tied=False),  # later steps reuse W_enc (LISTA-style)
}


class Trained(NamedTuple):
    sae: SAE
    history: list[dict]
    calibration: Any = None  # ReLU / JumpReLU: the absae_lib.calibrate.Calibration that matched its L0


def sae(s: book.Settings, architecture: str, k: int | None = None, seed: int | None = None,
        normalization: str | None = None) -> Trained:
    """One study SAE: k-sparse variants as configured, ReLU and JumpReLU calibrated to L0 = k."""
    if architecture in pipeline.CALIBRATION:
        found = pipeline.matched_sae(s, architecture, k, seed=seed, normalization=normalization)
        return Trained(found.sae, found.history, found)
    config = pipeline.study_config(s, architecture, k, seed=seed, normalization=normalization)
    return Trained(*pipeline.trained(s, config))


def headline_runs(s: book.Settings) -> list[tuple[str, int]]:
    """(architecture, seed) of the headline comparison at k = s.k."""
    return [(a, seed) for a in HEADLINE for seed in (s.seeds if a in SEEDED else s.seeds[:1])]


def unrolled(s: book.Settings, name: str, k: int | None = None) -> Trained:
    """The unrolled encoder ``name`` (a key of :data:`UNROLLED`) at k (default s.k), first seed."""
    config = pipeline.study_config(s, "unrolled", k, sae_kwargs=dict(UNROLLED[name], unrolled_prox="abstopk"))
    return Trained(*pipeline.trained(s, config))


def jobs(s: book.Settings) -> list[tuple[str, int, int, str]]:
    """Every (architecture, k, seed, normalisation) of the study, once each, the claims' SAEs first."""
    other = {"global": "per_token", "per_token": "global"}[s.study_normalization]
    runs = [(a, s.k, s.seeds[0], n) for n in (s.study_normalization, other) for a in ("topk", "abstopk")]
    runs += [(a, s.k, seed, s.study_normalization) for a, seed in headline_runs(s)]
    runs += [(a, k, s.seeds[0], s.study_normalization) for k in s.k_sweep for a in SWEPT]
    return list(dict.fromkeys(runs))


def train_all(s: book.Settings) -> None:
    """Train (or find in the cache) every SAE of the study, the claims' SAEs first."""
    for a, k, seed, n in jobs(s):
        start = time.perf_counter()
        sae(s, a, k, seed=seed, normalization=n)
        print(f"{a} k {k} seed {seed} {n}: {time.perf_counter() - start:.0f} s", flush=True)
    for name in UNROLLED:
        start = time.perf_counter()
        unrolled(s, name)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


# --- scoring and verdicts -------------------------------------------------------------------------------------------

RECONSTRUCTION = ("l0", "nmse", "nmse_typical", "nmse_per_token", "explained_variance", "dead_fraction",
                  "fraction_negative")
LOSS = ("loss_recovered", "delta_ce", "kl")
HIGHER_IS_BETTER = {"loss_recovered": True, "explained_variance": True} | {
    key: False for key in ("nmse", "nmse_typical", "nmse_per_token", "delta_ce", "kl")}
_STATISTIC = {"loss_recovered": "loss_recovered", "delta_ce": "delta_loss", "kl": "kl"}  # names in intervals
# What a cached score was computed by (this file, the metrics and the SAE's forward), as imported.
_SCORE_CODE = digest.source_digest("study", "metrics", "sae", "prox", "sparse")


def score(s: book.Settings, saes: dict[Any, SAE], x_eval: Tensor, typical: Tensor, model: Any,
          tokens: Tensor, cache: bool = True) -> dict[Any, dict]:
    """Held-out scores of several SAEs, {key: scores}: reconstruction on ``x_eval`` [n, d] (``nmse_typical`` on the
    rows where ``typical`` [n] is True) and the spliced-in loss on ``tokens`` [n_seq, seq_len] with its
    per-sequence sums (the clean and zero-ablated runs shared, :func:`absae_lib.metrics.spliced_losses`).

    With ``cache`` each SAE's scores are kept in the cache folder ``scores/``, keyed by the SAE's weights and config,
    the model's weights, the hook, ``x_eval``, ``typical``, ``tokens``, the devices, torch's and TransformerLens's
    versions and the scoring code's source as imported (:mod:`absae_lib.digest`), so ``python -m absae_lib.compare``
    and chapter 4 score a shared SAE once and a re-run reads them.  The numbers are the same either way: an SAE's
    scores do not depend on which SAEs share the call.  (The key does not see hooks added to ``model`` by hand: pass
    ``cache=False`` for a model carrying any.)
    """
    paths = _score_paths(s, saes, x_eval, typical, model, tokens) if cache else {}
    out = {key: _read_scores(paths[key]) for key in saes if cache and paths[key].exists()}
    todo = {key: sae for key, sae in saes.items() if key not in out}
    if todo:
        losses = metrics.spliced_losses(model, todo, tokens, s.hook_name, progress=False, per_sequence=True)
    for key, sae in todo.items():
        rec = metrics.evaluate_reconstruction(sae, x_eval, progress=False)
        scores = {name: rec[name] for name in RECONSTRUCTION if name in rec}
        scores["nmse_typical"] = metrics.evaluate_reconstruction(sae, x_eval[typical], progress=False)["nmse"]
        ce = losses[key]
        scores |= {"loss_recovered": ce["loss_recovered"], "delta_ce": ce["delta_loss"], "kl": ce["kl"],
                   "ce_clean": ce["ce_clean"], "ce_zero": ce["ce_zero"], "per_sequence": ce["per_sequence"]}
        out[key] = scores
        if cache:
            per_sequence = {name: np.asarray(v).tolist() for name, v in scores["per_sequence"].items()}
            atomic.write_json(paths[key], scores | {"per_sequence": per_sequence})
    return {key: out[key] for key in saes}


def _score_paths(s: book.Settings, saes: dict[Any, SAE], x_eval: Tensor, typical: Tensor, model: Any,
                 tokens: Tensor) -> dict[Any, Path]:
    """{key: the cache file of that SAE's :func:`score`}: one digest of the shared inputs, one per SAE."""
    shared = digest.json_digest({
        "model": digest.module_digest(model), "device": str(model.W_U.device), "hook": s.hook_name,
        "data": digest.tensor_digest(x_eval, typical, tokens), "code": _SCORE_CODE, "versions": digest.versions()})
    folder = cache_dir("scores")
    own = {key: [digest.module_digest(sae), str(sae.W_enc.device), sae.cfg.to_dict()] for key, sae in saes.items()}
    return {key: folder / f"{digest.json_digest([shared, own[key]])}.json" for key in saes}


def _read_scores(path: Path) -> dict:
    scores = atomic.read_json(path, "cached held-out scores", "delete it to score that SAE again")
    scores["per_sequence"] = {name: np.asarray(v, dtype=np.float64) for name, v in scores["per_sequence"].items()}
    return scores


def mean_per_sequence(scores: list[dict]) -> dict:
    """The per-sequence loss sums averaged over seeds (same sequences): what a seed-averaged SAE would score."""
    keys = scores[0]["per_sequence"].keys()
    return {key: np.mean([np.asarray(sc["per_sequence"][key], dtype=np.float64) for sc in scores], axis=0)
            for key in keys}


def summarize(scores: list[dict]) -> dict:
    """Seeds of one architecture -> {metric: mean, metric_std: std over seeds (nan for one seed), metric_ci: the
    95% bootstrap interval over held-out sequences of the seed-averaged loss metrics, n_seeds}."""
    out = intervals.summarize_seeds(scores, keys=RECONSTRUCTION + LOSS)
    pooled = intervals.loss_intervals(mean_per_sequence(scores))
    for key, name in _STATISTIC.items():
        out[f"{key}_ci"] = pooled[f"{name}_ci"]
    out["n_seeds"] = len(scores)
    return out


def compare_seeded(a: list[dict], b: list[dict], metric: str, level: float = 0.95,
                   l0_tolerance: float = 0.1) -> dict:
    """Is ``a`` better than ``b`` on ``metric``?  a, b: scores of the same seeds (same order), same held-out data.

    Two intervals of the difference a − b: over seeds (Student t of the paired seed differences) and, for the loss
    metrics, over held-out sequences (paired bootstrap of the seed-averaged sums).  The verdict
    (:func:`absae_lib.intervals.compare`) is "reproduced" or "contradicted" only when every interval says so, else
    "tie (within noise)".  When b's mean held-out L0 differs from a's by more than ``l0_tolerance`` (relative to a's)
    the sparsity is not matched and the verdict is "not comparable" (the intervals are still reported).
    """
    higher = HIGHER_IS_BETTER[metric]
    mean_a, mean_b = (float(np.mean([sc[metric] for sc in side])) for side in (a, b))
    seed_ci = intervals.seed_difference_ci([sc[metric] for sc in a], [sc[metric] for sc in b], level)
    verdicts = [intervals.compare(mean_a, mean_b, seed_ci, higher)]
    out = {"metric": metric, "a": mean_a, "b": mean_b, "difference": mean_a - mean_b, "seed_ci": list(seed_ci)}
    if metric in _STATISTIC:
        name = _STATISTIC[metric]
        pa, pb = mean_per_sequence(a), mean_per_sequence(b)
        sequence_ci = intervals.paired_difference_ci(pa, pb, name, level=level)
        point_a, point_b = intervals.loss_intervals(pa)[name], intervals.loss_intervals(pb)[name]
        verdicts.append(intervals.compare(point_a, point_b, sequence_ci, higher))
        out["sequence_ci"] = list(sequence_ci)
    out["verdict"] = verdicts[0] if len(set(verdicts)) == 1 else "tie (within noise)"
    l0_a, l0_b = (float(np.mean([sc["l0"] for sc in side])) for side in (a, b))
    out["l0"] = [l0_a, l0_b]
    if abs(l0_b / l0_a - 1) > l0_tolerance:  # the rival's L0 relative to a's (a's is the target k)
        out["verdict"] = "not comparable"
    return out


def choose_normalization(a: dict[str, list[dict]], rival: str = "global", default: str = "per_token") -> str:
    """The book's rule for its input normalisation: ``default`` (the authors' per-token scaling), unless ``rival``
    gives a lower spliced-in ΔCE for every architecture, each with a paired sequence interval excluding 0.

    a: {architecture: [score under default, score under rival]} (one seed each)."""
    for default_score, rival_score in a.values():
        ci = intervals.paired_difference_ci(default_score["per_sequence"], rival_score["per_sequence"], "delta_loss")
        if not ci[0] > 0:  # the rival is not measurably better here
            return default
    return rival


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (see absae_lib.book)")
    args = parser.parse_args(argv)
    train_all(book.settings(args.profile))


if __name__ == "__main__":
    main()

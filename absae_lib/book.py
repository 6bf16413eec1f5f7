"""What the book's chapters share: run profiles, and a record of the numbers each chapter measures.

Every notebook's ``parameters`` cell sets ``profile`` (papermill can override it, and so can ``$ABSAE_PROFILE``):

    smoke   CI: a few seconds of data, tiny SAEs; proves the chapter runs and its numbers are sane
    cpu     the book's default: the embedded SmolLM2-135M on a laptop CPU (the committed outputs)
    gpu     Colab: any TransformerLens model, more tokens, bigger dictionaries

A chapter calls :func:`record` with the numbers it found; CI re-checks them after a smoke run and the summary
chapter reads them from ``notebooks/results/<chapter>.<profile>.json``.

``$ABSAE_SHRINK=1`` runs any profile at toy sizes with the same code paths (:func:`shrunk`): the Colab rehearsal
(tests/test_colab.py) runs the gpu profile so, on a toy GPT-2, in minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from absae_lib import atomic
from absae_lib.paths import cache_dir

REPO_URL = "https://github.com/absae/absae"
# The records committed with the book (the `cpu` run, and `gpu` ones where a GPU run was committed).
# $ABSAE_COMMITTED_RESULTS_URL replaces it (a mirror, or file:// of a checkout's notebooks/results, as the Colab
# rehearsal does offline).
COMMITTED_RESULTS_URL = "https://raw.githubusercontent.com/absae/absae/main/notebooks/results"
SHRINK_ENV = "ABSAE_SHRINK"


@dataclass(frozen=True)
class Settings:
    """One profile's settings; chapters read these instead of hard-coding sizes."""

    profile: str
    model_name: str = "smollm2-135m"
    layer: int = 15
    corpus: str = "brown"  # "brown" (offline) or "hub:<dataset name>" (Colab)
    n_tokens: int = 1_000_000  # training activations
    n_eval_tokens: int = 50_000  # held-out activations for reconstruction metrics
    storage_dtype: str = "float32"  # of the on-disk activation cache ("bfloat16" halves it)
    seq_len: int = 128
    d_sae: int = 4608  # 8× the model width for SmolLM2 (576)
    k: int = 32
    batch_size: int = 4096
    lr: float = 1e-3
    ce_sequences: int = 64  # sequences for the spliced-in CE loss
    k_sweep: tuple[int, ...] = (8, 16, 32, 64)
    seed: int = 0
    device: str | None = None
    # Chapter 4's reconstruction study (SAEs trained to a plateau, matched L0, several seeds) has its own width and
    # length: on 2 CPU cores a 4608-latent ReLU/JumpReLU step cost 1.4-2 s dense, a 1152-latent one 0.3 s (measured;
    # their sparse steps are ~3× cheaper now, benchmarks/RESULTS.md §7).
    study_d_sae: int = 1152
    # Steps per study SAE: 6 passes over n_tokens at batch_size, where TopK, AbsTopK and ReLU meet the plateau rule
    # (the last 20% of steps improve held-out NMSE by < 2%, benchmarks/RESULTS.md §6); chapter 3 shows the curves.
    study_steps: int = 1464
    # Architectures that need more passes than that to plateau, as a multiple of study_steps: BatchTopK improved by
    # 2.06% over the last 20% of six passes and 1.74% over nine; JumpReLU (L0 weight 0.5) by 2.84% over six and, at
    # the weight matched to L0 = k, 2.24% over nine, its L0 still creeping up (RESULTS.md §6-§7): it trains twelve.
    study_step_factors: tuple[tuple[str, float], ...] = (("batchtopk", 1.5), ("jumprelu", 2.0))
    study_normalization: str = "per_token"  # chosen in chapter 4 from the measured comparison (see there)
    seeds: tuple[int, ...] = (0, 1, 2)
    # True for a run at toy sizes ($ABSAE_SHRINK, see shrunk): its records say so, and must never stand in for the
    # profile's. Left out of the repr, which the chapters show.
    shrunk: bool = field(default=False, repr=False)

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    def study_steps_for(self, architecture: str) -> int:
        """Training steps of a study SAE of ``architecture``: ``study_steps``, times its study_step_factors entry."""
        factor = dict(self.study_step_factors).get(architecture, 1.0)
        return max(1, round(self.study_steps * factor))


PROFILES: dict[str, Settings] = {
    "smoke": Settings("smoke", n_tokens=40_960, n_eval_tokens=8_192, d_sae=1152, k=16, batch_size=1024,
                      ce_sequences=8, k_sweep=(8, 16), study_d_sae=576, study_steps=120, seeds=(0, 1)),
    "cpu": Settings("cpu"),
    # Sized so each chapter finishes in ≤ 20 minutes on a free Colab T4 from a fresh runtime (estimated from operation
    # counts by absae_lib.gpu_budget; no GPU has measured it): 3.5M tokens in bf16 (5.7 GB of disk, and of page cache
    # while training) rather than 8M in fp32 (25 GB on a 12.7 GB-RAM runtime); the study at 8× the model width for
    # three passes for every architecture (the cpu study's six, nine for BatchTopK and JumpReLU, would not fit chapter
    # 4's 20 minutes: it trains ~30 SAEs and ReLU/JumpReLU calibration searches), so chapter 3's plateau check says
    # whether its SAEs converged.
    "gpu": Settings("gpu", model_name="gpt2-small", layer=6, corpus="hub:NeelNanda/pile-10k", n_tokens=3_500_000,
                    n_eval_tokens=200_000, storage_dtype="bfloat16", d_sae=12_288, k=64, lr=5e-4, ce_sequences=256,
                    k_sweep=(32, 64, 128, 256), study_d_sae=6_144, study_steps=2_563, study_step_factors=()),
}


# The toy sizes of shrunk(), for a model of width 64 (the Colab rehearsal's): 1-2 s per study SAE on 2 CPU cores.
# 4,352 held-out tokens are 34 held-out sequences of 128, as many as chapter 7's gpu sizes read (32). The chapter-3
# SAEs keep 512 latents, so that chapter 5's random-dictionary null stays near its closed form (exercise 5.2 checks it
# within 20%; with 256 the closed form is ~21% off); the study's ~35 SAEs have 256.
SHRUNK_SIZES = dict(n_tokens=16_384, n_eval_tokens=4_352, batch_size=1024, d_sae=512, k=16, ce_sequences=16,
                    study_d_sae=256)


def shrunk(s: Settings) -> Settings:
    """``s`` at toy sizes, with its model, layer, corpus and profile name (so every profile-dependent code path is the
    one ``s`` takes).

    The sizes are SHRUNK_SIZES, and the first two of ``s.seeds`` (two are what a seed interval needs). What is
    relative stays relative: ``k_sweep`` keeps its ratios to ``k`` (gpu's (32, 64, 128, 256) at k = 64 becomes
    (8, 16, 32, 64) at k = 16) and ``study_steps`` its passes over the training tokens (cpu's 6 passes are 96
    steps, gpu's 3 are 48).
    """
    k = SHRUNK_SIZES["k"]
    passes = s.study_steps * s.batch_size / s.n_tokens
    return replace(s, **SHRUNK_SIZES, k_sweep=tuple(max(1, round(x * k / s.k)) for x in s.k_sweep),
                   study_steps=max(1, round(passes * SHRUNK_SIZES["n_tokens"] / SHRUNK_SIZES["batch_size"])),
                   seeds=s.seeds[:2], shrunk=True)


def shrink_requested() -> bool:
    """``$ABSAE_SHRINK`` is set to something other than "", "0", "false" or "no"."""
    return os.environ.get(SHRINK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def default_profile() -> str:
    """``$ABSAE_PROFILE`` if set; else "gpu" on a Colab runtime with a CUDA GPU (what a reader who opened a badge and
    picked a GPU wants); else "cpu" (the book's embedded model)."""
    if os.environ.get("ABSAE_PROFILE"):
        return os.environ["ABSAE_PROFILE"]
    if on_colab():
        import torch

        if torch.cuda.is_available():
            return "gpu"
    return "cpu"


def settings(profile: str | None = None, **overrides: Any) -> Settings:
    """The settings of ``profile`` (default :func:`default_profile`), with any non-None override applied.

    With ``$ABSAE_SHRINK`` set, the profile is :func:`shrunk` first (the overrides still win).
    """
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    base = shrunk(PROFILES[profile]) if shrink_requested() else PROFILES[profile]
    return replace(base, **{key: value for key, value in overrides.items() if value is not None})


def results_dir() -> Path:
    """Where chapters write their numbers: ``$ABSAE_RESULTS``, else ``results/`` beside the notebook."""
    folder = Path(os.environ.get("ABSAE_RESULTS", "results"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def record(chapter: str, s: Settings, **numbers: Any) -> Path:
    """Merge ``numbers`` into ``<results>/<chapter>.<profile>.json`` (with the settings that produced them)."""
    path = results_dir() / f"{chapter}.{s.profile}.json"
    # Read-merge-write under a lock (two chapters, or a chapter and its re-run, may record at once), and written
    # atomically: a crash never leaves half a record.
    # The lock file lives in the cache, not beside the (committed) results.
    lock = cache_dir("locks") / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with atomic.file_lock(lock, what=f"the record {path}"):
        data = atomic.read_json(path, "record", "delete it and re-run the chapter") if path.exists() else {}
        data.update(_plain(numbers))
        data["settings"] = _plain(asdict(s))
        atomic.write_json(path, data, indent=2, sort_keys=True)
    return path


def load_record(chapter: str, profile: str, folder: str | Path | None = None) -> dict[str, Any]:
    """The numbers a chapter recorded (``{}`` if it has not run at that profile)."""
    path = Path(folder or results_dir()) / f"{chapter}.{profile}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def committed_results_url() -> str:
    """Where the committed records are read from: ``$ABSAE_COMMITTED_RESULTS_URL``, else COMMITTED_RESULTS_URL."""
    return (os.environ.get("ABSAE_COMMITTED_RESULTS_URL") or COMMITTED_RESULTS_URL).rstrip("/")


def _fetch_committed(chapter: str, profile: str, timeout: float) -> dict[str, Any] | None:
    """The record committed in the repository, or None if there is none at that profile (HTTP 404, or no such file
    under a file:// URL) or only a shrunk one."""
    import urllib.error
    import urllib.request

    url = f"{committed_results_url()}/{chapter}.{profile}.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            found = json.loads(response.read().decode())
        # A toy-size run ($ABSAE_SHRINK) committed by mistake must never stand in for the profile's numbers.
        return None if found.get("settings", {}).get("shrunk") else found
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):  # file:// says "no such record" this way
            return None
        raise


def load_records(chapters: list[str], profile: str, folder: str | Path | None = None, fetch: bool | None = None,
                 timeout: float = 10.0) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every chapter's record at ``profile``, and where each one came from.

    A record of this runtime (``folder``, default :func:`results_dir`) comes first.  For a chapter without one, and
    with ``fetch`` (default: on Colab, where a fresh runtime has no records of its own), the record committed in the
    repository is read over HTTPS: at ``profile`` if one was committed, else the book's ``cpu`` record.

    Returns ({chapter: record or {}}, {chapter: source}), a source being "this runtime", "committed (<profile>)",
    "committed (cpu; none at <profile>)" or "missing" (with the reason when the download failed).
    """
    fetch = on_colab() if fetch is None else fetch
    records: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for chapter in chapters:
        records[chapter] = load_record(chapter, profile, folder)
        sources[chapter] = "this runtime" if records[chapter] else "missing"
        if records[chapter] or not fetch:
            continue
        try:
            for candidate in dict.fromkeys((profile, "cpu")):
                found = _fetch_committed(chapter, candidate, timeout)
                if found:
                    records[chapter] = found
                    sources[chapter] = (f"committed ({candidate})" if candidate == profile
                                        else f"committed ({candidate}; none at {profile})")
                    break
        except OSError as err:  # no network, DNS, timeout (urllib's URLError is an OSError)
            sources[chapter] = f"missing (could not download the committed record: {err})"
    return records, sources


def on_colab() -> bool:
    import sys

    return "google.colab" in sys.modules

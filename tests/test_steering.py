"""Steering hooks (activation addition, latent clamping), steered generation and the success measures, on a tiny
random model (the hooks' algebra does not depend on the model being trained)."""

import math

import pytest
import torch

from absae_lib import steering
from absae_lib.sae import SAE
from absae_lib.steering import (
    HARMFUL_INSTRUCTIONS,
    HARMLESS_INSTRUCTIONS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SENTIMENT_PROMPTS,
    CachedPrefix,
    Poles,
    axis_hook,
    chat_prompts,
    clamp_latent_hook,
    concept_poles,
    generate_conditions,
    generate_steered,
    identity_hook,
    is_refusal,
    logprob_margin,
    next_token_logprobs,
    perplexity,
    refusal_dataset,
    refusal_rate,
    stacked_hooks,
    steering_hook,
    target_logprob_shift,
    vader_score,
)

HOOK = "blocks.0.hook_resid_post"
PROMPTS = ["The weather today is", "My favourite food", "Once upon a time there was a small"]


@pytest.fixture(scope="module")
def tiny(make_tiny_llama):
    """A 2-layer random Llama-like HookedTransformer with the SmolLM2 tokenizer (no BOS), shared by the module."""
    return make_tiny_llama()


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
    moved = steering_hook(d, 2.0)(x)
    # position 0 (the attention sink) is never pushed; every other position is
    assert torch.equal(moved[:, 0], x[:, 0])
    torch.testing.assert_close(moved[:, 1:] - x[:, 1:], (2.0 * d).expand(2, 5, 4))
    assert torch.equal(steering_hook(d, 2.0, slice(0, 2))(x)[:, 0], x[:, 0])
    assert torch.equal(steering_hook(d, 2.0, slice(0, 1))(x), x)  # only position 0 asked for: nothing to do
    last = steering_hook(d, 2.0, "last")(x)
    assert torch.equal(last[:, :-1], x[:, :-1]) and torch.allclose(last[:, -1] - x[:, -1], 2.0 * d.expand(2, 4))
    sliced = steering_hook(d, 2.0, slice(1, 3))(x)
    assert torch.equal(sliced[:, [0, 3, 4, 5]], x[:, [0, 3, 4, 5]]) and not torch.equal(sliced[:, 1:3], x[:, 1:3])
    one = torch.randn(2, 1, 4)  # a cached generation step: a slice of the prompt does not touch it, "all" does
    assert torch.equal(steering_hook(d, 2.0, slice(1, 3))(one), one)
    torch.testing.assert_close(steering_hook(d, 2.0)(one) - one, (2.0 * d).expand(2, 1, 4))
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
    # decode(z') − decode(z) = (c − z_i)·d_i, and that is all that was added (the SAE error x − x̂ is kept);
    # position 0 is left alone.
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close((out - x)[:, 1:], (sae.decode(z_clamped) - sae.decode(z))[:, 1:], rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close((out - x)[:, 1:], ((value - z[..., latent]).unsqueeze(-1) * sae.W_dec[latent])[:, 1:],
                               rtol=1e-5, atol=1e-5)
    # Only positions selected are touched.
    last = clamp_latent_hook(sae, latent, value, "last")(x)
    assert torch.equal(last[:, :-1], x[:, :-1])
    with pytest.raises(ValueError, match="latent"):
        clamp_latent_hook(sae, 64, 1.0)


def test_clamp_latent_hook_computes_on_the_saes_device_and_dtype():
    torch.manual_seed(0)
    sae = SAE(32, 64, "abstopk", k=6).double()  # another dtype stands in for another device
    x = torch.randn(2, 5, 32)
    out = clamp_latent_hook(sae, 9, 2.0)(x)
    assert out.dtype == x.dtype and out.device == x.device
    z = sae.encode(x.double())[..., 9]
    expected = ((2.0 - z).unsqueeze(-1) * sae.W_dec[9]).float()
    torch.testing.assert_close((out - x)[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-5)
    # An SAE on the meta device: the hook sends x there and only fails copying the (data-less) result back,
    # not with a device mismatch inside the SAE.
    with pytest.raises(NotImplementedError, match="meta"):
        clamp_latent_hook(SAE(32, 64, "abstopk", k=6).to("meta"), 9, 2.0)(x)


def test_push_norm_measures_what_a_hook_adds():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 32)
    d = torch.nn.functional.normalize(torch.randn(32), dim=0)
    lengths = torch.tensor([6, 4, 2])
    assert steering.push_norm(steering_hook(d, 3.0), x, lengths) == pytest.approx(3.0)
    # A clamp adds (c − z_i)·D_i: where the latent already fires with the other sign it pushes further than c·‖D_i‖.
    sae = SAE(32, 64, "abstopk", k=8)
    latent = int(sae.encode(x[0, 1]).abs().argmax())
    z = sae.encode(x)[..., latent]
    c = 1.0 if z[0, 1] < 0 else -1.0
    hook = clamp_latent_hook(sae, latent, c)
    keep = (torch.arange(6)[None, :] >= 1) & (torch.arange(6)[None, :] < lengths[:, None])
    expected = ((c - z).abs() * sae.W_dec[latent].norm())[keep].mean().item()
    assert steering.push_norm(hook, x, lengths) == pytest.approx(expected, rel=1e-5)
    assert steering.push_norm(hook, x, lengths) > abs(c) * sae.W_dec[latent].norm().item() * 0.99
    with pytest.raises(ValueError, match="two tokens"):
        steering.push_norm(hook, x[:, :1], torch.ones(3, dtype=torch.long))


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
    # Prompts of different lengths go in separate, unpadded batches (position 0 is every row's first token);
    # with a KV cache each later pass is one token.
    lengths = sorted({tiny.to_tokens(p, prepend_bos=False).shape[1] for p in PROMPTS})
    assert sorted(n for n in seen if n > 1) == lengths and seen.count(1) >= len(lengths)
    assert generate_steered(tiny, PROMPTS, HOOK, steering_hook(torch.randn(32), 0.0), max_new_tokens=4,
                            progress=False) == clean
    # Batched greedy generation gives what one prompt at a time gives.
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


# --- sweeps: stacked hooks, conditions, cached prefixes -------------------------------------------------------------


def test_stacked_hooks_give_each_group_its_hook():
    x = torch.randn(6, 3, 4)
    d = torch.ones(4)
    out = stacked_hooks([None, steering_hook(d, 1.0), steering_hook(d, -2.0)], group_size=2)(x)
    torch.testing.assert_close(out[:2], x[:2])
    torch.testing.assert_close(out[2:4, 1:], x[2:4, 1:] + 1.0)
    torch.testing.assert_close(out[4:, 1:], x[4:, 1:] - 2.0)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="rows"):
        stacked_hooks([None, None], group_size=2)(x)
    assert identity_hook(x) is x


def test_generate_conditions_matches_one_call_per_condition(tiny):
    direction = torch.randn(32)
    conditions = {"clean": None, "plus": steering_hook(direction, 20.0), "minus": steering_hook(direction, -20.0)}
    together = generate_conditions(tiny, PROMPTS, HOOK, conditions, max_new_tokens=4, max_batch=6, progress=False)
    assert list(together) == ["clean", "plus", "minus"]
    for name, hook in conditions.items():
        alone = generate_steered(tiny, PROMPTS, None if hook is None else HOOK, hook, max_new_tokens=4, progress=False)
        assert together[name] == alone
    assert together["plus"] != together["clean"]


@pytest.mark.parametrize("hook_name", [HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"])
def test_cached_prefix_equals_a_hooked_forward_pass(tiny, hook_name):
    texts = ["The cat sat on the mat and looked out of the window.", "Short text here.", PROMPTS[0]]
    cached = CachedPrefix(tiny, texts, hook_name, batch_size=2)
    assert len(cached) == 3
    hook = steering_hook(torch.randn(32), 3.0)
    torch.testing.assert_close(cached.next_token_logprobs(), next_token_logprobs(tiny, texts), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.next_token_logprobs(hook), next_token_logprobs(tiny, texts, hook_name, hook),
                               rtol=1e-4, atol=1e-4)
    assert cached.perplexity() == pytest.approx(perplexity(tiny, texts), rel=1e-4)
    assert cached.perplexity(hook) == pytest.approx(perplexity(tiny, texts, hook_name, hook), rel=1e-4)
    assert CachedPrefix(tiny, texts, hook_name, max_tokens=4).perplexity() == pytest.approx(
        perplexity(tiny, texts, max_tokens=4), rel=1e-4)
    with pytest.raises(ValueError, match="residual"):
        CachedPrefix(tiny, texts, "blocks.0.hook_mlp_out")


def test_logprob_margin_and_sentiment_words(tiny):
    ids = lambda words: [tiny.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]  # noqa: E731
    assert len(set(ids(POSITIVE_WORDS))) == len(POSITIVE_WORDS) and len(set(ids(NEGATIVE_WORDS))) == len(NEGATIVE_WORDS)
    assert not set(ids(POSITIVE_WORDS)) & set(ids(NEGATIVE_WORDS))
    assert len(SENTIMENT_PROMPTS) == len(set(SENTIMENT_PROMPTS)) >= 12
    logprobs = torch.full((2, len(tiny.tokenizer)), -10.0)
    logprobs[0, ids(POSITIVE_WORDS)] = -2.0
    logprobs[1, ids(NEGATIVE_WORDS)] = -4.0
    margin = logprob_margin(logprobs, tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS)
    torch.testing.assert_close(margin, torch.tensor([8.0, -6.0]))
    # The margin's change is the positive words' shift minus the negative words'.
    hook = steering_hook(torch.randn(32), 5.0)
    cached = CachedPrefix(tiny, PROMPTS, HOOK)
    change = (logprob_margin(cached.next_token_logprobs(hook), tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS)
              - logprob_margin(cached.next_token_logprobs(), tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS)).mean()
    expected = (target_logprob_shift(tiny, PROMPTS, HOOK, hook, POSITIVE_WORDS)
                - target_logprob_shift(tiny, PROMPTS, HOOK, hook, NEGATIVE_WORDS))
    assert change.item() == pytest.approx(expected, abs=1e-4)


# --- concept poles and axis hooks -----------------------------------------------------------------------------------


def test_concept_poles_signed_and_nonnegative():
    labels = torch.tensor([0, 1] * 10)
    signed = torch.zeros(20, 8)
    signed[:, 3] = torch.where(labels == 1, -2.0, 2.0)  # one latent, negative on label 1
    signed[:, 5] = labels * 1.0  # a weaker one-sided latent
    poles = concept_poles(signed, labels, signed=True)
    assert poles == Poles((3, -1), (3, 1), (-4.0, -4.0)) and poles.single
    nonneg = torch.zeros(20, 8)
    nonneg[:, 1] = labels * 3.0  # fires on label 1
    nonneg[:, 6] = (1 - labels) * 2.0  # fires on label 0
    poles = concept_poles(nonneg, labels, signed=False)
    assert poles.positive == (1, 1) and poles.negative == (6, 1) and not poles.single
    with pytest.raises(ValueError, match="signed"):
        concept_poles(signed, labels, signed=False)
    with pytest.raises(ValueError, match="both classes"):
        concept_poles(nonneg[:, :2], labels, signed=False)


def test_axis_hook_add_and_clamp():
    torch.manual_seed(0)
    sae = SAE(32, 64, "topk", k=4)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # rows of norm 0.5, as after folding an input scale
    poles = Poles((7, 1), (20, 1), (1.0, -1.0))
    x = torch.randn(2, 5, 32)
    unit = lambda i: sae.W_dec[i] / sae.W_dec[i].norm()  # noqa: E731
    rest = x[:, 1:]  # position 0 is never pushed
    torch.testing.assert_close(axis_hook(sae, poles, 0.5, 10.0)(x)[:, 1:] - rest, (5.0 * unit(7)).expand_as(rest))
    torch.testing.assert_close(axis_hook(sae, poles, -0.5, 10.0)(x)[:, 1:] - rest, (5.0 * unit(20)).expand_as(rest))
    assert axis_hook(sae, poles, 0.0, 10.0) is identity_hook
    # Clamping adds the same vector where the latent is silent.
    z = sae.encode(x)
    silent = (z[..., 7] == 0) & (torch.arange(5) >= 1)
    clamped = axis_hook(sae, poles, 0.5, 10.0, mode="clamp")(x)
    torch.testing.assert_close((clamped - x)[silent], (5.0 * unit(7)).expand(int(silent.sum()), 32), rtol=1e-4,
                               atol=1e-4)
    # A signed pole clamps to a negative code.
    signed = SAE(32, 64, "abstopk", k=4)
    hook = axis_hook(signed, Poles((3, -1), (3, 1), (-1.0, -1.0)), 0.5, 10.0, mode="clamp")
    row = signed.W_dec[3]
    added = (hook(x) - x)[:, 1:]  # (c − z_3)·row, so c = added·row/‖row‖² + z_3
    code = added @ row / row.norm() ** 2 + signed.encode(x)[:, 1:, 3]
    torch.testing.assert_close(code, torch.full((2, 4), -5.0 / row.norm().item()), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        axis_hook(sae, poles, 1.0, 1.0, mode="scale")


# --- multiple-choice facts, the gender axis, and sweeps -------------------------------------------------------------


def test_fact_choices_are_four_distinct_first_tokens_with_the_answer_among_them(tiny):
    from absae_lib.saebench import COUNTRY_FACTS

    first = lambda word: tiny.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    mc = steering.fact_choices(tiny.tokenizer, "capital", n_options=4, seed=0)
    assert len(mc) == len(COUNTRY_FACTS) and mc.options.shape == (len(COUNTRY_FACTS), 4)
    for (country, capital, *_), prompt, options, answer in zip(COUNTRY_FACTS, mc.prompts, mc.options, mc.answer):
        assert prompt.endswith(f"The capital of {country} is")
        assert len(set(options.tolist())) == 4
        assert options[answer] == first(capital.split("|")[0])
    # the right answer's place is drawn, not always the same
    assert len(set(mc.answer.tolist())) > 1
    again = steering.fact_choices(tiny.tokenizer, "capital", n_options=4, seed=0)
    assert torch.equal(again.options, mc.options) and torch.equal(again.answer, mc.answer)
    assert not torch.equal(steering.fact_choices(tiny.tokenizer, "capital", seed=1).options, mc.options)
    with pytest.raises(ValueError, match="n_options"):
        steering.fact_choices(tiny.tokenizer, "continent", n_options=9)  # six continents
    with pytest.raises(ValueError, match="attribute"):
        steering.fact_choices(tiny.tokenizer, "currency")


def test_multiple_choice_accuracy_and_subset():
    mc = steering.MultipleChoice(("a", "b", "c"), torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([0, 1, 1]))
    logprobs = torch.zeros(3, 8)
    logprobs[0, 1], logprobs[1, 3], logprobs[2, 6] = 1.0, 1.0, 1.0  # right, wrong, right
    assert mc.correct(logprobs).tolist() == [True, False, True]
    assert mc.accuracy(logprobs) == pytest.approx(2 / 3)
    kept = mc.subset(mc.correct(logprobs))
    assert kept.prompts == ("a", "c") and kept.answer.tolist() == [0, 1] and kept.accuracy(logprobs[[0, 2]]) == 1.0
    with pytest.raises(ValueError, match="rows"):
        mc.accuracy(logprobs[:2])
    with pytest.raises(ValueError, match="options"):
        steering.MultipleChoice(("a",), torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="empty"):
        mc.subset(torch.zeros(3, dtype=torch.bool))


def test_gender_words_are_distinct_single_tokens(tiny):
    ids = lambda words: [tiny.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]  # noqa: E731
    female, male = ids(steering.FEMALE_WORDS), ids(steering.MALE_WORDS)
    assert all(len(t) == 1 for t in female + male)
    assert len({t[0] for t in female + male}) == len(female) + len(male)
    assert len(steering.GENDER_PROMPTS) == len(set(steering.GENDER_PROMPTS)) >= 12


def test_sweep_axis_matches_direct_scores(tiny):
    torch.manual_seed(0)
    direction = torch.randn(32)
    judge = CachedPrefix(tiny, list(SENTIMENT_PROMPTS[:4]), HOOK)
    texts = CachedPrefix(tiny, ["The cat sat on the mat and looked out of the window.", PROMPTS[2]], HOOK)
    mc = steering.fact_choices(tiny.tokenizer, "capital")
    mc = steering.MultipleChoice(mc.prompts[:6], mc.options[:6], mc.answer[:6])
    choice_prefix = CachedPrefix(tiny, list(mc.prompts), HOOK)
    hooks = {"dir": lambda a: steering_hook(direction, a), "flip": lambda a: steering_hook(-direction, a)}
    alphas = [-2.0, 0.0, 2.0]
    sweep = steering.sweep_axis(hooks, alphas, judge, tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS, texts,
                                mc, choice_prefix, cost_alphas={"flip": [2.0]})
    clean = logprob_margin(judge.next_token_logprobs(), tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS)
    for a, s in zip(alphas, sweep.shift["dir"]):
        hooked = logprob_margin(judge.next_token_logprobs(steering_hook(direction, a)), tiny.tokenizer,
                                POSITIVE_WORDS, NEGATIVE_WORDS)
        assert s == pytest.approx((hooked - clean).mean().item(), abs=1e-5)
    # pushing along −d with α is pushing along d with −α
    assert sweep.shift["flip"] == pytest.approx(sweep.shift["dir"][::-1], abs=1e-5)
    assert sweep.perplexity["dir"][1] == sweep.base_perplexity == pytest.approx(texts.perplexity())
    assert sweep.perplexity["dir"][2] == pytest.approx(texts.perplexity(steering_hook(direction, 2.0)))
    assert math.isnan(sweep.perplexity["flip"][0]) and not math.isnan(sweep.perplexity["flip"][2])
    assert sweep.accuracy["dir"][0] == pytest.approx(
        mc.accuracy(choice_prefix.next_token_logprobs(steering_hook(direction, -2.0))))
    assert sweep.base_accuracy == pytest.approx(mc.accuracy(choice_prefix.next_token_logprobs()))
    assert sweep.clean_margin == pytest.approx(clean.mean().item())
    # each direction is judged by the α of its own sign only
    best = sweep.within_budget("dir", budget=float("inf"))
    assert best["towards positive"] == sweep.shift["dir"][2] and best["alpha positive"] == 2.0
    assert best["towards negative"] == sweep.shift["dir"][0] and best["alpha negative"] == -2.0
    with pytest.raises(ValueError, match="budget"):  # a budget below the unsteered perplexity means nothing
        sweep.within_budget("dir", budget=0.5)
    assert sweep.push_norm["dir"] == pytest.approx([2.0 * direction.norm().item(), 0.0, 2.0 * direction.norm().item()],
                                                   rel=1e-5)
    no_choices = steering.sweep_axis(hooks, [0.0, 1.0], judge, tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS, texts)
    assert no_choices.accuracy == {} and no_choices.base_accuracy is None
    with pytest.raises(ValueError, match="contain 0"):
        steering.sweep_axis(hooks, [1.0], judge, tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS, texts)
    with pytest.raises(ValueError, match="both"):
        steering.sweep_axis(hooks, [0.0], judge, tiny.tokenizer, POSITIVE_WORDS, NEGATIVE_WORDS, texts, choices=mc)


def _sweep(shifts: dict[str, list[list[float]]], alphas, perplexity=None) -> steering.AxisSweep:
    """An AxisSweep from per-prompt shifts [α][prompt] (perplexity 10 unsteered, 10 elsewhere unless given)."""
    mean = {m: [sum(v) / len(v) for v in rows] for m, rows in shifts.items()}
    ppl = perplexity or {m: [10.0] * len(alphas) for m in shifts}
    return steering.AxisSweep(list(alphas), mean, shifts, ppl, {}, {m: [0.0] * len(alphas) for m in shifts},
                              0.0, 10.0, None)


def test_directions_are_judged_by_the_sign_of_alpha():
    alphas = [-0.5, -0.2, 0.0, 0.2, 0.5]
    zero = [0.0] * 4
    # The case chapter 7 once got wrong: the only positive shift comes from a *negative* push, and the positive
    # push lowers the margin. Nothing here moves towards positive, and the negative pole moves the wrong way.
    wrong = [[0.1, 0.2, 0.1, 0.2], [0.05, 0.1, 0.05, 0.1], zero, [-0.2, -0.3, -0.2, -0.3], [-0.5, -0.4, -0.5, -0.4]]
    good = [[-1.0, -1.2, -0.9, -1.1], [-0.3, -0.4, -0.3, -0.5], zero, [0.3, 0.2, 0.4, 0.3], [1.0, 0.9, 1.1, 1.2]]
    noisy = [[-1.0, 1.0, -1.0, 1.2], [0.5, -0.5, 0.4, -0.4], zero, [1.0, -1.0, 0.9, -1.1], [-0.9, 1.0, -1.0, 1.1]]
    sweep = _sweep({"wrong": wrong, "good": good, "noisy": noisy}, alphas)
    up, down = sweep.best_push("wrong", 1), sweep.best_push("wrong", -1)
    assert up.alpha == 0.2 and up.shift == pytest.approx(-0.25) and up.moved == "wrong way"
    assert down.alpha == -0.2 and down.shift == pytest.approx(0.075) and down.moved == "wrong way"
    assert not sweep.moves_both_ways("wrong")
    assert sweep.moves_both_ways("good")
    assert sweep.within_budget("good", 2.0)["towards positive"] == pytest.approx(1.05)
    assert sweep.within_budget("good", 2.0)["towards negative"] == pytest.approx(-1.05)
    # means of the right sign but intervals over the prompts that contain 0: no move either way
    assert sweep.best_push("noisy", 1).moved == "no move" and not sweep.moves_both_ways("noisy")
    lo, hi = sweep.best_push("good", 1).interval
    assert 0 < lo < 1.05 < hi


def test_the_budget_excludes_expensive_and_unmeasured_pushes():
    alphas = [-0.5, 0.0, 0.5]
    shifts = {"m": [[-1.0, -1.1, -0.9], [0.0] * 3, [1.0, 1.1, 0.9]]}
    sweep = _sweep(shifts, alphas, perplexity={"m": [30.0, 10.0, float("nan")]})
    assert sweep.moves_both_ways("m") and not sweep.moves_both_ways("m", budget=2.0)
    pushed = sweep.within_budget("m", 2.0)
    assert math.isnan(pushed["towards positive"]) and pushed["alpha positive"] is None
    assert pushed["moved negative"] == "no move"
    assert sweep.best_push("m", -1, budget=3.0).alpha == -0.5
    with pytest.raises(ValueError, match="sign"):
        sweep.best_push("m", 0)


def test_mean_interval_brackets_the_mean_and_shrinks_with_agreement():
    lo, hi = steering.mean_interval([1.0, 1.0, 1.0])
    assert lo == hi == 1.0
    lo, hi = steering.mean_interval([0.0, 1.0, 2.0, 3.0, 4.0])
    assert lo < 2.0 < hi and hi - lo < 4.0
    assert steering.mean_interval([0.0, 1.0, 2.0, 3.0, 4.0]) == (lo, hi)  # seeded
    with pytest.raises(ValueError, match="non-empty"):
        steering.mean_interval([])


def test_clamp_latent_hook_on_a_per_token_normalised_sae():
    # decode scales by ‖x‖/√d_in per token: the clamp must add exactly decode(z') − decode(z) there too
    torch.manual_seed(0)
    sae = SAE(32, 64, "abstopk", k=6, normalize_activations="constant_norm_rescale")
    x = torch.randn(2, 5, 32) * torch.tensor([1.0, 10.0])[:, None, None]
    out = clamp_latent_hook(sae, 9, 2.0)(x)
    z = sae.encode(x)
    z_clamped = z.clone()
    z_clamped[..., 9] = 2.0
    norms = x.norm(dim=-1)
    expected = sae.decode(z_clamped, norms) - sae.decode(z, norms)
    torch.testing.assert_close((out - x)[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-5)

"""Steering a model through its residual stream, and measuring what the steering did.

Two ways to push a concept into the residual stream at one hook:

    steering_hook(d, α)            x' = x + α·d                     activation addition (DiM: d = mean difference)
    clamp_latent_hook(sae, i, c)   x' = x + (c − z_i(x))·D_i         the paper's method: set one SAE latent to c

The clamp encodes x, sets latent i to c and decodes, but keeps the SAE's reconstruction error: the hooked
activation is x + decode(z') − decode(z) = x + (c − z_i)·D_i, so nothing but latent i's contribution changes (the
SAE's imperfect reconstruction is not spliced in). For an AbsTopK SAE c may be negative: the latent's other pole.

What the steering did and what it cost: ``judges`` (log-prob margins, VADER, refusal phrases, perplexity,
multiple-choice questions).

Sweeps: ``CachedPrefix`` runs fixed texts up to the hook once, so each steering hook then costs only the blocks after
it; ``generate_conditions`` generates under several hooks in one batch (``stacked_hooks``). ``concept_poles`` picks the
latent (and sign) an SAE offers for each end of a concept axis, and ``axis_hook`` steers along it by adding the
decoder row or clamping the latent. ``sweep_axis`` scores a set of such hooks over an α grid: judged shift,
perplexity and multiple-choice accuracy.

Sentiment steering uses ``SENTIMENT_PROMPTS`` with ``POSITIVE_WORDS`` / ``NEGATIVE_WORDS``; gender steering
``GENDER_PROMPTS`` with ``FEMALE_WORDS`` / ``MALE_WORDS``; refusal steering ``HARMFUL_INSTRUCTIONS`` /
``HARMLESS_INSTRUCTIONS`` in the model's chat template.

The package splits along those ideas: ``hooks`` (pushing), ``judges`` (measuring), ``sweeps`` (α grids and their
verdicts), ``generation`` and ``prompts``; everything is importable from ``absae_lib.steering``.
"""

from absae_lib.steering.generation import generate_conditions, generate_steered
from absae_lib.steering.hooks import (HookFn, Poles, Positions, axis_hook, clamp_latent_hook, concept_poles,
                                      identity_hook, model_hooks, push_norm, stacked_hooks,
                                      steering_hook)
from absae_lib.steering.judges import (REFUSAL_PHRASES, CachedPrefix, MultipleChoice, fact_choices, is_refusal,
                                       logprob_margin, next_token_logprobs, perplexity, refusal_rate,
                                       target_logprob_shift, vader_score)
from absae_lib.steering.prompts import (FEMALE_WORDS, GENDER_PROMPTS, HARMFUL_INSTRUCTIONS, HARMLESS_INSTRUCTIONS,
                                        MALE_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS, SENTIMENT_PROMPTS, chat_prompts,
                                        refusal_dataset)
from absae_lib.steering.sweeps import AxisSweep, Push, mean_interval, sweep_axis

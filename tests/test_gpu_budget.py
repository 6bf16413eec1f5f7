"""The Colab time estimate: its operation counts, and the gpu profile sized to it (≤ 20 minutes per chapter)."""

from dataclasses import replace

import pytest

from absae_lib import book, gpu_budget, pipeline, study


def test_every_chapter_fits_twenty_minutes_on_a_t4_at_the_gpu_profile():
    # The sizing contract of the gpu profile (issue: each chapter ≤ 20 min on a free T4 from a fresh runtime).
    minutes = gpu_budget.chapter_minutes(book.settings("gpu"))
    assert set(minutes) == set(gpu_budget.CHAPTERS)
    assert all(0 < m <= 20 for m in minutes.values()), minutes


def test_the_old_gpu_profile_would_not_have_fit():
    # 8M fp32 tokens and a 12,288-latent study for 5,859 steps: chapter 4 alone was estimated at ~an hour.
    old = replace(book.settings("gpu"), n_tokens=8_000_000, study_d_sae=12_288, study_steps=5_859)
    assert gpu_budget.chapter_minutes(old)["04"] > 40


def test_forward_flops_match_kaplans_two_per_non_embedding_parameter():
    # GPT-2 small has 84.9M non-embedding parameters (12 blocks of 4·768² + 2·768·3072 weights, Kaplan et al.
    # 2020 count ~85M); with no context the forward pass is 2 FLOPs per weight.
    assert gpu_budget.forward_flops_per_token("gpt2-small", seq_len=0) == pytest.approx(2 * 84.9e6, rel=0.01)
    # The attention term: 2·n_ctx·d per layer.
    with_ctx = gpu_budget.forward_flops_per_token("gpt2-small", seq_len=128)
    assert with_ctx - gpu_budget.forward_flops_per_token("gpt2-small", seq_len=0) == 12 * 2 * 128 * 768
    # The harvest stops at the hook's layer: layer 6 runs 7 of the 12 blocks.
    s = book.settings("gpu")
    assert gpu_budget.harvest_seconds(s, 1000) == pytest.approx(
        1000 * gpu_budget.forward_flops_per_token("gpt2-small", 7, s.seq_len) / gpu_budget.T4.model_flops)


def test_step_flops_in_closed_form():
    # A GPU doing 1 FLOP/s with free memory traffic and no overhead: the step's seconds are its FLOPs.
    unit = gpu_budget.GPU("unit", sae_flops=1.0, model_flops=1.0, bandwidth=float("inf"), step_overhead_s=0.0,
                          analysis_speedup=1.0)
    B, d, m, k = 8, 4, 16, 2
    assert gpu_budget.step_seconds("topk", d, m, k, B, unit) == 2 * B * d * m + 8 * B * k * d
    assert gpu_budget.step_seconds("standard", d, m, k, B, unit) == 5 * 2 * B * d * m
    # Two unrolled proximal steps: the encoder matmul three times (forward twice, back through both).
    assert gpu_budget.step_seconds("unrolled", d, m, k, B, unit, unrolled_steps=2) == 3 * 2 * B * d * m + 16 * B * k * d


def test_unknown_model_and_architecture_are_named():
    with pytest.raises(ValueError, match="MODEL_SHAPES"):
        gpu_budget.forward_flops_per_token("llama-7b")
    with pytest.raises(ValueError, match="unknown architecture"):
        gpu_budget.step_seconds("relu6", 768, 6144, 64, 4096)
    with pytest.raises(ValueError, match="01, 02 and 08"):
        gpu_budget.chapter_jobs(book.settings("gpu"), "08")


def test_study_jobs_are_the_ones_train_all_trains(monkeypatch):
    s = book.settings("smoke")
    runs = study.jobs(s)
    assert len(runs) == len(set(runs))
    for a, seed in study.headline_runs(s):
        assert (a, s.k, seed, s.study_normalization) in runs
    for k in s.k_sweep:
        for a in study.SWEPT:
            assert (a, k, s.seeds[0], s.study_normalization) in runs
    assert {n for *_, n in runs} == set(study.NORMALISATIONS)
    called, unrolled = [], []
    monkeypatch.setattr(study, "sae", lambda s_, a, k, seed, normalization: called.append((a, k, seed, normalization)))
    monkeypatch.setattr(study, "unrolled", lambda s_, name: unrolled.append(name))
    study.train_all(s)
    assert called == runs and unrolled == list(study.UNROLLED)
    # Chapter 4's estimate counts each of them (plus the unrolled ones, the harvest and the set-up).
    jobs = gpu_budget.chapter_jobs(s, "04")
    assert sum(job.what.startswith("study SAE") for job in jobs) == len(runs) + len(study.UNROLLED)


def test_the_gpu_profile_stores_its_activations_in_bf16(monkeypatch):
    seen = {}

    def fake_get_activations(model, **request):
        seen.update(request)
        return "store"

    monkeypatch.setattr(pipeline, "get_activations", fake_get_activations)
    assert pipeline.activation_store(book.settings("gpu")) == "store"
    assert seen["storage_dtype"] == "bfloat16" and seen["n_tokens"] == 3_700_000
    pipeline.activation_store(book.settings("cpu"))
    assert seen["storage_dtype"] == "float32"  # the cpu cache's key is unchanged

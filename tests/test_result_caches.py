"""The caches of computed results: chapter 4's held-out scores (study.score) and activations at label tokens
(label_activations.activations_at).  A cached result must equal a fresh one bit for bit, be read instead of
recomputed, and be recomputed when anything it was computed from changes."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from absae_lib import digest, label_activations, metrics, study
from absae_lib.concepts import ConceptDataset
from absae_lib.sae import SAE
from tests.test_concepts import tiny_model

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))
    return tmp_path


def test_digests_see_every_element_and_nothing_else():
    x = torch.randn(50, 7)
    y = x.clone()
    assert digest.tensor_digest(x) == digest.tensor_digest(y)
    y[31, 4] += 1e-6
    assert digest.tensor_digest(x) != digest.tensor_digest(y)
    assert digest.tensor_digest(x) != digest.tensor_digest(x.reshape(7, 50))  # same bytes, other shape
    assert digest.tensor_digest(x.bfloat16()) != digest.tensor_digest(x)  # bf16 hashes (no numpy dtype)
    sae = SAE(8, 16, "topk", k=2)
    before = digest.module_digest(sae)
    with torch.no_grad():
        sae.W_dec[3, 5] += 1e-4
    assert digest.module_digest(sae) != before
    assert digest.source_digest("metrics") != digest.source_digest("sae")
    with pytest.raises(ValueError, match="no module absae_lib.nonexistent"):
        digest.source_digest("nonexistent")


def _scoring_inputs():
    torch.manual_seed(0)
    model = tiny_model()
    x_eval = torch.randn(300, 32)
    typical = x_eval.norm(dim=-1) < 6.5
    tokens = torch.randint(0, 1000, (3, 9))
    saes = {name: SAE(32, 64, name, k=4) for name in ("topk", "abstopk")}
    return SimpleNamespace(hook_name=HOOK), saes, x_eval, typical, model, tokens


def _assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for metric, value in a.items():
        if metric == "per_sequence":
            for name, arr in value.items():
                assert np.array_equal(arr, b[metric][name]) and b[metric][name].dtype == np.float64, name
        else:
            assert value == b[metric] or (np.isnan(value) and np.isnan(b[metric])), metric


def test_score_cache_is_exact_shared_and_keyed_by_the_sae(monkeypatch, empty_cache):
    s, saes, x_eval, typical, model, tokens = _scoring_inputs()
    fresh = study.score(s, saes, x_eval, typical, model, tokens, cache=False)
    assert not (empty_cache / "scores").exists() or not any((empty_cache / "scores").iterdir())
    # one SAE first (as compare does), then both (as chapter 4 does): the first is read, the second scored
    study.score(s, {"abstopk": saes["abstopk"]}, x_eval, typical, model, tokens)
    both = study.score(s, saes, x_eval, typical, model, tokens)
    assert list(both) == ["topk", "abstopk"] and len(list((empty_cache / "scores").iterdir())) == 2
    for key in saes:
        _assert_same_scores(fresh[key], both[key])

    def no_model_runs(*args, **kwargs):
        raise AssertionError("a cached score ran the model again")

    monkeypatch.setattr(metrics, "spliced_losses", no_model_runs)
    again = study.score(s, {"a name it never had": saes["topk"]}, x_eval, typical, model, tokens)  # keys: content
    _assert_same_scores(fresh["topk"], again["a name it never had"])
    with torch.no_grad():
        saes["topk"].W_enc[0, 0] += 0.5  # a changed SAE is scored again
    with pytest.raises(AssertionError, match="ran the model again"):
        study.score(s, {"topk": saes["topk"]}, x_eval, typical, model, tokens)
    with pytest.raises(AssertionError, match="ran the model again"):  # so is one on other held-out tokens
        study.score(s, {"abstopk": saes["abstopk"]}, x_eval, typical, model, tokens[:2])


def test_activations_at_cache_is_exact_and_keyed_by_model_and_texts(monkeypatch, empty_cache):
    torch.manual_seed(0)
    model = tiny_model()
    texts = ["The old man walked", "A cat sat", "Several dogs barked loudly", "We met the queen"]
    ds = ConceptDataset("t", texts, torch.tensor([0, 1, 0, 1]), positions=[-1, 1, 3, -2])
    kwargs = dict(batch_size=3, compute_dtype=torch.float32, progress=False)
    fresh = label_activations.activations_at(model, ds, HOOK, **kwargs)
    first = label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs)
    assert torch.equal(fresh, first)
    assert len(list((empty_cache / "label_activations").glob("*.safetensors"))) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached dataset ran the model again")

    real_forward = model.run_with_hooks
    monkeypatch.setattr(model, "run_with_hooks", no_forward)
    assert torch.equal(label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs), fresh)
    other = ConceptDataset("t", texts[:3] + ["We met the king"], ds.labels, positions=ds.positions)
    with pytest.raises(AssertionError, match="ran the model again"):
        label_activations.activations_at(model, other, HOOK, cache=True, **kwargs)
    monkeypatch.setattr(model, "run_with_hooks", real_forward)
    with torch.no_grad():
        model.blocks[0].mlp.W_out.mul_(2.0)  # new weights: new activations, not the cached ones
    changed = label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs)
    assert not torch.allclose(changed, fresh)
    assert torch.equal(changed, label_activations.activations_at(model, ds, HOOK, **kwargs))

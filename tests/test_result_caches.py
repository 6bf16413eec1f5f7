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

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own (ask for it after ``tiny_llama``, whose tokenizer comes from the real one)."""
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))
    return tmp_path


def test_digests_see_every_element_and_nothing_else(tiny_llama, empty_cache):
    x = torch.randn(50, 7)
    y = x.clone()
    assert digest.tensor_digest(x) == digest.tensor_digest(y)
    y[31, 4] += 1e-6
    assert digest.tensor_digest(x) != digest.tensor_digest(y)
    assert digest.tensor_digest(x) != digest.tensor_digest(x.reshape(7, 50))  # same bytes, other shape
    xb, yb = x.bfloat16(), x.bfloat16()
    yb[31, 4] += 1.0  # bf16 has no numpy dtype: its bits are hashed, not skipped
    assert digest.tensor_digest(xb) == digest.tensor_digest(x.bfloat16()) != digest.tensor_digest(yb)
    # a module: one element anywhere (here the last column of the embedding, a large tensor) moves the digest,
    # also after the digest was remembered
    before = digest.module_digest(tiny_llama)
    assert digest.module_digest(tiny_llama) == before
    with torch.no_grad():
        tiny_llama.embed.W_E[-1, -1] += 1e-3
    assert digest.module_digest(tiny_llama) != before
    assert digest.source_digest("metrics") != digest.source_digest("sae")
    with pytest.raises(ValueError, match="no module absae_lib.nonexistent"):
        digest.source_digest("nonexistent")


def _assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for metric, value in a.items():
        if metric == "per_sequence":
            for name, arr in value.items():
                assert np.array_equal(arr, b[metric][name]) and b[metric][name].dtype == np.float64, name
        else:
            assert value == b[metric] or (np.isnan(value) and np.isnan(b[metric])), metric


def test_score_cache_is_exact_shared_and_keyed_by_every_input(tiny_llama, monkeypatch, empty_cache):
    torch.manual_seed(0)
    s, model = SimpleNamespace(hook_name=HOOK), tiny_llama
    x_eval = torch.randn(300, 32)
    typical = x_eval.norm(dim=-1) < 6.5
    tokens = torch.randint(0, 1000, (3, 9))
    saes = {name: SAE(32, 64, name, k=4) for name in ("topk", "abstopk")}
    fresh = study.score(s, saes, x_eval, typical, model, tokens, cache=False)
    assert not (empty_cache / "scores").exists()  # cache=False writes nothing

    scored = []  # the SAEs each call really scores
    real_losses = metrics.spliced_losses

    def counting(model, todo, *args, **kwargs):
        scored.append(sorted(todo))
        return real_losses(model, todo, *args, **kwargs)

    monkeypatch.setattr(metrics, "spliced_losses", counting)
    score = lambda saes, **changes: study.score(  # noqa: E731
        s, saes, *[changes.get(n, v) for n, v in (("x", x_eval), ("typ", typical), ("m", model), ("tok", tokens))])
    # one SAE first (as compare does), then both (as chapter 4 does): the first is read, the second scored
    score({"abstopk": saes["abstopk"]})
    both = score(saes)
    assert scored == [["abstopk"], ["topk"]] and list(both) == ["topk", "abstopk"]
    for key in saes:
        _assert_same_scores(fresh[key], both[key])
    again = score({"a name it never had": saes["topk"]})  # keyed by content, not by the name
    _assert_same_scores(fresh["topk"], again["a name it never had"])
    assert len(scored) == 2

    # anything the scores depend on, changed, scores again
    score({"abstopk": saes["abstopk"]}, tok=tokens[:2])
    score({"abstopk": saes["abstopk"]}, x=x_eval * 1.5)
    score({"abstopk": saes["abstopk"]}, typ=~typical)
    other_k = SAE(32, 64, "abstopk", k=5)
    other_k.load_state_dict(saes["abstopk"].state_dict())  # same weights, another config
    score({"abstopk": other_k})
    with torch.no_grad():
        saes["topk"].W_enc[0, 0] += 0.5
    score({"topk": saes["topk"]})
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(2.0)
    score({"abstopk": saes["abstopk"]})
    assert len(scored) == 8


def test_activations_at_cache_is_exact_and_keyed_by_model_and_texts(tiny_llama, monkeypatch, empty_cache):
    model = tiny_llama
    texts = ["The old man walked", "A cat sat", "Several dogs barked loudly", "We met the queen"]
    ds = ConceptDataset("t", texts, torch.tensor([0, 1, 0, 1]), positions=[-1, 1, 3, -2])
    kwargs = dict(batch_size=3, compute_dtype=torch.float32, progress=False)
    fresh = label_activations.activations_at(model, ds, HOOK, **kwargs)
    assert not (empty_cache / "label_activations").exists()  # cache=False writes nothing
    assert torch.equal(label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs), fresh)
    assert len(list(empty_cache.rglob("*.safetensors"))) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached dataset ran the model again")

    real_forward = model.run_with_hooks
    monkeypatch.setattr(model, "run_with_hooks", no_forward)
    assert torch.equal(label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs), fresh)  # read
    other = ConceptDataset("t", texts[:3] + ["We met the king"], ds.labels, positions=ds.positions)
    with pytest.raises(AssertionError, match="ran the model again"):
        label_activations.activations_at(model, other, HOOK, cache=True, **kwargs)
    moved = ConceptDataset("t", texts, ds.labels, positions=[-1, 1, 2, -2])
    with pytest.raises(AssertionError, match="ran the model again"):
        label_activations.activations_at(model, moved, HOOK, cache=True, **kwargs)
    monkeypatch.setattr(model, "run_with_hooks", real_forward)
    with torch.no_grad():
        model.blocks[0].mlp.W_out.mul_(2.0)  # new weights: new activations, not the cached ones
    changed = label_activations.activations_at(model, ds, HOOK, cache=True, **kwargs)
    assert not torch.allclose(changed, fresh)
    assert torch.equal(changed, label_activations.activations_at(model, ds, HOOK, **kwargs))


def test_compare_records_flags_any_number_but_not_timings(tmp_path):
    """scripts/compare_records.py, which checks that a re-run (e.g. from the caches) recorded the same numbers."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from compare_records import differences, main

    a = {"nmse": 0.1, "nan": float("nan"), "runtime_s": 5.0, "nested": {"encode ms / 4096 tokens": 3.0, "l0": [32, 31]}}
    assert differences(a, json.loads(json.dumps(a))) == []
    b = json.loads(json.dumps(a)) | {"runtime_s": 9.0}
    b["nested"] = {"encode ms / 4096 tokens": 4.0, "l0": [32, 31.0]}  # an int that became a float is a change
    assert differences(a, b) == [".nested.l0[1]: 31 vs 31.0"]
    assert differences({"x": 1}, {"x": 1, "y": 2}) == [".y: only in B"]
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir()
    (tmp_path / "A" / "04.cpu.json").write_text(json.dumps(a))
    assert main([str(tmp_path / "A"), str(tmp_path / "B")]) == 1  # missing in B
    (tmp_path / "B" / "04.cpu.json").write_text(json.dumps(a | {"nmse": 0.1 + 1e-12}))
    assert main([str(tmp_path / "A"), str(tmp_path / "B")]) == 1
    (tmp_path / "B" / "04.cpu.json").write_text(json.dumps(a))
    assert main([str(tmp_path / "A"), str(tmp_path / "B")]) == 0

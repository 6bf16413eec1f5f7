"""Activation harvesting and the on-disk cache, on a tiny random HookedTransformer (fast), plus one real-model check."""

import json
import math
import time

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from absae_lib import activations
from absae_lib.activations import ActivationStore, get_activations, harvest, norm_scale, stop_layer

HOOK = "blocks.0.hook_resid_post"


def tiny_model(d_model=16, seed=0):
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=d_model, n_ctx=32, d_head=4, n_heads=d_model // 4, d_mlp=4 * d_model, d_vocab=50,
        act_fn="relu", seed=seed,
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(autouse=True)
def fp32_compute(monkeypatch):
    # The exactness checks below compare with an fp32 run_with_cache; on a CPU with fast bf16 the harvest's default
    # would be bf16 compute, so these tests pin the default to the model's own dtype (fp32).
    monkeypatch.setattr(activations, "bf16_is_fast", lambda device: False)


def test_default_compute_is_bf16_only_where_it_is_fast(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(activations, "bf16_is_fast", lambda device: True)
    assert activations.resolve_compute_dtype(torch.float32, cpu) == torch.bfloat16
    assert activations.resolve_compute_dtype(torch.float32, cpu, "fp32") == torch.float32
    monkeypatch.setattr(activations, "bf16_is_fast", lambda device: False)
    assert activations.resolve_compute_dtype(torch.float32, cpu) == torch.float32


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (37, 12), generator=torch.Generator().manual_seed(0))


def reference(model, tokens, hook=HOOK):
    """What the activations should be: run_with_cache over everything, positions 1.. of every row."""
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    acts = cache[hook][:, 1:]
    return acts.reshape(-1, acts.shape[-1])


@pytest.mark.parametrize("hook", [HOOK, "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z", "hook_embed"])
def test_harvest_equals_run_with_cache(tiny, tokens, hook):
    got = harvest(tiny, hook, tokens, batch_size=5, progress=False)
    want = reference(tiny, tokens, hook)
    want = want.reshape(got.shape)  # hook_z is [batch, pos, head, d_head]: rows are flattened the same way
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    full = harvest(tiny, hook, tokens, batch_size=64, drop_first=False, progress=False)
    assert full.shape[0] == tokens.numel()


def test_stop_layer():
    assert stop_layer("blocks.15.hook_resid_post") == 16
    assert stop_layer("blocks.0.attn.hook_z") == 1
    assert stop_layer("hook_embed") == 0
    assert stop_layer("ln_final.hook_normalized") is None


def test_bad_hook_and_tokens(tiny, tokens):
    with pytest.raises(ValueError, match="valid layers are 0..1"):
        harvest(tiny, "blocks.7.hook_resid_post", tokens, progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        harvest(tiny, HOOK, tokens + 100, progress=False)
    with pytest.raises(ValueError, match="n_ctx"):
        harvest(tiny, HOOK, torch.zeros(2, 40, dtype=torch.long), progress=False)


def test_cache_round_trip(tiny, tokens, cache):
    store = get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, batch_size=5,
                            progress=False)
    want = reference(tiny, tokens)
    assert len(store) == 37 * 11 and store.d_model == 16
    torch.testing.assert_close(store.tensor(), want, rtol=0, atol=1e-6)
    assert torch.equal(store.tokens(), tokens)
    seq, pos = store.positions()
    assert seq[12].item() == 1 and pos[12].item() == 2  # row 12 = second sequence, position 2
    manifest = json.loads((store.folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_done"] == 407 and manifest["hook"] == HOOK
    assert store.folder.parent == cache / "activations"
    # Read back without the model: the same rows, straight from disk.
    again = get_activations(None, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    assert again.folder == store.folder and torch.equal(again.tensor(), store.tensor())


def test_n_tokens_truncates_and_bf16_storage(tiny, tokens, cache):
    want = reference(tiny, tokens)
    store = get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=100, tokens=tokens,
                            storage_dtype=torch.bfloat16, progress=False)
    x = store.tensor()
    assert x.dtype == torch.bfloat16 and x.shape == (100, 16)
    assert torch.equal(x, want[:100].to(torch.bfloat16))
    assert store.tensor(torch.float32).dtype == torch.float32
    assert np.load(store.folder / "activations.npy", mmap_mode="r").dtype == np.uint16
    with pytest.raises(ValueError, match="fewer than n_tokens"):
        get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=10_000, tokens=tokens, progress=False)


def test_resume_after_interruption(tiny, tokens, cache, monkeypatch):
    kwargs = dict(corpus="random", n_tokens=None, tokens=tokens, batch_size=4, progress=False)
    real_forward = activations._forward_batch
    calls = []

    def crash_on_fourth(model, hook, batch, dtype):
        calls.append(batch.shape[1] == 12)  # False for get_activations's 2-token width probe
        if sum(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during batch 4
        return real_forward(model, hook, batch, dtype)

    monkeypatch.setattr(activations, "_forward_batch", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        get_activations(tiny, "tiny", HOOK, **kwargs)
    monkeypatch.setattr(activations, "_forward_batch", real_forward)

    folder = next((cache / "activations").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["n_seq_done"] == 12 and manifest["n_done"] == 12 * 11
    with pytest.raises(ValueError, match="unfinished"):
        ActivationStore(folder)

    calls.clear()
    monkeypatch.setattr(activations, "_forward_batch", lambda *a: (calls.append(1), real_forward(*a))[1])
    resumed = get_activations(tiny, "tiny", HOOK, **kwargs)
    assert len(calls) == 7  # only the 10 - 3 batches still missing
    uninterrupted = harvest(tiny, HOOK, tokens, batch_size=4, progress=False)
    assert torch.equal(resumed.tensor(), uninterrupted)


def test_manifest_mismatch_is_an_error(tiny, tokens, cache):
    get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    # Another model under the same name: same key, different width.
    other = tiny_model(d_model=8)
    with pytest.raises(ValueError, match="made by a model of shape.*'d_model': 16"):
        get_activations(other, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    # A manifest edited (or written by another version) so that it no longer matches its key.
    folder = next((cache / "activations").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["seq_len"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different request.*seq_len"):
        get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)


def test_nan_activations_are_an_error(tokens, cache):
    broken = tiny_model()
    with torch.no_grad():
        broken.blocks[0].mlp.W_in[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        get_activations(broken, "broken", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        harvest(broken, HOOK, tokens, progress=False)


def test_unknown_corpus_and_missing_cache(tiny, cache):
    with pytest.raises(ValueError, match="Unknown corpus"):
        get_activations(tiny, "tiny", HOOK, corpus="wikipedia", n_tokens=100, progress=False)
    with pytest.raises(ValueError, match="pass the model"):
        get_activations(None, "tiny", HOOK, n_tokens=100, progress=False)


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_covers_every_row_once_per_epoch(tiny, tokens, cache, shuffle):
    store = get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    x = store.tensor(torch.float32)
    batches = list(store.loader(batch_size=16, shuffle=shuffle, seed=3, epochs=2, chunk_rows=50))
    # Full batches, except the last one of each epoch (407 = 25 * 16 + 7).
    assert [len(b) for b in batches] == ([16] * 25 + [7]) * 2 and all(b.dtype == torch.float32 for b in batches)
    rows = torch.cat(batches)
    assert len(rows) == 2 * len(store)
    for epoch in rows[: len(store)], rows[len(store) :]:
        # Each epoch is a permutation of the rows: compare as sorted row lists.
        assert torch.equal(_sorted_rows(epoch), _sorted_rows(x))
    if shuffle:
        assert not torch.equal(rows[: len(store)], x) and not torch.equal(rows[: len(store)], rows[len(store) :])
        again = torch.cat(list(store.loader(batch_size=16, seed=3, epochs=2, chunk_rows=50)))
        assert torch.equal(again, rows)  # same seed, same order
    else:
        assert torch.equal(rows[: len(store)], x)
    assert sum(len(b) for b in store.loader(batch_size=16, drop_last=True)) == len(store) // 16 * 16


def _sorted_rows(x):
    return x[np.lexsort(x.T.numpy()[::-1])]


def test_split(tiny, tokens, cache):
    store = get_activations(tiny, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, progress=False)
    train, val = store.split(0.1)
    assert len(train) + len(val) == len(store) and len(val) == round(0.1 * len(store))
    assert torch.equal(torch.cat([train.tensor(), val.tensor()]), store.tensor())
    assert torch.equal(val.positions()[0], store.positions()[0][len(train) :])
    assert sum(len(b) for b in val.loader(8)) == len(val)
    with pytest.raises(ValueError, match="val_fraction"):
        store.split(1.5)


def test_norm_scale_closed_form():
    d = 16
    x = torch.randn(1000, d)
    x = 7.0 * x / x.norm(dim=-1, keepdim=True)  # every row has norm 7
    assert norm_scale(x) == pytest.approx(math.sqrt(d) / 7.0, rel=1e-6)
    s = norm_scale(x * torch.linspace(1, 3, 1000)[:, None])  # norms 7..21, mean 14
    assert s == pytest.approx(math.sqrt(d) / 14.0, rel=1e-6)
    assert (s * (x * torch.linspace(1, 3, 1000)[:, None])).norm(dim=-1).mean() == pytest.approx(math.sqrt(d), rel=1e-5)
    with pytest.raises(ValueError, match="mean norm"):
        norm_scale(torch.zeros(4, d))


class ByteTokenizer:
    eos_token_id = 0
    padding_side = "right"  # HookedTransformer reads it

    def __call__(self, texts, add_special_tokens=False):
        # Bytes folded into the tiny vocabulary (1..49; 0 is EOS).
        return {"input_ids": [[1 + b % 49 for b in t.encode()] for t in texts]}


def test_brown_corpus_path(cache):
    m = tiny_model()
    m.tokenizer = ByteTokenizer()
    store = get_activations(m, "tiny", HOOK, corpus="brown:r", n_tokens=500, seq_len=16, progress=False)
    assert len(store) == 500 and store.manifest["corpus"] == "brown:r"
    from absae_lib.data import brown_texts, token_sequences

    rows = token_sequences(m.tokenizer, brown_texts("r", unit="doc", seed=0), seq_len=16, max_tokens=34 * 16)
    assert torch.equal(store.tokens(), rows)
    torch.testing.assert_close(store.tensor(), reference(m, rows)[:500], rtol=0, atol=1e-6)


def test_real_model_rows_and_attention_sink(model, cache):
    from absae_lib.data import brown_texts, token_sequences

    tokens = token_sequences(model.tokenizer, brown_texts(unit="doc", seed=0), seq_len=16, max_tokens=3 * 16, chunk=2)
    hook = "blocks.15.hook_resid_post"
    acts = harvest(model, hook, tokens, batch_size=2, compute_dtype=torch.float32, progress=False)
    _, cache_ = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=16)
    torch.testing.assert_close(acts, cache_[hook][:, 1:].reshape(-1, 576), rtol=1e-5, atol=1e-4)
    sink = cache_[hook][:, 0].norm(dim=-1).mean()
    assert sink > 20 * acts.norm(dim=-1).mean()  # why position 0 is dropped


# ----------------------------------------------------------------------------------------------------------------
# Two processes, one cache (issue 13)


def _wait_for(path, timeout):
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def _harvest_child(model, tokens, role, sync, out):
    """One of two processes harvesting the same request, forced into the interleaving that once wiped the cache.

    The old code let the second process, having seen no manifest, recreate the array while the first was half-way:
    the first then finished and marked complete a cache whose early rows were zeros. Each step below waits (briefly)
    for the other process to reach its point; with the harvest lock the second never gets there, and the waits
    time out.
    """
    torch.set_num_threads(1)
    real_forward, real_open = activations._forward_batch, np.lib.format.open_memmap
    batches = []

    def forward(m, hook, batch, dtype):
        if batch.shape[1] == 2:  # the width probe, right before the array is created
            (sync / f"{role}_probing").touch()
            _wait_for(sync / ("first_is_mid" if role == "second" else "second_probing"), 0.5)
        result = real_forward(m, hook, batch, dtype)
        if batch.shape[1] > 2:
            batches.append(1)
            if role == "first" and len(batches) == 3:
                (sync / "first_is_mid").touch()
                _wait_for(sync / "second_created", 0.5)
            if role == "second" and len(batches) == 1:
                time.sleep(0.5)  # the first finishes (and reads its cache) before the second rewrites its rows
        return result

    def open_memmap(*args, **kwargs):
        array = real_open(*args, **kwargs)
        if kwargs.get("mode") == "w+":
            (sync / f"{role}_created").touch()
        return array

    activations._forward_batch = forward
    np.lib.format.open_memmap = open_memmap
    try:
        store = get_activations(model, "tiny", HOOK, corpus="random", n_tokens=None, tokens=tokens, batch_size=2,
                                progress=False)
        np.save(out / f"{role}.npy", store.tensor().numpy())  # what this process got, read the moment it returned
        (out / f"{role}.batches").write_text(str(len(batches)))
    except BaseException as err:
        (out / f"{role}.error").write_text(repr(err))
        raise


def test_two_processes_harvesting_one_request_agree(tiny, tokens, cache):
    import multiprocessing

    sync, out = cache / "sync", cache / "out"
    sync.mkdir()
    out.mkdir()
    context = multiprocessing.get_context("fork")  # the child inherits the model: no second import or build
    children = [context.Process(target=_harvest_child, args=(tiny, tokens, role, sync, out))
                for role in ("first", "second")]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0, [p.read_text() for p in out.glob("*.error")]
    want = reference(tiny, tokens)
    got = {role: torch.from_numpy(np.load(out / f"{role}.npy")) for role in ("first", "second")}
    for role, rows in got.items():
        assert rows.shape == want.shape and (rows.abs().sum(-1) > 0).all(), f"{role}: zero rows"
        torch.testing.assert_close(rows, want, rtol=0, atol=1e-6)
    assert torch.equal(got["first"], got["second"])
    # One process harvested, the other waited and read its cache: 19 batches of 2 token rows in all.
    assert sorted(int((out / f"{r}.batches").read_text()) for r in ("first", "second")) == [0, 19]
    folder = next((cache / "activations").iterdir())
    assert json.loads((folder / "manifest.json").read_text())["complete"]
    assert sorted(p.name for p in folder.iterdir()) == ["activations.npy", "harvest.lock", "manifest.json",
                                                         "tokens.npy"]


def test_broken_manifests_and_arrays_name_the_file(tiny, tokens, cache):
    kwargs = dict(corpus="random", n_tokens=None, tokens=tokens, progress=False)
    store = get_activations(tiny, "tiny", HOOK, **kwargs)
    folder, want = store.folder, store.tensor().clone()
    manifest_path = folder / "manifest.json"
    good = manifest_path.read_text()
    manifest_path.write_text(good[: len(good) // 2])  # a manifest cut short (by hand: ours are written atomically)
    with pytest.raises(ValueError, match=f"{manifest_path} is not valid JSON.*delete the folder"):
        ActivationStore(folder)
    manifest_path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "n_rows"}))
    with pytest.raises(ValueError, match=r"manifest .* lacks \['n_rows'\]"):
        get_activations(None, "tiny", HOOK, **kwargs)
    manifest_path.write_text(good)
    array = folder / "activations.npy"
    array.write_bytes(array.read_bytes()[:-200])  # truncated: it must not read as zeros
    with pytest.raises(ValueError, match=f"{array} cannot be read"):
        ActivationStore(folder)
    array.unlink()
    with pytest.raises(ValueError, match="activations.npy cannot be read"):
        ActivationStore(folder)
    del want


def test_partial_array_truncated_below_n_done_is_harvested_again(tiny, tokens, cache, monkeypatch):
    kwargs = dict(corpus="random", n_tokens=None, tokens=tokens, batch_size=4, progress=False)
    real_forward = activations._forward_batch
    calls = []

    def crash_on_fourth(model, hook, batch, dtype):
        calls.append(batch.shape[1] == 12)
        if sum(calls) == 4:
            raise KeyboardInterrupt
        return real_forward(model, hook, batch, dtype)

    monkeypatch.setattr(activations, "_forward_batch", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        get_activations(tiny, "tiny", HOOK, **kwargs)
    monkeypatch.setattr(activations, "_forward_batch", real_forward)
    folder = next((cache / "activations").iterdir())
    partial = folder / "activations.partial.npy"
    assert partial.exists() and not (folder / "activations.npy").exists()  # nothing published yet
    partial.write_bytes(partial.read_bytes()[:500])  # rows the manifest counts as done are gone
    store = get_activations(tiny, "tiny", HOOK, **kwargs)
    assert torch.equal(store.tensor(), harvest(tiny, HOOK, tokens, batch_size=4, progress=False))


def test_kill_between_publishing_the_array_and_the_manifest_resumes(tiny, tokens, cache, monkeypatch):
    kwargs = dict(corpus="random", n_tokens=None, tokens=tokens, progress=False)
    real_write = activations._write_manifest

    def die_on_complete(folder, manifest):
        if manifest["complete"]:
            raise KeyboardInterrupt  # the array is renamed into place; the manifest never says so
        real_write(folder, manifest)

    monkeypatch.setattr(activations, "_write_manifest", die_on_complete)
    with pytest.raises(KeyboardInterrupt):
        get_activations(tiny, "tiny", HOOK, **kwargs)
    monkeypatch.setattr(activations, "_write_manifest", real_write)
    monkeypatch.setattr(activations, "_forward_batch", lambda *a: pytest.fail("nothing is left to harvest"))
    store = get_activations(tiny, "tiny", HOOK, **kwargs)
    torch.testing.assert_close(store.tensor(), reference(tiny, tokens), rtol=0, atol=1e-6)

"""The streamed activation source: it serves the harvest's rows, loses and repeats none; train_sae learns from it."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from absae_lib import activations, train
from absae_lib.streaming import ActivationStream
from absae_lib.train import TrainConfig, train_sae

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(autouse=True)
def fp32_compute(monkeypatch):
    # exact row matches below need the harvest in the model's own fp32, also where the CPU has fast bf16
    monkeypatch.setattr(activations, "bf16_is_fast", lambda device: False)


@pytest.fixture(scope="module")
def tiny():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_mlp=64, d_vocab=50,
                                  act_fn="relu", seed=0)
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (40, 9), generator=torch.Generator().manual_seed(0))  # 40 × 8 = 320 rows a pass


def rows_as_set(x: torch.Tensor) -> set[tuple]:
    return {tuple(r) for r in x.tolist()}


def test_served_rows_are_the_harvest_with_none_lost_or_repeated(tiny, tokens):
    harvest = activations.harvest(tiny, HOOK, tokens, progress=False)  # [320, 16], the on-disk cache's rows
    all_rows = rows_as_set(harvest)
    assert len(all_rows) == len(harvest)  # a random model: every row distinct, so sets can count
    stream = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, forward_batch=5, seed=0)
    served = []
    while stream.rows_harvested < len(harvest):  # within the first pass
        served.append(stream.next_batch(8))
        # conservation: what was served, what waits in the buffer and what waits to enter it is what was harvested
        unserved = stream._buffer[stream._served:]
        pending = torch.cat(stream._pending) if stream._pending else harvest[:0]
        got = torch.cat(served)
        assert len(got) + len(unserved) + len(pending) == stream.rows_harvested
        assert rows_as_set(got) | rows_as_set(unserved) | rows_as_set(pending) <= all_rows
        assert len(rows_as_set(got) | rows_as_set(unserved) | rows_as_set(pending)) == stream.rows_harvested
    got = torch.cat(served)
    assert len(rows_as_set(got)) == len(got), "a row was served twice within one pass"
    assert stream.refills > 3
    # shuffled: the first batch is not the first rows of the corpus order
    assert not torch.equal(served[0], harvest[:8])


def test_the_stream_goes_on_past_one_pass_and_is_seeded(tiny, tokens):
    harvest_rows = rows_as_set(activations.harvest(tiny, HOOK, tokens, progress=False))
    a = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, forward_batch=5, seed=3)
    b = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, forward_batch=5, seed=3)
    c = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, forward_batch=5, seed=4)
    batches = [a.next_batch(16) for _ in range(50)]  # 800 rows: 2.5 passes
    assert a.rows_harvested > 2 * len(a)
    assert rows_as_set(torch.cat(batches)) <= harvest_rows
    assert all(torch.equal(x, b.next_batch(16)) for x in batches)
    assert not torch.equal(batches[0], c.next_batch(16))


def test_reduced_precision_buffer_serves_float32_close_to_the_rows(tiny, tokens):
    exact = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, seed=0)
    half = ActivationStream(tiny, HOOK, tokens, buffer_rows=64, seed=0, storage_dtype=torch.bfloat16)
    x, y = exact.next_batch(32), half.next_batch(32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x, rtol=1e-2, atol=1e-2)


def test_bad_arguments_are_refused_with_the_fix(tiny, tokens):
    with pytest.raises(ValueError, match="buffer_rows must be between 2 and the 320 rows"):
        ActivationStream(tiny, HOOK, tokens, buffer_rows=10_000)
    with pytest.raises(ValueError, match="storage_dtype"):
        ActivationStream(tiny, HOOK, tokens, buffer_rows=64, storage_dtype=torch.int8)
    with pytest.raises(ValueError, match="raise buffer_rows"):
        ActivationStream(tiny, HOOK, tokens, buffer_rows=64).next_batch(40)
    with pytest.raises(ValueError, match="tokens must be"):
        ActivationStream(tiny, HOOK, tokens[0], buffer_rows=64)


def stream_config(**overrides) -> TrainConfig:
    base = dict(architecture="abstopk", d_sae=32, k=4, batch_size=32, lr=3e-3, n_steps=60, seed=0, device="cpu",
                progress=False)
    return TrainConfig(**{**base, **overrides})


def test_train_sae_learns_from_a_stream_as_from_the_tensor(tiny, tokens):
    harvest = activations.harvest(tiny, HOOK, tokens, progress=False)
    from_tensor, _ = train_sae(harvest, stream_config())
    from_stream, history = train_sae(ActivationStream(tiny, HOOK, tokens, buffer_rows=128, seed=0), stream_config())
    assert len(history) and history[-1]["step"] == 59

    def nmse(sae):
        with torch.no_grad():
            return ((sae(harvest).recon - harvest).pow(2).sum() / harvest.pow(2).sum()).item()

    untrained = nmse(train_sae(harvest, stream_config(n_steps=1, lr=1e-9))[0])
    assert nmse(from_stream) < 0.5 * untrained  # it learnt
    assert nmse(from_stream) == pytest.approx(nmse(from_tensor), rel=0.25)  # as well as from the same rows in RAM
    # n_steps by default: one pass over the stream's token rows
    _, one_pass = train_sae(ActivationStream(tiny, HOOK, tokens, buffer_rows=128), stream_config(n_steps=None))
    assert one_pass[-1]["step"] == 320 // 32 - 1


def test_a_streamed_run_resumes_from_its_checkpoint(tiny, tokens, tmp_path, monkeypatch):
    config = stream_config(n_steps=40, checkpoint_every=10, checkpoint_dir=str(tmp_path))
    real_lr_factor = train.lr_factor

    def crashing(step, *args):
        if step == 25:
            raise KeyboardInterrupt("simulated interruption")
        return real_lr_factor(step, *args)

    monkeypatch.setattr(train, "lr_factor", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_sae(ActivationStream(tiny, HOOK, tokens, buffer_rows=128), config)
    monkeypatch.setattr(train, "lr_factor", real_lr_factor)
    stream = ActivationStream(tiny, HOOK, tokens, buffer_rows=128)
    resumed, history = train_sae(stream, config)  # picks up at step 20
    assert [row["step"] for row in history][-1] == 39
    # it did not re-run the first 20 steps: the set-up fill, the resumed fill, 20 steps' rows and at most one
    # forward batch beyond them (32 sequences × 8 rows), fewer than the 128 + 40 × 32 a whole run harvests
    assert stream.rows_harvested <= 2 * 128 + 20 * 32 + 32 * 8 < 128 + 40 * 32 + 32 * 8
    # another stream (other tokens) is other data: the checkpoint is refused
    with pytest.raises(ValueError, match="other data"):
        train_sae(ActivationStream(tiny, HOOK, tokens[:30], buffer_rows=128), config)

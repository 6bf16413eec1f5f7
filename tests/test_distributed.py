"""Data-parallel training: 2 gloo processes on CPU end with the weights of one process on the same global batch.

One spawn of two workers runs every distributed case (starting processes is the slow part); the single-process
references are computed here, in the test process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from absae_lib import distributed, train
from absae_lib.train import TrainConfig, train_sae

WORLD = 2
INTERRUPT_AT = 6  # the interrupted run stops at this step; its last checkpoint is step 4


def _data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1024, 12, generator=generator) @ torch.randn(12, 12, generator=generator) + 0.5


def _data_with_late_nan() -> tuple[torch.Tensor, int]:
    """200,000 rows, one of them NaN, read only by rank 1 at step 256: an odd row (train_sae's first look checks
    every second row of data this size), outside the 32,768 rows that initialise b_dec (steps 0-255), in the
    second half of that step's batch (rank 1's slice)."""
    data = torch.randn(200_000, 12, generator=torch.Generator().manual_seed(5))
    step, config = 256, _configs()["abstopk"]
    rows = train.batch_indices(step, config.batch_size, len(data), config.seed)[config.batch_size // 2:]
    bad_row = int(rows[rows % 2 == 1][0])
    data[bad_row, 3] = float("nan")
    return data, bad_row


def _configs() -> dict[str, TrainConfig]:
    common = dict(d_sae=48, batch_size=128, n_steps=10, warmup_steps=2, seed=3, device="cpu", progress=False,
                  log_every=1, autocast="off", aux_coefficient=0.0, dead_window_tokens=384)
    return {
        "abstopk": TrainConfig(architecture="abstopk", k=4, **common),  # the fast k-sparse step
        "standard": TrainConfig(architecture="standard", k=None, sparsity_coefficient=3e-3, **common),  # dense
    }


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    out: dict = {}
    data = _data()
    for name, config in _configs().items():
        sae, history = train_sae(data, config)
        out[name] = {"state": sae.state_dict(), "dead": [row["dead_fraction"] for row in history]}

    # Interrupt a checkpointed run at step INTERRUPT_AT on both ranks, then resume it to the end.
    saves = Path(folder) / f"saves-{rank}.json"
    save_state, lr_factor = train._save_state, train.lr_factor

    def counting_save(path, state):
        saves.write_text(json.dumps(json.loads(saves.read_text() if saves.exists() else "[]") + [state["step"]]))
        save_state(path, state)

    def interrupting_lr(step, *args):
        if step == INTERRUPT_AT:
            raise KeyboardInterrupt
        return lr_factor(step, *args)

    config = TrainConfig(**{**vars(_configs()["abstopk"]), "checkpoint_dir": f"{folder}/ckpt", "checkpoint_every": 4})
    train._save_state, train.lr_factor = counting_save, interrupting_lr
    with pytest.raises(KeyboardInterrupt):
        train_sae(data, config)
    train.lr_factor = lr_factor
    dist.barrier()
    sae, _ = train_sae(data, config)  # resumes from step 4
    out["resumed"] = {"state": sae.state_dict()}

    # A NaN in a row only rank 1 reads, at a step late enough that the rows checked at the start miss it.
    bad_data, bad_row = _data_with_late_nan()
    try:
        train_sae(bad_data, TrainConfig(**{**vars(_configs()["abstopk"]), "n_steps": 260}))
        out["nan_error"] = None
    except ValueError as err:
        out["nan_error"] = str(err)
    out["bad_row"] = bad_row
    torch.save(out, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return folder, [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_same_weights(got: dict, want: dict) -> None:
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", ["abstopk", "standard"])
def test_two_ranks_match_one_process(two_ranks, name):
    _, ranks = two_ranks
    config = _configs()[name]
    sae, history = train_sae(_data(), config)
    for out in ranks:  # both ranks hold the same weights, and they are the single-process weights
        _assert_same_weights(out[name]["state"], sae.state_dict())
    # Dead-latent counts see the whole batch: the dead fraction is the one-process one at every step.
    assert ranks[0][name]["dead"] == pytest.approx([row["dead_fraction"] for row in history])
    if name == "abstopk":
        assert max(ranks[0][name]["dead"]) > 0  # the window is short enough for the counts to matter


def test_rank_zero_alone_checkpoints_and_resume_matches(two_ranks):
    folder, ranks = two_ranks
    # Step 4 before the interruption, then the resumed run's step 8 and its end; rank 1 never writes.
    assert json.loads((folder / "saves-0.json").read_text()) == [4, 8, 10]
    assert not (folder / "saves-1.json").exists()
    sae, _ = train_sae(_data(), _configs()["abstopk"])  # uninterrupted, one process
    for out in ranks:
        _assert_same_weights(out["resumed"]["state"], sae.state_dict())


def test_uneven_batch_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (1, 3))
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.local_rows(torch.arange(128))
    assert distributed.local_rows(torch.arange(129)).tolist() == list(range(43, 86))  # rank 1's contiguous third


def test_single_process_is_untouched():
    assert distributed.world() == (0, 1) and distributed.is_main()
    rows = torch.arange(10)
    assert distributed.local_rows(rows) is rows
    mask = torch.tensor([True, False])
    assert distributed.any_rank_(mask) is mask


def test_batch_order_is_the_per_step_randperm_order():
    # The cached per-epoch permutation gives exactly the rows the old code drew with a fresh randperm every step.
    def old_batch_indices(step, batch_size, n, seed):
        positions = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = positions // n, positions % n
        out = torch.empty(batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            out[epochs == epoch] = perm[offsets[epochs == epoch]]
        return out

    for step in range(0, 12):  # 100 rows, batches of 30: steps 3, 6 and 9 straddle two epochs
        assert torch.equal(train.batch_indices(step, 30, 100, 7), old_batch_indices(step, 30, 100, 7))


def test_a_nan_on_one_rank_stops_every_rank_naming_the_row(two_ranks):
    # Without the reduction over ranks, rank 1 raised alone and rank 0 waited forever in its next all-reduce.
    _, ranks = two_ranks
    for rank in ranks:
        assert rank["nan_error"] is not None, "a rank trained on past the NaN"
        assert f"row(s) {rank['bad_row']} hold NaN" in rank["nan_error"]
        assert "step 256" in rank["nan_error"]

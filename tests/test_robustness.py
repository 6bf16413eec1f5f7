"""What a careless user does must not lose or silently corrupt results (issue 13): the smaller cases."""

import json
import multiprocessing

import pytest
import torch

from absae_lib import book, prox
from absae_lib.device import check_device


def test_batch_topk_nan_row_does_not_take_the_batch_budget():
    v = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    v[3, 5] = float("nan")
    z = prox.batch_topk(v, 4)
    assert z[3].isnan().all()  # the bad row stays visibly bad
    others = [0, 1, 2, 4, 5, 6, 7]
    assert (z[others] != 0).sum() >= 28  # the other rows still get (nearly all of) the k·B budget
    assert not z[others].isnan().any()


def test_device_is_checked_before_anything_loads(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no usable CUDA GPU.*device='cpu'"):
        check_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")
    from absae_lib import models

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(models, "_load_embedded", must_not_load)
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        models.load_model(device="cuda")


def _record_many(folder, key):
    import os

    os.environ["ABSAE_RESULTS"] = str(folder)
    s = book.settings("smoke")
    for i in range(30):
        book.record("ch", s, **{f"{key}{i}": i})


def test_concurrent_records_keep_every_number(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSAE_CACHE", str(tmp_path / "cache"))
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_record_many, args=(tmp_path / "results", key)) for key in "ab"]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    data = json.loads((tmp_path / "results" / "ch.smoke.json").read_text())
    assert {f"{key}{i}" for key in "ab" for i in range(30)} <= set(data)  # no read-modify-write lost an update
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["ch.smoke.json"]  # no lock or temporary beside it

